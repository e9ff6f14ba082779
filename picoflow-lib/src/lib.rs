//! PicoFlow: a small DAG workflow orchestrator for edge devices.
#![deny(missing_docs)]

mod error;
mod events;
mod executor;
mod expand;
mod model;

pub use error::{BoxError, Error, Result};
pub use events::{
    new_id, Event, EventSink, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus,
};
pub use executor::{
    feature_for, BoxFuture, CancelToken, Canceller, Capture, Executor, Outcome, Registry,
    SharedState, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
pub use expand::{expand_with, Vars};
pub use model::{
    is_valid_name, Catchup, HttpConfig, ShellConfig, SshConfig, Task, TaskConfig, Workflow,
    WorkflowConfig, DEFAULT_HTTP_TIMEOUT_SECS, DEFAULT_MAX_PARALLEL, DEFAULT_RETRY,
    DEFAULT_SSH_PORT, DEFAULT_SSH_TIMEOUT_SECS, DEFAULT_TIMEOUT_SECS, HTTP_METHODS,
};
