//! What the state file holds: its tables, their composite keys, how records are encoded, an
//! execution as stored with its owner's identity, and the context redb errors are reported
//! with.
use std::path::Path;

use chrono::{DateTime, Utc};
use redb::{Database, ReadTransaction, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{TaskExecution, WorkflowExecution, WorkflowStatus};
use crate::proc::process_start_time;

/// Every table maps bytes to bytes. redb's B-tree code is generic over key and value types,
/// and one pair of types keeps one copy of it in the binary (about 100 KiB less than a pair
/// per table); [`key`] builds composite keys whose byte order is the order wanted.
pub(super) type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// A [`Table`] opened in a write transaction.
pub(super) type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// Workflow name → [`WorkflowRecord`](super::WorkflowRecord) (JSON).
pub(super) const WORKFLOWS: Table = TableDefinition::new("workflows");
/// Execution id → [`Stored`] execution (JSON).
pub(super) const EXECUTIONS: Table = TableDefinition::new("workflow_executions");
/// [`key::pair`] (execution id, task attempt id) → [`TaskExecution`] (JSON). Keyed by
/// execution so that one table (one B-tree path) changes per task event: SD cards pay per
/// page written.
pub(super) const TASKS: Table = TableDefinition::new("task_executions");
/// [`key::workflow_at`] (workflow, start, execution id) → nothing: executions of a workflow
/// in start order.
pub(super) const BY_WORKFLOW: Table = TableDefinition::new("executions_by_workflow");
/// [`key::at`] (start, execution id) → nothing: all executions in start order.
pub(super) const BY_TIME: Table = TableDefinition::new("executions_by_time");
/// Execution id → nothing: executions recorded as running, so recovery need not scan
/// history.
pub(super) const RUNNING: Table = TableDefinition::new("running_executions");

/// Composite keys. Names and ids never contain NUL, so a NUL after one ends it and sorts it
/// before any longer name; times are big-endian with the sign bit flipped, so they sort as
/// numbers.
pub(super) mod key {
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
    pub(in crate::store) fn pair(a: &str, b: &str) -> Vec<u8> {
        let mut k = head(a, b.len());
        k.extend_from_slice(b.as_bytes());
        k
    }

    /// The bounds of every key whose first part is `a`.
    pub(in crate::store) fn under(a: &str) -> (Vec<u8>, Vec<u8>) {
        let lo = head(a, 0);
        let mut hi = lo.clone();
        *hi.last_mut().expect("not empty") = SEP + 1;
        (lo, hi)
    }

    /// The part of a [`pair`] or [`workflow_at`] key before the separator, and the rest.
    pub(in crate::store) fn split(k: &[u8]) -> (&str, &[u8]) {
        let i = k.iter().position(|&b| b == SEP).unwrap_or(k.len());
        let first = std::str::from_utf8(&k[..i]).unwrap_or("");
        (first, k.get(i + 1..).unwrap_or(&[]))
    }

    /// Start time (µs), then execution id.
    pub(in crate::store) fn at(t: i64, id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(TIME + id.len());
        push_at(&mut k, t, id);
        k
    }

    fn push_at(k: &mut Vec<u8>, t: i64, id: &str) {
        k.extend_from_slice(&time(t));
        k.extend_from_slice(id.as_bytes());
    }

    /// The time and id of an [`at`] key.
    pub(in crate::store) fn parse_at(k: &[u8]) -> (i64, &str) {
        let (t, id) = k.split_at(TIME.min(k.len()));
        let mut b = [0u8; TIME];
        b[..t.len()].copy_from_slice(t);
        let t = (u64::from_be_bytes(b) ^ (1 << 63)) as i64;
        (t, std::str::from_utf8(id).unwrap_or(""))
    }

    /// Workflow name, then an [`at`] key.
    pub(in crate::store) fn workflow_at(workflow: &str, t: i64, id: &str) -> Vec<u8> {
        let mut k = head(workflow, TIME + id.len());
        push_at(&mut k, t, id);
        k
    }
}

/// An execution as stored: the record plus the owner's identity for the liveness check.
#[derive(Serialize, Deserialize)]
pub(super) struct Stored {
    #[serde(flatten)]
    pub(super) exec: WorkflowExecution,
    /// Start time of process `exec.pid`, in clock ticks since boot (`/proc/<pid>/stat` 22).
    #[serde(default)]
    pub(super) pid_start: Option<u64>,
}

impl Stored {
    /// Whether the process that recorded this execution still runs: its pid exists and, when
    /// its start time was recorded, still belongs to the same process.
    pub(super) fn owner_alive(&self) -> bool {
        let pid = self.exec.pid;
        match (self.pid_start, process_start_time(pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    /// Recorded `running` and its owner is alive.
    pub(super) fn is_running(&self) -> bool {
        self.exec.status == WorkflowStatus::Running && self.owner_alive()
    }

    /// The execution as readers should see it: `running` with a dead owner is `interrupted`.
    pub(super) fn effective(self) -> WorkflowExecution {
        let interrupted = self.exec.status == WorkflowStatus::Running && !self.owner_alive();
        let mut exec = self.exec;
        if interrupted {
            exec.status = WorkflowStatus::Interrupted;
        }
        exec
    }
}

/// A redb result reported as a state store error that says what was being done to which
/// file ("cannot read /var/lib/picoflow/state.redb: …").
pub(super) trait Context<T> {
    /// The error, if any, as [`Error::Store`] with the context "`what` `path`".
    fn context(self, path: &Path, what: &str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| store_error(path, what, e.into()))
    }
}

/// The error [`Context::context`] makes, built by one function for every result type.
#[inline(never)]
fn store_error(path: &Path, what: &str, e: redb::Error) -> Error {
    Error::store(format!("{what} {}", path.display()), e)
}

/// Creates every table, so that readers find them.
pub(super) fn create_tables(db: &Database, path: &Path) -> Result<()> {
    let txn = db.begin_write().context(path, "cannot write")?;
    for table in [WORKFLOWS, EXECUTIONS, TASKS, BY_WORKFLOW, BY_TIME, RUNNING] {
        txn.open_table(table)
            .context(path, "cannot create tables in")?;
    }
    txn.commit().context(path, "cannot commit to")?;
    Ok(())
}

/// A table opened for reading; `None` when it does not exist (a file no writer initialised).
pub(super) fn open_ro(
    txn: &ReadTransaction,
    def: Table,
    path: &Path,
) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e).context(path, "cannot read"),
    }
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// Encodes an attempt into a buffer sized up front: outputs can be 10 MB each, and letting
/// the buffer double its way there would hold 1.5 to 2.5 times that at its peak.
pub(super) fn encode_task(r: &TaskExecution) -> Vec<u8> {
    let outputs =
        r.stdout.as_ref().map_or(0, String::len) + r.stderr.as_ref().map_or(0, String::len);
    let mut buf = Vec::with_capacity(outputs + outputs / 8 + 1024);
    serde_json::to_writer(&mut buf, r).expect("records serialise");
    buf
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::store(
            format!("corrupt record in {}", path.display()),
            Box::new(e) as crate::error::BoxError,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redb_error_says_what_was_done_to_which_file() {
        let failed: std::result::Result<(), redb::StorageError> =
            Err(redb::StorageError::Corrupted("bad page".into()));
        let e = failed
            .context(Path::new("/var/lib/picoflow/state.redb"), "cannot read")
            .unwrap_err();
        assert!(matches!(e, Error::Store { .. }));
        let text = e.to_string();
        assert!(
            text.starts_with("state store: cannot read /var/lib/picoflow/state.redb: ")
                && text.contains("bad page"),
            "{text}"
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
