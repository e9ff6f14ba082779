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
mod tests {
    use super::*;

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
