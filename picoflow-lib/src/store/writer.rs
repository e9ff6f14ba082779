//! The writer thread: it takes the engine's events from a queue, holds them in a [`Batch`]
//! that decides when to commit, journals completions when the engine flushes, commits to
//! redb, and acknowledges waiters. [`StoreSink`] is the engine's side of the queue.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redb::Database;

use crate::error::{Error, Result};
use crate::events::{Event, EventSink, WorkflowStatus};
use crate::executor::BoxFuture;
use crate::proc::process_start_time;

use super::batch::{Attempt, Batch, Record};
use super::journal::{journal_line, Journal};
use super::queue::{self, RecvTimeoutError};
use super::schema::{
    encode, encode_task, key, micros, Stored, BY_TIME, BY_WORKFLOW, EXECUTIONS, RUNNING, TASKS,
    WORKFLOWS,
};

/// Where a waiter is told that its flush or commit is done, or why it failed.
pub(super) type Ack = smol::channel::Sender<std::result::Result<(), String>>;

/// What the writer thread is sent.
pub(super) enum Msg {
    /// A record to commit.
    Record(Record),
    /// Durable (journal) and acknowledged.
    Flush(Ack),
    /// Committed to redb (visible to other processes) and acknowledged.
    Commit(Ack),
    /// The store closes: commit what is held, then end.
    Stop,
}

/// The first failure of the writer thread, shared with every sink of the store.
pub(super) type Failure = Arc<Mutex<Option<String>>>;

/// A store's handle on its writer thread.
pub(super) struct Writer {
    pub(super) tx: Mutex<queue::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first commit that failed, once one has (REL-003): no task starts after it.
    pub(super) failure: Failure,
}

impl Writer {
    /// Starts the writer thread of the state file `path`, open as `db`.
    pub(super) fn start(db: Arc<Database>, path: &Path) -> Result<Writer> {
        let (tx, rx) = queue::channel();
        let thread_path = path.to_path_buf();
        let failure = Failure::default();
        let thread_failure = failure.clone();
        let thread = crate::threads::spawn(
            "picoflow-store".into(),
            Box::new(move || Worker::new(&db, &thread_path, &thread_failure).run(&rx)),
        )
        .map_err(|e| Error::io(path, e))?;
        Ok(Writer {
            tx: Mutex::new(tx),
            thread: Some(thread),
            failure,
        })
    }

    /// Commits what is queued and waits for the thread to end.
    pub(super) fn stop(&mut self) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's state, with a method per kind of message.
struct Worker<'a> {
    db: &'a Database,
    path: &'a Path,
    /// This process's start time, recorded with each execution it writes.
    pid_start: Option<u64>,
    journal: Journal,
    batch: Batch,
    failure: &'a Failure,
}

/// What the loop does after a message.
enum Next {
    Wait,
    /// Commit, then tell these waiters how it went.
    Commit(Vec<Ack>),
    /// Commit, then end.
    Stop,
}

impl<'a> Worker<'a> {
    fn new(db: &'a Database, path: &'a Path, failure: &'a Failure) -> Worker<'a> {
        let pid_start = process_start_time(std::process::id());
        Worker {
            db,
            path,
            pid_start,
            journal: Journal::new(path, std::process::id(), pid_start.unwrap_or(0)),
            batch: Batch::default(),
            failure,
        }
    }

    /// Handles messages until the store closes (or every sender is gone), committing when the
    /// batch's deadline passes with no message.
    fn run(mut self, rx: &queue::Receiver<Msg>) {
        loop {
            let msg = rx.recv(self.batch.deadline());
            let next = match msg {
                Ok(Msg::Record(r)) => self.add(r),
                Ok(Msg::Flush(ack)) => self.flush(ack),
                Ok(Msg::Commit(ack)) => Next::Commit(vec![ack]),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => Next::Stop,
                Err(RecvTimeoutError::Timeout) => Next::Commit(Vec::new()),
            };
            match next {
                Next::Wait => {}
                Next::Commit(acks) => self.commit(acks),
                Next::Stop => {
                    self.commit(Vec::new());
                    // A journal holding what could not be committed stays for the next
                    // writer to replay.
                    if self.batch.records().is_empty() {
                        self.journal.remove();
                    }
                    return;
                }
            }
        }
    }

    /// Takes a record into the batch; a task's start is journaled at once, unsynced, so
    /// that readers in other processes see the task running.
    fn add(&mut self, record: Record) -> Next {
        let added = self.batch.add(record, Instant::now());
        if let Some(line) = added.journal_unsynced {
            if let Err(e) = self.journal.append_unsynced(&line) {
                tracing::debug!(error = %e, "cannot journal a task's start");
            }
        }
        if added.commit {
            Next::Commit(Vec::new())
        } else {
            Next::Wait
        }
    }

    /// Makes the completions queued so far durable in the journal and acknowledges at once,
    /// or, when the journal cannot be written, commits them and acknowledges after.
    fn flush(&mut self, ack: Ack) -> Next {
        if let Some(lines) = self.batch.to_sync() {
            if let Err(e) = self.journal.append(lines) {
                // No journal (read-only directory, disk full): commit instead.
                tracing::warn!(error = %e, path = %self.journal.path.display(), "cannot write the journal; committing directly");
                return Next::Commit(vec![ack]);
            }
            self.batch.synced();
        }
        // Once a commit has failed, a flush answers with the first failure, for good.
        let failed = self.failure.lock().expect("store failure").clone();
        let _ = ack.send_blocking(failed.map_or(Ok(()), Err));
        Next::Wait
    }

    /// Commits the batch (if it holds anything) and tells `acks` how it went.
    fn commit(&mut self, acks: Vec<Ack>) {
        let records = self.batch.records();
        let result = if records.is_empty() {
            Ok(())
        } else {
            tracing::trace!(records = records.len(), "committing state");
            commit(self.db, records, self.pid_start).map_err(|e| {
                tracing::error!(path = %self.path.display(), error = %e, "cannot record state");
                e.to_string()
            })
        };
        match &result {
            Ok(()) => {
                self.batch.committed();
                self.journal.clear();
            }
            Err(e) => {
                // The first failure is the cause (later ones say "Previous I/O error").
                self.failure
                    .lock()
                    .expect("store failure")
                    .get_or_insert_with(|| e.clone());
                self.batch.commit_failed(Instant::now());
            }
        }
        for ack in acks {
            let _ = ack.send_blocking(result.clone());
        }
    }
}

/// Writes `records` to redb in one transaction; each execution carries this process's start
/// time `pid_start`.
fn commit(
    db: &Database,
    records: &[Record],
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
        for r in records {
            match r {
                Record::Workflow(rec) => {
                    workflows.insert(rec.name.as_bytes(), encode(rec).as_slice())?;
                }
                Record::Execution(e) => {
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
                Record::Task(a) => {
                    tasks.insert(key::pair(&a.execution, &a.id).as_slice(), a.json.as_slice())?;
                }
            }
        }
    }
    super::outbox::mark(
        &txn,
        records.iter().filter_map(|r| match r {
            Record::Workflow(_) => None,
            Record::Execution(e) => Some(e.id.as_str()),
            Record::Task(a) => Some(a.execution.as_str()),
        }),
    )?;
    txn.commit()?;
    Ok(())
}

/// The engine's side of the writer's queue (see [`Store::sink`](super::Store::sink)).
pub(super) struct StoreSink {
    pub(super) path: PathBuf,
    /// `None` when the store was opened read-only.
    pub(super) tx: Option<Mutex<queue::Sender<Msg>>>,
    pub(super) failure: Failure,
}

/// The state store error for a commit that failed with `cause`, naming the file (exit
/// code 6).
pub(super) fn cannot_record(path: &Path, cause: String) -> Error {
    Error::store(format!("cannot record state in {}", path.display()), cause)
}

/// The error of a message to a writer thread that has ended.
pub(super) fn writer_stopped() -> Error {
    Error::Other("the state store's writer has stopped".into())
}

/// The error of a write to a store opened read-only.
pub(super) fn read_only() -> Error {
    Error::Other("the state store was opened read-only".into())
}

/// What a waiter makes of the writer's answer to its flush or commit.
pub(super) fn acknowledged(
    path: &Path,
    answer: std::result::Result<std::result::Result<(), String>, smol::channel::RecvError>,
) -> Result<()> {
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(m)) => Err(cannot_record(path, m)),
        Err(_) => Err(writer_stopped()),
    }
}

impl EventSink for StoreSink {
    fn on_event(&self, event: &Event) {
        let Some(tx) = &self.tx else {
            tracing::error!("event not recorded: the state store is read-only");
            return;
        };
        // The writer thread adds this process's start time to the engine's `pid`, which
        // makes the owner unambiguous after pid reuse.
        let record = match event {
            Event::WorkflowStarted(e) | Event::WorkflowFinished(e) => Record::Execution(e.clone()),
            Event::TaskStarted(r)
            | Event::TaskSkipped(r)
            | Event::TaskFinished { record: r, .. } => Record::Task(Attempt {
                id: r.id.clone(),
                execution: r.workflow_execution_id.clone(),
                json: encode_task(r),
                start: matches!(event, Event::TaskStarted(_)),
                journal: journal_line(r),
            }),
        };
        let _ = tx.lock().expect("store queue").send(Msg::Record(record));
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let tx = self.tx.as_ref().ok_or_else(read_only)?;
            let (done_tx, done_rx) = smol::channel::bounded(1);
            tx.lock()
                .expect("store queue")
                .send(Msg::Flush(done_tx))
                .map_err(|_| writer_stopped())?;
            acknowledged(&self.path, done_rx.recv().await)
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
