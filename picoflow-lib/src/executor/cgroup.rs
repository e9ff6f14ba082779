//! A cgroup per attempt of a local task, where PicoFlow has a cgroup v2 subtree of its own.
//!
//! A task's process group holds what the task starts until something leaves it: `setsid`,
//! a daemon that double-forks, `env -i` on top of it to shed the variables the search for
//! leftovers looks for. A cgroup cannot be left by an unprivileged process, so where one is
//! available every attempt of a shell task runs in a cgroup of its own, and stopping the
//! attempt (timeout, cancellation, its end) stops everything in that cgroup too.
//!
//! PicoFlow uses a cgroup only where it has been given one: the cgroup v2 it runs in (the
//! `0::` line of `/proc/self/cgroup`, under the `cgroup2` mount of `/proc/self/mountinfo`) is
//! writable by it, and it was given that cgroup: PicoFlow runs as a user other than root (no
//! one else makes a cgroup writable for it; systemd's `Delegate=yes` with `User=` does), or
//! the cgroup is marked delegated (the `trusted.delegate` or `user.delegate` attribute that
//! systemd sets), or it is the root of its cgroup namespace (a container's own). Root in a
//! login session's cgroup, which is not its to divide, does not use it. Elsewhere the tasks
//! are followed by parentage (see `subreaper`).
//!
//! The attempt's cgroup is `picoflow-<owner>-<workflow hash>-<n>` beside PicoFlow itself; the
//! child process moves itself into it (a write of `0` to its `cgroup.procs`) before it
//! executes the task's program, so nothing the task runs starts outside it. A cgroup whose
//! owner has died is found by the name when the workflow runs next (see `orphans`).
//!
//! A task's memory limit becomes the attempt cgroup's `memory.max` where the memory
//! controller reaches it: listed in the `cgroup.subtree_control` of the cgroup above, which
//! PicoFlow enables when it can. cgroup v2 refuses that (EBUSY) while that cgroup holds a
//! process itself — PicoFlow's, since the attempt cgroups are made in its own — unless it is
//! the root; then the limit is `RLIMIT_AS` instead (see `limits`).

use std::ffi::CString;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Prefix of every task cgroup's name.
const PREFIX: &str = "picoflow-";

/// Cleared when a child could not join its cgroup: tasks then run without one.
static USABLE: AtomicBool = AtomicBool::new(true);

/// The cgroup directory PicoFlow runs in, if it may create task cgroups under it.
fn base() -> Option<&'static Path> {
    static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
    if !USABLE.load(Ordering::Relaxed) {
        return None;
    }
    BASE.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let dir = own_cgroup_dir(&own, &mountinfo)?;
        let is_root = own.lines().any(|l| l == "0::/");
        // SAFETY: geteuid(2) cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        let given = is_root || !privileged || delegated(&dir);
        (writable(&dir.join("cgroup.procs")) && given).then_some(dir)
    })
    .as_deref()
}

/// The directory of this process's cgroup v2, from `/proc/self/cgroup` and the mount table.
fn own_cgroup_dir(cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = mountinfo.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = fields.split_whitespace().collect();
        // Fields 4 and 5: the mount's root within the hierarchy and where it is mounted.
        Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
    })?;
    let (root, point) = mount;
    let rel = rel.strip_prefix(root.trim_end_matches('/'))?;
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(Path::new(&point).join(rel))
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether systemd delegated the cgroup (`Delegate=yes`) to the service.
fn delegated(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut v = [0u8; 8];
        // SAFETY: getxattr(2) writes at most `v.len()` bytes into `v`.
        let n =
            unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        n > 0 && v[0] == b'1'
    })
}

/// FNV-1a of the workflow's name: a short, safe part of a cgroup's name.
fn workflow_hash(workflow: &str) -> String {
    let h = workflow.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The cgroup of one attempt; dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
    procs: OwnedFd,
}

impl Cgroup {
    /// A new, empty cgroup for an attempt of a task of `workflow`, or `None` where PicoFlow
    /// has no cgroup to create it in.
    pub(crate) fn create(workflow: &str) -> Option<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = base()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let owner = crate::proc::owner();
        let dir = base.join(format!("{PREFIX}{owner}-{}-{n}", workflow_hash(workflow)));
        if let Err(e) = std::fs::create_dir(&dir) {
            tracing::warn!(cgroup = %dir.display(), "cannot create the task's cgroup: {e}");
            return None;
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(f) => Some(Cgroup {
                dir,
                procs: f.into(),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                tracing::warn!(cgroup = %dir.display(), "cannot open the task's cgroup: {e}");
                None
            }
        }
    }

    /// The open `cgroup.procs`, for the child to move itself in with.
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Sets `memory.max` to `bytes`, enabling the memory controller for the cgroup first if
    /// it lacks it; the reason in words when neither works.
    pub(crate) fn set_memory_max(&self, bytes: u64) -> Result<(), String> {
        let file = self.dir.join("memory.max");
        // Without O_CREAT: a cgroup without the controller has no such file, which an open
        // that may create reports as EACCES (the cgroup directory takes no new files).
        let write = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|mut f| f.write_all(bytes.to_string().as_bytes()))
        };
        match write() {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", file.display()))
            }
            Err(_) => {}
        }
        let parent = self.dir.parent().unwrap_or(&self.dir);
        enable_memory(parent)?;
        write().map_err(|e| format!("{}: {e}", file.display()))
    }

    /// How many times the kernel killed a process of the cgroup at its `memory.max`
    /// (`oom_kill` of `memory.events`); 0 when unknown.
    pub(crate) fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .map_or(0, |text| oom_kills_in(&text))
    }

    /// Sends `sig` to every process in the cgroup.
    pub(crate) fn signal(&self, sig: i32) {
        signal_dir(&self.dir, sig);
    }

    /// Kills everything in the cgroup and waits (up to `limit`) until it is empty.
    pub(crate) async fn kill(&self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            kill_dir(&self.dir);
            if !populated(&self.dir) || Instant::now() >= end {
                return;
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        kill_dir(&self.dir);
        // An empty cgroup goes at once; one whose processes still exit stays for the next
        // run's search for leftovers, which removes it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The leaf cgroup PicoFlow moves itself into, beside its tasks' cgroups, so that its own
/// cgroup holds no process and may pass the memory controller on. Its name does not start with
/// [`PREFIX`]: the search for leftovers never takes it for a task's.
const SELF_LEAF: &str = "picoflow.self";

/// Enables the memory controller for the cgroups under `base` (PicoFlow's own). cgroup v2
/// refuses that (EBUSY) while `base` itself holds a process, as a service's cgroup holds its
/// main process under systemd's `Delegate=yes`: PicoFlow then moves itself into the leaf
/// [`SELF_LEAF`] under `base` and asks again. The reason in words when it cannot.
fn enable_memory(base: &Path) -> Result<(), String> {
    let control = base.join("cgroup.subtree_control");
    let enable = || std::fs::write(&control, "+memory");
    let e = match enable() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let no = |e: &io::Error, why: &str| {
        format!(
            "no memory controller: cannot enable it in {}: {e}{why}",
            control.display()
        )
    };
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(no(&e, ""));
    }
    static MOVED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut moved = MOVED.lock().unwrap_or_else(|p| p.into_inner());
    if !*moved {
        let leaf = base.join(SELF_LEAF);
        let joined = match std::fs::create_dir(&leaf) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            // "0" moves the writing process, every thread of it.
            _ => std::fs::write(leaf.join("cgroup.procs"), "0"),
        };
        if let Err(m) = joined {
            return Err(no(
                &e,
                &format!(
                    " (it holds PicoFlow, which cannot move into {}: {m})",
                    leaf.display()
                ),
            ));
        }
        *moved = true;
        tracing::info!(cgroup = %leaf.display(), "moved into a leaf cgroup so that tasks can have memory.max");
    }
    enable().map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => " (another process holds that cgroup itself)",
            _ => "",
        };
        no(&e, why)
    })
}

/// The `oom_kill` count of a `memory.events` file's text.
fn oom_kills_in(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Called when a child could not move itself into its cgroup: the cgroup tree is not usable
/// after all (a controller's rules, another manager), so later tasks run without one.
pub(crate) fn unusable(e: &io::Error) {
    if USABLE.swap(false, Ordering::Relaxed) {
        tracing::warn!(
            "tasks run without a cgroup of their own: cannot move a process into one: {e}"
        );
    }
}

/// The pids in the cgroup at `dir`.
pub(crate) fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a process still runs in the cgroup (`populated` of `cgroup.events`).
fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        Err(_) => !pids(dir).is_empty(),
    }
}

/// Sends `sig` to each process of the cgroup, through a pidfd opened while it is a member,
/// so that a pid recycled after it was listed is never signalled.
fn signal_dir(dir: &Path, sig: i32) {
    for pid in pids(dir) {
        let Some(fd) = super::pidfd::open(pid) else {
            continue;
        };
        if is_member(pid, dir) {
            super::pidfd::signal(&fd, sig);
        }
    }
}

/// Whether process `pid` is in the cgroup at `dir` (whose name is unique in the tree).
pub(crate) fn is_member(pid: u32, dir: &Path) -> bool {
    let mut rel = b"/".to_vec();
    rel.extend_from_slice(dir.file_name().map_or(&b""[..], |n| n.as_bytes()));
    std::fs::read(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
        c.split(|b| *b == b'\n')
            .any(|l| l.starts_with(b"0::") && l.ends_with(&rel))
    })
}

/// SIGKILL to the whole cgroup: `cgroup.kill` (Linux 5.14), else each process in turn.
fn kill_dir(dir: &Path) {
    let killed = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if killed.is_err() {
        signal_dir(dir, libc::SIGKILL);
    }
}

/// The task cgroups of `workflow` whose PicoFlow process has died.
pub(crate) fn leftovers(workflow: &str) -> Vec<PathBuf> {
    let Some(base) = base() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let hash = workflow_hash(workflow);
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                return false;
            };
            let mut parts = rest.split('-');
            match (parts.next(), parts.next()) {
                (Some(owner), Some(h)) => h == hash && !crate::proc::owner_alive(owner),
                _ => false,
            }
        })
        .map(|e| e.path())
        .collect()
}

/// Kills what is left in a leftover cgroup and removes it (within `limit`).
pub(crate) async fn remove(dir: &Path, limit: Duration) {
    let end = Instant::now() + limit;
    while populated(dir) && Instant::now() < end {
        kill_dir(dir);
        smol::Timer::after(Duration::from_millis(5)).await;
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(cgroup = %dir.display(), "cannot remove a task's cgroup: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_found_under_the_cgroup2_mount() {
        let info = "24 1 0:21 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir("0::/system.slice/picoflow.service\n", info),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/picoflow.service"
            ))
        );
        // A hybrid layout: cgroup v1 controllers beside a v2 tree at `unified`.
        let hybrid = "30 1 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir("4:memory:/x\n0::/\n", hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(own_cgroup_dir("4:memory:/x\n", hybrid), None, "v1 only");
        assert_eq!(own_cgroup_dir("0::/a/../b\n", info), None);
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(events), 1);
        assert_eq!(oom_kills_in("low 0\n"), 0);
        assert_eq!(oom_kills_in(""), 0);
    }

    #[test]
    fn names_are_safe_for_any_workflow() {
        let h = workflow_hash("a/../b c");
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, workflow_hash("backup"));
    }
}
