//! The operator's side: what the `picoflow fleet` commands do, as blocking calls over one
//! connection (each [`FleetClient`] owns a current-thread tokio runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, Context};
use async_nats::Client;
use chrono::{DateTime, Utc};
use futures_lite::{future, StreamExt};

use super::agent::{ensure, Buckets};
use super::link;
use super::names::{desired_key, split_key, Names};
use super::query::{self, net, Executions, NodeView};
use super::records::{
    self, Applied, Desired, ExecutionReport, NodeRecord, RunAnswer, RunRequest, VERSION,
};
use super::settings::FleetConfig;
use crate::error::{Error, Result};
use crate::events::WorkflowStatus;
use crate::executor::Registry;

/// A connection of the operator's machine to the fleet.
pub struct FleetClient {
    rt: tokio::runtime::Runtime,
    client: Client,
    js: Context,
    names: Names,
    buckets: Buckets,
    heartbeat: Duration,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClient").finish_non_exhaustive()
    }
}

/// One desired workflow as `fleet workflows` shows it.
#[derive(Debug, Clone)]
pub struct DesiredView {
    /// Workflow name.
    pub workflow: String,
    /// `all`, a label or a node name.
    pub target: String,
    /// Its revision in the bucket.
    pub revision: u64,
    /// The file it was published from.
    pub file: String,
    /// When (`None`: the record cannot be read, `file` says why).
    pub published_at: Option<DateTime<Utc>>,
}

/// What `fleet run` gathered from one node.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Node name.
    pub node: String,
    /// Its answer; `None`: it did not answer.
    pub answer: Option<RunAnswer>,
    /// The execution's last record received (with `--wait`).
    pub report: Option<ExecutionReport>,
}

impl RunResult {
    fn new(node: &str) -> RunResult {
        RunResult {
            node: node.to_string(),
            answer: None,
            report: None,
        }
    }
}

impl FleetClient {
    /// Connects to the servers of `cfg` (failing at once when none answers: exit code 7)
    /// and makes sure the fleet's buckets and stream exist.
    pub fn connect(cfg: &FleetConfig) -> Result<FleetClient> {
        if !cfg.enabled() {
            return Err(Error::Config {
                origin: "configuration".into(),
                message: "fleet.url is not set (or PICOFLOW_FLEET_URL)".into(),
            });
        }
        let rt = link::runtime()?;
        let names = Names::new(&cfg.prefix);
        let (client, js, buckets) = rt.block_on(async {
            let opts = link::options(cfg, "picoflow fleet", None).await?;
            let client = opts.connect(cfg.url.0.clone()).await.map_err(|e| {
                Error::Network(
                    format!(
                        "cannot reach the fleet at {}: {e}",
                        link::shown_servers(cfg)
                    )
                    .into(),
                )
            })?;
            let js = jetstream::new(client.clone());
            let buckets = ensure(&js, &names, cfg, true).await.map_err(|e| {
                let e = e.to_string();
                if link::jetstream_missing(&e) {
                    net(format!(
                        "{}: {}",
                        link::shown_servers(cfg),
                        link::NO_JETSTREAM
                    ))
                } else {
                    net(e)
                }
            })?;
            Ok::<_, Error>((client, js, buckets))
        })?;
        Ok(FleetClient {
            rt,
            client,
            js,
            names,
            buckets,
            heartbeat: cfg.heartbeat(),
        })
    }

    /// Every node that ever reported, by name.
    pub fn nodes(&self) -> Result<Vec<NodeView>> {
        self.rt
            .block_on(query::nodes(&self.buckets.nodes, self.heartbeat))
    }

    /// Forgets `node`, which no longer reports: deletes its inventory record and its reports
    /// of applied workflows (how many). Its execution records stay in the results stream. A
    /// node the fleet does not list is not found; one still heard from is refused, since its
    /// next heartbeat would list it again.
    pub fn forget(&self, node: &str) -> Result<usize> {
        check_name("node", node)?;
        let listed = self.nodes()?;
        match listed.iter().find(|n| n.record.node == node) {
            None => {
                return Err(Error::NotFound(format!(
                    "node '{node}' is not in the fleet's inventory"
                )))
            }
            Some(n) if n.alive => {
                return Err(Error::Other(format!(
                    "node '{node}' is still heard from (last at {}): stop its daemon, or remove \
                     its [fleet] url, first",
                    crate::views::local_time(n.record.heartbeat)
                )))
            }
            Some(_) => {}
        }
        self.rt.block_on(async {
            let mut reports = 0;
            let own = format!("{node}.");
            for e in self.buckets.applied.entries().await.map_err(net)? {
                if e.key.starts_with(&own) {
                    self.buckets.applied.delete(&e.key).await.map_err(net)?;
                    reports += 1;
                }
            }
            self.buckets.nodes.delete(node).await.map_err(net)?;
            Ok(reports)
        })
    }

    /// Validates the workflow files (every one, before anything is published: the usual
    /// located errors, exit code 2) and publishes them for `target`. Returns each
    /// workflow's name and revision.
    pub fn apply(
        &self,
        files: &[PathBuf],
        target: &str,
        registry: &Registry,
    ) -> Result<Vec<(String, u64)>> {
        check_target(target)?;
        let mut docs = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let wf = crate::validate::parse_workflow(&text, &f.display().to_string(), registry)?;
            docs.push((wf.name, f.display().to_string(), text));
        }
        self.rt.block_on(async {
            let mut out = Vec::new();
            for (name, file, yaml) in docs {
                let d = Desired {
                    v: VERSION,
                    yaml,
                    file,
                    published_at: Utc::now(),
                };
                let body = records::encode(&d);
                if body.len() > records::MAX_MESSAGE {
                    return Err(Error::Invalid {
                        file: d.file,
                        problems: vec![format!(
                            "over the fleet's {} byte limit",
                            records::MAX_MESSAGE
                        )],
                    });
                }
                let rev = self
                    .buckets
                    .workflows
                    .put(&desired_key(target, &name), body)
                    .await
                    .map_err(net)?;
                out.push((name, rev));
            }
            Ok(out)
        })
    }

    /// Stops publishing workflow `name` (to `target`, or to every target): the nodes remove
    /// it. How many publications were removed.
    pub fn remove(&self, name: &str, target: Option<&str>) -> Result<usize> {
        if let Some(t) = target {
            check_target(t)?;
        }
        check_name("workflow", name)?;
        let nodes: Vec<String> = self.nodes()?.into_iter().map(|n| n.record.node).collect();
        self.rt.block_on(async {
            let mut gone: Vec<DesiredView> = self
                .desired_async()
                .await?
                .into_iter()
                .filter(|d| d.workflow == name && target.is_none_or(|t| t == d.target))
                .collect();
            // The farthest publications go first (all, then labels, older first, then node
            // names), so that no node falls back to another one on the way and applies it
            // again for a moment.
            gone.sort_by_key(|d| {
                let rank = if d.target == "all" {
                    0
                } else if nodes.contains(&d.target) {
                    2
                } else {
                    1
                };
                (rank, d.revision)
            });
            for d in &gone {
                self.buckets
                    .workflows
                    .delete(&desired_key(&d.target, name))
                    .await
                    .map_err(net)?;
            }
            Ok(gone.len())
        })
    }

    /// Every published workflow, and what each node did with it.
    pub fn workflows(&self) -> Result<(Vec<DesiredView>, Vec<Applied>)> {
        self.rt.block_on(async {
            let desired = self.desired_async().await?;
            let mut applied = Vec::new();
            for e in self.buckets.applied.entries().await.map_err(net)? {
                let report = records::decode::<Applied>(&e.value).and_then(|a| {
                    if e.key == format!("{}.{}", a.node, a.workflow) {
                        Ok(a)
                    } else {
                        Err(format!(
                            "the report names node '{}' and workflow '{}', not those of its key",
                            a.node, a.workflow
                        ))
                    }
                });
                match report {
                    Ok(a) => applied.push(a),
                    Err(err) => tracing::warn!(key = %e.key, error = %err, "fleet: report refused"),
                }
            }
            Ok((desired, applied))
        })
    }

    async fn desired_async(&self) -> Result<Vec<DesiredView>> {
        let mut out = Vec::new();
        for e in self.buckets.workflows.entries().await.map_err(net)? {
            let Some((target, name)) = split_key(&e.key) else {
                continue;
            };
            let (file, published_at) = match records::decode::<Desired>(&e.value) {
                Ok(d) => (d.file, Some(d.published_at)),
                Err(err) => (format!("(unreadable: {err})"), None),
            };
            out.push(DesiredView {
                workflow: name.to_string(),
                target: target.to_string(),
                revision: e.revision,
                file,
                published_at,
            });
        }
        out.sort_by(|a, b| (&a.workflow, &a.target).cmp(&(&b.workflow, &b.target)));
        Ok(out)
    }

    /// Starts `workflow` on every node `target` addresses. Waits `answer_for` for their
    /// answers (the nodes expected are those alive in the inventory); with `wait`, also for
    /// each started execution's end, up to that long, calling `progress` as results arrive.
    pub fn run(
        &self,
        workflow: &str,
        target: &str,
        answer_for: Duration,
        wait: Option<Duration>,
        mut progress: impl FnMut(&RunResult),
    ) -> Result<Vec<RunResult>> {
        check_target(target)?;
        check_name("workflow", workflow)?;
        let mut out: BTreeMap<String, RunResult> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.alive && addresses(target, &n.record))
            .map(|n| (n.record.node.clone(), RunResult::new(&n.record.node)))
            .collect();
        self.rt.block_on(async {
            // Follow the results from before the request, so that none is missed.
            let stream = self
                .js
                .get_stream(self.names.results_stream())
                .await
                .map_err(net)?;
            let results = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: self.names.results_filter(None, Some(workflow)),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(net)?
                .messages()
                .await
                .map_err(net)?;
            // Nodes answer on subjects of their own names; the request's reply inbox only
            // hears the server's word that nobody listens to the target.
            let req = RunRequest {
                v: VERSION,
                id: crate::events::new_id().replace('-', ""),
                workflow: workflow.to_string(),
            };
            let inbox = self.client.new_inbox();
            let none = self.client.subscribe(inbox.clone()).await.map_err(net)?;
            let answers = self
                .client
                .subscribe(self.names.answers_filter(&req.id))
                .await
                .map_err(net)?;
            let mut answers = none.or(answers);
            let body = records::encode(&req).into();
            let subject = self.names.run_subject(target);
            self.client
                .publish_with_reply(subject, inbox, body)
                .await
                .map_err(net)?;
            let deadline = Instant::now() + answer_for;
            gather(
                &mut answers,
                &self.names,
                &mut out,
                target,
                deadline,
                wait.is_some(),
                &mut progress,
            )
            .await?;
            if let Some(wait) = wait {
                self.follow(workflow, results, &mut out, wait, &mut progress)
                    .await;
            }
            Ok(out.into_values().collect())
        })
    }

    /// Waits up to `wait` for the end of every execution the nodes in `out` started, taking
    /// their records from `results` as they arrive. When nothing came for a few seconds (a
    /// server of the cluster died and the consumer with it), the latest records are read
    /// afresh.
    async fn follow(
        &self,
        workflow: &str,
        mut results: consumer::pull::Ordered,
        out: &mut BTreeMap<String, RunResult>,
        wait: Duration,
        progress: &mut impl FnMut(&RunResult),
    ) {
        let deadline = Instant::now() + wait;
        let open = |out: &BTreeMap<String, RunResult>| {
            out.values().any(|r| {
                r.answer.as_ref().is_some_and(|a| a.execution.is_some())
                    && r.report
                        .as_ref()
                        .is_none_or(|rep| rep.execution.status == WorkflowStatus::Running)
            })
        };
        let latest = query::Executions {
            workflow: Some(workflow),
            latest_only: true,
            ..Default::default()
        };
        while open(out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let quiet = left.min(Duration::from_secs(3));
            let msg = future::or(async { results.next().await }, async {
                tokio::time::sleep(quiet).await;
                None
            })
            .await;
            let reports = match msg {
                Some(Ok(msg)) => {
                    match query::report_on(&self.names, msg.subject.as_str(), &msg.payload) {
                        Ok(r) => vec![r],
                        Err(e) => {
                            tracing::warn!(subject = %msg.subject, error = %e, "fleet: record refused");
                            Vec::new()
                        }
                    }
                }
                _ => latest.read(&self.js, &self.names).await.unwrap_or_default(),
            };
            for rep in reports {
                take_report(out, rep, progress);
            }
        }
    }

    /// The latest record of every execution of the results stream that `q` asks for, oldest
    /// first. A node or workflow that is not a name (`*`, `>`) is refused (exit code 4).
    pub fn executions(&self, q: &Executions<'_>) -> Result<Vec<ExecutionReport>> {
        if let Some(n) = q.node {
            check_name("node", n)?;
        }
        if let Some(w) = q.workflow {
            check_name("workflow", w)?;
        }
        self.rt.block_on(q.read(&self.js, &self.names))
    }
}

/// Takes the nodes' answers to a run request for `target` from `answers` into `out` until
/// every node expected has answered or `deadline`; a node's first answer counts. A started run
/// is shown through `progress` at once unless the caller `waits` for its end.
async fn gather(
    answers: &mut (impl futures_lite::Stream<Item = async_nats::Message> + Unpin),
    names: &Names,
    out: &mut BTreeMap<String, RunResult>,
    target: &str,
    deadline: Instant,
    waits: bool,
    progress: &mut impl FnMut(&RunResult),
) -> Result<()> {
    let show = |r: &RunResult| !waits || r.answer.as_ref().is_some_and(|a| a.execution.is_none());
    while out.values().any(|r| r.answer.is_none()) || out.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = future::or(async { answers.next().await }, async {
            tokio::time::sleep(left).await;
            None
        })
        .await;
        let Some(msg) = msg else { break };
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // The server says no client listens on the target's subject now.
            if out.is_empty() {
                return Err(Error::NotFound(format!(
                    "no node of the fleet is '{target}' (no connected node has that name or \
                     label)"
                )));
            }
            break;
        }
        let Some(from) = names.answer_node(msg.subject.as_str()) else {
            continue;
        };
        let answer = records::decode::<RunAnswer>(&msg.payload).and_then(|a| {
            if a.node == from {
                Ok(a)
            } else {
                Err(format!(
                    "the answer names node '{}' but came on node '{from}''s subject",
                    a.node
                ))
            }
        });
        match answer {
            Ok(a) => {
                let r = out
                    .entry(a.node.clone())
                    .or_insert_with(|| RunResult::new(&a.node));
                if r.answer.is_some() {
                    // Each node answers once: a second answer in its name comes from another
                    // client (README, "Permissions").
                    tracing::warn!(node = %a.node,
                        "fleet: a second answer in the name of one node; the first is kept");
                    continue;
                }
                r.answer = Some(a);
                if show(r) {
                    progress(r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet: answer refused"),
        }
    }
    Ok(())
}

/// Takes in `rep` when it is the record of an execution a node started for this run; a final
/// one is shown through `progress`.
fn take_report(
    out: &mut BTreeMap<String, RunResult>,
    rep: ExecutionReport,
    progress: &mut impl FnMut(&RunResult),
) {
    let Some(r) = out.get_mut(&rep.node) else {
        return;
    };
    let mine =
        r.answer.as_ref().and_then(|a| a.execution.as_deref()) == Some(rep.execution.id.as_str());
    let known_done = r
        .report
        .as_ref()
        .is_some_and(|old| old.execution.status != WorkflowStatus::Running);
    if mine && !known_done {
        let done = rep.execution.status != WorkflowStatus::Running;
        r.report = Some(rep);
        if done {
            progress(r);
        }
    }
}

/// Whether a run or roll-out for `target` addresses the node of `rec`.
fn addresses(target: &str, rec: &NodeRecord) -> bool {
    target == "all" || target == rec.node || rec.labels.iter().any(|l| l == target)
}

/// A target must be `all`, a label or a node name.
fn check_target(target: &str) -> Result<()> {
    if crate::model::is_valid_name(target) {
        Ok(())
    } else {
        Err(Error::Config {
            origin: "command line".into(),
            message: format!(
                "'{target}' is not a target: all, a label or a node name (letters, digits, '-', '_')"
            ),
        })
    }
}

/// A node or workflow name given on the command line must be one (a subject token, never a
/// wildcard such as `*` or `>`).
fn check_name(what: &str, name: &str) -> Result<()> {
    if crate::model::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Config {
            origin: "command line".into(),
            message: format!("'{name}' is not a {what} name (letters, digits, '-', '_')"),
        })
    }
}
