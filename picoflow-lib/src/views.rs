//! What the read commands show, shared by the `--format json` output of the command line and
//! the web API (OBS-002, OBS-005), so that both give the same shapes.

use chrono::{DateTime, Local, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::events::{last_attempts, TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};
use crate::store::{HistoryFilter, Store, WorkflowRecord};

/// Task names of the workflow file an execution came from, then its handlers', when that
/// file can still be read and still holds the same workflow; empty otherwise.
pub fn planned_tasks(exec: &WorkflowExecution) -> Vec<String> {
    let (tasks, handlers) = planned(exec);
    tasks
        .into_iter()
        .chain(handlers.into_iter().map(|(_, name)| name))
        .collect()
}

/// The task names of the workflow file an execution came from, and its handlers as (kind,
/// name) — `("on_failure", "alert")` — when that file can still be read and still holds the
/// same workflow; both empty otherwise.
pub fn planned(exec: &WorkflowExecution) -> (Vec<String>, Vec<(&'static str, String)>) {
    // Parsed, not validated against this build's executors: the tasks of a type an embedding
    // program registered (or a feature this build lacks) are listed all the same.
    exec.source
        .as_deref()
        .and_then(|f| std::fs::read_to_string(f).ok().map(|text| (f, text)))
        .and_then(|(f, text)| crate::yaml::parse_workflow(&text, f).ok())
        .filter(|wf| wf.name == exec.workflow_name)
        .map(|wf| {
            let handlers = wf
                .handlers
                .all()
                .map(|(kind, t)| (kind, t.name.clone()))
                .collect();
            (wf.tasks.iter().map(|t| t.name.clone()).collect(), handlers)
        })
        .unwrap_or_default()
}

/// What an attempt's record captured of its output (stdout, then stderr): what a task's log
/// shows when its log file is missing (the task wrote nothing to it, or it was pruned).
pub fn captured_output(attempt: &TaskExecution) -> String {
    let mut text = String::new();
    for s in [&attempt.stdout, &attempt.stderr].into_iter().flatten() {
        text.push_str(s);
    }
    text
}

/// The state an attempt is shown in: its recorded one, except `interrupted` for an attempt
/// PicoFlow cut short (recorded `failed` with an `interrupted: …` message) and for one left
/// `running` by a process that died (`running_execution` false).
pub fn shown_state(attempt: &TaskExecution, running_execution: bool) -> &'static str {
    match attempt.status {
        TaskState::Running if !running_execution => "interrupted",
        _ if attempt.interrupted() => "interrupted",
        s => s.as_str(),
    }
}

/// Whether the attempt named `attempt` is of the workflow's task `task`: the task itself, or
/// one of its loop's items (`upload[a.txt]`).
pub fn is_attempt_of(attempt: &str, task: &str) -> bool {
    attempt
        .strip_prefix(task)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
}

/// How long an execution ran, in seconds: its recorded duration; for one interrupted before it
/// could record one (its process died), the time to the last thing its attempts recorded (it
/// ran at least that long) — never a time that goes on growing after the process is gone.
/// `None` while it runs.
pub fn ran_for(exec: &WorkflowExecution, attempts: &[TaskExecution]) -> Option<f64> {
    if let Some(d) = exec.duration_seconds {
        return Some(d);
    }
    if exec.status != WorkflowStatus::Interrupted {
        return None;
    }
    let last = attempts
        .iter()
        .map(|a| a.finished_at.unwrap_or(a.started_at))
        .max()
        .unwrap_or(exec.started_at);
    Some((last - exec.started_at).num_milliseconds().max(0) as f64 / 1000.0)
}

/// Attempts in the order of `planned` (a loop's tasks `NAME[item]` at their loop's place),
/// then any others in the order they started.
pub fn in_workflow_order<'t>(
    mut attempts: Vec<&'t TaskExecution>,
    planned: &[String],
) -> Vec<&'t TaskExecution> {
    attempts.sort_by_key(|t| t.started_at);
    attempts.sort_by_key(|t| {
        planned
            .iter()
            .position(|n| is_attempt_of(&t.task_name, n))
            .unwrap_or(usize::MAX)
    });
    attempts
}

/// One execution as `status --format json` shows it: `{"execution": …, "tasks": [last
/// attempt of each task, in the workflow's order]}`.
pub fn execution_json(exec: &WorkflowExecution, attempts: &[TaskExecution]) -> Value {
    let tasks = in_workflow_order(last_attempts(attempts), &planned_tasks(exec));
    json!({ "execution": exec, "tasks": tasks })
}

/// One execution as `history --format json` shows it: the execution's fields plus `tasks`,
/// every attempt.
pub fn history_json(exec: &WorkflowExecution, attempts: &[TaskExecution]) -> Value {
    let mut j = serde_json::to_value(exec).unwrap_or(Value::Null);
    j["tasks"] = serde_json::to_value(attempts).unwrap_or(Value::Null);
    j
}

/// A workflow's line in `workflow list`: its record, its latest execution and its counts.
#[derive(Debug, Clone)]
pub struct WorkflowSummary {
    /// The stored record (name, schedule, file).
    pub record: WorkflowRecord,
    /// The latest execution, if any.
    pub last: Option<WorkflowExecution>,
    /// Executions that succeeded.
    pub success: usize,
    /// Executions that failed or were interrupted.
    pub failed: usize,
}

impl WorkflowSummary {
    /// Summaries of every recorded workflow; unless `all`, only the active ones (the user
    /// guide's `workflow list`): those with a schedule, which will run, and those run in the
    /// 30 days before `now`.
    pub fn list(store: &Store, all: bool, now: DateTime<Utc>) -> Result<Vec<WorkflowSummary>> {
        let recent = now - chrono::Duration::days(30);
        let mut rows = Vec::new();
        for record in store.workflows()? {
            let s = WorkflowSummary::of(store, record)?;
            let stale = s.last.as_ref().is_none_or(|l| l.started_at < recent);
            if all || !stale || s.record.schedule.is_some() {
                rows.push(s);
            }
        }
        Ok(rows)
    }

    /// The summary of one recorded workflow.
    pub fn of(store: &Store, record: WorkflowRecord) -> Result<WorkflowSummary> {
        let execs = store.executions(&HistoryFilter {
            workflow: Some(record.name.clone()),
            ..Default::default()
        })?;
        let count = |f: fn(WorkflowStatus) -> bool| execs.iter().filter(|e| f(e.status)).count();
        Ok(WorkflowSummary {
            success: count(|s| s == WorkflowStatus::Success),
            failed: count(|s| matches!(s, WorkflowStatus::Failed | WorkflowStatus::Interrupted)),
            last: execs.into_iter().next(),
            record,
        })
    }

    /// Share of finished executions that succeeded, `None` before the first.
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.success + self.failed;
        (finished > 0).then(|| self.success as f64 / finished as f64)
    }

    /// The `workflow list --format json` object.
    pub fn to_json(&self) -> Value {
        let w = &self.record;
        json!({
            "name": w.name,
            "type": if w.schedule.is_some() { "cron" } else { "on-demand" },
            "schedule": w.schedule,
            "file": w.file,
            "last_run": self.last.as_ref().map(|l| l.started_at),
            "last_status": self.last.as_ref().map(|l| l.status),
            "success": self.success,
            "failed": self.failed,
        })
    }
}

/// An instant as the read commands and the web UI show it: local time, to the second.
pub fn local_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Parses a `--since` (or `since=`) date: `YYYY-MM-DD` as local midnight, an RFC 3339
/// instant, or a duration back from now with its unit (`7d`, `24h`, `1h30m`); `origin` names
/// the option in the error.
pub fn parse_since(since: &str, origin: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(since) {
        return Ok(t.with_timezone(&Utc));
    }
    let back = since.ends_with(|c: char| c.is_ascii_alphabetic());
    if let Some(d) = back
        .then(|| crate::schedule::parse_duration(since).ok())
        .flatten()
        .and_then(|d| chrono::Duration::from_std(d).ok())
    {
        return Ok(Utc::now() - d);
    }
    let date = NaiveDate::parse_from_str(since, "%Y-%m-%d").map_err(|_| Error::Config {
        origin: origin.into(),
        message: format!(
            "'{since}' is not a date (YYYY-MM-DD), an RFC 3339 time or a duration back from now \
             (7d, 24h, 1h30m)"
        ),
    })?;
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    Ok(midnight
        .and_local_timezone(Local)
        .earliest()
        .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc)))
}

/// Parses a status filter (`success`, `failed`, `running`, `interrupted`, any case).
pub fn parse_status(status: &str, origin: &str) -> Result<WorkflowStatus> {
    WorkflowStatus::parse(&status.to_ascii_lowercase()).ok_or_else(|| Error::Config {
        origin: origin.into(),
        message: format!("'{status}' is not one of success, failed, running, interrupted"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(name: &str, attempt: u32, secs: i64) -> TaskExecution {
        let t = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        TaskExecution {
            id: format!("{name}-{attempt}"),
            workflow_execution_id: "e".into(),
            task_name: name.into(),
            status: TaskState::Success,
            started_at: t,
            finished_at: Some(t),
            duration_seconds: Some(0.0),
            exit_code: Some(0),
            stdout: None,
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            error_message: None,
            attempt,
            created_at: t,
            outputs: None,
        }
    }

    #[test]
    fn attempts_cut_short_are_shown_interrupted() {
        let mut a = attempt("t", 1, 0);
        assert_eq!(shown_state(&a, false), "success");
        a.status = TaskState::Failed;
        a.error_message = Some("exited with code 1".into());
        assert_eq!(shown_state(&a, false), "failed");
        a.error_message = Some(format!(
            "{} the run was stopped (cancelled)",
            crate::events::INTERRUPTED
        ));
        assert_eq!(shown_state(&a, true), "interrupted");
        // Left running by a process that died; still running while its execution runs.
        a.status = TaskState::Running;
        a.error_message = None;
        assert_eq!(shown_state(&a, false), "interrupted");
        assert_eq!(shown_state(&a, true), "running");
    }

    #[test]
    fn attempts_follow_the_workflow_order_with_loop_items_in_place() {
        let a = [
            attempt("zeta", 1, 0),
            attempt("up[b]", 1, 2),
            attempt("up[a]", 1, 1),
            attempt("first", 1, 3),
            attempt("upx", 1, 4),
        ];
        let planned = vec!["first".to_string(), "up".into(), "zeta".into()];
        let names: Vec<&str> = in_workflow_order(a.iter().collect(), &planned)
            .iter()
            .map(|t| t.task_name.as_str())
            .collect();
        assert_eq!(names, ["first", "up[a]", "up[b]", "zeta", "upx"]);
    }

    #[test]
    fn tasks_of_a_type_this_build_lacks_are_listed_with_the_handlers_apart() {
        let dir = std::env::temp_dir().join(format!("picoflow-views-{}", crate::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cam.yaml");
        std::fs::write(
            &file,
            "name: cam\ntasks:\n  - name: snap\n    type: camera\n    config: {lens: wide}\n  - name: store\n    type: shell\n    depends_on: [snap]\n    config: {command: \"true\"}\non_failure:\n  - name: alert\n    type: shell\n    config: {command: \"true\"}\n",
        )
        .unwrap();
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let exec = WorkflowExecution {
            id: "e1".into(),
            workflow_name: "cam".into(),
            started_at: t,
            finished_at: None,
            status: WorkflowStatus::Running,
            duration_seconds: None,
            total_tasks: 2,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: t,
            pid: 1,
            source: Some(file.display().to_string()),
            definition: None,
        };
        assert_eq!(
            planned(&exec),
            (
                vec!["snap".to_string(), "store".into()],
                vec![("on_failure", "alert".to_string())]
            )
        );
        assert_eq!(planned_tasks(&exec), ["snap", "store", "alert"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn since_and_status_parse_or_name_the_option() {
        let t = parse_since("2026-01-02T03:04:05Z", "since").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert!(parse_since("2026-01-02", "since").is_ok());
        let e = parse_since("yesterday", "--since").unwrap_err().to_string();
        assert!(e.contains("--since") && e.contains("yesterday"), "{e}");
        for (text, back) in [("7d", 7 * 86_400), ("24h", 86_400), ("1h30m", 5_400)] {
            let ago = (Utc::now() - parse_since(text, "--since").unwrap()).num_seconds();
            assert!((back - 1..back + 60).contains(&ago), "{text}: {ago}");
        }
        assert!(parse_since("7", "--since").is_err());
        assert!(parse_since("7w", "--since").is_err());
        assert_eq!(
            parse_status("FAILED", "status").unwrap(),
            WorkflowStatus::Failed
        );
        assert!(parse_status("meh", "status").is_err());
    }
}
