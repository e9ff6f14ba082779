//! The scheduler: the daemon's loop with its state in one type, [`Scheduler`], and one method
//! per event (a timer fire, a run asked for over the web API, a finished run, SIGHUP, the stop
//! signal) and per start-up step (resume of interrupted executions, catch-up of missed fires);
//! beside it [`Runs`], the runs it started.
//!
//! Everything here runs on the daemon's one thread, beside the runs, so no event method waits
//! on a file: reading the workflow files again, recording them, writing the status file and
//! pruning run on threads of their own (`offload.rs`) while the runs go on. Only the start-up
//! steps read the state file on this thread, before the loop begins.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_lite::future;

use super::clockset::ClockSet;
use super::load::{self, Loaded};
use super::offload::{offload, Offloaded};
use super::pid::StatusFile;
use super::timeguard::{runs_after_jump, ClockWatch, Jump, Tick, SYNC_POLL};
use super::DaemonExit;
use crate::config::Config;
use crate::contract::{Catalog, Trigger, Triggered};
use crate::engine::{Engine, ResumeFrom, RunOptions};
use crate::error::Result;
use crate::events::{new_id, WorkflowExecution};
use crate::executor::{CancelToken, Canceller, Registry};
use crate::metrics::Metrics;
use crate::model::{Catchup, Workflow};
use crate::resume::{plan_run, RunIntent, RunPlan};
use crate::signals::{Signals, StopSignal};
use crate::store::Store;

/// How often the history and logs are pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The runs the daemon started, shared by the scheduler and the runs themselves.
pub(super) struct Runs {
    engine: Engine,
    /// Runs going (or queued one after another) per workflow.
    running: RefCell<BTreeMap<String, usize>>,
    /// Told each time a run (or a series of catch-up runs) ends.
    done: smol::channel::Sender<()>,
    cancel: CancelToken,
}

impl Runs {
    /// Runs on `engine`, cancelled by `cancel`, announcing each end on `done`.
    pub(super) fn new(
        engine: Engine,
        cancel: CancelToken,
        done: smol::channel::Sender<()>,
    ) -> Rc<Runs> {
        Rc::new(Runs {
            engine,
            running: RefCell::new(BTreeMap::new()),
            done,
            cancel,
        })
    }

    /// Whether a new run of `wf` must wait: one is going and overlapping is not allowed
    /// (SCHED-004).
    fn is_busy(&self, wf: &Workflow) -> bool {
        let running = self.running.borrow().get(&wf.name).copied().unwrap_or(0);
        running > 0 && !wf.allow_concurrent
    }

    /// Runs going, all workflows together.
    fn total(&self) -> usize {
        self.running.borrow().values().sum()
    }

    /// Starts `count` runs of `wf` one after another on `ex`.
    fn spawn(
        self: &Rc<Self>,
        ex: &smol::LocalExecutor<'_>,
        wf: Arc<Workflow>,
        source: &Path,
        resume: Option<ResumeFrom>,
        count: usize,
        execution_id: Option<String>,
    ) {
        let runs = self.clone();
        let source = source.display().to_string();
        *runs
            .running
            .borrow_mut()
            .entry(wf.name.clone())
            .or_default() += 1;
        ex.spawn(async move {
            let mut resume = resume;
            let mut execution_id = execution_id;
            for _ in 0..count.max(1) {
                if runs.cancel.is_cancelled() {
                    break;
                }
                let opts = RunOptions {
                    cancel: runs.cancel.clone(),
                    resume: resume.take(),
                    source: Some(source.clone()),
                    stop_leftovers: false,
                    execution_id: execution_id.take(),
                };
                match runs.engine.run(&wf, opts).await {
                    Ok(r) => tracing::info!(workflow = %wf.name, execution = %r.execution.id,
                        status = %r.execution.status, "run finished"),
                    Err(e) => {
                        tracing::error!(workflow = %wf.name, error = %e, "run failed to start")
                    }
                }
            }
            if let Some(n) = runs.running.borrow_mut().get_mut(&wf.name) {
                *n -= 1;
            }
            let _ = runs.done.send(()).await;
        })
        .detach();
    }
}

/// What woke the scheduler.
enum Wake {
    /// The sleep until the earliest next fire (or the next check of the clock) ended; the
    /// wall clock says what is due.
    Timer,
    /// A signal, or `None` when the signal stream ended.
    Signal(Option<StopSignal>),
    /// A run ended.
    RunDone,
    /// The web API or the fleet asks for a run.
    Trigger(Trigger),
    /// The workflows applied from the fleet changed.
    FleetChanged,
}

/// The daemon's loop and everything it works on. Built by [`super::Daemon::run`] once the
/// workflows are loaded and the PID file locked.
pub(super) struct Scheduler<'a> {
    /// The daemon's executor, on which every run is spawned.
    pub(super) ex: &'a smol::LocalExecutor<'static>,
    pub(super) runs: Rc<Runs>,
    pub(super) loaded: BTreeMap<String, Loaded>,
    pub(super) store: Arc<Store>,
    pub(super) config: Config,
    pub(super) metrics: Metrics,
    /// The workflow files and directories, read again on SIGHUP.
    pub(super) paths: Vec<PathBuf>,
    /// The directory of the workflows applied from the fleet, when the daemon has one.
    pub(super) fleet_dir: Option<PathBuf>,
    pub(super) registry: Registry,
    pub(super) signals: Signals,
    pub(super) status: &'a StatusFile,
    /// Terminates the runs still going when the shutdown timeout ends.
    pub(super) canceller: Canceller,
    /// The ends [`Runs`] announces.
    pub(super) done: smol::channel::Receiver<()>,
    pub(super) triggers: smol::channel::Receiver<Trigger>,
    /// Told when the fleet's applied workflows changed.
    pub(super) fleet_changes: smol::channel::Receiver<()>,
    pub(super) catalog: Catalog,
    /// When the last prune started.
    pub(super) last_prune: Option<Instant>,
    /// The last prune started, waited for at shutdown.
    pub(super) pruning: Option<Offloaded<()>>,
    /// The wait for the clock's synchronisation and the readings that show its steps.
    pub(super) clock: ClockWatch,
    /// The kernel's notice that the wall clock was set, where it gives one.
    pub(super) clock_set: Option<ClockSet>,
}

impl Scheduler<'_> {
    /// Resumes what a crash interrupted, makes up missed fires, then schedules until SIGTERM
    /// or SIGINT and stops (REL-002).
    pub(super) async fn run(mut self, recovered: Vec<WorkflowExecution>) -> Result<DaemonExit> {
        // Resuming needs no clock: it goes at once, synchronised or not.
        self.resume_interrupted(recovered)?;
        if self.clock.is_waiting() {
            tracing::info!(
                at_most_seconds = self.clock.timeout_seconds(),
                "waiting for the system clock to be synchronised; no schedule fires and no \
                 catch-up until then (runs by hand and over the web API go on)"
            );
        } else {
            self.catch_up()?;
        }
        self.prune();
        loop {
            match self.next_wake().await {
                Wake::Timer => self.on_timer().await?,
                Wake::Trigger(t) => self.on_trigger(t),
                Wake::RunDone => self.prune(),
                Wake::Signal(Some(StopSignal::Hangup)) => {
                    tracing::info!("SIGHUP: reloading workflow files");
                    self.reload().await
                }
                Wake::FleetChanged => {
                    tracing::info!("fleet: applied workflows changed; reloading workflow files");
                    self.reload().await
                }
                Wake::Signal(_) => break,
            }
        }
        Ok(self.shutdown().await)
    }

    /// Resumes the executions a crash interrupted (REL-001), as [`plan_run`] decides for a
    /// daemon: each one whose workflow this daemon loads, with the definition loaded now.
    fn resume_interrupted(&mut self, recovered: Vec<WorkflowExecution>) -> Result<()> {
        for exec in recovered {
            let Some(l) = self.loaded.get(&exec.workflow_name) else {
                tracing::warn!(workflow = %exec.workflow_name, execution = %exec.id,
                    "interrupted execution of a workflow this daemon does not load; left as interrupted");
                continue;
            };
            let id = exec.id.clone();
            let RunPlan::Resume(from) = plan_run(&self.store, &l.wf, RunIntent::Recovered(exec))?
            else {
                continue;
            };
            tracing::info!(workflow = %l.wf.name, execution = %id, "resuming interrupted execution");
            self.runs
                .spawn(self.ex, l.wf.clone(), &l.source, Some(from), 1, None);
        }
        Ok(())
    }

    /// Makes up the fires missed while the daemon was down, as each workflow's `catchup`
    /// says: `latest` one run, `all` one per missed fire (at most [`Catchup::MAX_ALL`]).
    fn catch_up(&mut self) -> Result<()> {
        let now = Utc::now();
        for l in self.loaded.values() {
            let Some(sched) = &l.schedule else { continue };
            if l.wf.catchup == Catchup::None {
                continue;
            }
            let Some(last) = self.store.latest_execution(&l.wf.name)? else {
                continue;
            };
            let limit = match l.wf.catchup {
                Catchup::Latest => 1,
                _ => Catchup::MAX_ALL,
            };
            let (missed, latest) = sched.missed_between(last.started_at, now, limit);
            if !latest.is_empty() {
                let count = latest.len();
                tracing::info!(workflow = %l.wf.name, missed, runs = count, "catching up on missed fires");
                self.runs
                    .spawn(self.ex, l.wf.clone(), &l.source, None, count, None);
            }
        }
        Ok(())
    }

    /// Sleeps until the earliest next fire, a signal, the end of a run, a request from the
    /// web API or the kernel's notice that the wall clock was set, whichever comes first
    /// ([`SYNC_POLL`] at most while waiting for the clock, `[daemon] clock_check_seconds` at
    /// most when set): sleeps are measured on the monotonic clock, and a step of the wall
    /// clock is looked for at every wake-up.
    async fn next_wake(&mut self) -> Wake {
        let check = match self.config.daemon.clock_check_seconds {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let sleep = if self.clock.is_waiting() {
            Some(SYNC_POLL)
        } else {
            let now = Utc::now();
            let next = self.loaded.values().filter_map(|l| l.next).min();
            let until = next.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO));
            match (until, check) {
                (Some(u), Some(c)) => Some(u.min(c)),
                (u, c) => u.or(c),
            }
        };
        let clock_set = &self.clock_set;
        let timer = async {
            match (sleep, clock_set) {
                (Some(d), Some(set)) => {
                    future::or(
                        async {
                            smol::Timer::after(d).await;
                        },
                        set.changed(),
                    )
                    .await
                }
                (Some(d), None) => {
                    smol::Timer::after(d).await;
                }
                (None, Some(set)) => set.changed().await,
                (None, None) => future::pending().await,
            }
        };
        let (signals, done, triggers) = (&mut self.signals, &self.done, &self.triggers);
        let fleet = &self.fleet_changes;
        future::or(
            future::or(
                future::or(
                    async {
                        timer.await;
                        Wake::Timer
                    },
                    async { Wake::Signal(signals.next().await) },
                ),
                async {
                    match fleet.recv().await {
                        Ok(()) => Wake::FleetChanged,
                        Err(_) => future::pending().await,
                    }
                },
            ),
            future::or(
                async {
                    let _ = done.recv().await;
                    Wake::RunDone
                },
                async {
                    match triggers.recv().await {
                        Ok(t) => Wake::Trigger(t),
                        Err(_) => future::pending().await,
                    }
                },
            ),
        )
        .await
    }

    /// A wake-up of the timer: looks at the clock (the end of a wait for its
    /// synchronisation, a step of the wall clock), then starts the runs whose fire is due.
    async fn on_timer(&mut self) -> Result<()> {
        let (was_synced, was_waiting) = (self.clock.is_synced(), self.clock.is_waiting());
        let now = Utc::now();
        let tick = self
            .clock
            .tick(crate::clock::sync_status(), (now, Instant::now()));
        match tick {
            Tick::Waiting => {}
            Tick::WaitEnded(synced) => self.end_wait(synced, now)?,
            Tick::Jumped(jump) => self.on_jump(jump),
            Tick::Steady => {}
        }
        if (was_synced, was_waiting) != (self.clock.is_synced(), self.clock.is_waiting()) {
            if !was_synced && self.clock.is_synced() && tick != Tick::WaitEnded(true) {
                tracing::info!("the system clock is synchronised");
            }
            self.metrics
                .set_clock(self.clock.is_synced(), self.clock.is_waiting());
            self.status
                .write(&self.loaded, None, self.clock.status())
                .await;
        }
        if !self.clock.is_waiting() {
            self.fire_due(now);
        }
        Ok(())
    }

    /// The wait for the clock ended, synchronised or at its bound: every schedule starts from
    /// the clock as it is now, and the fires missed while the daemon was down are made up.
    fn end_wait(&mut self, synced: bool, now: chrono::DateTime<Utc>) -> Result<()> {
        if synced {
            tracing::info!("the system clock is synchronised; scheduling from now");
        } else {
            tracing::warn!(
                waited_seconds = self.clock.timeout_seconds(),
                "the system clock is still not synchronised after clock_sync_timeout_seconds; \
                 scheduling from the clock as it is"
            );
        }
        for l in self.loaded.values_mut() {
            l.next = l.next_from(now);
        }
        self.catch_up()?;
        self.publish();
        Ok(())
    }

    /// The wall clock stepped. Forward, each workflow's pending fire and the instants jumped
    /// over are made up as its `catchup` allows ([`runs_after_jump`]); then its schedule goes
    /// on from the new time. Backward, nothing fires: the pending fire stays where it was,
    /// after the last one handled, so no instant fires twice.
    fn on_jump(&mut self, jump: Jump) {
        self.metrics.clock_jumped();
        if !jump.is_forward() {
            tracing::warn!(
                seconds = -jump.seconds(),
                "the wall clock jumped backwards; instants already fired will not fire again"
            );
            return;
        }
        tracing::warn!(
            seconds = jump.seconds(),
            "the wall clock jumped forwards; missed fires follow each workflow's catchup"
        );
        for l in self.loaded.values_mut() {
            let Some(next) = l.next else { continue };
            if next > jump.now {
                continue;
            }
            let due = next <= jump.expected;
            let from = jump.expected.max(l.done_until.unwrap_or(jump.expected));
            let skipped = l.fires_between(from, jump.now, Catchup::MAX_ALL + 1);
            let runs = runs_after_jump(l.wf.catchup, due, skipped);
            // Counted only as far as the policy needs.
            let skipped = match skipped > Catchup::MAX_ALL {
                true => format!("more than {}", Catchup::MAX_ALL),
                false => skipped.to_string(),
            };
            if runs > 0 && self.runs.is_busy(&l.wf) {
                tracing::warn!(workflow = %l.wf.name, runs,
                    "previous run still running; the runs after the clock's jump are skipped");
            } else if runs > 0 {
                tracing::info!(workflow = %l.wf.name, skipped, runs,
                    catchup = ?l.wf.catchup, "runs after the clock's jump");
                self.runs
                    .spawn(self.ex, l.wf.clone(), &l.source, None, runs, None);
            } else {
                tracing::info!(workflow = %l.wf.name, skipped,
                    "no run for the fires the clock jumped over (catchup: none)");
            }
            l.done_until = Some(jump.now);
            l.next = l.next_from(jump.now);
        }
        self.publish();
    }

    /// Starts the runs whose fire is due, skipping (and logging) those whose previous run is
    /// still going unless they allow overlap (SCHED-004).
    fn fire_due(&mut self, now: chrono::DateTime<Utc>) {
        let mut fired = false;
        for l in self.loaded.values_mut() {
            let Some(next) = l.next else { continue };
            if next > now {
                continue; // Not yet, or the wall clock went back: sleep again.
            }
            fired = true;
            if self.runs.is_busy(&l.wf) {
                tracing::warn!(workflow = %l.wf.name, fire = %next,
                    "previous run still running; this fire is skipped (set allow_concurrent: true to overlap)");
            } else {
                tracing::info!(workflow = %l.wf.name, fire = %next, "scheduled run");
                self.runs
                    .spawn(self.ex, l.wf.clone(), &l.source, None, 1, None);
            }
            l.done_until = Some(next);
            l.next = l.next_from(now.max(next));
        }
        if fired {
            self.publish();
        }
    }

    /// Answers a request from the web API: a run starts under the same overlap rule as a
    /// scheduled fire.
    fn on_trigger(&mut self, t: Trigger) {
        let answer = match self.loaded.get(&t.workflow) {
            None => Triggered::NotFound,
            Some(l) if self.runs.is_busy(&l.wf) => Triggered::Busy,
            Some(l) => {
                let id = new_id();
                tracing::info!(workflow = %l.wf.name, execution = %id, by = t.by, "run requested");
                self.runs
                    .spawn(self.ex, l.wf.clone(), &l.source, None, 1, Some(id.clone()));
                Triggered::Started(id)
            }
        };
        let _ = t.reply.try_send(answer);
    }

    /// SIGHUP, or a change of the fleet's applied workflows: reads the workflow files again,
    /// off this thread, and swaps them in as [`load::reload`] decides.
    async fn reload(&mut self) {
        let (paths, registry) = (self.paths.clone(), self.registry.clone());
        let fleet_dir = self.fleet_dir.clone();
        let read = offload("reload", move || {
            let mut read = load::read_all(&paths, &registry);
            load::add_fleet_files(&mut read, fleet_dir.as_deref(), &registry);
            read
        });
        let Some(read) = read.wait().await else {
            tracing::error!("reload failed; keeping the previous workflows");
            return;
        };
        if load::reload(&mut self.loaded, read, Utc::now()) {
            let store = self.store.clone();
            let rows: Vec<(String, Option<String>, String)> = (self.loaded.values())
                .map(|l| {
                    let source = l.source.display().to_string();
                    (l.wf.name.clone(), l.wf.schedule.clone(), source)
                })
                .collect();
            let recorded = offload("reload", move || {
                for (name, schedule, source) in rows {
                    let _ = store.record_workflow(&name, schedule.as_deref(), Some(&source));
                }
            });
            recorded.wait().await;
            self.metrics
                .set_workflows(self.loaded.values().map(|l| &*l.wf));
            tracing::info!(workflows = self.loaded.len(), "reloaded");
        }
        self.status
            .write(&self.loaded, None, self.clock.status())
            .await;
        self.publish();
    }

    /// Shows the loaded workflows and their next fires to the web UI.
    fn publish(&self) {
        self.catalog
            .publish(self.loaded.values().map(Loaded::entry));
    }

    /// Prunes old history and logs on a thread of its own when `[logs] cleanup_enabled` is set
    /// and the last prune is a day old. Called at start and after runs, so it adds no
    /// wake-ups of its own.
    fn prune(&mut self) {
        if !self.config.logs.cleanup_enabled {
            return;
        }
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let (store, config) = (self.store.clone(), self.config.clone());
        self.pruning = Some(offload("prune", move || {
            match crate::prune::prune(&store, &config, Utc::now()) {
                Ok(r) => tracing::info!(
                    executions = r.executions,
                    task_attempts = r.task_executions,
                    log_dirs = r.log_dirs,
                    log_bytes = r.log_bytes,
                    run_dirs = r.run_dirs,
                    "pruned old history and logs"
                ),
                Err(e) => tracing::error!(error = %e, "pruning failed"),
            }
        }));
    }

    /// The stop signal (REL-002): no new runs (the web API answers 503 from here on); running
    /// ones get `[daemon] shutdown_timeout_seconds` to finish, then are terminated. A prune
    /// going on is let finish, so that the process never ends in the middle of one.
    async fn shutdown(mut self) -> DaemonExit {
        self.triggers.close();
        let runs = self.runs.clone();
        tracing::info!(
            running = runs.total(),
            "stopping: no new runs; waiting for running ones"
        );
        self.status
            .write(&self.loaded, Some(Utc::now()), self.clock.status())
            .await;
        let grace = Duration::from_secs(self.config.daemon.shutdown_timeout_seconds);
        let deadline = Instant::now() + grace;
        let mut terminated = false;
        while runs.total() > 0 {
            if terminated {
                // Cancelled runs end as soon as their tasks are gone (SIGTERM, then SIGKILL).
                let _ = self.done.recv().await;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let finished = future::or(async { self.done.recv().await.is_ok() }, async {
                smol::Timer::after(left).await;
                false
            })
            .await;
            if !finished && runs.total() > 0 {
                tracing::warn!(
                    running = runs.total(),
                    "shutdown timeout reached; terminating running tasks"
                );
                self.canceller.cancel();
                terminated = true;
            }
        }
        if let Some(pruning) = self.pruning.take() {
            pruning.wait().await;
        }
        if terminated {
            DaemonExit::Terminated
        } else {
            DaemonExit::Graceful
        }
    }
}
