//! Execution statistics for `picoflow stats` (OBS-004): success rates, durations, per-task
//! figures and a failure breakdown, computed from stored records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::events::{TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};

/// Statistics of one workflow over a period.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowStats {
    /// Workflow name.
    pub workflow: String,
    /// Finished executions counted.
    pub executions: usize,
    /// Executions that succeeded.
    pub successes: usize,
    /// Executions that failed or were interrupted.
    pub failures: usize,
    /// Mean duration of finished executions, in seconds.
    pub avg_duration: Option<f64>,
    /// Shortest duration, in seconds.
    pub min_duration: Option<f64>,
    /// Longest duration, in seconds.
    pub max_duration: Option<f64>,
    /// Per-task figures, by task name.
    pub tasks: Vec<TaskStats>,
    /// Final task failures, newest first: (when, task, reason).
    pub failure_breakdown: Vec<(DateTime<Utc>, String, String)>,
}

/// Statistics of one task over a period (final outcome per execution).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStats {
    /// Task name.
    pub task: String,
    /// Executions in which the task ended (success, failed or timeout).
    pub runs: usize,
    /// Of those, successes.
    pub successes: usize,
    /// Mean duration of its final attempts, in seconds.
    pub avg_duration: Option<f64>,
    /// Retries made (attempts beyond the first).
    pub retries: usize,
}

impl WorkflowStats {
    /// Success rate in percent, if anything ran.
    pub fn success_rate(&self) -> Option<f64> {
        (self.executions > 0).then(|| 100.0 * self.successes as f64 / self.executions as f64)
    }
}

impl TaskStats {
    /// Success rate in percent, if the task ran.
    pub fn success_rate(&self) -> Option<f64> {
        (self.runs > 0).then(|| 100.0 * self.successes as f64 / self.runs as f64)
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Computes statistics per workflow from executions and their task attempts. Running
/// executions are ignored.
pub fn compute_stats(history: &[(WorkflowExecution, Vec<TaskExecution>)]) -> Vec<WorkflowStats> {
    let mut by_wf: BTreeMap<&str, Vec<&(WorkflowExecution, Vec<TaskExecution>)>> = BTreeMap::new();
    for h in history {
        if h.0.status != WorkflowStatus::Running {
            by_wf.entry(h.0.workflow_name.as_str()).or_default().push(h);
        }
    }
    by_wf
        .into_iter()
        .map(|(name, execs)| {
            let durations: Vec<f64> = execs.iter().filter_map(|e| e.0.duration_seconds).collect();
            let mut tasks: BTreeMap<&str, (usize, usize, Vec<f64>, usize)> = BTreeMap::new();
            let mut failure_breakdown = Vec::new();
            for (exec, attempts) in &execs {
                let mut last: BTreeMap<&str, &TaskExecution> = BTreeMap::new();
                for a in attempts {
                    let entry = tasks.entry(a.task_name.as_str()).or_default();
                    if a.attempt > 1 && a.status != TaskState::Skipped {
                        entry.3 += 1;
                    }
                    let keep = last
                        .get(a.task_name.as_str())
                        .is_none_or(|prev| prev.attempt <= a.attempt);
                    if keep {
                        last.insert(a.task_name.as_str(), a);
                    }
                }
                for (task, a) in last {
                    let entry = tasks.entry(task).or_default();
                    match a.status {
                        TaskState::Success => {
                            entry.0 += 1;
                            entry.1 += 1;
                        }
                        TaskState::Failed | TaskState::Timeout => {
                            entry.0 += 1;
                            let reason = if a.status == TaskState::Timeout {
                                "timeout".to_string()
                            } else {
                                a.error_message.clone().unwrap_or_else(|| "failed".into())
                            };
                            failure_breakdown.push((exec.started_at, task.to_string(), reason));
                        }
                        _ => continue,
                    }
                    if let Some(d) = a.duration_seconds {
                        entry.2.push(d);
                    }
                }
            }
            failure_breakdown.sort_by_key(|b| std::cmp::Reverse(b.0));
            WorkflowStats {
                workflow: name.to_string(),
                executions: execs.len(),
                successes: execs
                    .iter()
                    .filter(|e| e.0.status == WorkflowStatus::Success)
                    .count(),
                failures: execs
                    .iter()
                    .filter(|e| e.0.status != WorkflowStatus::Success)
                    .count(),
                avg_duration: mean(&durations),
                min_duration: durations.iter().copied().reduce(f64::min),
                max_duration: durations.iter().copied().reduce(f64::max),
                tasks: tasks
                    .into_iter()
                    .map(|(task, (runs, successes, d, retries))| TaskStats {
                        task: task.to_string(),
                        runs,
                        successes,
                        avg_duration: mean(&d),
                        retries,
                    })
                    .collect(),
                failure_breakdown,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str, status: WorkflowStatus, dur: f64) -> WorkflowExecution {
        let now = Utc::now();
        WorkflowExecution {
            id: id.into(),
            workflow_name: "w".into(),
            started_at: now,
            finished_at: Some(now),
            status,
            duration_seconds: Some(dur),
            total_tasks: 1,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: now,
            pid: 1,
            source: None,
            definition: None,
        }
    }

    fn attempt(exec: &str, task: &str, n: u32, status: TaskState, dur: f64) -> TaskExecution {
        let now = Utc::now();
        TaskExecution {
            id: crate::events::new_id(),
            workflow_execution_id: exec.into(),
            task_name: task.into(),
            status,
            started_at: now,
            finished_at: Some(now),
            exit_code: None,
            stdout: None,
            stderr: None,
            stdout_size: None,
            stderr_size: None,
            attempt: n,
            error_message: Some("boom".into()),
            duration_seconds: Some(dur),
            created_at: now,
            outputs: None,
        }
    }

    #[test]
    fn rates_durations_and_retries() {
        let h = vec![
            (
                exec("1", WorkflowStatus::Success, 10.0),
                vec![
                    attempt("1", "a", 1, TaskState::Retrying, 1.0),
                    attempt("1", "a", 2, TaskState::Success, 3.0),
                ],
            ),
            (
                exec("2", WorkflowStatus::Failed, 20.0),
                vec![attempt("2", "a", 1, TaskState::Timeout, 5.0)],
            ),
        ];
        let s = compute_stats(&h);
        assert_eq!(s.len(), 1);
        let w = &s[0];
        assert_eq!((w.executions, w.successes, w.failures), (2, 1, 1));
        assert_eq!(w.success_rate(), Some(50.0));
        assert_eq!(w.avg_duration, Some(15.0));
        assert_eq!((w.min_duration, w.max_duration), (Some(10.0), Some(20.0)));
        let a = &w.tasks[0];
        assert_eq!((a.runs, a.successes, a.retries), (2, 1, 1));
        assert_eq!(a.avg_duration, Some(4.0));
        assert_eq!(w.failure_breakdown[0].2, "timeout");
    }
}
