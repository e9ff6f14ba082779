//! Process file descriptors (Linux 5.3+): a pidfd names one process for good, so a signal sent
//! through it never reaches a process that later got the same pid.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// A pidfd of `pid`, or `None` when it has gone (or the kernel has no pidfds).
pub(crate) fn open(pid: u32) -> Option<OwnedFd> {
    try_open(pid as libc::pid_t).ok().flatten()
}

/// A pidfd of `pid` (close-on-exec); `None` when the kernel has no pidfds (before Linux 5.3),
/// an error when the process has gone or cannot be named.
pub(crate) fn try_open(pid: libc::pid_t) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a non-negative return is a descriptor owned by nothing else.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
        e => Err(e),
    }
}

/// Sends `sig` to the process of `fd`; false when it has already exited.
pub(crate) fn signal(fd: &OwnedFd, sig: i32) -> bool {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reaches_its_process_and_not_a_gone_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = open(child.id()).unwrap();
        assert!(signal(&fd, libc::SIGKILL));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(!signal(&fd, libc::SIGKILL), "the process has gone");
    }
}
