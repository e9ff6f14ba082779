//! The end of an execution's DAG: the execution's figures, then the handlers its status
//! calls for (`on_success`, `on_failure`, `always`), one after the other. An interrupted run
//! runs no handler: its resume will.

use crate::events::{TaskState, WorkflowExecution, WorkflowStatus};

use super::report::TaskReport;
use super::run::Run;
use super::Engine;

impl Engine {
    /// After the DAG: the execution's figures (a loop counts by its tasks, not as one), then
    /// the handlers its status calls for. Returns every report: tasks and loop items in file
    /// order, then handlers.
    pub(super) async fn conclude(
        &self,
        run: &Run<'_>,
        execution: &mut WorkflowExecution,
        reports: Vec<TaskReport>,
        mut items: Vec<Vec<TaskReport>>,
    ) -> Vec<TaskReport> {
        let wf = run.wf;
        let mut all: Vec<TaskReport> = Vec::with_capacity(reports.len());
        for (i, r) in reports.into_iter().enumerate() {
            let its = std::mem::take(&mut items[i]);
            if its.is_empty() || wf.tasks[i].iterate_over.is_none() {
                all.push(r);
            }
            all.extend(its);
        }
        execution.total_tasks = all.len() as u32;
        execution.successful_tasks =
            all.iter().filter(|r| r.state == TaskState::Success).count() as u32;
        execution.failed_tasks = all
            .iter()
            .filter(|r| r.state.is_failure() && !crate::events::is_interrupted(r.error.as_deref()))
            .count() as u32;
        // An interrupted run runs no handler: its resume will.
        if execution.status != WorkflowStatus::Interrupted && !wf.handlers.is_empty() {
            let failed_tasks: Vec<&str> = all
                .iter()
                .filter(|r| r.state.is_failure())
                .map(|r| r.name.as_str())
                .collect();
            run.values
                .borrow_mut()
                .finish(execution.status.as_str(), &failed_tasks);
            let handlers = self.run_handlers(run, execution.status).await;
            all.extend(handlers);
        }
        all
    }

    /// Runs the workflow's handlers for an execution that ended with `status`, one after
    /// the other; their results do not change the execution's.
    async fn run_handlers(&self, run: &Run<'_>, status: WorkflowStatus) -> Vec<TaskReport> {
        let n = run.wf.tasks.len();
        let mut reports = Vec::new();
        for (k, (list, _)) in run.wf.handlers.all().enumerate() {
            let due = match list {
                "on_success" => status == WorkflowStatus::Success,
                "on_failure" => status == WorkflowStatus::Failed,
                _ => true,
            };
            if !due || run.cancel.is_cancelled() {
                continue;
            }
            let index = n + k;
            let mut report = TaskReport::pending(&run.tasks[index].name);
            if self.condition_holds(run, index, None, &mut report) {
                report = match self.guard_task(run, index, report).await {
                    Some(unrun) => unrun.report,
                    None => {
                        self.run_task(run, index, &run.tasks[index], None, 1, false)
                            .await
                            .report
                    }
                };
            }
            reports.push(report);
        }
        reports
    }
}
