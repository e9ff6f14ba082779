//! What `picoflow run` prints: one line per event (as in the user guide), and on a terminal
//! a live status line below them with running, pending and finished tasks.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use picoflow_lib::{
    is_interrupted, Event, EventSink, RunReport, TaskState, WorkflowStatus, INTERRUPTED,
};

pub(crate) struct RunDisplay {
    live: bool,
    /// The workflow's handlers by name, with the list each is in (`on_failure` …): they are
    /// shown as handlers and not counted among the workflow's tasks. A workflow has a few,
    /// looked up by [`RunDisplay::handler`].
    handlers: Vec<(String, &'static str)>,
    state: Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    total: usize,
    running: BTreeMap<String, Instant>,
    done: usize,
    failed: usize,
    started: Option<Instant>,
}

pub(crate) fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}s")
    }
}

impl RunDisplay {
    /// `handlers`: each handler's name and the list it is in.
    pub(crate) fn new(live: bool, handlers: Vec<(String, &'static str)>) -> Self {
        RunDisplay {
            live,
            handlers,
            state: Mutex::new(LiveState::default()),
        }
    }

    /// The list handler `name` is in; `None` for a task of the workflow. A name given twice
    /// is in the last list that gives it.
    fn handler(&self, name: &str) -> Option<&'static str> {
        let found = self.handlers.iter().rev().find(|(n, _)| n == name);
        found.map(|&(_, kind)| kind)
    }

    /// How a line names task `name`: `Task 'x'`, or `Handler 'x' (on_failure)`.
    fn who(&self, name: &str) -> String {
        match self.handler(name) {
            Some(kind) => format!("Handler '{name}' ({kind})"),
            None => format!("Task '{name}'"),
        }
    }

    fn line(&self, st: &LiveState, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.live {
            let _ = write!(out, "\r\x1b[K{text}\n{}", status_line(st));
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    pub(crate) fn summary(&self, report: &RunReport) {
        let mut out = std::io::stdout().lock();
        if self.live {
            let _ = write!(out, "\r\x1b[K");
        }
        let e = &report.execution;
        let dur = human_duration(e.duration_seconds.unwrap_or(0.0));
        let _ = match e.status {
            WorkflowStatus::Success if e.failed_tasks > 0 => writeln!(
                out,
                "Workflow '{}' completed in {dur}; {} failed with continue_on_failure",
                e.workflow_name,
                match e.failed_tasks {
                    1 => "1 task".to_string(),
                    n => format!("{n} tasks"),
                }
            ),
            WorkflowStatus::Success => writeln!(
                out,
                "Workflow '{}' completed successfully in {dur}",
                e.workflow_name
            ),
            WorkflowStatus::Interrupted => writeln!(
                out,
                "Workflow '{}' interrupted after {dur}; continue it with `picoflow run --resume`",
                e.workflow_name
            ),
            _ => writeln!(out, "Workflow '{}' failed after {dur}", e.workflow_name),
        };
        let interrupted = report
            .tasks
            .iter()
            .filter(|t| is_interrupted(t.error.as_deref()))
            .count();
        let interrupted = match interrupted {
            0 => String::new(),
            n => format!(", {n} interrupted"),
        };
        let _ = writeln!(
            out,
            "Tasks: {} succeeded, {} failed{interrupted}, {} total (execution {})",
            e.successful_tasks, e.failed_tasks, e.total_tasks, e.id
        );
        for t in &report.tasks {
            let mark = match t.state {
                TaskState::Success => "✓",
                TaskState::Failed | TaskState::Timeout => "✗",
                TaskState::Skipped => "-",
                _ => "○",
            };
            let state = match is_interrupted(t.error.as_deref()) {
                true => "interrupted".to_string(),
                false => t.state.to_string(),
            };
            let mut line = format!("  {mark} {:<24} {state}", t.name);
            if let Some(d) = t.duration_seconds {
                line.push_str(&format!(" ({})", human_duration(d)));
            }
            if t.resumed {
                line.push_str(" [finished before resume]");
            }
            if let Some(kind) = self.handler(&t.name) {
                line.push_str(&format!(" [{kind} handler]"));
            }
            if matches!(
                t.state,
                TaskState::Failed | TaskState::Timeout | TaskState::Skipped
            ) {
                if let Some(err) = &t.error {
                    let err = err.strip_prefix("skipped: ").unwrap_or(err);
                    let err = err.strip_prefix(INTERRUPTED).unwrap_or(err).trim_start();
                    line.push_str(&format!(": {err}"));
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
}

fn status_line(st: &LiveState) -> String {
    let pending = st.total.saturating_sub(st.done + st.running.len());
    let running: Vec<String> = st
        .running
        .iter()
        .take(4)
        .map(|(n, t)| format!("{n} {}", human_duration(t.elapsed().as_secs_f64())))
        .collect();
    let more = st.running.len().saturating_sub(4);
    format!(
        "[{} running: {}{} | {} pending | {}/{} done, {} failed | {}]",
        st.running.len(),
        running.join(", "),
        if more > 0 {
            format!(" +{more}")
        } else {
            String::new()
        },
        pending,
        st.done,
        st.total,
        st.failed,
        human_duration(st.started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
    )
}

impl EventSink for RunDisplay {
    fn on_event(&self, event: &Event) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::WorkflowStarted(e) => {
                st.total = e.total_tasks as usize;
                st.started = Some(Instant::now());
                self.line(
                    &st,
                    &format!("Starting workflow execution: {}", e.workflow_name),
                );
            }
            Event::TaskStarted(t) => {
                st.running.insert(t.task_name.clone(), Instant::now());
                let who = self.who(&t.task_name);
                let text = if t.attempt > 1 {
                    format!("{who} started (attempt {})", t.attempt)
                } else {
                    format!("{who} started")
                };
                self.line(&st, &text);
            }
            Event::TaskFinished {
                record: t,
                retry_in,
            } => {
                st.running.remove(&t.task_name);
                let who = self.who(&t.task_name);
                let code = t
                    .exit_code
                    .map_or_else(|| "none".to_string(), |c| c.to_string());
                let err = t.error_message.as_deref().unwrap_or("failed");
                // A handler's end counts neither as done nor as failed: the live line counts
                // the workflow's tasks.
                let counted = self.handler(&t.task_name).is_none();
                let text = match (t.status, retry_in) {
                    (_, Some(d)) => format!(
                        "{who} failed (exit code: {code}): {err}; retrying in {}s",
                        d.as_secs_f64()
                    ),
                    (TaskState::Success, None) => {
                        st.done += usize::from(counted);
                        format!("{who} completed successfully (exit code: {code})")
                    }
                    (TaskState::Timeout, None) => {
                        st.done += usize::from(counted);
                        st.failed += usize::from(counted);
                        format!("{who} timed out: {err}")
                    }
                    (_, None) if t.interrupted() => {
                        st.done += usize::from(counted);
                        format!("{who} {err}")
                    }
                    (_, None) => {
                        st.done += usize::from(counted);
                        st.failed += usize::from(counted);
                        format!("{who} failed (exit code: {code}): {err}")
                    }
                };
                self.line(&st, &text);
            }
            Event::TaskSkipped(t) => {
                st.done += usize::from(self.handler(&t.task_name).is_none());
                let why = t.error_message.as_deref().unwrap_or("skipped");
                self.line(&st, &format!("{} {why}", self.who(&t.task_name)));
            }
            Event::WorkflowFinished(_) => {}
            _ => {}
        }
    }
}
