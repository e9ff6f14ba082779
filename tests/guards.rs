//! Edge guards (`requires:`) on real processes: a network guard that waits for a listener,
//! a disk guard on a small tmpfs, the memory, temperature, power and load guards read from a
//! presented `/proc` and `/sys` (`PICOFLOW_HOST_ROOT`), the clock guard with its file in
//! place of the clock's sources, the workflow's own requirement, and how each outcome is
//! recorded.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{finish, free_port, picoflow, run, stderr, stdout, TempDir};

/// The last attempt of each task of the workflow's latest execution, by name:
/// (status, error message).
fn tasks(dir: &Path, workflow: &str) -> Vec<(String, String, String)> {
    let out = run(picoflow(dir).args(["status", "--workflow", workflow, "--format", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (s("task_name"), s("status"), s("error_message"))
        })
        .collect()
}

fn task<'a>(list: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    list.iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no task {name} in {list:?}"))
}

#[test]
fn a_network_guard_waits_for_its_listener_then_the_task_runs() {
    let dir = TempDir::new("guard-wait");
    let port = free_port();
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: nas-backup
tasks:
  - name: copy
    type: shell
    requires: {{network: {{host: 127.0.0.1, port: {port}}}, on_unmet: wait, wait_timeout: 60s}}
    config: {{command: \"date +%s.%N > copied\"}}
"
        ),
    );
    let begun = Instant::now();
    let child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !dir.path().join("copied").exists(),
        "the task ran while its host was down"
    );
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = finish(child, "picoflow run");
    drop(listener);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.path().join("copied").exists());
    assert!(begun.elapsed() >= Duration::from_secs(3));
    let list = tasks(dir.path(), "nas-backup");
    assert_eq!(task(&list, "copy").1, "success", "{list:?}");
}

#[test]
fn a_wait_that_times_out_fails_the_task_naming_the_guard() {
    let dir = TempDir::new("guard-timeout");
    let port = free_port();
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: w
tasks:
  - name: copy
    type: shell
    requires: {{network: {{host: 127.0.0.1, port: {port}}}, on_unmet: wait, wait_timeout: 3s}}
    config: {{command: \"touch ran\"}}
on_failure:
  - {{name: alert, type: shell, config: {{command: \"touch alerted\"}}}}
"
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!dir.path().join("ran").exists());
    assert!(
        dir.path().join("alerted").exists(),
        "the handler did not run"
    );
    let list = tasks(dir.path(), "w");
    let (_, status, message) = task(&list, "copy");
    assert_eq!(status, "failed");
    assert!(
        message.starts_with(&format!(
            "requirement not met: network: 127.0.0.1:{port} unreachable: "
        )) && message.ends_with("(still after waiting 3s)"),
        "{message}"
    );
    let out = run(picoflow(dir.path()).args(["status", "--workflow", "w"]));
    assert!(
        stdout(&out).contains(&format!(
            "(failed: requirement not met: network: 127.0.0.1:{port} unreachable: "
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_run_stopped_while_its_workflow_waits_starts_no_task() {
    let dir = TempDir::new("guard-stop");
    let wf = dir.write(
        "w.yaml",
        "name: w
requires: {clock_synced: true, on_unmet: wait, wait_timeout: 2m}
tasks:
  - {name: a, type: shell, config: {command: touch, args: [a]}}
  - {name: b, type: shell, config: {command: touch, args: [b]}}
",
    );
    let sync = dir.path().join("synced");
    let child = picoflow(dir.path())
        .env("PICOFLOW_CLOCK_SYNC_FILE", &sync)
        .arg("run")
        .arg(&wf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = finish(child, "picoflow run");
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    for name in ["a", "b"] {
        assert!(!dir.path().join(name).exists(), "task {name} started");
    }
    // Resumed once the clock is synchronised, both run.
    std::fs::write(&sync, "").unwrap();
    let out = run(picoflow(dir.path())
        .env("PICOFLOW_CLOCK_SYNC_FILE", &sync)
        .args(["run", "--resume"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.path().join("a").exists() && dir.path().join("b").exists());
}

#[test]
fn a_disk_guard_measures_the_expanded_workdir() {
    let dir = TempDir::new("guard-expand");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let wf = dir.write(
        "w.yaml",
        "name: w
tasks:
  - name: here
    type: shell
    requires: {min_free_disk: 1KB}
    config: {command: \"touch ran\", workdir: \"${HOME}/data\"}
  - name: there
    type: shell
    requires: {min_free_disk: {path: \"${HOME}/data\", bytes: 1KB}}
    config: {command: \"true\"}
",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.path().join("data/ran").exists());
}

/// A `/proc` and `/sys` of a hot Pi on a low battery with little memory and a high load.
fn hot_pi(root: &Path) {
    let file = |p: &str, text: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    file(
        "proc/meminfo",
        "MemTotal: 444000 kB\nMemFree: 9000 kB\nMemAvailable: 40960 kB\n",
    );
    file("proc/loadavg", "4.20 3.00 2.00 3/200 4242\n");
    file("sys/class/thermal/thermal_zone0/temp", "83500\n");
    file("sys/class/power_supply/usb/type", "USB\n");
    file("sys/class/power_supply/usb/online", "0\n");
    file("sys/class/power_supply/battery/type", "Battery\n");
    file("sys/class/power_supply/battery/capacity", "18\n");
}

#[test]
fn memory_temperature_power_and_load_guards_read_the_presented_device() {
    let dir = TempDir::new("guard-host");
    let root = dir.path().join("root");
    hot_pi(&root);
    let wf = dir.write(
        "w.yaml",
        "name: edge
tasks:
  - {name: mem, type: shell, requires: {min_free_memory: 64MiB, on_unmet: skip}, config: {command: \"true\"}}
  - {name: cool, type: shell, requires: {max_cpu_temperature: 80, on_unmet: skip}, config: {command: \"true\"}}
  - {name: mains, type: shell, requires: {power: ac, on_unmet: skip}, config: {command: \"true\"}}
  - {name: battery, type: shell, requires: {power: {battery_above: 30%}, on_unmet: skip}, config: {command: \"true\"}}
  - {name: load, type: shell, requires: {max_load: 2, on_unmet: skip}, config: {command: \"true\"}}
  - {name: fine, type: shell, requires: {min_free_memory: 32MiB, max_cpu_temperature: 85, power: {battery_above: 10%}, max_load: 5}, config: {command: \"true\"}}
  - {name: after, type: shell, depends_on: [mem, cool], config: {command: \"true\"}}
",
    );
    let out = run(picoflow(dir.path())
        .env("PICOFLOW_HOST_ROOT", &root)
        .arg("run")
        .arg(&wf));
    // Skips by requirement do not fail the execution, and their dependents run.
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = tasks(dir.path(), "edge");
    for (name, message) in [
        ("mem", "skipped: requirement not met: min_free_memory: 40MB available, 64MB required"),
        ("cool", "skipped: requirement not met: max_cpu_temperature: CPU at 83.5 °C, at most 80 °C allowed"),
        ("mains", "skipped: requirement not met: power: on battery (18%)"),
        ("battery", "skipped: requirement not met: power: battery battery at 18%, above 30% required"),
        ("load", "skipped: requirement not met: max_load: 1-minute load 4.20, at most 2 allowed"),
    ] {
        assert_eq!(task(&list, name).1, "skipped", "{name}: {list:?}");
        assert_eq!(task(&list, name).2, message, "{name}");
    }
    assert_eq!(task(&list, "fine").1, "success", "{list:?}");
    assert_eq!(task(&list, "after").1, "success", "{list:?}");
    // The same device without a thermal zone or power supply: those guards hold, and
    // validate says why.
    std::fs::remove_dir_all(root.join("sys")).unwrap();
    let out = run(picoflow(dir.path())
        .env("PICOFLOW_HOST_ROOT", &root)
        .arg("validate")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("task 'cool': requires.max_cpu_temperature: this device has no thermal zone"),
        "{err}"
    );
    assert!(
        err.contains("task 'battery': requires.power: this device reports no power supply"),
        "{err}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("Requirements:\n  mem: min_free_memory: 64MB (on_unmet: skip)"),
        "{text}"
    );
    let out = run(picoflow(dir.path())
        .env("PICOFLOW_HOST_ROOT", &root)
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = tasks(dir.path(), "edge");
    for name in ["cool", "mains", "battery"] {
        assert_eq!(task(&list, name).1, "success", "{name}: {list:?}");
    }
}

/// A tmpfs of 1 MiB mounted for the test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: std::path::PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&at)
            .output()
            .expect("mount(8) is needed for the disk guard test");
        assert!(
            out.status.success(),
            "mounting a 1 MiB tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_guard_sees_a_small_disk_fill_up() {
    let dir = TempDir::new("guard-disk");
    let disk = SmallDisk::mount(dir.path().join("backup"));
    let wf = dir.write(
        "w.yaml",
        &format!(
            "name: backup
tasks:
  - name: dump
    type: shell
    requires: {{min_free_disk: {{path: {d}, bytes: 600KB}}}}
    config: {{command: \"echo dumped >> {d}/log\"}}
  - name: local
    type: shell
    requires: {{min_free_disk: 600KB, on_unmet: skip}}
    config: {{command: \"true\", workdir: {d}}}
",
            d = disk.0.display()
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(disk.0.join("filler"), vec![7u8; 700 * 1024]).unwrap();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let list = tasks(dir.path(), "backup");
    let (_, status, message) = task(&list, "dump");
    assert_eq!(status, "failed");
    let want = "requirement not met: min_free_disk: ";
    assert!(
        message.starts_with(want)
            && message.ends_with(&format!(" free on {}, 600KB required", disk.0.display())),
        "{message}"
    );
    // Without a path, the task's working directory is measured.
    let (_, status, message) = task(&list, "local");
    assert_eq!(status, "skipped", "{message}");
    assert!(
        message.contains(&format!("free on {}", disk.0.display())),
        "{message}"
    );
    let log = std::fs::read_to_string(disk.0.join("log")).unwrap();
    assert_eq!(log, "dumped\n", "the guarded task ran on a full disk");
}

#[test]
fn a_workflow_requirement_ends_every_task_and_lets_the_handlers_run() {
    let dir = TempDir::new("guard-workflow");
    let sync = dir.path().join("synced");
    let wf = dir.write(
        "w.yaml",
        "name: nightly
requires: {clock_synced: true, on_unmet: skip}
tasks:
  - {name: a, type: shell, config: {command: \"touch a\"}}
  - {name: b, type: shell, depends_on: [a], config: {command: \"touch b\"}}
on_exit:
  - {name: report, type: shell, config: {command: \"touch report\"}}
",
    );
    let go = |expect: i32| {
        let out = run(picoflow(dir.path())
            .env("PICOFLOW_CLOCK_SYNC_FILE", &sync)
            .arg("run")
            .arg(&wf));
        assert_eq!(out.status.code(), Some(expect), "{}", stderr(&out));
    };
    go(0);
    let list = tasks(dir.path(), "nightly");
    for name in ["a", "b"] {
        assert_eq!(
            task(&list, name).2,
            "skipped: requirement not met: clock_synced: the system clock is not synchronised",
            "{list:?}"
        );
        assert!(!dir.path().join(name).exists());
    }
    assert!(
        dir.path().join("report").exists(),
        "the handler did not run"
    );
    let out = run(picoflow(dir.path()).args(["history", "--limit", "1"]));
    assert!(
        stdout(&out)
            .contains("Completed; skipped: a (clock_synced not met), b (clock_synced not met)"),
        "{}",
        stdout(&out)
    );
    std::fs::write(&sync, "").unwrap();
    go(0);
    assert!(dir.path().join("a").exists() && dir.path().join("b").exists());
    // With on_unmet: fail, the first task fails and the rest is skipped after it.
    std::fs::remove_file(&sync).unwrap();
    let text = std::fs::read_to_string(&wf)
        .unwrap()
        .replace("on_unmet: skip", "on_unmet: fail");
    std::fs::write(&wf, text).unwrap();
    go(3);
    let list = tasks(dir.path(), "nightly");
    assert_eq!(task(&list, "a").1, "failed", "{list:?}");
    assert_eq!(
        task(&list, "b").2,
        "skipped: dependency 'a' failed",
        "{list:?}"
    );
}

#[test]
fn bad_requirements_are_located_errors() {
    let dir = TempDir::new("guard-invalid");
    let wf = dir.write(
        "w.yaml",
        "name: w
requires: {network: {host: nas}}
tasks:
  - name: a
    type: shell
    requires: {min_free_disk: {path: /, bytes: plenty}, on_unmet: later, wifi: on}
    config: {command: \"true\"}
",
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for want in [
        "line 2: requires.network: port: a number 1-65535 is required",
        "line 4: task 'a': requires: unknown field `wifi`",
        "line 4: task 'a': requires.min_free_disk: bytes: 'plenty' is not a size",
        "line 4: task 'a': requires.on_unmet: 'later' is not one of wait, skip, fail",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    assert!(err.contains("w.yaml"), "{err}");
}
