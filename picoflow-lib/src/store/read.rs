//! Queries: workflows, executions, a history filtered and newest first, and task attempts —
//! what redb holds merged with the completions still only in journals, with each execution's
//! status as its owner's liveness makes it.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};

use crate::error::{Error, Result};
use crate::events::{last_attempts, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};

use super::journal::journaled;
use super::schema::{
    decode, key, micros, open_ro, Context, Stored, BY_TIME, BY_WORKFLOW, EXECUTIONS, TASKS,
    WORKFLOWS,
};
use super::{Handle, HistoryFilter, Store, WorkflowRecord};

const READ: &str = "cannot read";

impl Store {
    fn read(&self) -> Result<ReadTransaction> {
        match &self.handle {
            Handle::ReadWrite(db) => db.begin_read(),
            Handle::ReadOnly(db) => db.begin_read(),
        }
        .context(&self.path, READ)
    }

    /// Every workflow the store knows, by name: those recorded plus those that only appear
    /// in the history.
    pub fn workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let txn = self.read()?;
        let mut out: BTreeMap<String, WorkflowRecord> = BTreeMap::new();
        if let Some(t) = open_ro(&txn, WORKFLOWS, &self.path)? {
            for row in t.iter().context(&self.path, READ)? {
                let (_, v) = row.context(&self.path, READ)?;
                let rec: WorkflowRecord = decode(v.value(), &self.path)?;
                out.insert(rec.name.clone(), rec);
            }
        }
        if let Some(t) = open_ro(&txn, BY_WORKFLOW, &self.path)? {
            let mut last: Option<String> = None;
            for row in t.iter().context(&self.path, READ)? {
                let (k, _) = row.context(&self.path, READ)?;
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

    /// One execution by id, or by a unique prefix of at least 4 characters of its id.
    pub fn execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        let txn = self.read()?;
        let Some(t) = open_ro(&txn, EXECUTIONS, &self.path)? else {
            return Ok(None);
        };
        if let Some(v) = t.get(id.as_bytes()).context(&self.path, READ)? {
            return Ok(Some(self.stored(v.value())?.effective()));
        }
        if id.len() < 4 {
            return Ok(None);
        }
        let mut found = None;
        for row in t.range(id.as_bytes()..).context(&self.path, READ)? {
            let (k, v) = row.context(&self.path, READ)?;
            if !k.value().starts_with(id.as_bytes()) {
                break;
            }
            if found.is_some() {
                return Err(Error::Other(format!(
                    "execution id prefix '{id}' is ambiguous; give more characters"
                )));
            }
            found = Some(self.stored(v.value())?.effective());
        }
        Ok(found)
    }

    fn stored(&self, bytes: &[u8]) -> Result<Stored> {
        decode(bytes, &self.path)
    }

    /// Executions matching `filter`, newest first.
    pub fn executions(&self, filter: &HistoryFilter) -> Result<Vec<WorkflowExecution>> {
        let txn = self.read()?;
        let Some(execs) = open_ro(&txn, EXECUTIONS, &self.path)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in self.ids_since(&txn, filter)? {
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let Some(v) = execs.get(id.as_bytes()).context(&self.path, READ)? else {
                continue;
            };
            let exec = self.stored(v.value())?.effective();
            if filter.status.is_none_or(|s| s == exec.status) {
                out.push(exec);
            }
        }
        Ok(out)
    }

    /// The ids of the executions of `filter`'s workflow (or of all) that started at or after
    /// its `since`, newest first, from the index in start order.
    fn ids_since(&self, txn: &ReadTransaction, filter: &HistoryFilter) -> Result<Vec<String>> {
        let since = filter.since.map_or(i64::MIN, micros);
        let mut ids: Vec<String> = Vec::new();
        match &filter.workflow {
            Some(wf) => {
                if let Some(t) = open_ro(txn, BY_WORKFLOW, &self.path)? {
                    let lo = key::workflow_at(wf, since, "");
                    let (_, hi) = key::under(wf);
                    let range = t
                        .range(lo.as_slice()..hi.as_slice())
                        .context(&self.path, READ)?;
                    for row in range.rev() {
                        let (k, _) = row.context(&self.path, READ)?;
                        let (_, at) = key::split(k.value());
                        ids.push(key::parse_at(at).1.to_string());
                    }
                }
            }
            None => {
                if let Some(t) = open_ro(txn, BY_TIME, &self.path)? {
                    let lo = key::at(since, "");
                    let range = t.range(lo.as_slice()..).context(&self.path, READ)?;
                    for row in range.rev() {
                        let (k, _) = row.context(&self.path, READ)?;
                        ids.push(key::parse_at(k.value()).1.to_string());
                    }
                }
            }
        }
        Ok(ids)
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
            .context(&self.path, READ)?;
        for row in range {
            let (_, v) = row.context(&self.path, READ)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::store::tests::{exec, temp};

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
}
