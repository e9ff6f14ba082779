//! Prometheus metrics and the health endpoint (OBS-003, OBS-006), built with the `metrics`
//! feature.
//!
//! [`Metrics`] is an [`EventSink`]: the engine feeds it the same events as the state store,
//! and it keeps the counters, gauges and histograms of the user guide's "Prometheus Metrics"
//! section. As a service of the daemon's HTTP endpoint it answers `GET /metrics` and
//! `GET /health`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use smol::Executor;

use crate::error::Result;
use crate::events::{Event, EventSink, SkipReason, TaskExecution, TaskState, WorkflowStatus};
use crate::httpd::{Request, Response, Server, Service};
use crate::model::Workflow;

/// Histogram bounds in seconds: tasks on edge devices range from sub-second checks to
/// multi-hour backups, so the buckets span 0.1 s to 4 h (the user guide's 60/300/600 among them).
const DURATION_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Label used when a task event arrives for an execution whose start was not seen
/// (the sink was attached mid-run).
const UNKNOWN_WORKFLOW: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowStatusLabels {
    workflow: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    workflow: String,
    task: String,
}

/// A requirement that did not hold: of which task, which guard, and whether the task was
/// skipped or failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnmetLabels {
    workflow: String,
    task: String,
    guard: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskStatusLabels {
    workflow: String,
    task: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Run-time counters of one PicoFlow process, exposed in the Prometheus text format
/// (OBS-003) and summarised as the `/health` JSON body (OBS-006).
///
/// Cheap to clone: clones share the same counters, so one clone can be given to the engine
/// as its [`EventSink`] and another to the daemon's HTTP endpoint.
///
/// Semantics of the task series: `picoflow_task_executions_total` counts each task once per
/// workflow execution, with its final status (`success`, `failed`, `timeout` or `skipped`);
/// an attempt followed by a retry counts in `picoflow_task_retries_total` instead.
/// `picoflow_task_duration_seconds` observes the final attempt of every task that ran.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    workflow_executions: Family<WorkflowStatusLabels, Counter>,
    workflow_duration: Histograms<WorkflowLabels>,
    workflow_running: Family<WorkflowLabels, Gauge>,
    task_executions: Family<TaskStatusLabels, Counter>,
    task_duration: Histograms<TaskLabels>,
    task_retries: Family<TaskLabels, Counter>,
    requirements_unmet: Family<UnmetLabels, Counter>,
    uptime: Gauge<f64, AtomicU64>,
    memory: Gauge,
    /// 1 while connected to the fleet's servers (registered for a daemon in a fleet).
    fleet_connected: Gauge,
    /// Executions whose records the fleet has not yet received.
    fleet_unsent: Gauge,
    /// The daemon's view of the wall clock (registered for a daemon).
    clock: ClockGauges,
    started: Instant,
    workflows_loaded: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Workflow name of every running execution, so task events (which carry only the
    /// execution id) get their `workflow` label.
    running: HashMap<String, String>,
    /// Status of the latest finished execution of each workflow, for `/health`.
    last_results: BTreeMap<String, WorkflowStatus>,
}

/// `picoflow_requirements_unmet_total`, registered.
fn unmet_counter(registry: &mut Registry) -> Family<UnmetLabels, Counter> {
    let family = Family::<UnmetLabels, Counter>::default();
    registry.register(
        "requirements_unmet",
        "Tasks skipped or failed because a guard of their requires: did not hold",
        family.clone(),
    );
    family
}

/// The fleet's gauges, registered (shown) only for a daemon in a fleet.
fn fleet_gauges(registry: &mut Registry, fleet: bool) -> (Gauge, Gauge) {
    let connected = Gauge::default();
    let unsent = Gauge::default();
    if fleet {
        registry.register(
            "fleet_connected",
            "1 while connected to the fleet's NATS servers",
            connected.clone(),
        );
        registry.register(
            "fleet_unsent_executions",
            "Executions whose latest records the fleet has not yet received",
            unsent.clone(),
        );
    }
    (connected, unsent)
}

/// The daemon's clock series: whether the system clock is synchronised, whether the
/// schedules wait for it, and the wall-clock jumps seen while running.
#[derive(Debug, Default)]
struct ClockGauges {
    synced: Gauge,
    waiting: Gauge,
    jumps: Counter,
}

impl ClockGauges {
    fn register(registry: &mut Registry, daemon: bool) -> ClockGauges {
        let g = ClockGauges::default();
        if daemon {
            registry.register(
                "clock_synced",
                "1 while the system clock is reported synchronised by a time service",
                g.synced.clone(),
            );
            registry.register(
                "clock_waiting",
                "1 while schedules wait for the system clock to be synchronised",
                g.waiting.clone(),
            );
            registry.register(
                "clock_jumps",
                "Steps of the wall clock against the monotonic clock seen by the scheduler",
                g.jumps.clone(),
            );
        }
        g
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh counters; the uptime clock starts now.
    pub fn new() -> Metrics {
        Metrics::build(false, false)
    }

    /// A daemon's metrics: [`Metrics::new`], with the fleet's gauges
    /// (`picoflow_fleet_connected`, `picoflow_fleet_unsent_executions`) when it is in a fleet,
    /// and the clock's (`picoflow_clock_synced`, `picoflow_clock_waiting`,
    /// `picoflow_clock_jumps_total`).
    pub fn for_daemon(fleet: bool) -> Metrics {
        Metrics::build(fleet, true)
    }

    fn build(fleet: bool, daemon: bool) -> Metrics {
        let mut registry = Registry::with_prefix("picoflow");
        let workflow_executions = Family::<WorkflowStatusLabels, Counter>::default();
        let workflow_duration: Histograms<WorkflowLabels> =
            Family::new_with_constructor(duration_histogram);
        let workflow_running = Family::<WorkflowLabels, Gauge>::default();
        let task_executions = Family::<TaskStatusLabels, Counter>::default();
        let task_duration: Histograms<TaskLabels> =
            Family::new_with_constructor(duration_histogram);
        let task_retries = Family::<TaskLabels, Counter>::default();
        let info = Family::<VersionLabels, Gauge>::default();
        let uptime = Gauge::<f64, AtomicU64>::default();
        let memory = Gauge::default();

        // Counters get their `_total` suffix from the encoder, and the unit is appended to
        // the name, so the exposed names are exactly the user guide's.
        registry.register(
            "workflow_executions",
            "Total workflow executions",
            workflow_executions.clone(),
        );
        registry.register_with_unit(
            "workflow_duration",
            "Workflow execution duration",
            Unit::Seconds,
            workflow_duration.clone(),
        );
        registry.register(
            "workflow_running",
            "Current running workflows",
            workflow_running.clone(),
        );
        registry.register(
            "task_executions",
            "Total task executions",
            task_executions.clone(),
        );
        registry.register_with_unit(
            "task_duration",
            "Task execution duration",
            Unit::Seconds,
            task_duration.clone(),
        );
        registry.register(
            "task_retries",
            "Total task retry attempts",
            task_retries.clone(),
        );
        registry.register("info", "PicoFlow version info", info.clone());
        registry.register_with_unit(
            "uptime",
            "PicoFlow daemon uptime",
            Unit::Seconds,
            uptime.clone(),
        );
        registry.register_with_unit(
            "memory",
            "Memory usage in bytes (resident set size)",
            Unit::Bytes,
            memory.clone(),
        );
        let requirements_unmet = unmet_counter(&mut registry);
        let (fleet_connected, fleet_unsent) = fleet_gauges(&mut registry, fleet);
        let clock = ClockGauges::register(&mut registry, daemon);
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);

        Metrics {
            inner: Arc::new(Inner {
                registry,
                workflow_executions,
                workflow_duration,
                workflow_running,
                task_executions,
                task_duration,
                task_retries,
                requirements_unmet,
                uptime,
                memory,
                fleet_connected,
                fleet_unsent,
                clock,
                started: Instant::now(),
                workflows_loaded: AtomicUsize::new(0),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Whether this build collects and serves metrics (`true`: built with `metrics`).
    pub fn enabled() -> bool {
        true
    }

    /// `/metrics` and `/health` for the daemon's HTTP endpoint.
    pub(crate) fn service(&self) -> Option<Arc<dyn Service>> {
        Some(Arc::new(self.clone()))
    }

    /// Records the workflows the daemon has loaded: their count for `/health`, and every
    /// series whose labels they determine at 0, so that a `rate()` or an alert over retries or
    /// failed executions works from the first scrape, before the first one happens.
    pub fn set_workflows<'w>(&self, workflows: impl IntoIterator<Item = &'w Workflow>) {
        let inner = &self.inner;
        let mut n = 0;
        for wf in workflows {
            n += 1;
            for status in [
                WorkflowStatus::Success,
                WorkflowStatus::Failed,
                WorkflowStatus::Interrupted,
            ] {
                // Creating the series is the point; the guard is dropped at once.
                drop(
                    inner
                        .workflow_executions
                        .get_or_create(&WorkflowStatusLabels {
                            workflow: wf.name.clone(),
                            status: status.as_str().to_string(),
                        }),
                );
            }
            for task in &wf.tasks {
                drop(inner.task_retries.get_or_create(&TaskLabels {
                    workflow: wf.name.clone(),
                    task: task.name.clone(),
                }));
            }
        }
        inner.workflows_loaded.store(n, Ordering::Relaxed);
    }

    /// The fleet link's state: connected or not, executions not yet sent.
    pub fn set_fleet(&self, connected: bool, unsent: usize) {
        self.inner.fleet_connected.set(i64::from(connected));
        self.inner.fleet_unsent.set(unsent as i64);
    }

    /// The clock's state: synchronised or not, and whether the schedules wait for it.
    pub fn set_clock(&self, synced: bool, waiting: bool) {
        self.inner.clock.synced.set(i64::from(synced));
        self.inner.clock.waiting.set(i64::from(waiting));
    }

    /// Counts one step of the wall clock seen while running.
    pub fn clock_jumped(&self) {
        self.inner.clock.jumps.inc();
    }

    /// Every metric in the Prometheus text exposition format, version 0.0.4 (OBS-003).
    ///
    /// Uptime and resident memory are sampled here, so they are current at each scrape
    /// without any timer running while the daemon is idle.
    pub fn render(&self) -> String {
        let inner = &self.inner;
        inner.uptime.set(inner.started.elapsed().as_secs_f64());
        if let Some(bytes) = resident_bytes() {
            inner.memory.set(bytes);
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoder error would only mean a bug in a
        // label encoder, and a partial page is still the most useful thing to return.
        let _ = prometheus_text::encode(&mut out, &inner.registry);
        out
    }

    /// The `/health` body (OBS-006): `{"status":"ok","uptime_seconds":…,
    /// "workflows_loaded":…,"last_results":{"<workflow>":"success"|"failed"|…}}`.
    pub fn health_json(&self) -> String {
        let inner = &self.inner;
        let last: BTreeMap<String, &str> = self
            .state()
            .last_results
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str()))
            .collect();
        serde_json::json!({
            "status": "ok",
            "uptime_seconds": inner.started.elapsed().as_secs(),
            "workflows_loaded": inner.workflows_loaded.load(Ordering::Relaxed),
            "last_results": last,
        })
        .to_string()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state holds plain maps that stay consistent even if a holder panicked.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn workflow_of(&self, execution_id: &str) -> String {
        self.state()
            .running
            .get(execution_id)
            .cloned()
            .unwrap_or_else(|| UNKNOWN_WORKFLOW.to_string())
    }
}

impl EventSink for Metrics {
    fn on_event(&self, event: &Event) {
        let inner = &self.inner;
        match event {
            Event::WorkflowStarted(exec) => {
                let fresh = self
                    .state()
                    .running
                    .insert(exec.id.clone(), exec.workflow_name.clone())
                    .is_none();
                if fresh {
                    inner
                        .workflow_running
                        .get_or_create(&WorkflowLabels {
                            workflow: exec.workflow_name.clone(),
                        })
                        .inc();
                }
            }
            Event::WorkflowFinished(exec) => {
                let workflow = exec.workflow_name.clone();
                let was_running = {
                    let mut state = self.state();
                    state.last_results.insert(workflow.clone(), exec.status);
                    state.running.remove(&exec.id).is_some()
                };
                let labels = WorkflowLabels { workflow };
                if was_running {
                    inner.workflow_running.get_or_create(&labels).dec();
                }
                inner
                    .workflow_executions
                    .get_or_create(&WorkflowStatusLabels {
                        workflow: labels.workflow.clone(),
                        status: exec.status.as_str().to_string(),
                    })
                    .inc();
                if let Some(secs) = exec.duration_seconds {
                    inner.workflow_duration.get_or_create(&labels).observe(secs);
                }
            }
            Event::TaskFinished { record, retry_in } => {
                let labels = TaskLabels {
                    workflow: self.workflow_of(&record.workflow_execution_id),
                    task: task_label(&record.task_name),
                };
                if retry_in.is_some() {
                    inner.task_retries.get_or_create(&labels).inc();
                    return;
                }
                if let Some(secs) = record.duration_seconds {
                    inner.task_duration.get_or_create(&labels).observe(secs);
                }
                self.count_unmet(record, &labels);
                inner
                    .task_executions
                    .get_or_create(&TaskStatusLabels {
                        workflow: labels.workflow,
                        task: labels.task,
                        status: record.status.as_str().to_string(),
                    })
                    .inc();
            }
            Event::TaskSkipped(record) => {
                let labels = TaskLabels {
                    workflow: self.workflow_of(&record.workflow_execution_id),
                    task: task_label(&record.task_name),
                };
                self.count_unmet(record, &labels);
                inner
                    .task_executions
                    .get_or_create(&TaskStatusLabels {
                        workflow: labels.workflow,
                        task: labels.task,
                        status: record.status.as_str().to_string(),
                    })
                    .inc();
            }
            Event::TaskStarted(_) => {}
        }
    }
}

impl Metrics {
    /// Counts `record` in `picoflow_requirements_unmet_total` when an unmet requirement
    /// ended its task (its message says so).
    fn count_unmet(&self, record: &TaskExecution, labels: &TaskLabels) {
        let message = record.error_message.as_deref().unwrap_or_default();
        let (action, why) = match record.status {
            TaskState::Skipped => ("skip", message.strip_prefix("skipped: ")),
            TaskState::Failed => ("fail", Some(message)),
            _ => return,
        };
        let Some(why) = why.and_then(|w| w.strip_prefix(SkipReason::UNMET)) else {
            return;
        };
        let guard = why.trim_start().split(':').next().unwrap_or_default();
        self.inner
            .requirements_unmet
            .get_or_create(&UnmetLabels {
                workflow: labels.workflow.clone(),
                task: labels.task.clone(),
                guard: guard.to_string(),
                action: action.to_string(),
            })
            .inc();
    }
}

/// The `task` label of an attempt: a loop's tasks (`upload[a.txt]`) count under the loop's
/// name, so that the number of series does not grow with the items.
fn task_label(name: &str) -> String {
    name.split('[').next().unwrap_or(name).to_string()
}

/// Resident set size of this process: pages from `/proc/self/statm` times the page size.
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes no pointers and only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages.saturating_mul(page as i64))
}

/// An HTTP endpoint serving only `GET /metrics` (OBS-003) and `GET /health` (OBS-006), for
/// programs that embed the engine without the daemon (the daemon serves them on its own
/// endpoint, beside the web UI).
///
/// Its accept loop and one task per connection run on the executor passed to
/// [`MetricsServer::start`]; it starts no thread of its own. Dropping the server cancels the
/// accept loop and every open connection.
#[derive(Debug)]
pub struct MetricsServer {
    server: Server,
}

impl MetricsServer {
    /// Listens on `bind:port` and serves `metrics` from tasks spawned on `ex`.
    ///
    /// Binding happens before this returns, so an address in use or a bad bind address is
    /// reported here (as [`Error::Network`](crate::Error::Network)). The caller must keep
    /// running `ex` for requests to be answered. Port 0 picks a free port; see
    /// [`MetricsServer::local_addr`].
    pub fn start(
        ex: &Arc<Executor<'static>>,
        bind: &str,
        port: u16,
        metrics: Metrics,
    ) -> Result<MetricsServer> {
        let server = Server::start(ex, bind, port, vec![Arc::new(metrics)])?;
        Ok(MetricsServer { server })
    }

    /// The address actually listened on (`None` only in builds without `metrics`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.server.local_addr())
    }
}

impl Service for Metrics {
    /// `GET /metrics` (OBS-003) and `GET /health` (OBS-006).
    fn handle(&self, request: &Request) -> Option<Response> {
        if !["/metrics", "/health"].contains(&request.path.as_str()) {
            return None;
        }
        Some(match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/metrics") => Response::new(200, prometheus_text::CONTENT_TYPE, self.render()),
            ("GET", _) => Response::json(200, self.health_json()),
            _ => Response::status(405).with("Allow", "GET, HEAD"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::WorkflowExecution;
    use chrono::Utc;
    use std::time::Duration;

    fn execution(
        id: &str,
        name: &str,
        status: WorkflowStatus,
        secs: Option<f64>,
    ) -> WorkflowExecution {
        let now = Utc::now();
        WorkflowExecution {
            id: id.into(),
            workflow_name: name.into(),
            started_at: now,
            finished_at: secs.map(|_| now),
            status,
            duration_seconds: secs,
            total_tasks: 2,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: now,
            pid: std::process::id(),
            source: None,
            definition: None,
        }
    }

    fn attempt(
        exec: &str,
        task: &str,
        status: TaskState,
        attempt: u32,
        secs: Option<f64>,
    ) -> TaskExecution {
        let now = Utc::now();
        TaskExecution {
            id: crate::events::new_id(),
            workflow_execution_id: exec.into(),
            task_name: task.into(),
            status,
            started_at: now,
            finished_at: secs.map(|_| now),
            exit_code: None,
            stdout: None,
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            attempt,
            error_message: None,
            duration_seconds: secs,
            created_at: now,
            outputs: None,
        }
    }

    /// The value of the sample line `name` (with its labels, exactly as rendered).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn feed(m: &Metrics) {
        m.on_event(&Event::WorkflowStarted(execution(
            "e1",
            "backup",
            WorkflowStatus::Running,
            None,
        )));
        m.on_event(&Event::TaskStarted(attempt(
            "e1",
            "dump",
            TaskState::Running,
            1,
            None,
        )));
        m.on_event(&Event::TaskFinished {
            record: attempt("e1", "dump", TaskState::Retrying, 1, Some(0.2)),
            retry_in: Some(Duration::from_secs(1)),
        });
        m.on_event(&Event::TaskFinished {
            record: attempt("e1", "dump", TaskState::Retrying, 2, Some(0.2)),
            retry_in: Some(Duration::from_secs(2)),
        });
        m.on_event(&Event::TaskFinished {
            record: attempt("e1", "dump", TaskState::Failed, 3, Some(42.0)),
            retry_in: None,
        });
        m.on_event(&Event::TaskSkipped(attempt(
            "e1",
            "upload",
            TaskState::Skipped,
            1,
            None,
        )));
    }

    #[test]
    fn events_become_samples() {
        let m = Metrics::new();
        feed(&m);
        let running = m.render();
        assert_eq!(
            sample(&running, "picoflow_workflow_running{workflow=\"backup\"}"),
            Some(1.0)
        );

        m.on_event(&Event::WorkflowFinished(execution(
            "e1",
            "backup",
            WorkflowStatus::Failed,
            Some(400.0),
        )));
        let t = m.render();
        assert_eq!(
            sample(&t, "picoflow_workflow_running{workflow=\"backup\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &t,
                "picoflow_workflow_executions_total{workflow=\"backup\",status=\"failed\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                "picoflow_task_retries_total{workflow=\"backup\",task=\"dump\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&t, "picoflow_task_executions_total{workflow=\"backup\",task=\"dump\",status=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "picoflow_task_executions_total{workflow=\"backup\",task=\"upload\",status=\"skipped\"}"),
            Some(1.0)
        );
        // Only the final attempt is observed, and 42 s falls in the 60 s bucket, not 30 s.
        let h = "picoflow_task_duration_seconds";
        assert_eq!(
            sample(
                &t,
                &format!("{h}_count{{workflow=\"backup\",task=\"dump\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, &format!("{h}_sum{{workflow=\"backup\",task=\"dump\"}}")),
            Some(42.0)
        );
        assert_eq!(
            sample(
                &t,
                &format!("{h}_bucket{{workflow=\"backup\",task=\"dump\",le=\"30\"}}")
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &t,
                &format!("{h}_bucket{{workflow=\"backup\",task=\"dump\",le=\"60\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                &format!("{h}_bucket{{workflow=\"backup\",task=\"dump\",le=\"+Inf\"}}")
            ),
            Some(1.0)
        );
        let w = "picoflow_workflow_duration_seconds";
        assert_eq!(
            sample(&t, &format!("{w}_bucket{{workflow=\"backup\",le=\"300\"}}")),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, &format!("{w}_bucket{{workflow=\"backup\",le=\"600\"}}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, &format!("{w}_sum{{workflow=\"backup\"}}")),
            Some(400.0)
        );
    }

    #[test]
    fn exposition_names_and_types_match_the_user_guide() {
        let m = Metrics::new();
        let empty = m.render();
        // Families without samples yet are left out rather than shown without values.
        assert!(!empty.contains("picoflow_task_executions_total"), "{empty}");
        feed(&m);
        m.on_event(&Event::WorkflowFinished(execution(
            "e1",
            "backup",
            WorkflowStatus::Success,
            Some(1.0),
        )));
        let t = m.render();
        for (name, kind) in [
            ("picoflow_workflow_executions_total", "counter"),
            ("picoflow_workflow_duration_seconds", "histogram"),
            ("picoflow_workflow_running", "gauge"),
            ("picoflow_task_executions_total", "counter"),
            ("picoflow_task_duration_seconds", "histogram"),
            ("picoflow_task_retries_total", "counter"),
            ("picoflow_info", "gauge"),
            ("picoflow_uptime_seconds", "gauge"),
            ("picoflow_memory_bytes", "gauge"),
        ] {
            let line = format!("# TYPE {name} {kind}");
            assert!(t.lines().any(|l| l == line), "missing `{line}` in:\n{t}");
        }
        let version = format!("picoflow_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&t, &version), Some(1.0));
        let rss = sample(&t, "picoflow_memory_bytes").unwrap();
        assert!(rss > 100_000.0, "implausible resident size {rss}");
        assert!(sample(&t, "picoflow_uptime_seconds").unwrap() >= 0.0);
    }

    #[test]
    fn unmet_requirements_are_counted_by_guard_and_action() {
        let m = Metrics::new();
        m.on_event(&Event::WorkflowStarted(execution(
            "e1",
            "backup",
            WorkflowStatus::Running,
            None,
        )));
        let why = "network: nas:445 unreachable: Connection refused";
        let skipped = SkipReason::Unmet(why.into()).message();
        m.on_event(&Event::TaskSkipped(TaskExecution::unrun(
            "e1",
            "copy",
            TaskState::Skipped,
            skipped,
            Utc::now(),
        )));
        let failed = format!(
            "{} min_free_disk: 1 MB free on /b, 2 MB required",
            SkipReason::UNMET
        );
        m.on_event(&Event::TaskFinished {
            record: TaskExecution::unrun("e1", "copy", TaskState::Failed, failed, Utc::now()),
            retry_in: None,
        });
        // A skip for another reason is not counted.
        m.on_event(&Event::TaskSkipped(TaskExecution::unrun(
            "e1",
            "other",
            TaskState::Skipped,
            SkipReason::NoItems.message(),
            Utc::now(),
        )));
        let t = m.render();
        let series = |guard: &str, action: &str| {
            format!("picoflow_requirements_unmet_total{{workflow=\"backup\",task=\"copy\",guard=\"{guard}\",action=\"{action}\"}}")
        };
        assert_eq!(sample(&t, &series("network", "skip")), Some(1.0), "{t}");
        assert_eq!(
            sample(&t, &series("min_free_disk", "fail")),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            t.matches("picoflow_requirements_unmet_total{").count(),
            2,
            "{t}"
        );
    }

    #[test]
    fn task_events_of_an_unseen_execution_are_labelled_unknown() {
        let m = Metrics::new();
        m.on_event(&Event::TaskFinished {
            record: attempt("nope", "t", TaskState::Success, 1, Some(1.0)),
            retry_in: None,
        });
        m.on_event(&Event::WorkflowFinished(execution(
            "nope",
            "wf",
            WorkflowStatus::Success,
            Some(1.0),
        )));
        let t = m.render();
        assert_eq!(
            sample(&t, "picoflow_task_executions_total{workflow=\"unknown\",task=\"t\",status=\"success\"}"),
            Some(1.0)
        );
        // A finish without a seen start must not drive the gauge negative.
        assert_eq!(
            sample(&t, "picoflow_workflow_running{workflow=\"wf\"}"),
            None
        );
    }

    /// A workflow `name` with tasks `dump` and `upload`.
    fn wf(name: &str) -> Workflow {
        let text = format!(
            "name: {name}\ntasks:\n  - {{name: dump, type: shell, config: {{command: x}}}}\n  - {{name: upload, type: shell, config: {{command: x}}}}\n"
        );
        crate::yaml::parse_workflow(&text, "w.yaml").unwrap()
    }

    /// Series whose labels are known from the loaded workflows are exported at 0 from the
    /// first scrape: a rate or an alert over retries works before the first retry.
    #[test]
    fn loaded_workflows_export_their_series_at_zero() {
        let m = Metrics::new();
        m.set_workflows(&[wf("backup")]);
        let t = m.render();
        for series in [
            "picoflow_task_retries_total{workflow=\"backup\",task=\"dump\"}",
            "picoflow_task_retries_total{workflow=\"backup\",task=\"upload\"}",
            "picoflow_workflow_executions_total{workflow=\"backup\",status=\"success\"}",
            "picoflow_workflow_executions_total{workflow=\"backup\",status=\"failed\"}",
            "picoflow_workflow_executions_total{workflow=\"backup\",status=\"interrupted\"}",
        ] {
            assert_eq!(sample(&t, series), Some(0.0), "{series} in\n{t}");
        }
    }

    #[test]
    fn health_reports_loaded_workflows_and_last_results() {
        let m = Metrics::new();
        m.set_workflows(&[wf("a"), wf("b"), wf("c")]);
        feed(&m);
        m.on_event(&Event::WorkflowFinished(execution(
            "e1",
            "backup",
            WorkflowStatus::Failed,
            Some(1.0),
        )));
        m.on_event(&Event::WorkflowStarted(execution(
            "e2",
            "sync",
            WorkflowStatus::Running,
            None,
        )));
        m.on_event(&Event::WorkflowFinished(execution(
            "e2",
            "sync",
            WorkflowStatus::Success,
            Some(1.0),
        )));
        let v: serde_json::Value = serde_json::from_str(&m.health_json()).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["workflows_loaded"], 3);
        assert!(v["uptime_seconds"].is_u64());
        assert_eq!(v["last_results"]["backup"], "failed");
        assert_eq!(v["last_results"]["sync"], "success");
    }

    #[test]
    fn clones_share_counters() {
        let m = Metrics::new();
        let c = m.clone();
        feed(&c);
        assert_eq!(
            sample(
                &m.render(),
                "picoflow_task_retries_total{workflow=\"backup\",task=\"dump\"}"
            ),
            Some(2.0)
        );
    }

    #[test]
    fn serves_metrics_and_health_and_refuses_other_methods() {
        let m = Metrics::new();
        let ask = |method: &str, path: &str| {
            let r = Request {
                method: method.into(),
                path: path.into(),
                segments: Vec::new(),
                query: Vec::new(),
                headers: Vec::new(),
                body: Vec::new(),
            };
            m.handle(&r)
        };
        let metrics = ask("GET", "/metrics").unwrap();
        assert_eq!(metrics.status, 200);
        assert!(String::from_utf8(metrics.body)
            .unwrap()
            .contains("picoflow_uptime_seconds"));
        let health = ask("GET", "/health").unwrap();
        assert_eq!(health.content_type, "application/json");
        assert_eq!(ask("POST", "/metrics").unwrap().status, 405);
        assert!(ask("GET", "/nope").is_none());
    }
}
