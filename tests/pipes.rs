//! Output into closed pipes: `picoflow graph big.yaml | head -1` used to panic ("failed
//! printing to stdout: Broken pipe") and abort with status 134. Every command now stops
//! writing and exits with status 0 and nothing on stderr; a run keeps going to its end and
//! records its result; a closed stderr never turns an error into a crash.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{finish, picoflow, run, stderr, stdout, TempDir};

/// The write end of a pipe whose read end is already closed: every write gets `EPIPE`.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Runs `cmd` with its stdout into a closed pipe; returns the output (stderr captured).
fn into_closed_stdout(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, &format!("{cmd:?}"));
    eprintln!("--- {cmd:?} exit {:?}\n{}", out.status, stderr(&out));
    out
}

/// Asserts the quiet end the CLI promises: status 0, nothing on stderr.
fn assert_quiet(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: status {:?}, stderr: {}",
        out.status,
        stderr(out)
    );
    assert_eq!(stderr(out), "", "{what}");
}

const NOISY: &str = "name: noisy
tasks:
  - name: talk
    type: shell
    config:
      command: \"seq 1 200000\"
  - name: after
    type: shell
    depends_on: [talk]
    config:
      command: \"echo done > after.txt\"
";

/// A state file with two finished executions of a workflow whose first task prints 1.3 MB.
fn with_history(dir: &TempDir) {
    let wf = dir.write("noisy.yaml", NOISY);
    for _ in 0..2 {
        let out = run(picoflow(dir.path()).arg("run").arg(&wf));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

fn big_workflow(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::from("name: big\ntasks:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - name: t{i}\n    type: shell\n    config:\n      command: \"true\"\n"
        ));
        if i > 0 {
            text.push_str(&format!("    depends_on: [t{}]\n", i - 1));
        }
    }
    let p = dir.join("big.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_command_into_a_closed_stdout_ends_quietly() {
    let dir = TempDir::new("pipes-all");
    with_history(&dir);
    big_workflow(dir.path(), 200);
    let commands: &[&[&str]] = &[
        &["--version"],
        &["--help"],
        &["validate", "noisy.yaml"],
        &["graph", "big.yaml"],
        &["graph", "big.yaml", "--format", "mermaid"],
        &["history"],
        &["history", "--format", "json"],
        &["status"],
        &["status", "--format", "json"],
        &["status", "--watch"],
        &["stats"],
        &["stats", "--format", "json"],
        &["logs", "--workflow", "noisy"],
        &["logs", "noisy", "talk", "--follow"],
        &["workflow", "list"],
        &["daemon", "status"],
        &["export", "sqlite", "out.db"],
        &["prune", "--days", "30"],
        &["init", "fresh"],
    ];
    for args in commands {
        let out = into_closed_stdout(picoflow(dir.path()).args(*args));
        assert_quiet(&out, &args.join(" "));
    }
    // The commands that write files did their work before their message was lost.
    assert!(dir.path().join("out.db").exists());
    assert!(dir.path().join("fresh.yaml").exists());
}

#[test]
fn a_reader_that_stops_after_one_line_ends_the_command_quietly() {
    let dir = TempDir::new("pipes-head");
    with_history(&dir);
    // Both outputs are far larger than a pipe's 64 KiB buffer, so the writer is still
    // writing when the reader goes away.
    big_workflow(dir.path(), 5000);
    for args in [
        &["graph", "big.yaml"][..],
        &[
            "logs",
            "--workflow",
            "noisy",
            "--task",
            "talk",
            "--tail",
            "200000",
        ][..],
    ] {
        let mut child = picoflow(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?} printed nothing");
        let out = finish(child, &format!("{args:?}"));
        assert_quiet(&out, &args.join(" "));
    }
}

#[test]
fn a_run_whose_viewer_goes_away_finishes_and_records_success() {
    let dir = TempDir::new("pipes-run");
    let wf = dir.write("noisy.yaml", NOISY);
    let out = into_closed_stdout(picoflow(dir.path()).arg("run").arg(&wf));
    assert_quiet(&out, "run");
    assert!(dir.path().join("after.txt").exists(), "the last task ran");
    let out = run(picoflow(dir.path()).args(["history", "--format", "json"]));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["status"], "success", "{}", stdout(&out));
    assert_eq!(history[0]["successful_tasks"], 2, "{}", stdout(&out));
}

#[test]
fn a_closed_stderr_keeps_the_documented_exit_code() {
    let dir = TempDir::new("pipes-stderr");
    let child = picoflow(dir.path())
        .args(["run", "nope.yaml"])
        .stdout(Stdio::piped())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    let out = finish(child, "run nope.yaml");
    assert_eq!(out.status.code(), Some(5), "{:?}", out.status);
}

#[test]
fn a_missing_file_names_its_cause_once() {
    let dir = TempDir::new("pipes-cause");
    let out = run(picoflow(dir.path()).args(["run", "nope.yaml"]));
    assert_eq!(out.status.code(), Some(5));
    let text = stderr(&out);
    assert!(text.contains("nope.yaml"), "{text}");
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
}
