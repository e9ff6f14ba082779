//! Which interrupted execution of a workflow a run continues, and when (REL-001).
//!
//! One policy for every caller: `run --resume` continues the workflow's latest execution if it
//! was interrupted, and only with the definition it started from unless forced; a new `run`
//! after a crash first stops what the crashed execution left running; the daemon, at start,
//! continues each execution that its own crash interrupted. [`plan_run`] reads the state and
//! answers with a [`RunPlan`] ([`open_for_run`] opens the state file first, for the command
//! line); the decision itself is the pure `decide`, tested below without
//! a store.

use std::path::Path;

use crate::engine::ResumeFrom;
use crate::error::{Error, Result};
use crate::events::{WorkflowExecution, WorkflowStatus};
use crate::model::Workflow;
use crate::store::Store;

/// What a caller asks of a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RunIntent {
    /// A new execution (`run`).
    New,
    /// Continue the workflow's latest execution, which must have been interrupted
    /// (`run --resume`). With `force`, a definition changed since that execution started is
    /// accepted; `origin` (the workflow file) names what changed in the refusal.
    Resume {
        /// Continue even when the definition changed.
        force: bool,
        /// Where the definition comes from, for the error.
        origin: String,
    },
    /// Continue this execution, which a crash interrupted (the daemon at start), with the
    /// definition loaded now: the daemon has no one to ask, so it goes on like `--force`.
    Recovered(WorkflowExecution),
}

/// What a run does.
#[derive(Debug, Clone)]
pub enum RunPlan {
    /// Continue this interrupted execution.
    Resume(ResumeFrom),
    /// Start a new execution; `stop_leftovers` when the workflow's latest execution was
    /// interrupted, so that what it left running is stopped first
    /// ([`crate::RunOptions::stop_leftovers`]).
    New {
        /// Stop a crashed execution's leftovers before the first task starts.
        stop_leftovers: bool,
    },
}

/// What [`decide`] chose, before the tasks of a resumed execution are read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Continue this execution.
    Continue(WorkflowExecution),
    /// Start anew.
    New {
        /// As in [`RunPlan::New`].
        stop_leftovers: bool,
    },
}

/// The policy: what a run of the workflow named `name`, whose definition now has `digest`,
/// does given the workflow's `latest` execution. Errors are the refusals of `run --resume`.
pub(crate) fn decide(
    name: &str,
    digest: &str,
    latest: Option<WorkflowExecution>,
    intent: RunIntent,
) -> Result<Decision> {
    let interrupted = |e: &WorkflowExecution| e.status == WorkflowStatus::Interrupted;
    match intent {
        RunIntent::New => Ok(Decision::New {
            stop_leftovers: latest.as_ref().is_some_and(interrupted),
        }),
        RunIntent::Recovered(execution) => Ok(Decision::Continue(execution)),
        RunIntent::Resume { force, origin } => match latest {
            // The execution goes on with what the file says now: an edit since it started
            // would run other commands, drop or add tasks, under its id.
            Some(e) if interrupted(&e) => {
                if e.definition.as_ref().is_some_and(|d| d != digest) && !force {
                    return Err(Error::Config {
                        origin,
                        message: format!(
                            "the workflow changed since execution {} started; `run --resume \
                             --force` continues it with the new definition, `run` starts anew",
                            e.id
                        ),
                    });
                }
                Ok(Decision::Continue(e))
            }
            Some(e) => Err(Error::NotFound(format!(
                "no interrupted execution of '{name}' to resume (the latest, {}, is {})",
                e.id, e.status
            ))),
            None => Err(Error::NotFound(format!(
                "no execution of '{name}' to resume"
            ))),
        },
    }
}

/// What a run of `wf` does, read from `store`: see [`RunIntent`] and [`RunPlan`]. For
/// [`RunIntent::Resume`], executions whose process died are first marked interrupted.
pub fn plan_run(store: &Store, wf: &Workflow, intent: RunIntent) -> Result<RunPlan> {
    let latest = match &intent {
        RunIntent::Recovered(_) => None,
        RunIntent::Resume { .. } => {
            store.recover_interrupted()?;
            store.latest_execution(&wf.name)?
        }
        RunIntent::New => store.latest_execution(&wf.name)?,
    };
    match decide(&wf.name, &wf.digest(), latest, intent)? {
        Decision::New { stop_leftovers } => Ok(RunPlan::New { stop_leftovers }),
        Decision::Continue(execution) => {
            let tasks = store.task_executions(&execution.id)?;
            Ok(RunPlan::Resume(ResumeFrom { execution, tasks }))
        }
    }
}

/// Opens the state file at `db_path` for a run of `wf` and plans it with [`plan_run`]. A
/// resume with no state file is refused before anything is created: nothing to resume, and
/// nothing to create for it.
pub fn open_for_run(db_path: &Path, wf: &Workflow, intent: RunIntent) -> Result<(Store, RunPlan)> {
    if matches!(intent, RunIntent::Resume { .. }) && !db_path.exists() {
        return Err(Error::NotFound(format!(
            "no execution of '{}' to resume (no state file {})",
            wf.name,
            db_path.display()
        )));
    }
    let store = Store::open(db_path)?;
    let plan = plan_run(&store, wf, intent)?;
    Ok((store, plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn execution(status: WorkflowStatus, definition: Option<&str>) -> WorkflowExecution {
        let now = Utc::now();
        WorkflowExecution {
            id: "e1".into(),
            workflow_name: "wf".into(),
            started_at: now,
            finished_at: None,
            status,
            duration_seconds: None,
            total_tasks: 1,
            successful_tasks: 0,
            failed_tasks: 0,
            created_at: now,
            pid: 1,
            source: None,
            definition: definition.map(String::from),
        }
    }

    fn resume(force: bool) -> RunIntent {
        RunIntent::Resume {
            force,
            origin: "wf.yaml".into(),
        }
    }

    #[test]
    fn a_new_run_stops_leftovers_only_after_an_interruption() {
        let new = |latest| decide("wf", "d", latest, RunIntent::New).unwrap();
        assert_eq!(
            new(None),
            Decision::New {
                stop_leftovers: false
            }
        );
        let done = execution(WorkflowStatus::Success, Some("d"));
        assert_eq!(
            new(Some(done)),
            Decision::New {
                stop_leftovers: false
            }
        );
        let cut = execution(WorkflowStatus::Interrupted, Some("d"));
        assert_eq!(
            new(Some(cut)),
            Decision::New {
                stop_leftovers: true
            }
        );
    }

    #[test]
    fn resume_continues_the_latest_interrupted_execution() {
        let cut = execution(WorkflowStatus::Interrupted, Some("d"));
        let d = decide("wf", "d", Some(cut.clone()), resume(false)).unwrap();
        assert_eq!(d, Decision::Continue(cut));
        // Records of earlier versions carry no digest: nothing to compare, so they continue.
        let old = execution(WorkflowStatus::Interrupted, None);
        let d = decide("wf", "other", Some(old.clone()), resume(false)).unwrap();
        assert_eq!(d, Decision::Continue(old));
    }

    #[test]
    fn resume_refuses_a_changed_definition_unless_forced() {
        let cut = execution(WorkflowStatus::Interrupted, Some("before"));
        let e = decide("wf", "after", Some(cut.clone()), resume(false)).unwrap_err();
        assert!(matches!(&e, Error::Config { origin, .. } if origin == "wf.yaml"));
        assert!(e
            .to_string()
            .contains("the workflow changed since execution e1"));
        let d = decide("wf", "after", Some(cut.clone()), resume(true)).unwrap();
        assert_eq!(d, Decision::Continue(cut));
    }

    #[test]
    fn resume_without_an_interrupted_latest_execution_is_not_found() {
        let e = decide("wf", "d", None, resume(true)).unwrap_err();
        assert!(matches!(e, Error::NotFound(ref m) if m == "no execution of 'wf' to resume"));
        let done = execution(WorkflowStatus::Success, Some("d"));
        let e = decide("wf", "d", Some(done), resume(true)).unwrap_err();
        assert!(matches!(e, Error::NotFound(ref m)
            if m.starts_with("no interrupted execution of 'wf' to resume (the latest, e1, is")));
    }

    #[test]
    fn the_daemon_continues_what_its_crash_interrupted_whatever_the_definition() {
        let cut = execution(WorkflowStatus::Interrupted, Some("before"));
        let d = decide("wf", "after", None, RunIntent::Recovered(cut.clone())).unwrap();
        assert_eq!(d, Decision::Continue(cut));
    }
}
