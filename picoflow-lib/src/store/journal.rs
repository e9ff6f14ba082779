//! The journal of task attempts not yet committed to redb: one file per writing process,
//! `<state>.<pid>-<start>.journal`. A start is appended at once without a sync, completions
//! are appended and synced on a flush, and each commit empties it.
//! Readers merge every journal into what they read; the next writer to open the state file
//! replays the journals of processes that died, then deletes them.
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable};

use crate::error::{Error, Result};
use crate::events::TaskExecution;
use crate::proc::process_start_time;

use super::schema::{encode, key, Context, TASKS};

/// One process's journal (see the module docs).
pub(super) struct Journal {
    pub(super) path: PathBuf,
    file: Option<std::fs::File>,
    dirty: bool,
}

impl Journal {
    /// The journal of the process `pid` started at `start` (clock ticks since boot), beside
    /// the state file `db`. Nothing is created until the first line is written.
    pub(super) fn new(db: &Path, pid: u32, start: u64) -> Journal {
        Journal {
            path: Journal::path_for(db, pid, start),
            file: None,
            dirty: false,
        }
    }

    pub(super) fn path_for(db: &Path, pid: u32, start: u64) -> PathBuf {
        let mut s = db.as_os_str().to_owned();
        s.push(format!(".{pid}-{start}.journal"));
        PathBuf::from(s)
    }

    /// Appends lines and syncs them (`fdatasync`): one page for a few completions.
    pub(super) fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let f = self.opened()?;
        f.write_all(lines)?;
        f.sync_data()?;
        self.dirty = true;
        Ok(())
    }

    /// Appends lines without syncing them: readers in other processes see them at once (the
    /// page cache is shared); a crash may lose them, which is fine for what they say (a task's
    /// start). A later [`Journal::append`] syncs them with its own.
    pub(super) fn append_unsynced(&mut self, lines: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.opened()?.write_all(lines)?;
        self.dirty = true;
        Ok(())
    }

    /// The file, opened (created 0600) on first use.
    fn opened(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            self.file = Some(crate::private::open_append(&self.path)?);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Everything journaled is in redb now.
    pub(super) fn clear(&mut self) {
        if self.dirty {
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
            self.dirty = false;
        }
    }

    pub(super) fn remove(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A journal line: the completed attempt without its captured output (which can be 10 MB).
pub(super) fn journal_line(r: &TaskExecution) -> Vec<u8> {
    let compact = TaskExecution {
        id: r.id.clone(),
        workflow_execution_id: r.workflow_execution_id.clone(),
        task_name: r.task_name.clone(),
        status: r.status,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        stdout: None,
        stderr: None,
        stdout_size: None,
        stderr_size: None,
        attempt: r.attempt,
        error_message: r.error_message.clone(),
        duration_seconds: r.duration_seconds,
        created_at: r.created_at,
        outputs: r.outputs.clone(),
    };
    let mut line = encode(&compact);
    line.push(b'\n');
    line
}

/// The journals beside the state file `path`: each one's path and whether its writer still
/// runs.
fn journals(path: &Path) -> Vec<(PathBuf, bool)> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Some(base) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(&base)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".journal"))
        else {
            continue;
        };
        let Some((pid, start)) = owner.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        found.push((entry.path(), process_start_time(pid) == Some(start)));
    }
    found
}

/// The completed attempts in one journal. A line torn by a crash is simply not there: its
/// task runs again.
fn read_journal(jpath: &Path, db: &Path) -> Result<Vec<TaskExecution>> {
    use std::io::Read as _;
    let mut text = Vec::new();
    trusted_journal(jpath, db)
        .and_then(|mut f| f.read_to_end(&mut text))
        .map_err(|e| Error::io(jpath, e))?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// Opens a journal that PicoFlow itself wrote: a regular file (not a link, a FIFO or a
/// device: see `private::open_read`) owned by this process's user or by the state file's
/// owner. Anyone who may create files beside the state file (a shared directory) could
/// otherwise plant a journal that marks tasks done and gives them outputs.
fn trusted_journal(jpath: &Path, db: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt as _;
    let f = crate::private::open_read(jpath).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "is a symbolic link: not read",
        ),
        _ => e,
    })?;
    let uid = f.metadata()?.uid();
    let state_owner = std::fs::metadata(db).map(|m| m.uid()).ok();
    if uid != crate::private::euid() && Some(uid) != state_owner {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("is owned by uid {uid}, who does not own the state file: not read"),
        ));
    }
    Ok(f)
}

/// Every completion in the journals beside the state file, of live writers and dead ones
/// (a journal that vanishes while being read has been committed meanwhile).
pub(super) fn journaled(path: &Path) -> Vec<TaskExecution> {
    journals(path)
        .into_iter()
        .flat_map(|(j, _)| read_journal(&j, path).unwrap_or_default())
        .collect()
}

/// Replays the journals of processes that died into redb, then deletes them. Records already
/// committed in their final state are left alone, so replaying twice does no harm.
pub(super) fn replay_journals(db: &Database, path: &Path) -> Result<()> {
    for (jpath, alive) in journals(path) {
        if alive {
            continue; // Its writer is alive and will commit it.
        }
        let records = match read_journal(&jpath, path) {
            Ok(r) => r,
            Err(e) => {
                // Not PicoFlow's (planted), or unreadable: left alone, and said.
                tracing::warn!(error = %e, "a journal beside the state file was not replayed");
                continue;
            }
        };
        if !records.is_empty() {
            replay(db, path, &records)?;
            tracing::info!(journal = %jpath.display(), records = records.len(), "replayed the journal of a process that ended");
        }
        let _ = std::fs::remove_file(&jpath);
    }
    Ok(())
}

/// Commits a dead process's journaled attempts, except where redb already holds an attempt's
/// final state.
fn replay(db: &Database, path: &Path, records: &[TaskExecution]) -> Result<()> {
    const WHAT: &str = "cannot replay the journal into";
    let txn = db.begin_write().context(path, WHAT)?;
    {
        let mut tasks = txn.open_table(TASKS).context(path, WHAT)?;
        for rec in records {
            let key = key::pair(&rec.workflow_execution_id, &rec.id);
            let key = key.as_slice();
            let current = tasks
                .get(key)
                .context(path, WHAT)?
                .and_then(|v| serde_json::from_slice::<TaskExecution>(v.value()).ok());
            if current.is_some_and(|c| c.status.is_final()) {
                continue;
            }
            tasks
                .insert(key, encode(rec).as_slice())
                .context(path, WHAT)?;
        }
    }
    let ids = records.iter().map(|r| r.workflow_execution_id.as_str());
    super::outbox::mark(&txn, ids).context(path, WHAT)?;
    txn.commit().context(path, WHAT)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, TaskState};
    use crate::store::tests::{exec, task, temp};
    use crate::store::Store;

    #[test]
    fn the_journal_of_a_dead_process_is_replayed_once() {
        let path = temp("journal");
        {
            let store = Store::open(&path).unwrap();
            let sink = store.sink();
            sink.on_event(&Event::WorkflowStarted(exec(
                "a",
                "e1",
                "2026-11-20T10:00:00Z",
            )));
            sink.on_event(&Event::TaskStarted(task(
                "e1",
                "t1",
                "x",
                TaskState::Running,
            )));
            store.flush_blocking().unwrap();
        }
        // A completion that only reached the journal of a process that then died (its
        // recorded start time no longer matches any process).
        let mut done = task("e1", "t1", "x", TaskState::Success);
        done.exit_code = Some(0);
        let journal = Journal::path_for(&path, std::process::id(), 1);
        let mut text = journal_line(&done);
        text.extend_from_slice(b"{\"torn\": "); // a line cut short by the crash
        std::fs::write(&journal, text).unwrap();

        let store = Store::open(&path).unwrap();
        assert!(!journal.exists(), "a replayed journal is deleted");
        let tasks = store.task_executions("e1").unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].status, TaskState::Success);
        assert_eq!(tasks[0].exit_code, Some(0));
        assert_eq!(tasks[0].stdout, None, "the journal carries no output");
    }

    /// A journal PicoFlow did not write — a FIFO, a link, another user's file planted beside
    /// the state file in a shared directory — is neither read nor replayed (nor waited on).
    #[test]
    fn a_planted_journal_is_not_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = temp("planted");
        {
            let store = Store::open(&path).unwrap();
            store.sink().on_event(&Event::WorkflowStarted(exec(
                "a",
                "e1",
                "2026-11-20T10:00:00Z",
            )));
            store.flush_blocking().unwrap();
        }
        // The state file stays ours (0600): the other user's file is judged by its owner.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut forged = task("e1", "t1", "x", TaskState::Success);
        forged.outputs = Some([("v".to_string(), "PLANTED".to_string())].into());
        let line = journal_line(&forged);
        let fifo = Journal::path_for(&path, 4_000_001, 1);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let target = path.with_extension("target");
        std::fs::write(&target, &line).unwrap();
        let link = Journal::path_for(&path, 4_000_002, 1);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut planted = vec![fifo.clone(), link.clone()];
        if crate::private::euid() == 0 {
            let other = Journal::path_for(&path, 4_000_003, 1);
            std::fs::write(&other, &line).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            planted.push(other);
        } else {
            println!("SKIPPED: the other user's journal needs root (chown); run as root");
        }
        // Readers: nothing of it, at once.
        let reader = Store::open_read(&path).unwrap().unwrap();
        assert!(reader.task_executions("e1").unwrap().is_empty());
        drop(reader);
        // A writer: nothing replayed, nothing removed but what it may.
        let store = Store::open(&path).unwrap();
        assert!(store.task_executions("e1").unwrap().is_empty());
        assert!(planted.iter().all(|p| std::fs::symlink_metadata(p).is_ok()));
        assert_eq!(
            std::fs::read(&target).unwrap(),
            line,
            "the link's target is untouched"
        );
    }

    #[test]
    fn a_flush_is_durable_in_the_journal_before_the_commit() {
        let path = temp("flush");
        let store = Store::open(&path).unwrap();
        let sink = store.sink();
        sink.on_event(&Event::WorkflowStarted(exec(
            "a",
            "e1",
            "2026-11-20T10:00:00Z",
        )));
        sink.on_event(&Event::TaskFinished {
            record: task("e1", "t1", "x", TaskState::Success),
            retry_in: None,
        });
        smol::block_on(sink.flush()).unwrap();
        let journal = Journal::path_for(
            &path,
            std::process::id(),
            process_start_time(std::process::id()).unwrap(),
        );
        let text = std::fs::read_to_string(&journal).unwrap();
        assert!(
            text.contains("\"t1\"") && text.contains("success"),
            "{text}"
        );
        // Closing commits everything and removes the journal.
        drop(sink);
        drop(store);
        assert!(!journal.exists());
        let r = Store::open_read(&path).unwrap().unwrap();
        assert_eq!(
            r.task_executions("e1").unwrap()[0].status,
            TaskState::Success
        );
    }

    /// The writer journals a task's start as soon as it takes it, before any flush or commit,
    /// so that readers in other processes see the task running within the commit window.
    #[test]
    fn a_start_is_journaled_before_any_flush_or_commit() {
        let path = temp("start");
        let store = Store::open(&path).unwrap();
        let sink = store.sink();
        sink.on_event(&Event::WorkflowStarted(exec(
            "a",
            "e1",
            "2026-11-20T10:00:00Z",
        )));
        sink.on_event(&Event::TaskStarted(task(
            "e1",
            "t1",
            "x",
            TaskState::Running,
        )));
        let journal = Journal::path_for(
            &path,
            std::process::id(),
            process_start_time(std::process::id()).unwrap(),
        );
        // Well within START_COMMIT_WINDOW, after which a commit would empty the journal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let mut text = String::new();
        while std::time::Instant::now() < deadline && !text.contains("\"t1\"") {
            std::thread::sleep(std::time::Duration::from_millis(10));
            text = std::fs::read_to_string(&journal).unwrap_or_default();
        }
        assert!(
            text.contains("\"t1\"") && text.contains("running"),
            "{text}"
        );
        assert!(!text.contains("\"out\""), "the journal carries no output");
    }
}
