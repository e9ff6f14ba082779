//! The daemon as a real process (CLI-002, SCHED-001 … SCHED-005, REL-002, REL-005): firing,
//! single instance, stop and status, signals, reload, overlap, catch-up, jitter, the
//! daemon-wide task limit and an idle daemon that does not wake up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{free_port, history, picoflow, run, start_daemon, stderr, stdout, wait_for, TempDir};

/// A daemon started in `dir`; killed (SIGKILL) if the test did not stop it.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, files: &[&str]) -> Daemon {
        Daemon {
            child: Some(start_daemon(&mut picoflow(dir), dir, files)),
            dir: dir.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit; returns its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit within {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn shell_wf(name: &str, schedule: &str, extra: &str, command: &str) -> String {
    format!(
        "name: {name}\nschedule: \"{schedule}\"\n{extra}tasks:\n  - name: t\n    type: shell\n    config:\n      command: \"{command}\"\n"
    )
}

#[test]
fn fires_every_second_single_instance_status_and_graceful_stop() {
    let dir = TempDir::new("daemon-basic");
    dir.write(
        "tick.yaml",
        &shell_wf(
            "tick",
            "* * * * * *",
            "",
            "date +%s.%N >> ticks.txt; sleep 0.3",
        ),
    );
    let mut d = Daemon::start(dir.path(), &["tick.yaml"]);
    wait_for(Duration::from_secs(10), "four fires", || {
        lines(&dir.path().join("ticks.txt")).len() >= 4
    });
    let ticks: Vec<f64> = lines(&dir.path().join("ticks.txt"))
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    for w in ticks.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (0.5..1.6).contains(&gap),
            "fires should be a second apart: {ticks:?}"
        );
    }

    // A second daemon on the same state is refused.
    let out = run(picoflow(dir.path()).args(["daemon", "start", "tick.yaml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another daemon is already running"),
        "{}",
        stderr(&out)
    );

    let out = run(picoflow(dir.path()).args(["daemon", "status"]));
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("Daemon Status: Running"), "{text}");
    assert!(text.contains(&format!("PID: {}", d.pid())), "{text}");
    assert!(text.contains("tick (cron: * * * * * *)"), "{text}");
    assert!(text.contains("Next scheduled run: tick at"), "{text}");
    assert!(text.contains("Memory usage:"), "{text}");
    assert!(
        dir.path().join("picoflow.redb.pid").exists(),
        "PID file beside the state file"
    );

    // `daemon stop` lets the running task finish.
    dir.write(
        "tick.yaml",
        &shell_wf(
            "tick",
            "* * * * * *",
            "",
            "echo began >> began.txt; sleep 1.5; echo finished >> done.txt",
        ),
    );
    d.signal(libc::SIGHUP);
    wait_for(
        Duration::from_secs(10),
        "a run of the reloaded workflow to start",
        || !lines(&dir.path().join("began.txt")).is_empty(),
    );
    let out = run(picoflow(dir.path()).args(["daemon", "stop"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    assert!(
        !lines(&dir.path().join("done.txt")).is_empty(),
        "the running task was cut short"
    );
    assert!(
        !dir.path().join("picoflow.redb.pid").exists(),
        "PID file removed"
    );
    let out = run(picoflow(dir.path()).args(["daemon", "status"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("Not running"));
    let out = run(picoflow(dir.path()).args(["daemon", "stop"]));
    assert_eq!(out.status.code(), Some(1));
    // Every recorded execution ended.
    assert!(history(dir.path(), "tick")
        .iter()
        .all(|e| e["status"] == "success"));
}

#[test]
fn invalid_files_are_named_and_the_daemon_does_not_start() {
    let dir = TempDir::new("daemon-invalid");
    dir.write("good.yaml", &shell_wf("good", "* * * * * *", "", "true"));
    dir.write("bad.yaml", "name: bad\nschedule: \"0 0 9 * * 9\"\ntasks:\n  - name: t\n    type: shell\n    config:\n      command: \"true\"\n");
    let out = run(picoflow(dir.path()).args(["daemon", "start", "good.yaml", "bad.yaml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.yaml"), "{}", stderr(&out));
    assert!(!dir.path().join("picoflow.redb.pid").exists());
}

#[test]
fn sighup_reloads_and_an_invalid_edit_keeps_the_previous_version() {
    let dir = TempDir::new("daemon-hup");
    dir.write(
        "w.yaml",
        &shell_wf("w", "* * * * * *", "", "echo one >> out.txt"),
    );
    let d = Daemon::start(dir.path(), &["w.yaml"]);
    wait_for(Duration::from_secs(10), "a first run", || {
        lines(&dir.path().join("out.txt")).contains(&"one".to_string())
    });
    dir.write(
        "w.yaml",
        &shell_wf("w", "* * * * * *", "", "echo two >> out.txt"),
    );
    d.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), "the edited command", || {
        lines(&dir.path().join("out.txt")).contains(&"two".to_string())
    });
    // A broken edit: the daemon keeps running the last good version and logs the error.
    dir.write(
        "w.yaml",
        "name: w\nschedule: \"* * * * * *\"\ntasks:\n  - name: t\n    type: shel\n",
    );
    d.signal(libc::SIGHUP);
    wait_for(
        Duration::from_secs(5),
        "the reload error in the log",
        || d.log().contains("keeping its previous version"),
    );
    let before = lines(&dir.path().join("out.txt")).len();
    wait_for(Duration::from_secs(10), "runs to go on", || {
        lines(&dir.path().join("out.txt")).len() >= before + 2
    });
    assert_eq!(lines(&dir.path().join("out.txt")).last().unwrap(), "two");
}

fn overlaps(execs: &[serde_json::Value]) -> usize {
    let mut spans: Vec<(String, String)> = execs
        .iter()
        .filter(|e| e["finished_at"].is_string())
        .map(|e| {
            (
                e["started_at"].as_str().unwrap().to_string(),
                e["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    spans.windows(2).filter(|w| w[1].0 < w[0].1).count()
}

#[test]
fn a_fire_is_skipped_while_the_previous_run_goes_on_unless_allowed() {
    let dir = TempDir::new("daemon-overlap");
    dir.write(
        "slow.yaml",
        &shell_wf("slow", "* * * * * *", "", "sleep 2.5"),
    );
    dir.write(
        "free.yaml",
        &shell_wf(
            "free",
            "* * * * * *",
            "allow_concurrent: true\n",
            "sleep 2.5",
        ),
    );
    let mut d = Daemon::start(dir.path(), &["slow.yaml", "free.yaml"]);
    std::thread::sleep(Duration::from_secs(6));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    let slow = history(dir.path(), "slow");
    let free = history(dir.path(), "free");
    assert!(
        slow.len() >= 2 && slow.len() <= 3,
        "{} runs of slow",
        slow.len()
    );
    assert_eq!(overlaps(&slow), 0, "runs of 'slow' overlapped");
    assert!(free.len() >= 5, "{} runs of free", free.len());
    assert!(overlaps(&free) >= 2, "allow_concurrent runs should overlap");
    assert!(
        d.log().contains("previous run still running"),
        "{}",
        d.log()
    );
}

#[test]
fn shutdown_timeout_terminates_running_tasks_and_records_them() {
    let dir = TempDir::new("daemon-timeout");
    dir.write("picoflow.toml", "[daemon]\nshutdown_timeout_seconds = 3\n");
    dir.write(
        "long.yaml",
        &shell_wf("long", "* * * * * *", "", "echo started >> s.txt; sleep 60"),
    );
    let mut d = Daemon::start(dir.path(), &["long.yaml"]);
    wait_for(Duration::from_secs(10), "the task to start", || {
        !lines(&dir.path().join("s.txt")).is_empty()
    });
    let t = Instant::now();
    d.signal(libc::SIGINT);
    // While it waits for the run, `daemon status` says it is stopping, with no next fire.
    let mut said = String::new();
    wait_for(
        Duration::from_secs(3),
        "daemon status to say Stopping",
        || {
            said = stdout(&run(picoflow(dir.path()).args(["daemon", "status"])));
            said.contains("Daemon Status: Stopping (since ")
        },
    );
    assert!(!said.contains("Next scheduled run"), "{said}");
    assert_eq!(d.wait(Duration::from_secs(10)), Some(9));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let h = history(dir.path(), "long");
    assert_eq!(h[0]["status"], "interrupted", "{h:?}");
    // The terminated task is interrupted, as after a crash: not a failure of its own.
    assert_eq!(h[0]["failed_tasks"], 0, "{h:?}");
    let task = &h[0]["tasks"][0];
    assert!(
        task["error_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("interrupted: the run was stopped")),
        "{task}"
    );
    assert!(task["exit_code"].is_null(), "{task}");
    assert!(!dir.path().join("picoflow.redb.pid").exists());
}

#[test]
fn max_parallel_bounds_tasks_across_all_workflows() {
    let dir = TempDir::new("daemon-limit");
    dir.write("picoflow.toml", "[execution]\nmax_parallel = 2\n");
    let wf = |name: &str| {
        let mut y = format!("name: {name}\nschedule: \"*/5 * * * * *\"\ntasks:\n");
        for i in 0..3 {
            y.push_str(&format!(
                "  - name: t{i}\n    type: shell\n    config:\n      command: \"echo start $(date +%s.%N) >> spans.txt; sleep 1; echo end $(date +%s.%N) >> spans.txt\"\n"
            ));
        }
        y
    };
    dir.write("a.yaml", &wf("a"));
    dir.write("b.yaml", &wf("b"));
    // Both fire together every five seconds.
    let mut d = Daemon::start(dir.path(), &["a.yaml", "b.yaml"]);
    wait_for(Duration::from_secs(20), "six tasks", || {
        lines(&dir.path().join("spans.txt"))
            .iter()
            .filter(|l| l.starts_with("end"))
            .count()
            >= 6
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    let mut events: Vec<(f64, i32)> = lines(&dir.path().join("spans.txt"))
        .iter()
        .map(|l| {
            let (kind, t) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), if kind == "start" { 1 } else { -1 })
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut cur, mut peak) = (0, 0);
    for (_, delta) in events {
        cur += delta;
        peak = peak.max(cur);
    }
    assert_eq!(peak, 2, "at most 2 tasks at once across the daemon");
}

fn seed_last_run(dir: &Path, wf: &str, t: chrono::DateTime<chrono::Utc>) {
    use picoflow_lib::{Event, Store, WorkflowExecution, WorkflowStatus};
    let store = Store::open(dir.join("picoflow.redb")).unwrap();
    let exec = WorkflowExecution {
        id: picoflow_lib::new_id(),
        workflow_name: wf.into(),
        started_at: t,
        finished_at: Some(t),
        status: WorkflowStatus::Success,
        duration_seconds: Some(0.1),
        total_tasks: 1,
        successful_tasks: 1,
        failed_tasks: 0,
        created_at: t,
        pid: 1,
        source: None,
        definition: None,
    };
    let sink = store.sink();
    sink.on_event(&Event::WorkflowFinished(exec));
    smol::block_on(sink.flush()).unwrap();
}

#[test]
fn catch_up_after_an_outage_follows_each_policy() {
    use chrono::{DurationRound, TimeDelta, Utc};
    let dir = TempDir::new("daemon-catchup");
    // Close to the top of an hour the daemon could see a regular fire as well: wait it out.
    let hour = TimeDelta::hours(1);
    let to_next_hour = Utc::now().duration_trunc(hour).unwrap() + hour - Utc::now();
    if to_next_hour < TimeDelta::seconds(30) {
        std::thread::sleep((to_next_hour + TimeDelta::seconds(1)).to_std().unwrap());
    }
    // Hourly workflows whose last run was just after the top of the hour three hours ago:
    // the three fires since then were missed, whatever the minute is now.
    let last =
        Utc::now().duration_trunc(hour).unwrap() - TimeDelta::hours(3) + TimeDelta::minutes(1);
    for (name, policy) in [("none", "none"), ("latest", "latest"), ("all", "all")] {
        dir.write(
            &format!("{name}.yaml"),
            &shell_wf(name, "0 0 * * * *", &format!("catchup: {policy}\n"), "true"),
        );
        seed_last_run(dir.path(), name, last);
    }
    let mut d = Daemon::start(dir.path(), &["none.yaml", "latest.yaml", "all.yaml"]);
    wait_for(Duration::from_secs(15), "catch-up runs", || {
        history(dir.path(), "all").len() >= 4
    });
    std::thread::sleep(Duration::from_millis(500));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(
        history(dir.path(), "none").len(),
        1,
        "catchup: none runs nothing"
    );
    assert_eq!(
        history(dir.path(), "latest").len(),
        2,
        "catchup: latest runs once"
    );
    assert_eq!(
        history(dir.path(), "all").len(),
        4,
        "catchup: all runs every missed fire"
    );
    // The log says how many fires were missed, whatever the policy runs.
    let log = d.log();
    for (name, runs) in [("latest", 1), ("all", 3)] {
        assert!(
            log.lines()
                .any(|l| l.contains("catching up on missed fires")
                    && l.contains(&format!("workflow={name} "))
                    && l.contains("missed=3")
                    && l.contains(&format!("runs={runs}"))),
            "{log}"
        );
    }
}

fn next_run_line(dir: &Path) -> String {
    let out = run(picoflow(dir).args(["daemon", "status"]));
    stdout(&out)
        .lines()
        .find(|l| l.starts_with("Next scheduled run:"))
        .unwrap()
        .to_string()
}

#[test]
fn jitter_is_stable_across_restarts_and_within_bounds() {
    let dir = TempDir::new("daemon-jitter");
    dir.write(
        "j.yaml",
        &shell_wf("j", "0 0 * * * *", "jitter: 30s\ntimezone: UTC\n", "true"),
    );
    let mut first = Vec::new();
    for _ in 0..2 {
        let mut d = Daemon::start(dir.path(), &["j.yaml"]);
        first.push(next_run_line(dir.path()));
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    }
    assert_eq!(
        first[0], first[1],
        "the offset must not change across restarts"
    );
    // `Next scheduled run: j at YYYY-MM-DD HH:MM:SS` — within [0, 30) s after the hour.
    let time = first[0].rsplit(' ').next().unwrap();
    let (mm, ss) = (&time[3..5], &time[6..8]);
    assert_eq!(mm, "00", "{time}");
    assert!(ss.parse::<u32>().unwrap() < 30, "{time}");
}

#[test]
fn an_idle_daemon_does_not_wake_up() {
    let dir = TempDir::new("daemon-idle");
    dir.write("y.yaml", &shell_wf("y", "0 0 0 1 1 *", "", "true"));
    let d = Daemon::start(dir.path(), &["y.yaml"]);
    std::thread::sleep(Duration::from_millis(500));
    let switches = || -> u64 {
        // Sum over every thread of the daemon.
        let mut total = 0;
        for t in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            for l in status.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    total += l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
                }
            }
        }
        total
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(3));
    let after = switches();
    assert!(
        after - before <= 2,
        "an idle daemon woke up {} times in 3 s",
        after - before
    );
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn the_daemon_serves_metrics_and_health_without_stalling() {
    let out = run(picoflow(Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+metrics"),
        "this test needs the metrics feature"
    );
    let dir = TempDir::new("daemon-metrics");
    let port = free_port();
    dir.write("picoflow.toml", &format!("[metrics]\nport = {port}\n"));
    dir.write(
        "tick.yaml",
        &shell_wf("tick", "* * * * * *", "", "date +%s >> ticks.txt"),
    );
    dir.write(
        "flaky.yaml",
        &shell_wf("flaky", "*/3 * * * * *", "", "exit 1")
            .replace("    type: shell\n", "    type: shell\n    retry: 1\n"),
    );
    let mut d = Daemon::start(dir.path(), &["tick.yaml", "flaky.yaml"]);
    wait_for(Duration::from_secs(10), "three ticks", || {
        lines(&dir.path().join("ticks.txt")).len() >= 3
    });

    // The endpoint listens on loopback only by default.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&format!(":{port:04X}")))
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(
        listening[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:"),
        "{listening:?}"
    );

    // A client that connects and never sends its request stalls nothing.
    let stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ticks_before = lines(&dir.path().join("ticks.txt")).len();
    let t0 = Instant::now();
    let (code, health) = http_get(port, "/health");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a scrape waited for the stalled client"
    );
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["workflows_loaded"], 2);
    wait_for(
        Duration::from_secs(5),
        "fires while a client stalls",
        || lines(&dir.path().join("ticks.txt")).len() >= ticks_before + 2,
    );
    wait_for(Duration::from_secs(10), "a retried run of flaky", || {
        history(dir.path(), "flaky")
            .iter()
            .any(|e| e["status"] == "failed")
    });

    let finished = |wf: &str| {
        history(dir.path(), wf)
            .iter()
            .filter(|e| e["status"] != "running")
            .count() as f64
    };
    let before = finished("tick");
    let (code, metrics) = http_get(port, "/metrics");
    let after = finished("tick");
    assert_eq!(code, 200);
    for name in [
        "picoflow_workflow_executions_total",
        "picoflow_workflow_duration_seconds",
        "picoflow_workflow_running",
        "picoflow_task_executions_total",
        "picoflow_task_duration_seconds",
        "picoflow_task_retries_total",
        "picoflow_info",
        "picoflow_uptime_seconds",
        "picoflow_memory_bytes",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name}")),
            "{name} missing:\n{metrics}"
        );
    }
    let runs = sample(
        &metrics,
        "picoflow_workflow_executions_total{workflow=\"tick\",status=\"success\"}",
    );
    assert!(
        runs >= before && runs <= after + 1.0,
        "metrics say {runs} runs, history {before}..{after}"
    );
    let tasks = sample(
        &metrics,
        "picoflow_task_executions_total{workflow=\"tick\",task=\"t\",status=\"success\"}",
    );
    assert_eq!(tasks, runs, "one task per run");
    assert!(
        sample(
            &metrics,
            "picoflow_task_retries_total{workflow=\"flaky\",task=\"t\"}"
        ) >= 1.0
    );
    assert!(sample(&metrics, "picoflow_memory_bytes") > 100_000.0);
    assert_eq!(http_get(port, "/nope").0, 404);

    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, &metrics).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool is needed (package prometheus; scripts/install-test-deps.sh)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    drop(stalled);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(15)), Some(0));
}

/// A scheduled loop whose items cannot be built (objects from an output) fails its task; the
/// daemon lives on, fires it again and keeps serving its other workflows, and a restart that
/// finds nothing to resume starts cleanly.
#[test]
fn a_loop_that_cannot_build_its_items_does_not_stop_the_daemon() {
    let dir = TempDir::new("daemon-bad-loop");
    dir.write(
        "bad.yaml",
        "name: bad\nschedule: \"* * * * * *\"\ntasks:\n  - name: gen\n    type: shell\n    outputs: {list: stdout}\n    config:\n      command: \"echo '[{\\\"id\\\":1},{\\\"id\\\":2}]'\"\n  - name: each\n    type: shell\n    depends_on: [gen]\n    iterate_over: \"${tasks.gen.outputs.list}\"\n    config:\n      command: \"true\"\n",
    );
    dir.write(
        "tick.yaml",
        &shell_wf("tick", "* * * * * *", "", "date +%s >> ticks.txt"),
    );
    let mut d = Daemon::start(dir.path(), &["bad.yaml", "tick.yaml"]);
    // Runs that have ended (one may be going on at any moment: it fires every second).
    let ended = |dir: &Path| -> Vec<serde_json::Value> {
        history(dir, "bad")
            .into_iter()
            .filter(|e| e["finished_at"].is_string())
            .collect()
    };
    wait_for(Duration::from_secs(15), "three failed loop runs", || {
        ended(dir.path()).len() >= 3
    });
    let ticks = lines(&dir.path().join("ticks.txt")).len();
    wait_for(
        Duration::from_secs(10),
        "the other workflow to go on",
        || lines(&dir.path().join("ticks.txt")).len() >= ticks + 2,
    );
    let bad = ended(dir.path());
    assert!(
        bad.iter().all(|e| e["status"] == "failed"),
        "each run of the loop fails: {bad:?}"
    );
    // The loop says why, in each ended run (`status` would show the run going on now).
    for e in &bad {
        let each = e["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["task_name"] == "each"))
            .unwrap_or_else(|| panic!("the loop task is recorded: {e}"));
        assert!(
            each["error_message"]
                .as_str()
                .unwrap_or("")
                .contains("items"),
            "the loop says why: {each}"
        );
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// A web UI that cannot listen (another process holds the port) stops the start with exit code
/// 7 and a message naming the address: a daemon without it would leave the port, and the token
/// its clients send, to whoever holds it. Nothing says "started". The metrics endpoint, which
/// holds no secret and whose default port every daemon on a host shares, is logged and done
/// without.
#[test]
fn a_taken_web_port_stops_the_start_a_taken_metrics_port_does_not() {
    let version = stdout(&run(picoflow(Path::new(".")).arg("--version")));
    let dir = TempDir::new("daemon-port-taken");
    dir.write("tick.yaml", &shell_wf("tick", "0 0 * * *", "", "true"));
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    if version.contains("+web") {
        for config in [
            format!("[web]\nport = {port}\n"),
            format!("[metrics]\nport = {port}\n[web]\nport = {port}\n"),
        ] {
            dir.write("picoflow.toml", &config);
            let out = run(picoflow(dir.path()).args(["daemon", "start", "--web", "tick.yaml"]));
            assert_eq!(out.status.code(), Some(7), "{config}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("cannot listen on 127.0.0.1:{port}")),
                "{}",
                stderr(&out)
            );
            assert!(!stderr(&out).contains("daemon started"), "{}", stderr(&out));
            assert!(!dir.path().join("picoflow.redb.pid.json").exists());
        }
    } else {
        println!("the web part needs the web feature: {version}");
    }
    if version.contains("+metrics") {
        dir.write("picoflow.toml", &format!("[metrics]\nport = {port}\n"));
        let mut d = Daemon::start(dir.path(), &["tick.yaml"]);
        assert!(
            d.log().contains("cannot start the metrics endpoint"),
            "{}",
            d.log()
        );
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
    }
    drop(squatter);
}

/// A reload that would give one name to two files (a copy added beside the original) is
/// refused as the start refuses it: the daemon keeps the workflows it had, says why, and
/// never runs the copy.
#[test]
fn a_reload_that_makes_a_name_ambiguous_keeps_the_previous_workflows() {
    let dir = TempDir::new("daemon-hup-dup");
    std::fs::create_dir(dir.path().join("wf")).unwrap();
    dir.write(
        "wf/w.yaml",
        &shell_wf("w", "* * * * * *", "", "echo original >> out.txt"),
    );
    let d = Daemon::start(dir.path(), &["wf"]);
    wait_for(Duration::from_secs(10), "a first run", || {
        !lines(&dir.path().join("out.txt")).is_empty()
    });
    dir.write(
        "wf/w_copy.yaml",
        &shell_wf("w", "* * * * * *", "", "echo copy >> out.txt"),
    );
    d.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(5), "the refusal in the log", || {
        d.log().contains("reload refused")
    });
    assert!(d.log().contains("is used by both"), "{}", d.log());
    let before = lines(&dir.path().join("out.txt")).len();
    wait_for(Duration::from_secs(10), "runs to go on", || {
        lines(&dir.path().join("out.txt")).len() >= before + 2
    });
    assert!(
        lines(&dir.path().join("out.txt"))
            .iter()
            .all(|l| l == "original"),
        "{:?}",
        lines(&dir.path().join("out.txt"))
    );
}
