//! What a run reports: [`RunReport`] and its [`TaskReport`]s, and the [`Finished`] note a
//! task's end hands the scheduling loop.

use std::collections::BTreeMap;

use crate::events::{TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};

/// The outcome of one execution.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The final execution record.
    pub execution: WorkflowExecution,
    /// One entry per task, in file order.
    pub tasks: Vec<TaskReport>,
}

/// The outcome of one task within a [`RunReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// Task name.
    pub name: String,
    /// Final state (`pending` if the run stopped before it started).
    pub state: TaskState,
    /// Attempts made in this run.
    pub attempts: u32,
    /// Exit code of the last attempt.
    pub exit_code: Option<i32>,
    /// Wall time of the last attempt, in seconds.
    pub duration_seconds: Option<f64>,
    /// Error message of the last attempt.
    pub error: Option<String>,
    /// Finished in an earlier run of a resumed execution.
    pub resumed: bool,
}

impl TaskReport {
    /// The report of a task that has not started.
    pub(super) fn pending(name: &str) -> TaskReport {
        TaskReport {
            name: name.to_string(),
            state: TaskState::Pending,
            attempts: 0,
            exit_code: None,
            duration_seconds: None,
            error: None,
            resumed: false,
        }
    }

    /// The report of a task that finished in an earlier run of a resumed execution, with
    /// `a` its last attempt (none made in this run).
    pub(super) fn resumed(a: &TaskExecution) -> TaskReport {
        TaskReport {
            name: a.task_name.clone(),
            state: a.status,
            attempts: 0,
            exit_code: a.exit_code,
            duration_seconds: a.duration_seconds,
            error: a.error_message.clone(),
            resumed: true,
        }
    }
}

impl RunReport {
    /// Whether the workflow succeeded.
    pub fn success(&self) -> bool {
        self.execution.status == WorkflowStatus::Success
    }
}

/// What a task (or a loop, with its items) tells the scheduling loop when it ends.
pub(super) struct Finished {
    /// The task's place in the workflow's list.
    pub(super) index: usize,
    pub(super) report: TaskReport,
    /// Whether its dependents may run.
    pub(super) release_dependents: bool,
    /// What the task published.
    pub(super) outputs: Option<BTreeMap<String, String>>,
    /// The reports of a loop's tasks, in item order.
    pub(super) items: Vec<TaskReport>,
}

impl Finished {
    /// A task that ended without releasing its dependents.
    pub(super) fn failed(index: usize, report: TaskReport) -> Finished {
        Finished {
            index,
            report,
            release_dependents: false,
            outputs: None,
            items: Vec::new(),
        }
    }
}
