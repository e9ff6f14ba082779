//! Task log files (CFG-004): `<dir>/<workflow>/<YYYY-MM-DD_HHMMSS>_<execution-id>/<task>.log`.
//!
//! SD cards wear out, so nothing is written that carries nothing: a task's file is created
//! when its first output byte arrives, and a quiet task has no file at all. Output is
//! written as it arrives (so `picoflow logs --follow` can stream a running task), capped like
//! the stored capture by the engine's log sink (`engine/log_sink.rs`), which hands it to a
//! [`LogFile`] on a thread of its execution.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// Directory holding the task logs of one execution.
pub fn execution_log_dir(
    root: &Path,
    workflow: &str,
    started_at: DateTime<Utc>,
    execution_id: &str,
) -> PathBuf {
    root.join(workflow).join(format!(
        "{}_{}",
        started_at.format("%Y-%m-%d_%H%M%S"),
        execution_id
    ))
}

/// Log file of one task inside an execution's directory. A loop's task names its item
/// (`upload[/srv/a.txt]`): `/` and `%` are written `%2F` and `%25`, so the file stays in the
/// directory whatever the item.
pub fn task_log_path(execution_dir: &Path, task: &str) -> PathBuf {
    let name = match task.contains(['/', '%']) {
        true => task.replace('%', "%25").replace('/', "%2F"),
        false => task.to_string(),
    };
    execution_dir.join(format!("{name}.log"))
}

/// One attempt's task log file, created when its first bytes are written. Its writes block:
/// the engine calls it from its execution's file thread (see `engine/log_sink.rs`, which
/// also caps what it is given).
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    header: Option<String>,
    file: Option<File>,
    /// The first error met creating or writing the file (REL-003: reported on the task,
    /// never silently lost); nothing more is written after it.
    failed: Option<String>,
}

impl LogFile {
    /// `header` is written once before the first byte (e.g. an attempt separator). Nothing
    /// is created yet.
    pub(crate) fn new(path: PathBuf, header: Option<String>) -> Self {
        LogFile {
            path,
            header,
            file: None,
            failed: None,
        }
    }

    /// Appends `bytes`, creating the file (and writing the header) first if need be; does
    /// nothing once writing failed.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        if self.file.is_none() && self.failed.is_none() {
            // Task output may carry secrets: directories 0700, files 0600 (see `private`).
            match open_log(&self.path) {
                Ok(f) => {
                    self.file = Some(f);
                    if let Some(h) = self.header.take() {
                        self.append(h.as_bytes());
                    }
                }
                Err(e) => self.fail(&e),
            }
        }
        self.append(bytes);
    }

    /// Why the log is incomplete, if it is: the file and the error.
    pub(crate) fn problem(&self) -> Option<String> {
        self.failed.clone()
    }

    /// Closes the file; returns why the log is incomplete, if it is (see [`LogFile::problem`]).
    pub(crate) fn close(&mut self) -> Option<String> {
        self.file = None;
        self.problem()
    }

    fn append(&mut self, bytes: &[u8]) {
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => return,
        };
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        tracing::warn!(path = %self.path.display(), error = %e, "cannot write task log");
        self.failed = Some(format!("task log {} not written: {e}", self.path.display()));
        self.file = None;
    }
}

/// Opens `<root>/<workflow>/<stamp>_<id>/<task>.log` for appending. The logs root must be
/// a directory others cannot change (see `private::trusted_dir`); each level below it is
/// created `0700` or, when it exists, checked with `lstat` (a directory of PicoFlow's user,
/// not a link), so a link planted by another user is refused, not followed.
fn open_log(path: &Path) -> std::io::Result<File> {
    let exec = path.parent().unwrap_or(Path::new(""));
    let workflow = exec.parent().unwrap_or(Path::new(""));
    let root = workflow.parent().unwrap_or(Path::new(""));
    let named = |p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    crate::private::create_dirs(root).map_err(|e| named(root, e))?;
    crate::private::trusted_dir(root).map_err(|e| named(root, e))?;
    for level in [workflow, exec] {
        crate::private::own_dir(level).map_err(|e| named(level, e))?;
    }
    crate::private::open_append(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_item_cannot_leave_the_execution_directory() {
        let dir = Path::new("/logs/w/run");
        assert_eq!(task_log_path(dir, "a"), dir.join("a.log"));
        assert_eq!(
            task_log_path(dir, "up[../../etc/x%]"),
            dir.join("up[..%2F..%2Fetc%2Fx%25].log")
        );
    }

    #[test]
    fn the_file_is_made_by_the_first_write_after_its_header() {
        let dir = std::env::temp_dir().join(format!("pf-logs-{}", crate::events::new_id()));
        let path = task_log_path(&dir.join("w/run"), "t");
        let mut f = LogFile::new(path.clone(), Some("--- attempt 2 ---\n".into()));
        assert!(!path.exists());
        f.write(b"hi\n");
        f.write(b"err\n");
        assert_eq!(f.close(), None);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "--- attempt 2 ---\nhi\nerr\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_that_cannot_be_written_says_why() {
        let dir = std::env::temp_dir().join(format!("pf-logs-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file where the execution's directory should be.
        let blocker = dir.join("exec");
        std::fs::write(&blocker, "").unwrap();
        let mut f = LogFile::new(task_log_path(&blocker, "t"), None);
        f.write(b"hi\n");
        f.write(b"more\n");
        let p = f.close().expect("a problem");
        assert!(p.contains("t.log") && p.contains("not written"), "{p}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layout_matches_the_user_guide() {
        let t = DateTime::parse_from_rfc3339("2025-11-12T02:00:15Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = execution_log_dir(Path::new("logs"), "backup", t, "abc123");
        assert_eq!(d, PathBuf::from("logs/backup/2025-11-12_020015_abc123"));
    }
}
