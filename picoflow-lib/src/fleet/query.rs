//! Reads of the fleet's state shared by the operator's commands and the daemon's web page:
//! the nodes' inventory and the executions the results stream holds.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{consumer, Context};
use chrono::{DateTime, Utc};
use futures_lite::StreamExt;

use super::bucket::Bucket;
use super::names::Names;
use super::records::{self, ExecutionReport, NodeRecord};
use crate::error::{Error, Result};
use crate::events::WorkflowStatus;

/// One node as `fleet nodes` and the fleet page list it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its last inventory record.
    pub record: NodeRecord,
    /// Heard from within three heartbeats.
    pub alive: bool,
}

/// A network error of the fleet (exit code 7).
pub(crate) fn net(e: impl std::fmt::Display) -> Error {
    Error::Network(e.to_string().into())
}

/// Every node that ever reported, by name, its `heartbeat` the instant the server stored its
/// record; a node is alive when heard from within three `heartbeat`s. A record that cannot be read is logged and left out.
pub(crate) async fn nodes(bucket: &Bucket, heartbeat: Duration) -> Result<Vec<NodeView>> {
    let stale = chrono::Duration::from_std(heartbeat * 3).unwrap_or_default();
    let mut out = Vec::new();
    for e in bucket.entries().await.map_err(net)? {
        let record = records::decode::<NodeRecord>(&e.value)
            .and_then(|r| keyed(r, &e.key))
            .and_then(NodeRecord::check);
        match record {
            Ok(mut record) => {
                // The server's clock says when the node was heard from: a device's own clock
                // may be wrong (a Pi without a real-time clock) or lie.
                record.heartbeat = e.stored;
                let alive = Utc::now() - record.heartbeat < stale;
                out.push(NodeView { record, alive });
            }
            Err(err) => tracing::warn!(node = %e.key, error = %err, "fleet: node record refused"),
        }
    }
    out.sort_by(|a, b| a.record.node.cmp(&b.record.node));
    Ok(out)
}

/// A node's record, refused unless it names the node of its key: a device's NATS user may
/// write only its own key, and a record there that names another node is a forgery.
fn keyed(record: NodeRecord, key: &str) -> std::result::Result<NodeRecord, String> {
    if record.node == key {
        Ok(record)
    } else {
        Err(format!(
            "the record names node '{}' but was written on key '{key}'",
            record.node
        ))
    }
}

/// An execution record from the results stream, refused unless it names the node and the
/// workflow of the subject it came on (a device's NATS user may publish only on its own
/// node's subjects: a record there that names another node is a forgery).
pub(crate) fn report_on(
    names: &Names,
    subject: &str,
    payload: &[u8],
) -> std::result::Result<ExecutionReport, String> {
    let r = records::decode::<ExecutionReport>(payload)?;
    if subject == names.results_subject(&r.node, &r.execution.workflow_name) {
        r.check()
    } else {
        Err(format!(
            "the record names node '{}' and workflow '{}', not those of its subject",
            r.node, r.execution.workflow_name
        ))
    }
}

fn to_time(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_micros()) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Which executions to read from the results stream (`fleet status`, `fleet history`, the
/// fleet page).
#[derive(Debug, Clone, Copy, Default)]
pub struct Executions<'a> {
    /// Only this node's.
    pub node: Option<&'a str>,
    /// Only this workflow's.
    pub workflow: Option<&'a str>,
    /// Only those whose latest record has this status.
    pub status: Option<WorkflowStatus>,
    /// Only those started at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only the last record per node and workflow.
    pub latest_only: bool,
    /// At most this many, of those the stream received last: only the stream's tail is read
    /// (a window that grows until it holds enough), not its whole history.
    pub limit: Option<usize>,
}

impl Executions<'_> {
    /// The latest record of each execution asked for, oldest first.
    pub(crate) async fn read(&self, js: &Context, names: &Names) -> Result<Vec<ExecutionReport>> {
        let mut stream = js.get_stream(names.results_stream()).await.map_err(net)?;
        let policy = match (self.latest_only, self.since) {
            (true, _) => consumer::DeliverPolicy::LastPerSubject,
            (false, Some(t)) => consumer::DeliverPolicy::ByStartTime {
                start_time: to_time(t),
            },
            (false, None) => consumer::DeliverPolicy::All,
        };
        let Some(limit) = self.limit.filter(|_| !self.latest_only) else {
            return self.read_from(&stream, names, policy).await;
        };
        let (first, last) = {
            let state = &stream.info().await.map_err(net)?.state;
            (state.first_sequence, state.last_sequence)
        };
        // Records per execution: one when it starts, one per task, one when it ends.
        let mut window = (limit as u64).saturating_mul(8).max(256);
        loop {
            let start = last.saturating_sub(window) + 1;
            // The window holds the whole stream (an empty one too).
            if window >= last || start <= first {
                let mut all = self.read_from(&stream, names, policy).await?;
                all.drain(..all.len().saturating_sub(limit));
                return Ok(all);
            }
            let tail = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            };
            let mut got = self.read_from(&stream, names, tail).await?;
            if got.len() >= limit {
                got.drain(..got.len() - limit);
                return Ok(got);
            }
            window = window.saturating_mul(4);
        }
    }

    /// The latest record of each execution among the messages `policy` delivers, filtered,
    /// oldest first.
    async fn read_from(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        names: &Names,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<Vec<ExecutionReport>> {
        let c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: names.results_filter(self.node, self.workflow),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(net)?;
        let mut pending = c.cached_info().num_pending;
        let mut msgs = c.messages().await.map_err(net)?;
        let mut by_id: BTreeMap<String, ExecutionReport> = BTreeMap::new();
        while pending > 0 {
            let Some(msg) = msgs.next().await else { break };
            let msg = msg.map_err(net)?;
            pending = msg.info().map_or(0, |i| i.pending);
            match report_on(names, msg.subject.as_str(), &msg.payload) {
                Ok(r) => {
                    by_id.insert(format!("{}/{}", r.node, r.execution.id), r);
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "fleet: record refused")
                }
            }
        }
        let mut out: Vec<ExecutionReport> = by_id
            .into_values()
            .filter(|r| self.since.is_none_or(|t| r.execution.started_at >= t))
            .filter(|r| self.status.is_none_or(|s| r.execution.status == s))
            .collect();
        out.sort_by_key(|r| r.execution.started_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, workflow: &str) -> Vec<u8> {
        let mut r = records::tests::report();
        r.node = node.into();
        r.execution.workflow_name = workflow.into();
        records::encode(&r)
    }

    #[test]
    fn a_record_must_name_the_node_and_workflow_of_its_subject() {
        let names = Names::new("pf");
        let ok = report_on(&names, "pf.exec.pi-1.backup", &report("pi-1", "backup")).unwrap();
        assert_eq!(ok.node, "pi-1");
        let e = report_on(&names, "pf.exec.pi-1.backup", &report("pi-2", "backup")).unwrap_err();
        assert!(e.contains("names node 'pi-2'"), "{e}");
        let e = report_on(&names, "pf.exec.pi-1.backup", &report("pi-1", "other")).unwrap_err();
        assert!(e.contains("workflow 'other'"), "{e}");
        assert!(report_on(&names, "pf.exec.pi-1.backup", b"{").is_err());
    }
}
