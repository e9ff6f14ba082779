//! The read commands: `status`, `history`, `stats`, `logs`, `workflow list`. They open the
//! state file read-only, so they work while a daemon or a `run` writes to it.

use crate::out::{errln, out, outln};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use picoflow_lib::views::{
    self, in_workflow_order, local_time as local, planned_tasks, WorkflowSummary,
};
use picoflow_lib::{
    compute_stats, execution_log_dir, last_attempts, task_log_path, Config, Error, HistoryFilter,
    SkipReason, Store, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus,
};
use serde_json::json;

use crate::display::human_duration;

/// Exit code when the asked-for workflow, execution or log does not exist.
const EXIT_NOT_FOUND: u8 = 5;

fn open(config: &Config) -> Result<Option<Store>, Error> {
    Store::open_read(&config.db_path)
}

fn capitalized(s: WorkflowStatus) -> String {
    let s = s.as_str();
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

pub(crate) fn check_format(format: &str) -> Result<bool, Error> {
    match format {
        "table" => Ok(false),
        "json" => Ok(true),
        other => Err(Error::Config {
            origin: "--format".into(),
            message: format!("'{other}' is not one of table, json"),
        }),
    }
}

/// Parses `--since YYYY-MM-DD` as local midnight.
pub(crate) fn parse_since(since: Option<&str>) -> Result<Option<DateTime<Utc>>, Error> {
    since.map(|s| views::parse_since(s, "--since")).transpose()
}

pub(crate) fn status(
    config: &Config,
    workflow: Option<&str>,
    running_only: bool,
    format: &str,
) -> Result<u8, Error> {
    let json_out = check_format(format)?;
    let Some(store) = open(config)? else {
        if json_out {
            outln!("[]")?;
        } else {
            outln!("No executions recorded yet ({}).", config.db_path.display())?;
        }
        return Ok(crate::exit::SUCCESS);
    };
    let names: Vec<String> = match workflow {
        Some(w) => vec![w.to_string()],
        None => store.workflows()?.into_iter().map(|w| w.name).collect(),
    };
    let mut shown = Vec::new();
    for name in &names {
        if let Some(e) = store.latest_execution(name)? {
            if !running_only || e.status == WorkflowStatus::Running {
                let tasks = store.task_executions(&e.id)?;
                shown.push((e, tasks));
            }
        }
    }
    if let (Some(w), true) = (workflow, shown.is_empty() && !running_only) {
        errln!("error: no executions of workflow '{w}'");
        return Ok(EXIT_NOT_FOUND);
    }
    if json_out {
        let v: Vec<_> = shown
            .iter()
            .map(|(e, t)| views::execution_json(e, t))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(crate::exit::SUCCESS);
    }
    if shown.is_empty() {
        outln!(
            "{}",
            if running_only {
                "No running workflows."
            } else {
                "No executions recorded yet."
            }
        )?;
    }
    let now = Utc::now();
    for (i, (e, tasks)) in shown.iter().enumerate() {
        if i > 0 {
            outln!()?;
        }
        outln!("Workflow: {}", e.workflow_name)?;
        outln!("Execution: {}", e.id)?;
        outln!("Status: {}", capitalized(e.status))?;
        outln!("Started: {}", local(e.started_at))?;
        match (e.status, views::ran_for(e, tasks)) {
            (WorkflowStatus::Interrupted, Some(d)) if e.duration_seconds.is_none() => outln!(
                "Duration: at least {} (its process died; that is when it last recorded a step)",
                human_duration(d)
            )?,
            (WorkflowStatus::Running, _) | (_, None) => outln!(
                "Elapsed: {}",
                human_duration((now - e.started_at).num_milliseconds().max(0) as f64 / 1000.0)
            )?,
            (_, Some(d)) => outln!("Duration: {}", human_duration(d))?,
        }
        outln!()?;
        outln!("Tasks:")?;
        let (planned, handlers) = views::planned(e);
        let planned: Vec<String> = planned
            .into_iter()
            .chain(handlers.iter().map(|(_, n)| n.clone()))
            .collect();
        let last = in_workflow_order(last_attempts(tasks), &planned);
        let mut rows: Vec<(String, String, String)> = last
            .iter()
            .map(|t| {
                let (mark, what) = match t.status {
                    TaskState::Success => (
                        "✓",
                        format!(
                            "completed in {}",
                            human_duration(t.duration_seconds.unwrap_or(0.0))
                        ),
                    ),
                    TaskState::Running if e.status == WorkflowStatus::Running => (
                        "⟳",
                        format!(
                            "running for {}",
                            human_duration(
                                (now - t.started_at).num_milliseconds().max(0) as f64 / 1000.0
                            )
                        ),
                    ),
                    TaskState::Running => ("✗", "interrupted".to_string()),
                    TaskState::Failed if t.interrupted() => ("✗", "interrupted".to_string()),
                    TaskState::Retrying => ("⟳", format!("retrying after attempt {}", t.attempt)),
                    TaskState::Timeout => ("✗", "timed out".to_string()),
                    TaskState::Failed => (
                        "✗",
                        match (t.exit_code, t.error_message.as_deref()) {
                            (Some(c), _) => format!("failed, exit code {c}"),
                            // An unmet requirement says which guard and what it found.
                            (None, Some(m)) if m.starts_with(SkipReason::UNMET) => {
                                format!("failed: {m}")
                            }
                            (None, _) => "failed".to_string(),
                        },
                    ),
                    // A condition or rule that skipped a task is said; a failure upstream
                    // is the user guide's plain "skipped".
                    TaskState::Skipped => match t.skip_reason() {
                        Some(r) if r.is_by_definition() => ("-", r.message()),
                        _ => ("-", "skipped".to_string()),
                    },
                    TaskState::Pending => ("○", "pending".to_string()),
                };
                (mark.to_string(), t.task_name.clone(), what)
            })
            .collect();
        // Handlers are said to be ones: they never change the execution's result.
        for row in rows.iter_mut() {
            if let Some((kind, _)) = handlers.iter().find(|(_, n)| *n == row.1) {
                row.2.push_str(&format!("; {kind} handler"));
            }
        }
        for (i, name) in planned.into_iter().enumerate() {
            // A loop is shown by its items (`NAME[item]`) once it has some.
            if !rows.iter().any(|r| views::is_attempt_of(&r.1, &name)) {
                let what = if e.status == WorkflowStatus::Running {
                    "pending"
                } else {
                    "not run"
                };
                rows.insert(i.min(rows.len()), ("○".into(), name, what.into()));
            }
        }
        let width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        for (mark, name, what) in rows {
            outln!("  {mark} {name:<width$} ({what})")?;
        }
    }
    Ok(crate::exit::SUCCESS)
}

/// `status --watch`: redraws the status every 2 seconds until SIGINT or SIGTERM.
pub(crate) fn watch_status(
    config: &Config,
    workflow: Option<&str>,
    running_only: bool,
    format: &str,
) -> Result<u8, Error> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut signals = picoflow_lib::Signals::new()?;
    loop {
        if tty {
            // Clear the screen and go home, like `watch`.
            out!("\x1b[2J\x1b[H")?;
        } else {
            outln!("--- {} ---", Local::now().format("%Y-%m-%d %H:%M:%S"))?;
        }
        status(config, workflow, running_only, format)?;
        crate::out::flush()?;
        let stop = smol::block_on(futures_lite::future::or(
            async { signals.next().await.is_some() },
            async {
                smol::Timer::after(Duration::from_secs(2)).await;
                false
            },
        ));
        if stop {
            return Ok(crate::exit::SUCCESS);
        }
    }
}

/// The RESULT column of `history`: for a failed execution, the tasks that failed (its
/// handlers, which never change the result, are not among them: `handlers` names them), with
/// the guard for those an unmet requirement ended; for a successful one, the tasks an unmet
/// requirement skipped.
fn result_text(e: &WorkflowExecution, tasks: &[TaskExecution], handlers: &[String]) -> String {
    let last: Vec<&TaskExecution> = last_attempts(tasks)
        .into_iter()
        .filter(|t| !handlers.contains(&t.task_name))
        .collect();
    // `name`, or `name (guard not met)` when a requirement ended it.
    let named = |t: &TaskExecution| {
        let message = t.error_message.as_deref().unwrap_or_default();
        let why = message.strip_prefix("skipped: ").unwrap_or(message);
        match why.strip_prefix(SkipReason::UNMET) {
            Some(rest) => {
                let guard = rest.trim_start().split(':').next().unwrap_or_default();
                format!("{} ({guard} not met)", t.task_name)
            }
            None => t.task_name.clone(),
        }
    };
    let failed = || -> Vec<String> {
        last.iter()
            .filter(|t| t.status.is_failure() && !t.interrupted())
            .map(|t| named(t))
            .collect()
    };
    let unmet_skips: Vec<String> = last
        .iter()
        .filter(|t| matches!(t.skip_reason(), Some(SkipReason::Unmet(_))))
        .map(|t| named(t))
        .collect();
    let skips = match unmet_skips.is_empty() {
        true => String::new(),
        false => format!("; skipped: {}", unmet_skips.join(", ")),
    };
    match e.status {
        WorkflowStatus::Success if e.failed_tasks > 0 => format!(
            "Completed; failed with continue_on_failure: {}{skips}",
            failed().join(", ")
        ),
        WorkflowStatus::Success if !skips.is_empty() => format!("Completed{skips}"),
        WorkflowStatus::Success => "All tasks completed".into(),
        WorkflowStatus::Running => "In progress".into(),
        WorkflowStatus::Interrupted => "Interrupted (run --resume continues it)".into(),
        WorkflowStatus::Failed => {
            let failed = failed();
            if failed.is_empty() {
                "Stopped".into()
            } else {
                format!("Failed: {}", failed.join(", "))
            }
        }
    }
}

pub(crate) fn history(
    config: &Config,
    workflow: Option<&str>,
    status: Option<&str>,
    limit: usize,
    since: Option<&str>,
    format: &str,
) -> Result<u8, Error> {
    let json_out = check_format(format)?;
    if limit == 0 {
        return Err(Error::Config {
            origin: "--limit".into(),
            message: "must be at least 1 (it is how many executions to show)".into(),
        });
    }
    let status = status
        .map(|s| views::parse_status(s, "--status"))
        .transpose()?;
    let filter = HistoryFilter {
        workflow: workflow.map(String::from),
        status,
        since: parse_since(since)?,
        limit: Some(limit),
    };
    let execs = match open(config)? {
        Some(store) => store.history(&filter)?,
        None => Vec::new(),
    };
    if json_out {
        let v: Vec<_> = execs
            .iter()
            .map(|(e, t)| views::history_json(e, t))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(crate::exit::SUCCESS);
    }
    if execs.is_empty() {
        outln!("No executions found.")?;
        return Ok(crate::exit::SUCCESS);
    }
    let w = execs
        .iter()
        .map(|(e, _)| e.workflow_name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    outln!(
        "{:<w$}  {:<19}  {:<9} {:<11} {:<6} RESULT",
        "WORKFLOW",
        "STARTED",
        "DURATION",
        "STATUS",
        "TASKS"
    )?;
    // Each execution's handlers, read from its workflow file once per file.
    let mut by_source: BTreeMap<(Option<String>, String), Vec<String>> = BTreeMap::new();
    let mut handlers = |e: &WorkflowExecution| -> Vec<String> {
        by_source
            .entry((e.source.clone(), e.workflow_name.clone()))
            .or_insert_with(|| views::planned(e).1.into_iter().map(|(_, n)| n).collect())
            .clone()
    };
    for (e, t) in &execs {
        let dur = views::ran_for(e, t).map_or_else(|| "-".to_string(), human_duration);
        outln!(
            "{:<w$}  {:<19}  {:<9} {:<11} {:<6} {}",
            e.workflow_name,
            local(e.started_at),
            dur,
            capitalized(e.status),
            format!("{}/{}", e.successful_tasks, e.total_tasks),
            result_text(e, t, &handlers(e))
        )?;
    }
    Ok(crate::exit::SUCCESS)
}

pub(crate) fn stats(
    config: &Config,
    workflow: Option<&str>,
    period: u32,
    format: &str,
) -> Result<u8, Error> {
    let json_out = check_format(format)?;
    let filter = HistoryFilter {
        workflow: workflow.map(String::from),
        since: Some(Utc::now() - chrono::Duration::days(i64::from(period))),
        ..Default::default()
    };
    let history = match open(config)? {
        Some(store) => store.history(&filter)?,
        None => Vec::new(),
    };
    let stats = compute_stats(&history);
    if json_out {
        let v: Vec<_> = stats
            .iter()
            .map(|s| {
                json!({
                    "workflow": s.workflow,
                    "period_days": period,
                    "executions": s.executions,
                    "successes": s.successes,
                    "failures": s.failures,
                    "success_rate": s.success_rate(),
                    "avg_duration_seconds": s.avg_duration,
                    "min_duration_seconds": s.min_duration,
                    "max_duration_seconds": s.max_duration,
                    "tasks": s.tasks.iter().map(|t| json!({
                        "task": t.task,
                        "runs": t.runs,
                        "successes": t.successes,
                        "success_rate": t.success_rate(),
                        "avg_duration_seconds": t.avg_duration,
                        "retries": t.retries,
                    })).collect::<Vec<_>>(),
                    "failures_detail": s.failure_breakdown.iter().map(|(at, task, why)| json!({
                        "started_at": at, "task": task, "reason": why,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(crate::exit::SUCCESS);
    }
    if stats.is_empty() {
        outln!("No finished executions in the last {period} days.")?;
        return Ok(crate::exit::SUCCESS);
    }
    let pct = |part: usize, all: usize| {
        if all == 0 {
            "0%".to_string()
        } else {
            trim_pct(part as f64 * 100.0 / all as f64)
        }
    };
    for (i, s) in stats.iter().enumerate() {
        if i > 0 {
            outln!()?;
        }
        outln!("Workflow: {}", s.workflow)?;
        outln!("Period: Last {period} days")?;
        outln!()?;
        outln!("Executions: {}", s.executions)?;
        outln!(
            "Success: {} ({})",
            s.successes,
            pct(s.successes, s.executions)
        )?;
        outln!("Failed: {} ({})", s.failures, pct(s.failures, s.executions))?;
        outln!()?;
        let d = |v: Option<f64>| v.map_or_else(|| "-".into(), human_duration);
        outln!("Average duration: {}", d(s.avg_duration))?;
        outln!("Min duration: {}", d(s.min_duration))?;
        outln!("Max duration: {}", d(s.max_duration))?;
        if !s.tasks.is_empty() {
            outln!()?;
            outln!("Task statistics:")?;
            let w = s.tasks.iter().map(|t| t.task.len()).max().unwrap_or(0) + 1;
            for t in &s.tasks {
                let rate = t.success_rate().map_or_else(|| "-".into(), trim_pct);
                let mut line = format!(
                    "  {:<w$} {rate} success, avg {}",
                    format!("{}:", t.task),
                    d(t.avg_duration)
                );
                if t.retries > 0 {
                    line.push_str(&format!(", {} retries", t.retries));
                }
                outln!("{line}")?;
            }
        }
        if !s.failure_breakdown.is_empty() {
            outln!()?;
            outln!("Failure breakdown:")?;
            for (at, task, why) in &s.failure_breakdown {
                let at = at.with_timezone(&Local).format("%Y-%m-%d");
                outln!("  {at}: {task} failed ({why})")?;
            }
        }
    }
    Ok(crate::exit::SUCCESS)
}

fn trim_pct(v: f64) -> String {
    let s = format!("{v:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

pub(crate) fn workflow_list(config: &Config, all: bool, format: &str) -> Result<u8, Error> {
    let json_out = check_format(format)?;
    let Some(store) = open(config)? else {
        if json_out {
            outln!("[]")?;
        } else {
            outln!("No workflows recorded yet.")?;
        }
        return Ok(crate::exit::SUCCESS);
    };
    let rows = WorkflowSummary::list(&store, all, Utc::now())?;
    if json_out {
        let v: Vec<_> = rows.iter().map(WorkflowSummary::to_json).collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(crate::exit::SUCCESS);
    }
    if rows.is_empty() {
        outln!("No workflows recorded yet.")?;
        return Ok(crate::exit::SUCCESS);
    }
    let w = rows
        .iter()
        .map(|r| r.record.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let sw = rows
        .iter()
        .map(|r| r.record.schedule.as_deref().map_or(1, str::len))
        .max()
        .unwrap_or(8)
        .max(8);
    outln!(
        "{:<w$}  {:<9}  {:<sw$}  {:<16}  {:<11} {:>7} {:>7}",
        "WORKFLOW",
        "TYPE",
        "SCHEDULE",
        "LAST RUN",
        "STATUS",
        "SUCCESS",
        "FAILED"
    )?;
    for row in rows {
        let (wf, s, f) = (&row.record, row.success, row.failed);
        let (when, st) = match &row.last {
            Some(l) => (
                l.started_at
                    .with_timezone(&Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string(),
                capitalized(l.status),
            ),
            None => ("-".into(), "-".into()),
        };
        outln!(
            "{:<w$}  {:<9}  {:<sw$}  {:<16}  {:<11} {:>7} {:>7}",
            wf.name,
            if wf.schedule.is_some() {
                "Cron"
            } else {
                "On-Demand"
            },
            wf.schedule.as_deref().unwrap_or("-"),
            when,
            st,
            s,
            f
        )?;
    }
    Ok(crate::exit::SUCCESS)
}

/// Arguments of `picoflow logs`.
#[derive(Debug)]
pub(crate) struct LogsQuery<'a> {
    pub(crate) workflow: Option<&'a str>,
    pub(crate) task: Option<&'a str>,
    pub(crate) execution_id: Option<&'a str>,
    pub(crate) tail: usize,
    pub(crate) follow: bool,
}

pub(crate) fn logs(config: &Config, q: &LogsQuery<'_>) -> Result<u8, Error> {
    let Some(store) = open(config)? else {
        errln!(
            "error: no executions recorded yet ({})",
            config.db_path.display()
        );
        return Ok(EXIT_NOT_FOUND);
    };
    let exec = match (q.execution_id, q.workflow) {
        (Some(id), _) => store.execution(id)?,
        (None, Some(w)) => store.latest_execution(w)?,
        (None, None) => {
            return Err(Error::Config {
                origin: "picoflow logs".into(),
                message: "give --workflow NAME (or --execution-id ID)".into(),
            })
        }
    };
    let Some(exec) = exec else {
        errln!(
            "error: no execution found for {}",
            q.execution_id
                .map(|i| format!("id '{i}'"))
                .or(q.workflow.map(|w| format!("workflow '{w}'")))
                .unwrap_or_default()
        );
        return Ok(EXIT_NOT_FOUND);
    };
    if let Some(w) = q.workflow {
        if exec.workflow_name != w {
            errln!(
                "error: execution {} belongs to workflow '{}'",
                exec.id,
                exec.workflow_name
            );
            return Ok(EXIT_NOT_FOUND);
        }
    }
    let dir = execution_log_dir(
        &config.logs.dir,
        &exec.workflow_name,
        exec.started_at,
        &exec.id,
    );
    let attempts = store.task_executions(&exec.id)?;
    let mut names: Vec<String> = last_attempts(&attempts)
        .iter()
        .map(|t| t.task_name.clone())
        .collect();
    for n in planned_tasks(&exec) {
        // A loop's log is its items' (`NAME[item]`) once it has some.
        if !names.iter().any(|a| views::is_attempt_of(a, &n)) {
            names.push(n);
        }
    }
    if let Some(t) = q.task {
        if !names.iter().any(|n| n == t) {
            errln!("error: task '{t}' has no record in execution {}", exec.id);
            return Ok(EXIT_NOT_FOUND);
        }
        names.retain(|n| n == t);
    }
    outln!(
        "Execution {} of '{}' ({}, started {})",
        exec.id,
        exec.workflow_name,
        exec.status,
        local(exec.started_at)
    )?;
    let mut offsets: BTreeMap<String, u64> = BTreeMap::new();
    for name in &names {
        let path = task_log_path(&dir, name);
        outln!("\n==> {name} <==")?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                print_tail(&bytes, q.tail)?;
                offsets.insert(name.clone(), bytes.len() as u64);
            }
            Err(_) => {
                // No file: the task wrote nothing, or the logs were pruned; show the capture.
                let rec = attempts
                    .iter()
                    .filter(|a| &a.task_name == name)
                    .max_by_key(|a| a.attempt);
                match rec {
                    Some(r) => {
                        let text = views::captured_output(r);
                        if text.is_empty() {
                            outln!("(no output; {})", r.status)?;
                        } else {
                            print_tail(text.as_bytes(), q.tail)?;
                        }
                    }
                    None => outln!("(not started)")?,
                }
                offsets.insert(name.clone(), 0);
            }
        }
    }
    if q.follow {
        follow(&store, &exec.id, &dir, &names, &mut offsets)?;
    }
    Ok(crate::exit::SUCCESS)
}

fn print_tail(bytes: &[u8], n: usize) -> Result<(), Error> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    for l in &lines[start..] {
        outln!("{l}")?;
    }
    Ok(())
}

/// Prints what the running execution's tasks write, until it ends.
fn follow(
    store: &Store,
    id: &str,
    dir: &Path,
    names: &[String],
    offsets: &mut BTreeMap<String, u64>,
) -> Result<(), Error> {
    let mut last_name: Option<String> = None;
    loop {
        let running = store
            .execution(id)?
            .is_some_and(|e| e.status == WorkflowStatus::Running);
        for name in names {
            let path: PathBuf = task_log_path(dir, name);
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let off = offsets.get(name).copied().unwrap_or(0);
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len <= off {
                continue;
            }
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(off)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                if last_name.as_deref() != Some(name.as_str()) {
                    outln!("\n==> {name} <==")?;
                    last_name = Some(name.clone());
                }
                crate::out::bytes(&buf)?;
                offsets.insert(name.clone(), off + buf.len() as u64);
            }
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
