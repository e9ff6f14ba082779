//! Execution records and the engine's event stream.
//!
//! The engine reports every state change as an [`Event`] carrying the full record of the
//! workflow execution or task attempt. The CLI's display, the state store, the task log
//! files and the metrics are all [`EventSink`]s; the library itself prints nothing.
//! The record fields mirror the API reference's SQLite schema, so the exporter can write
//! them unchanged.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A boxed, sendable future, as the library's traits return it ([`EventSink::flush`],
/// `Executor::execute`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// State of one task attempt (lower case on the wire, `DECISIONS.md` 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for dependencies or a free slot.
    Pending,
    /// Executing.
    Running,
    /// Finished successfully.
    Success,
    /// Failed with no retries left, or cut short by PicoFlow (its message then starts with
    /// [`INTERRUPTED`]).
    Failed,
    /// Failed or timed out; another attempt follows.
    Retrying,
    /// Ran out of time with no retries left.
    Timeout,
    /// Not run: a dependency failed, its `run_if` rule or `when` condition said so, or its
    /// loop had no items ([`SkipReason`]). A task the run never reached has no record.
    Skipped,
}

impl TaskState {
    /// The lower-case name used in the store, the export and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::Retrying => "retrying",
            TaskState::Timeout => "timeout",
            TaskState::Skipped => "skipped",
        }
    }

    /// Parses [`TaskState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "success" => TaskState::Success,
            "failed" => TaskState::Failed,
            "retrying" => TaskState::Retrying,
            "timeout" => TaskState::Timeout,
            "skipped" => TaskState::Skipped,
            _ => return None,
        })
    }

    /// Whether no further change follows for this attempt.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }

    /// Whether the task counts as failed in an execution's figures: it failed or timed out.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::Timeout)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a workflow execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowStatus {
    /// Tasks are being executed.
    Running,
    /// Every task succeeded (or failed with `continue_on_failure`).
    Success,
    /// A task failed (without `continue_on_failure`). A run that was stopped is
    /// [`WorkflowStatus::Interrupted`].
    Failed,
    /// It was stopped (SIGINT, SIGTERM, a daemon's shutdown) or the process running it died;
    /// `run --resume` can continue it (REL-001).
    Interrupted,
}

impl WorkflowStatus {
    /// The lower-case name used in the store, the export and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Success => "success",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Interrupted => "interrupted",
        }
    }

    /// Parses [`WorkflowStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => WorkflowStatus::Running,
            "success" => WorkflowStatus::Success,
            "failed" => WorkflowStatus::Failed,
            "interrupted" => WorkflowStatus::Interrupted,
            _ => return None,
        })
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One workflow execution (a row of `workflow_executions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecution {
    /// Unique id (UUID v4 text).
    pub id: String,
    /// Workflow name.
    pub workflow_name: String,
    /// When the execution started.
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// Current status.
    pub status: WorkflowStatus,
    /// Wall time in seconds, once finished.
    pub duration_seconds: Option<f64>,
    /// Number of tasks in the workflow.
    pub total_tasks: u32,
    /// Tasks that ended `success`.
    pub successful_tasks: u32,
    /// Tasks that ended `failed` or `timeout`.
    pub failed_tasks: u32,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// Process id of the process running it (liveness check for crash recovery).
    pub pid: u32,
    /// Workflow file it came from, when known (used by `run --resume`).
    pub source: Option<String>,
    /// A digest of the definition it runs ([`crate::model::Workflow::digest`]): `run --resume`
    /// refuses to continue it with a changed definition unless told to. `None` in records of
    /// earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// One attempt of one task (a row of `task_executions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskExecution {
    /// Unique id (UUID v4 text).
    pub id: String,
    /// The workflow execution it belongs to.
    pub workflow_execution_id: String,
    /// Task name.
    pub task_name: String,
    /// State of this attempt.
    pub status: TaskState,
    /// When the attempt started (for a skipped task: when it was skipped).
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// Exit code, when the executor produced one.
    pub exit_code: Option<i32>,
    /// Captured standard output: its last [`crate::STORED_CAPTURE`] bytes (the task's log
    /// file has all of it, up to 10 MB).
    pub stdout: Option<String>,
    /// Captured standard error, cut as `stdout` is.
    pub stderr: Option<String>,
    /// The size in bytes of the whole capture (at most 10 MB and the truncation marker) when
    /// `stdout` holds only its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_size: Option<u64>,
    /// The size in bytes of the whole standard error when `stderr` holds only its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_size: Option<u64>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Why the attempt failed.
    pub error_message: Option<String>,
    /// Wall time in seconds, once finished.
    pub duration_seconds: Option<f64>,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// Values the attempt published for its dependents (not a column of `task_executions`:
    /// the export writes them to `task_outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<std::collections::BTreeMap<String, String>>,
}

/// Something that happened during a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A workflow execution started (or resumed).
    WorkflowStarted(WorkflowExecution),
    /// A task attempt started.
    TaskStarted(TaskExecution),
    /// A task attempt ended; `retry_in` is set when another attempt follows after that delay.
    TaskFinished {
        /// The attempt's final record.
        record: TaskExecution,
        /// Delay before the next attempt, if one follows.
        retry_in: Option<Duration>,
    },
    /// A task will not run (a dependency failed or the run stopped).
    TaskSkipped(TaskExecution),
    /// The execution finished.
    WorkflowFinished(WorkflowExecution),
}

/// A consumer of engine events.
pub trait EventSink: Send + Sync {
    /// Called for every event, in order, from the engine's task. Must not block for long.
    fn on_event(&self, event: &Event);

    /// Completes once every event passed so far is durable. The engine calls this once an
    /// execution has started (before its first task starts), as tasks finish (starting their
    /// dependents only once it completes, REL-004), and at the end of a run.
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Fails once the sink can no longer record events (the state store's disk is full,
    /// REL-003). The engine asks before it starts each task and starts none after a failure.
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// How the error message of an attempt that PicoFlow cut short begins — the run was stopped
/// (SIGINT, SIGTERM, a daemon's shutdown) or the process running it died. Such an attempt is
/// recorded `failed` (the state strings are the schema's) but is shown as `interrupted`, does
/// not count among the execution's failed tasks, and a resumed execution runs the task again.
pub const INTERRUPTED: &str = "interrupted:";

/// Why a task did not run, as its `skipped` record says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A task it depends on failed (its name).
    Dependency(String),
    /// Its `run_if` rule does not hold (the rule).
    Rule(String),
    /// Its `when` condition is false (the condition).
    Condition(String),
    /// Its loop has no items.
    NoItems,
    /// A guard of its `requires:` (or its workflow's) does not hold (which, and what was
    /// found).
    Unmet(String),
}

impl SkipReason {
    /// How the message of a task ended by an unmet requirement begins, after `skipped: `
    /// for a skipped one.
    pub const UNMET: &'static str = "requirement not met:";

    /// The record's message; [`TaskExecution::skip_reason`] reads it back.
    pub fn message(&self) -> String {
        match self {
            SkipReason::Dependency(t) => format!("skipped: dependency '{t}' failed"),
            SkipReason::Rule(r) => format!("skipped: run_if: {r} does not hold"),
            SkipReason::Condition(w) => format!("skipped: condition is false (when: {w})"),
            SkipReason::NoItems => "skipped: iterate_over has no items".into(),
            SkipReason::Unmet(why) => format!("skipped: {} {why}", SkipReason::UNMET),
        }
    }

    /// Whether the task's own definition skipped it (a condition or a rule), rather than
    /// something that happened upstream.
    pub fn is_by_definition(&self) -> bool {
        matches!(
            self,
            SkipReason::Condition(_) | SkipReason::Rule(_) | SkipReason::Unmet(_)
        )
    }
}

impl TaskExecution {
    /// The record of attempt `attempt` of task `task_name` in execution `execution_id`,
    /// starting at `at`: `running`, with nothing known yet of its end.
    pub(crate) fn started(
        execution_id: &str,
        task_name: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> TaskExecution {
        TaskExecution {
            id: new_id(),
            workflow_execution_id: execution_id.to_string(),
            task_name: task_name.to_string(),
            status: TaskState::Running,
            started_at: at,
            finished_at: None,
            exit_code: None,
            stdout: None,
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            attempt,
            error_message: None,
            duration_seconds: None,
            created_at: at,
            outputs: None,
        }
    }

    /// The record of a task that ended in `state` at `at` without running (skipped, or
    /// failed before any attempt), `reason` saying why: its one attempt took no time.
    pub(crate) fn unrun(
        execution_id: &str,
        task_name: &str,
        state: TaskState,
        reason: String,
        at: DateTime<Utc>,
    ) -> TaskExecution {
        TaskExecution {
            status: state,
            finished_at: Some(at),
            error_message: Some(reason),
            duration_seconds: Some(0.0),
            ..TaskExecution::started(execution_id, task_name, 1, at)
        }
    }

    /// Why this `skipped` record's task did not run; `None` for another state or a record
    /// that does not say.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        if self.status != TaskState::Skipped {
            return None;
        }
        let m = self.error_message.as_deref()?.strip_prefix("skipped: ")?;
        if let Some(rest) = m.strip_prefix("dependency '") {
            return Some(SkipReason::Dependency(
                rest.strip_suffix("' failed")?.to_string(),
            ));
        }
        if let Some(rest) = m.strip_prefix("run_if: ") {
            return Some(SkipReason::Rule(
                rest.strip_suffix(" does not hold")?.to_string(),
            ));
        }
        if let Some(rest) = m.strip_prefix("condition is false (when: ") {
            return Some(SkipReason::Condition(rest.strip_suffix(')')?.to_string()));
        }
        if let Some(rest) = m.strip_prefix(SkipReason::UNMET) {
            return Some(SkipReason::Unmet(rest.trim_start().to_string()));
        }
        (m == "iterate_over has no items").then_some(SkipReason::NoItems)
    }

    /// Whether PicoFlow cut this attempt short (see [`INTERRUPTED`]).
    pub fn interrupted(&self) -> bool {
        is_interrupted(self.error_message.as_deref())
    }
}

/// Whether an attempt's error message says PicoFlow cut it short (see [`INTERRUPTED`]).
pub fn is_interrupted(error: Option<&str>) -> bool {
    error.is_some_and(|m| m.starts_with(INTERRUPTED))
}
/// The last attempt of each task among `attempts`, in the order the tasks first started.
pub fn last_attempts(attempts: &[TaskExecution]) -> Vec<&TaskExecution> {
    let mut order: Vec<&str> = Vec::new();
    let mut last: std::collections::BTreeMap<&str, &TaskExecution> = Default::default();
    for t in attempts {
        if !last.contains_key(t.task_name.as_str()) {
            order.push(&t.task_name);
        }
        let replace = last
            .get(t.task_name.as_str())
            .is_none_or(|p| p.attempt <= t.attempt);
        if replace {
            last.insert(&t.task_name, t);
        }
    }
    order.into_iter().map(|n| last[n]).collect()
}

/// A new random identifier in UUID v4 text form, from the kernel's random source
/// (`getrandom(2)`): execution ids name files and appear in logs and the API, so they must
/// not be predictable.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    crate::private::random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h =
        |r: std::ops::Range<usize>| -> String { b[r].iter().map(|x| format!("{x:02x}")).collect() };
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v4_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Success,
            TaskState::Failed,
            TaskState::Retrying,
            TaskState::Timeout,
            TaskState::Skipped,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_skip_reason_reads_back_from_its_message() {
        let skipped = |m: String| TaskExecution::unrun("e", "t", TaskState::Skipped, m, Utc::now());
        for r in [
            SkipReason::Dependency("fetch 'x'".into()),
            SkipReason::Rule("all_done".into()),
            SkipReason::Condition("${tasks.a.outputs.n} > 3 (or not)".into()),
            SkipReason::NoItems,
            SkipReason::Unmet("network: nas:445 unreachable: Connection refused".into()),
        ] {
            assert_eq!(skipped(r.message()).skip_reason(), Some(r.clone()), "{r:?}");
        }
        assert_eq!(skipped("something else".into()).skip_reason(), None);
        let mut failed = skipped(SkipReason::NoItems.message());
        failed.status = TaskState::Failed;
        assert_eq!(failed.skip_reason(), None);
    }
}
