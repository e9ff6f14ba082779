//! The daemon and a wall clock that cannot be trusted, as on a board without a real-time
//! clock: steps of the wall clock while it runs (made with libfaketime, which fakes the wall
//! clock of the daemon alone and leaves the monotonic clock real, as an NTP step does), and a
//! start before the clock is synchronised (`PICOFLOW_CLOCK_SYNC_FILE` stands for the time
//! service's marker).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{free_port, history, picoflow, run, start_daemon, stdout, wait_for, TempDir};

/// libfaketime's preload library; the test fails (it does not skip) without it.
fn libfaketime() -> PathBuf {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"),
    ];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        for d in dirs.flatten() {
            candidates.push(d.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaketime is missing: run scripts/install-test-deps.sh (Debian's faketime)")
}

/// A daemon started in `dir`; killed (SIGKILL) if the test did not stop it.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (a `picoflow` command in `dir`) as `daemon start files`.
    fn start(mut cmd: Command, dir: &Path, files: &[&str]) -> Daemon {
        Daemon {
            child: Some(start_daemon(&mut cmd, dir, files)),
            dir: dir.to_path_buf(),
        }
    }

    /// A daemon whose wall clock is real time moved by the offset in `dir/faketime.rc`
    /// (`+0`, `+30d`, `-1h`), read again at every reading of the clock.
    fn start_faked(dir: &Path, files: &[&str]) -> Daemon {
        let rc = dir.join("faketime.rc");
        std::fs::write(&rc, "+0\n").unwrap();
        let mut cmd = picoflow(dir);
        cmd.env("LD_PRELOAD", libfaketime())
            .env_remove("FAKETIME")
            .env("FAKETIME_TIMESTAMP_FILE", &rc)
            .env("FAKETIME_NO_CACHE", "1")
            // Only the wall clock moves: the monotonic clock stays real, as on a device
            // whose clock a time service steps.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Daemon::start(cmd, dir, files)
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Stops it with SIGTERM; it must exit 0.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert_eq!(st.code(), Some(0), "{}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Waits until the log has a line containing `text`.
    fn wait_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no '{text}' in the log\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// Sets the daemon's clock offset.
fn set_offset(dir: &Path, offset: &str) {
    let tmp = dir.join("faketime.rc.new");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("faketime.rc")).unwrap();
}

/// How many executions of `wf` the history holds.
fn runs(dir: &Path, wf: &str) -> usize {
    history(dir, wf).len()
}

fn shell_wf(name: &str, schedule: &str, extra: &str) -> String {
    format!(
        "name: {name}\nschedule: \"{schedule}\"\n{extra}tasks:\n  - name: t\n    type: shell\n    config:\n      command: \"true\"\n"
    )
}

fn clock_line(dir: &Path) -> String {
    let out = run(picoflow(dir).args(["daemon", "status"]));
    stdout(&out)
        .lines()
        .find(|l| l.starts_with("Clock: "))
        .unwrap_or("(no Clock: line)")
        .to_string()
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

/// Close to the top of an hour an hourly schedule would fire on its own during the test:
/// wait that out.
fn away_from_the_top_of_the_hour() {
    use chrono::{DurationRound, TimeDelta, Utc};
    let hour = TimeDelta::hours(1);
    let left = Utc::now().duration_trunc(hour).unwrap() + hour - Utc::now();
    if left < TimeDelta::seconds(90) {
        std::thread::sleep((left + TimeDelta::seconds(1)).to_std().unwrap());
    }
}

#[test]
fn a_forward_jump_of_a_month_fires_what_catchup_allows_and_no_storm() {
    away_from_the_top_of_the_hour();
    let dir = TempDir::new("clock-forward");
    dir.write(
        "picoflow.toml",
        "[daemon]\nwait_for_clock_sync = false\nclock_check_seconds = 1\n[metrics]\nenabled = false\n",
    );
    dir.write(
        "none.yaml",
        &shell_wf("none", "0 0 * * * *", "catchup: none\n"),
    );
    dir.write(
        "all.yaml",
        &shell_wf("all", "0 0 * * * *", "catchup: all\n"),
    );
    let d = Daemon::start_faked(dir.path(), &["none.yaml", "all.yaml"]);
    // Hourly schedules, no run yet: nothing fires before the jump.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runs(dir.path(), "none") + runs(dir.path(), "all"), 0);

    // 30 days forward: 720 hourly instants are jumped over.
    set_offset(dir.path(), "+30d");
    d.wait_log("the wall clock jumped forwards", Duration::from_secs(30));
    let log = d.log();
    assert!(log.contains("seconds=2592000"), "{log}");
    wait_for(Duration::from_secs(60), "catchup: all's runs", || {
        runs(dir.path(), "all") >= 10
    });
    // Time for a storm to show, if there were one.
    std::thread::sleep(Duration::from_secs(6));
    let (none, all) = (runs(dir.path(), "none"), runs(dir.path(), "all"));
    assert_eq!(
        none,
        0,
        "catchup: none fires nothing it missed\n{}",
        d.log()
    );
    assert_eq!(all, 10, "catchup: all fires at most 10\n{}", d.log());
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("runs after the clock's jump")
                && l.contains("workflow=all ")
                && l.contains("runs=10")),
        "{log}"
    );
    assert!(
        log.contains("no run for the fires the clock jumped over"),
        "{log}"
    );
    d.stop();
}

#[test]
fn a_backward_jump_of_an_hour_fires_no_instant_twice() {
    let dir = TempDir::new("clock-backward");
    dir.write(
        "picoflow.toml",
        "[daemon]\nwait_for_clock_sync = false\nclock_check_seconds = 1\n[metrics]\nenabled = false\n",
    );
    dir.write("tick.yaml", &shell_wf("tick", "* * * * * *", ""));
    let d = Daemon::start_faked(dir.path(), &["tick.yaml"]);
    wait_for(Duration::from_secs(30), "three fires", || {
        runs(dir.path(), "tick") >= 3
    });

    // An hour back, across the instants that just fired: none of them fires again, neither
    // from the timer nor after a reload (which computes the next fires afresh).
    set_offset(dir.path(), "-1h");
    d.wait_log("the wall clock jumped backwards", Duration::from_secs(30));
    assert!(d.log().contains("seconds=3600"), "{}", d.log());
    // A run started just before the jump may still be recorded.
    std::thread::sleep(Duration::from_secs(2));
    let before = runs(dir.path(), "tick");
    d.signal(libc::SIGHUP);
    d.wait_log("reloaded", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        runs(dir.path(), "tick"),
        before,
        "an instant fired twice\n{}",
        d.log()
    );

    // Back to the real time: fires go on.
    set_offset(dir.path(), "+0");
    wait_for(Duration::from_secs(30), "fires to go on", || {
        runs(dir.path(), "tick") > before
    });
    d.stop();
}

#[test]
fn an_unsynchronised_clock_holds_the_schedules_until_it_is_synchronised() {
    let dir = TempDir::new("clock-sync");
    let port = free_port();
    dir.write(
        "picoflow.toml",
        &format!("[daemon]\nwait_for_clock_sync = true\nclock_check_seconds = 1\n[metrics]\nport = {port}\n"),
    );
    dir.write("tick.yaml", &shell_wf("tick", "* * * * * *", ""));
    let marker = dir.path().join("synchronized");
    let mut cmd = picoflow(dir.path());
    cmd.env("PICOFLOW_CLOCK_SYNC_FILE", &marker);
    let d = Daemon::start(cmd, dir.path(), &["tick.yaml"]);

    d.wait_log("waiting for the system clock", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(dir.path(), "tick"), 0, "{}", d.log());
    let line = clock_line(dir.path());
    assert!(
        line.starts_with("Clock: waiting for synchronisation (since ")
            && line.contains("at most 300 s"),
        "{line}"
    );
    if stdout(&run(picoflow(dir.path()).arg("--version"))).contains("+metrics") {
        let m = http_get(port, "/metrics");
        assert_eq!(sample(&m, "picoflow_clock_synced"), Some(0.0), "{m}");
        assert_eq!(sample(&m, "picoflow_clock_waiting"), Some(1.0), "{m}");
    }

    std::fs::write(&marker, "").unwrap();
    wait_for(Duration::from_secs(30), "fires once synchronised", || {
        runs(dir.path(), "tick") >= 2
    });
    d.wait_log("the system clock is synchronised", Duration::from_secs(5));
    assert_eq!(clock_line(dir.path()), "Clock: synced");
    if stdout(&run(picoflow(dir.path()).arg("--version"))).contains("+metrics") {
        let m = http_get(port, "/metrics");
        assert_eq!(sample(&m, "picoflow_clock_synced"), Some(1.0), "{m}");
        assert_eq!(sample(&m, "picoflow_clock_waiting"), Some(0.0), "{m}");
    }
    d.stop();
}

#[test]
fn the_wait_for_the_clock_ends_at_its_bound_with_a_warning() {
    let dir = TempDir::new("clock-bound");
    dir.write(
        "picoflow.toml",
        "[daemon]\nwait_for_clock_sync = true\nclock_check_seconds = 1\nclock_sync_timeout_seconds = 3\n[metrics]\nenabled = false\n",
    );
    dir.write("tick.yaml", &shell_wf("tick", "* * * * * *", ""));
    let mut cmd = picoflow(dir.path());
    cmd.env("PICOFLOW_CLOCK_SYNC_FILE", dir.path().join("never"));
    let d = Daemon::start(cmd, dir.path(), &["tick.yaml"]);
    d.wait_log("waiting for the system clock", Duration::from_secs(10));
    d.wait_log("still not synchronised", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "fires after the bound", || {
        runs(dir.path(), "tick") >= 1
    });
    assert_eq!(
        clock_line(dir.path()),
        "Clock: unsynced (waited 3 s for synchronisation; scheduling from this clock)"
    );
    d.stop();
}
