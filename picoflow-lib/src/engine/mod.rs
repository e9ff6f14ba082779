//! The engine: runs one workflow execution on smol (DAG-003 … DAG-009, REL-001).
//!
//! A task starts as soon as every task it depends on has finished — a ready set, not level
//! by level — with at most `max_parallel` tasks running at once (and, in a daemon, at most
//! `[execution] max_parallel` across all workflows through a shared limiter). Failure
//! semantics follow `DECISIONS.md` 5: a task that fails with `continue_on_failure` counts as
//! finished for its dependents; any other failure marks everything downstream `skipped` and
//! the workflow `failed`, while tasks that do not depend on the failed one keep running.
//!
//! Every state change is reported to the [`EventSink`]s in order. As soon as tasks finish the
//! engine asks the sinks to make them durable ([`EventSink::flush`]), one flush at a time:
//! a flush covers everything that finished while the previous one was in flight (group
//! commit). Only the tasks that depend on a completion wait for it to be durable before they
//! start; tasks already running and ready tasks whose dependencies are durable go on
//! meanwhile. So a crash never re-runs a task whose dependents had started (REL-001,
//! REL-004): after a crash, the tasks that were running run again, and so does a task whose
//! end was being synced at that instant. A failed flush stops the run, and the run ends only
//! when everything is durable. The engine runs inside the caller's executor: it drives its
//! tasks on a local executor of its own and awaits a task's process through a pidfd. Task
//! log writes, output files and the output directory's removal are done on one thread per
//! execution (see `files.rs`), so they never hold up the engine's thread; the only other
//! thread the engine starts is the short-lived one that collects a task process that does
//! not die at once when its attempt is dropped (see `spawn`).
//!
//! # Files
//!
//! * `mod.rs` — the public API: [`Engine`], [`EngineSettings`], [`RunOptions`]; a run's
//!   opening and closing around the scheduling loop in `run_inner`.
//! * `drain.rs` — the scheduling loop's state, one method per phase: start what is ready,
//!   make completions durable, wait, take in what ended.
//! * `attempt.rs` — one task's attempts: permits, records, its log sink and output file.
//! * `retry.rs` — the pure decision after an attempt: retry after a backoff, or how the
//!   task ends.
//! * `loops.rs` — `iterate_over` tasks, one task per item.
//! * `handlers.rs` — the execution's figures and its handlers, after the DAG.
//! * `unrun.rs` — tasks that end without running: skips, false conditions.
//! * `guard.rs` — `requires:`: the workflow's asked before its first task, a task's before
//!   it starts; waits, skips or fails.
//! * `resume.rs` — [`ResumeFrom`] and where an execution starts: what a resumed one carries
//!   over.
//! * `outputs.rs` — the values an attempt publishes (its output file, its selectors).
//! * `files.rs` — the execution's file thread.
//! * `log_sink.rs` — the task log sink handed to executors, written on that thread.
//! * `report.rs` — [`RunReport`], [`TaskReport`], and what a task's end tells the loop.
//! * `run.rs` — what every task of one execution shares.

mod attempt;
mod drain;
mod files;
mod guard;
mod handlers;
mod log_sink;
mod loops;
mod outputs;
mod report;
mod resume;
mod retry;
mod run;
mod unrun;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use smol::lock::Semaphore;

use crate::config::{Config, RetryConfig, TimeoutConfig};
use crate::dag::Dag;
use crate::error::Result;
use crate::events::{Event, EventSink, WorkflowExecution};
use crate::executor::{CancelToken, Registry};
use crate::expand::Vars;
use crate::logs::execution_log_dir;
use crate::model::{Task, Workflow};
use crate::validate::validate_workflow;

use drain::{Drain, Drained};
pub use report::{RunReport, TaskReport};
pub use resume::ResumeFrom;
use run::Run;

/// Settings the engine takes from the global configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Backoff between attempts and the default retry count.
    pub retry: RetryConfig,
    /// Default and maximum task timeouts.
    pub timeout: TimeoutConfig,
    /// `max_parallel` for workflows that do not set one.
    pub max_parallel: u32,
    /// `[tasks.limits]`: the limits of a task that sets none of its own.
    pub limits: crate::limits::Limits,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings::from(&Config::default())
    }
}

impl From<&Config> for EngineSettings {
    fn from(c: &Config) -> Self {
        EngineSettings {
            retry: c.retry.clone(),
            timeout: c.timeout.clone(),
            max_parallel: c.execution.max_parallel,
            limits: c.tasks.limits,
        }
    }
}

/// Runs workflows. Cheap to share by reference; one engine can run many workflows at once.
pub struct Engine {
    registry: Registry,
    settings: EngineSettings,
    sinks: Vec<Arc<dyn EventSink>>,
    vars: Vars,
    limiter: Option<Arc<Semaphore>>,
    log_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.registry)
            .field("settings", &self.settings)
            .field("sinks", &self.sinks.len())
            .field("log_dir", &self.log_dir)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

/// How to run one execution.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stops the run: no new task starts, running ones are terminated and recorded.
    pub cancel: CancelToken,
    /// Continue this earlier execution instead of starting a new one.
    pub resume: Option<ResumeFrom>,
    /// The workflow file, recorded for `run --resume`.
    pub source: Option<String>,
    /// Before starting, stop the processes that crashed earlier runs of this workflow left
    /// running (REL-001; a scan of `/proc`, which blocks the calling thread up to a few
    /// seconds when there are some). Always done when resuming; set it for a new execution
    /// whose workflow's latest execution was interrupted.
    pub stop_leftovers: bool,
    /// The id of the new execution (ignored when resuming); a fresh one when `None`. Lets a
    /// caller hand out the id before the run starts, as the web API's trigger does.
    pub execution_id: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cancel: CancelToken::never(),
            resume: None,
            source: None,
            stop_leftovers: false,
            execution_id: None,
        }
    }
}

impl Engine {
    /// An engine with the given executors and default settings.
    pub fn new(registry: Registry) -> Self {
        Engine {
            registry,
            settings: EngineSettings::default(),
            sinks: Vec::new(),
            vars: Vars::from_env(),
            limiter: None,
            log_dir: None,
            run_dir: None,
        }
    }

    /// Uses these settings (retry, timeout, default `max_parallel`).
    pub fn with_settings(mut self, settings: EngineSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Adds a consumer of events.
    pub fn with_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Uses these values for `${VAR}` expansion instead of the process environment.
    pub fn with_vars(mut self, vars: Vars) -> Self {
        self.vars = vars;
        self
    }

    /// Bounds the tasks running at once across every run of this engine (and any other engine
    /// sharing the limiter).
    pub fn with_limiter(mut self, limiter: Arc<Semaphore>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Writes task log files under `dir` (CFG-004).
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Keeps the files of running executions (the values tasks write to `$PICOFLOW_OUTPUT`)
    /// under `dir`, which must be private: it is created with mode 0700, and an existing one
    /// that is not a directory of this user with mode 0700 (a symbolic link, another user's,
    /// or open to others) fails the run before it starts. The CLI and the daemon use
    /// [`Config::run_dir`](crate::Config::run_dir), beside the state file. Without it, each
    /// execution gets a new directory with an unguessable name in the system's temporary
    /// directory.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// The executors this engine uses.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn emit(&self, event: Event) {
        for s in &self.sinks {
            s.on_event(&event);
        }
    }

    fn check(&self) -> Result<()> {
        self.sinks.iter().try_for_each(|s| s.check())
    }

    async fn flush(&self) -> Result<()> {
        for s in &self.sinks {
            s.flush().await?;
        }
        Ok(())
    }

    fn retries(&self, wf: &Workflow, task: &Task) -> u32 {
        task.retry
            .or(wf.config.retry_default)
            .unwrap_or(self.settings.retry.default_count)
    }

    fn timeout(&self, wf: &Workflow, task: &Task) -> Option<Duration> {
        let secs = task
            .timeout
            .or(wf.config.timeout_default)
            .unwrap_or(self.settings.timeout.default_seconds);
        let max = self.settings.timeout.max_seconds;
        let secs = if max > 0 && (secs == 0 || secs > max) {
            max
        } else {
            secs
        };
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// How many of `wf`'s tasks may run at once.
    fn max_parallel(&self, wf: &Workflow) -> usize {
        wf.config
            .max_parallel
            .unwrap_or(self.settings.max_parallel)
            .max(1) as usize
    }

    /// Runs one execution of `wf` to its end and reports it.
    ///
    /// Fails up front (before anything is recorded) if the workflow is invalid or uses an
    /// executor this engine lacks. Task failures are not errors: they are in the report.
    pub async fn run(&self, wf: &Workflow, opts: RunOptions) -> Result<RunReport> {
        let dag = validate_workflow(wf, &wf.name, &self.registry)?;
        // What a crashed earlier run of this workflow left running must not run beside the
        // tasks started now (REL-001): a resumed task would otherwise meet its own survivor.
        // A stop (a daemon's shutdown timeout) ends the search: an engine that does not
        // answer must not hold the run, which then ends without starting a task.
        if opts.resume.is_some() || opts.stop_leftovers {
            let search = async {
                crate::orphans::stop_leftovers(&wf.name, crate::orphans::GRACE, &self.registry)
                    .await;
            };
            smol::future::or(search, opts.cancel.cancelled()).await;
        }
        let ex = smol::LocalExecutor::new();
        ex.run(self.run_inner(&ex, wf, &dag, opts)).await
    }

    /// The execution itself, its tasks driven on `ex`: from its opening through the
    /// scheduling loop to its closing.
    async fn run_inner<'a>(
        &'a self,
        ex: &smol::LocalExecutor<'a>,
        wf: &'a Workflow,
        dag: &'a Dag,
        opts: RunOptions,
    ) -> Result<RunReport> {
        let (mut execution, carried) = resume::start(wf, &opts)?;
        let run = Rc::new(self.open(wf, &execution, &opts).await?);
        carried.publish(&run);
        self.open_workflow_gate(&run).await;
        let mut drain = Drain::new(self, run.clone(), dag, carried);
        // The I/O loop: start what the plan allows, make completions durable, wait for a task
        // or a flush to end, tell the plan.
        loop {
            drain.start_ready(ex);
            drain.schedule_flush(ex);
            if drain.settled() {
                break;
            }
            let wake = drain.wait().await;
            drain.handle(wake);
        }
        let drained = drain.into_drained();
        execution.status = drained.status;
        self.close(&run, execution, drained).await
    }

    /// Opens `execution` of `wf`: its output directory, its start recorded and durable before
    /// any task starts, and what its tasks share.
    async fn open<'a>(
        &self,
        wf: &'a Workflow,
        execution: &WorkflowExecution,
        opts: &RunOptions,
    ) -> Result<Run<'a>> {
        let log_dir = self
            .log_dir
            .as_ref()
            .map(|root| execution_log_dir(root, &wf.name, execution.started_at, &execution.id));
        // Shell tasks write their outputs into files there (`$PICOFLOW_OUTPUT`). A directory
        // others could tamper with refuses the run before anything is recorded.
        let output_dir = crate::flow::create_output_dir(self.run_dir.as_deref(), &execution.id)?;
        self.emit(Event::WorkflowStarted(execution.clone()));
        // The execution is on disk before its first task starts: a crash from here on leaves
        // an execution that recovery finds, and with it the tasks' leftover processes.
        self.flush().await?;
        let limit = self.max_parallel(wf);
        Ok(Run::new(
            wf,
            &execution.id,
            log_dir,
            output_dir,
            opts,
            limit,
        ))
    }

    /// Closes `execution` once its loop `drained`: its figures and handlers, the removal of
    /// its output files, and its end, durable before the run returns.
    async fn close(
        &self,
        run: &Run<'_>,
        mut execution: WorkflowExecution,
        drained: Drained,
    ) -> Result<RunReport> {
        let all = self
            .conclude(run, &mut execution, drained.reports, drained.items)
            .await;
        let output_dir = run.output_dir.clone();
        run.files
            .run(move || {
                let _ = std::fs::remove_dir_all(output_dir);
            })
            .await;
        let end = Utc::now();
        execution.finished_at = Some(end);
        execution.duration_seconds =
            Some((end - execution.started_at).num_milliseconds().max(0) as f64 / 1000.0);
        self.emit(Event::WorkflowFinished(execution.clone()));
        self.flush().await?;
        if let Some(e) = drained.store_error {
            return Err(e);
        }
        Ok(RunReport {
            execution,
            tasks: all,
        })
    }
}
