//! Prometheus metrics and the health endpoint (OBS-003, OBS-006), built with the `metrics`
//! feature.
//!
//! [`Metrics`] is an [`EventSink`]: the engine feeds it the same events as the state store,
//! and it keeps the counters, gauges and histograms of the user guide's "Prometheus Metrics"
//! section. [`MetricsServer`] serves them over a deliberately small HTTP/1.1 responder on
//! smol's own networking: two read-only GET routes need no HTTP library, and every byte of
//! the request a client may send is bounded in size and time, so a slow or hostile client
//! costs one short-lived task and never the scheduler.

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Task, Timer};

use crate::error::{Error, Result};
use crate::events::{Event, EventSink, WorkflowStatus};
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
/// as its [`EventSink`] and another to the [`MetricsServer`].
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
    uptime: Gauge<f64, AtomicU64>,
    memory: Gauge,
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh counters; the uptime clock starts now.
    pub fn new() -> Metrics {
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
                uptime,
                memory,
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
                inner
                    .task_executions
                    .get_or_create(&TaskStatusLabels {
                        workflow: self.workflow_of(&record.workflow_execution_id),
                        task: task_label(&record.task_name),
                        status: record.status.as_str().to_string(),
                    })
                    .inc();
            }
            Event::TaskStarted(_) => {}
        }
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

/// Longest request head accepted; anything longer is answered with 431.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long unread request bytes are drained after the response (see `serve`).
const LINGER: Duration = Duration::from_secs(1);
/// Connections served at once; more are closed on accept, which bounds memory and tasks
/// even under a connection flood.
const MAX_CONNECTIONS: usize = 64;

/// The HTTP endpoint serving `GET /metrics` (OBS-003) and `GET /health` (OBS-006).
///
/// Its accept loop and one task per connection run on the executor passed to
/// [`MetricsServer::start`]; it starts no thread of its own. Dropping the server cancels the
/// accept loop and every open connection; the port is released once that executor next runs.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    _accept: Task<()>,
}

impl MetricsServer {
    /// Listens on `bind:port` and serves `metrics` from tasks spawned on `ex`.
    ///
    /// Binding happens before this returns, so an address in use or a bad bind address is
    /// reported here (as [`Error::Network`]) rather than lost in a background task. The
    /// caller must keep running `ex` for requests to be answered. Port 0 picks a free port;
    /// see [`MetricsServer::local_addr`].
    pub fn start(
        ex: &Arc<Executor<'static>>,
        bind: &str,
        port: u16,
        metrics: Metrics,
    ) -> Result<MetricsServer> {
        let fail = |e: std::io::Error| {
            Error::Network(format!("metrics endpoint: cannot listen on {bind}:{port}: {e}").into())
        };
        let listener = std::net::TcpListener::bind((bind, port)).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let listener = TcpListener::try_from(listener).map_err(fail)?;
        let accept = ex.spawn(accept_loop(listener, Arc::downgrade(ex), metrics));
        Ok(MetricsServer {
            addr,
            _accept: accept,
        })
    }

    /// The address actually listened on (`None` only in builds without `metrics`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
}

/// Accepts connections and gives each its own task, so one stalled client never delays
/// another scrape. The connection tasks live in this future: cancelling it cancels them.
async fn accept_loop(listener: TcpListener, ex: Weak<Executor<'static>>, metrics: Metrics) {
    let mut connections: Vec<Task<()>> = Vec::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection aborted before accept: pause briefly
                // instead of spinning on an error that repeats at once.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.retain(|t| !t.is_finished());
        if connections.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let Some(ex) = ex.upgrade() else { return };
        connections.push(ex.spawn(serve(stream, metrics.clone())));
    }
}

/// What reading a request head can end in, short of a head.
#[derive(Debug, PartialEq)]
enum HeadError {
    /// The head grew past [`MAX_HEAD`].
    TooLarge,
    /// The client closed the connection or the socket failed.
    Closed,
}

/// Reads up to and including the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> std::result::Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HEAD - head.len()).min(chunk.len());
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let n = match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => n,
        };
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(head);
        }
    }
}

/// Index just past the blank line (`\r\n\r\n`, or a bare `\n\n`) that ends a head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// One response; always followed by closing the connection.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: format!("{status} {reason}\n"),
        }
    }

    fn bytes(&self, with_body: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Answers one parsed request head. Returns the response and whether to send its body
/// (not for HEAD).
fn respond(head: &[u8], metrics: &Metrics) -> (Response, bool) {
    let Some(line) = std::str::from_utf8(head)
        .ok()
        .and_then(|h| h.lines().next())
    else {
        return (Response::text(400, "Bad Request"), true);
    };
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Response::text(400, "Bad Request"), true);
    };
    if !version.starts_with("HTTP/1.") {
        return (Response::text(505, "HTTP Version Not Supported"), true);
    }
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut r = Response::text(405, "Method Not Allowed");
            r.extra = "Allow: GET, HEAD\r\n";
            return (r, true);
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let response = match path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: prometheus_text::CONTENT_TYPE,
            extra: "",
            body: metrics.render(),
        },
        "/health" => Response {
            status: 200,
            reason: "OK",
            content_type: "application/json",
            extra: "",
            body: metrics.health_json(),
        },
        _ => Response::text(404, "Not Found"),
    };
    (response, with_body)
}

/// Serves one connection: one request, one response, close.
async fn serve(mut stream: TcpStream, metrics: Metrics) {
    let head = future::or(async { Some(read_head(&mut stream).await) }, async {
        Timer::after(READ_TIMEOUT).await;
        None
    })
    .await;
    let (response, with_body) = match head {
        Some(Ok(head)) => respond(&head, &metrics),
        Some(Err(HeadError::TooLarge)) => {
            (Response::text(431, "Request Header Fields Too Large"), true)
        }
        Some(Err(HeadError::Closed)) => return,
        None => (Response::text(408, "Request Timeout"), true),
    };
    let bytes = response.bytes(with_body);
    let written = future::or(
        async {
            stream
                .write_all(&bytes)
                .await
                .and(stream.flush().await)
                .is_ok()
        },
        async {
            Timer::after(WRITE_TIMEOUT).await;
            false
        },
    )
    .await;
    if !written {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Closing a socket that still holds unread request bytes makes the kernel send a reset,
    // which can destroy the response before the client reads it (an oversized or timed-out
    // request). Draining briefly lets the client see the whole answer.
    future::or(
        async {
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        },
        async {
            Timer::after(LINGER).await;
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{TaskExecution, TaskState, WorkflowExecution};
    use chrono::Utc;

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
    fn head_end_is_found_with_crlf_or_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn routes_methods_and_malformed_requests() {
        let m = Metrics::new();
        let status = |head: &str| respond(head.as_bytes(), &m).0.status;
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /health?x=1 HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /metrics SPDY/3\r\n\r\n"), 505);
        assert_eq!(status("garbage\r\n\r\n"), 400);
        assert_eq!(respond(b"\xff / HTTP/1.1\r\n\r\n", &m).0.status, 400);
        let (head, with_body) = respond(b"HEAD /health HTTP/1.1\r\n\r\n", &m);
        assert_eq!(head.status, 200);
        assert!(!with_body);
        let bytes = String::from_utf8(head.bytes(false)).unwrap();
        assert!(bytes.ends_with("Connection: close\r\n\r\n"), "{bytes}");
    }
}
