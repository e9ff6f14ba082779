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
//! tasks on a local executor of its own and awaits a task's process through a pidfd, so it
//! needs no thread of its own (the one exception: a task process that does not die at once
//! when its attempt is dropped is collected by a short-lived thread, see `spawn`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
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
    new_id, Event, EventSink, SkipReason, TaskExecution, TaskState, WorkflowExecution,
    WorkflowStatus,
};
use crate::executor::{
    CancelToken, NoOutput, Outcome, OutputSink, Registry, SharedState, TaskContext, TaskOutput,
};
use crate::expand::Vars;
use crate::expr::Expr;
use crate::flow::RunValues;
use crate::logs::{execution_log_dir, task_log_path, TaskLogWriter};
use crate::model::{Task, Workflow};
use crate::plan::{Plan, Skip};
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

    /// The report of a task that finished in an earlier run of a resumed execution, with
    /// `a` its last attempt (none made in this run).
    fn resumed(a: &TaskExecution) -> TaskReport {
        TaskReport {
            name: a.task_name.clone(),
            state: a.status,
            attempts: 0,
            exit_code: a.exit_code,
            duration_seconds: a.duration_seconds,
            error: a.error_message.clone(),
            resumed: true,
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
    /// What the task published.
    outputs: Option<BTreeMap<String, String>>,
    /// The reports of a loop's tasks, in item order.
    items: Vec<TaskReport>,
}

impl Finished {
    fn failed(index: usize, report: TaskReport) -> Finished {
        Finished {
            index,
            report,
            release_dependents: false,
            outputs: None,
            items: Vec::new(),
        }
    }
}

/// What the scheduling loop woke up for.
enum Wake {
    Finished(Finished),
    /// A flush ended; it covered this many completions.
    Flushed((u64, Result<()>)),
    Cancelled,
}

/// What every task of one execution shares.
struct Run<'a> {
    wf: &'a Workflow,
    /// The tasks as they run (see `flow::prepare`), then the handlers.
    tasks: Vec<Cow<'a, Task>>,
    /// The run values each of them reads.
    refs: Vec<Vec<String>>,
    /// Each one's parsed `when`.
    conditions: Vec<Option<Expr>>,
    execution_id: String,
    log_dir: Option<PathBuf>,
    /// The execution's private directory of output files (see `flow::create_output_dir`).
    output_dir: PathBuf,
    cancel: CancelToken,
    shared: SharedState,
    values: RefCell<RunValues>,
    /// Bounds every attempt by `max_parallel` when loops run tasks beside the plan's.
    slots: Option<Semaphore>,
    /// The last attempt of each task of a resumed execution, by task name.
    earlier: HashMap<String, TaskExecution>,
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

    /// Runs one execution of `wf` to its end and reports it.
    ///
    /// Fails up front (before anything is recorded) if the workflow is invalid or uses an
    /// executor this engine lacks. Task failures are not errors: they are in the report.
    pub async fn run(&self, wf: &Workflow, opts: RunOptions) -> Result<RunReport> {
        let dag = validate_workflow(wf, &wf.name, &self.registry)?;
        // What a crashed earlier run of this workflow left running must not run beside the
        // tasks started now (REL-001): a resumed task would otherwise meet its own survivor.
        if opts.resume.is_some() || opts.stop_leftovers {
            crate::orphans::stop_leftovers(&wf.name, crate::orphans::GRACE, &self.registry).await;
        }
        let ex = smol::LocalExecutor::new();
        ex.run(self.run_inner(&ex, wf, &dag, opts)).await
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
        // Shell tasks write their outputs into files there (`$PICOFLOW_OUTPUT`). A directory
        // others could tamper with refuses the run before anything is recorded.
        let output_dir = crate::flow::create_output_dir(self.run_dir.as_deref(), &execution.id)?;
        self.emit(Event::WorkflowStarted(execution.clone()));
        // The execution is on disk before its first task starts: a crash from here on leaves
        // an execution that recovery finds, and with it the tasks' leftover processes.
        self.flush().await?;

        let limit = wf
            .config
            .max_parallel
            .unwrap_or(self.settings.max_parallel)
            .max(1) as usize;
        let run = Rc::new(self.prepare_run(wf, &execution.id, log_dir, &output_dir, &opts, limit));
        for (i, t) in wf.tasks.iter().enumerate() {
            if done[i] {
                let earlier = run.earlier.get(&t.name);
                run.values.borrow_mut().publish(
                    &t.name,
                    reports[i].state,
                    earlier.and_then(|a| a.outputs.clone()),
                );
            }
        }
        let dependencies: Vec<Vec<usize>> = (0..n).map(|i| dag.dependencies(i).collect()).collect();
        let rules: Vec<_> = wf.tasks.iter().map(|t| t.run_if).collect();
        let mut plan = Plan::new(&dependencies, &rules, &done, limit);
        let mut items: Vec<Vec<TaskReport>> = vec![Vec::new(); n];
        let (tx, rx) = smol::channel::unbounded::<Finished>();
        let mut failed = false;
        let mut cancelled = false;
        let mut store_error = None;
        let (flushed_tx, flushed_rx) = smol::channel::bounded::<(u64, Result<()>)>(1);
        self.report_skips(&run, &mut plan, &mut reports);

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
                // A loop's condition is asked of each item.
                let is_loop = wf.tasks[i].iterate_over.is_some();
                if !is_loop && !self.condition_holds(&run, i, None, &mut reports[i]) {
                    plan.finish(i, true);
                    self.report_skips(&run, &mut plan, &mut reports);
                    continue;
                }
                let tx = tx.clone();
                let run = run.clone();
                let first = first_attempt[i];
                ex.spawn(async move {
                    let f = match is_loop {
                        true => self.run_loop(&run, i).await,
                        false => {
                            self.run_task(&run, i, &run.tasks[i], None, first, false)
                                .await
                        }
                    };
                    let _ = tx.send(f).await;
                })
                .detach();
            }
            // Make completions durable at once, one flush at a time; only their dependents
            // wait for it (see `plan`). That includes a task its condition skipped just now.
            // The flush at the end of the run waits for whatever is left.
            if let Some(upto) = plan.flush_due() {
                let flushed_tx = flushed_tx.clone();
                ex.spawn(async move {
                    let _ = flushed_tx.send((upto, self.flush().await)).await;
                })
                .detach();
            }
            // Ready tasks left over wait for that flush.
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
                run.values
                    .borrow_mut()
                    .publish(&wf.tasks[i].name, f.report.state, f.outputs);
                reports[i] = f.report;
                items[i] = f.items;
                if opts.cancel.is_cancelled() && !f.release_dependents {
                    cancelled = true;
                }
                plan.finish(i, f.release_dependents);
                if !f.release_dependents && !cancelled {
                    failed = true;
                }
                if !cancelled {
                    self.report_skips(&run, &mut plan, &mut reports);
                }
            }
        }

        execution.status = if cancelled {
            WorkflowStatus::Interrupted
        } else if failed {
            WorkflowStatus::Failed
        } else {
            WorkflowStatus::Success
        };
        let all = self.conclude(&run, &mut execution, reports, items).await;
        let _ = std::fs::remove_dir_all(&output_dir);

        let end = Utc::now();
        execution.finished_at = Some(end);
        execution.duration_seconds =
            Some((end - execution.started_at).num_milliseconds().max(0) as f64 / 1000.0);
        self.emit(Event::WorkflowFinished(execution.clone()));
        self.flush().await?;
        if let Some(e) = store_error {
            return Err(e);
        }
        Ok(RunReport {
            execution,
            tasks: all,
        })
    }

    /// After the DAG: the execution's figures (a loop counts by its tasks, not as one), then
    /// the handlers its status calls for. Returns every report: tasks and loop items in file
    /// order, then handlers.
    async fn conclude(
        &self,
        run: &Run<'_>,
        execution: &mut WorkflowExecution,
        reports: Vec<TaskReport>,
        mut items: Vec<Vec<TaskReport>>,
    ) -> Vec<TaskReport> {
        let wf = run.wf;
        let mut all: Vec<TaskReport> = Vec::with_capacity(reports.len());
        for (i, r) in reports.into_iter().enumerate() {
            let its = std::mem::take(&mut items[i]);
            if its.is_empty() || wf.tasks[i].iterate_over.is_none() {
                all.push(r);
            }
            all.extend(its);
        }
        execution.total_tasks = all.len() as u32;
        execution.successful_tasks =
            all.iter().filter(|r| r.state == TaskState::Success).count() as u32;
        execution.failed_tasks = all
            .iter()
            .filter(|r| r.state.is_failure() && !crate::events::is_interrupted(r.error.as_deref()))
            .count() as u32;
        // An interrupted run runs no handler: its resume will.
        if execution.status != WorkflowStatus::Interrupted && !wf.handlers.is_empty() {
            let failed_tasks: Vec<&str> = all
                .iter()
                .filter(|r| r.state.is_failure())
                .map(|r| r.name.as_str())
                .collect();
            run.values
                .borrow_mut()
                .finish(execution.status.as_str(), &failed_tasks);
            let handlers = self.run_handlers(run, execution.status).await;
            all.extend(handlers);
        }
        all
    }

    /// The shared part of an execution: prepared tasks and handlers, their references and
    /// conditions, and a resumed execution's earlier attempts.
    fn prepare_run<'a>(
        &self,
        wf: &'a Workflow,
        execution_id: &str,
        log_dir: Option<PathBuf>,
        output_dir: &std::path::Path,
        opts: &RunOptions,
        limit: usize,
    ) -> Run<'a> {
        let tasks: Vec<Cow<'a, Task>> = wf
            .tasks
            .iter()
            .chain(wf.handlers.all().map(|(_, t)| t))
            .map(crate::flow::prepare)
            .collect();
        let refs = tasks
            .iter()
            .map(|t| crate::flow::run_references(t))
            .collect();
        let conditions = tasks
            .iter()
            .map(|t| t.when.as_deref().and_then(|w| Expr::parse(w).ok()))
            .collect();
        let earlier = opts
            .resume
            .iter()
            .flat_map(|r| crate::events::last_attempts(&r.tasks))
            .map(|a| (a.task_name.clone(), a.clone()))
            .collect();
        let loops = wf.tasks.iter().any(|t| t.iterate_over.is_some());
        Run {
            wf,
            tasks,
            refs,
            conditions,
            execution_id: execution_id.to_string(),
            log_dir,
            output_dir: output_dir.to_path_buf(),
            cancel: opts.cancel.clone(),
            shared: SharedState::default(),
            values: RefCell::new(RunValues::new(&wf.name, execution_id)),
            slots: loops.then(|| Semaphore::new(limit)),
            earlier,
        }
    }

    /// Reports the tasks the plan skipped since the last call.
    fn report_skips(&self, run: &Run<'_>, plan: &mut Plan, reports: &mut [TaskReport]) {
        for (i, skip) in plan.take_skipped() {
            let task = &run.wf.tasks[i];
            let reason = match skip {
                Skip::Failed(c) => SkipReason::Dependency(run.wf.tasks[c].name.clone()),
                Skip::Rule => SkipReason::Rule(task.run_if.as_str().to_string()),
            };
            self.skip(run, &task.name, reason.message(), &mut reports[i]);
        }
    }

    /// Whether task `index`'s condition lets it run; when not, reports it skipped.
    /// `report` names the task (a loop's item task for `item`).
    fn condition_holds(
        &self,
        run: &Run<'_>,
        index: usize,
        item: Option<(&str, usize)>,
        report: &mut TaskReport,
    ) -> bool {
        let Some(expr) = &run.conditions[index] else {
            return true;
        };
        if run.values.borrow().condition(expr, &self.vars, item) {
            return true;
        }
        let when = run.tasks[index].when.as_deref().unwrap_or_default();
        let reason = SkipReason::Condition(when.to_string()).message();
        let name = report.name.clone();
        self.skip(run, &name, reason, report);
        false
    }

    /// Records a task that will not run.
    fn skip(&self, run: &Run<'_>, name: &str, reason: String, report: &mut TaskReport) {
        self.record_unrun(run, name, TaskState::Skipped, reason, report);
    }

    /// Records a task that ends in `state` without running.
    fn record_unrun(
        &self,
        run: &Run<'_>,
        name: &str,
        state: TaskState,
        reason: String,
        report: &mut TaskReport,
    ) {
        report.state = state;
        report.error = Some(reason.clone());
        run.values.borrow_mut().publish(name, state, None);
        let record = TaskExecution::unrun(&run.execution_id, name, state, reason, Utc::now());
        self.emit(match state {
            TaskState::Skipped => Event::TaskSkipped(record),
            _ => Event::TaskFinished {
                record,
                retry_in: None,
            },
        });
    }

    /// Runs a loop task: one task `NAME[item]` per item, at most `max_parallel` at once; the
    /// loop succeeds when every item does. Items finished in an earlier run of a resumed
    /// execution are kept, with their outputs.
    async fn run_loop(&self, run: &Run<'_>, index: usize) -> Finished {
        let task = &run.tasks[index];
        let mut report = TaskReport::pending(&task.name);
        let spec = task.iterate_over.as_ref().expect("a loop task");
        // The borrow of the values ends here: recording a failure below borrows them again.
        let built = run.values.borrow().items(spec, &self.vars);
        let list = match built {
            Ok(l) => l,
            Err(e) => {
                self.record_unrun(run, &task.name, TaskState::Failed, e, &mut report);
                // A failure like any other: `continue_on_failure` lets the run go on.
                return Finished {
                    release_dependents: task.continue_on_failure,
                    ..Finished::failed(index, report)
                };
            }
        };
        if list.is_empty() {
            self.skip(run, &task.name, SkipReason::NoItems.message(), &mut report);
            return Finished {
                release_dependents: true,
                ..Finished::failed(index, report)
            };
        }
        let names = item_names(&task.name, &list);
        // What each item's task is made from: without the list, which cloning for every
        // item made a loop's cost grow with the square of its items.
        let mut template = task.clone().into_owned();
        template.iterate_over = None;
        let template = &template;
        let lex = smol::LocalExecutor::new();
        let driver = async {
            let mut handles = Vec::with_capacity(list.len());
            for (k, (item, name)) in list.iter().zip(&names).enumerate() {
                let earlier = run.earlier.get(name);
                if let Some(a) = earlier.filter(|a| finished_before(a, task)) {
                    let r = TaskReport::resumed(a);
                    handles.push(lex.spawn(async move { (r, true, a.outputs.clone()) }));
                    continue;
                }
                let mut r = TaskReport::pending(name);
                if !self.condition_holds(run, index, Some((item, k)), &mut r) {
                    handles.push(lex.spawn(async move { (r, true, None) }));
                    continue;
                }
                // Items start in their order: each takes its slot here, in turn.
                let slot = match &run.slots {
                    None => None,
                    Some(s) => {
                        let got = future::or(async { Some(s.acquire().await) }, async {
                            run.cancel.cancelled().await;
                            None
                        })
                        .await;
                        match got {
                            Some(g) => Some(g),
                            None => {
                                let mut r = TaskReport::pending(name);
                                r.error = Some("interrupted before starting".into());
                                handles.push(lex.spawn(async move { (r, false, None) }));
                                continue;
                            }
                        }
                    }
                };
                let first = earlier.map_or(1, |a| a.attempt + 1);
                let mut t = template.clone();
                t.name = name.clone();
                handles.push(lex.spawn(async move {
                    let f = self
                        .run_task(run, index, &t, Some((item, k)), first, slot.is_some())
                        .await;
                    drop(slot);
                    // An item's end is durable at once: a resume after a crash keeps it.
                    if let Err(e) = self.flush().await {
                        tracing::error!(error = %e, task = %t.name, "cannot record the end of a loop's task");
                    }
                    (f.report, f.release_dependents, f.outputs)
                }));
            }
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await);
            }
            out
        };
        let results = lex.run(driver).await;
        let mut items = Vec::with_capacity(results.len());
        let mut failures = Vec::new();
        let mut release = true;
        for (r, ok, outputs) in results {
            run.values.borrow_mut().publish(&r.name, r.state, outputs);
            release &= ok;
            if r.state.is_failure() || r.state == TaskState::Pending {
                failures.push(r.name.clone());
            }
            report.attempts += r.attempts;
            items.push(r);
        }
        report.state = match failures.is_empty() {
            true => TaskState::Success,
            false => TaskState::Failed,
        };
        if !failures.is_empty() {
            report.error = Some(format!(
                "{} of {} items did not succeed: {}",
                failures.len(),
                items.len(),
                failures.join(", ")
            ));
        }
        Finished {
            index,
            report,
            release_dependents: release,
            outputs: None,
            items,
        }
    }

    /// Runs the workflow's handlers for an execution that ended with `status`, one after
    /// the other; their results do not change the execution's.
    async fn run_handlers(&self, run: &Run<'_>, status: WorkflowStatus) -> Vec<TaskReport> {
        let n = run.wf.tasks.len();
        let mut reports = Vec::new();
        for (k, (list, _)) in run.wf.handlers.all().enumerate() {
            let due = match list {
                "on_success" => status == WorkflowStatus::Success,
                "on_failure" => status == WorkflowStatus::Failed,
                _ => true,
            };
            if !due || run.cancel.is_cancelled() {
                continue;
            }
            let index = n + k;
            let mut report = TaskReport::pending(&run.tasks[index].name);
            if self.condition_holds(run, index, None, &mut report) {
                report = self
                    .run_task(run, index, &run.tasks[index], None, 1, false)
                    .await
                    .report;
            }
            reports.push(report);
        }
        reports
    }

    /// Runs every attempt of one task (DAG-006, DAG-007, DAG-008): `task` is the `index`th of
    /// the run (a loop's item task for loops), `item` its loop item.
    async fn run_task(
        &self,
        run: &Run<'_>,
        index: usize,
        task: &Task,
        item: Option<(&str, usize)>,
        first_attempt: u32,
        slot_held: bool,
    ) -> Finished {
        let retries = self.retries(run.wf, task);
        let timeout = self.timeout(run.wf, task);
        let executor = self
            .registry
            .get(&task.kind)
            .expect("validated: every task type has an executor")
            .clone();
        let refs = &run.refs[index];
        let last_attempt = first_attempt + retries;
        let mut attempt = first_attempt;
        let mut report = TaskReport::pending(&task.name);
        // The record of the attempt before this one while it says `retrying`.
        let mut retrying: Option<TaskExecution> = None;
        loop {
            let permits = future::or(
                async {
                    let slot = match (&run.slots, slot_held) {
                        (Some(s), false) => Some(s.acquire().await),
                        _ => None,
                    };
                    let permit = match &self.limiter {
                        Some(l) => Some(l.acquire_arc().await),
                        None => None,
                    };
                    Some((slot, permit))
                },
                async {
                    run.cancel.cancelled().await;
                    None
                },
            )
            .await;
            let Some(permits) = permits else {
                report.error = Some("interrupted before starting".into());
                if let Some(r) = retrying {
                    self.retry_cut_short(r, &mut report);
                }
                return Finished::failed(index, report);
            };
            // Values of the run this attempt reads, as they are now.
            let vars = match refs.is_empty() {
                true => None,
                false => Some(run.values.borrow().vars_for(&self.vars, refs, item)),
            };
            let clock = Instant::now();
            let mut record =
                TaskExecution::started(&run.execution_id, &task.name, attempt, Utc::now());
            self.emit(Event::TaskStarted(record.clone()));
            let writer = run.log_dir.as_deref().map(|d| {
                let header = (attempt > 1).then(|| format!("--- attempt {attempt} ---\n"));
                TaskLogWriter::new(task_log_path(d, &task.name), header)
            });
            let output: &dyn OutputSink = match &writer {
                Some(w) => w,
                None => &NoOutput,
            };
            let ctx = TaskContext {
                workflow: &run.wf.name,
                execution_id: &run.execution_id,
                task,
                attempt,
                timeout,
                cancel: run.cancel.clone(),
                vars: vars.as_ref().unwrap_or(&self.vars),
                shared: &run.shared,
                output,
                output_dir: &run.output_dir,
            };
            let mut out = executor.execute(ctx).await;
            drop(permits);
            let log_problem = writer.as_ref().and_then(TaskLogWriter::problem);
            drop(writer);
            let outputs = self.outputs(run, task, attempt, &mut out);
            let finished = Utc::now();
            record.finished_at = Some(finished);
            record.duration_seconds = Some(clock.elapsed().as_secs_f64());
            record.exit_code = out.exit_code;
            (record.stdout, record.stdout_size) = std::mem::take(&mut out.stdout).into_stored();
            (record.stderr, record.stderr_size) = std::mem::take(&mut out.stderr).into_stored();
            record.error_message = out.error.clone();
            record.outputs = outputs.clone();
            // A log that could not be written (full disk) is said on the task's record.
            if let Some(p) = log_problem {
                record.error_message = Some(match record.error_message.take() {
                    Some(e) => format!("{e}; warning: {p}"),
                    None => format!("warning: {p}"),
                });
            }
            if out.outcome == Outcome::Cancelled {
                // PicoFlow stopped it: no exit code of the task's own, and one state for it
                // (see `INTERRUPTED`), as for an attempt whose process died.
                let why = out.error.take().unwrap_or_else(|| "cancelled".into());
                out.error = Some(format!(
                    "{} the run was stopped ({why})",
                    crate::events::INTERRUPTED
                ));
                out.exit_code = None;
                record.exit_code = None;
                record.error_message = out.error.clone();
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
                && !run.cancel.is_cancelled();
            if may_retry {
                let delay = self.settings.retry.backoff(attempt + 1);
                record.status = TaskState::Retrying;
                self.emit(Event::TaskFinished {
                    record: record.clone(),
                    retry_in: Some(delay),
                });
                let slept = future::or(
                    async {
                        smol::Timer::after(delay).await;
                        true
                    },
                    async {
                        run.cancel.cancelled().await;
                        false
                    },
                )
                .await;
                if !slept {
                    self.retry_cut_short(record, &mut report);
                    return Finished::failed(index, report);
                }
                retrying = Some(record);
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
                outputs,
                items: Vec::new(),
            };
        }
    }

    /// Ends a task whose next attempt will not be made because the run was stopped while it
    /// waited (for its retry delay or a free slot): its last attempt, recorded `retrying`, is
    /// recorded again as failed, so no record stays `retrying` after the run. The message
    /// marks it interrupted, so a resumed execution runs the task again, as it would have.
    fn retry_cut_short(&self, mut record: TaskExecution, report: &mut TaskReport) {
        let why = format!(
            "{} the run was stopped while the task waited to retry",
            crate::events::INTERRUPTED
        );
        record.status = TaskState::Failed;
        record.error_message = Some(match record.error_message.take() {
            Some(e) => format!("{why} (after: {e})"),
            None => why,
        });
        report.state = TaskState::Failed;
        report.error = record.error_message.clone();
        self.emit(Event::TaskFinished {
            record,
            retry_in: None,
        });
    }

    /// The values a finished attempt publishes: what it wrote to `$PICOFLOW_OUTPUT`, then its
    /// `outputs:` selectors. A problem with them fails a successful attempt (not retried).
    fn outputs(
        &self,
        run: &Run<'_>,
        task: &Task,
        attempt: u32,
        out: &mut TaskOutput,
    ) -> Option<BTreeMap<String, String>> {
        let file = crate::executor::output_file(&run.output_dir, &task.name, attempt);
        // Not through a link: the file is read as the engine's user.
        let written = crate::private::open_read(&file).ok().and_then(|mut f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes)
                .ok()
                .map(|_| bytes)
        });
        if written.is_some() {
            let _ = std::fs::remove_file(&file);
        }
        if out.outcome != Outcome::Success {
            return None;
        }
        let mut values = BTreeMap::new();
        let result = (|| {
            if let Some(bytes) = &written {
                values = crate::flow::parse_output_file(&String::from_utf8_lossy(bytes))
                    .map_err(|e| format!("${}: {e}", crate::executor::OUTPUT_VAR))?;
            }
            if !task.outputs.is_empty() {
                let stdout = String::from_utf8_lossy(&out.stdout.data);
                let stderr = String::from_utf8_lossy(&out.stderr.data);
                let produced = crate::flow::Produced {
                    stdout: &stdout,
                    stderr: &stderr,
                    exit_code: out.exit_code,
                    http: task.kind == "http",
                };
                crate::flow::select(&task.outputs, &produced, &mut values)?;
            }
            crate::flow::check_size(&values)
        })();
        match result {
            Ok(()) => (!values.is_empty()).then_some(values),
            Err(e) => {
                out.outcome = Outcome::Failed;
                out.retryable = false;
                out.error = Some(e);
                None
            }
        }
    }
}

/// Whether a task's earlier attempt `a` finished it, so that a resume keeps it: it succeeded,
/// or failed with `continue_on_failure` (and was not cut short by a crash).
fn finished_before(a: &TaskExecution, task: &Task) -> bool {
    a.status == TaskState::Success
        || (task.continue_on_failure && !a.interrupted() && a.status.is_failure())
}

/// The names of a loop's tasks: `NAME[item]`, or `NAME[index]` for every item when items
/// repeat, are longer than 64 characters or hold control characters or brackets.
fn item_names(task: &str, items: &[String]) -> Vec<String> {
    let plain = |s: &String| {
        !s.is_empty() && s.len() <= 64 && !s.chars().any(|c| c.is_control() || c == '[' || c == ']')
    };
    let unique = items.iter().collect::<std::collections::HashSet<_>>().len() == items.len();
    match unique && items.iter().all(plain) {
        true => items.iter().map(|i| format!("{task}[{i}]")).collect(),
        false => (0..items.len()).map(|k| format!("{task}[{k}]")).collect(),
    }
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
            let last = crate::events::last_attempts(&r.tasks);
            for (i, t) in wf.tasks.iter().enumerate() {
                // A loop is done when its items are: it has no attempt of its own.
                let Some(a) = last.iter().find(|a| a.task_name == t.name) else {
                    continue;
                };
                first_attempt[i] = a.attempt + 1;
                // An attempt cut short by a crash ran to no conclusion: run it again.
                if finished_before(a, t) && t.iterate_over.is_none() {
                    done[i] = true;
                    reports[i] = TaskReport::resumed(a);
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
            // From here on it runs this definition (the caller decided a changed one may go on).
            e.definition = Some(wf.digest());
            e
        }
        None => WorkflowExecution {
            id: opts.execution_id.clone().unwrap_or_else(new_id),
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
            definition: Some(wf.digest()),
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

    /// A task its condition skips is a completion like any other: its dependents start once
    /// it is durable, even when nothing else is running to bring a flush about.
    #[test]
    fn a_task_skipped_by_its_condition_releases_its_dependents() {
        let sink = Recorder::new(Duration::from_millis(10), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, when: 'false', config: {command: \"true\"}}\n  - {name: b, type: shell, depends_on: [a], config: {command: \"true\"}}\n",
            "w.yaml",
        )
        .unwrap();
        let report = future::block_on(async {
            future::or(engine.run(&wf, RunOptions::default()), async {
                smol::Timer::after(Duration::from_secs(20)).await;
                panic!("the run never ended: {:?}", sink.log());
            })
            .await
        })
        .unwrap();
        assert!(report.success());
        assert_eq!(report.tasks[0].state, TaskState::Skipped);
        assert_eq!(report.tasks[1].state, TaskState::Success);
        let log = sink.log();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        assert!(pos("skip a") < pos("start b"), "{log:?}");
    }

    /// A loop whose item list cannot be built (objects, or more items than allowed) fails its
    /// task with a message saying why; the engine goes on and the run ends normally.
    #[test]
    fn a_loop_whose_items_cannot_be_built_fails_its_task_without_a_panic() {
        let engine = Engine::new(Registry::builtin());
        let many = (0..=crate::flow::MAX_ITEMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let from_output = "\"${tasks.gen.outputs.list}\"".to_string();
        for items in [from_output, format!("[{many}]")] {
            let text = format!(
                r#"name: w
tasks:
  - name: gen
    type: shell
    outputs: {{list: stdout}}
    config: {{command: "echo '[{{\"id\":1}},{{\"id\":2}}]'"}}
  - name: each
    type: shell
    depends_on: [gen]
    iterate_over: {items}
    config: {{command: "true"}}
  - name: after
    type: shell
    run_if: all_done
    depends_on: [each]
    config: {{command: "true"}}
"#
            );
            let wf = crate::yaml::parse_workflow(&text, "w.yaml").unwrap();
            let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
            let task = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap();
            assert_eq!(task("each").state, TaskState::Failed, "{report:?}");
            let message = task("each").error.clone().unwrap_or_default();
            assert!(message.contains("item"), "{message}");
            assert!(!report.success());
            assert_eq!(task("after").state, TaskState::Success, "{report:?}");
        }
    }

    /// A loop with `continue_on_failure` whose items could not be built (a list of objects)
    /// failed the run and skipped its dependents, as if the flag were not set: the task
    /// failed before any item ran, and that path ignored it (DECISIONS.md 5).
    #[test]
    fn a_loop_with_continue_on_failure_whose_items_cannot_be_built_lets_the_run_go_on() {
        let engine = Engine::new(Registry::builtin());
        let text = r#"name: w
tasks:
  - name: gen
    type: shell
    outputs: {list: stdout}
    config: {command: "echo '[{\"id\":1}]'"}
  - name: each
    type: shell
    depends_on: [gen]
    continue_on_failure: true
    iterate_over: "${tasks.gen.outputs.list}"
    config: {command: "true"}
  - name: after
    type: shell
    depends_on: [each]
    config: {command: "true"}
"#;
        let wf = crate::yaml::parse_workflow(text, "w.yaml").unwrap();
        let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
        let task = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap();
        assert_eq!(task("each").state, TaskState::Failed, "{report:?}");
        assert_eq!(task("after").state, TaskState::Success, "{report:?}");
        assert!(report.success(), "{report:?}");
    }

    /// A run stopped while a task waited to retry left that task's last record `retrying`
    /// for good: the store and the history said a retry was coming for a run that had
    /// ended, while the report said the task failed.
    #[test]
    fn a_retry_cut_short_by_a_stop_ends_the_task_record() {
        /// Keeps the ends of attempts; stops the run when the first retry is announced, so
        /// the stop comes while the task waits for it (a second).
        struct Ends(
            Mutex<Vec<(TaskExecution, Option<Duration>)>>,
            crate::Canceller,
        );
        impl EventSink for Ends {
            fn on_event(&self, event: &Event) {
                if let Event::TaskFinished { record, retry_in } = event {
                    self.0.lock().unwrap().push((record.clone(), *retry_in));
                    if retry_in.is_some() {
                        self.1.cancel();
                    }
                }
            }
        }
        let (canceller, token) = CancelToken::new();
        let sink = Arc::new(Ends(Mutex::new(Vec::new()), canceller));
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, retry: 3, config: {command: \"false\"}}\n",
            "w.yaml",
        )
        .unwrap();
        let opts = RunOptions {
            cancel: token,
            ..RunOptions::default()
        };
        let report = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert_eq!(report.execution.status, WorkflowStatus::Interrupted);
        assert_eq!(report.tasks[0].state, TaskState::Failed, "{report:?}");
        let ends = sink.0.lock().unwrap();
        assert_eq!(ends.len(), 2, "{ends:?}");
        assert_eq!(ends[0].0.status, TaskState::Retrying);
        let (last, retry_in) = &ends[1];
        assert_eq!(last.id, ends[0].0.id, "the same attempt, recorded again");
        assert_eq!(last.status, TaskState::Failed);
        assert!(retry_in.is_none());
        let message = last.error_message.clone().unwrap_or_default();
        assert!(message.starts_with(crate::events::INTERRUPTED), "{message}");
        assert_eq!(report.tasks[0].error.as_deref(), Some(message.as_str()));
    }

    /// Each item's task was made by cloning the loop's task, list of items included, so a
    /// loop's cost grew with the square of its items: 10,000 items of an executor that takes
    /// no time took seconds. Linear, ten times the items take about ten times as long.
    #[test]
    fn a_loops_cost_grows_with_its_items_not_their_square() {
        struct Done;
        impl crate::Executor for Done {
            fn execute<'a>(&'a self, _: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
                Box::pin(async {
                    TaskOutput {
                        outcome: Outcome::Success,
                        exit_code: Some(0),
                        stdout: crate::executor::Capture::default(),
                        stderr: crate::executor::Capture::default(),
                        error: None,
                        retryable: false,
                    }
                })
            }
        }
        let mut registry = Registry::empty();
        registry.register("done", Done);
        let engine = Engine::new(registry);
        let time = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let text = format!(
                "name: w\ntasks:\n  - {{name: each, type: done, iterate_over: [{}], config: {{}}}}\n",
                items.join(",")
            );
            let wf = crate::yaml::parse_workflow(&text, "w.yaml").unwrap();
            let clock = Instant::now();
            let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
            assert!(report.success());
            assert_eq!(report.tasks.len(), n);
            clock.elapsed()
        };
        // The fastest of a few runs each: other work on the machine only adds time.
        let small = (0..3).map(|_| time(1000)).min().unwrap();
        let big = (0..2).map(|_| time(crate::flow::MAX_ITEMS)).min().unwrap();
        // Linear is about 10; the square was about 60 here (100 in the limit).
        assert!(big < small * 40, "1,000 items: {small:?}, 10,000: {big:?}");
    }

    /// A task with `continue_on_failure` that a stop cut short was kept by the resume as if
    /// it had run to its end and failed: it never ran again, and its dependents ran without
    /// it, while in the stopped run itself they had not been let run.
    #[test]
    fn a_task_a_stop_cut_short_runs_again_on_resume() {
        /// Keeps the last version of each record; stops the run when its task starts.
        struct Records(Mutex<Vec<TaskExecution>>, crate::Canceller);
        impl EventSink for Records {
            fn on_event(&self, event: &Event) {
                if let Event::TaskStarted(r) | Event::TaskFinished { record: r, .. } = event {
                    let mut records = self.0.lock().unwrap();
                    records.retain(|x| x.id != r.id);
                    records.push(r.clone());
                }
                if let Event::TaskStarted(_) = event {
                    self.1.cancel();
                }
            }
        }
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, continue_on_failure: true, config: {command: sleep, args: [\"${D}\"]}}\n",
            "w.yaml",
        )
        .unwrap();
        let (canceller, token) = CancelToken::new();
        let sink = Arc::new(Records(Mutex::new(Vec::new()), canceller));
        let mut vars = Vars::isolated();
        vars.set("D", "5");
        let engine = Engine::new(Registry::builtin())
            .with_sink(sink.clone())
            .with_vars(vars);
        let opts = RunOptions {
            cancel: token,
            ..RunOptions::default()
        };
        let first = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert_eq!(first.execution.status, WorkflowStatus::Interrupted);
        let records = sink.0.lock().unwrap().clone();
        let message = records[0].error_message.clone().unwrap_or_default();
        assert!(message.starts_with(crate::events::INTERRUPTED), "{message}");

        let mut vars = Vars::isolated();
        vars.set("D", "0");
        let engine = Engine::new(Registry::builtin()).with_vars(vars);
        let opts = RunOptions {
            resume: Some(ResumeFrom {
                execution: first.execution,
                tasks: records,
            }),
            ..RunOptions::default()
        };
        let again = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert!(!again.tasks[0].resumed, "{again:?}");
        assert_eq!(again.tasks[0].state, TaskState::Success, "{again:?}");
        assert!(again.success());
    }
}
