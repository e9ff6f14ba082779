//! State and history on real processes (REL-001, REL-003, CFG-003, CFG-005, OBS-004):
//! history after runs, readers while a run writes, resume after `kill -9`, retention.

mod common;

use std::time::{Duration, Instant};

use common::{picoflow, run, stderr, stdout, TempDir};
use picoflow_lib::{Event, Store, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

const TWO_TASKS: &str = "name: pair
tasks:
  - name: first
    type: shell
    config:
      command: \"echo first says hi\"
  - name: second
    type: shell
    depends_on: [first]
    config:
      command: \"echo second; echo to-stderr >&2\"
";

#[test]
fn history_logs_stats_and_workflow_list_after_two_runs() {
    let dir = TempDir::new("hist");
    let wf = dir.write("pair.yaml", TWO_TASKS);
    for _ in 0..2 {
        let out = run(picoflow(dir.path()).arg("run").arg(&wf));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(
        dir.path().join("picoflow.redb").exists(),
        "default state file in the working directory"
    );

    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    assert_eq!(out.status.code(), Some(0));
    let h = json(&out);
    let execs = h.as_array().unwrap();
    assert_eq!(execs.len(), 2);
    for e in execs {
        assert_eq!(e["workflow_name"], "pair");
        assert_eq!(e["status"], "success");
        assert_eq!(e["total_tasks"], 2);
        assert_eq!(e["successful_tasks"], 2);
        let tasks = e["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(tasks
            .iter()
            .all(|t| t["status"] == "success" && t["attempt"] == 1));
        assert_eq!(tasks[0]["stdout"], "first says hi\n");
    }
    assert!(
        execs[0]["started_at"].as_str() > execs[1]["started_at"].as_str(),
        "newest first"
    );

    let out = run(picoflow(dir.path()).args(["history", "--workflow", "pair", "--limit", "1"]));
    let text = stdout(&out);
    assert!(text.starts_with("WORKFLOW"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("Success") && text.contains("2/2") && text.contains("All tasks completed")
    );

    let out = run(picoflow(dir.path()).args(["logs", "--workflow", "pair", "--task", "second"]));
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("second\n") && text.contains("to-stderr"),
        "{text}"
    );
    assert!(!text.contains("first says hi"), "{text}");
    // The positional form of the PRD works too.
    let out = run(picoflow(dir.path()).args(["logs", "pair", "first"]));
    assert!(stdout(&out).contains("first says hi"));

    let out = run(picoflow(dir.path()).args(["stats", "--workflow", "pair"]));
    let text = stdout(&out);
    assert!(
        text.contains("Workflow: pair") && text.contains("Executions: 2"),
        "{text}"
    );
    assert!(text.contains("Success: 2 (100%)"), "{text}");
    assert!(
        text.contains("first:") && text.contains("100% success"),
        "{text}"
    );

    let out = run(picoflow(dir.path()).args(["workflow", "list", "--format", "json"]));
    let list = json(&out);
    assert_eq!(list[0]["name"], "pair");
    assert_eq!(list[0]["type"], "on-demand");
    assert_eq!(list[0]["success"], 2);
    assert_eq!(list[0]["failed"], 0);
    let out = run(picoflow(dir.path()).args(["workflow", "list"]));
    assert!(stdout(&out).contains("On-Demand"));

    // Unknown workflow / execution: exit 5.
    let out = run(picoflow(dir.path()).args(["logs", "--workflow", "nope"]));
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn readers_work_while_a_run_writes() {
    let dir = TempDir::new("concurrent");
    let wf = dir.write(
        "slow.yaml",
        "name: slow\ntasks:\n  - name: quick\n    type: shell\n    config:\n      command: \"true\"\n  - name: nap\n    type: shell\n    depends_on: [quick]\n    config:\n      command: \"sleep 5\"\n",
    );
    // A finished run first, so history has something besides the running one.
    let mut child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_running = false;
    while Instant::now() < deadline {
        let out = run(picoflow(dir.path()).args(["status", "--workflow", "slow"]));
        let text = stdout(&out);
        // A task's start reaches the file within the store's start window (2 s).
        if text.contains("Status: Running") && text.contains("⟳ nap") {
            assert_eq!(out.status.code(), Some(0));
            assert!(text.contains("✓ quick"), "{text}");
            saw_running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_running, "status never showed the run as running");
    for args in [
        vec!["history"],
        vec!["status", "--running-only", "--format", "json"],
        vec!["workflow", "list"],
        vec!["stats"],
        vec!["logs", "--workflow", "slow"],
    ] {
        let out = run(picoflow(dir.path()).args(&args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("already open"), "{args:?}");
    }
    let out = run(picoflow(dir.path()).args(["status", "--running-only", "--format", "json"]));
    assert_eq!(json(&out)[0]["execution"]["status"], "running");
    assert!(child.wait().unwrap().success());
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "slow"]));
    assert!(stdout(&out).contains("Status: Success"));
}

#[test]
fn a_run_killed_midway_resumes_without_redoing_finished_tasks() {
    let dir = TempDir::new("resume");
    let mut yaml = String::from("name: chain\ntasks:\n");
    for i in 1..=6 {
        yaml.push_str(&format!(
            "  - name: t{i}\n    type: shell\n{}    config:\n      command: \"echo t{i} >> ran.txt; sleep 0.7\"\n",
            if i > 1 { format!("    depends_on: [t{}]\n", i - 1) } else { String::new() }
        ));
    }
    let wf = dir.write("chain.yaml", &yaml);
    let ran = dir.path().join("ran.txt");
    let mut child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&ran).unwrap_or_default();
        if text.contains("t3") {
            break;
        }
        assert!(Instant::now() < deadline, "t3 never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(800)); // the orphaned task finishes its sleep

    // Readers recover the file and see the execution as interrupted, not running.
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "chain"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Status: Interrupted"),
        "{}",
        stdout(&out)
    );

    let out = run(picoflow(dir.path()).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Resuming execution"));

    let text = std::fs::read_to_string(&ran).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for i in 1..=6 {
        let n = lines.iter().filter(|l| **l == format!("t{i}")).count();
        assert!(n >= 1, "t{i} never ran: {lines:?}");
        // At-least-once only for the task that was running when the process died.
        if n > 1 {
            assert_eq!(n, 2, "{lines:?}");
            assert!(
                i >= 3,
                "t{i} had finished before the kill but ran again: {lines:?}"
            );
        }
    }
    let twice = (1..=6)
        .filter(|i| lines.iter().filter(|l| **l == format!("t{i}")).count() > 1)
        .count();
    assert!(twice <= 1, "{lines:?}");

    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    let h = json(&out);
    assert_eq!(
        h.as_array().unwrap().len(),
        1,
        "resume continues the same execution"
    );
    assert_eq!(h[0]["status"], "success");
    assert_eq!(h[0]["successful_tasks"], 6);

    // Nothing left to resume.
    let out = run(picoflow(dir.path()).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("no interrupted execution"),
        "{}",
        stderr(&out)
    );
}

fn record(store: &Store, wf: &str, days_ago: i64, log_root: &std::path::Path) -> String {
    let started = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let id = picoflow_lib::new_id();
    let exec = WorkflowExecution {
        id: id.clone(),
        workflow_name: wf.into(),
        started_at: started,
        finished_at: Some(started),
        status: WorkflowStatus::Success,
        duration_seconds: Some(1.0),
        total_tasks: 1,
        successful_tasks: 1,
        failed_tasks: 0,
        created_at: started,
        pid: 1,
        source: None,
        definition: None,
    };
    let task = TaskExecution {
        id: picoflow_lib::new_id(),
        workflow_execution_id: id.clone(),
        task_name: "t".into(),
        status: TaskState::Success,
        started_at: started,
        finished_at: Some(started),
        exit_code: Some(0),
        stdout: Some("x".into()),
        stderr: None,
        stdout_size: None,
        stderr_size: None,
        attempt: 1,
        error_message: None,
        duration_seconds: Some(1.0),
        created_at: started,
        outputs: None,
    };
    let sink = store.sink();
    sink.on_event(&Event::TaskFinished {
        record: task,
        retry_in: None,
    });
    sink.on_event(&Event::WorkflowFinished(exec));
    smol::block_on(sink.flush()).unwrap();
    // Its log directory, dated like the execution.
    let d = picoflow_lib::execution_log_dir(log_root, wf, started, &id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("t.log"), "x\n").unwrap();
    let when = std::time::SystemTime::now() - Duration::from_secs(days_ago as u64 * 86_400);
    std::fs::File::open(&d).unwrap().set_modified(when).unwrap();
    id
}

#[test]
fn prune_deletes_old_history_and_logs_and_keeps_recent_ones() {
    let dir = TempDir::new("prune");
    let logs = dir.path().join("logs");
    let (old, recent) = {
        let store = Store::open(dir.path().join("picoflow.redb")).unwrap();
        let old = record(&store, "nightly", 45, &logs);
        let recent = record(&store, "nightly", 3, &logs);
        (old, recent)
    };
    let out = run(picoflow(dir.path()).arg("prune"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Pruned 1 executions"),
        "{}",
        stdout(&out)
    );

    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    let ids: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![recent.clone()]);
    let dirs: Vec<String> = std::fs::read_dir(logs.join("nightly"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].ends_with(&recent) && !dirs[0].ends_with(&old));

    // A shorter retention on the command line removes the recent one too.
    let out = run(picoflow(dir.path()).args(["prune", "--days", "1"]));
    assert_eq!(out.status.code(), Some(0));
    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    assert_eq!(json(&out).as_array().unwrap().len(), 0);
}

/// `status` listed an execution's tasks in the order they started, which is not the order of
/// the workflow file; it lists them in the file's order now, in the table and in JSON.
#[test]
fn status_lists_tasks_in_workflow_order() {
    let dir = TempDir::new("status-order");
    let wf = dir.write(
        "w.yaml",
        "name: order\ntasks:\n  - name: report\n    type: shell\n    depends_on: [fastest]\n    config:\n      command: \"true\"\n  - name: slowest\n    type: shell\n    config:\n      command: \"sleep 0.4\"\n  - name: middle\n    type: shell\n    config:\n      command: \"sleep 0.2\"\n  - name: fastest\n    type: shell\n    config:\n      command: \"true\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "order"]));
    let text = stdout(&out);
    let pos = |n: &str| {
        text.find(&format!(" {n} "))
            .unwrap_or_else(|| panic!("{n}: {text}"))
    };
    // The file's order, not the order the tasks started or ended in.
    assert!(pos("report") < pos("slowest"), "{text}");
    assert!(pos("slowest") < pos("middle"), "{text}");
    assert!(pos("middle") < pos("fastest"), "{text}");
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "order", "--format", "json"]));
    let names: Vec<String> = json(&out)[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["report", "slowest", "middle", "fastest"]);
}

/// `run --resume` continues an execution with the definition it started from: after an edit
/// that changes a task it is refused (exit 4, the execution kept as it was) unless `--force`
/// says to go on with the new one.
#[test]
fn resume_refuses_a_changed_workflow_unless_forced() {
    let dir = TempDir::new("resume-changed");
    let text = |second: &str| {
        format!(
            "name: edited\ntasks:\n  - name: first\n    type: shell\n    config:\n      command: \"echo first >> ran.txt\"\n  - name: second\n    type: shell\n    depends_on: [first]\n    config:\n      command: \"{second}\"\n"
        )
    };
    let wf = dir.write("edited.yaml", &text("echo waiting >> ran.txt; sleep 30"));
    let ran = dir.path().join("ran.txt");
    let mut child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&ran)
        .unwrap_or_default()
        .contains("waiting")
    {
        assert!(Instant::now() < deadline, "the second task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    dir.write("edited.yaml", &text("echo changed >> ran.txt"));
    let out = run(picoflow(dir.path()).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the workflow changed since execution"),
        "{}",
        stderr(&out)
    );
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "edited"]));
    assert!(
        stdout(&out).contains("Status: Interrupted"),
        "{}",
        stdout(&out)
    );

    let out = run(picoflow(dir.path())
        .args(["run", "--resume", "--force"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<String> = std::fs::read_to_string(&ran)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines, ["first", "waiting", "changed"], "{lines:?}");
}

/// A task that prints 12 MB keeps its whole (10 MB) capture in its log file but only the last
/// 64 KiB of it in the state file, with the whole size beside it: runs of a chatty task do not
/// fill an SD card through `picoflow.redb`.
#[test]
fn the_state_file_keeps_the_end_of_a_large_capture() {
    let dir = TempDir::new("big-capture");
    let wf = dir.write(
        "chatty.yaml",
        "name: chatty\ntasks:\n  - name: talk\n    type: shell\n    config:\n      command: \"head -c 12000000 /dev/zero | tr '\\\\0' x; echo the-end\"\n",
    );
    for _ in 0..3 {
        let out = run(picoflow(dir.path()).arg("run").arg(&wf));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let size = std::fs::metadata(dir.path().join("picoflow.redb"))
        .unwrap()
        .len();
    assert!(size < 4_000_000, "three runs made a {size}-byte state file");
    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    for e in json(&out).as_array().unwrap() {
        let t = &e["tasks"][0];
        let text = t["stdout"].as_str().unwrap();
        assert_eq!(text.len(), picoflow_lib::STORED_CAPTURE, "{}", &text[..80]);
        assert!(
            text.ends_with("[output truncated at 10 MB]\n"),
            "{}",
            &text[text.len() - 80..]
        );
        assert_eq!(t["stdout_size"], 10 * 1024 * 1024 + 29, "{t}");
        assert!(t.get("stderr_size").is_none(), "{t}");
    }
    let log = std::fs::read_dir(dir.path().join("logs/chatty"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("talk.log");
    assert!(std::fs::metadata(&log).unwrap().len() >= 10 * 1024 * 1024);
}

/// A task that PicoFlow stops (SIGTERM to `run`) and a task whose `run` was killed (`kill -9`)
/// end in one state: `interrupted` in `status` and the run's summary, recorded `failed` with an
/// `interrupted:` message and no exit code of its own, not counted among the failed tasks; a
/// resume runs it again even with `continue_on_failure`.
#[test]
fn a_stopped_task_and_a_killed_one_are_both_interrupted() {
    let yaml = "name: stop\ntasks:\n  - name: long\n    type: shell\n    continue_on_failure: true\n    config:\n      command: \"if [ -e again ]; then echo again; else touch started; sleep 30; fi\"\n  - name: after\n    type: shell\n    depends_on: [long]\n    config:\n      command: \"true\"\n";
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let dir = TempDir::new("stopped");
        let wf = dir.write("stop.yaml", yaml);
        let child = picoflow(dir.path())
            .arg("run")
            .arg(&wf)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_for(Duration::from_secs(15), "the task to start", || {
            dir.path().join("started").exists()
        });
        // Readers see a task running from its first moment, not once its start is committed.
        common::wait_for(
            Duration::from_millis(1000),
            "status to show it running",
            || {
                let out = run(picoflow(dir.path()).args(["status", "--workflow", "stop"]));
                let text = stdout(&out);
                let long = text
                    .lines()
                    .find(|l| l.contains(" long"))
                    .unwrap_or_default();
                long.contains("⟳ long") && long.contains("running for")
            },
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = common::finish(child, "the stopped run");
        if signal == libc::SIGTERM {
            assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
            let text = stdout(&out);
            assert!(
                text.contains("Task 'long' interrupted: the run was stopped"),
                "{text}"
            );
            assert!(text.contains("0 failed, 1 interrupted"), "{text}");
            assert!(!text.contains("exit code: 130"), "{text}");
        }
        let out = run(picoflow(dir.path()).args(["status", "--workflow", "stop"]));
        let text = stdout(&out);
        let long = text
            .lines()
            .find(|l| l.contains("✗ long"))
            .unwrap_or_default();
        assert!(long.ends_with("(interrupted)"), "{signal}: {text}");
        // A dead run's duration does not go on growing.
        assert!(!text.contains("Elapsed"), "{signal}: {text}");
        if signal == libc::SIGKILL {
            assert!(text.contains("Duration: at least 0."), "{text}");
        }
        assert!(text.contains("Status: Interrupted"), "{signal}: {text}");
        // A writer (the resume) records what the dead run could not; then both agree.
        dir.write("again", "");
        let out = run(picoflow(dir.path()).args(["run", "--resume"]).arg(&wf));
        assert_eq!(out.status.code(), Some(0), "{signal}: {}", stdout(&out));
        let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
        let h = json(&out);
        let e = &h[0];
        assert_eq!(e["status"], "success", "{signal}: {e}");
        assert_eq!(e["failed_tasks"], 0, "{signal}: {e}");
        let first = e["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task_name"] == "long" && t["attempt"] == 1)
            .unwrap_or_else(|| panic!("{e}"));
        assert_eq!(first["status"], "failed", "{signal}: {first}");
        assert!(first["exit_code"].is_null(), "{signal}: {first}");
        assert!(
            first["error_message"]
                .as_str()
                .unwrap()
                .starts_with("interrupted:"),
            "{signal}: {first}"
        );
        let again = e["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task_name"] == "long" && t["stdout"] == "again\n");
        assert!(again, "the resume ran the stopped task again: {e}");
    }
}

/// A run whose only task failed with `continue_on_failure` succeeds (DECISIONS 5) but does not
/// say "completed successfully", and `history` names the task; `history --limit 0` is refused
/// rather than showing "No executions found." over a full history.
#[test]
fn a_run_that_went_on_past_failures_says_so_and_limit_zero_is_refused() {
    let dir = TempDir::new("went-on");
    let wf = dir.write(
        "n.yaml",
        "name: n\ntasks:\n  - name: a\n    type: shell\n    continue_on_failure: true\n    retry: 0\n    config:\n      command: \"exit 1\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Workflow 'n' completed in")
            && text.contains("1 task failed with continue_on_failure"),
        "{text}"
    );
    assert!(!text.contains("successfully"), "{text}");
    let out = run(picoflow(dir.path()).arg("history"));
    assert!(
        stdout(&out).contains("Completed; failed with continue_on_failure: a"),
        "{}",
        stdout(&out)
    );
    let out = run(picoflow(dir.path()).args(["history", "--limit", "0"]));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("--limit: must be at least 1"),
        "{}",
        stderr(&out)
    );
}

/// `run --resume` with nothing recorded says so (exit code 5) and creates no state file.
#[test]
fn a_resume_with_no_state_creates_nothing() {
    let dir = TempDir::new("resume-nothing");
    let wf = dir.write(
        "ok.yaml",
        "name: ok\ntasks:\n  - name: a\n    type: shell\n    config: {command: \"true\"}\n",
    );
    let out = run(picoflow(dir.path()).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no execution of 'ok' to resume"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ok.yaml")]);
}

/// A `--db-path` in a directory that does not exist: a command that writes the state creates
/// the directory and says so (the user guide's `--db-path /var/lib/picoflow/history.db run`
/// needs no `mkdir` first), where it used to create it silently — a mistyped path or an
/// unmounted disk went unnoticed. The read commands create nothing.
#[test]
fn a_missing_state_directory_is_created_with_a_warning_and_never_by_readers() {
    let dir = TempDir::new("state-dir");
    let d = dir.path();
    dir.write(
        "ok.yaml",
        "name: ok\ntasks:\n  - {name: a, type: shell, config: {command: \"true\"}}\n",
    );
    for read in [
        &["status"][..],
        &["history"],
        &["stats"],
        &["workflow", "list"],
        &["logs", "--workflow", "ok"],
        &["export", "sqlite", "out.db"],
        &["daemon", "status"],
        &["daemon", "stop"],
    ] {
        let out = run(picoflow(d)
            .args(["--db-path", "absent/sub/x.redb"])
            .args(read));
        assert!(!d.join("absent").exists(), "{read:?} created the directory");
        assert!(
            !stderr(&out).contains("created"),
            "{read:?}: {}",
            stderr(&out)
        );
    }
    let out = run(picoflow(d).args(["--db-path", "absent/sub/x.redb", "status"]));
    assert!(
        stdout(&out).contains("No executions recorded yet"),
        "{}",
        stdout(&out)
    );

    let out = run(picoflow(d).args(["--db-path", "absent/sub/x.redb", "run", "ok.yaml"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("created the directory absent/sub for the state file"),
        "{err}"
    );
    assert!(d.join("absent/sub/x.redb").is_file());
    // Once it exists, nothing more is said.
    let out = run(picoflow(d).args(["--db-path", "absent/sub/x.redb", "run", "ok.yaml"]));
    assert!(
        !stderr(&out).contains("created the directory"),
        "{}",
        stderr(&out)
    );
}
