//! A shell task's `limits:` on real processes: each limit read back by the task itself, and
//! a task that runs into its memory or CPU limit fails with a message naming it.
//!
//! The tests here run as root in a login session's cgroup, where PicoFlow makes no cgroup
//! per attempt, so the memory limit is `RLIMIT_AS` (the cgroup's `memory.max` is decided by
//! `limits::memory_via`, tested beside it).

mod common;

use common::{picoflow, run, stderr, stdout, TempDir};

/// A workflow of one shell task with `limits` (a YAML mapping's inside) and `command`.
fn one_task(limits: &str, command: &str) -> String {
    format!(
        "name: lim\ntasks:\n  - name: t\n    type: shell\n    retry: 0\n    limits: {{{limits}}}\n    config:\n      command: {command:?}\n"
    )
}

#[test]
fn nice_io_and_open_files_are_what_the_task_runs_with() {
    let dir = TempDir::new("lim-read");
    let out_file = dir.path().join("seen");
    let command = format!(
        "{{ cut -d' ' -f19 /proc/self/stat; ulimit -n; ionice -p $$; }} > {}",
        out_file.display()
    );
    let wf = dir.write(
        "w.yaml",
        &one_task("nice: 10, io: idle, open_files: 64", &command),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let seen = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(seen, "10\n64\nidle\n");
}

#[test]
fn defaults_come_from_the_configuration_and_the_task_overrides_them() {
    let dir = TempDir::new("lim-conf");
    dir.write(
        "picoflow.toml",
        "[tasks.limits]\nnice = 5\nio = \"best_effort:6\"\n",
    );
    let out_file = dir.path().join("seen");
    let command = format!(
        "{{ cut -d' ' -f19 /proc/self/stat; ionice -p $$; }} > {}",
        out_file.display()
    );
    let wf = dir.write("w.yaml", &one_task("nice: 12", &command));
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let seen = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(seen, "12\nbest-effort: prio 6\n");
    // validate shows what the task runs with: its own nice, the configuration's io.
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    assert!(
        stdout(&out).contains("Limits:\n  t: nice 12, io best_effort:6\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_task_past_its_memory_limit_fails_naming_it() {
    let dir = TempDir::new("lim-mem");
    let wf = dir.write(
        "w.yaml",
        &one_task(
            "memory: 50MB",
            "python3 -c 'x = bytearray(300 * 1024 * 1024)'",
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3));
    let s = stdout(&out);
    assert!(
        s.contains("exited with code 1; the memory limit (RLIMIT_AS 50MB) may have been reached"),
        "{s}"
    );
}

#[test]
fn a_task_past_its_cpu_limit_is_killed_naming_it() {
    let dir = TempDir::new("lim-cpu");
    let wf = dir.write("w.yaml", &one_task("cpu_seconds: 1", "while :; do :; done"));
    let started = std::time::Instant::now();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3));
    let s = stdout(&out);
    assert!(s.contains("killed: cpu_seconds limit (1 s) reached"), "{s}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn validate_shows_the_limits_and_locates_a_bad_one() {
    let dir = TempDir::new("lim-validate");
    let wf = dir.write(
        "w.yaml",
        &one_task(
            "nice: 10, io: best_effort:7, memory: 512KiB, cpu_seconds: 1m, open_files: 256",
            "true",
        ),
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    let memory_too_small = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        memory_too_small.contains("w.yaml: invalid workflow")
            && memory_too_small.contains(
                "  - line 3: task 't': limits.memory: '512KiB' is below the smallest limit, 1MB"
            ),
        "{memory_too_small}"
    );
    let wf = dir.write(
        "w.yaml",
        &one_task(
            "nice: 10, io: best_effort:7, memory: 2048KiB, cpu_seconds: 1m, open_files: 256",
            "true",
        ),
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "Limits:\n  t: nice 10, io best_effort:7, memory 2MB, cpu_seconds 60, open_files 256\n"
        ),
        "{}",
        stdout(&out)
    );
}
