//! `type: docker` through the `picoflow` binary against a real container engine: Podman's
//! Docker-compatible API service, started by each test on a socket in its own directory with
//! its own storage, and an image built offline from Debian's static busybox (`podman
//! import`). Covers output and exit codes, env/volumes/workdir/user, a timeout that stops and
//! removes the container, a missing image, an engine that is down or out of reach, and a
//! killed run whose container is removed when the run is resumed, or by the next new run.
//!
//! Needs `podman`, `runc` and `busybox-static` (`scripts/install-test-deps.sh`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{finish, picoflow, run, stderr, stdout, wait_for, TempDir};

const IMAGE: &str = "localhost/picoflow-test:latest";

/// A Podman API service of its own: configuration, storage and socket in one directory.
struct Podman {
    dir: TempDir,
    service: Option<Child>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The tests take turns: engines side by side in one machine share state outside their
/// directories (Podman keeps caches and locks under `/var/lib/containers` and `/run`).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Podman {
    fn start() -> Podman {
        let turn = one_at_a_time();
        let out = run(picoflow(Path::new(".")).arg("--version"));
        assert!(
            stdout(&out).contains("+docker"),
            "this test needs the docker feature (run the suite with default features)"
        );
        // A short directory: conmon's paths under the run root (sockets among them) must stay
        // within the 108 bytes of a socket address, and with a long root containers are never
        // cleaned up after they exit.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = TempDir(PathBuf::from(format!("/tmp/pfd{}-{n}", std::process::id())));
        let _ = std::fs::remove_dir_all(dir.path());
        std::fs::create_dir_all(dir.path()).unwrap();
        let d = dir.path().display().to_string();
        dir.write(
            "storage.conf",
            &format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
            ),
        );
        // This machine's cgroups need runc and the cgroupfs manager, and raising rlimits is
        // not permitted, so the defaults are set explicitly; the locks and events stay here.
        dir.write(
            "containers.conf",
            &format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_config_dir = \"{d}/net\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\nlock_type = \"file\"\n"
            ),
        );
        let mut p = Podman {
            dir,
            service: None,
            _turn: turn,
        };
        p.import_image();
        let log = std::fs::File::create(p.dir.path().join("service.log")).unwrap();
        let service = p
            .podman()
            .args(["system", "service", "--time=0"])
            .arg(p.docker_host())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("podman (scripts/install-test-deps.sh installs it)");
        p.service = Some(service);
        wait_for(Duration::from_secs(30), "the podman service", || {
            api(&p.socket(), "GET", "/_ping").0 == 200
        });
        p
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `podman` with this instance's configuration, in a plain environment: the test
    /// harness's `LD_LIBRARY_PATH` (cargo's build directories) must not reach the engine.
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.dir.path())
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            );
        c
    }

    /// The test image: a root file system of busybox and its applets, packed and imported.
    fn import_image(&self) {
        let root = self.dir.path().join("rootfs");
        for d in ["bin", "tmp", "etc", "data", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for applet in [
            "sh", "echo", "cat", "sleep", "env", "pwd", "id", "true", "false", "touch", "ls",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let tar = self.dir.path().join("rootfs.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(packed.success());
        let imported = self
            .podman()
            .args(["import", "-q", "--change", "CMD [\"/bin/sh\"]"])
            .arg(&tar)
            .arg(IMAGE)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(imported.success(), "podman import failed");
    }

    /// Containers carrying this label (`key=value`), running or not: their ids.
    fn containers(&self, label: &str) -> Vec<String> {
        let filter = format!("{{\"label\":[\"{label}\"]}}");
        let (status, body) = api(
            &self.socket(),
            "GET",
            &format!("/containers/json?all=1&filters={}", encode(&filter)),
        );
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["Id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers outlive the service (their monitor is re-parented), so they go first.
        let _ = self.podman().args(["rm", "-a", "-f", "-t", "0"]).output();
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
        let _ = self.podman().args(["system", "reset", "-f"]).output();
    }
}

/// One call to the engine's API over its socket: status and body.
fn api(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} /v1.41{path} HTTP/1.0\r\nHost: d\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `picoflow` with the engine's socket in `DOCKER_HOST`.
fn pf(dir: &Path, engine: &Podman) -> Command {
    let mut c = picoflow(dir);
    c.env("DOCKER_HOST", engine.docker_host());
    c
}

/// The latest execution of `wf` with its tasks, from `picoflow status --format json`.
fn status_json(dir: &Path, wf: &str) -> serde_json::Value {
    let out = run(picoflow(dir).args(["status", "--workflow", wf, "--format", "json"]));
    let all: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    all[0].clone()
}

fn task<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|t| t["task_name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {status}"))
}

#[test]
fn output_exit_codes_settings_and_clean_up() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-run");
    let host = dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from the host\n").unwrap();
    let wf = dir.write(
        "c.yaml",
        &format!(
            r#"name: containers
tasks:
  - name: hello
    type: docker
    config:
      image: {IMAGE}
      command: ["sh", "-c", "echo out; echo err >&2"]
  - name: settings
    type: docker
    depends_on: [hello]
    config:
      image: {IMAGE}
      command: ["sh", "-c", "cat in.txt; echo \"A=$A\"; pwd; id -u; touch x 2>/dev/null || echo read-only; echo \"who=$(id -u)\" >> \"$PICOFLOW_OUTPUT\""]
      env: {{A: "${{GREETING}}"}}
      workdir: /data
      user: "1000:1000"
      volumes: ["{}:/data:ro"]
  - name: uses
    type: docker
    depends_on: [settings]
    config:
      image: {IMAGE}
      command: ["echo", "settings ran as ${{tasks.settings.outputs.who}}"]
  - name: fails
    type: docker
    continue_on_failure: true
    retry: 0
    config:
      image: {IMAGE}
      command: ["sh", "-c", "echo failing; exit 3"]
"#,
            host.display()
        ),
    );
    let out = run(pf(dir.path(), &engine)
        .env("GREETING", "hi there")
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    let st = status_json(dir.path(), "containers");
    assert_eq!(task(&st, "hello")["status"], "success", "{st}");
    assert_eq!(task(&st, "hello")["exit_code"], 0);
    assert_eq!(task(&st, "settings")["status"], "success", "{st}");
    let f = task(&st, "fails");
    assert_eq!(f["status"], "failed", "{st}");
    assert_eq!(f["exit_code"], 3);

    let logs = |t: &str| {
        stdout(&run(pf(dir.path(), &engine).args([
            "logs",
            "containers",
            t,
        ])))
    };
    let hello = logs("hello");
    assert!(hello.contains("out") && hello.contains("err"), "{hello}");
    let settings = logs("settings");
    for want in ["from the host", "A=hi there", "/data", "1000", "read-only"] {
        assert!(settings.contains(want), "{want} missing in {settings}");
    }
    assert!(logs("fails").contains("failing"));
    // A value published through $PICOFLOW_OUTPUT inside a container, read by the next task.
    assert_eq!(task(&st, "settings")["outputs"]["who"], "1000", "{st}");
    assert!(
        logs("uses").contains("settings ran as 1000"),
        "{}",
        logs("uses")
    );
    // stdout and stderr are kept apart.
    assert_eq!(task(&st, "hello")["stdout"], "out\n", "{st}");
    assert_eq!(task(&st, "hello")["stderr"], "err\n", "{st}");

    // Every container was removed, and each was labelled with its run.
    assert_eq!(
        engine.containers("picoflow.workflow=containers"),
        Vec::<String>::new()
    );
}

#[test]
fn a_timeout_stops_and_removes_the_container() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-timeout");
    let wf = dir.write(
        "t.yaml",
        &format!(
            "name: slow\ntasks:\n  - name: sleeper\n    type: docker\n    timeout: 3\n    retry: 0\n    config:\n      image: {IMAGE}\n      command: [\"sleep\", \"300\"]\n"
        ),
    );
    let started = Instant::now();
    let out = run(pf(dir.path(), &engine).arg("run").arg(&wf));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    // 3 s, then SIGTERM (which sleep as PID 1 ignores) and SIGKILL 2 s later.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let st = status_json(dir.path(), "slow");
    let t = task(&st, "sleeper");
    assert_eq!(t["status"], "timeout", "{st}");
    assert_eq!(t["exit_code"], 124);
    assert!(
        t["error_message"]
            .as_str()
            .unwrap()
            .contains("stopped and removed"),
        "{st}"
    );
    assert_eq!(
        engine.containers("picoflow.workflow=slow"),
        Vec::<String>::new()
    );
}

#[test]
fn an_interrupted_run_stops_and_removes_its_container() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-sigint");
    let (wf, marks) = marking_workflow(&dir, "interrupted");
    let child = pf(dir.path(), &engine)
        .arg("run")
        .arg(&wf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "the container to start", || {
        marks.join("started").exists()
    });
    let running = engine.containers("picoflow.workflow=interrupted");
    assert_eq!(running.len(), 1);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = finish(child, "the interrupted run");
    assert_eq!(out.status.code(), Some(9), "{}", stdout(&out));
    // The container got SIGTERM, then SIGKILL (sleep ignores SIGTERM), and was removed.
    let (status, _) = api(
        &engine.socket(),
        "GET",
        &format!("/containers/{}/json", running[0]),
    );
    assert_eq!(status, 404, "the container outlived the run");
    let st = status_json(dir.path(), "interrupted");
    assert_eq!(st["execution"]["status"], "interrupted", "{st}");
    let t = task(&st, "long");
    assert_eq!(t["status"], "failed", "{st}");
    assert!(t["exit_code"].is_null(), "PicoFlow stopped it: {st}");
    let msg = t["error_message"].as_str().unwrap();
    assert!(
        msg.starts_with("interrupted: the run was stopped (cancelled; container")
            && msg.contains("stopped and removed"),
        "{msg}"
    );
}

#[test]
fn a_missing_image_and_a_failed_pull_are_named() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-image");
    let wf = dir.write(
        "i.yaml",
        "name: images\ntasks:\n  - name: absent\n    type: docker\n    retry: 0\n    continue_on_failure: true\n    config:\n      image: localhost/picoflow-absent:1\n  - name: unpullable\n    type: docker\n    retry: 0\n    depends_on: [absent]\n    config:\n      image: nonexistent.invalid/picoflow/none:1\n      pull: missing\n",
    );
    let out = run(pf(dir.path(), &engine).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let st = status_json(dir.path(), "images");
    let absent = task(&st, "absent");
    assert_eq!(absent["status"], "failed");
    let msg = absent["error_message"].as_str().unwrap();
    assert!(
        msg.contains("localhost/picoflow-absent:1") && msg.contains("pull: never"),
        "{msg}"
    );
    let unpullable = task(&st, "unpullable")["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        unpullable.contains("cannot pull image 'nonexistent.invalid/picoflow/none:1'"),
        "{unpullable}"
    );
}

#[test]
fn an_engine_that_is_down_fails_the_task_and_is_retried() {
    let dir = TempDir::new("docker-down");
    let socket = dir.path().join("gone.sock");
    // A socket file whose server has gone: connection refused.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let wf = dir.write(
        "d.yaml",
        &format!(
            "name: down\ntasks:\n  - name: t\n    type: docker\n    retry: 1\n    config:\n      image: {IMAGE}\n"
        ),
    );
    let out = run(picoflow(dir.path())
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let st = status_json(dir.path(), "down");
    let t = task(&st, "t");
    assert_eq!(t["attempt"], 2, "retried once: {st}");
    assert_eq!(t["exit_code"], 125, "{st}");
    let msg = t["error_message"].as_str().unwrap();
    assert!(
        msg.contains("does not answer") && msg.contains("gone.sock"),
        "{msg}"
    );

    // No socket at all.
    let out = run(picoflow(dir.path())
        .env(
            "DOCKER_HOST",
            format!("unix://{}/none.sock", dir.path().display()),
        )
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("no container engine"),
        "{}",
        stdout(&out)
    );

    // A socket PicoFlow may not open: not retried, and the message says what to do.
    let guarded = dir.path().join("guarded.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&guarded).unwrap();
    std::fs::set_permissions(
        &guarded,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Root opens any socket: the run is made as `nobody` then, in a directory it may write.
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    let mut cmd = picoflow(&own);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt as _;
        // Its own directory: PicoFlow keeps no state where others may write.
        std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
        cmd.uid(65534).gid(65534);
    }
    let out = run(cmd
        .env("DOCKER_HOST", format!("unix://{}", guarded.display()))
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("permission denied on") && text.contains("guarded.sock"),
        "{text}"
    );
    assert!(
        !text.contains("retrying"),
        "a permission error is not retried: {text}"
    );
}

/// A workflow whose one task marks its start in `marks` and sleeps; once the mark exists,
/// the task ends at once.
fn marking_workflow(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let wf = dir.write(
        "r.yaml",
        &format!(
            r#"name: {name}
tasks:
  - name: long
    type: docker
    config:
      image: {IMAGE}
      command: ["sh", "-c", "if [ -e /marks/started ]; then echo second; else touch /marks/started; sleep 300; fi"]
      volumes: ["{}:/marks"]
"#,
            marks.display()
        ),
    );
    (wf, marks)
}

/// Starts a run of `wf`, kills it (SIGKILL) once its container runs, and returns the
/// container, which outlives the run.
fn run_and_kill(engine: &Podman, dir: &Path, wf: &Path, marks: &Path, label: &str) -> String {
    let child = pf(dir, engine)
        .arg("run")
        .arg(wf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for(
        Duration::from_secs(60),
        "the first container to start",
        || marks.join("started").exists(),
    );
    let first = engine.containers(label);
    assert_eq!(first.len(), 1);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    finish(child, "the killed run");
    // Nothing stops a container when the process that started it dies.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(engine.containers(label), first);
    first[0].clone()
}

#[test]
fn a_killed_run_leaves_a_container_that_resume_removes() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-resume");
    let (wf, marks) = marking_workflow(&dir, "resumable");
    let label = "picoflow.workflow=resumable";
    let first = run_and_kill(&engine, dir.path(), &wf, &marks, label);

    let out = run(pf(dir.path(), &engine).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let logs = stdout(&run(pf(dir.path(), &engine).args([
        "logs",
        "resumable",
        "long",
    ])));
    assert!(logs.contains("second"), "{logs}");
    // The survivor was removed (and the resumed attempt's own container too).
    let (status, _) = api(
        &engine.socket(),
        "GET",
        &format!("/containers/{first}/json"),
    );
    assert_eq!(
        status, 404,
        "the interrupted attempt's container is still there"
    );
    assert_eq!(engine.containers(label), Vec::<String>::new());
}

#[test]
fn a_new_run_after_a_crash_removes_the_orphaned_container() {
    let engine = Podman::start();
    let dir = TempDir::new("docker-orphan");
    let (wf, marks) = marking_workflow(&dir, "orphaned");
    let label = "picoflow.workflow=orphaned";
    let first = run_and_kill(&engine, dir.path(), &wf, &marks, label);

    // Not a resume: a new execution, which first removes what the dead run left.
    let out = run(pf(dir.path(), &engine).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let (status, _) = api(
        &engine.socket(),
        "GET",
        &format!("/containers/{first}/json"),
    );
    assert_eq!(status, 404, "the orphaned container is still there");
    assert!(
        stderr(&out).contains("removing a container left by an interrupted execution"),
        "{}",
        stderr(&out)
    );
    assert_eq!(engine.containers(label), Vec::<String>::new());
}

/// Looking for a crashed run's containers never holds up the daemon's schedule. A container
/// engine that takes connections and never answers stands in for a hung Docker: the daemon
/// resumes an execution a SIGKILL interrupted, and the search for that execution's leftover
/// containers waits on the engine (up to its 60 s call limit) while another workflow keeps
/// firing every second.
#[test]
fn a_schedule_fires_on_time_while_a_cleanup_waits_on_a_silent_engine() {
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let out = run(picoflow(Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+docker"),
        "this test needs the docker feature (run the suite with default features)"
    );
    let dir = TempDir::new("docker-silent-engine");
    let d = dir.path();
    // The stop below waits this long for the run still looking for containers.
    dir.write(
        "picoflow.toml",
        "[daemon]\nshutdown_timeout_seconds = 2\n\n[metrics]\nenabled = false\n",
    );
    dir.write(
        "stuck.yaml",
        "name: stuck\nschedule: \"0 0 1 1 *\"\ntasks:\n  - name: hold\n    type: shell\n    config:\n      command: \"touch started; sleep 30\"\n",
    );
    dir.write(
        "tick.yaml",
        "name: tick\nschedule: \"* * * * * *\"\ntasks:\n  - name: t\n    type: shell\n    config:\n      command: \"date +%s >> ticks.txt\"\n",
    );

    // An execution of `stuck` interrupted by SIGKILL while its task runs.
    let child = picoflow(d)
        .args(["run", "stuck.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the task to start", || {
        d.join("started").exists()
    });
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    finish(child, "the killed run");

    // The engine: every connection is taken and held, nothing is ever read or written.
    let socket = d.join("engine.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });

    let daemon = picoflow(d)
        .args([
            "--log-format",
            "pretty",
            "daemon",
            "start",
            "stuck.yaml",
            "tick.yaml",
        ])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default();
    // The reachability check, then the container listing, which stays unanswered.
    wait_for(
        Duration::from_secs(20),
        "the cleanup to ask the engine",
        || taken.load(Ordering::SeqCst) >= 2,
    );
    let asked = Instant::now();
    let ticks = |d: &Path| {
        std::fs::read_to_string(d.join("ticks.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = ticks(d);
    wait_for(
        Duration::from_secs(15),
        "the other workflow to fire three times while the cleanup waits",
        || ticks(d) >= before + 3,
    );
    // Still within the engine's call limit: the cleanup has not given up yet, and the resumed
    // execution has not started its task again.
    assert!(asked.elapsed() < Duration::from_secs(50));
    assert!(
        !log().contains("cannot look for leftover containers"),
        "{}",
        log()
    );
    let status = status_json(d, "stuck");
    assert_eq!(status["execution"]["status"], "interrupted", "{status}");

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let stopping = Instant::now();
    let out = finish(daemon, "the daemon");
    // The shutdown timeout (2 s) ends the search; the engine's own limit (60 s) is not awaited.
    assert!(stopping.elapsed() < Duration::from_secs(30), "{}", log());
    // The run still waiting on the engine is stopped when the shutdown timeout ends, and
    // recorded as interrupted (exit 9: tasks were stopped).
    assert_eq!(out.status.code(), Some(9), "{}", log());
    assert!(!log().contains("panicked"), "{}", log());
    let status = status_json(d, "stuck");
    assert_eq!(status["execution"]["status"], "interrupted", "{status}");
    // Stopped before its task started again: the one attempt is the interrupted one.
    assert_eq!(
        status["tasks"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
}
