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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, TableError,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{
    last_attempts, Event, EventSink, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus,
};
use crate::executor::BoxFuture;
use crate::proc::process_start_time;

/// Every table maps bytes to bytes. redb's B-tree code is generic over key and value types,
/// and one pair of types keeps one copy of it in the binary (about 100 KiB less than a pair
/// per table); [`key`] builds composite keys whose byte order is the order wanted.
type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Workflow name → [`WorkflowRecord`] (JSON).
const WORKFLOWS: Table = TableDefinition::new("workflows");
/// Execution id → stored execution (JSON).
const EXECUTIONS: Table = TableDefinition::new("workflow_executions");
/// [`key::pair`] (execution id, task attempt id) → [`TaskExecution`] (JSON). Keyed by
/// execution so that one table (one B-tree path) changes per task event: SD cards pay per
/// page written.
const TASKS: Table = TableDefinition::new("task_executions");
/// [`key::workflow_at`] (workflow, start, execution id) → nothing: executions of a workflow
/// in start order.
const BY_WORKFLOW: Table = TableDefinition::new("executions_by_workflow");
/// [`key::at`] (start, execution id) → nothing: all executions in start order.
const BY_TIME: Table = TableDefinition::new("executions_by_time");
/// Execution id → nothing: executions recorded as running, so recovery need not scan
/// history.
const RUNNING: Table = TableDefinition::new("running_executions");

/// Composite keys. Names and ids never contain NUL, so a NUL after one ends it and sorts it
/// before any longer name; times are big-endian with the sign bit flipped, so they sort as
/// numbers.
mod key {
    const SEP: u8 = 0;
    const TIME: usize = 8;

    fn time(t: i64) -> [u8; TIME] {
        ((t as u64) ^ (1 << 63)).to_be_bytes()
    }

    /// `a` and the separator, with room for `rest` more bytes.
    fn head(a: &str, rest: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(a.len() + 1 + rest);
        k.extend_from_slice(a.as_bytes());
        k.push(SEP);
        k
    }

    /// `a`, then `b`.
    pub(super) fn pair(a: &str, b: &str) -> Vec<u8> {
        let mut k = head(a, b.len());
        k.extend_from_slice(b.as_bytes());
        k
    }

    /// The bounds of every key whose first part is `a`.
    pub(super) fn under(a: &str) -> (Vec<u8>, Vec<u8>) {
        let lo = head(a, 0);
        let mut hi = lo.clone();
        *hi.last_mut().expect("not empty") = SEP + 1;
        (lo, hi)
    }

    /// The part of a [`pair`] or [`workflow_at`] key before the separator, and the rest.
    pub(super) fn split(k: &[u8]) -> (&str, &[u8]) {
        let i = k.iter().position(|&b| b == SEP).unwrap_or(k.len());
        let first = std::str::from_utf8(&k[..i]).unwrap_or("");
        (first, k.get(i + 1..).unwrap_or(&[]))
    }

    /// Start time (µs), then execution id.
    pub(super) fn at(t: i64, id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(TIME + id.len());
        push_at(&mut k, t, id);
        k
    }

    fn push_at(k: &mut Vec<u8>, t: i64, id: &str) {
        k.extend_from_slice(&time(t));
        k.extend_from_slice(id.as_bytes());
    }

    /// The time and id of an [`at`] key.
    pub(super) fn parse_at(k: &[u8]) -> (i64, &str) {
        let (t, id) = k.split_at(TIME.min(k.len()));
        let mut b = [0u8; TIME];
        b[..t.len()].copy_from_slice(t);
        let t = (u64::from_be_bytes(b) ^ (1 << 63)) as i64;
        (t, std::str::from_utf8(id).unwrap_or(""))
    }

    /// Workflow name, then an [`at`] key.
    pub(super) fn workflow_at(workflow: &str, t: i64, id: &str) -> Vec<u8> {
        let mut k = head(workflow, TIME + id.len());
        push_at(&mut k, t, id);
        k
    }
}

/// How long completed work may wait in the journal before it is committed to redb. Every
/// commit of a multi-process redb file writes about ten 4 KiB pages (data, system tree,
/// allocator state, headers) and syncs twice, whatever it carries; a journal append writes
/// one page. Readers in other processes see completions at most this late.
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// A batch holding only task starts waits longer: a start matters to
/// readers in other processes (`status`) but not to crash recovery, which re-runs any task
/// whose end is not recorded. A task shorter than this costs no commit of its own.
const START_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

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

/// An execution as stored: the record plus the owner's identity for the liveness check.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    exec: WorkflowExecution,
    /// Start time of process `exec.pid`, in clock ticks since boot (`/proc/<pid>/stat` 22).
    #[serde(default)]
    pid_start: Option<u64>,
}

enum Handle {
    ReadWrite(Arc<Database>),
    ReadOnly(ReadOnlyDatabase),
}

enum Msg {
    Execution(WorkflowExecution),
    /// A task attempt, already encoded by the engine's thread (outputs can be 10 MB: encoding
    /// there avoids holding a second copy of the record in the queue).
    Task {
        id: String,
        execution: String,
        json: Vec<u8>,
        /// A start (rather than an end) may wait longer for company.
        start: bool,
        /// Its journal line (the record without its output).
        journal: Option<Vec<u8>>,
    },
    Workflow(WorkflowRecord),
    /// Durable (journal) and acknowledged.
    Flush(smol::channel::Sender<std::result::Result<(), String>>),
    /// Committed to redb (visible to other processes) and acknowledged.
    Commit(smol::channel::Sender<std::result::Result<(), String>>),
    Stop,
}

/// The state store. See the module documentation for the concurrency and crash design.
pub struct Store {
    path: PathBuf,
    handle: Handle,
    writer: Option<Writer>,
}

struct Writer {
    tx: Mutex<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first commit that failed, once one has (REL-003): no task starts after it.
    failure: Failure,
}

/// The first failure of the writer thread, shared with every sink of the store.
type Failure = Arc<Mutex<Option<String>>>;

/// The journal of completed attempts not yet committed to redb (see the module docs).
struct Journal {
    path: PathBuf,
    file: Option<std::fs::File>,
    dirty: bool,
}

impl Journal {
    fn path_for(db: &Path, pid: u32, start: u64) -> PathBuf {
        let mut s = db.as_os_str().to_owned();
        s.push(format!(".{pid}-{start}.journal"));
        PathBuf::from(s)
    }

    /// Appends lines and syncs them (`fdatasync`): one page for a few completions.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            self.file = Some(crate::private::open_append(&self.path)?);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(lines)?;
        f.sync_data()?;
        self.dirty = true;
        Ok(())
    }

    /// Appends lines without syncing them: readers in other processes see them at once (the
    /// page cache is shared); a crash may lose them, which is fine for what they say (a task's
    /// start). A later [`Journal::append`] syncs them with its own.
    fn append_unsynced(&mut self, lines: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            self.file = Some(crate::private::open_append(&self.path)?);
        }
        self.file.as_mut().expect("opened above").write_all(lines)?;
        self.dirty = true;
        Ok(())
    }

    /// Everything journaled is in redb now.
    fn clear(&mut self) {
        if self.dirty {
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
            self.dirty = false;
        }
    }

    fn remove(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("writable", &self.writer.is_some())
            .finish()
    }
}

fn store_err(path: &Path, what: &str) -> impl FnOnce(redb::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::store(context, e)
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
        let path = path.as_ref().to_path_buf();
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
            .map_err(|e| store_err(&path, "cannot open state file")(e.into()))?;
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

        let (tx, rx) = mpsc::channel();
        let thread_db = db.clone();
        let thread_path = path.clone();
        let failure = Failure::default();
        let thread_failure = failure.clone();
        let thread = std::thread::Builder::new()
            .name("picoflow-store".into())
            .spawn(move || Writer::run(&thread_db, &thread_path, rx, &thread_failure))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Store {
            path,
            handle: Handle::ReadWrite(db),
            writer: Some(Writer {
                tx: Mutex::new(tx),
                thread: Some(thread),
                failure,
            }),
        })
    }

    /// Opens the state file for reading only. `Ok(None)` when it does not exist yet (nothing
    /// has run). A file left unclean by a killed writer is repaired first.
    pub fn open_read(path: impl AsRef<Path>) -> Result<Option<Store>> {
        let path = path.as_ref().to_path_buf();
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
            // A device or a FIFO is no state file (and a FIFO would block the open below).
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
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
                    .map_err(|e| store_err(&path, "cannot open state file")(e.into()))?;
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

    fn read(&self) -> Result<ReadTransaction> {
        let r = match &self.handle {
            Handle::ReadWrite(db) => db.begin_read(),
            Handle::ReadOnly(db) => db.begin_read(),
        };
        r.map_err(|e| store_err(&self.path, "cannot read")(e.into()))
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let w = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::Other("the state store was opened read-only".into()))?;
        w.tx.lock()
            .expect("store queue")
            .send(msg)
            .map_err(|_| Error::Other("the state store's writer has stopped".into()))
    }

    /// Waits until everything queued so far is committed to the state file.
    pub fn flush_blocking(&self) -> Result<()> {
        let (tx, rx) = smol::channel::bounded(1);
        self.send(Msg::Commit(tx))?;
        match rx.recv_blocking() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(cannot_record(&self.path, m)),
            Err(_) => Err(Error::Other("the state store's writer has stopped".into())),
        }
    }

    /// Records (or updates) a workflow definition's name, schedule and file. The record is
    /// queued: it is committed with the next execution's start, or within a second.
    pub fn record_workflow(
        &self,
        name: &str,
        schedule: Option<&str>,
        file: Option<&str>,
    ) -> Result<()> {
        self.send(Msg::Workflow(WorkflowRecord {
            name: name.to_string(),
            schedule: schedule.map(String::from),
            file: file.map(String::from),
            updated_at: Utc::now(),
        }))
    }

    /// Every workflow the store knows, by name: those recorded plus those that only appear
    /// in the history.
    pub fn workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let txn = self.read()?;
        let mut out: BTreeMap<String, WorkflowRecord> = BTreeMap::new();
        if let Some(t) = open_ro(&txn, WORKFLOWS, &self.path)? {
            for row in t.iter().map_err(|e| self.err("cannot read")(e.into()))? {
                let (_, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                let rec: WorkflowRecord = decode(v.value(), &self.path)?;
                out.insert(rec.name.clone(), rec);
            }
        }
        if let Some(t) = open_ro(&txn, BY_WORKFLOW, &self.path)? {
            let mut last: Option<String> = None;
            for row in t.iter().map_err(|e| self.err("cannot read")(e.into()))? {
                let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                let (name, _) = key::split(k.value());
                if last.as_deref() != Some(name) {
                    out.entry(name.to_string())
                        .or_insert_with(|| WorkflowRecord {
                            name: name.to_string(),
                            schedule: None,
                            file: None,
                            updated_at: DateTime::<Utc>::MIN_UTC,
                        });
                    last = Some(name.to_string());
                }
            }
        }
        Ok(out.into_values().collect())
    }

    fn err(&self, what: &str) -> impl FnOnce(redb::Error) -> Error {
        store_err(&self.path, what)
    }

    /// One execution by id, or by a unique prefix of at least 4 characters of its id.
    pub fn execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        let txn = self.read()?;
        let Some(t) = open_ro(&txn, EXECUTIONS, &self.path)? else {
            return Ok(None);
        };
        if let Some(v) = t
            .get(id.as_bytes())
            .map_err(|e| self.err("cannot read")(e.into()))?
        {
            return Ok(Some(effective(decode(v.value(), &self.path)?)));
        }
        if id.len() < 4 {
            return Ok(None);
        }
        let mut found = None;
        for row in t
            .range(id.as_bytes()..)
            .map_err(|e| self.err("cannot read")(e.into()))?
        {
            let (k, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
            if !k.value().starts_with(id.as_bytes()) {
                break;
            }
            if found.is_some() {
                return Err(Error::Other(format!(
                    "execution id prefix '{id}' is ambiguous; give more characters"
                )));
            }
            found = Some(effective(decode(v.value(), &self.path)?));
        }
        Ok(found)
    }

    /// Executions matching `filter`, newest first.
    pub fn executions(&self, filter: &HistoryFilter) -> Result<Vec<WorkflowExecution>> {
        let txn = self.read()?;
        let Some(execs) = open_ro(&txn, EXECUTIONS, &self.path)? else {
            return Ok(Vec::new());
        };
        let since = filter.since.map_or(i64::MIN, micros);
        let mut ids: Vec<String> = Vec::new();
        match &filter.workflow {
            Some(wf) => {
                if let Some(t) = open_ro(&txn, BY_WORKFLOW, &self.path)? {
                    let lo = key::workflow_at(wf, since, "");
                    let (_, hi) = key::under(wf);
                    let range = t
                        .range(lo.as_slice()..hi.as_slice())
                        .map_err(|e| self.err("cannot read")(e.into()))?;
                    for row in range.rev() {
                        let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                        let (_, at) = key::split(k.value());
                        ids.push(key::parse_at(at).1.to_string());
                    }
                }
            }
            None => {
                if let Some(t) = open_ro(&txn, BY_TIME, &self.path)? {
                    let lo = key::at(since, "");
                    let range = t
                        .range(lo.as_slice()..)
                        .map_err(|e| self.err("cannot read")(e.into()))?;
                    for row in range.rev() {
                        let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                        ids.push(key::parse_at(k.value()).1.to_string());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for id in ids {
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let Some(v) = execs
                .get(id.as_bytes())
                .map_err(|e| self.err("cannot read")(e.into()))?
            else {
                continue;
            };
            let exec = effective(decode(v.value(), &self.path)?);
            if filter.status.is_none_or(|s| s == exec.status) {
                out.push(exec);
            }
        }
        Ok(out)
    }

    /// The most recent execution of a workflow.
    pub fn latest_execution(&self, workflow: &str) -> Result<Option<WorkflowExecution>> {
        Ok(self
            .executions(&HistoryFilter {
                workflow: Some(workflow.to_string()),
                limit: Some(1),
                ..Default::default()
            })?
            .into_iter()
            .next())
    }

    /// Every attempt of every task of an execution, in start order.
    pub fn task_executions(&self, execution_id: &str) -> Result<Vec<TaskExecution>> {
        self.task_executions_with(execution_id, &journaled(&self.path))
    }

    /// [`Store::task_executions`] with the journals' completions already read, so that a
    /// caller asking for many executions reads the journals once.
    fn task_executions_with(
        &self,
        execution_id: &str,
        journaled: &[TaskExecution],
    ) -> Result<Vec<TaskExecution>> {
        let txn = self.read()?;
        let Some(tasks) = open_ro(&txn, TASKS, &self.path)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let (lo, hi) = key::under(execution_id);
        let range = tasks
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| self.err("cannot read")(e.into()))?;
        for row in range {
            let (_, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
            out.push(decode::<TaskExecution>(v.value(), &self.path)?);
        }
        // Completions still only in a journal (their writer is within its commit window, or
        // died, or its disk is full) are part of the truth.
        for rec in journaled
            .iter()
            .filter(|r| r.workflow_execution_id == execution_id)
        {
            match out.iter_mut().find(|t| t.id == rec.id) {
                Some(t) if !t.status.is_final() => *t = rec.clone(),
                Some(_) => {}
                None => out.push(rec.clone()),
            }
        }
        out.sort_by(|a, b| {
            (a.started_at, a.attempt, &a.task_name).cmp(&(b.started_at, b.attempt, &b.task_name))
        });
        Ok(out)
    }

    /// Executions with their task attempts, newest first (for `stats` and the export).
    pub fn history(
        &self,
        filter: &HistoryFilter,
    ) -> Result<Vec<(WorkflowExecution, Vec<TaskExecution>)>> {
        self.history_with(filter, |_| {})
    }

    /// [`Store::history`] with `trim` applied to each execution's attempts as soon as they
    /// are read, so that a caller keeping only part of them (the web UI keeps the end of each
    /// capture) never holds every execution's whole captures at once.
    pub(crate) fn history_with(
        &self,
        filter: &HistoryFilter,
        mut trim: impl FnMut(&mut Vec<TaskExecution>),
    ) -> Result<Vec<(WorkflowExecution, Vec<TaskExecution>)>> {
        let journaled = journaled(&self.path);
        self.executions(filter)?
            .into_iter()
            .map(|mut e| {
                let mut t = self.task_executions_with(&e.id, &journaled)?;
                trim(&mut t);
                if matches!(
                    e.status,
                    WorkflowStatus::Running | WorkflowStatus::Interrupted
                ) {
                    // An execution that may not have recorded its end counts what its tasks did.
                    let last = last_attempts(&t);
                    e.successful_tasks = last
                        .iter()
                        .filter(|a| a.status == TaskState::Success)
                        .count() as u32;
                    e.failed_tasks = last
                        .iter()
                        .filter(|a| a.status.is_failure() && !a.interrupted())
                        .count() as u32;
                }
                Ok((e, t))
            })
            .collect()
    }

    /// Rewrites executions left `running` by a process that died as `interrupted` (their
    /// running attempts become `failed` with the reason), and returns, per workflow, the
    /// latest execution when it is interrupted — the ones to resume.
    pub fn recover_interrupted(&self) -> Result<Vec<WorkflowExecution>> {
        let Handle::ReadWrite(db) = &self.handle else {
            return Err(Error::Other("the state store was opened read-only".into()));
        };
        // Everything this process queued must land first, or its own runs would look dead.
        if self.writer.is_some() {
            self.flush_blocking()?;
        }
        let txn = db
            .begin_write()
            .map_err(|e| self.err("cannot write")(e.into()))?;
        {
            let mut execs = txn
                .open_table(EXECUTIONS)
                .map_err(|e| self.err("cannot write")(e.into()))?;
            let mut running = txn
                .open_table(RUNNING)
                .map_err(|e| self.err("cannot write")(e.into()))?;
            let mut ids = Vec::new();
            for row in running
                .iter()
                .map_err(|e| self.err("cannot read")(e.into()))?
            {
                let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                ids.push(String::from_utf8_lossy(k.value()).into_owned());
            }
            let mut stale = Vec::new();
            for id in ids {
                let s: Option<Stored> = match execs
                    .get(id.as_bytes())
                    .map_err(|e| self.err("cannot read")(e.into()))?
                {
                    Some(v) => Some(decode(v.value(), &self.path)?),
                    None => None,
                };
                let keep = s
                    .as_ref()
                    .is_some_and(|s| s.exec.status == WorkflowStatus::Running && owner_alive(s));
                if !keep {
                    running
                        .remove(id.as_bytes())
                        .map_err(|e| self.err("cannot write")(e.into()))?;
                }
                if let Some(s) = s.filter(|s| s.exec.status == WorkflowStatus::Running && !keep) {
                    stale.push((id, s));
                }
            }
            let mut tasks = txn
                .open_table(TASKS)
                .map_err(|e| self.err("cannot write")(e.into()))?;
            for (id, mut s) in stale {
                let now = Utc::now();
                let mut unfinished = Vec::new();
                let (lo, hi) = key::under(&id);
                for row in tasks
                    .range(lo.as_slice()..hi.as_slice())
                    .map_err(|e| self.err("cannot read")(e.into()))?
                {
                    let (_, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                    let rec = decode::<TaskExecution>(v.value(), &self.path)?;
                    if !rec.status.is_final() {
                        unfinished.push(rec);
                    }
                }
                for mut rec in unfinished {
                    rec.status = crate::events::TaskState::Failed;
                    rec.finished_at = Some(now);
                    rec.error_message = Some(format!(
                        "{} process {} ended while the task was running",
                        crate::events::INTERRUPTED,
                        s.exec.pid
                    ));
                    tasks
                        .insert(key::pair(&id, &rec.id).as_slice(), encode(&rec).as_slice())
                        .map_err(|e| self.err("cannot write")(e.into()))?;
                }
                s.exec.status = WorkflowStatus::Interrupted;
                tracing::warn!(execution = %id, workflow = %s.exec.workflow_name, pid = s.exec.pid,
                    "execution's process is gone; marked interrupted");
                execs
                    .insert(id.as_bytes(), encode(&s).as_slice())
                    .map_err(|e| self.err("cannot write")(e.into()))?;
            }
        }
        txn.commit()
            .map_err(|e| self.err("cannot commit to")(e.into()))?;
        let mut out = Vec::new();
        for wf in self.workflows()? {
            if let Some(e) = self.latest_execution(&wf.name)? {
                if e.status == WorkflowStatus::Interrupted {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Deletes finished executions (and their attempts) that started before `cutoff`.
    pub fn prune(&self, cutoff: DateTime<Utc>) -> Result<PruneCounts> {
        let Handle::ReadWrite(db) = &self.handle else {
            return Err(Error::Other("the state store was opened read-only".into()));
        };
        if self.writer.is_some() {
            self.flush_blocking()?;
        }
        let txn = db
            .begin_write()
            .map_err(|e| self.err("cannot write")(e.into()))?;
        let mut counts = PruneCounts::default();
        {
            let e = |e: TableError| store_err(&self.path, "cannot write")(e.into());
            let mut by_time = txn.open_table(BY_TIME).map_err(e)?;
            let mut by_wf = txn.open_table(BY_WORKFLOW).map_err(e)?;
            let mut execs = txn.open_table(EXECUTIONS).map_err(e)?;
            let mut tasks = txn.open_table(TASKS).map_err(e)?;
            let mut old = Vec::new();
            let hi = key::at(micros(cutoff), "");
            for row in by_time
                .range(..hi.as_slice())
                .map_err(|e| self.err("cannot read")(e.into()))?
            {
                let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                let (t, id) = key::parse_at(k.value());
                old.push((t, id.to_string()));
            }
            for (t, id) in old {
                let Some(v) = execs
                    .get(id.as_bytes())
                    .map_err(|e| self.err("cannot read")(e.into()))?
                else {
                    continue;
                };
                let s: Stored = decode(v.value(), &self.path)?;
                drop(v);
                if s.exec.status == WorkflowStatus::Running && owner_alive(&s) {
                    continue;
                }
                let mut attempt_keys = Vec::new();
                let (lo, hi) = key::under(&id);
                for row in tasks
                    .range(lo.as_slice()..hi.as_slice())
                    .map_err(|e| self.err("cannot read")(e.into()))?
                {
                    let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                    attempt_keys.push(k.value().to_vec());
                }
                for k in &attempt_keys {
                    tasks
                        .remove(k.as_slice())
                        .map_err(|e| self.err("cannot write")(e.into()))?;
                }
                counts.task_executions += attempt_keys.len();
                execs
                    .remove(id.as_bytes())
                    .map_err(|e| self.err("cannot write")(e.into()))?;
                by_time
                    .remove(key::at(t, &id).as_slice())
                    .map_err(|e| self.err("cannot write")(e.into()))?;
                by_wf
                    .remove(key::workflow_at(&s.exec.workflow_name, t, &id).as_slice())
                    .map_err(|e| self.err("cannot write")(e.into()))?;
                counts.executions += 1;
            }
        }
        txn.commit()
            .map_err(|e| self.err("cannot commit to")(e.into()))?;
        Ok(counts)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(w) = &mut self.writer {
            if let Ok(tx) = w.tx.lock() {
                let _ = tx.send(Msg::Stop);
            }
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn create_tables(db: &Database, path: &Path) -> Result<()> {
    let txn = db
        .begin_write()
        .map_err(|e| store_err(path, "cannot write")(e.into()))?;
    {
        let e = |e: TableError| store_err(path, "cannot create tables in")(e.into());
        txn.open_table(WORKFLOWS).map_err(e)?;
        txn.open_table(EXECUTIONS).map_err(e)?;
        txn.open_table(TASKS).map_err(e)?;
        txn.open_table(BY_WORKFLOW).map_err(e)?;
        txn.open_table(BY_TIME).map_err(e)?;
        txn.open_table(RUNNING).map_err(e)?;
    }
    txn.commit()
        .map_err(|e| store_err(path, "cannot commit to")(e.into()))?;
    Ok(())
}

fn open_ro<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    path: &Path,
) -> Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(store_err(path, "cannot read")(e.into())),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// Encodes an attempt into a buffer sized up front: outputs can be 10 MB each, and letting
/// the buffer double its way there would hold 1.5 to 2.5 times that at its peak.
fn encode_task(r: &TaskExecution) -> Vec<u8> {
    let outputs =
        r.stdout.as_ref().map_or(0, String::len) + r.stderr.as_ref().map_or(0, String::len);
    let mut buf = Vec::with_capacity(outputs + outputs / 8 + 1024);
    serde_json::to_writer(&mut buf, r).expect("records serialise");
    buf
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::store(
            format!("corrupt record in {}", path.display()),
            Box::new(e) as crate::error::BoxError,
        )
    })
}

/// The execution as readers should see it: `running` with a dead owner is `interrupted`.
fn effective(s: Stored) -> WorkflowExecution {
    let mut exec = s.exec.clone();
    if exec.status == WorkflowStatus::Running && !owner_alive(&s) {
        exec.status = WorkflowStatus::Interrupted;
    }
    exec
}

fn owner_alive(s: &Stored) -> bool {
    let pid = s.exec.pid;
    match (s.pid_start, process_start_time(pid)) {
        (Some(recorded), Some(now)) => recorded == now,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

struct StoreSink {
    path: PathBuf,
    tx: Option<Mutex<mpsc::Sender<Msg>>>,
    failure: Failure,
}

/// The state store error for a commit that failed with `cause`, naming the file (exit
/// code 6).
fn cannot_record(path: &Path, cause: String) -> Error {
    Error::store(format!("cannot record state in {}", path.display()), cause)
}

impl EventSink for StoreSink {
    fn on_event(&self, event: &Event) {
        let Some(tx) = &self.tx else {
            tracing::error!("event not recorded: the state store is read-only");
            return;
        };
        // The writer thread adds this process's start time to the engine's `pid`, which
        // makes the owner unambiguous after pid reuse.
        let msg = match event {
            Event::WorkflowStarted(e) | Event::WorkflowFinished(e) => Msg::Execution(e.clone()),
            Event::TaskStarted(r)
            | Event::TaskSkipped(r)
            | Event::TaskFinished { record: r, .. } => Msg::Task {
                id: r.id.clone(),
                execution: r.workflow_execution_id.clone(),
                json: encode_task(r),
                start: matches!(event, Event::TaskStarted(_)),
                journal: Some(journal_line(r)),
            },
        };
        let _ = tx.lock().expect("store queue").send(msg);
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(tx) = &self.tx else {
                return Err(Error::Other("the state store was opened read-only".into()));
            };
            let (done_tx, done_rx) = smol::channel::bounded(1);
            tx.lock()
                .expect("store queue")
                .send(Msg::Flush(done_tx))
                .map_err(|_| Error::Other("the state store's writer has stopped".into()))?;
            match done_rx.recv().await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(m)) => Err(cannot_record(&self.path, m)),
                Err(_) => Err(Error::Other("the state store's writer has stopped".into())),
            }
        })
    }

    fn check(&self) -> Result<()> {
        match self.failure.lock().expect("store failure").clone() {
            Some(m) => Err(cannot_record(&self.path, m)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSink").finish_non_exhaustive()
    }
}

impl Writer {
    /// The writer thread: queues records, journals completions on a flush, commits to redb
    /// when a window closes or an execution ends, and acknowledges waiters.
    fn run(db: &Database, path: &Path, rx: mpsc::Receiver<Msg>, failure: &Failure) {
        use std::time::Instant;
        let pid_start = process_start_time(std::process::id());
        let mut journal = Journal {
            path: Journal::path_for(path, std::process::id(), pid_start.unwrap_or(0)),
            file: None,
            dirty: false,
        };
        let mut pending: Vec<Msg> = Vec::new();
        let mut unjournaled: Vec<u8> = Vec::new();
        let mut deadline: Option<Instant> = None;
        // What a flush answers once a commit has failed: the first failure, for good.
        let failed = || failure.lock().expect("store failure").clone();
        loop {
            let msg = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let mut commit_now = false;
            let mut stop = false;
            let mut acks = Vec::new();
            match msg {
                Ok(Msg::Flush(tx)) => {
                    if !unjournaled.is_empty() {
                        if let Err(e) = journal.append(&unjournaled) {
                            // No journal (read-only directory, disk full): commit instead.
                            tracing::warn!(error = %e, path = %journal.path.display(), "cannot write the journal; committing directly");
                            acks.push(tx);
                            commit_now = true;
                        } else {
                            unjournaled.clear();
                            let _ = tx.send_blocking(failed().map_or(Ok(()), Err));
                        }
                    } else {
                        let _ = tx.send_blocking(failed().map_or(Ok(()), Err));
                    }
                }
                Ok(Msg::Commit(tx)) => {
                    acks.push(tx);
                    commit_now = true;
                }
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    commit_now = true;
                    stop = true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => commit_now = true,
                Ok(m) => {
                    let window = match &m {
                        Msg::Task { start: true, .. } => START_COMMIT_WINDOW,
                        // An execution's start and end are committed at once (one commit each
                        // per run): readers in other processes and crash recovery must know
                        // the execution exists.
                        Msg::Execution(_) => {
                            commit_now = true;
                            GROUP_COMMIT_WINDOW
                        }
                        _ => GROUP_COMMIT_WINDOW,
                    };
                    match &m {
                        // A start is written to the journal at once, unsynced, so that
                        // `status` in another process shows the task running now rather than
                        // when the start is committed.
                        Msg::Task {
                            journal: Some(line),
                            start: true,
                            ..
                        } => {
                            if let Err(e) = journal.append_unsynced(line) {
                                tracing::debug!(error = %e, "cannot journal a task's start");
                            }
                        }
                        Msg::Task {
                            journal: Some(line),
                            ..
                        } => unjournaled.extend_from_slice(line),
                        _ => {}
                    }
                    let d = Instant::now() + window;
                    deadline = Some(deadline.map_or(d, |old| old.min(d)));
                    pending.push(m);
                }
            }
            if commit_now {
                let result = if pending.is_empty() {
                    Ok(())
                } else {
                    tracing::trace!(records = pending.len(), "committing state");
                    commit(db, &pending, pid_start).map_err(|e| {
                        tracing::error!(path = %path.display(), error = %e, "cannot record state");
                        e.to_string()
                    })
                };
                if result.is_ok() {
                    pending.clear();
                    unjournaled.clear();
                    journal.clear();
                    deadline = None;
                } else {
                    // The first failure is the cause (later ones say "Previous I/O error").
                    failure
                        .lock()
                        .expect("store failure")
                        .get_or_insert_with(|| result.clone().unwrap_err());
                    // Try again later rather than spin.
                    deadline = Some(Instant::now() + GROUP_COMMIT_WINDOW);
                }
                for tx in acks {
                    let _ = tx.send_blocking(result.clone());
                }
            }
            if stop {
                if pending.is_empty() {
                    journal.remove();
                }
                return;
            }
        }
    }
}

/// A journal line: the completed attempt without its captured output (which can be 10 MB).
fn journal_line(r: &TaskExecution) -> Vec<u8> {
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
fn read_journal(jpath: &Path) -> Result<Vec<TaskExecution>> {
    let text = std::fs::read(jpath).map_err(|e| Error::io(jpath, e))?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// Every completion in the journals beside the state file, of live writers and dead ones
/// (a journal that vanishes while being read has been committed meanwhile).
fn journaled(path: &Path) -> Vec<TaskExecution> {
    journals(path)
        .into_iter()
        .flat_map(|(j, _)| read_journal(&j).unwrap_or_default())
        .collect()
}

/// Replays the journals of processes that died into redb, then deletes them. Records already
/// committed in their final state are left alone, so replaying twice does no harm.
fn replay_journals(db: &Database, path: &Path) -> Result<()> {
    for (jpath, alive) in journals(path) {
        if alive {
            continue; // Its writer is alive and will commit it.
        }
        let records = read_journal(&jpath)?;
        if !records.is_empty() {
            let err = |e: redb::Error| store_err(path, "cannot replay the journal into")(e);
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
                for rec in &records {
                    let key = key::pair(&rec.workflow_execution_id, &rec.id);
                    let key = key.as_slice();
                    let current = tasks
                        .get(key)
                        .map_err(|e| err(e.into()))?
                        .and_then(|v| serde_json::from_slice::<TaskExecution>(v.value()).ok());
                    if current.is_some_and(|c| c.status.is_final()) {
                        continue;
                    }
                    tasks
                        .insert(key, encode(rec).as_slice())
                        .map_err(|e| err(e.into()))?;
                }
            }
            txn.commit().map_err(|e| err(e.into()))?;
            tracing::info!(journal = %jpath.display(), records = records.len(), "replayed the journal of a process that ended");
        }
        let _ = std::fs::remove_file(&jpath);
    }
    Ok(())
}

fn commit(
    db: &Database,
    work: &[Msg],
    pid_start: Option<u64>,
) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut workflows = txn.open_table(WORKFLOWS)?;
        let mut execs = txn.open_table(EXECUTIONS)?;
        let mut tasks = txn.open_table(TASKS)?;
        let mut by_wf = txn.open_table(BY_WORKFLOW)?;
        let mut by_time = txn.open_table(BY_TIME)?;
        let mut running = txn.open_table(RUNNING)?;
        for m in work {
            match m {
                Msg::Workflow(rec) => {
                    workflows.insert(rec.name.as_bytes(), encode(rec).as_slice())?;
                }
                Msg::Execution(e) => {
                    let t = micros(e.started_at);
                    let stored = Stored {
                        exec: e.clone(),
                        pid_start,
                    };
                    execs.insert(e.id.as_bytes(), encode(&stored).as_slice())?;
                    by_wf.insert(
                        key::workflow_at(&e.workflow_name, t, &e.id).as_slice(),
                        &[][..],
                    )?;
                    by_time.insert(key::at(t, &e.id).as_slice(), &[][..])?;
                    if e.status == WorkflowStatus::Running {
                        running.insert(e.id.as_bytes(), &[][..])?;
                    } else {
                        running.remove(e.id.as_bytes())?;
                    }
                }
                Msg::Task {
                    id,
                    execution,
                    json,
                    ..
                } => {
                    tasks.insert(key::pair(execution, id).as_slice(), json.as_slice())?;
                }
                Msg::Flush(_) | Msg::Commit(_) | Msg::Stop => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskState;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "picoflow-store-{name}-{}-{}",
            std::process::id(),
            crate::new_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.redb")
    }

    fn exec(wf: &str, id: &str, at: &str) -> WorkflowExecution {
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

    fn task(exec: &str, id: &str, name: &str, status: TaskState) -> TaskExecution {
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

    #[test]
    fn history_filters_and_order() {
        let path = temp("filter");
        let store = Store::open(&path).unwrap();
        let sink = store.sink();
        for (wf, id, at, st) in [
            ("a", "1", "2026-11-20T10:00:00Z", WorkflowStatus::Success),
            ("b", "2", "2026-11-21T10:00:00Z", WorkflowStatus::Failed),
            ("a", "3", "2026-11-22T10:00:00Z", WorkflowStatus::Failed),
            ("a", "4", "2026-11-23T10:00:00Z", WorkflowStatus::Success),
        ] {
            let mut e = exec(wf, id, at);
            e.status = st;
            sink.on_event(&Event::WorkflowFinished(e));
        }
        smol::block_on(sink.flush()).unwrap();
        let ids = |f: HistoryFilter| -> Vec<String> {
            store
                .executions(&f)
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids(HistoryFilter::default()), ["4", "3", "2", "1"]);
        assert_eq!(
            ids(HistoryFilter {
                workflow: Some("a".into()),
                ..Default::default()
            }),
            ["4", "3", "1"]
        );
        assert_eq!(
            ids(HistoryFilter {
                status: Some(WorkflowStatus::Failed),
                ..Default::default()
            }),
            ["3", "2"]
        );
        assert_eq!(
            ids(HistoryFilter {
                since: Some("2026-11-21T00:00:00Z".parse().unwrap()),
                limit: Some(2),
                ..Default::default()
            }),
            ["4", "3"]
        );
        let counts = store
            .prune("2026-11-22T00:00:00Z".parse().unwrap())
            .unwrap();
        assert_eq!(counts.executions, 2);
        assert_eq!(ids(HistoryFilter::default()), ["4", "3"]);
    }

    #[test]
    fn dead_owner_is_interrupted() {
        let path = temp("dead");
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
        // Our own run is alive.
        assert_eq!(
            store.latest_execution("a").unwrap().unwrap().status,
            WorkflowStatus::Running
        );
        // Pretend another process owned it: rewrite with a recorded start time that cannot match.
        if let Handle::ReadWrite(db) = &store.handle {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EXECUTIONS).unwrap();
                let s = Stored {
                    exec: exec("a", "e1", "2026-11-20T10:00:00Z"),
                    pid_start: Some(1),
                };
                t.insert(&b"e1"[..], encode(&s).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(
            store.latest_execution("a").unwrap().unwrap().status,
            WorkflowStatus::Interrupted
        );
        let resumable = store.recover_interrupted().unwrap();
        assert_eq!(resumable.len(), 1);
        let tasks = store.task_executions("e1").unwrap();
        assert_eq!(tasks[0].status, TaskState::Failed);
        assert!(tasks[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("interrupted"));
    }

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

    #[test]
    fn composite_keys_sort_like_their_parts() {
        // Times sort as numbers, negative ones included, then by id.
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        for w in times.windows(2) {
            assert!(key::at(w[0], "z") < key::at(w[1], "a"), "{w:?}");
        }
        assert!(key::at(7, "a") < key::at(7, "b"));
        assert_eq!(key::parse_at(&key::at(-42, "id-1")), (-42, "id-1"));
        // A name sorts before a longer name it starts, whatever follows.
        assert!(key::workflow_at("a", i64::MAX, "z") < key::workflow_at("ab", i64::MIN, "a"));
        assert!(key::pair("exec", "zzz") < key::pair("exec-2", ""));
        let (lo, hi) = key::under("exec");
        let inside = key::pair("exec", "attempt");
        assert!(lo <= inside && inside < hi);
        assert!(!(lo <= key::pair("exec-2", "x") && key::pair("exec-2", "x") < hi));
        let k = key::workflow_at("backup", 3, "e9");
        let (name, rest) = key::split(&k);
        assert_eq!((name, key::parse_at(rest)), ("backup", (3, "e9")));
    }
}
