//! Where a task has no cgroup: what leaves its process group is still found, by parentage.
//!
//! PicoFlow becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`) and so does the first
//! process of every task. A process whose parent dies is handed to the nearest subreaper
//! among its ancestors instead of to init, so:
//!
//! * while a task's first process runs, everything the task started is among its
//!   descendants, whatever session or group it moved to: on timeout or cancellation these get
//!   SIGTERM with the group;
//! * a process handed to PicoFlow itself (a *stray*) comes from a task whose first process
//!   has ended: it is killed and collected when a task ends. Strays are told apart from the
//!   first processes of running tasks, which PicoFlow started itself, by the registry of
//!   those (`spawn::LEADERS`), and from children an embedding program started by their
//!   process group, which is PicoFlow's own.
//!
//! A crash leaves such processes to init, without the marks if they cleared their
//! environment; only a cgroup (see `cgroup`) or the service manager stops those.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::spawn::LEADERS;

/// Makes this process a child subreaper, once; whether it is one.
pub(crate) fn enable() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        // SAFETY: prctl with an integer option; no memory is involved.
        let ok = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
        if !ok {
            tracing::warn!(
                "cannot become a child subreaper: {}",
                std::io::Error::last_os_error()
            );
        }
        ok
    })
}

/// The children of process `pid`: from `/proc/<pid>/task/<tid>/children` where the kernel
/// has them (`CONFIG_PROC_CHILDREN`), else from the parent field of every process's `stat`.
fn children(pid: u32) -> Vec<u32> {
    static LISTED: OnceLock<bool> = OnceLock::new();
    if !*LISTED.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists()) {
        return std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| parent_and_group(p).is_some_and(|(parent, _)| parent == pid))
            .collect();
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    kids
}

/// Parent and process group of `pid`, from its `stat`.
fn parent_and_group(pid: u32) -> Option<(u32, u32)> {
    let stat = crate::proc::stat_fields(pid)?;
    let mut rest = stat.split_whitespace();
    // Fields 3, 4 and 5: state, parent, process group.
    let _state = rest.next()?;
    Some((rest.next()?.parse().ok()?, rest.next()?.parse().ok()?))
}

/// Sends `sig` to every descendant of `leader` (not `leader` itself), each through a pidfd
/// opened while its parent is still the one it was found under, so a recycled pid is never
/// signalled.
pub(crate) fn signal_descendants(leader: u32, sig: i32) {
    let mut queue = vec![leader];
    while let Some(parent) = queue.pop() {
        for pid in children(parent) {
            let Some(fd) = super::pidfd::open(pid) else {
                continue;
            };
            if parent_and_group(pid).map(|(p, _)| p) != Some(parent) {
                continue;
            }
            super::pidfd::signal(&fd, sig);
            queue.push(pid);
        }
    }
}

/// Kills and collects the strays (see the module's docs), until there are none or `limit`
/// has passed; a stray's own children become strays when it dies and go the same way.
pub(crate) async fn stop_strays(limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        if kill_strays() == 0 || Instant::now() >= end {
            return;
        }
        smol::Timer::after(Duration::from_millis(5)).await;
    }
}

/// One round: SIGKILL to each stray, collecting those that have ended; how many there were.
fn kill_strays() -> usize {
    let me = std::process::id();
    // SAFETY: getpgrp(2) cannot fail.
    let own_group = unsafe { libc::getpgrp() } as u32;
    // Held while looking, so that a task's process being started now (visible as a child
    // before it is registered) is never taken for a stray.
    let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    for pid in children(me) {
        if leaders.contains(&(pid as libc::pid_t)) {
            continue;
        }
        match parent_and_group(pid) {
            Some((parent, group)) if parent == me && group != own_group => {}
            _ => continue,
        }
        n += 1;
        // SAFETY: kill(2) and waitpid(2) on a child of ours, which no one else collects: its
        // pid cannot be reused before we collect it.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_children_of_a_process_are_listed() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let kids = children(std::process::id());
        let (parent, _) = parent_and_group(c.id()).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(kids.contains(&c.id()), "{kids:?}");
        assert_eq!(parent, std::process::id());
    }
}
