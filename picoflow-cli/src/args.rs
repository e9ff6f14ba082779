//! Command-line arguments (argh).

use std::path::PathBuf;

use argh::FromArgs;

/// PicoFlow: a small DAG workflow orchestrator for edge devices.
///
/// Global options may be given before or after the command.
#[derive(FromArgs, Debug)]
#[argh(
    note = "Output into a pipe that closes early (`| head`) ends a command quietly with\nstatus 0; `run` goes on to the end of its workflow and exits with the run's code.",
    error_code(0, "success"),
    error_code(
        1,
        "general error (another daemon runs on the state file; daemon not running)"
    ),
    error_code(2, "invalid workflow file"),
    error_code(3, "a task failed (run)"),
    error_code(4, "bad configuration or arguments"),
    error_code(5, "not found (a file, a log, an execution to resume) or I/O error"),
    error_code(6, "state file error (damaged, full disk)"),
    error_code(7, "network error (the web UI cannot listen)"),
    error_code(8, "timeout (daemon stop: the daemon did not stop in time)"),
    error_code(9, "interrupted by SIGINT/SIGTERM")
)]
pub(crate) struct Cli {
    /// log level: error, warn, info, debug, trace (env PICOFLOW_LOG_LEVEL; default info)
    #[argh(option, short = 'l')]
    pub(crate) log_level: Option<String>,
    /// log format: json or pretty (env PICOFLOW_LOG_FORMAT; default json)
    #[argh(option)]
    pub(crate) log_format: Option<String>,
    /// state file (env PICOFLOW_DB_PATH; default picoflow.redb)
    #[argh(option)]
    pub(crate) db_path: Option<PathBuf>,
    /// configuration file (default: ./picoflow.toml, ~/.config/picoflow/config.toml, /etc/picoflow/config.toml)
    #[argh(option)]
    pub(crate) config: Option<PathBuf>,
    /// print the version and the compiled-in features
    #[argh(switch, short = 'V')]
    pub(crate) version: bool,
    #[argh(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum Command {
    Validate(ValidateArgs),
    Init(InitArgs),
    Graph(GraphArgs),
    Run(RunArgs),
    Status(StatusArgs),
    History(HistoryArgs),
    Stats(StatsArgs),
    Logs(LogsArgs),
    Workflow(WorkflowArgs),
    Daemon(DaemonArgs),
    Prune(PruneArgs),
    Export(ExportArgs),
    #[cfg(feature = "fleet")]
    Fleet(crate::fleet::FleetArgs),
}

/// Check a workflow file (or every *.yaml in a directory): syntax, fields, dependencies,
/// cycles, schedule. Exit 0 valid, 2 invalid, 5 file not found.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "validate")]
pub(crate) struct ValidateArgs {
    /// workflow file or directory
    #[argh(positional)]
    pub(crate) path: PathBuf,
}

/// Write a starter workflow NAME.yaml into the current directory (never overwrites).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
pub(crate) struct InitArgs {
    /// workflow name (default my-workflow)
    #[argh(positional)]
    pub(crate) name: Option<String>,
    /// template: minimal, shell, ssh, http, full, data, edge (default minimal)
    #[argh(option, default = "String::from(\"minimal\")")]
    pub(crate) template: String,
}

/// Print a workflow's task graph as Graphviz DOT or Mermaid.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "graph")]
pub(crate) struct GraphArgs {
    /// workflow file
    #[argh(positional)]
    pub(crate) file: PathBuf,
    /// output format: dot or mermaid (default dot)
    #[argh(option, default = "String::from(\"dot\")")]
    pub(crate) format: String,
}

/// Run a workflow once. Exit 0 success, 3 a task failed, 2 invalid, 4 --resume of an
/// execution whose workflow changed (without --force), 5 file not found (or, with --resume,
/// no interrupted execution), 6 the state file cannot be written (e.g. a full disk),
/// 9 interrupted by SIGINT/SIGTERM.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "run",
    note = "Tasks get PICOFLOW_WORKFLOW, PICOFLOW_EXECUTION_ID, PICOFLOW_TASK, PICOFLOW_ATTEMPT\nand PICOFLOW_OWNER in their environment. A task's process dies with picoflow; what\na crashed run left running is stopped before --resume (or the next run) starts a task."
)]
pub(crate) struct RunArgs {
    /// workflow file
    #[argh(positional)]
    pub(crate) file: PathBuf,
    /// continue the latest interrupted execution of this workflow instead of starting anew
    #[argh(switch)]
    pub(crate) resume: bool,
    /// with --resume: continue even though the workflow changed since the execution started
    /// (without it such a resume is refused, exit 4)
    #[argh(switch)]
    pub(crate) force: bool,
}

/// Show the current or last execution of each workflow with its tasks (✓ done, ⟳ running,
/// ○ pending, ✗ failed).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub(crate) struct StatusArgs {
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only running executions
    #[argh(switch)]
    pub(crate) running_only: bool,
    /// redraw every 2 seconds until interrupted (Ctrl+C)
    #[argh(switch)]
    pub(crate) watch: bool,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// List past executions, newest first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub(crate) struct HistoryArgs {
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only this status: success, failed, running, interrupted
    #[argh(option)]
    pub(crate) status: Option<String>,
    /// at most N executions (default 10)
    #[argh(option, default = "10")]
    pub(crate) limit: usize,
    /// only executions started on or after this date (YYYY-MM-DD) or this long ago (7d, 24h)
    #[argh(option)]
    pub(crate) since: Option<String>,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Success rates, durations and failures per workflow and task.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stats")]
pub(crate) struct StatsArgs {
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// the last N days (default 30)
    #[argh(option, default = "30")]
    pub(crate) period: u32,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Show task output of the latest (or a given) execution. Exit 5 when there is none.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub(crate) struct LogsArgs {
    /// workflow name (or give it as the first positional argument)
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only this task
    #[argh(option)]
    pub(crate) task: Option<String>,
    /// this execution instead of the latest
    #[argh(option)]
    pub(crate) execution_id: Option<String>,
    /// show the last N lines of each log (default 100)
    #[argh(option, default = "100")]
    pub(crate) tail: usize,
    /// keep printing new output until the execution finishes
    #[argh(switch)]
    pub(crate) follow: bool,
    /// positional form: WORKFLOW [TASK]
    #[argh(positional)]
    pub(crate) positional: Vec<String>,
}

/// Workflows known to the state file.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "workflow")]
pub(crate) struct WorkflowArgs {
    #[argh(subcommand)]
    pub(crate) command: WorkflowCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum WorkflowCommand {
    List(WorkflowListArgs),
}

/// List workflows with their schedule, last run and counts: every scheduled workflow (it will
/// run) and every other one that ran in the last 30 days.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct WorkflowListArgs {
    /// also the inactive ones: workflows without a schedule that did not run in the last 30
    /// days
    #[argh(switch)]
    pub(crate) all: bool,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Run scheduled workflows in the foreground, or manage the running daemon.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "daemon")]
pub(crate) struct DaemonArgs {
    #[argh(subcommand)]
    pub(crate) command: DaemonCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum DaemonCommand {
    Start(DaemonStartArgs),
    Stop(DaemonStopArgs),
    Status(DaemonStatusArgs),
}

/// Start the daemon in the foreground with one or more workflow files or directories (none
/// on a device of a fleet that runs only what the fleet gives it).
/// Exit 0 after a graceful stop, 9 when running tasks had to be terminated at shutdown. When it
/// cannot start, the code says why (see `picoflow --help`): 1 another daemon runs on this
/// state file, 2 an invalid workflow (or several files that cannot be loaded), 4 bad
/// configuration, 5 a file not found, 6 the state file, 7 the web UI cannot listen on its
/// address.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "start")]
pub(crate) struct DaemonStartArgs {
    /// serve the web UI and API (as [web] enabled = true): http://127.0.0.1:9090/ by default;
    /// a [web] bind beyond the loopback needs require_token_for_reads = true (else exit 4)
    #[argh(switch)]
    pub(crate) web: bool,
    /// workflow files or directories
    #[argh(positional)]
    pub(crate) paths: Vec<PathBuf>,
}

/// Stop the daemon of this state file (SIGTERM, then wait up to --timeout seconds). Exit 0
/// stopped, 1 not running, 8 still running after --timeout seconds.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stop")]
pub(crate) struct DaemonStopArgs {
    /// seconds to wait for the daemon to exit (default: [daemon] shutdown_timeout_seconds
    /// plus 30, the time its tasks get to finish and then to be stopped)
    #[argh(option)]
    pub(crate) timeout: Option<u64>,
}

/// Show whether the daemon of this state file runs. Exit 0 running, 1 not running.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub(crate) struct DaemonStatusArgs {}

/// Delete history and task logs older than [logs] retention_days (default 30), keep the
/// log directory under [logs] max_size_mb, and remove the output directories crashed runs
/// left beside the state file.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "prune")]
pub(crate) struct PruneArgs {
    /// override the retention in days
    #[argh(option)]
    pub(crate) days: Option<u32>,
}

/// Export history to another format.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
pub(crate) struct ExportArgs {
    #[argh(subcommand)]
    pub(crate) command: ExportCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum ExportCommand {
    Sqlite(ExportSqliteArgs),
}

/// Write the history into a SQLite file with the documented schema (needs the `sqlite`
/// feature). Exporting again adds only what is new. Exit 5 when the file cannot be written,
/// 4 when it exists and is not an export (or the build lacks `sqlite`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sqlite")]
pub(crate) struct ExportSqliteArgs {
    /// target SQLite file
    #[argh(positional)]
    pub(crate) file: PathBuf,
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only executions started on or after this date (YYYY-MM-DD) or this long ago (7d, 24h)
    #[argh(option)]
    pub(crate) since: Option<String>,
}

/// Options that take a value and may appear anywhere on the command line.
const GLOBAL_WITH_VALUE: [&str; 5] = ["-l", "--log-level", "--log-format", "--db-path", "--config"];

/// Moves global options found after the command in front of it, so that both
/// `picoflow --log-level debug run x.yaml` and `picoflow run --log-level debug x.yaml` work.
pub(crate) fn hoist_globals(argv: &[String]) -> Vec<String> {
    let mut front = Vec::new();
    let mut rest = Vec::new();
    let mut seen_command = false;
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            rest.extend(argv[i..].iter().cloned());
            break;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (a.as_str(), None),
        };
        if GLOBAL_WITH_VALUE.contains(&flag) {
            front.push(flag.to_string());
            match inline {
                Some(v) => front.push(v.to_string()),
                None => {
                    if let Some(v) = argv.get(i + 1) {
                        front.push(v.clone());
                        i += 1;
                    }
                }
            }
        } else if !seen_command && (a == "-V" || a == "--version") {
            front.push(a.clone());
        } else {
            if !a.starts_with('-') {
                seen_command = true;
            }
            rest.push(a.clone());
        }
        i += 1;
    }
    front.extend(rest);
    front
}

pub(crate) fn parse(argv: &[String]) -> Cli {
    let args = hoist_globals(argv);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    match Cli::from_args(&["picoflow"], &refs) {
        Ok(cli) => cli,
        Err(early) => match early.status {
            // `--help` into a closed pipe ends quietly, like every other output.
            Ok(()) => {
                let _ = crate::out::outln!("{}", early.output);
                std::process::exit(crate::exit::SUCCESS.into());
            }
            Err(()) => {
                crate::out::errln!("{}", early.output);
                std::process::exit(crate::exit::CONFIG.into());
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn globals_after_the_command_are_hoisted() {
        let out = hoist_globals(&v("picoflow run --log-level debug x.yaml"));
        assert_eq!(out, v("--log-level debug run x.yaml"));
        let out = hoist_globals(&v("picoflow run --db-path=/tmp/a x.yaml"));
        assert_eq!(out, v("--db-path /tmp/a run x.yaml"));
    }

    #[test]
    fn parses_run() {
        let args = hoist_globals(&v("picoflow -l warn run --resume w.yaml"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let cli = Cli::from_args(&["picoflow"], &refs).unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("warn"));
        match cli.command {
            Some(Command::Run(r)) => assert!(r.resume),
            other => panic!("{other:?}"),
        }
    }
}
