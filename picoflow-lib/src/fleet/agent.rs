//! A daemon's side of the fleet, on a thread of its own with the tokio runtime the NATS
//! client needs: the inventory heartbeat, the desired workflows, run requests and the
//! outbox of execution records. Nothing here can stop the daemon's own schedules: the
//! scheduler only hears of the fleet through the channels it already listens on (a run
//! request is a trigger like the web API's; an applied workflow is a reload like SIGHUP's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream, Context};
use async_nats::Client;
use chrono::{DateTime, Utc};
use futures_lite::{future, StreamExt};

use super::bucket::Bucket;
use super::inventory;
use super::link::{self, SharedLink};
use super::names::{split_key, Identity, Names};
use super::query;
use super::records::{self, Applied, ExecutionReport, NodeRecord, RunAnswer, RunRequest, VERSION};
use super::rollout::{self, Origin};
use super::settings::FleetConfig;
use crate::contract::{Catalog, FleetSource, Trigger, Triggered};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::executor::Registry;
use crate::store::Store;

/// What the agent works with, handed over by the daemon.
pub(crate) struct Parts {
    pub(crate) config: FleetConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) registry: Registry,
    pub(crate) catalog: Catalog,
    /// Run requests go here, as the web API's do.
    pub(crate) triggers: smol::channel::Sender<Trigger>,
    /// Told when an applied workflow changed: the scheduler reloads.
    pub(crate) reload: smol::channel::Sender<()>,
    /// The fleet directory of applied workflows.
    pub(crate) dir: PathBuf,
    pub(crate) pid_file: PathBuf,
    pub(crate) started: DateTime<Utc>,
    pub(crate) metrics: crate::metrics::Metrics,
}

/// The running agent. Dropping it stops the thread.
pub(crate) struct Agent {
    stop: smol::channel::Sender<()>,
    nudge: smol::channel::Sender<()>,
    views: smol::channel::Sender<ViewRequest>,
    link: SharedLink,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("link", &self.link.get())
            .finish()
    }
}

impl Agent {
    /// Starts the agent. Fails only on a local configuration problem (a credentials file
    /// that cannot be read); a server that cannot be reached is retried in the background.
    pub(crate) fn start(parts: Parts) -> Result<Agent> {
        let rt = link::runtime()?;
        let node = parts.config.node_name();
        let opts = rt.block_on(link::options(
            &parts.config,
            &format!("picoflow {node}"),
            Some(&node),
        ))?;
        let link = SharedLink::new(
            &node,
            link::shown_servers(&parts.config),
            &parts.pid_file,
            parts.metrics.clone(),
        );
        let (stop, stopped) = smol::channel::bounded(1);
        let (nudge, nudged) = smol::channel::bounded(1);
        let (views, view_requests) = smol::channel::bounded(4);
        let thread_link = link.clone();
        let thread = crate::threads::spawn(
            "picoflow-fleet".into(),
            Box::new(move || {
                rt.block_on(async move {
                    let work = run(parts, opts, thread_link, nudged, view_requests);
                    future::or(work, async {
                        let _ = stopped.recv().await;
                    })
                    .await;
                });
            }),
        )
        .map_err(|e| Error::io("picoflow-fleet thread", e))?;
        Ok(Agent {
            stop,
            nudge,
            views,
            link,
            thread: Some(thread),
        })
    }

    /// The fleet as the web UI reads it, through this agent's connection.
    pub(crate) fn source(&self) -> Arc<dyn FleetSource> {
        Arc::new(View(self.views.clone()))
    }

    /// The engine sink that tells the agent when records changed.
    pub(crate) fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(Nudge(self.nudge.clone()))
    }
}

impl Drop for Agent {
    /// Stops the thread and waits for it a few seconds at most: a thread busy in a long
    /// computation (a pathological workflow file being checked) never holds up the daemon's
    /// exit.
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("fleet: the fleet thread did not stop within 3 s; leaving it");
            }
        }
        self.link.remove();
    }
}

/// Wakes the outbox sender when an execution starts or ends or a task ends.
struct Nudge(smol::channel::Sender<()>);

impl EventSink for Nudge {
    fn on_event(&self, event: &Event) {
        if matches!(
            event,
            Event::WorkflowStarted(_) | Event::WorkflowFinished(_) | Event::TaskFinished { .. }
        ) {
            let _ = self.0.try_send(());
        }
    }
}

/// A request of the web UI: where to send the fleet's snapshot.
type ViewRequest = smol::channel::Sender<std::result::Result<serde_json::Value, String>>;

/// The web UI's handle on the agent.
struct View(smol::channel::Sender<ViewRequest>);

impl FleetSource for View {
    fn snapshot(&self) -> std::result::Result<serde_json::Value, String> {
        let (tx, rx) = smol::channel::bounded(1);
        self.0
            .try_send(tx)
            .map_err(|_| "the fleet thread is busy; try again".to_string())?;
        smol::block_on(future::or(
            async {
                rx.recv()
                    .await
                    .unwrap_or_else(|_| Err("the fleet thread stopped".into()))
            },
            async {
                smol::Timer::after(Duration::from_secs(10)).await;
                Err("the fleet server did not answer within 10 s".into())
            },
        ))
    }
}

/// Answers the web UI's requests: the nodes and the latest execution per node and workflow.
async fn serve_views(
    parts: &Parts,
    js: &Context,
    names: &Names,
    nodes: &Bucket,
    requests: smol::channel::Receiver<ViewRequest>,
) {
    while let Ok(reply) = requests.recv().await {
        if !connected(&js.client()) {
            let why = "this daemon is not connected to its fleet's servers now (it works alone \
                       and retries); see its daemon status";
            let _ = reply.send(Err(why.into())).await;
            continue;
        }
        let latest = query::Executions {
            latest_only: true,
            ..Default::default()
        };
        let answer = async {
            let nodes = query::nodes(nodes, parts.config.heartbeat()).await?;
            let latest = latest.read(js, names).await?;
            let nodes: Vec<serde_json::Value> = nodes
                .into_iter()
                .map(|n| {
                    let mut j = serde_json::to_value(&n.record).unwrap_or_default();
                    j["alive"] = n.alive.into();
                    j
                })
                .collect();
            Ok::<_, Error>(serde_json::json!({ "nodes": nodes, "latest": latest }))
        };
        let _ = reply.send(answer.await.map_err(|e| e.to_string())).await;
    }
}

/// Connects (in the background, retrying) and runs every part until the daemon stops.
async fn run(
    parts: Parts,
    opts: async_nats::ConnectOptions,
    link: SharedLink,
    nudged: smol::channel::Receiver<()>,
    views: smol::channel::Receiver<ViewRequest>,
) {
    // Told each time the client (re)connects: what waits for the server goes on at once.
    let (up_tx, up) = smol::channel::bounded::<()>(1);
    let with_events = |opts: async_nats::ConnectOptions| {
        let events = link.clone();
        let up_tx = up_tx.clone();
        opts.event_callback(move |e| {
            let events = events.clone();
            let up_tx = up_tx.clone();
            async move {
                if matches!(e, async_nats::Event::Connected) {
                    let _ = up_tx.try_send(());
                }
                events.on_event(&e)
            }
        })
    };
    // A first attempt of its own: the client's events name only the kind of a failed
    // connection ("IO error"), its error says why (an unknown certificate issuer, a refused
    // connection). Then the client that retries in the background.
    let urls = parts.config.url.0.clone();
    let client = match with_events(opts).connect(urls.clone()).await {
        Ok(c) => c,
        Err(e) => {
            link.on_connect_error(&e);
            let node = parts.config.node_name();
            let name = format!("picoflow {node}");
            let retrying = match link::options(&parts.config, &name, Some(&node)).await {
                Ok(opts) => with_events(opts.retry_on_initial_connect())
                    .connect(urls)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match retrying {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e,
                        "fleet: cannot start the client; the device works alone");
                    return future::pending().await;
                }
            }
        }
    };
    let js = jetstream::new(client.clone());
    let names = Names::new(&parts.config.prefix);
    // Until the server answers, `daemon status` and the metrics still count what waits.
    let b = future::or(
        ensure_retrying(&js, &names, &parts.config, &up, &link),
        count_unsent(&parts, &link, &nudged),
    )
    .await;
    let id = Identity {
        node: parts.config.node_name(),
        labels: parts.config.labels.clone(),
    };
    let parts = Arc::new(parts);
    future::zip(
        future::zip(
            heartbeat(&parts, &id, &client, &b.nodes),
            rollout_loop(&parts, &id, &b.workflows, &b.applied),
        ),
        future::zip(
            answer_runs(&parts, &id, &client, &names),
            future::zip(
                send_outbox(&parts, &id, &js, &names, &link, nudged, &up),
                serve_views(&parts, &js, &names, &b.nodes, views),
            ),
        ),
    )
    .await;
}

/// The fleet's buckets.
pub(crate) struct Buckets {
    pub(crate) nodes: Bucket,
    pub(crate) workflows: Bucket,
    pub(crate) applied: Bucket,
}

/// Creates what is missing of the fleet's buckets and results stream, with `cfg`'s copies
/// and the stream's limits. The `operator` (who may) also sets the limits of a stream that
/// has others.
pub(crate) async fn ensure(
    js: &Context,
    names: &Names,
    cfg: &FleetConfig,
    operator: bool,
) -> std::result::Result<Buckets, async_nats::Error> {
    let replicas = cfg.replicas;
    let nodes = Bucket::open(js, &names.nodes_bucket(), replicas).await?;
    let workflows = Bucket::open(js, &names.workflows_bucket(), replicas).await?;
    let applied = Bucket::open(js, &names.applied_bucket(), replicas).await?;
    let max_age = Duration::from_secs(cfg.results_max_days * 24 * 3600);
    let max_bytes = i64::try_from(cfg.results_max_mb * 1024 * 1024).unwrap_or(i64::MAX);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.results_stream(),
            subjects: vec![names.results_subjects()],
            duplicate_window: Duration::from_secs(3600),
            max_age,
            max_bytes,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let have = &stream.cached_info().config;
    if operator && (have.max_age != max_age || have.max_bytes != max_bytes) {
        js.update_stream(stream::Config {
            max_age,
            max_bytes,
            ..have.clone()
        })
        .await?;
    }
    Ok(Buckets {
        nodes,
        workflows,
        applied,
    })
}

/// [`ensure`], retried with a growing pause until the server answers (at once when the
/// client connects). A connected server that cannot give them is a problem shown in `daemon
/// status` and logged once.
async fn ensure_retrying(
    js: &Context,
    names: &Names,
    cfg: &FleetConfig,
    up: &smol::channel::Receiver<()>,
    link: &SharedLink,
) -> Buckets {
    let mut pause = Duration::from_millis(500);
    loop {
        match ensure(js, names, cfg, false).await {
            Ok(b) => {
                link.set_problem(None);
                return b;
            }
            Err(e) => {
                tracing::debug!(error = %e, "fleet: buckets not ready; retrying");
                if connected(&js.client()) {
                    link.set_problem(Some(unusable(&e.to_string())));
                }
            }
        }
        pause_or_up(pause, up).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// What a connected device tells of a server that cannot give it the fleet's buckets and
/// stream (`error`, the client's words).
fn unusable(error: &str) -> String {
    if link::jetstream_missing(error) {
        link::NO_JETSTREAM.into()
    } else {
        format!(
            "the fleet's buckets and stream cannot be opened ({error}); a device may not create \
             them: run 'picoflow fleet nodes' once as the operator"
        )
    }
}

/// Keeps the count of executions waiting to be sent current (for `daemon status` and the
/// metrics) while nothing is sent: a device that starts without its server. Never returns.
async fn count_unsent(
    parts: &Parts,
    link: &SharedLink,
    nudged: &smol::channel::Receiver<()>,
) -> Buckets {
    loop {
        link.set_unsent(parts.store.outbox_len().unwrap_or(0));
        if nudged.recv().await.is_err() {
            return future::pending().await;
        }
        // Let the store's grouped commit land first.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

/// Waits `pause`, or less when the client connects meanwhile.
async fn pause_or_up(pause: Duration, up: &smol::channel::Receiver<()>) {
    future::or(
        async {
            let _ = up.recv().await;
        },
        tokio::time::sleep(pause),
    )
    .await;
}

/// Whether the client is connected now. While it is not, a publication only waits in the
/// client's queue (which holds 2,048) and reaches the server, stale, when it reconnects.
fn connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// This node's inventory record now.
fn node_record(parts: &Parts, id: &Identity) -> NodeRecord {
    let applied = rollout::applied_in(&parts.dir);
    let workflows = parts
        .catalog
        .entries()
        .into_iter()
        .map(|e| {
            let rev = (e.source.parent() == Some(parts.dir.as_path()))
                .then(|| applied.get(&e.wf.name).map(|o| o.revision))
                .flatten();
            (e.wf.name.to_string(), rev)
        })
        .collect();
    let state_dir = parts
        .store
        .path()
        .parent()
        .unwrap_or(std::path::Path::new(""));
    NodeRecord {
        v: VERSION,
        node: id.node.clone(),
        labels: id.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        features: crate::features()
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| f.to_string())
            .collect(),
        arch: std::env::consts::ARCH.to_string(),
        uptime_seconds: inventory::uptime(&inventory::proc_file("uptime")),
        daemon_started_at: parts.started,
        load1: inventory::load1(&inventory::proc_file("loadavg")),
        memory_available_bytes: inventory::memory_available(&inventory::proc_file("meminfo")),
        disk_free_bytes: inventory::disk_free(state_dir),
        cpu_temperature_celsius: inventory::cpu_temperature(std::path::Path::new(
            "/sys/class/thermal",
        )),
        running: parts.store.running_count().unwrap_or(0),
        workflows,
        heartbeat: Utc::now(),
    }
}

/// Puts the inventory record every heartbeat (one small message per period) while
/// connected.
async fn heartbeat(parts: &Parts, id: &Identity, client: &Client, nodes: &Bucket) {
    loop {
        if connected(client) {
            let rec = node_record(parts, id);
            if let Err(e) = nodes.put(&id.node, records::encode(&rec)).await {
                tracing::debug!(error = %e, "fleet: heartbeat not sent");
            }
        }
        tokio::time::sleep(parts.config.heartbeat()).await;
    }
}

/// Follows the desired workflows (all of them, then every change), applying what addresses
/// this node. The watch is made again after an error.
async fn rollout_loop(parts: &Parts, id: &Identity, workflows: &Bucket, applied: &Bucket) {
    let mut state = Rollout::default();
    loop {
        if let Err(e) = follow(parts, id, workflows, applied, &mut state).await {
            tracing::debug!(error = %e, "fleet: workflow watch ended; watching again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the roll-out knows: the bucket's entries and what was reported.
#[derive(Default)]
struct Rollout {
    /// Key → (revision, value) of every desired workflow seen.
    entries: BTreeMap<String, (u64, Vec<u8>)>,
    /// The last report sent per workflow: (origin, status).
    reported: BTreeMap<String, (Origin, &'static str)>,
}

async fn follow(
    parts: &Parts,
    id: &Identity,
    workflows: &Bucket,
    applied: &Bucket,
    state: &mut Rollout,
) -> std::result::Result<(), async_nats::Error> {
    // A new consumer each time: whether the history is read to its end is the server's
    // answer now, never a state cached when the bucket was opened.
    let mut watch = workflows.watch().await?;
    state.entries.clear();
    if watch.caught_up {
        reconcile(parts, id, applied, state).await;
    }
    loop {
        let caught_up = watch.caught_up;
        // The wait for the next change is never dropped half-way (the consumer's pull would
        // be lost, and the client would make the consumer again); every heartbeat without a
        // change, the local files are looked at again meanwhile: one that took a published
        // workflow's name since is reported.
        let entry = {
            let mut next = std::pin::pin!(watch.next());
            loop {
                let tick = future::or(async { Some(next.as_mut().await) }, async {
                    tokio::time::sleep(parts.config.heartbeat()).await;
                    None
                })
                .await;
                match tick {
                    Some(Some(entry)) => break entry?,
                    Some(None) => return Ok(()),
                    None if caught_up => reconcile(parts, id, applied, state).await,
                    None => {}
                }
            }
        };
        // Only what addresses this node is kept: a node holds a few workflows, whatever the
        // number published to the rest of the fleet.
        let mine = split_key(&entry.key).is_some_and(|(t, _)| id.closeness(t).is_some());
        if entry.deleted || !mine {
            state.entries.remove(&entry.key);
        } else {
            state
                .entries
                .insert(entry.key.clone(), (entry.revision, entry.value));
        }
        if watch.caught_up {
            reconcile(parts, id, applied, state).await;
        }
    }
}

/// Makes the fleet directory match the desired workflows for this node, then reports.
async fn reconcile(parts: &Parts, id: &Identity, applied: &Bucket, state: &mut Rollout) {
    let revisions = state
        .entries
        .iter()
        .map(|(k, (r, _))| (k.clone(), *r))
        .collect();
    let wanted = rollout::choose(id, &revisions);
    let have = rollout::applied_in(&parts.dir);
    let mut changed = false;
    let mut reports: Vec<Report> = Vec::new();
    for (name, origin) in &wanted {
        let local = parts.catalog.get(name);
        if let Some(local) = local.filter(|e| e.source.parent() != Some(parts.dir.as_path())) {
            // A local file took the name: it wins, and what was applied under it goes.
            let why = rollout::local_wins(&local.source);
            if have.contains_key(name) {
                rollout::remove(&parts.dir, name);
                changed = true;
            }
            reports.push((name.clone(), origin.clone(), "refused", Some(why)));
            continue;
        }
        if have.get(name) == Some(origin) {
            reports.push((name.clone(), origin.clone(), "applied", None));
            continue;
        }
        // A refused revision is not checked again at every change of the bucket.
        if state.reported.get(name) == Some(&(origin.clone(), "refused")) {
            continue;
        }
        let key = super::names::desired_key(&origin.target, name);
        let Some((_, value)) = state.entries.get(&key) else {
            continue;
        };
        match rollout::apply(
            &parts.dir,
            name,
            origin,
            value,
            &parts.registry,
            &parts.catalog,
        ) {
            Ok(()) => {
                tracing::info!(workflow = %name, target = %origin.target, revision = origin.revision, "fleet: workflow applied");
                changed = true;
                reports.push((name.clone(), origin.clone(), "applied", None));
            }
            Err(e) => {
                tracing::warn!(workflow = %name, target = %origin.target, revision = origin.revision, error = %e, "fleet: workflow refused");
                reports.push((name.clone(), origin.clone(), "refused", Some(e)));
            }
        }
    }
    for (name, origin) in &have {
        if !wanted.contains_key(name) {
            rollout::remove(&parts.dir, name);
            tracing::info!(workflow = %name, "fleet: workflow removed");
            changed = true;
            reports.push((name.clone(), origin.clone(), "removed", None));
        }
    }
    if changed {
        let _ = parts.reload.send(()).await;
    }
    report(id, applied, state, reports).await;
}

/// What a node did with one desired workflow: its name, the publication, the status and why.
type Report = (String, Origin, &'static str, Option<String>);

/// Puts each report that differs from the last one sent for its workflow.
async fn report(id: &Identity, applied: &Bucket, state: &mut Rollout, reports: Vec<Report>) {
    for (name, origin, status, error) in reports {
        let seen = (origin.clone(), status);
        if state.reported.get(&name) == Some(&seen) {
            continue;
        }
        let rec = Applied {
            v: VERSION,
            node: id.node.clone(),
            workflow: name.clone(),
            target: origin.target.clone(),
            revision: origin.revision,
            status: status.to_string(),
            error,
            at: Utc::now(),
        };
        let key = format!("{}.{name}", id.node);
        if applied.put(&key, records::encode(&rec)).await.is_ok() {
            state.reported.insert(name, seen);
        }
    }
}

/// Answers run requests addressed to this node: each starts a run through the scheduler,
/// under the same overlap rule as a scheduled fire.
async fn answer_runs(parts: &Parts, id: &Identity, client: &Client, names: &Names) {
    let mut subs = Vec::new();
    for target in id.targets() {
        loop {
            match client.subscribe(names.run_subject(target)).await {
                Ok(s) => break subs.push(s),
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: cannot subscribe yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let Some(mut all) = subs
        .into_iter()
        .map(|s| s.boxed())
        .reduce(|a, b| a.or(b).boxed())
    else {
        return;
    };
    while let Some(msg) = all.next().await {
        // A consumer a device made on the workflows' stream can deliver that stream's
        // messages here (NATS permissions cannot bound where a consumer delivers): they keep
        // their own subjects, and only run requests are taken.
        // Status messages (a consumer's idle heartbeats) carry no request either.
        if msg.status.is_some() || !msg.subject.starts_with(&names.run_subject("")) {
            tracing::debug!(subject = %msg.subject, "fleet: not a run request; ignored");
            continue;
        }
        let req: RunRequest = match records::decode(&msg.payload).and_then(|r: RunRequest| {
            if !crate::model::is_valid_name(&r.id) {
                Err(format!("'{}' is not a request id", r.id.escape_debug()))
            } else if !crate::model::is_valid_name(&r.workflow) {
                Err(format!(
                    "'{}' is not a workflow name",
                    r.workflow.escape_debug()
                ))
            } else {
                Ok(r)
            }
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "fleet: run request refused");
                continue;
            }
        };
        let answer = start_run(parts, &req.workflow).await;
        let (answer, execution) = match answer {
            Some(Triggered::Started(e)) => ("started", Some(e)),
            Some(Triggered::Busy) => ("busy", None),
            Some(Triggered::NotFound) => ("not_found", None),
            None => ("stopping", None),
        };
        let a = RunAnswer {
            v: VERSION,
            node: id.node.clone(),
            answer: answer.into(),
            execution,
        };
        let subject = names.answer_subject(&id.node, &req.id);
        let _ = client.publish(subject, records::encode(&a).into()).await;
    }
}

/// Asks the scheduler for a run of `workflow`; `None` when it no longer takes requests.
async fn start_run(parts: &Parts, workflow: &str) -> Option<Triggered> {
    let (tx, rx) = smol::channel::bounded(1);
    let t = Trigger {
        workflow: workflow.to_string(),
        reply: tx,
        by: "the fleet",
    };
    parts.triggers.send(t).await.ok()?;
    rx.recv().await.ok()
}

/// Sends the outbox: each changed execution's current records, once per content (the
/// stream drops a message id it has seen), oldest execution first; a row leaves the outbox
/// when the server acknowledged it. Woken by the engine, every heartbeat for records
/// written by other processes, and when the client reconnects; nothing is sent while it is
/// not connected.
async fn send_outbox(
    parts: &Parts,
    id: &Identity,
    js: &Context,
    names: &Names,
    link: &SharedLink,
    nudged: smol::channel::Receiver<()>,
    up: &smol::channel::Receiver<()>,
) {
    let client = js.client();
    let mut pause = Duration::from_millis(500);
    loop {
        if !connected(&client) {
            link.set_unsent(parts.store.outbox_len().unwrap_or(0));
            // Counted again when the engine records (the count grows while the server is
            // away), sent when the client reconnects; the heartbeat bounds the wait should a
            // connection event be missed.
            future::or(
                async {
                    let _ = nudged.recv().await;
                    // Let the store's grouped commit land first.
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                },
                pause_or_up(parts.config.heartbeat(), up),
            )
            .await;
            continue;
        }
        match send_batch(parts, id, js, names).await {
            Ok(0) => {
                link.set_unsent(parts.store.outbox_len().unwrap_or(0));
                pause = Duration::from_millis(500);
                future::or(
                    async {
                        let _ = nudged.recv().await;
                        // Let the store's grouped commit land first.
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                    },
                    tokio::time::sleep(parts.config.heartbeat()),
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                link.set_unsent(parts.store.outbox_len().unwrap_or(0));
                tracing::debug!(error = %e, "fleet: records not sent; retrying");
                pause_or_up(pause, up).await;
                // Connected but refused: a stream electing a new leader, a timeout. Records
                // flow again within seconds of the server's recovery.
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sends up to 64 executions of the outbox; how many.
async fn send_batch(
    parts: &Parts,
    id: &Identity,
    js: &Context,
    names: &Names,
) -> std::result::Result<usize, async_nats::Error> {
    let pending = parts.store.outbox_pending(64)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut reports = Vec::new();
    let mut gone = Vec::new();
    for p in pending {
        match parts.store.execution(&p.execution)? {
            Some(e) => {
                let tasks = parts.store.task_executions(&p.execution)?;
                reports.push((p, ExecutionReport::new(&id.node, e, tasks)));
            }
            None => gone.push(p),
        }
    }
    reports.sort_by_key(|r| r.1.execution.started_at);
    let mut acks = Vec::new();
    for (p, r) in &reports {
        let body = records::encode(r);
        let msg_id = format!("{}.{}.{:016x}", id.node, r.execution.id, digest(&body));
        let subject = names.results_subject(&id.node, &r.execution.workflow_name);
        let publish = jetstream::message::PublishMessage::build()
            .message_id(msg_id)
            .payload(body.into());
        acks.push((p.clone(), js.send_publish(subject, publish).await?));
    }
    let mut sent = gone;
    let mut failed = None;
    for (p, ack) in acks {
        match ack.await {
            Ok(_) => sent.push(p),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let n = sent.len();
    parts.store.outbox_sent(&sent)?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(n),
    }
}

/// A digest of a message's bytes, for its de-duplication id (FNV-1a, 64 bits: stable across
/// builds, unlike std's hasher).
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
