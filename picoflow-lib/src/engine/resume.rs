//! Where an execution starts (REL-001): a new one, or an interrupted one continued, and what
//! the continued one carries over from its earlier runs — which tasks are done and stay done
//! (their reports and published values), the number of each task's next attempt, and the
//! last attempt of every task and loop item by name.
//!
//! Which execution is continued, and when, is decided by the library's `resume` module
//! (beside this folder); this room only takes the one it is given.

use std::collections::HashMap;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::events::{new_id, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};
use crate::model::{Task, Workflow};

use super::report::TaskReport;
use super::run::Run;
use super::RunOptions;

/// An interrupted execution to continue (REL-001): tasks whose last attempt succeeded (or
/// failed with `continue_on_failure`) are not run again; every other task is.
#[derive(Debug, Clone)]
pub struct ResumeFrom {
    /// The execution record.
    pub execution: WorkflowExecution,
    /// Its task attempts so far.
    pub tasks: Vec<TaskExecution>,
}

/// What an execution's tasks start from, in the workflow's order: nothing for a new one.
pub(super) struct Carried {
    /// Tasks that finished in an earlier run of the execution.
    pub(super) done: Vec<bool>,
    /// The number of each task's next attempt.
    pub(super) first_attempt: Vec<u32>,
    /// Each task's report: pending, or how it finished in an earlier run.
    pub(super) reports: Vec<TaskReport>,
}

impl Carried {
    /// Makes the values of the tasks done earlier known to the tasks that read them.
    pub(super) fn publish(&self, run: &Run<'_>) {
        for (i, t) in run.wf.tasks.iter().enumerate() {
            if self.done[i] {
                let earlier = run.earlier.get(&t.name);
                run.values.borrow_mut().publish(
                    &t.name,
                    self.reports[i].state,
                    earlier.and_then(|a| a.outputs.clone()),
                );
            }
        }
    }
}

/// The execution `opts` asks for (`opts.resume`'s, or a new one) and what its tasks start
/// from. Refuses to continue another workflow's execution.
pub(super) fn start(wf: &Workflow, opts: &RunOptions) -> Result<(WorkflowExecution, Carried)> {
    let n = wf.tasks.len();
    let mut carried = Carried {
        done: vec![false; n],
        first_attempt: vec![1; n],
        reports: wf
            .tasks
            .iter()
            .map(|t| TaskReport::pending(&t.name))
            .collect(),
    };
    let mut execution = match &opts.resume {
        Some(r) => {
            let execution = continued(wf, r, opts)?;
            carry(wf, r, &mut carried);
            execution
        }
        None => new_execution(wf, opts),
    };
    execution.total_tasks = n as u32;
    Ok((execution, carried))
}

/// The last attempt of each task (and loop item) of the execution `opts` continues, by name.
pub(super) fn earlier_attempts(opts: &RunOptions) -> HashMap<String, TaskExecution> {
    opts.resume
        .iter()
        .flat_map(|r| crate::events::last_attempts(&r.tasks))
        .map(|a| (a.task_name.clone(), a.clone()))
        .collect()
}

/// Whether a task's earlier attempt `a` finished it, so that a resume keeps it: it succeeded,
/// or failed with `continue_on_failure` (and was not cut short by a crash).
pub(super) fn finished_before(a: &TaskExecution, task: &Task) -> bool {
    a.status == TaskState::Success
        || (task.continue_on_failure && !a.interrupted() && a.status.is_failure())
}

/// The record of `r`'s execution, running again with this definition.
fn continued(wf: &Workflow, r: &ResumeFrom, opts: &RunOptions) -> Result<WorkflowExecution> {
    if r.execution.workflow_name != wf.name {
        return Err(Error::Other(format!(
            "execution {} belongs to workflow '{}', not '{}'",
            r.execution.id, r.execution.workflow_name, wf.name
        )));
    }
    let mut e = r.execution.clone();
    e.status = WorkflowStatus::Running;
    e.finished_at = None;
    e.duration_seconds = None;
    e.pid = std::process::id();
    if opts.source.is_some() {
        e.source = opts.source.clone();
    }
    // From here on it runs this definition (the caller decided a changed one may go on).
    e.definition = Some(wf.digest());
    Ok(e)
}

/// Carries over from `r` which tasks are done and each one's next attempt.
fn carry(wf: &Workflow, r: &ResumeFrom, carried: &mut Carried) {
    let last = crate::events::last_attempts(&r.tasks);
    for (i, t) in wf.tasks.iter().enumerate() {
        // A loop is done when its items are: it has no attempt of its own.
        let Some(a) = last.iter().find(|a| a.task_name == t.name) else {
            continue;
        };
        carried.first_attempt[i] = a.attempt + 1;
        // An attempt cut short by a crash ran to no conclusion: run it again.
        if finished_before(a, t) && t.iterate_over.is_none() {
            carried.done[i] = true;
            carried.reports[i] = TaskReport::resumed(a);
        }
    }
}

/// The record of a new execution of `wf`.
fn new_execution(wf: &Workflow, opts: &RunOptions) -> WorkflowExecution {
    let now = Utc::now();
    WorkflowExecution {
        id: opts.execution_id.clone().unwrap_or_else(new_id),
        workflow_name: wf.name.clone(),
        started_at: now,
        finished_at: None,
        status: WorkflowStatus::Running,
        duration_seconds: None,
        total_tasks: wf.tasks.len() as u32,
        successful_tasks: 0,
        failed_tasks: 0,
        created_at: now,
        pid: std::process::id(),
        source: opts.source.clone(),
        definition: Some(wf.digest()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::engine::{Engine, ResumeFrom, RunOptions};
    use crate::events::{Event, EventSink, TaskExecution, TaskState, WorkflowStatus};
    use crate::executor::{CancelToken, Registry};
    use crate::expand::Vars;
    /// A task with `continue_on_failure` that a stop cut short was kept by the resume as if
    /// it had run to its end and failed: it never ran again, and its dependents ran without
    /// it, while in the stopped run itself they had not been let run.
    #[test]
    fn a_task_a_stop_cut_short_runs_again_on_resume() {
        /// Keeps the last version of each record; stops the run when its task starts.
        struct Records(Mutex<Vec<TaskExecution>>, crate::Canceller);
        impl EventSink for Records {
            fn on_event(&self, event: &Event) {
                if let Event::TaskStarted(r) | Event::TaskFinished { record: r, .. } = event {
                    let mut records = self.0.lock().unwrap();
                    records.retain(|x| x.id != r.id);
                    records.push(r.clone());
                }
                if let Event::TaskStarted(_) = event {
                    self.1.cancel();
                }
            }
        }
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, continue_on_failure: true, config: {command: sleep, args: [\"${D}\"]}}\n",
            "w.yaml",
        )
        .unwrap();
        let (canceller, token) = CancelToken::new();
        let sink = Arc::new(Records(Mutex::new(Vec::new()), canceller));
        let mut vars = Vars::isolated();
        vars.set("D", "5");
        let engine = Engine::new(Registry::builtin())
            .with_sink(sink.clone())
            .with_vars(vars);
        let opts = RunOptions {
            cancel: token,
            ..RunOptions::default()
        };
        let first = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert_eq!(first.execution.status, WorkflowStatus::Interrupted);
        let records = sink.0.lock().unwrap().clone();
        let message = records[0].error_message.clone().unwrap_or_default();
        assert!(message.starts_with(crate::events::INTERRUPTED), "{message}");

        let mut vars = Vars::isolated();
        vars.set("D", "0");
        let engine = Engine::new(Registry::builtin()).with_vars(vars);
        let opts = RunOptions {
            resume: Some(ResumeFrom {
                execution: first.execution,
                tasks: records,
            }),
            ..RunOptions::default()
        };
        let again = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert!(!again.tasks[0].resumed, "{again:?}");
        assert_eq!(again.tasks[0].state, TaskState::Success, "{again:?}");
        assert!(again.success());
    }
}
