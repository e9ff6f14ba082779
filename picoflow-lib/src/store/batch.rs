//! When the writer thread commits, and what it journals meanwhile: a pure policy over the
//! records it holds and the clock it is given, with no database and no files.
//!
//! - An execution's start or end is committed at once: readers in other processes and crash
//!   recovery must know the execution exists (one commit each per run).
//! - Anything else waits for company: a task's end (or a workflow record) at most
//!   [`GROUP_COMMIT_WINDOW`], a batch of task starts alone at most [`START_COMMIT_WINDOW`].
//! - A task's start is written to the journal at once, unsynced, so that `status` in another
//!   process shows the task running now rather than when the start is committed.
//! - A task's end is journaled, and synced, when a flush asks for it.
//! - Whatever is held is also committed when the writer is asked to
//!   ([`Store::flush_blocking`](super::Store::flush_blocking)) and when the store closes; the
//!   engine's flush only syncs the journal (and commits when the journal cannot be written).
//! - A failed commit keeps every record and tries again one window later rather than spin.
use std::time::{Duration, Instant};

use crate::events::WorkflowExecution;

use super::WorkflowRecord;

/// How long completed work may wait in the journal before it is committed to redb. Every
/// commit of a multi-process redb file writes about ten 4 KiB pages (data, system tree,
/// allocator state, headers) and syncs twice, whatever it carries; a journal append writes
/// one page. Readers in other processes see completions at most this late.
pub(super) const GROUP_COMMIT_WINDOW: Duration = Duration::from_secs(1);

/// A batch holding only task starts waits longer: a start matters to
/// readers in other processes (`status`) but not to crash recovery, which re-runs any task
/// whose end is not recorded. A task shorter than this costs no commit of its own.
pub(super) const START_COMMIT_WINDOW: Duration = Duration::from_secs(2);

/// One record queued for the state file.
pub(super) enum Record {
    /// A workflow execution's start or end.
    Execution(WorkflowExecution),
    /// A task attempt's start, skip or end.
    Task(Attempt),
    /// A workflow definition's name, schedule and file.
    Workflow(WorkflowRecord),
}

/// A task attempt, already encoded by the engine's thread (outputs can be 10 MB: encoding
/// there avoids holding a second copy of the record in the queue).
pub(super) struct Attempt {
    pub(super) id: String,
    pub(super) execution: String,
    pub(super) json: Vec<u8>,
    /// A start (rather than an end) may wait longer for company.
    pub(super) start: bool,
    /// Its journal line (the record without its output); the batch takes it when the record
    /// arrives.
    pub(super) journal: Vec<u8>,
}

/// What the writer must do at once with a record the batch just took.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Added {
    /// Commit everything held now.
    pub(super) commit: bool,
    /// A task start's journal line, to write now without a sync.
    pub(super) journal_unsynced: Option<Vec<u8>>,
}

/// The records not yet committed, the journal lines not yet synced, and when the records
/// must be committed at the latest.
#[derive(Default)]
pub(super) struct Batch {
    records: Vec<Record>,
    unsynced: Vec<u8>,
    deadline: Option<Instant>,
}

impl Batch {
    /// Takes `record`, which arrived at `now`.
    pub(super) fn add(&mut self, mut record: Record, now: Instant) -> Added {
        let mut added = Added::default();
        let window = match &mut record {
            Record::Execution(_) => {
                added.commit = true;
                GROUP_COMMIT_WINDOW
            }
            Record::Task(a) if a.start => {
                added.journal_unsynced = Some(std::mem::take(&mut a.journal));
                START_COMMIT_WINDOW
            }
            Record::Task(a) => {
                self.unsynced.append(&mut a.journal);
                GROUP_COMMIT_WINDOW
            }
            Record::Workflow(_) => GROUP_COMMIT_WINDOW,
        };
        let d = now + window;
        self.deadline = Some(self.deadline.map_or(d, |old| old.min(d)));
        self.records.push(record);
        added
    }

    /// The journal lines a flush must append and sync, if any.
    pub(super) fn to_sync(&self) -> Option<&[u8]> {
        (!self.unsynced.is_empty()).then_some(self.unsynced.as_slice())
    }

    /// The lines [`Batch::to_sync`] returned are synced in the journal.
    pub(super) fn synced(&mut self) {
        self.unsynced.clear();
    }

    /// When the records held must be committed: the writer commits when it has waited this
    /// long for another message.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The records held, in arrival order.
    pub(super) fn records(&self) -> &[Record] {
        &self.records
    }

    /// Every record held is committed (the journal may be emptied).
    pub(super) fn committed(&mut self) {
        self.records.clear();
        self.unsynced.clear();
        self.deadline = None;
    }

    /// The commit at `now` failed: the records stay, and the next try is a window later.
    pub(super) fn commit_failed(&mut self, now: Instant) {
        self.deadline = Some(now + GROUP_COMMIT_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn execution() -> Record {
        let t = Utc::now();
        Record::Execution(WorkflowExecution {
            id: "e1".into(),
            workflow_name: "wf".into(),
            started_at: t,
            finished_at: None,
            status: crate::events::WorkflowStatus::Running,
            duration_seconds: None,
            total_tasks: 1,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: t,
            pid: 1,
            source: None,
            definition: None,
        })
    }

    fn task(id: &str, start: bool) -> Record {
        Record::Task(Attempt {
            id: id.into(),
            execution: "e1".into(),
            json: b"{}".to_vec(),
            start,
            journal: format!("{id}\n").into_bytes(),
        })
    }

    fn workflow() -> Record {
        Record::Workflow(WorkflowRecord {
            name: "wf".into(),
            schedule: None,
            file: None,
            updated_at: Utc::now(),
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_execution_is_committed_at_once() {
        let mut b = Batch::default();
        let now = Instant::now();
        let added = b.add(execution(), now);
        assert!(added.commit);
        assert_eq!(added.journal_unsynced, None);
        assert_eq!(b.records().len(), 1);
        assert_eq!(b.to_sync(), None, "an execution has no journal line");
    }

    #[test]
    fn an_end_waits_one_window_and_is_journaled_on_a_flush() {
        let mut b = Batch::default();
        let now = Instant::now();
        assert_eq!(b.add(task("t1", false), now), Added::default());
        assert_eq!(b.deadline(), Some(now + GROUP_COMMIT_WINDOW));
        assert_eq!(b.add(task("t2", false), now + 300 * MS), Added::default());
        assert_eq!(
            b.deadline(),
            Some(now + GROUP_COMMIT_WINDOW),
            "a later record never postpones the commit"
        );
        assert_eq!(b.to_sync(), Some(&b"t1\nt2\n"[..]));
        b.synced();
        assert_eq!(b.to_sync(), None, "synced lines are not synced again");
        assert_eq!(b.records().len(), 2, "synced is not committed");
    }

    #[test]
    fn a_start_is_journaled_unsynced_at_once_and_waits_longer() {
        let mut b = Batch::default();
        let now = Instant::now();
        let added = b.add(task("t1", true), now);
        assert!(!added.commit);
        assert_eq!(added.journal_unsynced.as_deref(), Some(&b"t1\n"[..]));
        assert_eq!(b.deadline(), Some(now + START_COMMIT_WINDOW));
        assert_eq!(b.to_sync(), None, "a flush does not wait for a start");
        // An end arriving later brings the commit forward.
        b.add(task("t1", false), now + 500 * MS);
        assert_eq!(b.deadline(), Some(now + 500 * MS + GROUP_COMMIT_WINDOW));
        // A start after an end does not put it off.
        b.add(task("t2", true), now + 600 * MS);
        assert_eq!(b.deadline(), Some(now + 500 * MS + GROUP_COMMIT_WINDOW));
    }

    #[test]
    fn a_workflow_record_waits_one_window() {
        let mut b = Batch::default();
        let now = Instant::now();
        assert_eq!(b.add(workflow(), now), Added::default());
        assert_eq!(b.deadline(), Some(now + GROUP_COMMIT_WINDOW));
        assert_eq!(b.to_sync(), None);
    }

    #[test]
    fn a_commit_empties_the_batch() {
        let mut b = Batch::default();
        let now = Instant::now();
        b.add(task("t1", true), now);
        b.add(task("t1", false), now);
        b.add(execution(), now);
        assert_eq!(b.records().len(), 3);
        b.committed();
        assert!(b.records().is_empty());
        assert_eq!(b.to_sync(), None);
        assert_eq!(b.deadline(), None, "nothing held: the writer sleeps");
    }

    #[test]
    fn a_failed_commit_keeps_everything_and_retries_a_window_later() {
        let mut b = Batch::default();
        let now = Instant::now();
        b.add(task("t1", false), now);
        b.commit_failed(now + 10 * MS);
        assert_eq!(b.deadline(), Some(now + 10 * MS + GROUP_COMMIT_WINDOW));
        assert_eq!(b.records().len(), 1);
        assert_eq!(b.to_sync(), Some(&b"t1\n"[..]));
    }

    #[test]
    fn an_empty_batch_has_no_deadline() {
        let b = Batch::default();
        assert_eq!(b.deadline(), None);
        assert!(b.records().is_empty());
        assert_eq!(b.to_sync(), None);
    }
}
