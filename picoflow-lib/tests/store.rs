//! The state store across real processes, through the library's public API: a writer killed
//! (SIGKILL) in the middle of a run, whose journal the next process replays; processes writing
//! one state file at once while another reads it.
//!
//! The writers are this test binary started again with `PICOFLOW_STORE_ROLE` set (see
//! [`child_process`]); their tasks are of a type registered here that starts no process, so
//! the only processes are the writers themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use picoflow_lib::{
    parse_workflow, BoxFuture, Capture, Engine, Executor, HistoryFilter, Outcome, Registry,
    RunOptions, Store, TaskConfig, TaskContext, TaskOutput, TaskState, WorkflowStatus,
};

/// Names what a started copy of this binary does, and the state file it does it to.
const ROLE: &str = "PICOFLOW_STORE_ROLE";
const STATE: &str = "PICOFLOW_STORE_STATE";

/// A task of type `step`: `config: {mark: FILE}` creates FILE and then never ends (until the
/// process is killed); without `mark` the task succeeds at once.
struct Step;

impl Executor for Step {
    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let TaskConfig::Custom(c) = &ctx.task.config else {
                return TaskOutput::failed("step: no config", false);
            };
            if let Some(mark) = c["mark"].as_str() {
                std::fs::write(mark, b"started").unwrap();
                std::future::pending::<()>().await;
            }
            TaskOutput {
                outcome: Outcome::Success,
                exit_code: Some(0),
                stdout: Capture::default(),
                stderr: Capture::default(),
                error: None,
                retryable: false,
            }
        })
    }
}

fn registry() -> Registry {
    let mut r = Registry::empty();
    r.register("step", Step);
    r
}

/// A chain `t1 → t2 → … → tN`; the last one marks `mark` and hangs when given.
fn chain(name: &str, tasks: usize, mark: Option<&Path>) -> String {
    let mut yaml = format!("name: {name}\ntasks:\n");
    for i in 1..=tasks {
        let config = match mark {
            Some(m) if i == tasks => format!("{{mark: \"{}\"}}", m.display()),
            _ => "{}".to_string(),
        };
        let deps = if i > 1 {
            format!("    depends_on: [t{}]\n", i - 1)
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - name: t{i}\n    type: step\n{deps}    config: {config}\n"
        ));
    }
    yaml
}

/// Runs `yaml` once, recording into the store at `state`.
fn run_once(state: &Path, yaml: &str) -> WorkflowStatus {
    let registry = registry();
    let wf = parse_workflow(yaml, "store.yaml", &registry).unwrap();
    let store = Store::open(state).unwrap();
    let engine = Engine::new(registry)
        .with_run_dir(state.with_extension("run"))
        .with_sink(store.sink());
    let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
    store.flush_blocking().unwrap();
    report.execution.status
}

/// What a started copy of this binary does; an ordinary test run (no `PICOFLOW_STORE_ROLE`)
/// returns at once.
///
/// - `hang`: runs a chain of four whose last task hangs, until it is killed;
/// - `writer-N`: runs workflow `wN`, a chain of three, twenty times, then exits 0.
#[test]
fn child_process() {
    let (Ok(role), Ok(state)) = (std::env::var(ROLE), std::env::var(STATE)) else {
        return;
    };
    let state = PathBuf::from(state);
    match role.as_str() {
        "hang" => {
            let mark = state.with_extension("started");
            run_once(&state, &chain("crashing", 4, Some(&mark)));
            unreachable!("the last task never ends");
        }
        writer => {
            let n = writer.strip_prefix("writer-").expect("a known role");
            for _ in 0..20 {
                let status = run_once(&state, &chain(&format!("w{n}"), 3, None));
                assert_eq!(status, WorkflowStatus::Success);
            }
        }
    }
}

/// This test binary again, in role `role`, on the state file `state`.
fn start(role: &str, state: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(STATE, state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory for one test's state file.
fn state_in(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("picoflow-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.redb")
}

/// A writer killed while its fourth task runs: the three tasks that finished are durable (a
/// dependent starts only once they are), so the next process finds them — replayed from the
/// dead writer's journal if they had not reached redb — and the execution, left `running`, is
/// marked interrupted with its running attempt failed for that reason.
#[test]
fn a_killed_writers_finished_tasks_survive_and_its_run_is_interrupted() {
    let state = state_in("killed");
    let mut child = start("hang", &state);
    wait_for(Duration::from_secs(30), "the fourth task to start", || {
        state.with_extension("started").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&state).unwrap();
    let interrupted = store.recover_interrupted().unwrap();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    let exec = &interrupted[0];
    assert_eq!(exec.workflow_name, "crashing");
    assert_eq!(exec.status, WorkflowStatus::Interrupted);
    let mut tasks = store.task_executions(&exec.id).unwrap();
    tasks.sort_by(|a, b| a.task_name.cmp(&b.task_name));
    let states: Vec<(&str, TaskState)> = tasks
        .iter()
        .map(|t| (t.task_name.as_str(), t.status))
        .collect();
    assert_eq!(
        states,
        [
            ("t1", TaskState::Success),
            ("t2", TaskState::Success),
            ("t3", TaskState::Success),
            ("t4", TaskState::Failed),
        ]
    );
    let why = tasks[3].error_message.as_deref().unwrap_or_default();
    assert!(why.starts_with("interrupted"), "{why}");
    // Nothing of the dead writer is left to replay a second time.
    let leftovers: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(store);
    let _ = std::fs::remove_dir_all(state.parent().unwrap());
}

/// Three processes write one state file at once (each twenty runs of its own workflow) while
/// this one reads it over and over: every read succeeds, and at the end every run of every
/// writer is there, finished, with its three tasks.
#[test]
fn processes_write_one_state_file_at_once_while_another_reads() {
    let state = state_in("shared");
    // The file exists before the writers race to create it.
    drop(Store::open(&state).unwrap());
    let mut writers: Vec<Child> = (1..=3)
        .map(|n| start(&format!("writer-{n}"), &state))
        .collect();
    let mut reads = 0;
    while writers.iter_mut().any(|w| w.try_wait().unwrap().is_none()) {
        let store = Store::open_read(&state).unwrap().expect("the file exists");
        store.executions(&HistoryFilter::default()).unwrap();
        reads += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(reads > 0);

    let store = Store::open_read(&state).unwrap().unwrap();
    for n in 1..=3 {
        let filter = HistoryFilter {
            workflow: Some(format!("w{n}")),
            ..HistoryFilter::default()
        };
        let execs = store.executions(&filter).unwrap();
        assert_eq!(execs.len(), 20, "w{n}: {execs:?}");
        for e in &execs {
            assert_eq!(e.status, WorkflowStatus::Success, "{e:?}");
            assert_eq!(store.task_executions(&e.id).unwrap().len(), 3, "{e:?}");
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(state.parent().unwrap());
}
