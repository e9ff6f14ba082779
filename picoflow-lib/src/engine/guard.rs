//! Edge guards in a run: the workflow's `requires:` is asked once, before its first task
//! starts; a task's own when it is about to start (after its condition). `on_unmet: wait`
//! checks again every few seconds, holding no slot, until every guard holds, the wait times
//! out (then the task fails) or the run is stopped. A requirement that does not hold ends the
//! task without an attempt, with a record that says which guard and what was found: skipped
//! (`skipped: requirement not met: …`) or failed (`requirement not met: …`). A workflow whose
//! own requirement does not hold ends each of its DAG's tasks that way; its handlers still
//! run (an `on_failure` handler is how a failed requirement is reported), under their own
//! `requires:` only.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::events::{SkipReason, TaskState};
use crate::guards::{self, Guard, OnUnmet, Requires, Unmet};
use crate::model::TaskConfig;
use crate::settings::guards::show_duration;

use super::report::{Finished, TaskReport};
use super::run::Run;
use super::Engine;

/// How a requirement was answered.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Gate {
    /// Every guard holds (or there are none): go on.
    Open,
    /// A guard does not hold: the task is skipped (`skip`) or fails, saying `why`.
    Closed {
        /// Skipped rather than failed.
        skip: bool,
        /// The unmet guard and what was found.
        why: String,
    },
    /// The run was stopped while the requirement was waited for.
    Stopped,
}

/// The workflow's requirement, answered once per run (`None` until then).
pub(super) type WorkflowGate = RefCell<Option<Gate>>;

impl Engine {
    /// Answers the workflow's own `requires:`, once, before its first task starts.
    pub(super) async fn open_workflow_gate(&self, run: &Run<'_>) {
        let gate = match &run.wf.requires {
            None => Gate::Open,
            Some(req) => {
                let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                let req = self.expanded(run, None, req);
                self.requirement(run, &req, here, None).await
            }
        };
        run.gate.replace(Some(gate));
    }

    /// Task `index`'s requirement — the workflow's for a task of its DAG, then the task's
    /// own — answered; `Some` with its end when it does not run. `report` names the task.
    pub(super) async fn guard_task(
        &self,
        run: &Run<'_>,
        index: usize,
        mut report: TaskReport,
    ) -> Option<Finished> {
        let task = &run.tasks[index];
        let in_dag = index < run.wf.tasks.len();
        // The workflow's answer stands for the tasks of its DAG, a stop during it included.
        let gate = match run.gate.borrow().clone() {
            Some(g) if in_dag => g,
            _ => Gate::Open,
        };
        let gate = match (gate, &task.requires) {
            (Gate::Open, Some(req)) => {
                let req = self.expanded(run, Some(index), req);
                let workdir = match &task.config {
                    TaskConfig::Shell(s) => s.workdir.as_ref().map(|d| {
                        PathBuf::from(self.expand_for(run, Some(index), &d.to_string_lossy()))
                    }),
                    _ => None,
                };
                let here = workdir
                    .or_else(|| std::env::current_dir().ok())
                    .unwrap_or_else(|| PathBuf::from("."));
                self.requirement(run, &req, here, Some(&task.name)).await
            }
            (gate, _) => gate,
        };
        let (skip, why) = match gate {
            Gate::Open => return None,
            Gate::Stopped => {
                report.error = Some("interrupted before starting".into());
                return Some(Finished::failed(index, report));
            }
            Gate::Closed { skip, why } => (skip, why),
        };
        let name = report.name.clone();
        if skip {
            self.skip(run, &name, SkipReason::Unmet(why).message(), &mut report);
            return Some(Finished {
                release_dependents: true,
                ..Finished::failed(index, report)
            });
        }
        let message = format!("{} {why}", SkipReason::UNMET);
        self.record_unrun(run, &name, TaskState::Failed, message, &mut report);
        Some(Finished {
            release_dependents: task.continue_on_failure,
            ..Finished::failed(index, report)
        })
    }

    /// `text` with its `${…}` references expanded as task `index`'s attempt would expand
    /// them (the environment, and the run's values it reads).
    /// `None` stands for the workflow's own `requires:`, which reads the environment only.
    fn expand_for(&self, run: &Run<'_>, index: Option<usize>, text: &str) -> String {
        match index.map(|i| &run.refs[i]).filter(|r| !r.is_empty()) {
            None => self.vars.expand(text),
            Some(refs) => run
                .values
                .borrow()
                .vars_for(&self.vars, refs, None)
                .expand(text),
        }
    }

    /// `req` with the paths of its disk guards expanded (see [`Engine::expand_for`]).
    fn expanded(&self, run: &Run<'_>, index: Option<usize>, req: &Requires) -> Requires {
        let mut req = req.clone();
        for g in &mut req.guards {
            if let Guard::FreeDisk { path: Some(p), .. } = g {
                *p = PathBuf::from(self.expand_for(run, index, &p.to_string_lossy()));
            }
        }
        req
    }

    /// Checks `req` (with `workdir` for a disk guard without a path) as its `on_unmet`
    /// says, off the engine's thread; `task` is `None` for the workflow's own.
    async fn requirement(
        &self,
        run: &Run<'_>,
        req: &Requires,
        workdir: PathBuf,
        task: Option<&str>,
    ) -> Gate {
        let begun = Instant::now();
        let mut said = false;
        // What the last check found, for a wait whose end cuts the next check short.
        let mut last: Option<Unmet> = None;
        loop {
            let left = req.wait_timeout.saturating_sub(begun.elapsed());
            let bound = (req.on_unmet == OnUnmet::Wait).then_some(left);
            let unmet = match until_stopped(run, bounded_check(req, &workdir, bound)).await {
                None => return Gate::Stopped,
                Some(Some(Ok(()))) => {
                    if said {
                        tracing::info!(workflow = %run.wf.name, task, "requirement met; starting");
                    }
                    return Gate::Open;
                }
                Some(Some(Err(u))) => u,
                Some(None) => last.take().unwrap_or_else(|| Unmet {
                    guard: "requires",
                    detail: "the check did not finish".into(),
                }),
            };
            let why = unmet.to_string();
            last = Some(unmet);
            match req.on_unmet {
                OnUnmet::Skip => return Gate::Closed { skip: true, why },
                OnUnmet::Fail => return Gate::Closed { skip: false, why },
                OnUnmet::Wait => {}
            }
            let left = req.wait_timeout.saturating_sub(begun.elapsed());
            if left.is_zero() {
                let waited = show_duration(req.wait_timeout);
                let why = format!("{why} (still after waiting {waited})");
                return Gate::Closed { skip: false, why };
            }
            if !said {
                said = true;
                tracing::info!(workflow = %run.wf.name, task, unmet = %why, "waiting for a requirement");
            }
            let pause = smol::Timer::after(left.min(guards::WAIT_POLL));
            if until_stopped(run, pause).await.is_none() {
                return Gate::Stopped;
            }
        }
    }
}

/// `work`'s output, or `None` when the run is stopped first.
async fn until_stopped<T>(run: &Run<'_>, work: impl std::future::Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        run.cancel.cancelled().await;
        None
    })
    .await
}

/// One check of `req` — a name that resolves slowly or a host that does not answer may take
/// seconds — ended early (`None`) when `bound` passes first.
async fn bounded_check(
    req: &Requires,
    workdir: &Path,
    bound: Option<Duration>,
) -> Option<Result<(), Unmet>> {
    future::or(
        async { Some(check_off_thread(req, workdir).await) },
        async {
            match bound {
                Some(d) => smol::Timer::after(d).await,
                None => future::pending().await,
            };
            None
        },
    )
    .await
}

/// `guards::check` on a thread of its own (it reads files, resolves names and connects),
/// so the engine's thread goes on; a thread that cannot start is a guard that cannot be
/// checked, which does not hold.
async fn check_off_thread(req: &Requires, workdir: &Path) -> Result<(), Unmet> {
    let (tx, rx) = smol::channel::bounded(1);
    let (r, w) = (req.clone(), workdir.to_path_buf());
    let started = crate::threads::spawn(
        "picoflow-guard".into(),
        Box::new(move || {
            let _ = tx.send_blocking(guards::check(&r, &w));
        }),
    );
    let cannot = |e: String| Unmet {
        guard: "requires",
        detail: format!("cannot be checked: {e}"),
    };
    match started {
        Ok(_) => rx
            .recv()
            .await
            .unwrap_or_else(|_| Err(cannot("the check ended without an answer".into()))),
        Err(e) => Err(cannot(e.to_string())),
    }
}
