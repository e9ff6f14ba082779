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
//! # Grouped commits off the task pipeline
//! A [`Store`] that writes owns one writer thread. Engine events are queued to it and it
//! commits everything queued since its last commit in one transaction, so an SD card's slow
//! `fsync` is paid once per group, not once per event, and never on the engine's executor.
//! Commits happen in event order: a task's start is never durable before the completion of a
//! task it depends on. [`EventSink::flush`] resolves once everything queued before it is
//! durable; the engine awaits it when an execution ends.
//!
//! # Crash recovery
//! Each execution records the process id and that process's start time (from `/proc`). An
//! execution marked `running` whose process no longer exists — or whose pid now belongs to a
//! different process — is reported as `interrupted` by every reader and rewritten as such by
//! [`Store::recover_interrupted`]. `picoflow run --resume` and the daemon continue it:
//! finished tasks are kept, and the task that was running when the process died runs again
//! (at-least-once for that task).
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
use crate::events::{Event, EventSink, TaskExecution, WorkflowExecution, WorkflowStatus};
use crate::executor::BoxFuture;

/// Workflow name → [`WorkflowRecord`] (JSON).
const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
/// Execution id → stored execution (JSON).
const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflow_executions");
/// (execution id, task attempt id) → [`TaskExecution`] (JSON). Keyed by execution so that
/// one table (one B-tree path) changes per task event: SD cards pay per page written.
const TASKS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("task_executions");
/// (workflow, start in µs, execution id): executions of a workflow in start order.
const BY_WORKFLOW: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("executions_by_workflow");
/// (start in µs, execution id): all executions in start order.
const BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("executions_by_time");

/// Execution id → (): executions recorded as running, so recovery need not scan history.
const RUNNING: TableDefinition<&str, ()> = TableDefinition::new("running_executions");

/// How long the writer waits for more events before committing. Every commit of a
/// multi-process redb file writes about ten 4 KiB pages (data, system tree, allocator state,
/// two headers) and two fsyncs, whatever it carries; sharing commits is what keeps bytes
/// written per task low on an SD card. A crash loses at most this window of events, which
/// only means the affected task runs again on resume.
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// A batch holding only starts (of tasks or executions) waits longer: a start matters to
/// readers in other processes (`status`) but not to crash recovery, which re-runs any task
/// whose end is not recorded. A task shorter than this costs one commit instead of two.
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
        /// A start (rather than an end) may wait longer for company; see `writer_loop`.
        start: bool,
    },
    Workflow(WorkflowRecord),
    Flush(smol::channel::Sender<std::result::Result<(), String>>),
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

impl Store {
    /// Opens (or creates) the state file for reading and writing, repairing it if a writer
    /// died, and starts the writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let db = builder(WRITER_CACHE_BYTES)
            .create(&path)
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

        let (tx, rx) = mpsc::channel();
        let thread_db = db.clone();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("picoflow-store".into())
            .spawn(move || writer_loop(&thread_db, &thread_path, rx))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Store {
            path,
            handle: Handle::ReadWrite(db),
            writer: Some(Writer {
                tx: Mutex::new(tx),
                thread: Some(thread),
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
            tx: self
                .writer
                .as_ref()
                .map(|w| Mutex::new(w.tx.lock().expect("store queue").clone())),
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

    /// Waits until everything queued so far is durable.
    pub fn flush_blocking(&self) -> Result<()> {
        let (tx, rx) = smol::channel::bounded(1);
        self.send(Msg::Flush(tx))?;
        match rx.recv_blocking() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(Error::Other(m)),
            Err(_) => Err(Error::Other("the state store's writer has stopped".into())),
        }
    }

    /// Records (or updates) a workflow definition's name, schedule and file.
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
        }))?;
        self.flush_blocking()
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
                let name = k.value().0;
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
        if let Some(v) = t.get(id).map_err(|e| self.err("cannot read")(e.into()))? {
            return Ok(Some(effective(decode(v.value(), &self.path)?)));
        }
        if id.len() < 4 {
            return Ok(None);
        }
        let mut found = None;
        for row in t
            .range(id..)
            .map_err(|e| self.err("cannot read")(e.into()))?
        {
            let (k, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
            if !k.value().starts_with(id) {
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
                    let range = t
                        .range((wf.as_str(), since, "")..(wf.as_str(), i64::MAX, "\u{10ffff}"))
                        .map_err(|e| self.err("cannot read")(e.into()))?;
                    for row in range.rev() {
                        let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                        ids.push(k.value().2.to_string());
                    }
                }
            }
            None => {
                if let Some(t) = open_ro(&txn, BY_TIME, &self.path)? {
                    let range = t
                        .range((since, "")..(i64::MAX, "\u{10ffff}"))
                        .map_err(|e| self.err("cannot read")(e.into()))?;
                    for row in range.rev() {
                        let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                        ids.push(k.value().1.to_string());
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
                .get(id.as_str())
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
        let txn = self.read()?;
        let Some(tasks) = open_ro(&txn, TASKS, &self.path)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let range = tasks
            .range((execution_id, "")..=(execution_id, "\u{10ffff}"))
            .map_err(|e| self.err("cannot read")(e.into()))?;
        for row in range {
            let (_, v) = row.map_err(|e| self.err("cannot read")(e.into()))?;
            out.push(decode::<TaskExecution>(v.value(), &self.path)?);
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
        self.executions(filter)?
            .into_iter()
            .map(|e| {
                let t = self.task_executions(&e.id)?;
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
                ids.push(k.value().to_string());
            }
            let mut stale = Vec::new();
            for id in ids {
                let s: Option<Stored> = match execs
                    .get(id.as_str())
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
                        .remove(id.as_str())
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
                for row in tasks
                    .range((id.as_str(), "")..=(id.as_str(), "\u{10ffff}"))
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
                        .insert((id.as_str(), rec.id.as_str()), encode(&rec).as_slice())
                        .map_err(|e| self.err("cannot write")(e.into()))?;
                }
                s.exec.status = WorkflowStatus::Interrupted;
                tracing::warn!(execution = %id, workflow = %s.exec.workflow_name, pid = s.exec.pid,
                    "execution's process is gone; marked interrupted");
                execs
                    .insert(id.as_str(), encode(&s).as_slice())
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
            for row in by_time
                .range((i64::MIN, "")..(micros(cutoff), ""))
                .map_err(|e| self.err("cannot read")(e.into()))?
            {
                let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                let (t, id) = k.value();
                old.push((t, id.to_string()));
            }
            for (t, id) in old {
                let Some(v) = execs
                    .get(id.as_str())
                    .map_err(|e| self.err("cannot read")(e.into()))?
                else {
                    continue;
                };
                let s: Stored = decode(v.value(), &self.path)?;
                drop(v);
                if s.exec.status == WorkflowStatus::Running && owner_alive(&s) {
                    continue;
                }
                let mut attempt_ids = Vec::new();
                for row in tasks
                    .range((id.as_str(), "")..=(id.as_str(), "\u{10ffff}"))
                    .map_err(|e| self.err("cannot read")(e.into()))?
                {
                    let (k, _) = row.map_err(|e| self.err("cannot read")(e.into()))?;
                    attempt_ids.push(k.value().1.to_string());
                }
                for tid in &attempt_ids {
                    tasks
                        .remove((id.as_str(), tid.as_str()))
                        .map_err(|e| self.err("cannot write")(e.into()))?;
                }
                counts.task_executions += attempt_ids.len();
                execs
                    .remove(id.as_str())
                    .map_err(|e| self.err("cannot write")(e.into()))?;
                by_time
                    .remove((t, id.as_str()))
                    .map_err(|e| self.err("cannot write")(e.into()))?;
                by_wf
                    .remove((s.exec.workflow_name.as_str(), t, id.as_str()))
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

/// Start time of a process in clock ticks since boot, or `None` if it does not exist.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3; the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

struct StoreSink {
    tx: Option<Mutex<mpsc::Sender<Msg>>>,
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
                json: encode(r),
                start: matches!(event, Event::TaskStarted(_)),
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
                Ok(Err(m)) => Err(Error::Other(m)),
                Err(_) => Err(Error::Other("the state store's writer has stopped".into())),
            }
        })
    }
}

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSink").finish_non_exhaustive()
    }
}

/// The writer thread: takes everything queued, commits it in one transaction, acknowledges
/// the flushes that were waiting for it, repeats.
fn writer_loop(db: &Database, path: &Path, rx: mpsc::Receiver<Msg>) {
    let pid_start = process_start_time(std::process::id());
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { return };
        // Linger briefly so that a burst of events shares one commit; a flush (the end of an
        // execution, or a caller that must see its data on disk) ends the wait at once.
        let window = |m: &Msg| match m {
            Msg::Task { start: true, .. } => START_COMMIT_WINDOW,
            Msg::Execution(e) if e.status == WorkflowStatus::Running => START_COMMIT_WINDOW,
            _ => GROUP_COMMIT_WINDOW,
        };
        let mut deadline = std::time::Instant::now() + window(&first);
        let mut urgent = matches!(first, Msg::Flush(_) | Msg::Stop);
        let mut batch = vec![first];
        while !urgent {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => {
                    urgent = matches!(m, Msg::Flush(_) | Msg::Stop);
                    deadline = deadline.min(std::time::Instant::now() + window(&m));
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let mut waiting = Vec::new();
        let mut work = Vec::new();
        for m in batch {
            match m {
                Msg::Flush(tx) => waiting.push(tx),
                Msg::Stop => stop = true,
                other => work.push(other),
            }
        }
        let result = if work.is_empty() {
            Ok(())
        } else {
            tracing::trace!(records = work.len(), "committing state");
            commit(db, &work, pid_start).map_err(|e| {
                let msg = format!("cannot record state in {}: {e}", path.display());
                tracing::error!("{msg}");
                msg
            })
        };
        for w in waiting {
            let _ = w.send_blocking(result.clone());
        }
    }
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
                    workflows.insert(rec.name.as_str(), encode(rec).as_slice())?;
                }
                Msg::Execution(e) => {
                    let t = micros(e.started_at);
                    let stored = Stored {
                        exec: e.clone(),
                        pid_start,
                    };
                    execs.insert(e.id.as_str(), encode(&stored).as_slice())?;
                    by_wf.insert((e.workflow_name.as_str(), t, e.id.as_str()), ())?;
                    by_time.insert((t, e.id.as_str()), ())?;
                    if e.status == WorkflowStatus::Running {
                        running.insert(e.id.as_str(), ())?;
                    } else {
                        running.remove(e.id.as_str())?;
                    }
                }
                Msg::Task {
                    id,
                    execution,
                    json,
                    ..
                } => {
                    tasks.insert((execution.as_str(), id.as_str()), json.as_slice())?;
                }
                Msg::Flush(_) | Msg::Stop => {}
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
            fastrand::u32(..)
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
            attempt: 1,
            error_message: None,
            duration_seconds: None,
            created_at: t,
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
        smol::block_on(sink.flush()).unwrap();
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
                t.insert("e1", encode(&s).as_slice()).unwrap();
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
    fn process_start_time_identifies_this_process() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX - 1).is_none());
    }
}
