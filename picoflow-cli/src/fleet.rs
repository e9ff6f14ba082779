//! `picoflow fleet …`: the operator's commands over the fleet (the `fleet` feature). In a
//! build without it every subcommand says so (exit 4).
// Without the feature the arguments are parsed (so `--help` is the same) but not read.
#![cfg_attr(not(feature = "fleet"), allow(dead_code))]

use std::path::PathBuf;

use argh::FromArgs;

/// Many devices over NATS JetStream: nodes, roll-outs, runs and results ([fleet] url in the
/// configuration, or PICOFLOW_FLEET_URL). Exit 7 when no fleet server answers.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "fleet")]
pub(crate) struct FleetArgs {
    #[argh(subcommand)]
    pub(crate) command: FleetCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum FleetCommand {
    Nodes(NodesArgs),
    Forget(ForgetArgs),
    Apply(ApplyArgs),
    Remove(RemoveArgs),
    Workflows(WorkflowsArgs),
    Run(FleetRunArgs),
    Status(FleetStatusArgs),
    History(FleetHistoryArgs),
}

/// List the nodes of the fleet with their inventory; those not heard from within three
/// heartbeats are marked.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "nodes")]
pub(crate) struct NodesArgs {
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Forget a node that no longer reports (a retired device): its inventory record and its
/// reports of applied workflows go; its execution records stay in the results stream until
/// the stream's limits remove them. Exit 5 when the fleet has no such node, 1 when the node
/// is still heard from (its daemon would report again: stop it first).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "forget")]
pub(crate) struct ForgetArgs {
    /// node name
    #[argh(positional)]
    pub(crate) node: String,
}

/// Validate workflow files here (exit 2, nothing published, when one is invalid) and publish
/// them to the nodes of a target; each node validates them again and runs them beside its
/// local workflows (a local file of the same name wins). Nodes that are off apply them when
/// they next connect.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "apply")]
pub(crate) struct ApplyArgs {
    /// target: all (default), a label or a node name
    #[argh(option, default = "String::from(\"all\")")]
    pub(crate) to: String,
    /// workflow files
    #[argh(positional)]
    pub(crate) files: Vec<PathBuf>,
}

/// Stop publishing a workflow (to one target, or to every target): the nodes remove it.
/// Exit 5 when it is not published (to that target).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub(crate) struct RemoveArgs {
    /// only the publication to this target
    #[argh(option)]
    pub(crate) to: Option<String>,
    /// workflow name
    #[argh(positional)]
    pub(crate) name: String,
}

/// Show each published workflow, its target and revision, and per node the revision it
/// applied or why it refused it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "workflows")]
pub(crate) struct WorkflowsArgs {
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Start a workflow now on every node of a target (the overlap rule of a scheduled fire
/// applies on each). Exit 0 when every node started it (and, with --wait, it succeeded
/// everywhere), 3 when a node refused (busy, no such workflow) or a run failed, 5 when no
/// connected node has the target, 8 when a node did not answer within --answer-timeout or a
/// run did not end within --timeout.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub(crate) struct FleetRunArgs {
    /// target: all (default), a label or a node name
    #[argh(option, default = "String::from(\"all\")")]
    pub(crate) on: String,
    /// wait for every run to end and show each node's result as it arrives
    #[argh(switch)]
    pub(crate) wait: bool,
    /// seconds to wait for the nodes' answers (default 5)
    #[argh(option, default = "5")]
    pub(crate) answer_timeout: u64,
    /// with --wait, seconds to wait for the runs to end (default 3600)
    #[argh(option, default = "3600")]
    pub(crate) timeout: u64,
    /// workflow name
    #[argh(positional)]
    pub(crate) workflow: String,
}

/// Show the latest execution of each workflow on each node.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub(crate) struct FleetStatusArgs {
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only this node
    #[argh(option)]
    pub(crate) node: Option<String>,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

/// Show executions across the fleet, newest first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub(crate) struct FleetHistoryArgs {
    /// only this node
    #[argh(option)]
    pub(crate) node: Option<String>,
    /// only this workflow
    #[argh(option)]
    pub(crate) workflow: Option<String>,
    /// only this status: success, failed, running, interrupted
    #[argh(option)]
    pub(crate) status: Option<String>,
    /// only executions started on or after this date (YYYY-MM-DD) or this long ago (7d, 24h)
    #[argh(option)]
    pub(crate) since: Option<String>,
    /// at most this many (default 50)
    #[argh(option, default = "50")]
    pub(crate) limit: usize,
    /// output format: table or json (default table)
    #[argh(option, default = "String::from(\"table\")")]
    pub(crate) format: String,
}

#[cfg(not(feature = "fleet"))]
pub(crate) fn dispatch(
    _: FleetCommand,
    _: &picoflow_lib::Config,
) -> Result<u8, picoflow_lib::Error> {
    Err(picoflow_lib::Error::Config {
        origin: "command line".into(),
        message: "this PicoFlow is built without the 'fleet' feature".into(),
    })
}

#[cfg(feature = "fleet")]
pub(crate) use enabled::dispatch;

#[cfg(feature = "fleet")]
mod enabled {
    use std::time::Duration;

    use picoflow_lib::fleet::{ExecutionReport, Executions, FleetClient, RunResult};
    use picoflow_lib::{views, Config, Error, Registry, TaskState, WorkflowStatus};
    use serde_json::json;

    use super::FleetCommand;
    use crate::display::human_duration;
    use crate::exit;
    use crate::out::outln;
    use crate::report::{check_format, parse_since};

    pub(crate) fn dispatch(command: FleetCommand, config: &Config) -> Result<u8, Error> {
        // Check the arguments before connecting.
        let format = match &command {
            FleetCommand::Nodes(a) => Some(a.format.as_str()),
            FleetCommand::Workflows(a) => Some(a.format.as_str()),
            FleetCommand::Status(a) => Some(a.format.as_str()),
            FleetCommand::History(a) => Some(a.format.as_str()),
            _ => None,
        };
        let json_out = format.map(check_format).transpose()?.unwrap_or(false);
        if let FleetCommand::Apply(a) = &command {
            if a.files.is_empty() {
                return Err(Error::Config {
                    origin: "command line".into(),
                    message: "fleet apply needs one or more workflow files".into(),
                });
            }
        }
        let since = match &command {
            FleetCommand::History(a) => parse_since(a.since.as_deref())?,
            _ => None,
        };
        let status = match &command {
            FleetCommand::History(a) => a
                .status
                .as_deref()
                .map(|s| {
                    WorkflowStatus::parse(s).ok_or_else(|| Error::Config {
                        origin: "--status".into(),
                        message: format!(
                            "'{s}' is not one of success, failed, running, interrupted"
                        ),
                    })
                })
                .transpose()?,
            _ => None,
        };
        let fleet = FleetClient::connect(&config.fleet)?;
        match command {
            FleetCommand::Nodes(_) => nodes(&fleet, json_out),
            FleetCommand::Apply(a) => {
                let applied = fleet.apply(&a.files, &a.to, &Registry::builtin())?;
                for (name, rev) in applied {
                    outln!("Published '{name}' to {} (revision {rev})", a.to)?;
                }
                Ok(exit::SUCCESS)
            }
            FleetCommand::Remove(a) => {
                let n = fleet.remove(&a.name, a.to.as_deref())?;
                if n == 0 {
                    return Err(Error::NotFound(format!(
                        "workflow '{}' is not published{}",
                        a.name,
                        a.to.map(|t| format!(" to {t}")).unwrap_or_default()
                    )));
                }
                outln!(
                    "Removed '{}' ({n} publication{})",
                    a.name,
                    if n == 1 { "" } else { "s" }
                )?;
                Ok(exit::SUCCESS)
            }
            FleetCommand::Forget(a) => {
                let reports = fleet.forget(&a.node)?;
                outln!(
                    "Forgot node '{}' (its inventory record and {reports} report{} of applied \
                     workflows); its execution records stay in the results stream",
                    shown(&a.node),
                    if reports == 1 { "" } else { "s" }
                )?;
                Ok(exit::SUCCESS)
            }
            FleetCommand::Workflows(_) => workflows(&fleet, json_out),
            FleetCommand::Run(a) => run(&fleet, &a),
            FleetCommand::Status(a) => {
                let reports = fleet.executions(&Executions {
                    node: a.node.as_deref(),
                    workflow: a.workflow.as_deref(),
                    latest_only: true,
                    ..Default::default()
                })?;
                executions(&reports, json_out, usize::MAX)
            }
            FleetCommand::History(a) => {
                let mut reports = fleet.executions(&Executions {
                    node: a.node.as_deref(),
                    workflow: a.workflow.as_deref(),
                    status,
                    since,
                    latest_only: false,
                    limit: Some(a.limit),
                })?;
                reports.reverse();
                executions(&reports, json_out, a.limit)
            }
        }
    }

    fn nodes(fleet: &FleetClient, json_out: bool) -> Result<u8, Error> {
        let nodes = fleet.nodes()?;
        if json_out {
            let v: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let mut j = serde_json::to_value(&n.record).unwrap_or_default();
                    j["alive"] = json!(n.alive);
                    j
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
            return Ok(exit::SUCCESS);
        }
        if nodes.is_empty() {
            outln!("No nodes have reported.")?;
            return Ok(exit::SUCCESS);
        }
        outln!(
            "{:<20} {:<8} {:<20} {:<8} {:>7} {:>9} {:>9} {:>6} {:>4}  {}",
            "NODE",
            "STATE",
            "LABELS",
            "ARCH",
            "LOAD",
            "MEM FREE",
            "DISK FREE",
            "TEMP",
            "RUN",
            "LAST HEARD"
        )?;
        for n in &nodes {
            let r = &n.record;
            let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{} MB", b / 1_000_000));
            outln!(
                "{:<20} {:<8} {:<20} {:<8} {:>7} {:>9} {:>9} {:>6} {:>4}  {}",
                shown(&r.node),
                if n.alive { "up" } else { "silent" },
                shown(&r.labels.join(",")),
                shown(&r.arch),
                r.load1.map_or("-".into(), |l| format!("{l:.2}")),
                mb(r.memory_available_bytes),
                mb(r.disk_free_bytes),
                r.cpu_temperature_celsius
                    .map_or("-".into(), |t| format!("{t:.0}°C")),
                r.running,
                views::local_time(r.heartbeat),
            )?;
        }
        Ok(exit::SUCCESS)
    }

    fn workflows(fleet: &FleetClient, json_out: bool) -> Result<u8, Error> {
        let (desired, applied) = fleet.workflows()?;
        if json_out {
            let v = json!({
                "published": desired.iter().map(|d| json!({
                    "workflow": d.workflow, "target": d.target, "revision": d.revision,
                    "file": d.file, "published_at": d.published_at,
                })).collect::<Vec<_>>(),
                "nodes": applied,
            });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
            return Ok(exit::SUCCESS);
        }
        if desired.is_empty() && applied.is_empty() {
            outln!("No workflows are published.")?;
            return Ok(exit::SUCCESS);
        }
        let mut names: Vec<&str> = desired
            .iter()
            .map(|d| d.workflow.as_str())
            .chain(applied.iter().map(|a| a.workflow.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let pubs: Vec<_> = desired.iter().filter(|d| d.workflow == name).collect();
            if pubs.is_empty() {
                outln!("{} (not published)", shown(name))?;
            }
            for d in &pubs {
                let when = d
                    .published_at
                    .map(|t| format!(" published {}", views::local_time(t)))
                    .unwrap_or_default();
                outln!(
                    "{} → {} (revision {}, {}{when})",
                    d.workflow,
                    d.target,
                    d.revision,
                    shown(&d.file)
                )?;
            }
            // Every node's report, under its workflow whichever publication it took.
            for a in applied.iter().filter(|a| a.workflow == name) {
                let publication = pubs.iter().find(|d| d.target == a.target);
                let mut line = format!(
                    "    {:<20} {} revision {}",
                    shown(&a.node),
                    shown(&a.status),
                    a.revision
                );
                match publication {
                    Some(d) if d.revision != a.revision => line.push_str(" (older)"),
                    Some(_) => {}
                    None if a.status != "removed" => line.push_str(" (withdrawn)"),
                    None => {}
                }
                if pubs.len() > 1 {
                    line.push_str(&format!(" via {}", shown(&a.target)));
                }
                if let Some(e) = &a.error {
                    line.push_str(&format!(": {}", shown(e)));
                }
                outln!("{line}")?;
            }
        }
        Ok(exit::SUCCESS)
    }

    /// A text received from the fleet as the tables show it: control characters (escape
    /// sequences, line breaks) written as `\u{…}`, so that no node can draw on the operator's
    /// terminal or forge rows.
    fn shown(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn control_characters_from_the_fleet_are_shown_escaped() {
        assert_eq!(shown("pi-1"), "pi-1");
        assert_eq!(shown("evil\u{1b}[2J"), "evil\\u{1b}[2J");
        assert_eq!(shown("x86_64\r\npi9 up"), "x86_64\\u{d}\\u{a}pi9 up");
    }

    fn result_line(r: &RunResult) -> String {
        match (&r.answer, &r.report) {
            (None, _) => format!("{:<20} no answer", shown(&r.node)),
            (Some(a), None) if a.answer == "started" => format!(
                "{:<20} started (execution {})",
                shown(&r.node),
                shown(a.execution.as_deref().unwrap_or("?"))
            ),
            (Some(a), None) => format!(
                "{:<20} {}",
                shown(&r.node),
                shown(&a.answer.replace('_', " "))
            ),
            (Some(_), Some(rep)) => format!(
                "{:<20} {}{} (execution {}){}",
                shown(&r.node),
                rep.execution.status.as_str(),
                rep.execution
                    .duration_seconds
                    .map(|d| format!(" in {}", human_duration(d)))
                    .unwrap_or_default(),
                shown(&rep.execution.id),
                why_failed(rep)
            ),
        }
    }

    /// For a run that did not succeed, its last task attempt that failed or timed out:
    /// `: task 'copy' failed (exit code 2): …`.
    fn why_failed(rep: &ExecutionReport) -> String {
        if rep.execution.status == WorkflowStatus::Success {
            return String::new();
        }
        let Some(t) = rep
            .tasks
            .iter()
            .rev()
            .find(|t| matches!(t.status, TaskState::Failed | TaskState::Timeout))
        else {
            return String::new();
        };
        let code = t
            .exit_code
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default();
        let error = t
            .error_message
            .as_deref()
            .map(|e| format!(": {}", shown(e)))
            .unwrap_or_default();
        format!(
            ": task '{}' {}{code}{error}",
            shown(&t.task_name),
            t.status.as_str()
        )
    }

    fn run(fleet: &FleetClient, a: &super::FleetRunArgs) -> Result<u8, Error> {
        let wait = a.wait.then(|| Duration::from_secs(a.timeout));
        let results = fleet.run(
            &a.workflow,
            &a.on,
            Duration::from_secs(a.answer_timeout),
            wait,
            |r| {
                let _ = outln!("{}", result_line(r));
            },
        )?;
        if results.is_empty() {
            outln!("No node of '{}' answered.", a.on)?;
            return Ok(exit::TIMEOUT);
        }
        let mut failed = 0;
        let mut silent = 0;
        let mut ok = 0;
        for r in &results {
            match (&r.answer, &r.report) {
                (None, _) => {
                    silent += 1;
                    if a.wait {
                        outln!("{}", result_line(r))?;
                    }
                }
                (Some(ans), _) if ans.answer != "started" => failed += 1,
                (Some(_), None) if a.wait => {
                    silent += 1;
                    outln!("{:<20} did not end within {} s", r.node, a.timeout)?;
                }
                (Some(_), Some(rep)) if rep.execution.status != WorkflowStatus::Success => {
                    failed += 1
                }
                _ => ok += 1,
            }
        }
        if !a.wait {
            for r in results.iter().filter(|r| r.answer.is_none()) {
                outln!("{}", result_line(r))?;
            }
        }
        outln!(
            "{} node{}: {ok} {}, {failed} failed or refused, {silent} without an answer or a result in time",
            results.len(),
            if results.len() == 1 { "" } else { "s" },
            if a.wait { "succeeded" } else { "started" }
        )?;
        Ok(if failed > 0 {
            exit::RUN_FAILED
        } else if silent > 0 {
            exit::TIMEOUT
        } else {
            exit::SUCCESS
        })
    }

    fn executions(reports: &[ExecutionReport], json_out: bool, limit: usize) -> Result<u8, Error> {
        let listed = reports.iter().take(limit);
        if json_out {
            let v: Vec<_> = listed.clone().collect();
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
            return Ok(exit::SUCCESS);
        }
        if reports.is_empty() {
            outln!("No executions reported.")?;
            return Ok(exit::SUCCESS);
        }
        outln!(
            "{:<20} {:<24} {:<12} {:<20} {:>9} {:>6}  {}",
            "NODE",
            "WORKFLOW",
            "STATUS",
            "STARTED",
            "DURATION",
            "TASKS",
            "EXECUTION"
        )?;
        for r in listed {
            let e = &r.execution;
            outln!(
                "{:<20} {:<24} {:<12} {:<20} {:>9} {:>6}  {}",
                shown(&r.node),
                shown(&e.workflow_name),
                e.status.as_str(),
                views::local_time(e.started_at),
                e.duration_seconds.map_or("-".into(), human_duration),
                format!("{}/{}", e.successful_tasks, e.total_tasks),
                shown(&e.id)
            )?;
        }
        Ok(exit::SUCCESS)
    }
}
