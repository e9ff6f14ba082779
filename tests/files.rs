//! What PicoFlow leaves on disk is its own user's alone: files 0600 and directories 0700
//! whatever the umask, and nothing another local user prepared is written through.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{picoflow, run, stderr, stdout, wait_for, TempDir};

/// The usual umask of a shared device, set in the child only (tasks inherit it).
fn umask_022(cmd: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe and only changes the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

/// The permission bits of `p` (not following a link), in octal as `ls -l` counts them.
fn mode(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode();
    format!("{:04o}", m & 0o7777)
}

/// Every file and directory under `dir`, the directory itself first.
fn tree(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        match p.is_dir() {
            true => tree(&p, out),
            false => out.push(p),
        }
    }
}

const SECRET: &str = "password=hunter2";

/// A task prints a secret (to its log) and publishes one (through `$PICOFLOW_OUTPUT`).
fn secret_wf(name: &str, schedule: &str) -> String {
    format!(
        "name: {name}\n{schedule}tasks:\n  - name: login\n    type: shell\n    config:\n      command: \"echo {SECRET}; echo token=hunter2 >> $PICOFLOW_OUTPUT\"\n"
    )
}

/// Under umask 022 the state file, its journal, task logs and their directories, a SQLite
/// export and the daemon's PID and status files were 0644/0755: any local user read
/// `password=hunter2` from them (or ran `picoflow --db-path <theirs> status`). All are
/// 0600/0700 now, and a state file of an earlier version that others could read is made 0600
/// when opened.
#[test]
fn files_are_private_under_umask_022() {
    let dir = TempDir::new("files-modes");
    let wf = dir.write("secret.yaml", &secret_wf("secret", ""));
    // An earlier state file, created 0644 (empty: redb makes a new database in it).
    let db = dir.path().join("picoflow.redb");
    std::fs::write(&db, "").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = run(umask_022(&mut picoflow(dir.path())).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(umask_022(&mut picoflow(dir.path())).args(["logs", "secret", "--task", "login"]));
    assert!(
        stdout(&out).contains(SECRET),
        "the task log holds the secret"
    );

    assert_eq!(mode(&db), "0600", "state file");
    let mut logs = Vec::new();
    tree(&dir.path().join("logs"), &mut logs);
    assert!(
        logs.len() >= 4,
        "logs, workflow, execution, task log: {logs:?}"
    );
    for p in &logs {
        let want = if p.is_dir() { "0700" } else { "0600" };
        assert_eq!(mode(p), want, "{}", p.display());
    }
    let run_dir = dir.path().join("picoflow.redb.run");
    assert_eq!(mode(&run_dir), "0700", "directory of task outputs");

    // A journal: a run killed while a task is still running leaves its journal behind, with
    // the first task's completion in it.
    let slow = dir.write(
        "slow.yaml",
        "name: slow\ntasks:\n  - name: first\n    type: shell\n    config: {command: \"echo password=hunter2\"}\n  - name: second\n    type: shell\n    depends_on: [first]\n    config: {command: \"sleep 30\"}\n",
    );
    let mut killed = umask_022(&mut picoflow(dir.path()))
        .arg("run")
        .arg(&slow)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".journal"))
    };
    wait_for(Duration::from_secs(20), "the run's journal", || {
        journal().is_some()
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    let journal = journal().unwrap();
    assert_eq!(mode(&journal), "0600", "{}", journal.display());

    let export = dir.path().join("history.db");
    let out = run(umask_022(&mut picoflow(dir.path()))
        .args(["export", "sqlite"])
        .arg(&export));
    if stderr(&out).contains("sqlite") && out.status.code() != Some(0) {
        println!("this build has no sqlite feature: the export is not checked");
    } else {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(mode(&export), "0600", "SQLite export");
    }

    // The daemon's PID and status files.
    dir.write("idle.yaml", &secret_wf("idle", "schedule: \"0 0 1 1 *\"\n"));
    let mut daemon = umask_022(&mut picoflow(dir.path()))
        .args(["daemon", "start", "idle.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = dir.path().join("picoflow.redb.pid.json");
    wait_for(Duration::from_secs(20), "the daemon's status file", || {
        status.exists()
    });
    let pid_file = dir.path().join("picoflow.redb.pid");
    let modes = (mode(&pid_file), mode(&status));
    // SAFETY: stopping our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert_eq!(
        modes,
        ("0600".into(), "0600".into()),
        "PID and status files"
    );
}

/// A throwaway local user (the other user of a shared device), removed when dropped.
struct OtherUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl OtherUser {
    fn create() -> OtherUser {
        let name = format!("pfatk{}", &picoflow_lib::new_id()[..6]);
        let ok = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("useradd");
        assert!(ok.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        OtherUser { name, uid, gid }
    }

    /// Runs a shell command line as this user, with `$D` the directory they attack.
    fn sh(&self, dir: &Path, line: &str) {
        let out = Command::new("sh")
            .args(["-c", line])
            .env("D", dir)
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "as {}: {line}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Task outputs went to `/tmp/picoflow-<execution id>`, accepted when it existed; another
/// user who made it first (0777, links named like the output files) had PicoFlow, running
/// as root, append outputs to a file of theirs choosing, read its target back as outputs
/// and, with a docker task, make it 0666. Outputs now go to `<state file>.run`: when that
/// exists and is not root's own 0700 directory — another user's directory, or a link —
/// the run is refused, naming it, and nothing is written through it.
#[test]
fn a_run_directory_prepared_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIPPED: this test creates a second local user (useradd) and acts as them; run it as root"
        );
        return;
    }
    let user = OtherUser::create();
    let dir = TempDir::new("files-attack");
    // The state lives in a directory others may write to, as `/tmp` is (sticky).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let wf = dir.write("secret.yaml", &secret_wf("secret", ""));
    let victim = dir.write("victim", "root's own\n");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run_dir = dir.path().join("picoflow.redb.run");

    // Their own directory, open to all, full of links to the victim file.
    user.sh(
        dir.path(),
        "mkdir -m 0777 \"$D/picoflow.redb.run\" && for n in login.1 login.2; do ln -s \"$D/victim\" \"$D/picoflow.redb.run/$n\"; done",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "the run must be refused");
    assert!(
        err.contains(&format!(
            "picoflow.redb.run: is owned by uid {}, not by uid 0",
            user.uid
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own\n");
    assert_eq!(mode(&victim), "0600");

    // A link in its place, to a directory of theirs.
    user.sh(
        dir.path(),
        "rm -r \"$D/picoflow.redb.run\" && mkdir -m 0777 \"$D/theirs\" && ln -s \"$D/theirs\" \"$D/picoflow.redb.run\"",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "the run must be refused");
    assert!(
        err.contains("picoflow.redb.run: is a symbolic link, not a directory"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("theirs"))
            .unwrap()
            .count(),
        0,
        "nothing is created in their directory"
    );

    // Once they are gone, PicoFlow makes its own, and the outputs are read from it.
    std::fs::remove_file(&run_dir).unwrap();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = std::fs::symlink_metadata(&run_dir).unwrap();
    assert!(st.is_dir());
    assert_eq!((st.uid(), st.mode() & 0o7777), (0, 0o700));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own\n");
    assert_eq!(mode(&victim), "0600");
}

/// A run directory PicoFlow would refuse (here a symbolic link) refuses `run` and `daemon
/// start` with exit code 5 before anything is made: no state file, no PID file.
#[test]
fn a_refused_run_directory_leaves_no_state_file() {
    let dir = TempDir::new("files-refused-run-dir");
    let wf = dir.write("secret.yaml", &secret_wf("secret", ""));
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("elsewhere"),
        dir.path().join("picoflow.redb.run"),
    )
    .unwrap();
    for args in [&["run"][..], &["daemon", "start"][..]] {
        let out = run(picoflow(dir.path()).args(args).arg(&wf));
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("picoflow.redb.run: is a symbolic link, not a directory"),
            "{}",
            stderr(&out)
        );
        for made in ["picoflow.redb", "picoflow.redb.pid"] {
            assert!(!dir.path().join(made).exists(), "{args:?} made {made}");
        }
    }
}

/// The output directories a crash leaves in `<state file>.run/` (where tasks' published values,
/// secrets among them, sat) are removed by `prune`; a running execution keeps its own.
#[test]
fn prune_removes_the_output_directories_crashed_runs_left() {
    let dir = TempDir::new("files-prune-run");
    dir.write(
        "slow.yaml",
        "name: slow\ntasks:\n  - {name: a, type: shell, config: {command: \"echo token=x >> $PICOFLOW_OUTPUT; sleep 60\"}}\n",
    );
    dir.write(
        "other.yaml",
        "name: other\ntasks:\n  - {name: b, type: shell, config: {command: \"sleep 60\"}}\n",
    );
    let run_dir = dir.path().join("picoflow.redb.run");
    let entries = || -> Vec<String> {
        std::fs::read_dir(&run_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // A run killed with SIGKILL leaves its directory.
    let mut crashed = picoflow(dir.path())
        .args(["run", "slow.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the task to publish", || {
        entries().len() == 1
            && std::fs::read_dir(run_dir.join(&entries()[0]))
                .is_ok_and(|mut rd| rd.next().is_some())
    });
    let left = entries()[0].clone();
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    // Another run goes on meanwhile.
    let mut running = picoflow(dir.path())
        .args(["run", "other.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the second run's directory",
        || entries().len() == 2,
    );
    // Both look old: only the one of an execution that still runs stays.
    let out = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .args(entries().iter().map(|e| run_dir.join(e)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(picoflow(dir.path()).arg("prune"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Removed 1 output directories that crashed runs left"),
        "{}",
        stdout(&out)
    );
    let now = entries();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], left);
    running.kill().unwrap();
    running.wait().unwrap();
}

/// Whether the process `pid` still runs (signal 0), reaping it if it is our zombie child.
fn alive(child: &mut std::process::Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// `daemon stop` signalled whatever pid the PID file named while some process held its
/// lock: another user who could write the PID file (or the configuration naming it) had
/// PicoFlow, running as root, kill a process of their choosing, and `daemon status` called
/// it running. The PID file now records the daemon's start time beside its pid, and a
/// process that does not match it is neither signalled nor reported as the daemon.
#[test]
fn daemon_stop_does_not_signal_a_process_the_pid_file_merely_names() {
    let dir = TempDir::new("files-pid");
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid_file = dir.write("picoflow.redb.pid", &format!("{}\n", victim.id()));
    // Another process holds the lock, as a running daemon would.
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&pid_file)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the lock on the PID file", || {
        let f = std::fs::File::open(&pid_file).unwrap();
        use std::os::fd::AsRawFd as _;
        // SAFETY: a non-blocking test of the lock on our own descriptor.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    });
    for start in ["", "12345\n"] {
        std::fs::write(&pid_file, format!("{}\n{start}", victim.id())).unwrap();
        let out = run(picoflow(dir.path()).args(["daemon", "stop"]));
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
        assert!(
            err.contains(&format!("names pid {}", victim.id()))
                && err.contains("is not the daemon that wrote the file")
                && err.contains("not signalled"),
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(alive(&mut victim), "the named process was killed");
        let out = run(picoflow(dir.path()).args(["daemon", "status"]));
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(!stdout(&out).contains("Running"), "{}", stdout(&out));
    }
    let _ = holder.kill();
    let _ = holder.wait();

    // SAFETY: geteuid has no memory effects.

    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the other user's PID file part needs root (useradd); run as root");
    } else {
        // A PID file of another user is not read at all.
        let user = OtherUser::create();
        std::os::unix::fs::chown(&pid_file, Some(user.uid), Some(user.gid)).unwrap();
        let out = run(picoflow(dir.path()).args(["daemon", "stop"]));
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            err.contains(&format!("is owned by uid {}, not by uid 0", user.uid)),
            "{err}"
        );
    }
    assert!(alive(&mut victim), "the named process was killed");
    let _ = victim.kill();
    let _ = victim.wait();
}

/// A `picoflow.toml` another user could write names the PID file `daemon stop` signals and
/// the commands PicoFlow runs: one owned by another user, or writable by group or others, is
/// refused with exit code 4 (a configuration error), like OpenSSH's `StrictModes`.
#[test]
fn a_configuration_file_others_can_write_is_refused() {
    let dir = TempDir::new("files-toml");
    let toml = dir.write("picoflow.toml", "log_level = \"info\"\n");
    let out = run(picoflow(dir.path()).args(["daemon", "status"]));
    assert_eq!(out.status.code(), Some(1), "not running: {}", stderr(&out));
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["daemon", "stop"][..], &["daemon", "status"], &["history"]] {
        let out = run(picoflow(dir.path()).args(args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(
            err.contains("picoflow.toml")
                && err.contains("has mode 0666: writable by group or others"),
            "{err}"
        );
    }
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the other user's picoflow.toml part needs root (useradd); run as root");
        return;
    }
    let user = OtherUser::create();
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&toml, Some(user.uid), Some(user.gid)).unwrap();
    let out = run(picoflow(dir.path()).args(["daemon", "stop"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!(
            "is owned by uid {}, not by uid 0 or root",
            user.uid
        )),
        "{err}"
    );
}

/// `export sqlite <file>` wrote the history into whatever the name led to: a link (SQLite
/// follows it) or another user's file made 0666 in a shared directory. Both are refused now
/// and left as they were.
#[test]
fn export_does_not_write_through_a_link_or_into_another_users_file() {
    let dir = TempDir::new("files-export");
    let wf = dir.write("secret.yaml", &secret_wf("secret", ""));
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let victim = dir.write("victim", "keep\n");
    let link = dir.path().join("x.db");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&link));
    let err = stderr(&out);
    if err.contains("sqlite") && err.contains("feature") {
        println!("SKIPPED: this build has no sqlite feature");
        return;
    }
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("x.db: is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    // A link to a file that is a SQLite database already is refused as well.
    let other_db = dir.path().join("other.db");
    let out = run(picoflow(dir.path())
        .args(["export", "sqlite"])
        .arg(&other_db));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = std::fs::read(&other_db).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&other_db, &link).unwrap();
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&link));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&other_db).unwrap(), before);

    // SAFETY: geteuid has no memory effects.

    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the other user's file part needs root (useradd); run as root");
        return;
    }
    let user = OtherUser::create();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for (name, text) in [("empty.db", ""), ("full.db", "theirs")] {
        user.sh(
            dir.path(),
            &format!("printf '{text}' > \"$D/{name}\" && chmod 0666 \"$D/{name}\""),
        );
        let target = dir.path().join(name);
        let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&target));
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{name}");
        assert!(
            err.contains(&format!(
                "{name}: is owned by uid {}, not by uid 0",
                user.uid
            )),
            "{err}"
        );
        let m = std::fs::symlink_metadata(&target).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (user.uid, 0o666));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), text);
    }
}

/// A `logs/<workflow>` link another user planted in a shared logs directory was followed:
/// root wrote task output (secrets) into their directory. Each level under the logs
/// directory is now PicoFlow's own directory, checked with `lstat`, and a logs directory (or
/// a state file's directory) of another user is refused before anything is written.
#[test]
fn directories_another_user_controls_are_refused() {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIPPED: this test creates a second local user (useradd) and acts as them; run it as root"
        );
        return;
    }
    let user = OtherUser::create();
    let dir = TempDir::new("files-dirs");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let wf = dir.write("secret.yaml", &secret_wf("secret", ""));
    // A shared logs directory (sticky, like /tmp) where they planted a link.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    user.sh(
        dir.path(),
        "mkdir -m 0777 \"$D/theirs\" && ln -s \"$D/theirs\" \"$D/logs/secret\"",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let err = stderr(&out);
    assert!(
        err.contains("logs/secret: is a symbolic link, not a directory"),
        "{err}"
    );
    let theirs = dir.path().join("theirs");
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing written through it"
    );

    // Their own logs directory.
    std::fs::remove_file(logs.join("secret")).unwrap();
    std::fs::remove_dir(&logs).unwrap();
    user.sh(dir.path(), "mkdir -m 0755 \"$D/logs\"");
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "logs: is owned by uid {}, not by uid 0 or root",
            user.uid
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);

    // A state file in their directory: refused before anything is written there.
    let out = run(picoflow(dir.path())
        .arg("--db-path")
        .arg(theirs.join("s.redb"))
        .arg("run")
        .arg(&wf));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains(&format!(
            "theirs: is owned by uid {}, not by uid 0 or root",
            user.uid
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    // Nor in a directory of root's that anyone may write to without the sticky bit.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(picoflow(dir.path())
        .arg("--db-path")
        .arg(open.join("s.redb"))
        .arg("run")
        .arg(&wf));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("open: has mode 0777: writable by group or others without the sticky bit"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    // The shared directory itself (sticky, root's, like /tmp) is fine.
    std::fs::remove_dir_all(&logs).unwrap();
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A state file named where a FIFO or a device is (`--db-path /dev/null` by mistake) is
/// refused with exit code 5 naming it: a FIFO does not block a reader, and a device keeps its
/// mode (root would otherwise have made `/dev/null` 0600 for everyone).
#[test]
fn a_state_file_that_is_a_fifo_or_a_device_is_refused_and_left_alone() {
    let dir = TempDir::new("not-regular");
    let wf = dir.write(
        "ok.yaml",
        "name: ok\ntasks:\n  - name: a\n    type: shell\n    config: {command: \"true\"}\n",
    );
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let mut targets = vec![fifo];
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } == 0 {
        let dev = dir.path().join("null");
        let c = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mknod of a character device (1, 3: the null device) with a valid path.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o666)).unwrap();
        targets.push(dev);
    } else {
        println!("SKIPPED: the device part needs root (mknod); run as root");
    }
    for target in targets {
        let before = mode(&target);
        for args in [
            vec!["run", wf.to_str().unwrap()],
            vec!["status"],
            vec!["history"],
        ] {
            let mut cmd = picoflow(dir.path());
            cmd.arg("--db-path").arg(&target).args(&args);
            let out = common::finish(
                cmd.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
                "a command on a non-regular state file",
            );
            assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("is not a regular file"),
                "{args:?}: {}",
                stderr(&out)
            );
        }
        assert_eq!(mode(&target), before, "{}", target.display());
    }
}
