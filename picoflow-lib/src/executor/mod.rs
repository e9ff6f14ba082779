//! Executors: the pluggable part that runs one attempt of one task.
//!
//! The [`Executor`] trait is always compiled. Built-in executors live in one folder each,
//! `<type>/`: its running code (`mod.rs` and the files it declares), gated for an optional one
//! by `#[cfg]` on its `mod` line and on its entry in [`Registry::builtin`] (and
//! [`feature_for`] names its feature), and its settings (`settings.rs`: what `config:` holds,
//! how it is read and checked), compiled in every build and declared by the crate's `settings`
//! module, below the model that holds them. Users add their own task
//! types with [`Registry::register`]. Every executor ends an attempt early the same way
//! ([`stop`]); an executor whose tasks leave things outside their processes removes them in
//! [`Executor::remove_leftovers`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::expand::Vars;
use crate::model::Task;

pub(crate) mod cgroup;
#[cfg(feature = "docker")]
pub(crate) mod docker;
#[cfg(feature = "http")]
mod http;
pub(crate) mod pidfd;
mod shell;
mod spawn;
#[cfg(feature = "ssh")]
mod ssh;
pub mod stop;
mod subreaper;

/// Largest capture kept per stream (stdout or stderr) of one attempt: 10 MB (EXEC-005).
pub const CAPTURE_LIMIT: usize = 10 * 1024 * 1024;

pub use crate::events::BoxFuture;

/// Environment variable naming the file a shell task writes its outputs to.
pub const OUTPUT_VAR: &str = "PICOFLOW_OUTPUT";

/// The file a task's attempt writes its outputs to: one per attempt, in the execution's
/// output directory `dir` (see `flow::create_output_dir`).
pub(crate) fn output_file(dir: &std::path::Path, task: &str, attempt: u32) -> std::path::PathBuf {
    let mut name = String::with_capacity(task.len() + 8);
    for b in task.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => name.push(b as char),
            _ => name.push_str(&format!("%{b:02X}")),
        }
    }
    dir.join(format!("{name}.{attempt}"))
}

/// Runs one attempt of a task of one `type`.
///
/// An implementation must honour [`TaskContext::timeout`] (returning
/// [`Outcome::Timeout`]) and [`TaskContext::cancel`] (stopping the work and returning
/// [`Outcome::Cancelled`]); it must not print anything.
pub trait Executor: Send + Sync {
    /// Checks the task's configuration when the workflow is loaded; the message names the field.
    fn check(&self, task: &Task) -> Result<(), String> {
        let _ = task;
        Ok(())
    }

    /// Runs one attempt.
    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput>;

    /// Removes what attempts of `workflow`'s tasks left behind outside any process when the
    /// PicoFlow process running them died (a container, a remote job); how many things it
    /// removed. The engine calls it for every registered executor before a resumed execution
    /// or a new run after a crash, after the processes such a run left were stopped. It must
    /// not block: it runs on the engine's thread, where the daemon's schedules wait.
    fn remove_leftovers<'a>(&'a self, workflow: &'a str) -> BoxFuture<'a, usize> {
        let _ = workflow;
        Box::pin(async { 0 })
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (or an HTTP response body).
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives a task's output while it runs (the engine writes task log files from it, so
/// `picoflow logs --follow` can stream a running task).
pub trait OutputSink: Send + Sync {
    /// Called for every chunk read, before it is capped into the capture.
    fn output(&self, stream: Stream, chunk: &[u8]);
}

/// An [`OutputSink`] that discards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOutput;

impl OutputSink for NoOutput {
    fn output(&self, _stream: Stream, _chunk: &[u8]) {}
}

/// What an executor gets for one attempt.
#[derive(Clone)]
pub struct TaskContext<'a> {
    /// Workflow name.
    pub workflow: &'a str,
    /// The execution this attempt belongs to.
    pub execution_id: &'a str,
    /// The task definition.
    pub task: &'a Task,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Time limit for the attempt, if any.
    pub timeout: Option<Duration>,
    /// Fires when the run is cancelled.
    pub cancel: CancelToken,
    /// Values for `${VAR}` expansion (the process environment by default).
    pub vars: &'a Vars,
    /// Connections shared by the tasks of one run (e.g. SSH sessions), keyed by the executor.
    pub shared: &'a SharedState,
    /// Where output goes while the task runs, in addition to the capture.
    pub output: &'a dyn OutputSink,
    /// The execution's private directory (0700) holding [`TaskContext::output_file`].
    pub output_dir: &'a std::path::Path,
    /// The task's `limits:`, each unset one from `[tasks.limits]`; an executor whose tasks
    /// run a local process applies them to it (only shell tasks take them).
    pub limits: crate::limits::Limits,
}

impl TaskContext<'_> {
    /// The file this attempt may write published values to, as `KEY=VALUE` lines or
    /// `KEY<<DELIMITER` blocks (the shell executor names it in `$PICOFLOW_OUTPUT`). The
    /// engine reads it after the attempt.
    pub fn output_file(&self) -> std::path::PathBuf {
        output_file(self.output_dir, &self.task.name, self.attempt)
    }
}

impl fmt::Debug for TaskContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("workflow", &self.workflow)
            .field("execution_id", &self.execution_id)
            .field("task", &self.task.name)
            .field("attempt", &self.attempt)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Initialises OpenSSL (once per process) before the first TLS or SSH connection, with the
/// options the Rust bindings use: no clean-up handler at exit, which would pull the library
/// from under threads still running then.
///
/// Nothing else may rely on an earlier initialisation: the `picoflow` binary defers the one
/// the `curl` crate makes at load time to this call (`picoflow-cli/src/tls.rs`).
#[cfg(any(feature = "http", feature = "ssh"))]
pub(crate) fn init_openssl() {
    const LOAD_SSL_STRINGS: u64 = 0x0020_0000;
    const NO_ATEXIT: u64 = 0x0008_0000;
    extern "C" {
        fn OPENSSL_init_ssl(opts: u64, settings: *const std::ffi::c_void) -> std::ffi::c_int;
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: OPENSSL_init_ssl is thread-safe and takes null for default settings.
    ONCE.call_once(|| unsafe {
        OPENSSL_init_ssl(LOAD_SSL_STRINGS | NO_ATEXIT, std::ptr::null());
    });
}

/// Per-run storage an executor may use to share expensive resources between tasks.
#[derive(Default)]
pub struct SharedState {
    slots: std::sync::Mutex<HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState").finish_non_exhaustive()
    }
}

impl SharedState {
    /// Returns the value stored under `key`, creating it with `init` on first use.
    pub fn get_or_insert<T: Send + Sync + 'static>(
        &self,
        key: &str,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let entry = slots
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(init()) as Arc<dyn std::any::Any + Send + Sync>)
            .clone();
        drop(slots);
        entry
            .downcast::<T>()
            .unwrap_or_else(|_| panic!("shared state key {key:?} used with two types"))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task did its job.
    Success,
    /// The task failed; `retryable` in [`TaskOutput`] says whether another attempt may help.
    Failed,
    /// The attempt ran out of time and was stopped.
    Timeout,
    /// The run was cancelled while the attempt ran; it was stopped.
    Cancelled,
}

/// Captured bytes of one output stream, capped at [`CAPTURE_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// The first bytes of the stream.
    pub data: Vec<u8>,
    /// Whether bytes past the limit were discarded.
    pub truncated: bool,
}

impl Capture {
    /// Appends `chunk`, keeping at most `limit` bytes in total.
    pub fn push(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.data.len());
        let take = chunk.len().min(room);
        if chunk.len() > room {
            self.truncated = true;
        }
        let needed = self.data.len() + take;
        if needed > self.data.capacity() {
            // Grow by doubling, but never past the limit (plus room for the truncation
            // marker): a capped 10 MB capture must not hold a 16 MB buffer.
            let target = (self.data.capacity() * 2)
                .max(needed)
                .min(limit + TRUNCATED_MARKER.len());
            self.data
                .reserve_exact(target.max(needed) - self.data.len());
        }
        self.data.extend_from_slice(&chunk[..take]);
    }

    /// The capture as text (invalid UTF-8 replaced), with a marker when truncated.
    pub fn to_text(&self) -> String {
        self.clone().into_text()
    }

    /// Like [`Capture::to_text`], reusing the buffer when it holds valid UTF-8.
    pub fn into_text(self) -> String {
        let truncated = self.truncated;
        let mut s = match String::from_utf8(self.data) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if truncated {
            s.push_str(TRUNCATED_MARKER);
        }
        s
    }
}

const TRUNCATED_MARKER: &str = "\n[output truncated at 10 MB]\n";

/// How many bytes of each captured stream an attempt's record in the state file keeps: the
/// end of it. The task's log file has the whole capture; a chatty task must not fill an SD card
/// through the state file.
pub const STORED_CAPTURE: usize = 64 * 1024;

impl Capture {
    /// The text the state file keeps: `None` for an empty capture; else the capture as text
    /// (see [`Capture::into_text`]) cut to its last [`STORED_CAPTURE`] bytes, never splitting
    /// a character, with the whole text's size in bytes when it was cut.
    pub fn into_stored(self) -> (Option<String>, Option<u64>) {
        if self.data.is_empty() {
            return (None, None);
        }
        let text = self.into_text();
        if text.len() <= STORED_CAPTURE {
            return (Some(text), None);
        }
        let mut from = text.len() - STORED_CAPTURE;
        while !text.is_char_boundary(from) {
            from += 1;
        }
        (Some(text[from..].to_string()), Some(text.len() as u64))
    }
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    /// How it ended.
    pub outcome: Outcome,
    /// Exit code (process exit status, remote status, 124 on SSH timeout, 0/1 for HTTP …).
    pub exit_code: Option<i32>,
    /// Captured standard output (for HTTP: the response body).
    pub stdout: Capture,
    /// Captured standard error.
    pub stderr: Capture,
    /// Why it failed, in words; already free of secrets.
    pub error: Option<String>,
    /// Whether a failed attempt may be retried (false e.g. for an HTTP 4xx).
    pub retryable: bool,
}

impl TaskOutput {
    /// A failed attempt with a message and no output.
    pub fn failed(error: impl Into<String>, retryable: bool) -> Self {
        TaskOutput {
            outcome: Outcome::Failed,
            exit_code: None,
            stdout: Capture::default(),
            stderr: Capture::default(),
            error: Some(error.into()),
            retryable,
        }
    }
}

/// A cancellation signal shared by every task of a run; cloning is cheap.
#[derive(Debug, Clone)]
pub struct CancelToken {
    rx: smol::channel::Receiver<()>,
}

/// The sending side of a [`CancelToken`]: [`Canceller::cancel`] or dropping it cancels.
#[derive(Debug)]
pub struct Canceller {
    tx: smol::channel::Sender<()>,
}

impl CancelToken {
    /// A new token and the handle that fires it.
    pub fn new() -> (Canceller, CancelToken) {
        let (tx, rx) = smol::channel::bounded(1);
        (Canceller { tx }, CancelToken { rx })
    }

    /// A token that never fires (for callers that do not cancel).
    pub fn never() -> CancelToken {
        let (c, t) = Self::new();
        std::mem::forget(c);
        t
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.rx.is_closed()
    }

    /// Completes once cancellation is requested.
    pub async fn cancelled(&self) {
        // Nothing is ever sent: the channel closing is the signal.
        let _ = self.rx.recv().await;
    }
}

impl Canceller {
    /// Requests cancellation of every token made with this handle.
    pub fn cancel(&self) {
        self.tx.close();
    }
}

/// The executors a run can use, by task `type`.
#[derive(Clone)]
pub struct Registry {
    executors: HashMap<String, Arc<dyn Executor>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<_> = self.executors.keys().collect();
        kinds.sort();
        f.debug_struct("Registry").field("kinds", &kinds).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry {
            executors: HashMap::new(),
        }
    }

    /// Every executor compiled into this build (`shell` always; `ssh`, `http`, `docker` by
    /// feature).
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register("shell", shell::ShellExecutor);
        #[cfg(feature = "ssh")]
        r.register("ssh", ssh::SshExecutor);
        #[cfg(feature = "http")]
        r.register("http", http::HttpExecutor);
        #[cfg(feature = "docker")]
        r.register("docker", docker::DockerExecutor);
        r
    }

    /// Adds (or replaces) the executor for `kind`.
    pub fn register(&mut self, kind: &str, executor: impl Executor + 'static) -> &mut Self {
        self.executors.insert(kind.to_string(), Arc::new(executor));
        self
    }

    /// The registered types, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.executors.keys().cloned().collect();
        kinds.sort_unstable();
        kinds
    }

    /// The executor for `kind`, if registered.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Executor>> {
        self.executors.get(kind)
    }
}

/// The Cargo feature that provides a built-in executor type, if `kind` is one.
pub fn feature_for(kind: &str) -> Option<&'static str> {
    match kind {
        "ssh" => Some("ssh"),
        "http" => Some("http"),
        "docker" => Some("docker"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_capped() {
        let mut c = Capture::default();
        c.push(b"hello", 8);
        c.push(b"world", 8);
        assert_eq!(c.data, b"hellowor");
        assert!(c.truncated);
    }

    #[test]
    fn cancel_token_fires() {
        let (c, t) = CancelToken::new();
        assert!(!t.is_cancelled());
        c.cancel();
        assert!(t.is_cancelled());
        smol::block_on(t.cancelled());
    }
}
