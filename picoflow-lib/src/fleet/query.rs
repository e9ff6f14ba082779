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

/// Every node that ever reported, by name; a node is alive when heard from within three
/// `heartbeat`s. A record that cannot be read is logged and left out.
pub(crate) async fn nodes(bucket: &Bucket, heartbeat: Duration) -> Result<Vec<NodeView>> {
    let stale = chrono::Duration::from_std(heartbeat * 3).unwrap_or_default();
    let mut out = Vec::new();
    for e in bucket.entries().await.map_err(net)? {
        match records::decode::<NodeRecord>(&e.value) {
            Ok(record) => {
                let alive = Utc::now() - record.heartbeat < stale;
                out.push(NodeView { record, alive });
            }
            Err(err) => tracing::warn!(node = %e.key, error = %err, "fleet: node record refused"),
        }
    }
    out.sort_by(|a, b| a.record.node.cmp(&b.record.node));
    Ok(out)
}

fn to_time(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_micros()) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Which executions to read from the results stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Executions<'a> {
    /// Only this node's.
    pub(crate) node: Option<&'a str>,
    /// Only this workflow's.
    pub(crate) workflow: Option<&'a str>,
    /// Only those started at or after this instant.
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only the last record per node and workflow.
    pub(crate) latest_only: bool,
}

impl Executions<'_> {
    /// The latest record of each execution asked for, oldest first.
    pub(crate) async fn read(&self, js: &Context, names: &Names) -> Result<Vec<ExecutionReport>> {
        let stream = js.get_stream(names.results_stream()).await.map_err(net)?;
        let deliver_policy = match (self.latest_only, self.since) {
            (true, _) => consumer::DeliverPolicy::LastPerSubject,
            (false, Some(t)) => consumer::DeliverPolicy::ByStartTime {
                start_time: to_time(t),
            },
            (false, None) => consumer::DeliverPolicy::All,
        };
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
            match records::decode::<ExecutionReport>(&msg.payload) {
                Ok(r) => {
                    by_id.insert(format!("{}/{}", r.node, r.execution.id), r);
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "fleet: record refused")
                }
            }
        }
        let since = self.since;
        let mut out: Vec<ExecutionReport> = by_id
            .into_values()
            .filter(|r| since.is_none_or(|t| r.execution.started_at >= t))
            .collect();
        out.sort_by_key(|r| r.execution.started_at);
        Ok(out)
    }
}
