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

use std::os::fd::{AsRawFd, OwnedFd};

use crate::executor::Registry;
use crate::proc::{
    owner_alive, read_proc, real_uid, EXECUTION_VAR, OWNER_VAR, TASK_VAR, WORKFLOW_VAR,
};
use std::time::{Duration, Instant};

/// Time a leftover process has to exit after SIGTERM before it gets SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

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

/// Waits until every process has exited or `grace` has passed; returns those still running.
/// It looks every few milliseconds, on timers: the caller's thread (the daemon's scheduler)
/// goes on meanwhile.
async fn wait_exit(mut procs: Vec<Leftover>, grace: Duration) -> Vec<Leftover> {
    let deadline = Instant::now() + grace;
    loop {
        let mut fds: Vec<libc::pollfd> = procs
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for its length; no wait (timeout 0).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if r < 0 {
            return procs;
        }
        // A pidfd turns readable when its process exits.
        let mut i = 0;
        procs.retain(|_| {
            let exited = fds[i].revents != 0;
            i += 1;
            !exited
        });
        if procs.is_empty() || Instant::now() >= deadline {
            return procs;
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

/// Stops the processes of `workflow` whose PicoFlow owner has died: SIGTERM, then SIGKILL
/// after `grace`; then asks every executor of `registry` to remove what else its tasks left
/// ([`crate::Executor::remove_leftovers`]: the docker executor's containers). Logs each one;
/// returns how many there were. Waits on timers, never blocking the caller's thread.
pub(crate) async fn stop_leftovers(workflow: &str, grace: Duration, registry: &Registry) -> usize {
    let (found, cgroups) = find_leftovers(workflow);
    let count = found.len();
    stop(workflow, found, grace).await;
    for dir in &cgroups {
        crate::executor::cgroup::remove(dir, Duration::from_secs(1)).await;
    }
    let mut count = count;
    for kind in registry.kinds() {
        if let Some(executor) = registry.get(&kind) {
            count += executor.remove_leftovers(workflow).await;
        }
    }
    count
}

/// The processes of `workflow` whose owner has died, held by pidfds, and the task cgroups
/// of dead owners of that workflow.
fn find_leftovers(workflow: &str) -> (Vec<Leftover>, Vec<std::path::PathBuf>) {
    let me = std::process::id();
    let dir = std::fs::read_dir("/proc");
    let mut found = Vec::new();
    let Ok(dir) = dir else {
        return (found, Vec::new());
    };
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
    (found, cgroups)
}

/// SIGTERM to each, SIGKILL to those still there after `grace`.
async fn stop(workflow: &str, found: Vec<Leftover>, grace: Duration) {
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
    let stubborn = wait_exit(found, grace).await;
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
    wait_exit(stubborn, Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::owner;
    use std::process::Command;

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
        // An executor's own leftovers (a container) are its part: it is asked for them.
        struct Leaves;
        impl crate::Executor for Leaves {
            fn execute<'a>(
                &'a self,
                _: crate::TaskContext<'a>,
            ) -> crate::BoxFuture<'a, crate::TaskOutput> {
                Box::pin(async { crate::TaskOutput::failed("unused", false) })
            }
            fn remove_leftovers<'a>(&'a self, workflow: &'a str) -> crate::BoxFuture<'a, usize> {
                Box::pin(async move { usize::from(workflow.starts_with("orphans-test-")) * 2 })
            }
        }
        let mut registry = Registry::empty();
        registry.register("leaves", Leaves);
        let stopped = smol::block_on(stop_leftovers(&wf, Duration::from_secs(2), &registry));
        assert_eq!(stopped, 1 + 2);
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
