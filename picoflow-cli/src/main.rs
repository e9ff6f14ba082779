//! `picoflow`: the command-line front end of PicoFlow.
//!
//! Argument parsing, output formatting and exit codes only; every behaviour lives in
//! `picoflow-lib`.

mod args;
mod display;
mod exit;
#[cfg(feature = "fleet")]
mod fleet;
mod out;
mod report;
#[cfg(any(feature = "http", feature = "docker"))]
mod tls;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use picoflow_lib::{
    load_workflow, open_for_run, template, workflow_files, CancelToken, Config, Dag, Engine,
    EngineSettings, Error, Registry, RunIntent, RunOptions, RunPlan, Schedule, Signals, Store,
    WorkflowStatus, TEMPLATE_NAMES,
};

use args::{Cli, Command, DaemonCommand, ExportCommand, WorkflowCommand};
use out::{errln, out, outln};

fn main() -> ExitCode {
    #[cfg(any(feature = "http", feature = "docker"))]
    tls::main_started();
    let argv: Vec<String> = std::env::args().collect();
    let cli = args::parse(&argv);
    if cli.version {
        return match outln!("{}", version_line()) {
            Ok(()) => ExitCode::from(exit::SUCCESS),
            Err(e) => fail(&e),
        };
    }
    let config = match resolve_config(&cli) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rust_log = (cli.log_level.is_none() && std::env::var_os("PICOFLOW_LOG_LEVEL").is_none())
        .then(|| std::env::var("RUST_LOG").ok())
        .flatten()
        .filter(|v| !v.is_empty());
    init_logging(&config, rust_log);
    let Some(command) = cli.command else {
        errln!("picoflow: no command given; try `picoflow --help`");
        return ExitCode::from(exit::CONFIG);
    };
    match dispatch(command, &config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// Prints an error once, with its chain of causes, and exits with its code ([`exit::of`]).
///
/// Output into a pipe whose reader has gone (`| head`) is no error: the command stops
/// writing and exits with status 0, printing nothing.
fn fail(e: &Error) -> ExitCode {
    if out::is_closed_stdout(e) {
        return ExitCode::from(exit::SUCCESS);
    }
    let mut msg = format!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // A cause the message already quotes (`file: No such file or directory`) is not
        // repeated; the system's words are shown without std's ` (os error N)`, as the
        // library shows them.
        let text = s.to_string();
        let text = picoflow_lib::without_os_error(&text);
        if !msg.contains(text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        source = s.source();
    }
    errln!("{msg}");
    ExitCode::from(exit::of(e))
}

fn version_line() -> String {
    let feats: Vec<String> = picoflow_lib::features()
        .iter()
        .map(|(name, on)| format!("{}{name}", if *on { '+' } else { '-' }))
        .collect();
    format!(
        "picoflow {} ({})",
        env!("CARGO_PKG_VERSION"),
        feats.join(" ")
    )
}

/// Flag > environment > configuration file > default.
fn resolve_config(cli: &Cli) -> Result<Config, Error> {
    let mut config = Config::load(cli.config.as_deref())?;
    config.apply_env(|k| std::env::var(k).ok())?;
    if let Some(p) = &cli.db_path {
        config.db_path = p.clone();
    }
    if let Some(l) = &cli.log_level {
        config.log_level = l.clone();
    }
    if let Some(f) = &cli.log_format {
        config.log_format = f.clone();
    }
    config.check("command line")?;
    Ok(config)
}

fn init_logging(config: &Config, rust_log: Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // `RUST_LOG` (e.g. `debug` or `picoflow_lib=trace,isahc=warn`) applies when neither
    // `--log-level` nor `PICOFLOW_LOG_LEVEL` is given. `Targets` parses those directives
    // without the regex engine behind `EnvFilter`, which would add ~0.3 MiB to the binary.
    let level = match config.log_level.as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "warn" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    };
    let filter = rust_log
        .and_then(|r| r.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            // isahc reports each failed connection itself at WARN; the task's own error
            // already says it, once.
            Targets::new()
                .with_default(level)
                .with_target("isahc", LevelFilter::ERROR)
                // The NATS client logs every reconnect attempt, a refused one at ERROR; the
                // fleet's own lines say what changed, once.
                .with_target("async_nats", LevelFilter::OFF)
        });
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if config.log_format == "pretty" {
        let layer = layer.with_ansi(std::io::stderr().is_terminal());
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init();
    }
}

fn dispatch(command: Command, config: &Config) -> Result<u8, Error> {
    match command {
        Command::Validate(a) => validate(&a.path, config),
        Command::Init(a) => init(a.name.as_deref(), &a.template),
        Command::Graph(a) => graph(&a.file, &a.format),
        Command::Run(a) => run(&a.file, a.resume, a.force, config),
        Command::Status(a) if a.watch => {
            report::watch_status(config, a.workflow.as_deref(), a.running_only, &a.format)
        }
        Command::Status(a) => {
            report::status(config, a.workflow.as_deref(), a.running_only, &a.format)
        }
        Command::History(a) => report::history(
            config,
            a.workflow.as_deref(),
            a.status.as_deref(),
            a.limit,
            a.since.as_deref(),
            &a.format,
        ),
        Command::Stats(a) => report::stats(config, a.workflow.as_deref(), a.period, &a.format),
        Command::Logs(a) => {
            let mut pos = a.positional.iter().map(String::as_str);
            let workflow = a.workflow.as_deref().or(pos.next());
            let task = a.task.as_deref().or(pos.next());
            report::logs(
                config,
                &report::LogsQuery {
                    workflow,
                    task,
                    execution_id: a.execution_id.as_deref(),
                    tail: a.tail,
                    follow: a.follow,
                },
            )
        }
        Command::Workflow(a) => match a.command {
            WorkflowCommand::List(l) => report::workflow_list(config, l.all, &l.format),
        },
        Command::Prune(a) => prune(config, a.days),
        Command::Daemon(a) => match a.command {
            DaemonCommand::Start(s) => daemon_start(config, s.paths, s.web),
            DaemonCommand::Stop(s) => daemon_stop(config, s.timeout),
            DaemonCommand::Status(_) => daemon_status(config),
        },
        #[cfg(feature = "fleet")]
        Command::Fleet(a) => fleet::dispatch(a.command, config),
        Command::Export(a) => match a.command {
            ExportCommand::Sqlite(e) => {
                export_sqlite(config, &e.file, e.workflow.as_deref(), e.since.as_deref())
            }
        },
    }
}

fn validate(path: &Path, config: &Config) -> Result<u8, Error> {
    let registry = Registry::builtin();
    let files = workflow_files(path)?;
    let many = path.is_dir();
    let mut worst: Option<Error> = None;
    // Workflow name → the file that defines it, to refuse one name in two files as the
    // daemon does.
    let mut names: std::collections::BTreeMap<String, PathBuf> = Default::default();
    let mut valid = 0;
    for (n, file) in files.iter().enumerate() {
        if n > 0 {
            outln!()?;
        }
        if many {
            outln!("File: {}", file.display())?;
        }
        let loaded = load_workflow(file, &registry).and_then(|wf| match names.get(&wf.name) {
            Some(other) => Err(Error::Invalid {
                file: file.display().to_string(),
                problems: vec![format!(
                    "workflow name '{}' is also used by {}: the daemon refuses the pair",
                    wf.name,
                    other.display()
                )],
            }),
            None => {
                names.insert(wf.name.clone(), file.clone());
                Ok(wf)
            }
        });
        match loaded {
            Ok(wf) => {
                valid += 1;
                let dag = Dag::from_workflow(&wf)?;
                outln!("Workflow '{}' is valid", wf.name)?;
                outln!("Tasks: {}", wf.tasks.len())?;
                outln!("Dependencies validated: No cycles detected")?;
                outln!("Max parallel levels: {}", dag.level_count())?;
                let origin = file.display().to_string();
                for warning in picoflow_lib::shell_warnings(&wf, &origin)
                    .into_iter()
                    .chain(picoflow_lib::guards::warnings(&wf, &origin))
                {
                    errln!("warning: {warning}");
                }
                let required: Vec<(&str, &picoflow_lib::guards::Requires)> = wf
                    .requires
                    .iter()
                    .map(|r| ("(workflow)", r))
                    .chain(
                        wf.tasks
                            .iter()
                            .chain(wf.handlers.all().map(|(_, t)| t))
                            .filter_map(|t| t.requires.as_ref().map(|r| (t.name.as_str(), r))),
                    )
                    .collect();
                if !required.is_empty() {
                    outln!("Requirements:")?;
                    for (who, req) in required {
                        outln!("  {who}: {}", req.describe())?;
                    }
                }
                let noted: Vec<usize> = (0..wf.tasks.len())
                    .filter(|&i| !dag.notes(i).is_empty())
                    .collect();
                if !noted.is_empty() {
                    outln!("Conditions, rules and loops:")?;
                    for i in noted {
                        outln!("  {}: {}", wf.tasks[i].name, dag.notes(i).join("; "))?;
                    }
                }
                // What each shell task runs with: its own limits, else [tasks.limits]'s.
                let limited: Vec<(&str, picoflow_lib::Limits)> = wf
                    .tasks
                    .iter()
                    .chain(wf.handlers.all().map(|(_, t)| t))
                    .filter(|t| t.kind == "shell")
                    .map(|t| (t.name.as_str(), t.limits.or(&config.tasks.limits)))
                    .filter(|(_, l)| !l.is_empty())
                    .collect();
                if !limited.is_empty() {
                    outln!("Limits:")?;
                    for (name, limits) in limited {
                        outln!("  {name}: {limits}")?;
                    }
                }
                if !dag.handlers().is_empty() {
                    let list: Vec<String> = dag
                        .handlers()
                        .iter()
                        .map(|(when, name)| format!("{name} ({when})"))
                        .collect();
                    outln!("Handlers: {}", list.join(", "))?;
                }
                if let Some(expr) = &wf.schedule {
                    let sched =
                        Schedule::parse(expr, wf.timezone.as_deref()).map_err(Error::Other)?;
                    outln!("Schedule: {expr} ({})", sched.timezone_name())?;
                    // The times the daemon of this host will start the runs: jitter included.
                    let host = picoflow_lib::host_name();
                    let delay = wf.fire_delay(&host);
                    if let Some(bound) = wf.jitter {
                        outln!(
                            "Jitter: below {}s; on this host ({host}) every run starts {}s after its time",
                            bound.as_secs(),
                            delay.as_secs()
                        )?;
                    }
                    outln!("Next runs:")?;
                    for t in sched.upcoming_delayed(chrono::Utc::now(), 3, delay) {
                        outln!("  {}", sched.format_local(t))?;
                    }
                }
            }
            Err(e) => {
                if files.len() > 1 {
                    errln!("error: {e}");
                    worst.get_or_insert(e);
                } else {
                    return Err(e);
                }
            }
        }
    }
    if many {
        outln!()?;
        outln!(
            "{} files: {valid} valid, {} invalid",
            files.len(),
            files.len() - valid
        )?;
    }
    match worst {
        Some(e) => Ok(exit::of(&e)),
        None => Ok(exit::SUCCESS),
    }
}

fn init(name: Option<&str>, kind: &str) -> Result<u8, Error> {
    let name = name.unwrap_or("my-workflow");
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    let text = template(kind, name).ok_or_else(|| Error::Config {
        origin: "--template".into(),
        message: format!("'{kind}' is not one of {}", TEMPLATE_NAMES.join(", ")),
    })?;
    if !picoflow_lib::is_valid_name(name) {
        return Err(Error::Config {
            origin: "NAME".into(),
            message: format!("'{name}' must be 1-64 characters of letters, digits, '-' and '_'"),
        });
    }
    if name.starts_with('-') {
        return Err(Error::Config {
            origin: "NAME".into(),
            message: format!(
                "'{name}' starts with '-': its file would read as an option in every command                  that names it; begin it with a letter or a digit"
            ),
        });
    }
    let path = PathBuf::from(format!("{name}.yaml"));
    let mut file =
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::Io {
                path,
                source: std::io::Error::new(
                    e.kind(),
                    "already exists; not overwriting it (choose another name or remove the file)",
                ),
            }),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    outln!("Created {} from the '{kind}' template", path.display())?;
    outln!("Next: picoflow validate {}", path.display())?;
    Ok(exit::SUCCESS)
}

fn graph(file: &Path, format: &str) -> Result<u8, Error> {
    let wf = load_workflow(file, &Registry::builtin())?;
    let dag = Dag::from_workflow(&wf)?;
    match format {
        "dot" => out!("{}", dag.to_dot(&wf.name))?,
        "mermaid" => out!("{}", dag.to_mermaid())?,
        other => {
            return Err(Error::Config {
                origin: "--format".into(),
                message: format!("'{other}' is not one of dot, mermaid"),
            })
        }
    }
    Ok(exit::SUCCESS)
}

fn run(file: &Path, resume: bool, force: bool, config: &Config) -> Result<u8, Error> {
    let registry = Registry::builtin();
    let wf = load_workflow(file, &registry)?;
    let intent = if resume {
        RunIntent::Resume {
            force,
            origin: file.display().to_string(),
        }
    } else {
        RunIntent::New
    };
    // A run directory the engine would refuse is refused before the state file is made.
    picoflow_lib::check_run_dir(&config.run_dir())?;
    let (store, plan) = open_for_run(&config.db_path, &wf, intent)?;
    let source = std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string();
    let (resume, stop_leftovers) = match plan {
        RunPlan::Resume(from) => {
            // Best effort, like all of `run`'s output: a closed viewer never stops a run.
            let _ = outln!("Resuming execution {} of '{}'", from.execution.id, wf.name);
            (Some(from), false)
        }
        RunPlan::New { stop_leftovers } => (None, stop_leftovers),
    };
    store.record_workflow(&wf.name, wf.schedule.as_deref(), Some(&source))?;
    let display = Arc::new(display::RunDisplay::new(
        std::io::stdout().is_terminal(),
        wf.handlers
            .all()
            .map(|(kind, t)| (t.name.clone(), kind))
            .collect(),
    ));
    let engine = Engine::new(registry)
        .with_settings(EngineSettings::from(config))
        .with_log_dir(config.logs.dir.clone())
        .with_run_dir(config.run_dir())
        .with_sink(store.sink())
        .with_sink(display.clone());
    let (canceller, cancel) = CancelToken::new();
    let mut signals = Signals::new()?;
    let opts = RunOptions {
        cancel,
        resume,
        source: Some(source),
        stop_leftovers,
        ..RunOptions::default()
    };
    let report = smol::block_on(async {
        let run = engine.run(&wf, opts);
        let watch = async {
            if signals.next().await.is_some() {
                canceller.cancel();
            }
            futures_lite::future::pending::<()>().await;
        };
        futures_lite::future::or(run, async {
            watch.await;
            unreachable!()
        })
        .await
    })?;
    display.summary(&report);
    Ok(match report.execution.status {
        WorkflowStatus::Success => exit::SUCCESS,
        WorkflowStatus::Interrupted => exit::INTERRUPTED,
        _ => exit::RUN_FAILED,
    })
}

fn prune(config: &Config, days: Option<u32>) -> Result<u8, Error> {
    let mut config = config.clone();
    if let Some(d) = days {
        config.logs.retention_days = d;
    }
    let store = Store::open(&config.db_path)?;
    let r = picoflow_lib::prune(&store, &config, chrono::Utc::now())?;
    outln!(
        "Pruned {} executions ({} task attempts) and {} log directories ({} bytes) older than {} days",
        r.executions, r.task_executions, r.log_dirs, r.log_bytes, config.logs.retention_days
    )?;
    if r.run_dirs > 0 {
        outln!(
            "Removed {} output directories that crashed runs left in {}",
            r.run_dirs,
            config.run_dir().display()
        )?;
    }
    Ok(exit::SUCCESS)
}

fn daemon_start(config: &Config, paths: Vec<PathBuf>, web: bool) -> Result<u8, Error> {
    // A device of a fleet may run only what its fleet gives it.
    if paths.is_empty() && !config.fleet.enabled() {
        return Err(Error::Config {
            origin: "daemon start".into(),
            message: "give one or more workflow files or directories (a daemon in a fleet \
                      may start without: [fleet] url)"
                .into(),
        });
    }
    let mut config = config.clone();
    config.web.enabled |= web;
    let daemon = picoflow_lib::Daemon::new(config, Registry::builtin(), paths);
    match smol::block_on(daemon.run())? {
        picoflow_lib::DaemonExit::Graceful => Ok(exit::SUCCESS),
        picoflow_lib::DaemonExit::Terminated => Ok(exit::INTERRUPTED),
    }
}

fn daemon_stop(config: &Config, timeout: Option<u64>) -> Result<u8, Error> {
    // A daemon gives its tasks shutdown_timeout_seconds, then stops them (SIGTERM, SIGKILL
    // two seconds later) and records them: by default the wait covers all of that.
    let timeout = timeout.unwrap_or(config.daemon.shutdown_timeout_seconds.saturating_add(30));
    if picoflow_lib::stop_daemon(config, std::time::Duration::from_secs(timeout))? {
        outln!("Daemon stopped")?;
        Ok(exit::SUCCESS)
    } else {
        outln!("Daemon Status: Not running")?;
        Ok(exit::GENERAL)
    }
}

/// The daemon's view of the system clock, for `daemon status`.
fn clock_line(clock: picoflow_lib::ClockStatus) -> String {
    use picoflow_lib::ClockStatus as C;
    match clock {
        C::Synced => "synced".into(),
        C::Unsynced => "unsynced (not waited for)".into(),
        C::Waiting {
            since,
            timeout_seconds,
        } => {
            let waited = (chrono::Utc::now() - since).num_seconds().max(0);
            format!(
                "waiting for synchronisation (since {waited} s, at most {timeout_seconds} s); \
                 no schedule fires until then"
            )
        }
        C::GaveUp { timeout_seconds } => format!(
            "unsynced (waited {timeout_seconds} s for synchronisation; scheduling from this clock)"
        ),
    }
}

fn daemon_status(config: &Config) -> Result<u8, Error> {
    let Some(st) = picoflow_lib::daemon_status(config)? else {
        outln!("Daemon Status: Not running")?;
        return Ok(exit::GENERAL);
    };
    let uptime = (chrono::Utc::now() - st.started_at).num_seconds().max(0) as u64;
    let (d, h, m) = (
        uptime / 86_400,
        (uptime % 86_400) / 3600,
        (uptime % 3600) / 60,
    );
    match st.stopping_since {
        // Starting no run: the next fire is not shown.
        Some(at) => outln!(
            "Daemon Status: Stopping (since {}; waiting for its running workflows)",
            picoflow_lib::views::local_time(at)
        )?,
        None => outln!("Daemon Status: Running")?,
    }
    outln!("PID: {}", st.pid)?;
    if d > 0 {
        outln!("Uptime: {d}d {h}h {m}m")?;
    } else if h > 0 {
        outln!("Uptime: {h}h {m}m")?;
    } else {
        outln!("Uptime: {m}m {}s", uptime % 60)?;
    }
    outln!("Workflows: {} loaded", st.workflows.len())?;
    for w in &st.workflows {
        match &w.schedule {
            Some(s) => {
                let tz = w
                    .timezone
                    .as_deref()
                    .map(|t| format!(", {t}"))
                    .unwrap_or_default();
                outln!("  - {} (cron: {s}{tz})", w.name)?;
            }
            None => outln!("  - {} (on demand)", w.name)?,
        }
    }
    if let Some((name, at)) = st.next_run().filter(|_| st.stopping_since.is_none()) {
        outln!(
            "Next scheduled run: {name} at {}",
            picoflow_lib::views::local_time(at)
        )?;
    }
    if let Some(b) = st.memory_bytes {
        outln!("Memory usage: {:.1} MB", b as f64 / 1_000_000.0)?;
    }
    if let Some(clock) = st.clock {
        outln!("Clock: {}", clock_line(clock))?;
    }
    #[cfg(feature = "fleet")]
    if let Some(f) = &st.fleet {
        let since = picoflow_lib::views::local_time(f.since);
        let link = format!("as {} to {} (since {since}", f.node, f.servers);
        match (f.connected, &f.problem, &f.error) {
            (true, None, _) => outln!("Fleet: connected {link})")?,
            (true, Some(p), _) => {
                outln!("Fleet: connected {link}), but {p}; working alone, retrying")?
            }
            (false, _, Some(e)) => {
                outln!("Fleet: not connected {link}; {e}); working alone, retrying")?
            }
            (false, _, None) => outln!("Fleet: not connected {link}); working alone, retrying")?,
        }
        if f.unsent > 0 {
            outln!("Fleet: {} executions' records not yet sent", f.unsent)?;
        }
    }
    Ok(exit::SUCCESS)
}

fn export_sqlite(
    config: &Config,
    file: &Path,
    workflow: Option<&str>,
    since: Option<&str>,
) -> Result<u8, Error> {
    let filter = picoflow_lib::HistoryFilter {
        workflow: workflow.map(String::from),
        since: report::parse_since(since)?,
        ..Default::default()
    };
    let (execs, store) = match Store::open_read(&config.db_path)? {
        Some(store) => (store.executions(&filter)?, Some(store)),
        None => (Vec::new(), None),
    };
    let r = picoflow_lib::export_sqlite(file, &execs, |id| match &store {
        Some(s) => s.task_executions(id),
        None => Ok(Vec::new()),
    })?;
    outln!(
        "Exported to {}: {} executions added, {} updated; {} task attempts added, {} updated",
        file.display(),
        r.executions_added,
        r.executions_updated,
        r.tasks_added,
        r.tasks_updated
    )?;
    Ok(exit::SUCCESS)
}
