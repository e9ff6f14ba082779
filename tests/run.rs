//! `picoflow run` on real processes: parallelism, retries, failure semantics, timeouts,
//! variables, output caps and signals (DAG-003 … DAG-009, EXEC-001/004/005).

mod common;

use std::time::{Duration, Instant};

use common::{picoflow, run, stdout, TempDir};

fn parallel_sleepers(n: usize, max_parallel: usize, dir: &TempDir) -> String {
    let mut y = format!("name: sleepers\nconfig:\n  max_parallel: {max_parallel}\ntasks:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - name: s{i}\n    type: shell\n    retry: 0\n    config:\n      command: \"echo start $(date +%s.%N) >> {d}/t{i}; sleep 1; echo end $(date +%s.%N) >> {d}/t{i}\"\n",
            d = dir.path().display()
        ));
    }
    y
}

fn intervals(dir: &TempDir, n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let text = std::fs::read_to_string(dir.path().join(format!("t{i}"))).unwrap();
            let mut s = 0.0;
            let mut e = 0.0;
            for line in text.lines() {
                let (k, v) = line.split_once(' ').unwrap();
                let v: f64 = v.parse().unwrap();
                if k == "start" {
                    s = v
                } else {
                    e = v
                }
            }
            (s, e)
        })
        .collect()
}

fn max_overlap(iv: &[(f64, f64)]) -> usize {
    iv.iter()
        .map(|&(s, _)| iv.iter().filter(|&&(s2, e2)| s2 <= s && s < e2).count())
        .max()
        .unwrap()
}

#[test]
fn ten_sleepers_in_parallel_take_about_one_second() {
    let dir = TempDir::new("par10");
    let wf = dir.write("w.yaml", &parallel_sleepers(10, 10, &dir));
    let t = Instant::now();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(max_overlap(&intervals(&dir, 10)), 10);
}

#[test]
fn max_parallel_two_never_runs_more_than_two() {
    let dir = TempDir::new("par2");
    let wf = dir.write("w.yaml", &parallel_sleepers(6, 2, &dir));
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    let iv = intervals(&dir, 6);
    assert_eq!(max_overlap(&iv), 2, "{iv:?}");
}

#[test]
fn fails_twice_then_succeeds_on_attempt_three_after_backoff() {
    let dir = TempDir::new("retry");
    let counter = dir.path().join("count");
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: flaky\ntasks:\n  - name: flaky\n    type: shell\n    retry: 2\n    config:\n      command: \"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ]\"\n",
            c = counter.display()
        ),
    );
    let t = Instant::now();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    // Backoff 1 s then 2 s.
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let s = stdout(&out);
    assert!(
        s.contains("retrying in 1s") && s.contains("retrying in 2s"),
        "{s}"
    );
    assert!(s.contains("started (attempt 3)"), "{s}");
}

#[test]
fn a_failure_skips_dependents_and_exits_3() {
    let dir = TempDir::new("fail");
    let marker = dir.path().join("ran");
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: f\ntasks:\n  - {{name: bad, type: shell, retry: 0, config: {{command: \"exit 4\"}}}}\n  - {{name: after, type: shell, depends_on: [bad], config: {{command: \"touch {m}\"}}}}\n  - {{name: later, type: shell, depends_on: [after], config: {{command: \"touch {m}\"}}}}\n  - {{name: independent, type: shell, config: {{command: \"true\"}}}}\n",
            m = marker.display()
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3));
    assert!(!marker.exists(), "a dependent of a failed task ran");
    let s = stdout(&out);
    assert!(
        s.contains("Task 'after' skipped") && s.contains("Task 'later' skipped"),
        "{s}"
    );
    assert!(
        s.contains("Task 'independent' completed successfully"),
        "{s}"
    );
}

#[test]
fn continue_on_failure_lets_dependents_run_and_exits_0() {
    let dir = TempDir::new("cof");
    let marker = dir.path().join("ran");
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: c\ntasks:\n  - {{name: bad, type: shell, retry: 0, continue_on_failure: true, config: {{command: \"exit 4\"}}}}\n  - {{name: after, type: shell, depends_on: [bad], config: {{command: \"touch {m}\"}}}}\n",
            m = marker.display()
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    assert!(marker.exists());
}

#[test]
fn timeout_kills_the_process_tree_in_about_a_second() {
    let dir = TempDir::new("timeout");
    // A distinctive duration lets the test find leftovers.
    let wf = dir.write(
        "w.yaml",
        "name: t\ntasks:\n  - name: hang\n    type: shell\n    retry: 0\n    timeout: 1\n    config:\n      command: \"sleep 61.4321 & sleep 61.4321; wait\"\n",
    );
    let t = Instant::now();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(3));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(stdout(&out).contains("timed out"));
    std::thread::sleep(Duration::from_millis(200));
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 61.4321"])
        .output()
        .expect("pgrep (procps) is required");
    assert!(
        left.stdout.is_empty(),
        "processes survived the timeout: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn variables_and_shell_command_lines() {
    let dir = TempDir::new("vars");
    let wf = dir.write(
        "w.yaml",
        "name: v\ntasks:\n  - name: args\n    type: shell\n    config:\n      command: /bin/sh\n      args: [\"-c\", \"echo \\\"$0|$1|$2\\\" > args.txt\", \"${PF_GREETING}\", \"$$HOME\", \"[${PF_UNDEFINED_VAR}]\"]\n  - name: pipe\n    type: shell\n    config:\n      command: \"echo abc | tr a x > out\"\n  - name: env\n    type: shell\n    config:\n      command: \"echo \\\"$MSG\\\" > env.txt\"\n      env:\n        MSG: \"${PF_GREETING}!\"\n",
    );
    let out = run(picoflow(dir.path())
        .env("PF_GREETING", "hi; $(touch injected)")
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
    assert_eq!(args, "hi; $(touch injected)|$HOME|[]\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "xbc\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env.txt")).unwrap(),
        "hi; $(touch injected)!\n"
    );
    assert!(!dir.path().join("injected").exists());
}

/// Peak resident memory of `picoflow run <wf>`, in KiB (from `wait4`).
fn peak_rss_kib(dir: &std::path::Path, wf: &std::path::Path) -> i64 {
    let mut child = picoflow(dir)
        .arg("run")
        .arg(wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child writes into `status` and `usage`.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let _ = child.try_wait();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    usage.ru_maxrss
}

#[test]
fn fifty_megabytes_of_output_keep_memory_bounded() {
    let dir = TempDir::new("big");
    let quiet = dir.write(
        "quiet.yaml",
        "name: quiet\ntasks:\n  - name: hush\n    type: shell\n    config:\n      command: \"true\"\n",
    );
    let wf = dir.write(
        "w.yaml",
        "name: big\ntasks:\n  - name: noisy\n    type: shell\n    config:\n      command: \"head -c 52428800 /dev/zero | tr '\\\\0' x\"\n",
    );
    // The binary's own resident size depends on the build (debug, features): compare with a
    // run whose task prints nothing.
    let base = peak_rss_kib(dir.path(), &quiet);
    let peak = peak_rss_kib(dir.path(), &wf);
    eprintln!("peak RSS {peak} KiB, {base} KiB for a quiet task");
    // 50 MB went through; what stays is the 10 MB capture, its stored record and the state
    // file's page for it — never the whole stream.
    assert!(
        peak - base < 36 * 1024,
        "peak RSS grew by {} KiB",
        peak - base
    );
    let log = walk(dir.path().join("logs").as_path())
        .into_iter()
        .find(|p| p.ends_with("noisy.log"))
        .expect("task log written");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        (10 * 1024 * 1024..10 * 1024 * 1024 + 100).contains(&len),
        "log is {len} bytes"
    );
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn quiet_tasks_create_no_log_files() {
    let dir = TempDir::new("quiet");
    let wf = dir.write(
        "w.yaml",
        "name: q\ntasks:\n  - {name: a, type: shell, config: {command: \"true\"}}\n  - {name: b, type: shell, config: {command: \"echo hi\"}}\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    let files = walk(&dir.path().join("logs"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("b.log"));
}

#[test]
fn sigint_interrupts_with_exit_9_and_stops_tasks() {
    let dir = TempDir::new("sigint");
    let wf = dir.write(
        "w.yaml",
        "name: s\ntasks:\n  - {name: long, type: shell, config: {command: \"sleep 62.1234\"}}\n  - {name: next, type: shell, depends_on: [long], config: {command: \"touch next-ran\"}}\n",
    );
    let child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", stdout(&out));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!dir.path().join("next-ran").exists());
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 62.1234"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty());
}

#[test]
fn missing_and_invalid_files_exit_5_and_2() {
    let dir = TempDir::new("codes");
    let out = run(picoflow(dir.path()).args(["run", "nope.yaml"]));
    assert_eq!(out.status.code(), Some(5));
    let bad = dir.write("bad.yaml", "name: x\ntasks: []\n");
    let out = run(picoflow(dir.path()).arg("run").arg(&bad));
    assert_eq!(out.status.code(), Some(2));
}
