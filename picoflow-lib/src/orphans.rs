//! Processes a dead orchestrator left behind (REL-001, REL-002).
//!
//! A task's process gets `PR_SET_PDEATHSIG` (see the shell executor), so it is killed the
//! moment the PicoFlow process that started it dies, `kill -9` and the OOM killer included.
//! What that task started in turn (the `sleep` of `sh -c "sleep 60; rsync …"`, a pipeline's
//! other commands) does not get the signal and lives on. Every task process, and everything it
//! starts, carries its identity in the environment:
//!
//! | variable | value |
//! | --- | --- |
//! | `PICOFLOW_WORKFLOW` | the workflow's name |
//! | `PICOFLOW_EXECUTION_ID` | the execution |
//! | `PICOFLOW_TASK` | the task's name |
//! | `PICOFLOW_ATTEMPT` | the attempt, from 1 |
//! | `PICOFLOW_OWNER` | `<pid>.<start time>` of the PicoFlow process running it |
//!
//! Before a run of a workflow starts (a new execution or `run --resume`, from the CLI or the
//! daemon), [`stop_leftovers`] looks for processes of that workflow whose owner no longer
//! exists — the pid is gone, or belongs to a process with another start time — and stops them:
//! SIGTERM, then SIGKILL after the grace period. So a resumed task never runs beside its own
//! survivor. Each process is signalled through a pidfd opened before its environment is read
//! a second time, so a recycled pid is never signalled. Where tasks run in cgroups of their own
//! (see `executor::cgroup`), everything in the cgroups of a dead owner's tasks of that workflow
//! is stopped as well, marked or not, and the cgroups are removed.
//!
//! The variables prove nothing: any user can start a process that carries them. Only
//! processes whose real uid is PicoFlow's own are stopped. The real uid (the first field of
//! the `Uid:` line of `/proc/<pid>/status`) is the user who started the process and is
//! inherited by everything a task starts; the effective uid is not, as a set-user-ID program
//! another user runs (`passwd`, `sudo`) has root's, which a PicoFlow running as root would
//! take for its own. A task that switches to another user (`su`, `runuser`) is out of the
//! sweep's reach; its task's cgroup (see `executor::cgroup`) still holds it.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time a leftover process has to exit after SIGTERM before it gets SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// The environment variables every task process gets.
pub(crate) const WORKFLOW_VAR: &str = "PICOFLOW_WORKFLOW";
pub(crate) const EXECUTION_VAR: &str = "PICOFLOW_EXECUTION_ID";
pub(crate) const TASK_VAR: &str = "PICOFLOW_TASK";
pub(crate) const ATTEMPT_VAR: &str = "PICOFLOW_ATTEMPT";
pub(crate) const OWNER_VAR: &str = "PICOFLOW_OWNER";

/// `<pid>.<start time>` of this process: the value of [`OWNER_VAR`] for its tasks.
pub(crate) fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}.{}", process_start_time(pid).unwrap_or(0))
    })
}

/// Whether the process named by an [`OWNER_VAR`] value still runs.
pub(crate) fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('.') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => process_start_time(pid) == Some(start),
        _ => false,
    }
}

/// Start time of a process in clock ticks since boot, or `None` if it does not exist.
///
/// The file is opened relative to `/proc` rather than by its absolute path: qemu-user answers
/// a process's own `/proc/<pid>/stat` with a start time of its own reckoning, a tick or more
/// away from the one every other process reads, and a reader would then take a live run for
/// a dead one. The relative path reaches the kernel's file in every case.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    // Field 3 is the first of `stat_fields`; the start time is field 22.
    stat_fields(pid)?.split_whitespace().nth(19)?.parse().ok()
}

/// The fields of a process's `stat` from field 3 (its state) on, read as
/// [`process_start_time`] reads them; `None` if the process does not exist.
pub(crate) fn stat_fields(pid: u32) -> Option<String> {
    let stat = read_proc(pid, "stat")?;
    let stat = String::from_utf8_lossy(&stat);
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    Some(stat.get(stat.rfind(')')? + 2..)?.to_string())
}

/// `/proc/<pid>/<file>`, opened relative to `/proc` (see [`process_start_time`]).
fn read_proc(pid: u32, file: &str) -> Option<Vec<u8>> {
    let proc_dir = std::fs::File::open("/proc").ok()?;
    let name = std::ffi::CString::new(format!("{pid}/{file}")).ok()?;
    // SAFETY: `name` is a NUL-terminated path and `proc_dir` an open directory.
    let fd = unsafe {
        libc::openat(
            proc_dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The PicoFlow variables of a process's environment, if it has [`OWNER_VAR`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Marks {
    workflow: String,
    execution: String,
    task: String,
    owner: String,
}

fn marks(pid: u32) -> Option<Marks> {
    let env = read_proc(pid, "environ")?;
    let mut m = Marks::default();
    for entry in env.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let value = String::from_utf8_lossy(&entry[eq + 1..]).into_owned();
        match &entry[..eq] {
            k if k == WORKFLOW_VAR.as_bytes() => m.workflow = value,
            k if k == EXECUTION_VAR.as_bytes() => m.execution = value,
            k if k == TASK_VAR.as_bytes() => m.task = value,
            k if k == OWNER_VAR.as_bytes() => m.owner = value,
            _ => {}
        }
    }
    (!m.owner.is_empty()).then_some(m)
}

/// The real uid of a process: the first field of the `Uid:` line of its status.
fn real_uid(pid: u32) -> Option<u32> {
    let status = read_proc(pid, "status")?;
    let status = String::from_utf8_lossy(&status);
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Whether a process was started by PicoFlow's own user (see the module's docs).
fn same_user(pid: u32) -> bool {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    real_uid(pid) == Some(unsafe { libc::getuid() })
}

/// A process left behind by a dead orchestrator, held by a pidfd.
#[derive(Debug)]
struct Leftover {
    pid: u32,
    fd: OwnedFd,
    marks: Marks,
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    crate::executor::pidfd::open(pid)
}

/// Sends `sig`; false when the process has already gone.
fn signal(p: &Leftover, sig: i32) -> bool {
    crate::executor::pidfd::signal(&p.fd, sig)
}

/// Waits until every process has exited or `deadline` passes; returns those still running.
fn wait_exit(mut procs: Vec<Leftover>, deadline: Instant) -> Vec<Leftover> {
    while !procs.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = procs
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            break;
        }
        // A pidfd turns readable when its process exits.
        let mut i = 0;
        procs.retain(|_| {
            let exited = fds[i].revents != 0;
            i += 1;
            !exited
        });
    }
    procs
}

/// Stops the processes of `workflow` whose PicoFlow owner has died: SIGTERM, then SIGKILL
/// after `grace`; with the `docker` feature, removes its containers whose owner has died too.
/// Logs each one; returns how many there were.
pub(crate) fn stop_leftovers(workflow: &str, grace: Duration) -> usize {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(m) = marks(pid) else { continue };
        if m.workflow != workflow || owner_alive(&m.owner) {
            continue;
        }
        if !same_user(pid) {
            tracing::warn!(
                workflow,
                pid,
                uid = real_uid(pid),
                "left alone: a process of another user carries the marks of an interrupted execution"
            );
            continue;
        }
        // Hold the process, then make sure it is still the one that was read: a pid recycled
        // in between belongs to a process without these marks.
        let Some(fd) = pidfd_open(pid) else { continue };
        if marks(pid).as_ref() != Some(&m) || !same_user(pid) {
            continue;
        }
        found.push(Leftover { pid, fd, marks: m });
    }
    // What ran in the task cgroups of a dead owner, marked or not (`env -i`): only PicoFlow's
    // user can have put it there.
    let cgroups = crate::executor::cgroup::leftovers(workflow);
    for dir in &cgroups {
        for pid in crate::executor::cgroup::pids(dir) {
            if found.iter().any(|p| p.pid == pid) {
                continue;
            }
            let Some(fd) = pidfd_open(pid) else { continue };
            if crate::executor::cgroup::is_member(pid, dir) {
                let marks = marks(pid).unwrap_or_default();
                found.push(Leftover { pid, fd, marks });
            }
        }
    }
    let count = found.len();
    for p in &found {
        let command = read_proc(p.pid, "comm")
            .map(|c| String::from_utf8_lossy(&c).trim().to_string())
            .unwrap_or_default();
        tracing::warn!(
            workflow,
            execution = %p.marks.execution,
            task = %p.marks.task,
            pid = p.pid,
            command = %command,
            "stopping a process left running by an interrupted execution"
        );
        signal(p, libc::SIGTERM);
    }
    let stubborn = wait_exit(found, Instant::now() + grace);
    for p in &stubborn {
        tracing::warn!(
            workflow,
            task = %p.marks.task,
            pid = p.pid,
            "the process ignored SIGTERM for {}s; killing it",
            grace.as_secs()
        );
        signal(p, libc::SIGKILL);
    }
    wait_exit(stubborn, Instant::now() + Duration::from_secs(1));
    for dir in &cgroups {
        crate::executor::cgroup::remove(dir, Duration::from_secs(1));
    }
    #[cfg(feature = "docker")]
    let count = count + crate::executor::docker::remove_orphans(workflow);
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn process_start_time_is_field_22_of_the_kernels_stat() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let expected: u64 = stat
            .rsplit(") ")
            .next()
            .unwrap()
            .split(' ')
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        let got = process_start_time(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, Some(expected));
        assert!(process_start_time(u32::MAX - 1).is_none());
    }

    #[test]
    fn the_owner_is_this_process_and_alive() {
        assert!(owner().starts_with(&format!("{}.", std::process::id())));
        assert!(owner_alive(owner()));
        assert!(!owner_alive("1.1"), "pid 1 did not start at tick 1");
        assert!(!owner_alive("garbage"));
    }

    #[test]
    fn leftovers_of_a_dead_owner_are_stopped_and_others_are_not() {
        let spawn = |owner: &str, workflow: &str| {
            Command::new("sleep")
                .arg("30")
                .env(WORKFLOW_VAR, workflow)
                .env(EXECUTION_VAR, "e1")
                .env(TASK_VAR, "t")
                .env(OWNER_VAR, owner)
                .spawn()
                .unwrap()
        };
        let wf = format!("orphans-test-{}", std::process::id());
        // Owned by a pid that cannot exist, by this live process, and of another workflow.
        let mut dead = spawn("4194305.1", &wf);
        let mut live = spawn(owner(), &wf);
        let mut other = spawn("4194305.1", &format!("{wf}-other"));
        // The child has exec'd once its environment shows the marks.
        let t = Instant::now();
        while marks(dead.id()).is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stop_leftovers(&wf, Duration::from_secs(2)), 1);
        let status = dead.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert!(
            live.try_wait().unwrap().is_none(),
            "a live owner's task was stopped"
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "another workflow was touched"
        );
        for c in [&mut live, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
