//! The workflow model: what a workflow file describes, independent of how it was parsed.
//!
//! Field names, defaults and ranges follow the API reference; `DECISIONS.md` 1 and 2 settle
//! the defaults (`max_parallel` 4, `retry_default` 3, `timeout_default` 300 s) and the
//! `workdir` / `working_dir` alias.

use std::time::Duration;

use crate::limits::Limits;
pub use crate::settings::docker::{DockerConfig, PullPolicy, DEFAULT_DOCKER_NETWORK};
use crate::settings::guards::Requires;
pub use crate::settings::http::{HttpConfig, DEFAULT_HTTP_TIMEOUT_SECS, HTTP_METHODS};
pub use crate::settings::shell::ShellConfig;
pub use crate::settings::ssh::{SshConfig, DEFAULT_SSH_PORT, DEFAULT_SSH_TIMEOUT_SECS};

/// Built-in default for `config.max_parallel` (API reference, `DECISIONS.md` 1).
pub const DEFAULT_MAX_PARALLEL: u32 = 4;
/// Built-in default for `config.retry_default`.
pub const DEFAULT_RETRY: u32 = 3;
/// Built-in default for `config.timeout_default`, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// A parsed workflow: a named DAG of tasks with an optional schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// Unique workflow name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// Human-readable description (up to 256 characters).
    pub description: Option<String>,
    /// Cron expression, 5 or 6 fields (`DECISIONS.md` 4).
    pub schedule: Option<String>,
    /// IANA time zone for the schedule (SCHED-005); system local time when absent.
    pub timezone: Option<String>,
    /// Start a scheduled run even while the previous one is still running (SCHED-004).
    pub allow_concurrent: bool,
    /// What the daemon does with fires missed while it was down.
    pub catchup: Catchup,
    /// Upper bound of the stable per-host delay added to each fire.
    pub jitter: Option<Duration>,
    /// Workflow-wide settings; unset fields fall back to the global configuration.
    pub config: WorkflowConfig,
    /// What must hold before an execution's first task starts (`requires:`).
    pub requires: Option<Requires>,
    /// The tasks, in file order.
    pub tasks: Vec<Task>,
    /// Tasks run once after the DAG has finished, by the execution's result.
    pub handlers: Handlers,
}

impl Workflow {
    /// A digest of the whole definition (every field of every task and handler, as parsed),
    /// 16 hex digits of FNV-1a: the same for the same definition in every run of this
    /// version, different after an edit that changes anything but comments and layout (an
    /// edit that moves a task to another line changes it too). For telling changes apart,
    /// not for security.
    pub fn digest(&self) -> String {
        let text = format!("{self:?}");
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Workflow-level handlers: tasks run after every task of the DAG has finished. Their results
/// are recorded but never change the execution's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handlers {
    /// Run when the execution succeeded.
    pub on_success: Vec<Task>,
    /// Run when the execution failed.
    pub on_failure: Vec<Task>,
    /// Run after either, last.
    pub on_exit: Vec<Task>,
}

impl Handlers {
    /// Every handler with the name of its list: `on_success`, `on_failure`, then `on_exit`.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &Task)> {
        self.on_success
            .iter()
            .map(|t| ("on_success", t))
            .chain(self.on_failure.iter().map(|t| ("on_failure", t)))
            .chain(self.on_exit.iter().map(|t| ("on_exit", t)))
    }

    /// Whether there is no handler.
    pub fn is_empty(&self) -> bool {
        self.on_success.is_empty() && self.on_failure.is_empty() && self.on_exit.is_empty()
    }
}

/// When a task runs, given how its dependencies ended (`run_if`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunIf {
    /// Every dependency succeeded (or was skipped by its condition). The default.
    #[default]
    AllSuccess,
    /// Every dependency finished, whatever its result.
    AllDone,
    /// At least one dependency failed (or was skipped because of a failure).
    AnyFailed,
    /// Every dependency failed (or was skipped because of a failure).
    AllFailed,
}

impl RunIf {
    /// The spelling in workflow files.
    pub fn as_str(self) -> &'static str {
        match self {
            RunIf::AllSuccess => "all_success",
            RunIf::AllDone => "all_done",
            RunIf::AnyFailed => "any_failed",
            RunIf::AllFailed => "all_failed",
        }
    }

    /// Parses [`RunIf::as_str`].
    pub fn parse(s: &str) -> Option<RunIf> {
        [
            RunIf::AllSuccess,
            RunIf::AllDone,
            RunIf::AnyFailed,
            RunIf::AllFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The items of a loop task (`iterate_over`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Items {
    /// Items written in the file.
    List(Vec<String>),
    /// A `${…}` reference (usually a task's output) whose value, once its task has run, is
    /// one item per non-empty line, or a JSON array.
    From(String),
}

/// The `config:` block of a workflow. `None` means "not set in the file".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowConfig {
    /// Maximum concurrent tasks (1-256).
    pub max_parallel: Option<u32>,
    /// Retry count for tasks without their own `retry` (0-100).
    pub retry_default: Option<u32>,
    /// Timeout in seconds for tasks without their own `timeout` (0-86400, 0 = none).
    pub timeout_default: Option<u64>,
}

/// Catch-up policy for fires missed while the daemon was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Catchup {
    /// Missed fires are dropped, as cron does.
    #[default]
    None,
    /// One run makes up for any number of missed fires.
    Latest,
    /// Every missed fire runs, up to [`Catchup::MAX_ALL`] of them.
    All,
}

impl Catchup {
    /// Upper bound on the runs `catchup: all` starts after an outage.
    pub const MAX_ALL: usize = 10;
}

/// One task of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Unique task name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// The executor type (`shell`, `ssh`, `http` or a registered custom type).
    pub kind: String,
    /// Names of tasks that must finish first.
    pub depends_on: Vec<String>,
    /// Executor-specific configuration.
    pub config: TaskConfig,
    /// Retries after the first attempt (0-100); `None` inherits the default.
    pub retry: Option<u32>,
    /// Timeout in seconds (0-86400, 0 = none); `None` inherits the default.
    pub timeout: Option<u64>,
    /// A failure of this task does not fail the workflow and lets dependents run.
    pub continue_on_failure: bool,
    /// Values published from the attempt's output: name and selector (`stdout`,
    /// `stdout.field`, `body`, `body.field.sub`, `status`, `exit_code`), in file order.
    pub outputs: Vec<(String, String)>,
    /// The task's condition (`when`); false skips it.
    pub when: Option<String>,
    /// Which results of its dependencies let the task run.
    pub run_if: RunIf,
    /// Makes the task a loop: one task `NAME[item]` per item.
    pub iterate_over: Option<Items>,
    /// What must hold before the task starts (`requires:`).
    pub requires: Option<Requires>,
    /// What its process may use (`limits:`), before the configuration's defaults.
    pub limits: Limits,
    /// The line of the task's `name:` in its workflow file, for messages.
    pub line: Option<usize>,
}

impl Task {
    /// A task with every optional field at its default.
    pub fn new(name: impl Into<String>, kind: impl Into<String>, config: TaskConfig) -> Task {
        Task {
            name: name.into(),
            kind: kind.into(),
            depends_on: Vec::new(),
            config,
            retry: None,
            timeout: None,
            continue_on_failure: false,
            outputs: Vec::new(),
            when: None,
            run_if: RunIf::AllSuccess,
            iterate_over: None,
            requires: None,
            limits: Limits::default(),
            line: None,
        }
    }

    /// How messages name the task: `line 12: task 'dump'`, or `task 'dump'` without a line.
    pub fn label(&self) -> String {
        match self.line {
            Some(l) => format!("line {l}: task '{}'", self.name),
            None => format!("task '{}'", self.name),
        }
    }
}

/// Executor-specific task configuration. Each built-in type's settings live with its executor
/// (`executor/<type>/settings.rs`), which reads and checks them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskConfig {
    /// `type: shell`.
    Shell(ShellConfig),
    /// `type: ssh`.
    Ssh(SshConfig),
    /// `type: http`.
    Http(HttpConfig),
    /// `type: docker`.
    Docker(DockerConfig),
    /// Any other type: the raw `config` object for a custom executor.
    Custom(serde_json::Value),
}

impl Workflow {
    /// The delay the daemon adds to every fire of this workflow on the host `host`: the
    /// stable offset below `jitter` ([`jitter_offset`](crate::jitter_offset)), zero without
    /// jitter.
    pub fn fire_delay(&self, host: &str) -> Duration {
        self.jitter.map_or(Duration::ZERO, |j| {
            crate::schedule::jitter_offset(host, &self.name, j)
        })
    }

    /// Looks a task up by name.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// Whether `name` is a valid workflow or task name: 1-64 of `[A-Za-z0-9_-]`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("backup-workflow_1"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("has space"));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(is_valid_name(&"a".repeat(64)));
    }
}
