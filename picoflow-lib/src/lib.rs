//! PicoFlow: a small DAG workflow orchestrator for edge devices.
//!
//! A workflow is a YAML file of tasks (shell commands, SSH commands, HTTP requests, or task
//! types of your own) with dependencies, retries, timeouts and an optional cron schedule. This
//! crate holds everything PicoFlow does; the `picoflow` binary is a thin command line over it,
//! so device software can embed the same engine.
//!
//! * [`parse_workflow`] / [`load_workflow`] read and validate a workflow into a [`Workflow`]
//!   and its [`Dag`] (DAG-001, DAG-002).
//! * [`Engine`] runs one execution on smol: a ready set bounded by `max_parallel`, retries with
//!   backoff, timeouts that kill the whole process group, failure and skip rules (DAG-003 …
//!   DAG-009). It reports every change as an [`Event`] to [`EventSink`]s.
//! * [`Store`] keeps state and history in one redb file shared safely by several processes,
//!   and lets an interrupted execution resume (REL-001, REL-003, REL-004); [`plan_run`]
//!   decides which one a run continues, for `run --resume` and the daemon alike. A task's
//!   process dies with the process running the engine, and what a crashed run left behind is
//!   stopped before the next run of its workflow starts a task ([`RunOptions::stop_leftovers`]).
//!   Without a delegated cgroup v2 for per-task cgroups, the first shell task makes the
//!   process a child subreaper; a child of it in another process group that the engine did not
//!   start is then taken for a task's leftover, killed and collected when a task ends.
//! * Tasks pass data: a task publishes outputs (`KEY=VALUE` lines in [`OUTPUT_VAR`]'s file, or
//!   selectors over its output) that later tasks read as `${tasks.NAME.outputs.KEY}`; `when`
//!   conditions ([`expr`]), `run_if` trigger rules, workflow handlers and `iterate_over` loops
//!   decide what runs.
//! * [`Schedule`] and [`Daemon`] run workflows on cron schedules (SCHED-001 … SCHED-005); the
//!   daemon serves metrics, and with `web` a UI and an API, from one HTTP endpoint.
//! * [`views`] gives the JSON shapes the command line's `--format json` and the web API share.
//! * [`Registry`] maps task types to [`Executor`]s; register your own.
//!
//! # Example
//!
//! ```
//! use picoflow_lib::{parse_workflow, Engine, Registry, RunOptions, WorkflowStatus};
//!
//! let yaml = r#"
//! name: hello
//! tasks:
//!   - name: greet
//!     type: shell
//!     config:
//!       command: "echo hello"
//!   - name: after
//!     type: shell
//!     depends_on: [greet]
//!     config:
//!       command: "true"
//! "#;
//! let registry = Registry::builtin();
//! let workflow = parse_workflow(yaml, "hello.yaml", &registry)?;
//! let engine = Engine::new(registry).with_log_dir(std::env::temp_dir().join("pf-doc-logs"));
//! let report = smol::block_on(engine.run(&workflow, RunOptions::default()))?;
//! assert_eq!(report.execution.status, WorkflowStatus::Success);
//! assert_eq!(report.tasks[0].state.as_str(), "success");
//! # Ok::<(), picoflow_lib::Error>(())
//! ```
//!
//! # Crate features
//!
//! All are on by default; `default-features = false` gives the shell-only core. See
//! `features.md` for what each costs in binary size.
//!
//! * `ssh` — `type: ssh` tasks over libssh2 (async-ssh2-lite), key authentication and
//!   host-key checking (EXEC-002, SEC-001).
//! * `http` — `type: http` tasks over libcurl (isahc) with the system's OpenSSL (EXEC-003).
//! * `metrics` — Prometheus `/metrics` and `/health` served by the daemon (OBS-003, OBS-006).
//! * `sqlite` — export of the history to the documented SQLite schema (CFG-003, OBS-004).
//! * `web` — the daemon's web UI (DAG, history, live executions, logs) and REST API, with runs
//!   triggered by a bearer token (OBS-005).
//!
//! A workflow that uses a task type the build lacks is rejected when it is loaded, with an
//! error naming the feature to enable.
#![deny(missing_docs)]

mod clock;
mod config;
// What the daemon and the web UI share, below both.
mod contract;
mod daemon;
mod dag;
mod engine;
mod error;
mod events;
mod executor;
mod expand;
// One switch for the SQLite export: the real module or a stand-in naming the feature.
#[cfg_attr(feature = "sqlite", path = "export/enabled.rs")]
#[cfg_attr(not(feature = "sqlite"), path = "export/disabled.rs")]
mod export;
pub mod expr;
mod fields;
#[cfg(feature = "fleet")]
pub mod fleet;
mod flow;
pub mod guards;
mod httpd;
mod limits;
mod logs;
// One switch, so call sites never test the feature (conventions: cross-cutting features).
#[cfg_attr(feature = "metrics", path = "metrics/enabled.rs")]
#[cfg_attr(not(feature = "metrics"), path = "metrics/disabled.rs")]
mod metrics;
mod model;
mod orphans;
mod plan;
mod private;
mod proc;
mod prune;
mod resume;
mod schedule;
// Each task type's settings, below the model (their files are in the executors' folders).
mod settings;
mod signals;
mod stats;
mod store;
mod templates;
mod threads;
mod validate;
pub mod views;
#[cfg_attr(feature = "web", path = "web/enabled.rs")]
#[cfg_attr(not(feature = "web"), path = "web/disabled.rs")]
mod web;
mod yaml;

pub use clock::{sync_service_present, sync_status, ClockSync, CLOCK_SYNC_FILE_VAR};
pub use config::{
    config_keys, Config, DaemonConfig, ExecutionConfig, FleetConfig, FleetUrls, LogsConfig,
    MetricsConfig, RetryConfig, TasksConfig, TimeoutConfig, WaitForClockSync, WebConfig,
    DEFAULT_DB_PATH,
};
pub use contract::LinkStatus;
pub use daemon::{
    daemon_status, stop_daemon, ClockStatus, Daemon, DaemonExit, DaemonStatus, ScheduledWorkflow,
};
pub use dag::Dag;
pub use engine::{Engine, EngineSettings, ResumeFrom, RunOptions, RunReport, TaskReport};
pub use error::{without_os_error, BoxError, Error, Result};
pub use events::{
    is_interrupted, last_attempts, new_id, Event, EventSink, SkipReason, TaskExecution, TaskState,
    WorkflowExecution, WorkflowStatus, INTERRUPTED,
};
pub use executor::stop;
pub use executor::{
    feature_for, BoxFuture, CancelToken, Canceller, Capture, Executor, NoOutput, Outcome,
    OutputSink, Registry, SharedState, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT, OUTPUT_VAR,
    STORED_CAPTURE,
};
pub use expand::{expand_with, Vars};
pub use export::{export_sqlite, ExportReport};
pub use flow::{check_run_dir, MAX_ITEMS, OUTPUT_LIMIT};
pub use limits::{format_size, parse_size, IoClass, Limits};
pub use logs::{execution_log_dir, task_log_path};
pub use metrics::{Metrics, MetricsServer};
pub use model::{
    is_valid_name, Catchup, DockerConfig, HttpConfig, Items, PullPolicy, RunIf, ShellConfig,
    SshConfig, Task, TaskConfig, Workflow, WorkflowConfig, DEFAULT_DOCKER_NETWORK,
    DEFAULT_HTTP_TIMEOUT_SECS, DEFAULT_MAX_PARALLEL, DEFAULT_RETRY, DEFAULT_SSH_PORT,
    DEFAULT_SSH_TIMEOUT_SECS, DEFAULT_TIMEOUT_SECS, HTTP_METHODS,
};
pub use prune::{prune, prune_logs, PruneReport};
pub use resume::{open_for_run, plan_run, RunIntent, RunPlan};
pub use schedule::{host_name, jitter_offset, parse_duration, Schedule};
pub use settings::task_config_keys;
pub use signals::{Signals, StopSignal};
pub use stats::{compute_stats, TaskStats, WorkflowStats};
pub use store::{HistoryFilter, PruneCounts, Store, WorkflowRecord};
pub use templates::{template, TEMPLATE_NAMES};
pub use validate::{
    load_workflow, parse_workflow, shell_warnings, validate_workflow, workflow_files,
};

/// The optional parts compiled into this build, as `(feature, enabled)` pairs.
pub fn features() -> [(&'static str, bool); 7] {
    [
        ("ssh", cfg!(feature = "ssh")),
        ("http", cfg!(feature = "http")),
        ("docker", cfg!(feature = "docker")),
        ("metrics", cfg!(feature = "metrics")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("web", cfg!(feature = "web")),
        ("fleet", cfg!(feature = "fleet")),
    ]
}
