//! The files that tell a daemon's state to other processes (REL-005): the PID file, locked
//! with `flock` for the daemon's whole life so that it is the only one on its state file, and
//! the status file beside it (its start time and loaded workflows); [`daemon_status`] and
//! [`stop_daemon`] read them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::load::Loaded;
use super::offload::offload;
use super::{ClockStatus, DaemonStatus, ScheduledWorkflow};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::schedule::Schedule;

/// The lock that makes a daemon the only one on its state file (REL-005).
#[derive(Debug)]
pub(super) struct PidLock {
    file: File,
    path: PathBuf,
}

impl PidLock {
    /// Takes the lock of `path` and writes this process's pid and start time into it.
    pub(super) fn acquire(path: &Path) -> Result<PidLock> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dirs_for(dir, "the PID file").map_err(|e| Error::io(dir, e))?;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        crate::private::trusted_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut file = crate::private::open_rw(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::Other(format!(
                "another daemon is already running on this state file (pid {}, PID file {})",
                text.lines().next().unwrap_or("").trim(),
                path.display()
            )));
        }
        file.set_len(0).map_err(|e| Error::io(path, e))?;
        file.rewind().map_err(|e| Error::io(path, e))?;
        // The pid, then its start time: `daemon stop` signals the pid only while that
        // process is the one that wrote the file (a pid is reused once its process ends).
        let pid = std::process::id();
        let start = crate::proc::process_start_time(pid).unwrap_or(0);
        writeln!(file, "{pid}\n{start}").map_err(|e| Error::io(path, e))?;
        file.flush().map_err(|e| Error::io(path, e))?;
        Ok(PidLock {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// The status file a running daemon keeps beside its PID file, for `daemon status`.
fn status_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The daemon's status file: when it started and what it loaded. Written at start and on each
/// reload, on a thread of its own so that the scheduler's thread never waits on the disk;
/// removed when the daemon stops.
#[derive(Debug)]
pub(super) struct StatusFile {
    path: PathBuf,
    started: DateTime<Utc>,
}

impl StatusFile {
    /// The status file of the daemon locking `pid_file`, started at `started`.
    pub(super) fn new(pid_file: &Path, started: DateTime<Utc>) -> StatusFile {
        StatusFile {
            path: status_path(pid_file),
            started,
        }
    }

    /// Replaces the file with the status of a daemon that loaded `loaded`, sees the clock
    /// as `clock` and, from the instant `stopping`, is stopping (starting no run, waiting for
    /// the ones going). A failure is logged: the daemon goes on without it.
    pub(super) async fn write(
        &self,
        loaded: &BTreeMap<String, Loaded>,
        stopping: Option<DateTime<Utc>>,
        clock: ClockStatus,
    ) {
        let workflows: Vec<serde_json::Value> = loaded
            .values()
            .map(|l| {
                serde_json::json!({
                    "name": l.wf.name,
                    "schedule": l.wf.schedule,
                    "timezone": l.wf.timezone,
                    "jitter_seconds": l.offset.as_secs(),
                    "source": l.source.display().to_string(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "pid": std::process::id(),
            "started_at": self.started.to_rfc3339(),
            "workflows": workflows,
            "stopping_since": stopping.map(|t| t.to_rfc3339()),
            "clock": clock_json(clock),
        });
        let path = self.path.clone();
        let written = offload("status", move || {
            if let Err(e) = crate::private::replace(&path, doc.to_string().as_bytes()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write daemon status file");
            }
        });
        written.wait().await;
    }

    /// Removes the file, once the daemon has stopped scheduling.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The clock's status as the status file holds it.
fn clock_json(clock: ClockStatus) -> serde_json::Value {
    match clock {
        ClockStatus::Synced => serde_json::json!({ "state": "synced" }),
        ClockStatus::Unsynced => serde_json::json!({ "state": "unsynced" }),
        ClockStatus::Waiting {
            since,
            timeout_seconds,
        } => serde_json::json!({
            "state": "waiting",
            "since": since.to_rfc3339(),
            "timeout_seconds": timeout_seconds,
        }),
        ClockStatus::GaveUp { timeout_seconds } => serde_json::json!({
            "state": "gave_up",
            "timeout_seconds": timeout_seconds,
        }),
    }
}

/// [`clock_json`] read back; `None` for a file without it (or one it cannot read).
fn clock_from_json(v: &serde_json::Value) -> Option<ClockStatus> {
    let timeout_seconds = v["timeout_seconds"].as_u64().unwrap_or(0);
    Some(match v["state"].as_str()? {
        "synced" => ClockStatus::Synced,
        "unsynced" => ClockStatus::Unsynced,
        "waiting" => ClockStatus::Waiting {
            since: DateTime::parse_from_rfc3339(v["since"].as_str()?)
                .ok()?
                .with_timezone(&Utc),
            timeout_seconds,
        },
        "gave_up" => ClockStatus::GaveUp { timeout_seconds },
        _ => return None,
    })
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    // EPERM: it exists, as another user's process.
    pid > 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether a process holds the `flock` of the open PID file `f`.
fn lock_held(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; released immediately if taken.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above: the lock just taken on our own descriptor is released.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

/// The daemon a PID file names, as far as it can be trusted.
enum PidFile {
    /// No PID file, or no process holds its lock: no daemon runs.
    Absent,
    /// The locked PID file names this pid, and that process started when the file says.
    Daemon(u32),
    /// The locked PID file names a pid that is not the process that wrote it.
    Foreign(String),
}

/// Reads the PID file without following a link; it must belong to the effective user. The
/// pid it names counts only if that process still has the start time recorded beside it.
fn read_pid_file(pid_file: &Path) -> Result<PidFile> {
    use std::os::unix::fs::MetadataExt as _;
    let mut f = match crate::private::open_read(pid_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PidFile::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::io(
                pid_file,
                std::io::Error::new(e.kind(), "is a symbolic link: not read"),
            ))
        }
        other => other.map_err(|e| Error::io(pid_file, e))?,
    };
    let m = f.metadata().map_err(|e| Error::io(pid_file, e))?;
    if m.uid() != crate::private::euid() {
        return Err(Error::Other(format!(
            "PID file {} is owned by uid {}, not by uid {}: not trusted (run the command as \
             the daemon's user, e.g. `sudo -u '#{}' picoflow …`); no process signalled",
            pid_file.display(),
            m.uid(),
            crate::private::euid(),
            m.uid()
        )));
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let mut lines = text.lines().map(str::trim);
    let pid: Option<u32> = lines.next().and_then(|l| l.parse().ok());
    let start: Option<u64> = lines.next().and_then(|l| l.parse().ok());
    let Some(pid) = pid.filter(|&p| pid_alive(p) && lock_held(&f)) else {
        return Ok(PidFile::Absent);
    };
    match start {
        Some(s) if crate::proc::process_start_time(pid) == Some(s) => Ok(PidFile::Daemon(pid)),
        _ => Ok(PidFile::Foreign(format!(
            "PID file {} names pid {pid}, but that process is not the daemon that wrote the \
             file (its start time differs from the one recorded)",
            pid_file.display()
        ))),
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The status of the daemon using `config`'s state file, or `None` if none is running.
pub fn daemon_status(config: &Config) -> Result<Option<DaemonStatus>> {
    let pid_file = config.pid_file();
    let PidFile::Daemon(pid) = read_pid_file(&pid_file)? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(status_path(&pid_file)).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let started_at = doc["started_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(Utc::now, |d| d.with_timezone(&Utc));
    let now = Utc::now();
    let workflows = doc["workflows"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    let schedule = w["schedule"].as_str().map(String::from);
                    let timezone = w["timezone"].as_str().map(String::from);
                    let jitter_seconds = w["jitter_seconds"].as_u64().unwrap_or(0);
                    let next = schedule.as_deref().and_then(|s| {
                        Schedule::parse(s, timezone.as_deref())
                            .ok()?
                            .next_after_delayed(now, Duration::from_secs(jitter_seconds))
                    });
                    ScheduledWorkflow {
                        name: w["name"].as_str().unwrap_or("?").to_string(),
                        schedule,
                        timezone,
                        jitter_seconds,
                        next,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let stopping_since = doc["stopping_since"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc));
    Ok(Some(DaemonStatus {
        pid,
        started_at,
        stopping_since,
        workflows,
        memory_bytes: rss_bytes(pid),
        clock: clock_from_json(&doc["clock"]),
        #[cfg(feature = "fleet")]
        fleet: crate::fleet::read_status(&pid_file),
        #[cfg(not(feature = "fleet"))]
        fleet: None,
    }))
}

/// Sends SIGTERM to the daemon of `config`'s state file and waits up to `wait` for it to exit.
/// Returns `Ok(false)` when no daemon is running.
pub fn stop_daemon(config: &Config, wait: Duration) -> Result<bool> {
    let pid_file = config.pid_file();
    let pid = match read_pid_file(&pid_file)? {
        PidFile::Absent => return Ok(false),
        PidFile::Foreign(why) => return Err(Error::Other(format!("{why}; not signalled"))),
        PidFile::Daemon(pid) => pid,
    };
    // SAFETY: sending SIGTERM to the daemon's pid, read from its locked PID file.
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        return Err(Error::Other(format!(
            "cannot signal daemon pid {pid}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if !matches!(read_pid_file(&pid_file), Ok(PidFile::Daemon(p)) if p == pid) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Timeout(format!(
        "daemon pid {pid} did not stop within {}s",
        wait.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_status_survives_the_status_file() {
        let since = DateTime::parse_from_rfc3339("2026-01-01T00:00:12Z")
            .unwrap()
            .with_timezone(&Utc);
        for clock in [
            ClockStatus::Synced,
            ClockStatus::Unsynced,
            ClockStatus::Waiting {
                since,
                timeout_seconds: 300,
            },
            ClockStatus::GaveUp {
                timeout_seconds: 300,
            },
        ] {
            assert_eq!(clock_from_json(&clock_json(clock)), Some(clock));
        }
        // A status file of a daemon that does not say.
        assert_eq!(clock_from_json(&serde_json::Value::Null), None);
    }
}
