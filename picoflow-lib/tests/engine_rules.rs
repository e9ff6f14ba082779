//! The engine's rules — retries, timeouts, cancellation, skips, trigger rules — driven by a
//! scripted executor registered through the public [`Registry`]: no process is started, so
//! these run in well under a second each (the one timeout takes its one second).
//!
//! A task of type `script` has `config: {results: [...]}`: what its attempts do, in order (the
//! last one repeats): `ok`, `fail` (retryable), `fatal` (not retryable) or `hang` (runs until
//! the attempt is stopped, through `picoflow_lib::stop::race` as every executor does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picoflow_lib::stop;
use picoflow_lib::{
    parse_workflow, BoxFuture, CancelToken, Capture, Engine, EngineSettings, Executor, Outcome,
    Registry, RunOptions, RunReport, SkipReason, TaskConfig, TaskContext, TaskOutput, TaskState,
    WorkflowStatus,
};

/// Plays each task's script; counts attempts per task.
#[derive(Default)]
struct Script {
    attempts: Mutex<HashMap<String, usize>>,
}

impl Script {
    fn attempts(&self, task: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .get(task)
            .copied()
            .unwrap_or(0)
    }
}

/// The executor registered for `script`: a handle on the shared [`Script`].
struct Player(Arc<Script>);

impl Executor for Player {
    fn check(&self, task: &picoflow_lib::Task) -> Result<(), String> {
        match &task.config {
            TaskConfig::Custom(c) if c["results"].is_array() => Ok(()),
            _ => Err("config.results: a list of ok, fail, fatal or hang".into()),
        }
    }

    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let n = {
                let mut a = self.0.attempts.lock().unwrap();
                let n = a.entry(ctx.task.name.clone()).or_default();
                *n += 1;
                *n
            };
            let TaskConfig::Custom(c) = &ctx.task.config else {
                unreachable!("checked")
            };
            let results = c["results"].as_array().unwrap();
            let step = results[(n - 1).min(results.len() - 1)]
                .as_str()
                .unwrap_or("ok");
            let ended = |outcome, code: i32, error: Option<&str>, retryable| TaskOutput {
                outcome,
                exit_code: Some(code),
                stdout: Capture::default(),
                stderr: Capture::default(),
                error: error.map(String::from),
                retryable,
            };
            match step {
                "ok" => ended(Outcome::Success, 0, None, false),
                "fail" => ended(Outcome::Failed, 1, Some("scripted failure"), true),
                "fatal" => ended(Outcome::Failed, 2, Some("scripted fatal failure"), false),
                _ => {
                    let forever = std::future::pending::<()>();
                    match stop::race(&ctx, std::pin::pin!(forever)).await {
                        Ok(()) => unreachable!(),
                        Err(stopped) => stopped.output(
                            "script abandoned",
                            Capture::default(),
                            Capture::default(),
                        ),
                    }
                }
            }
        })
    }
}

/// Runs `tasks` (YAML list items) with the scripted executor, retries without delay.
fn run_with(tasks: &str, opts: RunOptions) -> (RunReport, Arc<Script>, Duration) {
    let script = Arc::new(Script::default());
    let mut registry = Registry::empty();
    registry.register("script", Player(script.clone()));
    let wf = parse_workflow(
        &format!("name: rules\ntasks:\n{tasks}"),
        "rules.yaml",
        &registry,
    )
    .unwrap_or_else(|e| panic!("{e}\n{tasks}"));
    let mut settings = EngineSettings::default();
    settings.retry.max_backoff_seconds = 0;
    let engine = Engine::new(registry).with_settings(settings);
    let t = Instant::now();
    let report = smol::block_on(engine.run(&wf, opts)).unwrap();
    (report, script, t.elapsed())
}

fn run(tasks: &str) -> (RunReport, Arc<Script>) {
    let (r, s, _) = run_with(tasks, RunOptions::default());
    (r, s)
}

fn task(name: &str, results: &str, extra: &str) -> String {
    format!("  - name: {name}\n    type: script\n{extra}    config: {{results: [{results}]}}\n")
}

fn state(r: &RunReport, name: &str) -> TaskState {
    r.tasks.iter().find(|t| t.name == name).unwrap().state
}

#[test]
fn a_retryable_failure_is_retried_up_to_the_retry_count() {
    let (r, s) = run(&task("t", "fail, fail, ok", "    retry: 2\n"));
    assert!(r.success(), "{r:?}");
    assert_eq!((s.attempts("t"), r.tasks[0].attempts), (3, 3));

    let (r, s) = run(&task("t", "fail, fail, ok", "    retry: 1\n"));
    assert_eq!(r.execution.status, WorkflowStatus::Failed);
    assert_eq!(s.attempts("t"), 2);
    assert_eq!(r.tasks[0].error.as_deref(), Some("scripted failure"));
}

#[test]
fn a_failure_that_cannot_succeed_is_not_retried() {
    let (r, s) = run(&task("t", "fatal, ok", "    retry: 3\n"));
    assert_eq!(state(&r, "t"), TaskState::Failed);
    assert_eq!(s.attempts("t"), 1);
}

#[test]
fn a_timeout_stops_the_attempt_with_exit_code_124_and_is_retried() {
    let (r, s, took) = run_with(
        &task("t", "hang, ok", "    timeout: 1\n    retry: 1\n"),
        RunOptions::default(),
    );
    assert!(r.success(), "{r:?}");
    assert_eq!(s.attempts("t"), 2);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let (r, _, _) = run_with(
        &task("t", "hang", "    timeout: 1\n    retry: 0\n"),
        RunOptions::default(),
    );
    let t = &r.tasks[0];
    assert_eq!((t.state, t.exit_code), (TaskState::Timeout, Some(124)));
    assert_eq!(
        t.error.as_deref(),
        Some("timed out after 1s; script abandoned")
    );
}

#[test]
fn a_cancelled_run_is_interrupted_and_starts_nothing_more() {
    let (canceller, cancel) = CancelToken::new();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        canceller.cancel();
    });
    let tasks = task("long", "hang", "    continue_on_failure: true\n")
        + &task("after", "ok", "    depends_on: [long]\n");
    let (r, s, took) = run_with(
        &tasks,
        RunOptions {
            cancel,
            ..RunOptions::default()
        },
    );
    stopper.join().unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(r.execution.status, WorkflowStatus::Interrupted);
    assert_eq!(
        r.execution.failed_tasks, 0,
        "an interrupted task is no failure"
    );
    let long = &r.tasks[0];
    assert!(
        long.error.as_deref().is_some_and(
            |e| e.starts_with("interrupted: the run was stopped (cancelled; script abandoned)")
        ),
        "{long:?}"
    );
    assert_eq!(long.exit_code, None);
    assert_eq!(state(&r, "after"), TaskState::Pending);
    assert_eq!(s.attempts("after"), 0);
}

#[test]
fn a_failure_skips_its_dependents_but_not_the_independent_tasks() {
    let tasks = task("a", "fatal", "")
        + &task("b", "ok", "    depends_on: [a]\n")
        + &task("c", "ok", "    depends_on: [b]\n")
        + &task("solo", "ok", "");
    let (r, s) = run(&tasks);
    assert_eq!(r.execution.status, WorkflowStatus::Failed);
    assert_eq!(state(&r, "b"), TaskState::Skipped);
    assert_eq!(state(&r, "c"), TaskState::Skipped);
    assert_eq!(state(&r, "solo"), TaskState::Success);
    assert_eq!((s.attempts("b"), s.attempts("solo")), (0, 1));
    let why = r
        .tasks
        .iter()
        .find(|t| t.name == "b")
        .unwrap()
        .error
        .clone();
    assert_eq!(why, Some(SkipReason::Dependency("a".into()).message()));

    // With continue_on_failure the dependents run and the workflow succeeds.
    let tasks = task("a", "fatal", "    continue_on_failure: true\n")
        + &task("b", "ok", "    depends_on: [a]\n");
    let (r, s) = run(&tasks);
    assert!(r.success(), "{r:?}");
    assert_eq!(r.execution.failed_tasks, 1);
    assert_eq!(s.attempts("b"), 1);
}

#[test]
fn trigger_rules_decide_after_their_dependencies() {
    // `bad` fails outright (with continue_on_failure it would count as finished, DECISIONS 5).
    let deps = task("good", "ok", "") + &task("bad", "fatal", "");
    let ruled = |rule: &str| {
        deps.clone()
            + &task(
                "x",
                "ok",
                &format!("    depends_on: [good, bad]\n    run_if: {rule}\n"),
            )
    };
    for (rule, runs) in [
        ("all_success", false),
        ("all_done", true),
        ("any_failed", true),
        ("all_failed", false),
    ] {
        let (r, s) = run(&ruled(rule));
        assert_eq!(s.attempts("x") == 1, runs, "{rule}: {r:?}");
        if !runs {
            let why = r
                .tasks
                .iter()
                .find(|t| t.name == "x")
                .unwrap()
                .error
                .clone();
            let expected = match rule {
                // A failed dependency without the rule's say is a skip for the failure.
                "all_success" => SkipReason::Dependency("bad".into()).message(),
                _ => SkipReason::Rule(rule.into()).message(),
            };
            assert_eq!(why, Some(expected), "{rule}");
        }
    }
}

#[test]
fn a_false_condition_skips_the_task_and_releases_its_dependents() {
    let tasks = task("maybe", "ok", "    when: \"1 > 2\"\n")
        + &task("next", "ok", "    depends_on: [maybe]\n");
    let (r, s) = run(&tasks);
    assert!(r.success(), "{r:?}");
    assert_eq!(state(&r, "maybe"), TaskState::Skipped);
    assert_eq!((s.attempts("maybe"), s.attempts("next")), (0, 1));
}

/// A custom type gets what the built-in types get: its settings are checked when the workflow
/// is loaded, through [`Executor::check`], every problem at once and each naming its task,
/// handlers included; a workflow built in code is checked the same way.
#[test]
fn a_custom_types_settings_are_checked_at_load_with_the_task_named() {
    let mut registry = Registry::empty();
    registry.register("script", Player(Arc::new(Script::default())));
    let yaml = "name: rules\ntasks:\n".to_string()
        + &task("good", "ok", "")
        + "  - name: bad\n    type: script\n    config: {results: ok}\n"
        + "on_exit:\n  - name: cleanup\n    type: script\n    config: {}\n";
    match parse_workflow(&yaml, "rules.yaml", &registry) {
        Err(picoflow_lib::Error::Invalid { file, problems }) => {
            assert_eq!(file, "rules.yaml");
            assert_eq!(
                problems,
                [
                    "task 'bad': config.results: a list of ok, fail, fatal or hang",
                    "task 'cleanup': config.results: a list of ok, fail, fatal or hang",
                ]
            );
        }
        other => panic!("{other:?}"),
    }

    let good = parse_workflow(
        &format!("name: rules\ntasks:\n{}", task("good", "ok", "")),
        "rules.yaml",
        &registry,
    )
    .unwrap();
    let mut built = good.clone();
    built.tasks[0].config = TaskConfig::Custom(serde_json::json!({"results": 3}));
    let err = picoflow_lib::validate_workflow(&built, "in code", &registry).unwrap_err();
    assert_eq!(
        err.to_string()
            .matches("task 'good': config.results")
            .count(),
        1,
        "{err}"
    );
}
