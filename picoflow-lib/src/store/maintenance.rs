//! Writes outside the engine's events: [`Store::recover_interrupted`] after a crash and
//! [`Store::prune`] of old history. Both commit directly, after this process's own queue.
use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, WriteTransaction};

use crate::error::Result;
use crate::events::{TaskExecution, TaskState, WorkflowExecution, WorkflowStatus, INTERRUPTED};

use super::schema::{
    decode, encode, key, micros, Context, Stored, WriteTable, BY_TIME, BY_WORKFLOW, EXECUTIONS,
    RUNNING, TASKS,
};
use super::writer::read_only;
use super::{Handle, PruneCounts, Store};

const READ: &str = "cannot read";
const WRITE: &str = "cannot write";

impl Store {
    /// The database for a direct write, once everything this process queued has landed (or
    /// its own runs would look dead).
    fn settled(&self) -> Result<&Database> {
        let Handle::ReadWrite(db) = &self.handle else {
            return Err(read_only());
        };
        if self.writer.is_some() {
            self.flush_blocking()?;
        }
        Ok(db)
    }

    /// Rewrites executions left `running` by a process that died as `interrupted` (their
    /// running attempts become `failed` with the reason), and returns, per workflow, the
    /// latest execution when it is interrupted — the ones to resume.
    pub fn recover_interrupted(&self) -> Result<Vec<WorkflowExecution>> {
        let txn = self.settled()?.begin_write().context(&self.path, WRITE)?;
        {
            let mut execs = txn.open_table(EXECUTIONS).context(&self.path, WRITE)?;
            let stale = self.forget_ended(&txn, &execs)?;
            let mut tasks = txn.open_table(TASKS).context(&self.path, WRITE)?;
            let mut ids = Vec::new();
            for (id, s) in stale {
                self.interrupt(&mut execs, &mut tasks, &id, s)?;
                ids.push(id);
            }
            drop((execs, tasks));
            super::outbox::mark(&txn, ids.iter().map(String::as_str)).context(&self.path, WRITE)?;
        }
        txn.commit().context(&self.path, "cannot commit to")?;
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

    /// Takes every execution that no longer runs out of the table of running ones, and
    /// returns those still recorded `running` (their process died): the ones to interrupt.
    fn forget_ended(
        &self,
        txn: &WriteTransaction,
        execs: &WriteTable<'_>,
    ) -> Result<Vec<(String, Stored)>> {
        let mut running = txn.open_table(RUNNING).context(&self.path, WRITE)?;
        let mut ids = Vec::new();
        for row in running.iter().context(&self.path, READ)? {
            let (k, _) = row.context(&self.path, READ)?;
            ids.push(String::from_utf8_lossy(k.value()).into_owned());
        }
        let mut stale = Vec::new();
        for id in ids {
            let s: Option<Stored> = match execs.get(id.as_bytes()).context(&self.path, READ)? {
                Some(v) => Some(decode(v.value(), &self.path)?),
                None => None,
            };
            let keep = s.as_ref().is_some_and(Stored::is_running);
            if !keep {
                running.remove(id.as_bytes()).context(&self.path, WRITE)?;
            }
            if let Some(s) = s.filter(|s| s.exec.status == WorkflowStatus::Running && !keep) {
                stale.push((id, s));
            }
        }
        Ok(stale)
    }

    /// Marks the execution `id`, whose process died, `interrupted`, and its unfinished
    /// attempts `failed` with the reason.
    fn interrupt(
        &self,
        execs: &mut WriteTable<'_>,
        tasks: &mut WriteTable<'_>,
        id: &str,
        mut s: Stored,
    ) -> Result<()> {
        let now = Utc::now();
        let mut unfinished = Vec::new();
        let (lo, hi) = key::under(id);
        for row in tasks
            .range(lo.as_slice()..hi.as_slice())
            .context(&self.path, READ)?
        {
            let (_, v) = row.context(&self.path, READ)?;
            let rec = decode::<TaskExecution>(v.value(), &self.path)?;
            if !rec.status.is_final() {
                unfinished.push(rec);
            }
        }
        for mut rec in unfinished {
            rec.status = TaskState::Failed;
            rec.finished_at = Some(now);
            rec.error_message = Some(format!(
                "{INTERRUPTED} process {} ended while the task was running",
                s.exec.pid
            ));
            tasks
                .insert(key::pair(id, &rec.id).as_slice(), encode(&rec).as_slice())
                .context(&self.path, WRITE)?;
        }
        s.exec.status = WorkflowStatus::Interrupted;
        tracing::warn!(execution = %id, workflow = %s.exec.workflow_name, pid = s.exec.pid,
            "execution's process is gone; marked interrupted");
        execs
            .insert(id.as_bytes(), encode(&s).as_slice())
            .context(&self.path, WRITE)?;
        Ok(())
    }

    /// Deletes finished executions (and their attempts) that started before `cutoff`.
    pub fn prune(&self, cutoff: DateTime<Utc>) -> Result<PruneCounts> {
        let txn = self.settled()?.begin_write().context(&self.path, WRITE)?;
        let mut counts = PruneCounts::default();
        {
            let mut tables = Pruned {
                by_time: txn.open_table(BY_TIME).context(&self.path, WRITE)?,
                by_wf: txn.open_table(BY_WORKFLOW).context(&self.path, WRITE)?,
                execs: txn.open_table(EXECUTIONS).context(&self.path, WRITE)?,
                tasks: txn.open_table(TASKS).context(&self.path, WRITE)?,
            };
            let mut old = Vec::new();
            let hi = key::at(micros(cutoff), "");
            for row in tables
                .by_time
                .range(..hi.as_slice())
                .context(&self.path, READ)?
            {
                let (k, _) = row.context(&self.path, READ)?;
                let (t, id) = key::parse_at(k.value());
                old.push((t, id.to_string()));
            }
            for (t, id) in old {
                if let Some(attempts) = self.delete(&mut tables, t, &id)? {
                    counts.task_executions += attempts;
                    counts.executions += 1;
                }
            }
        }
        txn.commit().context(&self.path, "cannot commit to")?;
        Ok(counts)
    }

    /// Deletes the execution `id` started at `t` (µs) and its attempts, unless it still
    /// runs; returns how many attempts went with it.
    fn delete(&self, tables: &mut Pruned<'_>, t: i64, id: &str) -> Result<Option<usize>> {
        let Some(v) = tables.execs.get(id.as_bytes()).context(&self.path, READ)? else {
            return Ok(None);
        };
        let s: Stored = decode(v.value(), &self.path)?;
        drop(v);
        if s.is_running() {
            return Ok(None);
        }
        let mut attempt_keys = Vec::new();
        let (lo, hi) = key::under(id);
        for row in tables
            .tasks
            .range(lo.as_slice()..hi.as_slice())
            .context(&self.path, READ)?
        {
            let (k, _) = row.context(&self.path, READ)?;
            attempt_keys.push(k.value().to_vec());
        }
        for k in &attempt_keys {
            tables
                .tasks
                .remove(k.as_slice())
                .context(&self.path, WRITE)?;
        }
        tables
            .execs
            .remove(id.as_bytes())
            .context(&self.path, WRITE)?;
        tables
            .by_time
            .remove(key::at(t, id).as_slice())
            .context(&self.path, WRITE)?;
        tables
            .by_wf
            .remove(key::workflow_at(&s.exec.workflow_name, t, id).as_slice())
            .context(&self.path, WRITE)?;
        Ok(Some(attempt_keys.len()))
    }
}

/// The tables a prune deletes from.
struct Pruned<'txn> {
    by_time: WriteTable<'txn>,
    by_wf: WriteTable<'txn>,
    execs: WriteTable<'txn>,
    tasks: WriteTable<'txn>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::store::tests::{exec, task, temp};

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
}
