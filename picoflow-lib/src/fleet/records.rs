//! The messages of the fleet, as JSON with a version number. Anything received is decoded
//! here: a message too large, not JSON of the expected shape, or of a version this build does
//! not know is refused with a reason (the caller logs it and goes on).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::events::{TaskExecution, WorkflowExecution};

/// The version of every record this build writes and reads.
pub(crate) const VERSION: u32 = 1;

/// The largest message accepted (a workflow file, a report).
pub(crate) const MAX_MESSAGE: usize = 512 * 1024;

/// A node's inventory record, put on its key every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Record version.
    pub v: u32,
    /// Node name.
    pub node: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// PicoFlow version.
    pub version: String,
    /// Features of its build.
    pub features: Vec<String>,
    /// CPU architecture (`aarch64`, `arm`, `x86_64`).
    pub arch: String,
    /// Seconds since the machine booted.
    pub uptime_seconds: Option<u64>,
    /// When its daemon started.
    pub daemon_started_at: DateTime<Utc>,
    /// 1-minute load average.
    pub load1: Option<f64>,
    /// Memory available (`MemAvailable`), bytes.
    pub memory_available_bytes: Option<u64>,
    /// Free space of the state file's file system, bytes.
    pub disk_free_bytes: Option<u64>,
    /// CPU temperature, °C, where `/sys/class/thermal` has it.
    pub cpu_temperature_celsius: Option<f64>,
    /// Executions running now.
    pub running: usize,
    /// Workflows it runs: name → revision applied from the fleet (`None`: a local file).
    pub workflows: BTreeMap<String, Option<u64>>,
    /// When this record was made; as read back from the fleet, when the server stored it.
    pub heartbeat: DateTime<Utc>,
}

/// A workflow to run on a target, the value of a key `TARGET.WORKFLOW`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Desired {
    pub(crate) v: u32,
    /// The workflow file's text.
    pub(crate) yaml: String,
    /// The file it was read from on the operator's machine.
    pub(crate) file: String,
    pub(crate) published_at: DateTime<Utc>,
}

/// What a node did with a desired workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Record version.
    pub v: u32,
    /// Node name.
    pub node: String,
    /// Workflow name.
    pub workflow: String,
    /// The target it was addressed to (`all`, a label or the node).
    pub target: String,
    /// The desired record's revision in the bucket.
    pub revision: u64,
    /// `applied`, `refused` or `removed`.
    pub status: String,
    /// Why it was refused.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A request to start a workflow now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    pub(crate) v: u32,
    /// The request's id: each node answers on `P.answer.NODE.ID`.
    pub(crate) id: String,
    pub(crate) workflow: String,
}

/// A node's answer to a request to run a workflow now (`picoflow fleet run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAnswer {
    /// Record version.
    pub v: u32,
    /// Node name.
    pub node: String,
    /// `started`, `busy` (a run is going and overlap is not allowed), `not_found` or
    /// `stopping`.
    pub answer: String,
    /// The execution started.
    pub execution: Option<String>,
}

/// An execution as a node last recorded it, with its task attempts (without their output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionReport {
    /// Record version.
    pub v: u32,
    /// Node name.
    pub node: String,
    /// The execution record.
    pub execution: WorkflowExecution,
    /// Its task attempts; output, captured streams and published outputs left out.
    pub tasks: Vec<TaskExecution>,
}

impl ExecutionReport {
    /// The report of `execution` on `node`: task attempts without what they printed, error
    /// messages cut to 1 KiB.
    pub(crate) fn new(
        node: &str,
        execution: WorkflowExecution,
        tasks: Vec<TaskExecution>,
    ) -> ExecutionReport {
        let tasks = tasks
            .into_iter()
            .map(|mut t| {
                t.stdout = None;
                t.stderr = None;
                t.outputs = None;
                if let Some(m) = &mut t.error_message {
                    if m.len() > 1024 {
                        let mut end = 1024;
                        while !m.is_char_boundary(end) {
                            end -= 1;
                        }
                        m.truncate(end);
                    }
                }
                t
            })
            .collect();
        ExecutionReport {
            v: VERSION,
            node: node.to_string(),
            execution,
            tasks,
        }
    }
}

/// An id as PicoFlow makes them (a UUID's text), 1-64 letters, digits and `-`.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A name that may hold any text (a loop item's: `task[web-1.lan]`), 1-1024 characters, none
/// of them a control character.
fn is_text(s: &str) -> bool {
    (1..=1024).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// A duration a record may hold: a number of seconds, not negative, under ten years.
fn is_seconds(d: Option<f64>) -> bool {
    d.is_none_or(|d| d.is_finite() && (0.0..3.2e8).contains(&d))
}

/// An instant no later than a day from now (a record from the future would sort first for
/// ever).
fn is_past(t: DateTime<Utc>) -> bool {
    t < Utc::now() + chrono::Duration::days(1)
}

impl ExecutionReport {
    /// Refuses a record whose fields no PicoFlow would write: ids and names that are not ones,
    /// negative or endless durations, task counts beyond any workflow, start times in the
    /// future. (What it says of its own node is its node's word; the tables must stay whole.)
    pub(crate) fn check(self) -> Result<ExecutionReport, String> {
        let e = &self.execution;
        let counts = [e.total_tasks, e.successful_tasks, e.failed_tasks];
        let problem = if !is_id(&e.id) {
            "the execution id is not one"
        } else if !crate::model::is_valid_name(&e.workflow_name) {
            "the workflow name is not one"
        } else if !is_seconds(e.duration_seconds) {
            "the duration is negative or endless"
        } else if counts.iter().any(|n| *n > 100_000) {
            "the task counts are beyond any workflow"
        } else if !is_past(e.started_at) {
            "the execution starts more than a day from now"
        } else if e.finished_at.is_some_and(|f| f < e.started_at) {
            "the execution finishes before it starts"
        } else if self.tasks.len() > 100_000
            || self.tasks.iter().any(|t| {
                !is_id(&t.id)
                    || t.workflow_execution_id != e.id
                    || !is_text(&t.task_name)
                    || !is_seconds(t.duration_seconds)
            })
        {
            "a task attempt's id, name, execution or duration is not one"
        } else {
            return Ok(self);
        };
        Err(problem.into())
    }
}

impl NodeRecord {
    /// Refuses a record whose labels, workflow names or other words are not ones: the
    /// tables show them.
    pub(crate) fn check(self) -> Result<NodeRecord, String> {
        let word = |s: &String| s.len() <= 64 && is_text(s);
        if !self.labels.iter().all(|l| super::settings::is_node_name(l)) {
            Err("a label is not a name".into())
        } else if !self
            .workflows
            .keys()
            .all(|w| crate::model::is_valid_name(w))
        {
            Err("a workflow name is not one".into())
        } else if !(word(&self.version) && word(&self.arch) && self.features.iter().all(word)) {
            Err("its version, architecture or features are not words".into())
        } else {
            Ok(self)
        }
    }
}

/// Encodes a record.
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("fleet records serialize")
}

/// Decodes a record received from the fleet, or says why not.
pub(crate) fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes is over the {} byte limit",
            bytes.len(),
            MAX_MESSAGE
        ));
    }
    let v: T = serde_json::from_slice(bytes).map_err(|e| format!("malformed record: {e}"))?;
    if v.version() != VERSION {
        return Err(format!(
            "record version {} is not {VERSION}, the one this PicoFlow reads",
            v.version()
        ));
    }
    Ok(v)
}

/// A record with a version field.
pub(crate) trait Versioned {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {
        $(impl Versioned for $t {
            fn version(&self) -> u32 {
                self.v
            }
        })*
    };
}
versioned!(
    NodeRecord,
    Desired,
    Applied,
    RunRequest,
    RunAnswer,
    ExecutionReport
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::{TaskState, WorkflowStatus};

    /// A finished one-task execution of `backup` on `pi-1`, as a node reports it.
    pub(crate) fn report() -> ExecutionReport {
        let now = Utc::now();
        let task = TaskExecution {
            id: "t-1".into(),
            workflow_execution_id: "e-1".into(),
            task_name: "copy[web-1.lan]".into(),
            status: TaskState::Success,
            started_at: now,
            finished_at: Some(now),
            exit_code: Some(0),
            stdout: None,
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            attempt: 1,
            error_message: None,
            duration_seconds: Some(0.5),
            created_at: now,
            outputs: None,
        };
        let execution = WorkflowExecution {
            id: "e-1".into(),
            workflow_name: "backup".into(),
            started_at: now,
            finished_at: Some(now),
            status: WorkflowStatus::Success,
            duration_seconds: Some(1.0),
            total_tasks: 1,
            successful_tasks: 1,
            failed_tasks: 0,
            created_at: now,
            pid: 1,
            source: None,
            definition: None,
        };
        ExecutionReport::new("pi-1", execution, vec![task])
    }

    #[test]
    fn records_no_picoflow_writes_are_refused() {
        assert!(report().check().is_ok());
        let mut r = report();
        r.execution.id = "e-1\nFAKE".into();
        assert!(r.check().unwrap_err().contains("execution id"));
        let mut r = report();
        r.execution.duration_seconds = Some(-1e300);
        assert!(r.check().unwrap_err().contains("duration"));
        let mut r = report();
        r.execution.total_tasks = 4_000_000_000;
        assert!(r.check().unwrap_err().contains("task counts"));
        let mut r = report();
        r.execution.started_at = Utc::now() + chrono::Duration::days(30);
        assert!(r.check().unwrap_err().contains("from now"));
        let mut r = report();
        r.execution.finished_at = Some(r.execution.started_at - chrono::Duration::minutes(10));
        assert!(r.check().unwrap_err().contains("finishes before"));
        let mut r = report();
        r.tasks[0].task_name = "a\u{1b}[2J".into();
        assert!(r.check().unwrap_err().contains("task attempt"));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let e = decode::<RunRequest>(b"{not json").unwrap_err();
        assert!(e.starts_with("malformed record"), "{e}");
        let e = decode::<RunRequest>(br#"{"v": 7, "id": "r", "workflow": "x"}"#).unwrap_err();
        assert!(e.contains("version 7"), "{e}");
        let big = vec![b' '; MAX_MESSAGE + 1];
        let e = decode::<RunRequest>(&big).unwrap_err();
        assert!(e.contains("over the"), "{e}");
        let ok = decode::<RunRequest>(br#"{"v": 1, "id": "r", "workflow": "x"}"#).unwrap();
        assert_eq!(ok.workflow, "x");
    }
}
