//! The daemon: runs scheduled workflows for months (CLI-002, SCHED-001 … SCHED-005, REL-001,
//! REL-002, REL-005).
//!
//! * **Single instance.** The PID file (default `<state file>.pid`, beside the state file) is
//!   locked with `flock` for the daemon's whole life; a second daemon on the same state file
//!   fails to take the lock and exits with an error. A stale PID file left by a crash holds no
//!   lock and is simply taken over.
//! * **No polling.** The daemon sleeps until the earliest next fire of all its schedules (or a
//!   signal); an idle daemon does not wake up between fires. Pruning piggybacks on that
//!   (at start and after runs, at most once a day), so it adds no wake-ups of its own.
//! * **Overlap** (SCHED-004): a fire is skipped and logged while the workflow's previous run
//!   is still going, unless the workflow sets `allow_concurrent: true`.
//! * **Restarts.** On start, executions whose process died are marked interrupted and resumed
//!   (finished tasks are not run again; the tasks that were running run again: at-least-once).
//!   Fires missed while the daemon was down are made up according to each workflow's
//!   `catchup` (`none`: like cron, nothing; `latest`: one run; `all`: every missed fire, at
//!   most [`Catchup::MAX_ALL`]).
//! * **Jitter.** `jitter: 30s` delays every fire of a workflow by a fixed offset in
//!   `[0, 30s)` derived from the host name and the workflow name: a fleet spreads out while
//!   each device keeps a regular schedule.
//! * **Signals** (REL-002): SIGTERM/SIGINT stop scheduling and let running tasks finish within
//!   `[daemon] shutdown_timeout_seconds`; after that they are terminated like a timed-out task
//!   and recorded as interrupted. SIGHUP reloads the workflow files; a file that no longer
//!   validates keeps its previous version and the error is logged.
//! * **Clock.** Sleeps are measured on the monotonic clock and re-checked against the wall
//!   clock when they end, so a clock stepped backwards (an NTP sync on a board without a
//!   real-time clock) never fires a schedule early or twice.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_lite::future;
use smol::lock::Semaphore;

use crate::config::Config;
use crate::contract::{Catalog, CatalogEntry, Trigger, Triggered, WebContext};
use crate::engine::{Engine, EngineSettings, ResumeFrom, RunOptions};
use crate::error::{Error, Result};
use crate::events::new_id;
use crate::executor::{CancelToken, Registry};
use crate::httpd::{Server, Service};
use crate::metrics::Metrics;
use crate::model::{Catchup, Workflow};
use crate::resume::{plan_run, RunIntent, RunPlan};
use crate::schedule::{host_name, Schedule};
use crate::signals::{Signals, StopSignal};
use crate::store::Store;
use crate::validate::{load_workflow, workflow_files};

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
    /// Loaded workflows: name, schedule, time zone and next fire.
    pub workflows: Vec<ScheduledWorkflow>,
    /// Resident memory of the daemon process, in bytes.
    pub memory_bytes: Option<u64>,
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

struct Loaded {
    wf: Arc<Workflow>,
    schedule: Option<Schedule>,
    offset: Duration,
    next: Option<DateTime<Utc>>,
    source: PathBuf,
}

impl Loaded {
    fn new(wf: Workflow, source: PathBuf, host: &str, after: DateTime<Utc>) -> Result<Loaded> {
        let schedule =
            match &wf.schedule {
                Some(expr) => Some(Schedule::parse(expr, wf.timezone.as_deref()).map_err(|m| {
                    Error::Invalid {
                        file: source.display().to_string(),
                        problems: vec![format!("schedule: {m}")],
                    }
                })?),
                None => None,
            };
        let offset = wf.fire_delay(host);
        let mut l = Loaded {
            wf: Arc::new(wf),
            schedule,
            offset,
            next: None,
            source,
        };
        l.next = l.next_after(after);
        Ok(l)
    }

    /// Next fire strictly after `t`, jitter included.
    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.next_after_delayed(t, self.offset)
    }

    /// How the web UI shows it.
    fn entry(&self) -> CatalogEntry {
        CatalogEntry {
            wf: self.wf.clone(),
            source: self.source.clone(),
            next: self.next,
        }
    }
}

/// Loads every workflow file named by `paths` (files or directories). Fails naming every
/// invalid file when one or more do not validate.
fn load_all(paths: &[PathBuf], registry: &Registry) -> Result<Vec<(PathBuf, Workflow)>> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        match workflow_files(p) {
            Ok(files) => {
                for f in files {
                    match load_workflow(&f, registry) {
                        Ok(wf) => ok.push((f, wf)),
                        Err(e) => problems.push(e),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    let mut seen = BTreeMap::new();
    let mut clashes = Vec::new();
    for (f, wf) in &ok {
        if let Some(prev) = seen.insert(wf.name.clone(), f.clone()) {
            clashes.push(format!(
                "workflow name '{}' is used by both {} and {}",
                wf.name,
                prev.display(),
                f.display()
            ));
        }
    }
    // One problem is reported as it is, so that a missing file is an I/O error (exit 5) and
    // not an invalid workflow; several are listed together.
    if problems.len() == 1 && clashes.is_empty() {
        return Err(problems.remove(0));
    }
    if problems.is_empty() && clashes.is_empty() {
        Ok(ok)
    } else {
        Err(Error::Invalid {
            file: "daemon".into(),
            problems: problems
                .iter()
                .map(ToString::to_string)
                .chain(clashes)
                .collect(),
        })
    }
}

/// The lock that makes a daemon the only one on its state file (REL-005).
#[derive(Debug)]
struct PidLock {
    file: File,
    path: PathBuf,
}

impl PidLock {
    fn acquire(path: &Path) -> Result<PidLock> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dirs_for(dir, "the PID file").map_err(|e| Error::io(dir, e))?;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        crate::private::trusted_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut file = crate::private::open_rw(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::Other(format!(
                "another daemon is already running on this state file (pid {}, PID file {})",
                text.lines().next().unwrap_or("").trim(),
                path.display()
            )));
        }
        file.set_len(0).map_err(|e| Error::io(path, e))?;
        file.rewind().map_err(|e| Error::io(path, e))?;
        // The pid, then its start time: `daemon stop` signals the pid only while that
        // process is the one that wrote the file (a pid is reused once its process ends).
        let pid = std::process::id();
        let start = crate::orphans::process_start_time(pid).unwrap_or(0);
        writeln!(file, "{pid}\n{start}").map_err(|e| Error::io(path, e))?;
        file.flush().map_err(|e| Error::io(path, e))?;
        Ok(PidLock {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// The status file a running daemon keeps beside its PID file, for `daemon status`.
fn status_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn write_status(path: &Path, started: DateTime<Utc>, loaded: &BTreeMap<String, Loaded>) {
    let workflows: Vec<serde_json::Value> = loaded
        .values()
        .map(|l| {
            serde_json::json!({
                "name": l.wf.name,
                "schedule": l.wf.schedule,
                "timezone": l.wf.timezone,
                "jitter_seconds": l.offset.as_secs(),
                "source": l.source.display().to_string(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "started_at": started.to_rfc3339(),
        "workflows": workflows,
    });
    if let Err(e) = crate::private::replace(path, doc.to_string().as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write daemon status file");
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    // EPERM: it exists, as another user's process.
    pid > 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether a process holds the `flock` of the open PID file `f`.
fn lock_held(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; released immediately if taken.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above: the lock just taken on our own descriptor is released.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

/// The daemon a PID file names, as far as it can be trusted.
enum PidFile {
    /// No PID file, or no process holds its lock: no daemon runs.
    Absent,
    /// The locked PID file names this pid, and that process started when the file says.
    Daemon(u32),
    /// The locked PID file names a pid that is not the process that wrote it.
    Foreign(String),
}

/// Reads the PID file without following a link; it must belong to the effective user. The
/// pid it names counts only if that process still has the start time recorded beside it.
fn read_pid_file(pid_file: &Path) -> Result<PidFile> {
    use std::os::unix::fs::MetadataExt as _;
    let mut f = match crate::private::open_read(pid_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PidFile::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::io(
                pid_file,
                std::io::Error::new(e.kind(), "is a symbolic link: not read"),
            ))
        }
        other => other.map_err(|e| Error::io(pid_file, e))?,
    };
    let m = f.metadata().map_err(|e| Error::io(pid_file, e))?;
    if m.uid() != crate::private::euid() {
        return Err(Error::Other(format!(
            "PID file {} is owned by uid {}, not by uid {}: not trusted (run the command as \
             the daemon's user, e.g. `sudo -u '#{}' picoflow …`); no process signalled",
            pid_file.display(),
            m.uid(),
            crate::private::euid(),
            m.uid()
        )));
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let mut lines = text.lines().map(str::trim);
    let pid: Option<u32> = lines.next().and_then(|l| l.parse().ok());
    let start: Option<u64> = lines.next().and_then(|l| l.parse().ok());
    let Some(pid) = pid.filter(|&p| pid_alive(p) && lock_held(&f)) else {
        return Ok(PidFile::Absent);
    };
    match start {
        Some(s) if crate::orphans::process_start_time(pid) == Some(s) => Ok(PidFile::Daemon(pid)),
        _ => Ok(PidFile::Foreign(format!(
            "PID file {} names pid {pid}, but that process is not the daemon that wrote the \
             file (its start time differs from the one recorded)",
            pid_file.display()
        ))),
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The status of the daemon using `config`'s state file, or `None` if none is running.
pub fn daemon_status(config: &Config) -> Result<Option<DaemonStatus>> {
    let pid_file = config.pid_file();
    let PidFile::Daemon(pid) = read_pid_file(&pid_file)? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(status_path(&pid_file)).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let started_at = doc["started_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(Utc::now, |d| d.with_timezone(&Utc));
    let now = Utc::now();
    let workflows = doc["workflows"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    let schedule = w["schedule"].as_str().map(String::from);
                    let timezone = w["timezone"].as_str().map(String::from);
                    let jitter_seconds = w["jitter_seconds"].as_u64().unwrap_or(0);
                    let next = schedule.as_deref().and_then(|s| {
                        Schedule::parse(s, timezone.as_deref())
                            .ok()?
                            .next_after_delayed(now, Duration::from_secs(jitter_seconds))
                    });
                    ScheduledWorkflow {
                        name: w["name"].as_str().unwrap_or("?").to_string(),
                        schedule,
                        timezone,
                        jitter_seconds,
                        next,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(DaemonStatus {
        pid,
        started_at,
        workflows,
        memory_bytes: rss_bytes(pid),
    }))
}

/// Sends SIGTERM to the daemon of `config`'s state file and waits up to `wait` for it to exit.
/// Returns `Ok(false)` when no daemon is running.
pub fn stop_daemon(config: &Config, wait: Duration) -> Result<bool> {
    let pid_file = config.pid_file();
    let pid = match read_pid_file(&pid_file)? {
        PidFile::Absent => return Ok(false),
        PidFile::Foreign(why) => return Err(Error::Other(format!("{why}; not signalled"))),
        PidFile::Daemon(pid) => pid,
    };
    // SAFETY: sending SIGTERM to the daemon's pid, read from its locked PID file.
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        return Err(Error::Other(format!(
            "cannot signal daemon pid {pid}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if !matches!(read_pid_file(&pid_file), Ok(PidFile::Daemon(p)) if p == pid) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Timeout(format!(
        "daemon pid {pid} did not stop within {}s",
        wait.as_secs()
    )))
}

/// A daemon over a set of workflow files.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    registry: Registry,
    paths: Vec<PathBuf>,
}

struct Shared {
    engine: Engine,
    store: Arc<Store>,
    running: RefCell<BTreeMap<String, usize>>,
    done: smol::channel::Sender<()>,
    cancel: CancelToken,
    last_prune: RefCell<Option<Instant>>,
    config: Config,
    metrics: Metrics,
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
        load_all(&self.paths, &self.registry).map(|v| v.len())
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
        let files = load_all(&self.paths, &self.registry)?;
        let web_token = self.web_token()?;
        let pid_file = self.config.pid_file();
        let _lock = PidLock::acquire(&pid_file)?;
        let mut signals = Signals::new()?;
        let started = Utc::now();
        let store = Arc::new(Store::open(&self.config.db_path)?);
        let recovered = store.recover_interrupted()?;

        let metrics = Metrics::new();
        let limiter = Arc::new(Semaphore::new(
            self.config.execution.max_parallel.max(1) as usize
        ));
        let (canceller, cancel) = CancelToken::new();
        let (done_tx, done_rx) = smol::channel::unbounded::<()>();
        let engine = Engine::new(self.registry.clone())
            .with_settings(EngineSettings::from(&self.config))
            .with_sink(store.sink())
            .with_sink(Arc::new(metrics.clone()))
            .with_log_dir(self.config.logs.dir.clone())
            .with_run_dir(self.config.run_dir())
            .with_limiter(limiter);
        let shared = Rc::new(Shared {
            engine,
            store: store.clone(),
            running: RefCell::new(BTreeMap::new()),
            done: done_tx,
            cancel,
            last_prune: RefCell::new(None),
            config: self.config.clone(),
            metrics: metrics.clone(),
        });

        let host = host_name();
        let now = Utc::now();
        let mut loaded: BTreeMap<String, Loaded> = BTreeMap::new();
        for (path, wf) in files {
            store.record_workflow(
                &wf.name,
                wf.schedule.as_deref(),
                Some(&path.display().to_string()),
            )?;
            let l = Loaded::new(wf, path, &host, now)?;
            loaded.insert(l.wf.name.clone(), l);
        }
        metrics.set_workflows(loaded.values().map(|l| &*l.wf));
        let status_file = status_path(&pid_file);

        let catalog = Catalog::default();
        catalog.publish(loaded.values().map(Loaded::entry));
        let (trigger_tx, triggers) = smol::channel::bounded::<Trigger>(16);
        let web = WebContext {
            store: store.clone(),
            log_dir: self.config.logs.dir.clone(),
            catalog: catalog.clone(),
            triggers: trigger_tx,
            token: web_token,
            loopback: crate::httpd::is_loopback(&self.config.web.bind),
            reads_need_token: self.config.web.require_token_for_reads,
        };
        let http = HttpThread::start(&self.config, &metrics, web)?;
        write_status(&status_file, started, &loaded);
        tracing::info!(
            pid = std::process::id(),
            workflows = loaded.len(),
            state = %self.config.db_path.display(),
            "daemon started"
        );

        let ex = smol::LocalExecutor::new();
        let result = ex
            .run(self.main_loop(
                &ex,
                &shared,
                &mut loaded,
                &mut signals,
                recovered,
                started,
                &status_file,
                &canceller,
                &done_rx,
                &triggers,
                &catalog,
            ))
            .await;
        drop(http);
        let _ = std::fs::remove_file(&status_file);
        tracing::info!("daemon stopped");
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn main_loop<'a>(
        &'a self,
        ex: &smol::LocalExecutor<'a>,
        shared: &Rc<Shared>,
        loaded: &mut BTreeMap<String, Loaded>,
        signals: &mut Signals,
        recovered: Vec<crate::events::WorkflowExecution>,
        started: DateTime<Utc>,
        status_file: &Path,
        canceller: &crate::executor::Canceller,
        done_rx: &smol::channel::Receiver<()>,
        triggers: &smol::channel::Receiver<Trigger>,
        catalog: &Catalog,
    ) -> Result<DaemonExit> {
        // Resume what a crash interrupted (REL-001), as the resume policy decides for a daemon.
        for exec in recovered {
            let Some(l) = loaded.get(&exec.workflow_name) else {
                tracing::warn!(workflow = %exec.workflow_name, execution = %exec.id,
                    "interrupted execution of a workflow this daemon does not load; left as interrupted");
                continue;
            };
            let id = exec.id.clone();
            let RunPlan::Resume(from) = plan_run(&shared.store, &l.wf, RunIntent::Recovered(exec))?
            else {
                continue;
            };
            tracing::info!(workflow = %l.wf.name, execution = %id, "resuming interrupted execution");
            spawn_run(ex, shared, l.wf.clone(), &l.source, Some(from), 1, None);
        }
        // Catch up on fires missed while the daemon was down.
        let now = Utc::now();
        for l in loaded.values() {
            let Some(sched) = &l.schedule else { continue };
            if l.wf.catchup == Catchup::None {
                continue;
            }
            let Some(last) = shared.store.latest_execution(&l.wf.name)? else {
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
                spawn_run(ex, shared, l.wf.clone(), &l.source, None, count, None);
            }
        }
        maybe_prune(shared);

        loop {
            let earliest = loaded.values().filter_map(|l| l.next).min();
            let timer = match earliest {
                Some(t) => {
                    let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    smol::Timer::after(wait)
                }
                None => smol::Timer::never(),
            };
            enum Wake {
                Timer,
                Signal(Option<StopSignal>),
                RunDone,
                Trigger(Trigger),
            }
            let wake = future::or(
                future::or(
                    async {
                        timer.await;
                        Wake::Timer
                    },
                    async { Wake::Signal(signals.next().await) },
                ),
                future::or(
                    async {
                        let _ = done_rx.recv().await;
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
            .await;
            match wake {
                Wake::Timer => {
                    let now = Utc::now();
                    for l in loaded.values_mut() {
                        let Some(next) = l.next else { continue };
                        if next > now {
                            continue; // The wall clock went back: sleep again.
                        }
                        if is_busy(shared, &l.wf) {
                            tracing::warn!(workflow = %l.wf.name, fire = %next,
                                "previous run still running; this fire is skipped (set allow_concurrent: true to overlap)");
                        } else {
                            tracing::info!(workflow = %l.wf.name, fire = %next, "scheduled run");
                            spawn_run(ex, shared, l.wf.clone(), &l.source, None, 1, None);
                        }
                        l.next = l.next_after(now.max(next));
                    }
                    catalog.publish(loaded.values().map(Loaded::entry));
                }
                Wake::Trigger(t) => {
                    let answer = match loaded.get(&t.workflow) {
                        None => Triggered::NotFound,
                        Some(l) if is_busy(shared, &l.wf) => Triggered::Busy,
                        Some(l) => {
                            let id = new_id();
                            tracing::info!(workflow = %l.wf.name, execution = %id, "run requested over the web API");
                            spawn_run(
                                ex,
                                shared,
                                l.wf.clone(),
                                &l.source,
                                None,
                                1,
                                Some(id.clone()),
                            );
                            Triggered::Started(id)
                        }
                    };
                    let _ = t.reply.try_send(answer);
                }
                Wake::RunDone => maybe_prune(shared),
                Wake::Signal(Some(StopSignal::Hangup)) => {
                    self.reload(loaded, shared);
                    write_status(status_file, started, loaded);
                    catalog.publish(loaded.values().map(Loaded::entry));
                }
                Wake::Signal(_) => break,
            }
        }
        // Requests to run now are refused from here on (the API answers 503).
        triggers.close();

        // Graceful stop (REL-002).
        let total_running = || shared.running.borrow().values().sum::<usize>();
        tracing::info!(
            running = total_running(),
            "stopping: no new runs; waiting for running ones"
        );
        let grace = Duration::from_secs(shared.config.daemon.shutdown_timeout_seconds);
        let deadline = Instant::now() + grace;
        let mut terminated = false;
        while total_running() > 0 {
            if terminated {
                // Cancelled runs end as soon as their tasks are gone (SIGTERM, then SIGKILL).
                let _ = done_rx.recv().await;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let finished = future::or(async { done_rx.recv().await.is_ok() }, async {
                smol::Timer::after(left).await;
                false
            })
            .await;
            if !finished && total_running() > 0 && !terminated {
                tracing::warn!(
                    running = total_running(),
                    "shutdown timeout reached; terminating running tasks"
                );
                canceller.cancel();
                terminated = true;
            }
        }
        Ok(if terminated {
            DaemonExit::Terminated
        } else {
            DaemonExit::Graceful
        })
    }

    fn reload(&self, loaded: &mut BTreeMap<String, Loaded>, shared: &Shared) {
        tracing::info!("SIGHUP: reloading workflow files");
        let host = host_name();
        let now = Utc::now();
        let mut files = Vec::new();
        for p in &self.paths {
            match workflow_files(p) {
                Ok(f) => files.extend(f),
                Err(e) => tracing::error!(error = %e, "reload: cannot list workflow files"),
            }
        }
        let mut fresh: BTreeMap<String, Loaded> = BTreeMap::new();
        let mut ambiguous = Vec::new();
        for f in files {
            match load_workflow(&f, &self.registry)
                .and_then(|wf| Loaded::new(wf, f.clone(), &host, now))
            {
                Ok(l) => {
                    if let Some(other) = fresh.get(&l.wf.name) {
                        ambiguous.push(format!(
                            "workflow name '{}' is used by both {} and {}",
                            l.wf.name,
                            other.source.display(),
                            f.display()
                        ));
                        continue;
                    }
                    fresh.insert(l.wf.name.clone(), l);
                }
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "reload: invalid workflow; keeping its previous version");
                    if let Some((name, _)) = loaded.iter().find(|(_, l)| l.source == f) {
                        let name = name.clone();
                        if let Some(prev) = loaded.remove(&name) {
                            fresh.insert(name, prev);
                        }
                    }
                }
            }
        }
        // As at start: a set of files in which one name means two workflows is refused
        // whole, and the daemon goes on with the set it had.
        if !ambiguous.is_empty() {
            for problem in &ambiguous {
                tracing::error!(problem = %problem, "reload refused; keeping the previous workflows");
            }
            return;
        }
        for l in fresh.values() {
            let _ = shared.store.record_workflow(
                &l.wf.name,
                l.wf.schedule.as_deref(),
                Some(&l.source.display().to_string()),
            );
        }
        *loaded = fresh;
        shared
            .metrics
            .set_workflows(loaded.values().map(|l| &*l.wf));
        tracing::info!(workflows = loaded.len(), "reloaded");
    }
}

/// Whether a new run of `wf` must wait: one is going and overlapping is not allowed
/// (SCHED-004).
fn is_busy(shared: &Shared, wf: &Workflow) -> bool {
    let running = shared.running.borrow().get(&wf.name).copied().unwrap_or(0);
    running > 0 && !wf.allow_concurrent
}

/// The daemon's HTTP endpoints (`/metrics`, `/health`, the web UI and API) on a thread of
/// their own, so that neither a client nor a read of the state file for one ever delays the
/// scheduler. Services that share an address share one listener. Dropping it stops the
/// thread and closes every listener.
struct HttpThread {
    stop: smol::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpThread {
    /// Starts every configured endpoint. A web UI address that cannot be listened on (in
    /// use, not this host's) is an error: a daemon without it would leave the port to
    /// whoever takes it, and with it the token its clients send. The metrics endpoint is
    /// logged and done without (it holds no secret, and every daemon on a host has the
    /// same default port).
    fn start(config: &Config, metrics: &Metrics, web: WebContext) -> Result<Option<HttpThread>> {
        if !crate::httpd::ANY_SERVICE {
            return Ok(None);
        }
        // (bind address, port, services on that listener)
        // (bind address, port, services on that listener, whether it serves the web UI)
        type Endpoint = (String, u16, Vec<Arc<dyn Service>>, bool);
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut add = |bind: &str, port: u16, service: Arc<dyn Service>, web: bool| match endpoints
            .iter_mut()
            .find(|e| e.0 == bind && e.1 == port)
        {
            Some(e) => {
                e.2.push(service);
                e.3 |= web;
            }
            None => endpoints.push((bind.to_string(), port, vec![service], web)),
        };
        if config.metrics.enabled && config.metrics.port != 0 {
            match metrics.service() {
                Some(s) => add(&config.metrics.bind_address, config.metrics.port, s, false),
                None => tracing::warn!(
                    "[metrics] enabled = true, but this build has no `metrics` feature; no endpoint is served"
                ),
            }
        }
        if config.web.enabled {
            match crate::web::service(web) {
                Some(s) => add(&config.web.bind, config.web.port, s, true),
                None => tracing::warn!(
                    "[web] enabled = true, but this build has no `web` feature; no UI is served"
                ),
            }
        }
        let net = Arc::new(smol::Executor::new());
        let mut servers = Vec::new();
        for (bind, port, services, web) in endpoints {
            let n = services.len();
            match Server::start(&net, &bind, port, services) {
                Ok(s) => {
                    tracing::info!(addr = %s.local_addr(), services = n, "serving HTTP");
                    servers.push(s);
                }
                // The UI's clients send the token: its port is never left to another process.
                Err(e) if web => return Err(e),
                // `/metrics` and `/health` hold no secret, and the default port is shared by
                // every daemon on the host: the daemon goes on without them.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the metrics endpoint; going on without it")
                }
            }
        }
        if servers.is_empty() {
            return Ok(None);
        }
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("picoflow-http".into())
            .spawn(move || {
                smol::block_on(net.run(async {
                    let _ = stopped.recv().await;
                }));
                drop(servers);
            });
        match thread {
            Ok(t) => Ok(Some(HttpThread {
                stop,
                thread: Some(t),
            })),
            Err(e) => Err(Error::Other(format!("cannot start the HTTP thread: {e}"))),
        }
    }
}

impl Drop for HttpThread {
    fn drop(&mut self) {
        self.stop.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn maybe_prune(shared: &Shared) {
    if !shared.config.logs.cleanup_enabled {
        return;
    }
    let due = shared
        .last_prune
        .borrow()
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(24 * 3600));
    if !due {
        return;
    }
    *shared.last_prune.borrow_mut() = Some(Instant::now());
    match crate::prune::prune(&shared.store, &shared.config, Utc::now()) {
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
}

/// Starts `count` runs of `wf` one after another on the daemon's executor.
fn spawn_run<'a>(
    ex: &smol::LocalExecutor<'a>,
    shared: &Rc<Shared>,
    wf: Arc<Workflow>,
    source: &Path,
    resume: Option<ResumeFrom>,
    count: usize,
    execution_id: Option<String>,
) {
    let shared = shared.clone();
    let source = source.display().to_string();
    *shared
        .running
        .borrow_mut()
        .entry(wf.name.clone())
        .or_default() += 1;
    ex.spawn(async move {
        let mut resume = resume;
        let mut execution_id = execution_id;
        for _ in 0..count.max(1) {
            if shared.cancel.is_cancelled() {
                break;
            }
            let opts = RunOptions {
                cancel: shared.cancel.clone(),
                resume: resume.take(),
                source: Some(source.clone()),
                stop_leftovers: false,
                execution_id: execution_id.take(),
            };
            match shared.engine.run(&wf, opts).await {
                Ok(r) => tracing::info!(workflow = %wf.name, execution = %r.execution.id,
                    status = %r.execution.status, "run finished"),
                Err(e) => tracing::error!(workflow = %wf.name, error = %e, "run failed to start"),
            }
        }
        if let Some(n) = shared.running.borrow_mut().get_mut(&wf.name) {
            *n -= 1;
        }
        let _ = shared.done.send(()).await;
    })
    .detach();
}
