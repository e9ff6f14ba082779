//! Task log files (CFG-004): `<dir>/<workflow>/<YYYY-MM-DD_HHMMSS>_<execution-id>/<task>.log`.
//!
//! SD cards wear out, so nothing is written that carries nothing: a task's file is created
//! when its first output byte arrives, and a quiet task has no file at all. Output is
//! written as it arrives (so `picoflow logs --follow` can stream a running task) and capped
//! like the stored capture.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::executor::{OutputSink, Stream, CAPTURE_LIMIT};

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

/// Writes one attempt's output to its task log file, creating it lazily.
#[derive(Debug)]
pub(crate) struct TaskLogWriter {
    path: PathBuf,
    header: Option<String>,
    state: Mutex<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    file: Option<File>,
    /// The first error met creating or writing the file (REL-003: reported on the task,
    /// never silently lost); nothing more is written after it.
    failed: Option<String>,
    written: [usize; 2],
    marked: [bool; 2],
}

impl TaskLogWriter {
    /// `header` is written once before the first byte (e.g. an attempt separator).
    pub(crate) fn new(path: PathBuf, header: Option<String>) -> Self {
        TaskLogWriter {
            path,
            header,
            state: Mutex::new(WriterState::default()),
        }
    }

    /// Why the log is incomplete, if it is: the file and the error.
    pub(crate) fn problem(&self) -> Option<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.failed.clone()
    }

    fn fail(&self, st: &mut WriterState, e: &std::io::Error) {
        tracing::warn!(path = %self.path.display(), error = %e, "cannot write task log");
        st.failed = Some(format!("task log {} not written: {e}", self.path.display()));
        st.file = None;
    }

    fn write(&self, st: &mut WriterState, bytes: &[u8]) {
        let result = match st.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => return,
        };
        if let Err(e) = result {
            self.fail(st, &e);
        }
    }

    fn open(&self, st: &mut WriterState) -> Option<()> {
        if st.file.is_some() {
            return Some(());
        }
        if st.failed.is_some() {
            return None;
        }
        // Task output may carry secrets: directories 0700, files 0600 (see `private`).
        let opened = open_log(&self.path);
        match opened {
            Ok(f) => {
                st.file = Some(f);
                if let Some(h) = &self.header {
                    self.write(st, h.as_bytes());
                }
                st.file.as_ref().map(|_| ())
            }
            Err(e) => {
                self.fail(st, &e);
                None
            }
        }
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

impl OutputSink for TaskLogWriter {
    fn output(&self, stream: Stream, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let idx = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPTURE_LIMIT.saturating_sub(st.written[idx]);
        if room == 0 {
            if !st.marked[idx] {
                st.marked[idx] = true;
                self.write(&mut st, b"\n[output truncated at 10 MB]\n");
            }
            return;
        }
        if self.open(&mut st).is_none() {
            return;
        }
        let n = chunk.len().min(room);
        st.written[idx] += n;
        self.write(&mut st, &chunk[..n]);
    }
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
    fn quiet_tasks_leave_no_file() {
        let dir = std::env::temp_dir().join(format!("pf-logs-{}", crate::events::new_id()));
        let path = task_log_path(&dir.join("w/run"), "t");
        let w = TaskLogWriter::new(path.clone(), None);
        w.output(Stream::Stdout, b"");
        assert!(!path.exists());
        w.output(Stream::Stdout, b"hi\n");
        w.output(Stream::Stderr, b"err\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi\nerr\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_that_cannot_be_written_says_why() {
        let dir = std::env::temp_dir().join(format!("pf-logs-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file where the execution's directory should be.
        let blocker = dir.join("exec");
        std::fs::write(&blocker, "").unwrap();
        let w = TaskLogWriter::new(task_log_path(&blocker, "t"), None);
        assert_eq!(w.problem(), None);
        w.output(Stream::Stdout, b"hi\n");
        let p = w.problem().expect("a problem");
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
