//! Tasks that end without running: those the plan skips (a dependency failed, a `run_if`
//! rule does not hold), those whose `when` condition is false, and those that fail before
//! any attempt (a loop whose items cannot be built). Each gets one record that says why.

use chrono::Utc;

use crate::events::{Event, SkipReason, TaskExecution, TaskState};
use crate::plan::{Plan, Skip};

use super::report::TaskReport;
use super::run::Run;
use super::Engine;

impl Engine {
    /// Reports the tasks the plan skipped since the last call.
    pub(super) fn report_skips(&self, run: &Run<'_>, plan: &mut Plan, reports: &mut [TaskReport]) {
        for (i, skip) in plan.take_skipped() {
            let task = &run.wf.tasks[i];
            let reason = match skip {
                Skip::Failed(c) => SkipReason::Dependency(run.wf.tasks[c].name.clone()),
                Skip::Rule => SkipReason::Rule(task.run_if.as_str().to_string()),
            };
            self.skip(run, &task.name, reason.message(), &mut reports[i]);
        }
    }

    /// Whether task `index`'s condition lets it run; when not, reports it skipped.
    /// `report` names the task (a loop's item task for `item`).
    pub(super) fn condition_holds(
        &self,
        run: &Run<'_>,
        index: usize,
        item: Option<(&str, usize)>,
        report: &mut TaskReport,
    ) -> bool {
        let Some(expr) = &run.conditions[index] else {
            return true;
        };
        if run.values.borrow().condition(expr, &self.vars, item) {
            return true;
        }
        let when = run.tasks[index].when.as_deref().unwrap_or_default();
        let reason = SkipReason::Condition(when.to_string()).message();
        let name = report.name.clone();
        self.skip(run, &name, reason, report);
        false
    }

    /// Records a task that will not run.
    pub(super) fn skip(&self, run: &Run<'_>, name: &str, reason: String, report: &mut TaskReport) {
        self.record_unrun(run, name, TaskState::Skipped, reason, report);
    }

    /// Records a task that ends in `state` without running.
    pub(super) fn record_unrun(
        &self,
        run: &Run<'_>,
        name: &str,
        state: TaskState,
        reason: String,
        report: &mut TaskReport,
    ) {
        report.state = state;
        report.error = Some(reason.clone());
        run.values.borrow_mut().publish(name, state, None);
        let record = TaskExecution::unrun(&run.execution_id, name, state, reason, Utc::now());
        self.emit(match state {
            TaskState::Skipped => Event::TaskSkipped(record),
            _ => Event::TaskFinished {
                record,
                retry_in: None,
            },
        });
    }
}
