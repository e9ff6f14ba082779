//! PicoFlow: a small DAG workflow orchestrator for edge devices.
#![deny(missing_docs)]

mod config;
mod dag;
mod engine;
mod error;
mod events;
mod executor;
mod expand;
mod logs;
// One switch, so call sites never test the feature (conventions: cross-cutting features).
#[cfg_attr(feature = "metrics", path = "metrics/enabled.rs")]
#[cfg_attr(not(feature = "metrics"), path = "metrics/disabled.rs")]
mod metrics;
mod model;
mod prune;
mod schedule;
mod signals;
mod stats;
mod store;
mod templates;
mod validate;
mod yaml;

pub use config::{
    Config, DaemonConfig, ExecutionConfig, LogsConfig, MetricsConfig, RetryConfig, TimeoutConfig,
    DEFAULT_DB_PATH,
};
pub use dag::Dag;
pub use engine::{Engine, EngineSettings, ResumeFrom, RunOptions, RunReport, TaskReport};
pub use error::{BoxError, Error, Result};
pub use events::{
    new_id, Event, EventSink, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus,
    INTERRUPTED,
};
pub use executor::{
    feature_for, BoxFuture, CancelToken, Canceller, Capture, Executor, NoOutput, Outcome,
    OutputSink, Registry, SharedState, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
pub use expand::{expand_with, Vars};
pub use logs::{execution_log_dir, task_log_path};
pub use metrics::{Metrics, MetricsServer};
pub use model::{
    is_valid_name, Catchup, HttpConfig, ShellConfig, SshConfig, Task, TaskConfig, Workflow,
    WorkflowConfig, DEFAULT_HTTP_TIMEOUT_SECS, DEFAULT_MAX_PARALLEL, DEFAULT_RETRY,
    DEFAULT_SSH_PORT, DEFAULT_SSH_TIMEOUT_SECS, DEFAULT_TIMEOUT_SECS, HTTP_METHODS,
};
pub use prune::{prune, prune_logs, PruneReport};
pub use schedule::{host_name, jitter_offset, parse_duration, Schedule};
pub use signals::{Signals, StopSignal};
pub use stats::{compute_stats, TaskStats, WorkflowStats};
pub use store::{HistoryFilter, PruneCounts, Store, WorkflowRecord};
pub use templates::{template, TEMPLATE_NAMES};
pub use validate::{load_workflow, parse_workflow, validate_workflow, workflow_files};

/// The optional parts compiled into this build, as `(feature, enabled)` pairs.
pub fn features() -> [(&'static str, bool); 4] {
    [
        ("ssh", cfg!(feature = "ssh")),
        ("http", cfg!(feature = "http")),
        ("metrics", cfg!(feature = "metrics")),
        ("sqlite", cfg!(feature = "sqlite")),
    ]
}
