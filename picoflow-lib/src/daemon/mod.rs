//! The daemon: runs scheduled workflows for months (CLI-002, SCHED-001 … SCHED-005, REL-001,
//! REL-002, REL-005).
//!
//! * **Single instance.** The PID file (default `<state file>.pid`, beside the state file) is
//!   locked with `flock` for the daemon's whole life; a second daemon on the same state file
//!   fails to take the lock and exits with an error. A stale PID file left by a crash holds no
//!   lock and is simply taken over.
//! * **No polling.** The daemon sleeps until the earliest next fire of all its schedules (or
//!   a signal, or the kernel's notice that the wall clock was set, `clockset.rs`; see
//!   **Clock**). Pruning piggybacks on that
//!   (at start and after runs, at most once a day), so it adds no wake-ups of its own; it runs
//!   on a thread of its own, as do the status-file writes and SIGHUP's reading of the
//!   workflow files, so the scheduler's thread never waits on them.
//! * **Overlap** (SCHED-004): a fire is skipped and logged while the workflow's previous run
//!   is still going, unless the workflow sets `allow_concurrent: true`.
//! * **Restarts.** On start, executions whose process died are marked interrupted and resumed
//!   (finished tasks are not run again; the tasks that were running run again: at-least-once).
//!   Fires missed while the daemon was down are made up according to each workflow's
//!   `catchup` (`none`: like cron, nothing; `latest`: one run; `all`: every missed fire, at
//!   most [`Catchup::MAX_ALL`](crate::Catchup::MAX_ALL)).
//! * **Jitter.** `jitter: 30s` delays every fire of a workflow by a fixed offset in
//!   `[0, 30s)` derived from the host name and the workflow name: a fleet spreads out while
//!   each device keeps a regular schedule.
//! * **Signals** (REL-002): SIGTERM/SIGINT stop scheduling and let running tasks finish within
//!   `[daemon] shutdown_timeout_seconds`; after that they are terminated like a timed-out task
//!   and recorded as interrupted. SIGHUP reloads the workflow files; a file that no longer
//!   validates keeps its previous version and the error is logged.
//! * **Clock** (`timeguard.rs`). A board without a real-time clock boots at a wrong time
//!   and is stepped when a time service synchronises it. With `[daemon] wait_for_clock_sync`
//!   (`"auto"`: where such a service runs and reports it), a daemon started before the clock
//!   is synchronised fires no schedule and catches up on nothing until it is, at most
//!   `clock_sync_timeout_seconds`, then goes on with a warning. Runs asked for by hand or over
//!   the web API, and the resumption of interrupted executions, need no clock and are not
//!   held back. While running, the scheduler compares at every wake-up (and when the kernel
//!   says the clock was set, `clockset.rs`) the wall clock's advance with the monotonic
//!   clock's: a step forward fires at most what
//!   the workflow's `catchup` allows for the instants it jumped over, and no instant at or
//!   before the last one handled fires again, so a step backward repeats nothing.
//!
//! # Files
//!
//! * `mod.rs` — the public API: [`Daemon`] (start-up, and the end once the scheduler
//!   returns), [`DaemonExit`], [`DaemonStatus`], [`ScheduledWorkflow`].
//! * `pid.rs` — the PID lock that makes a daemon the only one on its state file, the status
//!   file beside it, and [`daemon_status`] / [`stop_daemon`], which read them.
//! * `load.rs` — loading the workflow files at start and reloading them on SIGHUP.
//! * `scheduler.rs` — the loop: its state in one type with one method per event (timer fire,
//!   web API trigger, end of a run, SIGHUP, shutdown) and per start-up step (resume of
//!   interrupted executions, catch-up), and the runs it started.
//! * `timeguard.rs` — the wait for the clock's synchronisation and the steps of the wall
//!   clock: pure rules the scheduler applies.
//! * `clockset.rs` — the kernel's notice that the wall clock was set (a `timerfd`), which
//!   wakes the scheduler to look.
//! * `offload.rs` — a short-lived thread for work that waits on the disk (pruning, the status
//!   file, reading the workflow files again).
//! * `http.rs` — the thread that serves `/metrics`, `/health` and the web UI.
//! * `fleet/` — the daemon's membership of a fleet, when `[fleet] url` is set (`enabled.rs` with
//!   the feature, `disabled.rs` without).
//!
//! What the web UI reads from the daemon is in `contract`; which interrupted execution is
//! resumed is decided in `resume`, for the daemon and `run --resume` alike.

mod clockset;
mod fleet;
mod http;
mod load;
mod offload;
mod pid;
mod scheduler;
mod timeguard;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use smol::lock::Semaphore;

use crate::config::Config;
use crate::contract::{Catalog, LinkStatus, Trigger, WebContext};
use crate::engine::{Engine, EngineSettings};
use crate::error::Result;
use crate::executor::{CancelToken, Registry};
use crate::metrics::Metrics;
use crate::signals::Signals;
use crate::store::Store;
use fleet::{Join, Membership};
use http::HttpThread;
use load::Loaded;
use pid::{PidLock, StatusFile};
use scheduler::{Runs, Scheduler};
use timeguard::ClockWatch;

pub use pid::{daemon_status, stop_daemon};

/// How a daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonExit {
    /// Stopped by a signal after every run finished on its own (exit code 0).
    Graceful,
    /// Stopped by a signal; runs still going after the shutdown timeout were terminated
    /// (exit code 9).
    Terminated,
}

/// What `daemon status` reports.
#[derive(Debug, Clone)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// When the daemon started.
    pub started_at: DateTime<Utc>,
    /// When it began to stop (a SIGTERM or SIGINT): it starts no run and waits for the
    /// running ones, up to `[daemon] shutdown_timeout_seconds`. `None` while it runs.
    pub stopping_since: Option<DateTime<Utc>>,
    /// Loaded workflows: name, schedule, time zone and next fire.
    pub workflows: Vec<ScheduledWorkflow>,
    /// Resident memory of the daemon process, in bytes.
    pub memory_bytes: Option<u64>,
    /// Its link to the fleet, when it belongs to one.
    pub fleet: Option<LinkStatus>,
    /// What it makes of the system clock (`None` from a daemon that does not say).
    pub clock: Option<ClockStatus>,
}

/// A daemon's view of the system clock, as `daemon status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStatus {
    /// A time service synchronised the clock.
    Synced,
    /// Schedules wait for the clock to be synchronised (`[daemon] wait_for_clock_sync`):
    /// no schedule fires until then, or until `timeout_seconds` after `since`.
    Waiting {
        /// When the wait began, on the daemon's clock.
        since: DateTime<Utc>,
        /// Its bound, `[daemon] clock_sync_timeout_seconds`.
        timeout_seconds: u64,
    },
    /// Not reported synchronised, and not waited for.
    Unsynced,
    /// Not reported synchronised after a wait of `timeout_seconds`: the schedules go by the
    /// clock as it is.
    GaveUp {
        /// The wait's bound.
        timeout_seconds: u64,
    },
}

/// One workflow loaded by a daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledWorkflow {
    /// Workflow name.
    pub name: String,
    /// Cron expression, if scheduled.
    pub schedule: Option<String>,
    /// Time zone of the schedule.
    pub timezone: Option<String>,
    /// Jitter bound in seconds.
    pub jitter_seconds: u64,
    /// Next fire (jitter included), if scheduled.
    pub next: Option<DateTime<Utc>>,
}

impl DaemonStatus {
    /// The earliest next fire: (workflow, time).
    pub fn next_run(&self) -> Option<(&str, DateTime<Utc>)> {
        self.workflows
            .iter()
            .filter_map(|w| w.next.map(|n| (w.name.as_str(), n)))
            .min_by_key(|(_, n)| *n)
    }
}

/// A daemon over a set of workflow files.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    registry: Registry,
    paths: Vec<PathBuf>,
}

impl Daemon {
    /// A daemon for the workflow files and directories in `paths`.
    pub fn new(config: Config, registry: Registry, paths: Vec<PathBuf>) -> Daemon {
        Daemon {
            config,
            registry,
            paths,
        }
    }

    /// Validates every workflow without starting anything.
    pub fn check(&self) -> Result<usize> {
        load::load_all(&self.paths, &self.registry).map(|v| v.len())
    }

    /// The web UI's token, after refusing a `[web]` setup that would open the history to the
    /// network (before anything starts or is recorded); `None` when the UI is off.
    fn web_token(&self) -> Result<Option<String>> {
        if !self.config.web.enabled {
            return Ok(None);
        }
        let token = self.config.web.resolve_token()?;
        let origin = self
            .config
            .source
            .as_ref()
            .map_or_else(|| "configuration".to_string(), |p| p.display().to_string());
        self.config.web.check_exposure(token.as_deref(), &origin)?;
        Ok(token)
    }

    /// Runs the daemon until SIGTERM or SIGINT. Call it inside `smol::block_on`.
    pub async fn run(self) -> Result<DaemonExit> {
        let fleet_dir = self.fleet_dir()?;
        let files = load::load_all(&self.paths, &self.registry)?;
        let files = load::with_fleet_files(files, fleet_dir.as_deref(), &self.registry);
        let web_token = self.web_token()?;
        crate::flow::check_run_dir(&self.config.run_dir())?;
        let pid_file = self.config.pid_file();
        let _lock = PidLock::acquire(&pid_file)?;
        let signals = Signals::new()?;
        let started = Utc::now();
        let status = StatusFile::new(&pid_file, started);
        let store = Arc::new(Store::open(&self.config.db_path)?);
        let metrics = Metrics::for_daemon(fleet_dir.is_some());
        let catalog = Catalog::default();
        let (trigger_tx, triggers) = smol::channel::bounded::<Trigger>(16);
        let (reload_tx, fleet_changes) = smol::channel::bounded::<()>(1);
        let fleet = Membership::start(
            fleet_dir.as_ref(),
            Join {
                daemon: &self,
                store: &store,
                catalog: &catalog,
                triggers: &trigger_tx,
                reload: reload_tx,
                pid_file: &pid_file,
                started,
                metrics: &metrics,
            },
        )?;
        let recovered = store.recover_interrupted()?;
        let engine = self.engine(&store, &metrics, fleet.sink());
        let (canceller, cancel) = CancelToken::new();
        let (done_tx, done) = smol::channel::unbounded::<()>();
        let runs = Runs::new(engine, cancel, done_tx);
        let loaded = load::start(files, &store)?;
        metrics.set_workflows(loaded.values().map(|l| &*l.wf));
        let clock = self.clock_watch();
        metrics.set_clock(clock.is_synced(), clock.is_waiting());

        catalog.publish(loaded.values().map(Loaded::entry));
        let web = self.web_context(&store, &catalog, trigger_tx, web_token, fleet.source());
        let http = HttpThread::start(&self.config, &metrics, web)?;
        status.write(&loaded, None, clock.status()).await;
        tracing::info!(
            pid = std::process::id(),
            workflows = loaded.len(),
            state = %self.config.db_path.display(),
            "daemon started"
        );

        // Every run is a 'static task (it owns what it uses), so the executor borrows nothing.
        let ex = smol::LocalExecutor::<'static>::new();
        let scheduler = Scheduler {
            ex: &ex,
            runs,
            loaded,
            store,
            config: self.config,
            metrics,
            paths: self.paths,
            fleet_dir,
            registry: self.registry,
            signals,
            status: &status,
            canceller,
            done,
            triggers,
            fleet_changes,
            catalog,
            last_prune: None,
            pruning: None,
            clock,
            clock_set: clockset::ClockSet::new(),
        };
        let result = ex.run(scheduler.run(recovered)).await;
        fleet.stop();
        drop(http);
        status.remove();
        tracing::info!("daemon stopped");
        result
    }

    /// The daemon's watch of the clock, waiting for its synchronisation when `[daemon]
    /// wait_for_clock_sync` applies here and the clock is not synchronised yet.
    fn clock_watch(&self) -> ClockWatch {
        let d = &self.config.daemon;
        let wait = d
            .wait_for_clock_sync
            .applies(crate::clock::sync_service_present());
        ClockWatch::start(
            wait,
            crate::clock::sync_status(),
            std::time::Duration::from_secs(d.clock_sync_timeout_seconds),
            (Utc::now(), std::time::Instant::now()),
        )
    }

    /// The directory of the workflows applied from the fleet (`<state file>.fleet`), when
    /// this daemon belongs to one; a fleet asked for by a build without the feature is a
    /// configuration error.
    fn fleet_dir(&self) -> Result<Option<PathBuf>> {
        if !self.config.fleet.enabled() {
            return Ok(None);
        }
        if !cfg!(feature = "fleet") {
            return Err(crate::error::Error::Config {
                origin: self
                    .config
                    .source
                    .as_ref()
                    .map_or_else(|| "environment".into(), |p| p.display().to_string()),
                message: "fleet.url is set but this PicoFlow is built without the 'fleet' \
                          feature"
                    .into(),
            });
        }
        Ok(Some(self.config.fleet_dir()))
    }

    /// What the web UI reads.
    fn web_context(
        &self,
        store: &Arc<Store>,
        catalog: &Catalog,
        triggers: smol::channel::Sender<Trigger>,
        token: Option<String>,
        fleet: Option<Arc<dyn crate::contract::FleetSource>>,
    ) -> WebContext {
        WebContext {
            store: store.clone(),
            log_dir: self.config.logs.dir.clone(),
            catalog: catalog.clone(),
            triggers,
            token,
            loopback: crate::httpd::is_loopback(&self.config.web.bind),
            reads_need_token: self.config.web.require_token_for_reads,
            fleet,
        }
    }

    /// The engine of the daemon's runs: its tasks share one `max_parallel` bound, and every
    /// event goes to the state file, the metrics and, in a fleet, the fleet thread.
    fn engine(
        &self,
        store: &Store,
        metrics: &Metrics,
        fleet: Option<Arc<dyn crate::events::EventSink>>,
    ) -> Engine {
        let limiter = Arc::new(Semaphore::new(
            self.config.execution.max_parallel.max(1) as usize
        ));
        let engine = Engine::new(self.registry.clone())
            .with_settings(EngineSettings::from(&self.config))
            .with_sink(store.sink())
            .with_sink(Arc::new(metrics.clone()))
            .with_log_dir(self.config.logs.dir.clone())
            .with_run_dir(self.config.run_dir())
            .with_limiter(limiter);
        match fleet {
            Some(sink) => engine.with_sink(sink),
            None => engine,
        }
    }
}
