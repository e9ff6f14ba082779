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
//! when everything is durable. The engine runs entirely inside the caller's executor (it
//! drives its tasks on a local executor of its own and drives async-process's reaper itself,
//! so no helper thread is started).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_lite::future;
use smol::lock::Semaphore;

use crate::config::{Config, RetryConfig, TimeoutConfig};
use crate::error::{Error, Result};
use crate::events::{
    new_id, Event, EventSink, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus,
};
use crate::executor::{
    CancelToken, Capture, NoOutput, Outcome, OutputSink, Registry, SharedState, TaskContext,
};
use crate::expand::Vars;
use crate::logs::{execution_log_dir, task_log_path, TaskLogWriter};
use crate::model::{Task, Workflow};
use crate::plan::Plan;
use crate::validate::validate_workflow;

/// Settings the engine takes from the global configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Backoff between attempts and the default retry count.
    pub retry: RetryConfig,
    /// Default and maximum task timeouts.
    pub timeout: TimeoutConfig,
    /// `max_parallel` for workflows that do not set one.
    pub max_parallel: u32,
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
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.registry)
            .field("settings", &self.settings)
            .field("sinks", &self.sinks.len())
            .field("log_dir", &self.log_dir)
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cancel: CancelToken::never(),
            resume: None,
            source: None,
            stop_leftovers: false,
        }
    }
}

/// An interrupted execution to continue (REL-001): tasks whose last attempt succeeded (or
/// failed with `continue_on_failure`) are not run again; every other task is.
#[derive(Debug, Clone)]
pub struct ResumeFrom {
    /// The execution record.
    pub execution: WorkflowExecution,
    /// Its task attempts so far.
    pub tasks: Vec<TaskExecution>,
}

/// The outcome of one execution.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The final execution record.
    pub execution: WorkflowExecution,
    /// One entry per task, in file order.
    pub tasks: Vec<TaskReport>,
}

/// The outcome of one task within a [`RunReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// Task name.
    pub name: String,
    /// Final state (`pending` if the run stopped before it started).
    pub state: TaskState,
    /// Attempts made in this run.
    pub attempts: u32,
    /// Exit code of the last attempt.
    pub exit_code: Option<i32>,
    /// Wall time of the last attempt, in seconds.
    pub duration_seconds: Option<f64>,
    /// Error message of the last attempt.
    pub error: Option<String>,
    /// Finished in an earlier run of a resumed execution.
    pub resumed: bool,
}

impl TaskReport {
    /// The report of a task that has not started.
    fn pending(name: &str) -> TaskReport {
        TaskReport {
            name: name.to_string(),
            state: TaskState::Pending,
            attempts: 0,
            exit_code: None,
            duration_seconds: None,
            error: None,
            resumed: false,
        }
    }
}

impl RunReport {
    /// Whether the workflow succeeded.
    pub fn success(&self) -> bool {
        self.execution.status == WorkflowStatus::Success
    }
}

struct Finished {
    index: usize,
    report: TaskReport,
    release_dependents: bool,
}

/// What the scheduling loop woke up for.
enum Wake {
    Finished(Finished),
    /// A flush ended; it covered this many completions.
    Flushed((u64, Result<()>)),
    Cancelled,
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

    /// Runs one execution of `wf` to its end and reports it.
    ///
    /// Fails up front (before anything is recorded) if the workflow is invalid or uses an
    /// executor this engine lacks. Task failures are not errors: they are in the report.
    pub async fn run(&self, wf: &Workflow, opts: RunOptions) -> Result<RunReport> {
        let dag = validate_workflow(wf, &wf.name, &self.registry)?;
        // What a crashed earlier run of this workflow left running must not run beside the
        // tasks started now (REL-001): a resumed task would otherwise meet its own survivor.
        if opts.resume.is_some() || opts.stop_leftovers {
            crate::orphans::stop_leftovers(&wf.name, crate::orphans::GRACE);
        }
        let ex = smol::LocalExecutor::new();
        // Reaping children here keeps async-process from starting its own thread.
        let reaper = ex.spawn(async_process::driver());
        let result = ex.run(self.run_inner(&ex, wf, &dag, opts)).await;
        drop(reaper);
        result
    }

    async fn run_inner<'a>(
        &'a self,
        ex: &smol::LocalExecutor<'a>,
        wf: &'a Workflow,
        dag: &'a crate::dag::Dag,
        opts: RunOptions,
    ) -> Result<RunReport> {
        let n = wf.tasks.len();
        let Start {
            mut execution,
            done,
            first_attempt,
            mut reports,
        } = start(wf, &opts)?;
        execution.total_tasks = n as u32;
        let log_dir = self
            .log_dir
            .as_ref()
            .map(|root| execution_log_dir(root, &wf.name, execution.started_at, &execution.id));
        self.emit(Event::WorkflowStarted(execution.clone()));
        // The execution is on disk before its first task starts: a crash from here on leaves
        // an execution that recovery finds, and with it the tasks' leftover processes.
        self.flush().await?;

        let limit = wf
            .config
            .max_parallel
            .unwrap_or(self.settings.max_parallel)
            .max(1) as usize;
        let dependencies: Vec<Vec<usize>> = (0..n).map(|i| dag.dependencies(i).collect()).collect();
        let mut plan = Plan::new(&dependencies, &done, limit);
        let shared = Rc::new(SharedState::default());
        let exec_id: Rc<str> = Rc::from(execution.id.as_str());
        let log_dir: Option<Rc<std::path::Path>> = log_dir.map(Rc::from);
        let (tx, rx) = smol::channel::unbounded::<Finished>();
        let mut failed = false;
        let mut cancelled = false;
        let mut store_error = None;
        let (flushed_tx, flushed_rx) = smol::channel::bounded::<(u64, Result<()>)>(1);

        // The I/O loop: start what the plan allows, wait for a task or a flush to end, tell
        // the plan, flush what it says is due.
        loop {
            while let Some(i) = plan.startable().filter(|_| !cancelled) {
                // Nothing starts that could not be recorded.
                if let Err(e) = self.check() {
                    tracing::error!(error = %e, "cannot record state; stopping the run");
                    store_error.get_or_insert(e);
                    cancelled = true;
                    break;
                }
                plan.start(i);
                let tx = tx.clone();
                let task_fut = self.run_task(
                    wf,
                    i,
                    first_attempt[i],
                    exec_id.clone(),
                    log_dir.clone(),
                    opts.cancel.clone(),
                    shared.clone(),
                );
                ex.spawn(async move {
                    let _ = tx.send(task_fut.await).await;
                })
                .detach();
            }
            // Ready tasks left over wait for a flush in flight (see below).
            if plan.settled(cancelled) {
                break;
            }
            let next = future::or(
                async { rx.recv().await.map_or(Wake::Cancelled, Wake::Finished) },
                future::or(
                    async {
                        flushed_rx
                            .recv()
                            .await
                            .map_or(Wake::Cancelled, Wake::Flushed)
                    },
                    async {
                        match cancelled {
                            false => opts.cancel.cancelled().await,
                            true => future::pending().await,
                        }
                        Wake::Cancelled
                    },
                ),
            )
            .await;
            let mut batch: Vec<Finished> = Vec::new();
            match next {
                Wake::Finished(f) => batch.push(f),
                Wake::Flushed((upto, Ok(()))) => plan.durable(upto),
                Wake::Flushed((_, Err(e))) => {
                    plan.flush_failed();
                    tracing::error!(error = %e, "cannot record task completion; stopping the run");
                    store_error.get_or_insert(e);
                    cancelled = true;
                }
                Wake::Cancelled => {
                    cancelled = true;
                    continue;
                }
            }
            while let Ok(f) = rx.try_recv() {
                batch.push(f);
            }
            for f in batch {
                let i = f.index;
                reports[i] = f.report;
                if opts.cancel.is_cancelled() && !f.release_dependents {
                    cancelled = true;
                }
                let skipped = plan.finish(i, f.release_dependents);
                if !f.release_dependents && !cancelled {
                    failed = true;
                    for d in skipped {
                        self.report_skipped(wf, i, d, &execution.id, &mut reports[d]);
                    }
                }
            }
            // Make completions durable at once, one flush at a time; only their dependents
            // wait for it (see `plan`). The flush at the end of the run waits for whatever
            // is left.
            if let Some(upto) = plan.flush_due() {
                let flushed_tx = flushed_tx.clone();
                ex.spawn(async move {
                    let _ = flushed_tx.send((upto, self.flush().await)).await;
                })
                .detach();
            }
        }

        let end = Utc::now();
        execution.finished_at = Some(end);
        execution.duration_seconds =
            Some((end - execution.started_at).num_milliseconds().max(0) as f64 / 1000.0);
        execution.successful_tasks = reports
            .iter()
            .filter(|r| r.state == TaskState::Success)
            .count() as u32;
        execution.failed_tasks = reports.iter().filter(|r| r.state.is_failure()).count() as u32;
        execution.status = if cancelled {
            WorkflowStatus::Interrupted
        } else if failed {
            WorkflowStatus::Failed
        } else {
            WorkflowStatus::Success
        };
        self.emit(Event::WorkflowFinished(execution.clone()));
        self.flush().await?;
        if let Some(e) = store_error {
            return Err(e);
        }
        Ok(RunReport {
            execution,
            tasks: reports,
        })
    }

    /// Reports task `skipped`, which will not run because task `failed` failed.
    fn report_skipped(
        &self,
        wf: &Workflow,
        failed: usize,
        skipped: usize,
        execution_id: &str,
        report: &mut TaskReport,
    ) {
        let now = Utc::now();
        let reason = format!("skipped: dependency '{}' failed", wf.tasks[failed].name);
        report.state = TaskState::Skipped;
        report.error = Some(reason.clone());
        self.emit(Event::TaskSkipped(TaskExecution {
            id: new_id(),
            workflow_execution_id: execution_id.to_string(),
            task_name: wf.tasks[skipped].name.clone(),
            status: TaskState::Skipped,
            started_at: now,
            finished_at: Some(now),
            exit_code: None,
            stdout: None,
            stderr: None,
            attempt: 1,
            error_message: Some(reason),
            duration_seconds: Some(0.0),
            created_at: now,
        }));
    }

    /// Runs every attempt of one task (DAG-006, DAG-007, DAG-008).
    #[allow(clippy::too_many_arguments)]
    async fn run_task(
        &self,
        wf: &Workflow,
        index: usize,
        first_attempt: u32,
        execution_id: Rc<str>,
        log_dir: Option<Rc<std::path::Path>>,
        cancel: CancelToken,
        shared: Rc<SharedState>,
    ) -> Finished {
        let execution_id: &str = &execution_id;
        let cancel = &cancel;
        let shared: &SharedState = &shared;
        let log_dir = log_dir.as_deref();
        let task = &wf.tasks[index];
        let retries = self.retries(wf, task);
        let timeout = self.timeout(wf, task);
        let executor = self
            .registry
            .get(&task.kind)
            .expect("validated: every task type has an executor")
            .clone();
        let last_attempt = first_attempt + retries;
        let mut attempt = first_attempt;
        let mut report = TaskReport::pending(&task.name);
        loop {
            let permit = match &self.limiter {
                Some(l) => {
                    let got = future::or(async { Some(l.acquire_arc().await) }, async {
                        cancel.cancelled().await;
                        None
                    })
                    .await;
                    match got {
                        Some(p) => Some(p),
                        None => {
                            report.error = Some("interrupted before starting".into());
                            return Finished {
                                index,
                                report,
                                release_dependents: false,
                            };
                        }
                    }
                }
                None => None,
            };
            let started = Utc::now();
            let clock = Instant::now();
            let mut record = TaskExecution {
                id: new_id(),
                workflow_execution_id: execution_id.to_string(),
                task_name: task.name.clone(),
                status: TaskState::Running,
                started_at: started,
                finished_at: None,
                exit_code: None,
                stdout: None,
                stderr: None,
                attempt,
                error_message: None,
                duration_seconds: None,
                created_at: started,
            };
            self.emit(Event::TaskStarted(record.clone()));
            let writer = log_dir.map(|d| {
                let header = (attempt > 1).then(|| format!("--- attempt {attempt} ---\n"));
                TaskLogWriter::new(task_log_path(d, &task.name), header)
            });
            let output: &dyn OutputSink = match &writer {
                Some(w) => w,
                None => &NoOutput,
            };
            let ctx = TaskContext {
                workflow: &wf.name,
                execution_id,
                task,
                attempt,
                timeout,
                cancel: cancel.clone(),
                vars: &self.vars,
                shared,
                output,
            };
            let mut out = executor.execute(ctx).await;
            drop(permit);
            let log_problem = writer.as_ref().and_then(TaskLogWriter::problem);
            drop(writer);
            let finished = Utc::now();
            record.finished_at = Some(finished);
            record.duration_seconds = Some(clock.elapsed().as_secs_f64());
            record.exit_code = out.exit_code;
            record.stdout = text(std::mem::take(&mut out.stdout));
            record.stderr = text(std::mem::take(&mut out.stderr));
            record.error_message = out.error.clone();
            // A log that could not be written (full disk) is said on the task's record.
            if let Some(p) = log_problem {
                record.error_message = Some(match record.error_message.take() {
                    Some(e) => format!("{e}; warning: {p}"),
                    None => format!("warning: {p}"),
                });
            }
            report.attempts += 1;
            report.exit_code = out.exit_code;
            report.duration_seconds = record.duration_seconds;
            report.error = out.error.clone();

            let final_state = match out.outcome {
                Outcome::Success => TaskState::Success,
                Outcome::Failed => TaskState::Failed,
                Outcome::Timeout => TaskState::Timeout,
                Outcome::Cancelled => TaskState::Failed,
            };
            let may_retry = matches!(out.outcome, Outcome::Failed | Outcome::Timeout)
                && out.retryable
                && attempt < last_attempt
                && !cancel.is_cancelled();
            if may_retry {
                let delay = self.settings.retry.backoff(attempt + 1);
                record.status = TaskState::Retrying;
                self.emit(Event::TaskFinished {
                    record,
                    retry_in: Some(delay),
                });
                let slept = future::or(
                    async {
                        smol::Timer::after(delay).await;
                        true
                    },
                    async {
                        cancel.cancelled().await;
                        false
                    },
                )
                .await;
                if !slept {
                    report.state = TaskState::Failed;
                    report.error = Some("interrupted while waiting to retry".into());
                    return Finished {
                        index,
                        report,
                        release_dependents: false,
                    };
                }
                attempt += 1;
                continue;
            }
            record.status = final_state;
            report.state = final_state;
            let ok = final_state == TaskState::Success
                || (task.continue_on_failure && out.outcome != Outcome::Cancelled);
            self.emit(Event::TaskFinished {
                record,
                retry_in: None,
            });
            return Finished {
                index,
                report,
                release_dependents: ok,
            };
        }
    }
}

fn text(c: Capture) -> Option<String> {
    (!c.data.is_empty()).then(|| c.into_text())
}

/// Where an execution starts: a new one, or the interrupted one `opts.resume` names with the
/// tasks it finished already.
struct Start {
    execution: WorkflowExecution,
    /// Tasks that finished in an earlier run of the execution.
    done: Vec<bool>,
    /// The number of each task's next attempt.
    first_attempt: Vec<u32>,
    reports: Vec<TaskReport>,
}

fn start(wf: &Workflow, opts: &RunOptions) -> Result<Start> {
    let n = wf.tasks.len();
    let now = Utc::now();
    let mut done = vec![false; n];
    let mut first_attempt = vec![1u32; n];
    let mut reports: Vec<TaskReport> = wf
        .tasks
        .iter()
        .map(|t| TaskReport::pending(&t.name))
        .collect();

    let execution = match &opts.resume {
        Some(r) => {
            if r.execution.workflow_name != wf.name {
                return Err(Error::Other(format!(
                    "execution {} belongs to workflow '{}', not '{}'",
                    r.execution.id, r.execution.workflow_name, wf.name
                )));
            }
            for (i, t) in wf.tasks.iter().enumerate() {
                let last = r
                    .tasks
                    .iter()
                    .filter(|a| a.task_name == t.name)
                    .max_by_key(|a| a.attempt);
                if let Some(a) = last {
                    first_attempt[i] = a.attempt + 1;
                    // An attempt cut short by a crash ran to no conclusion: run it again.
                    let interrupted = a
                        .error_message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(crate::events::INTERRUPTED));
                    let finished = a.status == TaskState::Success
                        || (t.continue_on_failure && !interrupted && a.status.is_failure());
                    if finished {
                        done[i] = true;
                        reports[i].state = a.status;
                        reports[i].exit_code = a.exit_code;
                        reports[i].duration_seconds = a.duration_seconds;
                        reports[i].error = a.error_message.clone();
                        reports[i].resumed = true;
                    }
                }
            }
            let mut e = r.execution.clone();
            e.status = WorkflowStatus::Running;
            e.finished_at = None;
            e.duration_seconds = None;
            e.pid = std::process::id();
            if opts.source.is_some() {
                e.source = opts.source.clone();
            }
            e
        }
        None => WorkflowExecution {
            id: new_id(),
            workflow_name: wf.name.clone(),
            started_at: now,
            finished_at: None,
            status: WorkflowStatus::Running,
            duration_seconds: None,
            total_tasks: n as u32,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: now,
            pid: std::process::id(),
            source: opts.source.clone(),
        },
    };
    Ok(Start {
        execution,
        done,
        first_attempt,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::BoxFuture;
    use std::sync::Mutex;

    /// Records events and flushes in order; each flush takes `delay`, and flushes after the
    /// first `good` ones fail.
    struct Recorder {
        log: Mutex<Vec<String>>,
        delay: Duration,
        good: usize,
    }

    impl Recorder {
        fn new(delay: Duration, good: usize) -> Arc<Recorder> {
            Arc::new(Recorder {
                log: Mutex::new(Vec::new()),
                delay,
                good,
            })
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl EventSink for Recorder {
        fn on_event(&self, event: &Event) {
            let line = match event {
                Event::TaskStarted(r) => format!("start {}", r.task_name),
                Event::TaskFinished { record, .. } => format!("end {}", record.task_name),
                Event::TaskSkipped(r) => format!("skip {}", r.task_name),
                Event::WorkflowStarted(_) => "run start".into(),
                Event::WorkflowFinished(_) => "run end".into(),
            };
            self.log.lock().unwrap().push(line);
        }

        fn flush(&self) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                smol::Timer::after(self.delay).await;
                let mut log = self.log.lock().unwrap();
                let done = log.iter().filter(|l| *l == "flushed").count();
                log.push("flushed".into());
                match done < self.good {
                    true => Ok(()),
                    false => Err(Error::Other("disk full".into())),
                }
            })
        }
    }

    fn chain(tasks: usize, command: &str) -> Workflow {
        let mut text = String::from("name: chain\ntasks:\n");
        for i in 0..tasks {
            text.push_str(&format!(
                "  - name: t{i}\n    type: shell\n    config:\n      command: \"{command}\"\n"
            ));
            if i > 0 {
                text.push_str(&format!("    depends_on: [t{}]\n", i - 1));
            }
        }
        crate::yaml::parse_workflow(&text, "chain.yaml").unwrap()
    }

    #[test]
    fn a_dependent_starts_only_once_its_dependencies_are_durable() {
        let sink = Recorder::new(Duration::from_millis(200), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let report = smol::block_on(engine.run(&chain(3, "true"), RunOptions::default())).unwrap();
        assert!(report.success());
        let log = sink.log();
        let flushes: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "flushed").collect();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        // The execution is durable before its first task starts ...
        assert!(
            pos("run start") < flushes[0] && flushes[0] < pos("start t0"),
            "{log:?}"
        );
        // ... and each completion before the task that depends on it starts.
        assert!(
            pos("end t0") < flushes[1] && flushes[1] < pos("start t1"),
            "{log:?}"
        );
        assert!(
            pos("end t1") < flushes[2] && flushes[2] < pos("start t2"),
            "{log:?}"
        );
        // The run reports its end only once everything is durable.
        assert_eq!(log.last().unwrap(), "flushed", "{log:?}");
        assert!(pos("run end") < log.len() - 1);
    }

    #[test]
    fn independent_tasks_do_not_wait_for_flushes() {
        let sink = Recorder::new(Duration::from_secs(1), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let mut wf = crate::yaml::parse_workflow(
            "name: w\nconfig: {max_parallel: 1}\ntasks:\n  - {name: a, type: shell, config: {command: \"true\"}}\n  - {name: b, type: shell, config: {command: \"true\"}}\n  - {name: c, type: shell, config: {command: \"true\"}}\n",
            "w.yaml",
        )
        .unwrap();
        wf.config.max_parallel = Some(1);
        let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
        assert!(report.success());
        let log = sink.log();
        let flushes: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "flushed").collect();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        // After the execution's own flush, the first completion's flush takes a second; tasks
        // that do not depend on it go on meanwhile.
        assert!(flushes[0] < pos("start a"), "{log:?}");
        assert!(pos("end c") < flushes[1], "{log:?}");
        assert_eq!(log.last().unwrap(), "flushed", "{log:?}");
    }

    #[test]
    fn a_failed_flush_stops_the_run_with_an_error() {
        // The execution's start is recorded, the first completion is not.
        let sink = Recorder::new(Duration::from_millis(10), 1);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let err =
            smol::block_on(engine.run(&chain(5, "sleep 0.3"), RunOptions::default())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let log = sink.log();
        let started = log.iter().filter(|l| l.starts_with("start")).count();
        assert!(
            started < 5,
            "no task starts after the store failed: {log:?}"
        );
    }

    #[test]
    fn no_task_starts_when_the_execution_cannot_be_recorded() {
        let sink = Recorder::new(Duration::from_millis(10), 0);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let err = smol::block_on(engine.run(&chain(2, "true"), RunOptions::default())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let log = sink.log();
        assert!(!log.iter().any(|l| l.starts_with("start")), "{log:?}");
    }
}
