//! Command-line arguments (argh).

use std::path::PathBuf;

use argh::FromArgs;

/// PicoFlow: a small DAG workflow orchestrator for edge devices.
///
/// Global options may be given before or after the command.
#[derive(FromArgs, Debug)]
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
    /// template: minimal, shell, ssh, http, full (default minimal)
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

/// Run a workflow once. Exit 0 success, 3 a task failed, 2 invalid, 5 file not found,
/// 9 interrupted by SIGINT/SIGTERM.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub(crate) struct RunArgs {
    /// workflow file
    #[argh(positional)]
    pub(crate) file: PathBuf,
    /// continue the latest interrupted execution of this workflow instead of starting anew
    #[argh(switch)]
    pub(crate) resume: bool,
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
            Ok(()) => {
                println!("{}", early.output);
                std::process::exit(0);
            }
            Err(()) => {
                eprintln!("{}", early.output);
                std::process::exit(4);
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
