//! The state store: workflows, workflow executions and task attempts in one redb file
//! (CFG-003, REL-001, REL-003, REL-004; `DECISIONS.md` 9).
//!
//! # Several processes, one file
//! A daemon, a `picoflow run` and any number of read commands use the same file at once.
//! Every process that writes opens it in redb's [`ConcurrencyMode::MultiWriter`]: each may
//! write, one write transaction at a time across all of them (redb serialises them with a
//! byte-range lock on the file). Read commands open it read-only, which never blocks a
//! writer. A process killed with `kill -9` leaves the file needing a repair that a read-only
//! open may not perform; a read command that meets such a file opens it read-write once, which
//! repairs it, so readers never fail for good. In these modes every commit is durable: redb
//! refuses non-durable commits when other processes may share the file.
//!
//! # Durable completions, grouped commits
//! A [`Store`] that writes owns one writer thread; engine events are queued to it, never
//! written on the engine's executor, and recorded in the order they happen. A task's completion
//! must be durable before a task that depends on it starts (the engine asks for it with
//! [`EventSink::flush`] as tasks finish, one flush in flight at a time), yet a redb commit in
//! these modes writes about 40 KiB — too much per task for an SD card. So a flush appends the
//! completed attempts (without their output) to a small journal file beside the state file,
//! `<state>.<pid>-<start>.journal`, and syncs it: one 4 KiB page. Everything queued is
//! committed to redb in one transaction at most a second later (two for starts), when an
//! execution ends, and when the store closes; the journal is then emptied. A process that dies
//! leaves its journal behind; the next writer to open the file replays it into redb, so a
//! finished task is known as finished after any crash, and deletes it. Output captured in that
//! last second before a crash is kept in the task log files, not in the history. A task's
//! start goes to the journal at once without a sync (a write, no disk flush), so that readers
//! in other processes see the task running from its first moment.
//!
//! # Crash recovery
//! An execution's start is committed at once, and the engine's flush after it waits for that
//! commit, so every execution whose tasks started is in the file when a crash comes.
//! Each execution records the process id and that process's start time (from `/proc`). An
//! execution marked `running` whose process no longer exists — or whose pid now belongs to a
//! different process — is reported as `interrupted` by every reader and rewritten as such by
//! [`Store::recover_interrupted`]. `picoflow run --resume` and the daemon continue it:
//! finished tasks are kept, and the tasks that were running when the process died run again
//! (at-least-once) — as does a task whose journal line was being synced at that instant.
//!
//! # Where things are
//! - this file: the [`Store`] handle, opening a state file for writing or reading, and the
//!   public records ([`WorkflowRecord`], [`HistoryFilter`], [`PruneCounts`]);
//! - `schema.rs`: the tables, their composite keys, how records are encoded, an execution as
//!   stored with its owner's identity, and the error context of redb calls;
//! - `batch.rs`: when to commit and what to journal — a pure policy, given the time rather
//!   than reading a clock, tested without redb or files;
//! - `writer.rs`: the writer thread that follows that policy, and the engine's event sink;
//! - `queue.rs`: the writer thread's queue;
//! - `journal.rs`: the journal file, reading every journal, and replaying a dead process's;
//! - `read.rs`: queries and history, merged with the journals;
//! - `maintenance.rs`: crash recovery ([`Store::recover_interrupted`]) and [`Store::prune`];
//! - `outbox.rs`: the executions changed since the fleet last heard of them.
mod batch;
mod journal;
mod maintenance;
#[cfg(feature = "fleet")]
mod outbox;
/// Without the `fleet` feature there is no outbox: nothing is marked.
#[cfg(not(feature = "fleet"))]
mod outbox {
    pub(super) fn mark<'a>(
        _txn: &redb::WriteTransaction,
        _ids: impl IntoIterator<Item = &'a str>,
    ) -> std::result::Result<(), redb::Error> {
        Ok(())
    }
}
mod queue;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{EventSink, WorkflowStatus};

use batch::Record;
use journal::replay_journals;
use schema::{create_tables, Context, RUNNING};
use writer::{acknowledged, read_only, Failure, Msg, StoreSink, Writer};

/// redb's page cache; the default (1 GiB) is twice a Pi Zero's memory.
const WRITER_CACHE_BYTES: usize = 4 * 1024 * 1024;
const READER_CACHE_BYTES: usize = 1024 * 1024;

/// A workflow the store knows about (the daemon records what it loads; `run` records too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// Workflow name.
    pub name: String,
    /// Its cron schedule, if any.
    pub schedule: Option<String>,
    /// The file it was loaded from, when known.
    pub file: Option<String>,
    /// When this record was last written.
    pub updated_at: DateTime<Utc>,
}

/// Which executions [`Store::executions`] returns.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only executions with this (effective) status.
    pub status: Option<WorkflowStatus>,
    /// Only executions started at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// What [`Store::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    /// Workflow executions deleted.
    pub executions: usize,
    /// Task attempts deleted.
    pub task_executions: usize,
}

enum Handle {
    ReadWrite(Arc<Database>),
    ReadOnly(ReadOnlyDatabase),
}

/// The state store. See the module documentation for the concurrency and crash design.
pub struct Store {
    path: PathBuf,
    handle: Handle,
    writer: Option<Writer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("writable", &self.writer.is_some())
            .finish()
    }
}

fn builder(cache: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .set_cache_size(cache);
    b
}

/// The directory `dir` as named in messages (`.` for the working directory).
fn state_dir(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

impl Store {
    /// Opens (or creates) the state file for reading and writing, repairing it if a writer
    /// died, and starts the writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_path(path.as_ref())
    }

    /// [`Store::open`] for a path of any type, in the binary once.
    fn open_path(path: &Path) -> Result<Store> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dirs_for(dir, "the state file")
                .map_err(|e| Error::io(dir, e))?;
        }
        // Another user who could rename entries in this directory could swap the state file
        // or its run directory for links between PicoFlow's checks and its writes.
        let dir = path.parent().unwrap_or(Path::new(""));
        crate::private::trusted_dir(dir).map_err(|e| Error::io(state_dir(dir), e))?;
        // The records hold task output: the file is 0600 (an older one others could read is
        // made so), opened here without following a link and handed to redb.
        let file = crate::private::open_rw(&path).map_err(|e| Error::io(&path, e))?;
        let db = redb::backends::FileBackend::new(file)
            .and_then(|backend| builder(WRITER_CACHE_BYTES).create_with_backend(backend))
            .context(&path, "cannot open state file")?;
        let db = Arc::new(db);
        // Create the tables once so that readers find them (and skip the commit, an fsync,
        // when they exist).
        let exists = db
            .begin_read()
            .ok()
            .is_some_and(|r| r.open_table(RUNNING).is_ok());
        if !exists {
            create_tables(&db, &path)?;
        }
        replay_journals(&db, &path)?;
        let writer = Writer::start(db.clone(), &path)?;
        Ok(Store {
            path,
            handle: Handle::ReadWrite(db),
            writer: Some(writer),
        })
    }

    /// Opens the state file for reading only. `Ok(None)` when it does not exist yet (nothing
    /// has run). A file left unclean by a killed writer is repaired first.
    pub fn open_read(path: impl AsRef<Path>) -> Result<Option<Store>> {
        Store::open_read_path(path.as_ref())
    }

    /// [`Store::open_read`] for a path of any type, in the binary once.
    fn open_read_path(path: &Path) -> Result<Option<Store>> {
        let path = path.to_path_buf();
        if !path.exists() {
            return Ok(None);
        }
        // A state file of ours from an older version, open to others, is made 0600. An
        // empty one was created by a writer killed before redb could write its header:
        // nothing was recorded yet.
        match crate::private::open_read(&path) {
            Ok(f) => {
                let _ = crate::private::tighten(&f);
                if f.metadata().is_ok_and(|m| m.len() == 0) {
                    return Ok(None);
                }
            }
            // A device or a FIFO is no state file (and a FIFO would block the open below);
            // a symbolic link is not followed, for reading either.
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidInput
                    || std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) =>
            {
                return Err(Error::io(&path, e))
            }
            Err(_) => {}
        }
        let handle = match builder(READER_CACHE_BYTES).open_read_only(&path) {
            Ok(db) => Handle::ReadOnly(db),
            Err(first) => {
                // Most likely a writer was killed: a read-write open repairs the file.
                tracing::debug!(error = %first, "read-only open refused; opening read-write to repair");
                let db = builder(READER_CACHE_BYTES)
                    .open(&path)
                    .context(&path, "cannot open state file")?;
                Handle::ReadWrite(Arc::new(db))
            }
        };
        Ok(Some(Store {
            path,
            handle,
            writer: None,
        }))
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An event sink that records every engine event in this store. Fails on use when the
    /// store was opened read-only.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(StoreSink {
            path: self.path.clone(),
            tx: self
                .writer
                .as_ref()
                .map(|w| Mutex::new(w.tx.lock().expect("store queue").clone())),
            failure: self
                .writer
                .as_ref()
                .map_or_else(Failure::default, |w| w.failure.clone()),
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let w = self.writer.as_ref().ok_or_else(read_only)?;
        w.tx.lock()
            .expect("store queue")
            .send(msg)
            .map_err(|_| writer::writer_stopped())
    }

    /// Waits until everything queued so far is committed to the state file.
    pub fn flush_blocking(&self) -> Result<()> {
        let (tx, rx) = smol::channel::bounded(1);
        self.send(Msg::Commit(tx))?;
        acknowledged(&self.path, rx.recv_blocking())
    }

    /// Records (or updates) a workflow definition's name, schedule and file. The record is
    /// queued: it is committed with the next execution's start, or within a second.
    pub fn record_workflow(
        &self,
        name: &str,
        schedule: Option<&str>,
        file: Option<&str>,
    ) -> Result<()> {
        self.send(Msg::Record(Record::Workflow(WorkflowRecord {
            name: name.to_string(),
            schedule: schedule.map(String::from),
            file: file.map(String::from),
            updated_at: Utc::now(),
        })))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(w) = &mut self.writer {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures for every test of a whole store (these and the ones beside the code they
    //! exercise: reading, recovery, the journal), and the tests of opening one.
    use super::*;
    use crate::events::{Event, TaskExecution, TaskState, WorkflowExecution};

    pub(super) fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "picoflow-store-{name}-{}-{}",
            std::process::id(),
            crate::new_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.redb")
    }

    pub(super) fn exec(wf: &str, id: &str, at: &str) -> WorkflowExecution {
        let t: DateTime<Utc> = at.parse().unwrap();
        WorkflowExecution {
            id: id.into(),
            workflow_name: wf.into(),
            started_at: t,
            finished_at: None,
            status: WorkflowStatus::Running,
            duration_seconds: None,
            total_tasks: 1,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: t,
            pid: std::process::id(),
            source: None,
            definition: None,
        }
    }

    pub(super) fn task(exec: &str, id: &str, name: &str, status: TaskState) -> TaskExecution {
        let t = Utc::now();
        TaskExecution {
            id: id.into(),
            workflow_execution_id: exec.into(),
            task_name: name.into(),
            status,
            started_at: t,
            finished_at: None,
            exit_code: None,
            stdout: Some("out".into()),
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            attempt: 1,
            error_message: None,
            duration_seconds: None,
            created_at: t,
            outputs: None,
        }
    }

    #[test]
    fn events_are_recorded_and_read_back() {
        let path = temp("rw");
        let store = Store::open(&path).unwrap();
        let sink = store.sink();
        let e = exec("backup", "e1", "2026-11-25T10:00:00Z");
        sink.on_event(&Event::WorkflowStarted(e.clone()));
        sink.on_event(&Event::TaskStarted(task(
            "e1",
            "t1",
            "dump",
            TaskState::Running,
        )));
        let mut done = task("e1", "t1", "dump", TaskState::Success);
        done.exit_code = Some(0);
        sink.on_event(&Event::TaskFinished {
            record: done.clone(),
            retry_in: None,
        });
        let mut fin = e.clone();
        fin.status = WorkflowStatus::Success;
        sink.on_event(&Event::WorkflowFinished(fin.clone()));
        smol::block_on(sink.flush()).unwrap();

        assert_eq!(store.latest_execution("backup").unwrap(), Some(fin.clone()));
        assert_eq!(store.task_executions("e1").unwrap(), vec![done]);
        assert_eq!(store.execution("e1").unwrap(), Some(fin));
        drop(sink);
        drop(store);

        // A reader in the same process sees the same.
        let r = Store::open_read(&path).unwrap().unwrap();
        assert_eq!(r.executions(&HistoryFilter::default()).unwrap().len(), 1);
        assert_eq!(r.workflows().unwrap()[0].name, "backup");
    }

    #[test]
    fn missing_file_reads_as_empty() {
        let path = temp("none");
        assert!(Store::open_read(&path).unwrap().is_none());
        assert!(!path.exists(), "a read must not create the file");
    }

    /// A writer killed between creating the state file and redb writing its header left an
    /// empty file that `status` could not open ("Database file is empty").
    #[test]
    fn an_empty_file_reads_as_empty_and_is_initialised_by_a_writer() {
        let path = temp("empty");
        std::fs::write(&path, "").unwrap();
        assert!(Store::open_read(&path).unwrap().is_none());
        drop(Store::open(&path).unwrap());
        assert!(Store::open_read(&path).unwrap().is_some());
    }
}
