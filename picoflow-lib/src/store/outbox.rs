//! The fleet's outbox: the executions whose records changed and are not yet sent to the
//! fleet. A mark is written in the same transaction as the records it stands for, so no
//! change is lost to a crash between the two; the sender reads the current records when it
//! sends, so a mark is one small row however often the execution changes.
//!
//! The table exists only while a daemon of the fleet uses the state file (it creates the
//! table at start, and a daemon of a build with the feature but without a fleet drops it):
//! every writer of such a build marks when it exists, a `picoflow run` beside the daemon
//! included, and nothing is kept for a fleet no one has. Builds without the feature neither
//! mark nor read it.

use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::schema::{Context, Table};
use super::writer::read_only;
use super::{Handle, Store};
use crate::error::Result;

/// Execution id → the stamp of its last change (u64, little-endian): rows to send.
pub(super) const OUTBOX: Table = TableDefinition::new("fleet_outbox");

/// A stamp that differs from every earlier one of this process (nanoseconds since the
/// epoch, made strictly increasing).
fn stamp() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    if prev >= now {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        now
    }
}

/// Marks the executions `ids` as changed, when the outbox exists, in `txn`.
pub(super) fn mark<'a>(
    txn: &WriteTransaction,
    ids: impl IntoIterator<Item = &'a str>,
) -> std::result::Result<(), redb::Error> {
    if !txn.list_tables()?.any(|t| t.name() == OUTBOX.name()) {
        return Ok(());
    }
    let mut table = txn.open_table(OUTBOX)?;
    let stamp = stamp().to_le_bytes();
    for id in ids {
        table.insert(id.as_bytes(), &stamp[..])?;
    }
    Ok(())
}

/// One execution waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The execution's id.
    pub(crate) execution: String,
    /// The change it stands for; [`Store::outbox_sent`] removes the row only if no later
    /// change came.
    pub(crate) stamp: u64,
}

impl Store {
    /// The database, for the outbox's own small transactions (they need not wait for what
    /// this process queued: marks come with the records).
    fn outbox_db(&self) -> Result<&redb::Database> {
        match &self.handle {
            Handle::ReadWrite(db) => Ok(db),
            Handle::ReadOnly(_) => Err(read_only()),
        }
    }

    /// Creates the outbox (a daemon of the fleet, at start): from now on every writer marks
    /// the executions it changes. Executions recorded before it existed are not sent: a device
    /// joining a fleet reports from then on.
    pub(crate) fn open_outbox(&self) -> Result<()> {
        const WHAT: &str = "cannot create the fleet outbox in";
        let db = self.outbox_db()?;
        let txn = db.begin_write().context(&self.path, WHAT)?;
        let exists = txn
            .list_tables()
            .context(&self.path, WHAT)?
            .any(|t| t.name() == OUTBOX.name());
        if exists {
            return Ok(());
        }
        txn.open_table(OUTBOX).context(&self.path, WHAT)?;
        txn.commit().context(&self.path, WHAT)?;
        Ok(())
    }

    /// Drops the outbox (a daemon without a fleet, at start).
    pub(crate) fn close_outbox(&self) -> Result<()> {
        const WHAT: &str = "cannot drop the fleet outbox in";
        let db = self.outbox_db()?;
        let exists = db
            .begin_read()
            .context(&self.path, WHAT)?
            .list_tables()
            .context(&self.path, WHAT)?
            .any(|t| t.name() == OUTBOX.name());
        if !exists {
            return Ok(());
        }
        let txn = db.begin_write().context(&self.path, WHAT)?;
        txn.delete_table(OUTBOX).context(&self.path, WHAT)?;
        txn.commit().context(&self.path, WHAT)?;
        Ok(())
    }

    /// Up to `limit` executions waiting to be sent (in no particular order).
    pub(crate) fn outbox_pending(&self, limit: usize) -> Result<Vec<Pending>> {
        const WHAT: &str = "cannot read the fleet outbox in";
        let txn = self.outbox_db()?.begin_read().context(&self.path, WHAT)?;
        let table = match txn.open_table(OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e).context(&self.path, WHAT),
        };
        let mut out = Vec::new();
        for row in table.iter().context(&self.path, WHAT)?.take(limit) {
            let (k, v) = row.context(&self.path, WHAT)?;
            let mut b = [0u8; 8];
            if let Some(s) = v.value().get(..8) {
                b.copy_from_slice(s);
            }
            out.push(Pending {
                execution: String::from_utf8_lossy(k.value()).into_owned(),
                stamp: u64::from_le_bytes(b),
            });
        }
        Ok(out)
    }

    /// How many executions wait to be sent.
    pub(crate) fn outbox_len(&self) -> Result<usize> {
        const WHAT: &str = "cannot read the fleet outbox in";
        let txn = self.outbox_db()?.begin_read().context(&self.path, WHAT)?;
        match txn.open_table(OUTBOX) {
            Ok(t) => Ok(t.len().context(&self.path, WHAT)? as usize),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e).context(&self.path, WHAT),
        }
    }

    /// How many executions are recorded as running (by any process).
    pub(crate) fn running_count(&self) -> Result<usize> {
        const WHAT: &str = "cannot read";
        let txn = self.outbox_db()?.begin_read().context(&self.path, WHAT)?;
        let t = txn
            .open_table(super::schema::RUNNING)
            .context(&self.path, WHAT)?;
        Ok(t.len().context(&self.path, WHAT)? as usize)
    }

    /// Removes the rows of `sent`, each only if its execution did not change again since.
    pub(crate) fn outbox_sent(&self, sent: &[Pending]) -> Result<()> {
        const WHAT: &str = "cannot update the fleet outbox in";
        if sent.is_empty() {
            return Ok(());
        }
        let db = self.outbox_db()?;
        let txn = db.begin_write().context(&self.path, WHAT)?;
        {
            let mut table = txn.open_table(OUTBOX).context(&self.path, WHAT)?;
            for p in sent {
                let key = p.execution.as_bytes();
                let same = table
                    .get(key)
                    .context(&self.path, WHAT)?
                    .is_some_and(|v| v.value() == p.stamp.to_le_bytes());
                if same {
                    table.remove(key).context(&self.path, WHAT)?;
                }
            }
        }
        txn.commit().context(&self.path, WHAT)?;
        Ok(())
    }
}
