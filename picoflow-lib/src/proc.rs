//! What PicoFlow reads about processes from `/proc`, and the marks it gives its tasks.
//!
//! Every task process, and everything it starts, carries its identity in the environment
//! ([`WORKFLOW_VAR`], [`EXECUTION_VAR`], [`TASK_VAR`], [`ATTEMPT_VAR`] and [`OWNER_VAR`], the
//! `<pid>.<start time>` of the PicoFlow process running it); the search for leftovers
//! (`orphans`) and the executors share these names. A process is named by its pid and its
//! start time, so a recycled pid is never taken for the process that had it before.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::sync::OnceLock;

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
pub(crate) fn read_proc(pid: u32, file: &str) -> Option<Vec<u8>> {
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

/// The real uid of a process: the first field of the `Uid:` line of its status.
pub(crate) fn real_uid(pid: u32) -> Option<u32> {
    let status = read_proc(pid, "status")?;
    let status = String::from_utf8_lossy(&status);
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
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
}
