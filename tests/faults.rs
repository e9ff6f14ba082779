//! Faults on real processes (REL-001, REL-002): what a `kill -9` of the orchestrator leaves.
//! A killed `picoflow run` used to leave its running task alive, and `run --resume` then ran
//! the task again beside the survivor (two `rsync`s at once).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{picoflow, run, stderr, wait_for, TempDir};

/// Whether `pid` runs (a zombie, waiting for a parent to reap it, has ended).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Pids of the processes whose command line is exactly `cmdline`.
fn pids_of(cmdline: &str) -> Vec<i32> {
    live_pids_whose("cmdline", |c| {
        let words: Vec<String> = c
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        words.join(" ") == cmdline
    })
}

/// Pids of the live processes whose `/proc/<pid>/<file>` satisfies `test`.
fn live_pids_whose(file: &str, test: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(text) = std::fs::read(format!("/proc/{pid}/{file}")) else {
            continue;
        };
        if test(&text) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A sleep duration no other test run uses, so that the processes it names are this test's.
fn unique_seconds(whole: u32) -> String {
    format!("{whole}.{:06}", std::process::id() % 1_000_000)
}

/// Kills the processes on drop, so that a failing test leaves nothing behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            // SAFETY: kill(2) on a pid this test found; no memory is involved.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
    }
}

fn read_pid(dir: &Path, name: &str) -> i32 {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Starts `picoflow run` of a task that starts two background processes, kills the run with
/// SIGKILL while the task runs, checks that the task's own process died with it and returns
/// the pids of the processes it started, which the kernel leaves running.
fn crash_leaving_two_sleeps(dir: &Path, wf: &Path, cmdline: &str) -> Vec<i32> {
    let mut child = picoflow(dir)
        .arg("run")
        .arg(wf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the task's two sleeps", || {
        pids_of(cmdline).len() == 2
    });
    let shell = read_pid(dir, "sh.pid");
    let sleeps = pids_of(cmdline);
    let guard = KillOnDrop(sleeps.clone());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The task's own process dies with the orchestrator (PR_SET_PDEATHSIG) ...
    wait_for(Duration::from_secs(5), "the task's shell to die", || {
        !alive(shell)
    });
    // ... what it started lives on, as the kernel leaves it.
    assert!(sleeps.iter().all(|p| alive(*p)), "{sleeps:?}");
    std::mem::forget(guard);
    sleeps
}

/// A task that ends at once when `resumed` exists, and otherwise starts two `sleep`s. Each
/// test has its own workflow name: a run stops the leftovers of every crashed run of its
/// workflow, whichever directory it ran in.
fn sleeper(dir: &TempDir, name: &str, seconds: &str) -> std::path::PathBuf {
    dir.write(
        "w.yaml",
        &format!("name: {name}\ntasks:\n  - name: long\n    type: shell\n    retry: 0\n    config:\n      command: \"[ -e resumed ] && exit 0; echo $$ > sh.pid; sleep {seconds} & sleep {seconds}; wait\"\n"),
    )
}

fn assert_stopped(out: &std::process::Output, sleeps: &[i32]) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    for p in sleeps {
        assert!(!alive(*p), "process {p} of the killed run survived");
    }
    let log = stderr(out);
    assert!(
        log.matches("left running by an interrupted execution")
            .count()
            >= 2,
        "{log}"
    );
    assert!(log.contains("sleep"), "{log}");
}

#[test]
fn a_killed_run_leaves_no_task_running_beside_its_resumed_self() {
    let dir = TempDir::new("orphans");
    // A distinctive duration lets the test find the task's processes.
    let secs = unique_seconds(41);
    let wf = sleeper(&dir, "orphans-resume", &secs);
    let sleeps = crash_leaving_two_sleeps(dir.path(), &wf, &format!("sleep {secs}"));
    // The resumed run stops them before any task starts.
    std::fs::write(dir.path().join("resumed"), "").unwrap();
    let out = run(picoflow(dir.path())
        .args(["--log-format", "pretty", "run", "--resume"])
        .arg(&wf));
    assert_stopped(&out, &sleeps);
}

#[test]
fn a_new_run_after_a_crash_stops_what_the_crash_left() {
    let dir = TempDir::new("orphans-new");
    let secs = unique_seconds(42);
    let wf = sleeper(&dir, "orphans-new", &secs);
    let sleeps = crash_leaving_two_sleeps(dir.path(), &wf, &format!("sleep {secs}"));
    std::fs::write(dir.path().join("resumed"), "").unwrap();
    let out = run(picoflow(dir.path())
        .args(["--log-format", "pretty", "run"])
        .arg(&wf));
    assert_stopped(&out, &sleeps);
    // A run after a clean one does not look for leftovers at all.
    let out = run(picoflow(dir.path())
        .args(["--log-format", "pretty", "run"])
        .arg(&wf));
    assert!(!stderr(&out).contains("left running"), "{}", stderr(&out));
}

#[test]
fn tasks_know_their_workflow_execution_and_attempt() {
    let dir = TempDir::new("task-env");
    let wf = dir.write(
        "w.yaml",
        "name: envy\ntasks:\n  - name: show\n    type: shell\n    config:\n      command: \"echo $PICOFLOW_WORKFLOW/$PICOFLOW_TASK/$PICOFLOW_ATTEMPT/$PICOFLOW_EXECUTION_ID > env.txt\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    let parts: Vec<&str> = text.trim().split('/').collect();
    assert_eq!(&parts[..3], ["envy", "show", "1"]);
    assert!(
        common::stdout(&out).contains(parts[3]),
        "execution id {} not in the summary",
        parts[3]
    );
}

#[test]
fn a_daemon_that_resumes_a_crashed_run_stops_what_it_left() {
    let dir = TempDir::new("orphans-daemon");
    let secs = unique_seconds(43);
    let wf = sleeper(&dir, "orphans-daemon", &secs);
    let sleeps = crash_leaving_two_sleeps(dir.path(), &wf, &format!("sleep {secs}"));
    std::fs::write(dir.path().join("resumed"), "").unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = picoflow(dir.path())
        .args(["--log-format", "pretty", "daemon", "start", "w.yaml"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stopped = Instant::now();
    while sleeps.iter().any(|p| alive(*p)) && stopped.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for p in &sleeps {
        assert!(!alive(*p), "process {p} of the killed run survived: {text}");
    }
    assert!(
        text.contains("left running by an interrupted execution"),
        "{text}"
    );
}

/// A throwaway user, created with useradd(8) and removed with userdel(8) on drop.
struct ThrowawayUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl ThrowawayUser {
    /// `tag` tells apart the users of tests running at once.
    fn create(tag: &str) -> ThrowawayUser {
        let name = format!("pf{tag}{}", std::process::id() % 1_000_000);
        let ok = std::process::Command::new("useradd")
            .args(["-M", "-N", "-s", "/usr/sbin/nologin", &name])
            .status()
            .expect("useradd(8) is needed to test processes of another user")
            .success();
        assert!(ok, "useradd {name} failed");
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, &name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        ThrowawayUser { name, uid, gid }
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
    }
}

/// The search for leftovers trusted the marks in a process's environment, which anyone can
/// set: run as root, `run --resume` of `backup` killed another user's
/// `PICOFLOW_WORKFLOW=backup PICOFLOW_OWNER=1.1 setsid sleep 300`. Only processes of
/// PicoFlow's own user are stopped now.
#[test]
fn the_search_for_leftovers_leaves_other_users_processes_alone() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED the_search_for_leftovers_leaves_other_users_processes_alone: \
             it creates a user and starts a process as that user, which needs root"
        );
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let dir = TempDir::new("orphans-uid");
    let secs = unique_seconds(44);
    let wf = sleeper(&dir, "orphans-uid", &secs);
    let sleeps = crash_leaving_two_sleeps(dir.path(), &wf, &format!("sleep {secs}"));
    let user = ThrowawayUser::create("atk");
    // The same marks twice, one process of the other user and one of ours, both started
    // outside PicoFlow and owned by a PicoFlow process that cannot exist.
    let marked = |secs: &str| {
        let mut c = std::process::Command::new("setsid");
        c.args(["sleep", secs])
            .env("PICOFLOW_WORKFLOW", "orphans-uid")
            .env("PICOFLOW_EXECUTION_ID", "forged")
            .env("PICOFLOW_TASK", "long")
            .env("PICOFLOW_OWNER", "4194305.1")
            .current_dir("/");
        c
    };
    let mut theirs = marked(&unique_seconds(45))
        .uid(user.uid)
        .gid(user.gid)
        .spawn()
        .unwrap();
    let mut ours = marked(&unique_seconds(46)).spawn().unwrap();
    let guard = KillOnDrop(vec![theirs.id() as i32, ours.id() as i32]);
    wait_for(Duration::from_secs(5), "the marked sleeps to start", || {
        [&theirs, &ours].iter().all(|c| {
            std::fs::read(format!("/proc/{}/environ", c.id()))
                .is_ok_and(|e| e.windows(16).any(|w| w == b"PICOFLOW_OWNER=4"))
        })
    });

    std::fs::write(dir.path().join("resumed"), "").unwrap();
    let out = run(picoflow(dir.path())
        .args(["--log-format", "pretty", "run", "--resume"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        alive(theirs.id() as i32),
        "the other user's process was killed: {}",
        stderr(&out)
    );
    assert!(
        !alive(ours.id() as i32),
        "our own marked process survived: {}",
        stderr(&out)
    );
    for p in &sleeps {
        assert!(!alive(*p), "process {p} of the killed run survived");
    }
    assert!(stderr(&out).contains("another user"), "{}", stderr(&out));
    drop(guard);
    theirs.wait().unwrap();
    ours.wait().unwrap();
    drop(user);
}

/// The directory of this test's cgroup v2 (PicoFlow, started from it, shares it), or why
/// there is none.
fn own_cgroup_dir() -> Result<String, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"));
    let point = mounts.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        (fs.starts_with("cgroup2 ")).then(|| fields.split(' ').nth(4).map(str::to_string))?
    });
    match (rel, point) {
        (Some(rel), Some(point)) => Ok(format!("{point}{}", rel.trim_end_matches('/'))),
        _ => Err("there is no cgroup v2".to_string()),
    }
}

fn writable(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: access(2) on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether PicoFlow, started from this test, has a cgroup v2 of its own to run tasks in: the
/// one it shares with this test is writable, and delegated (`user.delegate`/`trusted.delegate`),
/// the root of its cgroup namespace, or writable by a user other than root. If not, says why the test that needs one stops.
fn task_cgroups_expected(test: &str) -> bool {
    let why = own_cgroup_dir().err().or_else(|| {
        let dir = own_cgroup_dir().unwrap();
        let d = std::ffi::CString::new(dir.clone()).unwrap();
        let delegated = [c"trusted.delegate", c"user.delegate"].iter().any(|n| {
            let mut v = [0u8; 8];
            // SAFETY: getxattr(2) writes at most 8 bytes into `v`.
            unsafe { libc::getxattr(d.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), 8) > 0 }
        });
        let root = std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
            .any(|l| l == "0::/");
        // SAFETY: geteuid(2) cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        match (
            writable(&format!("{dir}/cgroup.procs")),
            root || delegated || !privileged,
        ) {
            (true, true) => None,
            (false, _) => Some(format!("{dir} is not writable")),
            (true, false) => Some(format!("{dir} is not delegated")),
        }
    });
    if let Some(why) = &why {
        eprintln!("SKIPPED {test}: tasks run in a cgroup of their own only where PicoFlow has one, and {why}");
    }
    why.is_none()
}

/// A cgroup below this test's that is neither delegated nor a namespace's root: PicoFlow
/// started in it has no task cgroups. Removed on drop.
struct PlainCgroup(String);

impl PlainCgroup {
    /// `None` (saying why) where this test cannot create one; PicoFlow then runs where the
    /// test does.
    fn create() -> Option<PlainCgroup> {
        let dir = match own_cgroup_dir() {
            Ok(d) if writable(&format!("{d}/cgroup.procs")) => d,
            Ok(d) => {
                eprintln!("NOTE: {d} is not writable; PicoFlow runs in the test's own cgroup");
                return None;
            }
            Err(why) => {
                eprintln!("NOTE: {why}; PicoFlow runs in the test's own cgroup");
                return None;
            }
        };
        let path = format!(
            "{dir}/pftest-plain-{}-{}",
            std::process::id(),
            picoflow_lib::new_id()
        );
        std::fs::create_dir(&path).unwrap();
        Some(PlainCgroup(path))
    }

    /// Starts `cmd` in this cgroup.
    fn enter(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(format!("{}/cgroup.procs", self.0)).unwrap();
        // SAFETY: between fork and exec the hook makes system calls only, on memory prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        let t = Instant::now();
        while std::fs::remove_dir(&self.0).is_err() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Asserts that the task whose `/proc/self/cgroup` is in `file` ran in a cgroup of its own,
/// or (`own` false) did not.
fn assert_ran_in_its_cgroup(dir: &Path, file: &str, own: bool) {
    let cg = std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(
        cg.lines()
            .any(|l| l.starts_with("0::") && l.contains("/picoflow-")),
        own,
        "{cg}"
    );
}

/// A task that leaves its process group and starts `sleep` in a session of its own, writing
/// the sleep's pid to `escaped.pid` and its cgroup to `cgroup.txt`.
fn escaping_task(dir: &TempDir, name: &str, timeout: Option<u32>) -> std::path::PathBuf {
    let timeout = timeout.map_or(String::new(), |t| format!("    timeout: {t}\n"));
    dir.write(
        "w.yaml",
        &format!("name: {name}\ntasks:\n  - name: escape\n    type: shell\n    retry: 0\n{timeout}    config:\n      command: \"[ -e resumed ] && exit 0; cat /proc/self/cgroup > cgroup.txt; setsid sh -c 'echo $$ > escaped.pid; exec env -i sleep 300' & sleep 30\"\n"),
    )
}

/// How PicoFlow runs in a test of a task that leaves its process group.
#[derive(Clone, Copy, PartialEq)]
enum Where {
    /// With a cgroup v2 of its own: each task in a cgroup of its own.
    TaskCgroups,
    /// In a cgroup that is not its own: tasks found by parentage (child subreapers).
    NoCgroup,
}

/// `picoflow` in `dir`, started where `place` says; the cgroup it needs, if any.
fn picoflow_in(dir: &Path, place: Where) -> (std::process::Command, Option<PlainCgroup>) {
    let mut cmd = picoflow(dir);
    let plain = match place {
        Where::TaskCgroups => None,
        Where::NoCgroup => PlainCgroup::create(),
    };
    if let Some(p) = &plain {
        p.enter(&mut cmd);
    }
    (cmd, plain)
}

fn stopped_at_its_timeout(place: Where) {
    let dir = TempDir::new("escape-timeout");
    let wf = escaping_task(&dir, "escape-timeout", Some(1));
    let (mut cmd, plain) = picoflow_in(dir.path(), place);
    let out = run(cmd.arg("run").arg(&wf));
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let escaped = read_pid(dir.path(), "escaped.pid");
    let _guard = KillOnDrop(vec![escaped]);
    wait_for(Duration::from_secs(5), "the escaped sleep to die", || {
        !alive(escaped)
    });
    if place == Where::TaskCgroups || plain.is_some() {
        assert_ran_in_its_cgroup(dir.path(), "cgroup.txt", place == Where::TaskCgroups);
    }
}

/// A task escaped its timeout: `setsid env -i sleep 123 & sleep 30` with `timeout: 1` timed
/// out and the `sleep 123`, in another session and without the PicoFlow variables, lived on.
#[test]
fn a_task_that_leaves_its_process_group_is_stopped_at_its_timeout() {
    if task_cgroups_expected("a_task_that_leaves_its_process_group_is_stopped_at_its_timeout") {
        stopped_at_its_timeout(Where::TaskCgroups);
    }
}

/// The same without a cgroup for PicoFlow: the escaped process is found by parentage.
#[test]
fn a_task_that_leaves_its_process_group_is_stopped_at_its_timeout_without_a_cgroup() {
    if under_emulation(
        "a_task_that_leaves_its_process_group_is_stopped_at_its_timeout_without_a_cgroup",
    ) {
        return;
    }
    stopped_at_its_timeout(Where::NoCgroup);
}

/// Whether the binary under test runs under an emulator (`PICOFLOW_TEST_RUNNER`, qemu-user for
/// the ARM builds), where the subreaper fallback is not tested: under qemu-user the escaped
/// process outlived the timeout (the run hit the 120 s limit). The task cgroups, the path a
/// systemd unit with `Delegate=yes` takes, are tested there as natively.
fn under_emulation(test: &str) -> bool {
    match std::env::var("PICOFLOW_TEST_RUNNER") {
        Ok(runner) if !runner.is_empty() => {
            println!(
                "SKIPPED {test}: the subreaper fallback is not tested under the emulator {runner}"
            );
            true
        }
        _ => false,
    }
}

fn stopped_with_the_run(place: Where) {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = TempDir::new("escape-signal");
        let wf = escaping_task(&dir, "escape-signal", None);
        let (mut cmd, plain) = picoflow_in(dir.path(), place);
        let mut child = cmd
            .arg("run")
            .arg(&wf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(20), "the escaped sleep", || {
            std::fs::read_to_string(dir.path().join("escaped.pid")).is_ok_and(|s| s.ends_with('\n'))
        });
        let escaped = read_pid(dir.path(), "escaped.pid");
        let _guard = KillOnDrop(vec![escaped]);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        // It stops the task (SIGTERM, SIGKILL after 2 s) and ends; the escaped sleep used to
        // hold the task's output pipe open, and the run with it, for all its 300 s.
        let ended = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if ended.elapsed() > Duration::from_secs(15) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("picoflow run still running 15 s after signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for(Duration::from_secs(5), "the escaped sleep to die", || {
            !alive(escaped)
        });
        if place == Where::TaskCgroups || plain.is_some() {
            assert_ran_in_its_cgroup(dir.path(), "cgroup.txt", place == Where::TaskCgroups);
        }
    }
}

/// The same escape, with `picoflow run` stopped by SIGTERM and SIGINT while the task runs.
#[test]
fn a_task_that_leaves_its_process_group_is_stopped_with_the_run() {
    if task_cgroups_expected("a_task_that_leaves_its_process_group_is_stopped_with_the_run") {
        stopped_with_the_run(Where::TaskCgroups);
    }
}

/// The same without a cgroup for PicoFlow.
#[test]
fn a_task_that_leaves_its_process_group_is_stopped_with_the_run_without_a_cgroup() {
    if under_emulation(
        "a_task_that_leaves_its_process_group_is_stopped_with_the_run_without_a_cgroup",
    ) {
        return;
    }
    stopped_with_the_run(Where::NoCgroup);
}

/// The systemd unit's setting: `User=` with `Delegate=yes` hands the service's cgroup to the
/// service's user, and PicoFlow, not root, runs each task in a cgroup of its own below it.
#[test]
fn a_service_user_given_its_cgroup_runs_each_task_in_a_cgroup_of_its_own() {
    let test = "a_service_user_given_its_cgroup_runs_each_task_in_a_cgroup_of_its_own";
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: it hands a cgroup to a user it creates, which needs root");
        return;
    }
    let Some(cg) = PlainCgroup::create() else {
        eprintln!("SKIPPED {test}: it needs a writable cgroup v2 to hand a part of to a user");
        return;
    };
    let user = ThrowawayUser::create("svc");
    // What systemd does for `Delegate=yes` with `User=`.
    for f in [
        "",
        "/cgroup.procs",
        "/cgroup.threads",
        "/cgroup.subtree_control",
    ] {
        std::os::unix::fs::chown(format!("{}{f}", cg.0), Some(user.uid), Some(user.gid)).unwrap();
    }
    let dir = TempDir::new("escape-user");
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let wf = escaping_task(&dir, "escape-user", Some(1));
    let mut cmd = picoflow(dir.path());
    {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(format!("{}/cgroup.procs", cg.0)).unwrap();
        let (uid, gid) = (user.uid, user.gid);
        // SAFETY: between fork and exec the hook makes system calls only, on memory prepared
        // before the fork. It joins the cgroup as root, then becomes the user.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = run(cmd.arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let escaped = read_pid(dir.path(), "escaped.pid");
    let _guard = KillOnDrop(vec![escaped]);
    wait_for(Duration::from_secs(5), "the escaped sleep to die", || {
        !alive(escaped)
    });
    assert_ran_in_its_cgroup(dir.path(), "cgroup.txt", true);
    use std::os::unix::fs::MetadataExt as _;
    let task_uid = std::fs::metadata(dir.path().join("cgroup.txt"))
        .unwrap()
        .uid();
    assert_eq!(
        task_uid, user.uid,
        "the task did not run as the service's user"
    );
    drop(cg);
    drop(user);
}

/// After a `kill -9` of `picoflow run`, a process its task started in another session with
/// an empty environment carries none of the marks the search for leftovers looks for; its
/// cgroup holds it, and the next run stops it.
#[test]
fn a_task_that_leaves_its_process_group_is_stopped_after_a_crash() {
    if !task_cgroups_expected("a_task_that_leaves_its_process_group_is_stopped_after_a_crash") {
        return;
    }
    let dir = TempDir::new("escape-crash");
    let wf = escaping_task(&dir, "escape-crash", None);
    let mut child = picoflow(dir.path())
        .arg("run")
        .arg(&wf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the escaped sleep", || {
        std::fs::read_to_string(dir.path().join("escaped.pid")).is_ok_and(|s| s.ends_with('\n'))
    });
    let escaped = read_pid(dir.path(), "escaped.pid");
    let _guard = KillOnDrop(vec![escaped]);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_ran_in_its_cgroup(dir.path(), "cgroup.txt", true);
    assert!(
        alive(escaped),
        "the kernel stopped the escaped sleep itself"
    );
    std::fs::write(dir.path().join("resumed"), "").unwrap();
    let out = run(picoflow(dir.path())
        .args(["--log-format", "pretty", "run", "--resume"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("left running"), "{}", stderr(&out));
    wait_for(Duration::from_secs(5), "the escaped sleep to die", || {
        !alive(escaped)
    });
}

/// A tmpfs of `size` mounted at `dir` (CI runs as root), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8) is needed for the full-disk tests");
        assert!(
            out.status.success(),
            "the full-disk tests need to mount a small tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Three tasks in a chain, each adding its name to `ledger`; the middle one prints 2 MB on
/// stdout and on stderr (of which the state keeps the last 64 KiB of each).
const FILL: &str = "name: fill
tasks:
  - name: a
    type: shell
    config:
      command: \"echo a >> ledger\"
  - name: b
    type: shell
    depends_on: [a]
    config:
      command: \"echo b >> ledger; head -c 2000000 /dev/zero | tr '\\\\0' x; head -c 2000000 /dev/zero | tr '\\\\0' y >&2\"
  - name: c
    type: shell
    depends_on: [b]
    config:
      command: \"echo c >> ledger\"
";

/// REL-003: the state file on a full disk. The run used to end with exit code 1, and
/// `history`/`status` then showed every task "not run" although their completions were
/// durable in the journal beside the state file.
#[test]
fn a_full_disk_is_a_state_store_error_and_nothing_completed_is_lost() {
    let dir = TempDir::new("full-disk");
    let disk = Tmpfs::mount(&dir.path().join("state"), "300k");
    let wf = dir.write("fill.yaml", FILL);
    let db = "state/pf.redb";
    let out = run(picoflow(dir.path())
        .args(["--db-path", db, "--log-format", "pretty", "run"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("pf.redb") && err.contains("No space left"),
        "{err}"
    );

    // Readers show what the journal holds.
    let out = run(picoflow(dir.path()).args(["--db-path", db, "status", "--format", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done: Vec<&str> = v[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "success")
        .map(|t| t["task_name"].as_str().unwrap())
        .collect();
    assert!(!done.is_empty(), "no completion shown: {v}");
    let out = run(picoflow(dir.path()).args(["--db-path", db, "history"]));
    assert!(common::stdout(&out).contains(&format!("{}/3", done.len())));

    // With room again, the execution finishes without running again what completed.
    disk.resize("64m");
    let out = run(picoflow(dir.path())
        .args(["--db-path", db, "run", "--resume"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    for task in ["a", "b", "c"] {
        assert_eq!(
            ledger.lines().filter(|l| *l == task).count(),
            1,
            "task {task} ran other than once: {ledger:?}"
        );
    }
    let out = run(picoflow(dir.path()).args(["--db-path", db, "history", "--format", "json"]));
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h[0]["status"], "success", "{h}");
    drop(disk);
}

/// A task log that cannot be written is reported on the task, never silently lost.
#[test]
fn a_task_log_on_a_full_disk_is_reported_on_the_task() {
    let dir = TempDir::new("full-logs");
    let _disk = Tmpfs::mount(&dir.path().join("logs"), "64k");
    let wf = dir.write(
        "w.yaml",
        "name: loud\ntasks:\n  - name: talk\n    type: shell\n    config:\n      command: \"seq 1 100000\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(picoflow(dir.path()).args(["status", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = v[0]["tasks"][0]["error_message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("talk.log") && message.contains("No space left"),
        "{v}"
    );
}

/// A small random generator for kill times; the seed is printed so a failure can be replayed
/// with `PICOFLOW_FAULT_SEED`.
struct Lcg(u64);

impl Lcg {
    fn new() -> Lcg {
        let seed = std::env::var("PICOFLOW_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("fault seed {seed} (PICOFLOW_FAULT_SEED={seed} replays it)");
        Lcg(seed)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// Pids of live processes whose environment names workflow `wf`.
fn processes_of(wf: &str) -> Vec<i32> {
    let needle = format!("PICOFLOW_WORKFLOW={wf}");
    live_pids_whose("environ", |env| {
        env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
    })
}

fn ledger(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ledger"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The latest execution's id and the names of its tasks that `status` shows as
/// successful; `status` must open the state file whatever the kill left.
fn succeeded(dir: &Path) -> (String, Vec<String>) {
    let out = run(picoflow(dir).args(["status", "--format", "json"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "state unreadable: {}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v[0]["execution"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let done = v[0]["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["status"] == "success")
                .map(|t| t["task_name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    (id, done)
}

/// What the kills of one test left.
#[derive(Default)]
struct Tally {
    /// After each kill: the ledger's length, the latest execution and its tasks shown as
    /// completed.
    seen: Vec<(usize, String, Vec<String>)>,
    /// Kills after which a task of the killed process still wrote to the ledger.
    late_writes: usize,
    /// Processes of the workflow alive 300 ms after a kill.
    survivors: usize,
}

impl Tally {
    /// Kills `child` with SIGKILL and records what it left.
    fn kill(&mut self, mut child: std::process::Child, dir: &Path, workflow: &str) {
        child.kill().unwrap();
        child.wait().unwrap();
        let at_kill = ledger(dir).len();
        std::thread::sleep(Duration::from_millis(300));
        if ledger(dir).len() != at_kill {
            self.late_writes += 1;
        }
        self.survivors += processes_of(workflow).len();
        let (id, done) = succeeded(dir);
        self.seen.push((ledger(dir).len(), id, done));
    }

    /// Whether the latest execution (of `tasks` tasks) completed some but not all of them:
    /// one to resume.
    fn unfinished(&self, tasks: usize) -> bool {
        self.seen
            .last()
            .is_some_and(|(_, _, done)| (1..tasks).contains(&done.len()))
    }
}

/// The fault suite's core (REL-001 … REL-003): `kill -9` of `picoflow run` and `run
/// --resume` at random moments, twenty times, over a chain of tasks that each append their
/// name to a ledger. Counts what must stay zero: unreadable state files, tasks shown as
/// completed that ran again, writes to the ledger by a killed run's task after the kill,
/// processes of a killed run still alive when the next run starts, and completions lost.
#[test]
fn random_kills_of_run_lose_nothing_run_nothing_twice_and_leave_nothing() {
    let dir = TempDir::new("fault-kills");
    let name = format!("kills{}", std::process::id());
    let mut text = format!("name: {name}\ntasks:\n");
    for i in 0..8 {
        text.push_str(&format!(
            "  - name: t{i}\n    type: shell\n    retry: 0\n{}    config:\n      command: \"sleep 0.0{}; echo t{i} >> ledger; sleep 0.02\"\n",
            if i > 0 { format!("    depends_on: [t{}]\n", i - 1) } else { String::new() },
            1 + i % 9
        ));
    }
    let wf = dir.write("chain.yaml", &text);
    let mut rng = Lcg::new();
    let mut tally = Tally::default();
    for _ in 0..20 {
        // Resume what is unfinished; a finished execution, or one that completed nothing,
        // gives way to a new one.
        let resume = tally.unfinished(8);
        let mut cmd = picoflow(dir.path());
        cmd.arg("run");
        if resume {
            cmd.arg("--resume");
        }
        let child = cmd
            .arg(&wf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(20, 400)));
        tally.kill(child, dir.path(), &name);
    }
    // Let the last execution finish.
    let resume = tally.unfinished(8);
    let mut cmd = picoflow(dir.path());
    cmd.arg("run");
    if resume {
        cmd.arg("--resume");
    }
    let out = run(cmd.arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = ledger(dir.path());
    // A task shown as completed never runs again in its execution: nothing in the ledger
    // after the snapshot, up to the last snapshot of the same execution (or the end).
    let mut reruns = Vec::new();
    let seen = &tally.seen;
    for (k, (len, id, done)) in seen.iter().enumerate() {
        let end = seen[k..]
            .iter()
            .take_while(|(_, other, _)| other == id)
            .last()
            .map(|(l, _, _)| *l)
            .filter(|_| seen[k..].iter().any(|(_, other, _)| other != id) || !resume)
            .unwrap_or(all.len());
        for t in done {
            if all[*len..end].iter().any(|l| l == t) {
                reruns.push(format!("{t} after snapshot {k}"));
            }
        }
    }
    assert_eq!(
        tally.late_writes, 0,
        "a killed run's task wrote after the kill"
    );
    assert_eq!(
        tally.survivors, 0,
        "processes of killed runs were still alive"
    );
    assert!(
        reruns.is_empty(),
        "completed tasks ran again: {reruns:?}\n{all:?}"
    );
    assert_eq!(
        succeeded(dir.path()).1.len(),
        8,
        "the last execution did not complete"
    );
}

/// The same for the daemon: `kill -9` at random moments, eight times, while it fires a
/// chain every second; each restart resumes what the kill interrupted. Each task appends its
/// execution id and name to the ledger, so a task shown as completed that ran again in its
/// execution is seen whichever execution came after.
#[test]
fn random_kills_of_the_daemon_lose_nothing_run_nothing_twice_and_leave_nothing() {
    let dir = TempDir::new("fault-daemon");
    let name = format!("dkills{}", std::process::id());
    let mut text = format!("name: {name}\nschedule: \"* * * * * *\"\ntasks:\n");
    for i in 0..4 {
        text.push_str(&format!(
            "  - name: t{i}\n    type: shell\n    retry: 0\n{}    config:\n      command: \"sleep 0.0{}; echo $PICOFLOW_EXECUTION_ID t{i} >> ledger; sleep 0.05\"\n",
            if i > 0 { format!("    depends_on: [t{}]\n", i - 1) } else { String::new() },
            3 + i
        ));
    }
    dir.write("d.yaml", &text);
    let mut rng = Lcg::new();
    let mut tally = Tally::default();
    let start = |log: &str| {
        picoflow(dir.path())
            .args(["--log-format", "pretty", "daemon", "start", "d.yaml"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    for round in 0..8 {
        let daemon = start(&format!("daemon-{round}.log"));
        std::thread::sleep(Duration::from_millis(rng.range(300, 2500)));
        tally.kill(daemon, dir.path(), &name);
    }
    // A last daemon resumes what the last kill interrupted and stops cleanly.
    let mut daemon = start("daemon-last.log");
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(
        status.code().is_some(),
        "the daemon died of a signal: {status:?}"
    );

    let all = ledger(dir.path());
    let mut reruns = Vec::new();
    for (k, (len, id, done)) in tally.seen.iter().enumerate() {
        for t in done {
            let line = format!("{id} {t}");
            if all[*len..].contains(&line) {
                reruns.push(format!("{line} after snapshot {k}"));
            }
        }
    }
    assert_eq!(
        tally.late_writes, 0,
        "a killed daemon's task wrote after the kill"
    );
    assert_eq!(
        tally.survivors, 0,
        "processes of killed daemons were still alive"
    );
    assert!(reruns.is_empty(), "completed tasks ran again: {reruns:?}");
    // Every execution the daemons started is accounted for: none is left running.
    let out = run(picoflow(dir.path()).args(["history", "--format", "json", "--limit", "1000"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let execs = h.as_array().unwrap();
    assert!(!execs.is_empty());
    assert!(
        execs.iter().all(|e| e["status"] != "running"),
        "an execution is still shown running: {h}"
    );
    // SIGTERM lets the running execution finish.
    assert_eq!(execs[0]["status"], "success", "{}", execs[0]);
}
