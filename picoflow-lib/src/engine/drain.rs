//! The scheduling loop's state: [`Drain`] holds what `Engine::run_inner`'s loop works on —
//! the [`Plan`] (which tasks may start, which completions must be durable first), the
//! reports so far, the channels on which started tasks and flushes report their ends, and
//! whether the run failed or is stopping — with one method per phase of the loop: start
//! what the plan allows, make completions durable, wait for something to end, take it in.
//! The decisions are the plan's, a pure type; this is the I/O around it.

use std::rc::Rc;

use futures_lite::future;
use smol::channel::{Receiver, Sender};
use smol::LocalExecutor;

use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::events::WorkflowStatus;
use crate::plan::Plan;

use super::report::{Finished, TaskReport};
use super::resume::Carried;
use super::run::Run;
use super::Engine;

/// The scheduling loop's state (see the module's docs).
pub(super) struct Drain<'a> {
    engine: &'a Engine,
    run: Rc<Run<'a>>,
    plan: Plan,
    /// Each task's report so far, in file order.
    reports: Vec<TaskReport>,
    /// The reports of each loop's tasks.
    items: Vec<Vec<TaskReport>>,
    /// The number of each task's first attempt in this run.
    first_attempt: Vec<u32>,
    /// Where started tasks send their ends.
    finished: (Sender<Finished>, Receiver<Finished>),
    /// Where a flush sends how it went.
    flushed: (Sender<FlushEnd>, Receiver<FlushEnd>),
    /// A task failed, and not because of a stop.
    failed: bool,
    /// The run is stopping: no task starts any more.
    cancelled: bool,
    /// The first failure to record the run's state, which the run ends with.
    store_error: Option<Error>,
}

/// How a flush ended, with the number of completions it covered.
type FlushEnd = (u64, Result<()>);

/// What woke the loop.
pub(super) enum Wake {
    /// A task (or a loop) ended.
    Finished(Finished),
    /// A flush ended.
    Flushed(FlushEnd),
    /// The run is to stop.
    Cancelled,
}

/// How the loop ended: the execution's status, every task's report, each loop's items'
/// reports, and the state store's failure if there was one.
pub(super) struct Drained {
    pub(super) status: WorkflowStatus,
    pub(super) reports: Vec<TaskReport>,
    pub(super) items: Vec<Vec<TaskReport>>,
    pub(super) store_error: Option<Error>,
}

impl<'a> Drain<'a> {
    /// The loop's state for `run`, whose tasks depend on each other as `dag` says and start
    /// from `carried`; reports at once the tasks that cannot run.
    pub(super) fn new(engine: &'a Engine, run: Rc<Run<'a>>, dag: &Dag, carried: Carried) -> Self {
        let wf = run.wf;
        let n = wf.tasks.len();
        let dependencies: Vec<Vec<usize>> = (0..n).map(|i| dag.dependencies(i).collect()).collect();
        let rules: Vec<_> = wf.tasks.iter().map(|t| t.run_if).collect();
        let plan = Plan::new(
            &dependencies,
            &rules,
            &carried.done,
            engine.max_parallel(wf),
        );
        let mut drain = Drain {
            engine,
            run,
            plan,
            reports: carried.reports,
            items: vec![Vec::new(); n],
            first_attempt: carried.first_attempt,
            finished: smol::channel::unbounded(),
            flushed: smol::channel::bounded(1),
            failed: false,
            cancelled: false,
            store_error: None,
        };
        drain.report_skips();
        drain
    }

    /// Starts every task the plan lets start, on `ex`, unless the run is stopping.
    pub(super) fn start_ready(&mut self, ex: &LocalExecutor<'a>) {
        while let Some(i) = self.plan.startable().filter(|_| !self.cancelled) {
            // Nothing starts that could not be recorded.
            if let Err(e) = self.engine.check() {
                tracing::error!(error = %e, "cannot record state; stopping the run");
                self.store_error.get_or_insert(e);
                self.cancelled = true;
                break;
            }
            self.plan.start(i);
            self.start(ex, i);
        }
    }

    /// Starts task `i` on `ex`, unless its condition skips it (which ends it at once).
    fn start(&mut self, ex: &LocalExecutor<'a>, i: usize) {
        let engine = self.engine;
        // A loop's condition is asked of each item.
        let is_loop = self.run.wf.tasks[i].iterate_over.is_some();
        if !is_loop && !engine.condition_holds(&self.run, i, None, &mut self.reports[i]) {
            self.plan.finish(i, true);
            self.report_skips();
            return;
        }
        let tx = self.finished.0.clone();
        let run = self.run.clone();
        let first = self.first_attempt[i];
        ex.spawn(async move {
            let pending = TaskReport::pending(&run.tasks[i].name);
            if let Some(f) = engine.guard_task(&run, i, pending).await {
                let _ = tx.send(f).await;
                return;
            }
            let f = match is_loop {
                true => engine.run_loop(&run, i).await,
                false => {
                    engine
                        .run_task(&run, i, &run.tasks[i], None, first, false)
                        .await
                }
            };
            let _ = tx.send(f).await;
        })
        .detach();
    }

    /// Makes completions durable at once, one flush at a time; only their dependents wait
    /// for it (see `plan`). That includes a task its condition skipped just now. The flush
    /// at the end of the run waits for whatever is left.
    pub(super) fn schedule_flush(&mut self, ex: &LocalExecutor<'a>) {
        if let Some(upto) = self.plan.flush_due() {
            let tx = self.flushed.0.clone();
            let engine = self.engine;
            ex.spawn(async move {
                let _ = tx.send((upto, engine.flush().await)).await;
            })
            .detach();
        }
    }

    /// Whether the loop is done: nothing runs, nothing more will start, nothing is being
    /// flushed. Ready tasks left over wait for a flush.
    pub(super) fn settled(&self) -> bool {
        self.plan.settled(self.cancelled)
    }

    /// Waits for a task or a flush to end, or for the stop.
    pub(super) async fn wait(&self) -> Wake {
        future::or(
            async {
                let f = self.finished.1.recv().await;
                f.map_or(Wake::Cancelled, Wake::Finished)
            },
            future::or(
                async {
                    let f = self.flushed.1.recv().await;
                    f.map_or(Wake::Cancelled, Wake::Flushed)
                },
                async {
                    match self.cancelled {
                        false => self.run.cancel.cancelled().await,
                        true => future::pending().await,
                    }
                    Wake::Cancelled
                },
            ),
        )
        .await
    }

    /// Takes in what woke the loop; with a flush's or a task's end, every task's end that
    /// came meanwhile too.
    pub(super) fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Finished(f) => self.task_ended(f),
            Wake::Flushed((upto, Ok(()))) => self.plan.durable(upto),
            Wake::Flushed((_, Err(e))) => {
                self.plan.flush_failed();
                tracing::error!(error = %e, "cannot record task completion; stopping the run");
                self.store_error.get_or_insert(e);
                self.cancelled = true;
            }
            Wake::Cancelled => {
                self.cancelled = true;
                return;
            }
        }
        while let Ok(f) = self.finished.1.try_recv() {
            self.task_ended(f);
        }
    }

    /// Takes in the end of task `f.index`: publishes its values, tells the plan, and reports
    /// the tasks its failure skips.
    fn task_ended(&mut self, f: Finished) {
        let i = f.index;
        let name = &self.run.wf.tasks[i].name;
        self.run
            .values
            .borrow_mut()
            .publish(name, f.report.state, f.outputs);
        self.reports[i] = f.report;
        self.items[i] = f.items;
        if self.run.cancel.is_cancelled() && !f.release_dependents {
            self.cancelled = true;
        }
        self.plan.finish(i, f.release_dependents);
        if !f.release_dependents && !self.cancelled {
            self.failed = true;
        }
        if !self.cancelled {
            self.report_skips();
        }
    }

    /// Reports the tasks the plan skipped since the last call.
    fn report_skips(&mut self) {
        let engine = self.engine;
        engine.report_skips(&self.run, &mut self.plan, &mut self.reports);
    }

    /// How the loop ended (see [`Drained`]).
    pub(super) fn into_drained(self) -> Drained {
        let status = if self.cancelled {
            WorkflowStatus::Interrupted
        } else if self.failed {
            WorkflowStatus::Failed
        } else {
            WorkflowStatus::Success
        };
        Drained {
            status,
            reports: self.reports,
            items: self.items,
            store_error: self.store_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures_lite::future;

    use crate::engine::{Engine, RunOptions};
    use crate::error::{Error, Result};
    use crate::events::{Event, EventSink, TaskState};
    use crate::executor::{BoxFuture, Registry};
    use crate::model::Workflow;
    /// Records events and flushes in order; each flush takes `delay`, and flushes after the
    /// first `good` ones fail.
    struct Recorder {
        log: Mutex<Vec<String>>,
        delay: Duration,
        good: usize,
    }

    impl Recorder {
        fn new(delay: Duration, good: usize) -> Arc<Recorder> {
            Arc::new(Recorder {
                log: Mutex::new(Vec::new()),
                delay,
                good,
            })
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl EventSink for Recorder {
        fn on_event(&self, event: &Event) {
            let line = match event {
                Event::TaskStarted(r) => format!("start {}", r.task_name),
                Event::TaskFinished { record, .. } => format!("end {}", record.task_name),
                Event::TaskSkipped(r) => format!("skip {}", r.task_name),
                Event::WorkflowStarted(_) => "run start".into(),
                Event::WorkflowFinished(_) => "run end".into(),
            };
            self.log.lock().unwrap().push(line);
        }

        fn flush(&self) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                smol::Timer::after(self.delay).await;
                let mut log = self.log.lock().unwrap();
                let done = log.iter().filter(|l| *l == "flushed").count();
                log.push("flushed".into());
                match done < self.good {
                    true => Ok(()),
                    false => Err(Error::Other("disk full".into())),
                }
            })
        }
    }

    fn chain(tasks: usize, command: &str) -> Workflow {
        let mut text = String::from("name: chain\ntasks:\n");
        for i in 0..tasks {
            text.push_str(&format!(
                "  - name: t{i}\n    type: shell\n    config:\n      command: \"{command}\"\n"
            ));
            if i > 0 {
                text.push_str(&format!("    depends_on: [t{}]\n", i - 1));
            }
        }
        crate::yaml::parse_workflow(&text, "chain.yaml").unwrap()
    }

    #[test]
    fn a_dependent_starts_only_once_its_dependencies_are_durable() {
        let sink = Recorder::new(Duration::from_millis(200), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let report = smol::block_on(engine.run(&chain(3, "true"), RunOptions::default())).unwrap();
        assert!(report.success());
        let log = sink.log();
        let flushes: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "flushed").collect();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        // The execution is durable before its first task starts ...
        assert!(
            pos("run start") < flushes[0] && flushes[0] < pos("start t0"),
            "{log:?}"
        );
        // ... and each completion before the task that depends on it starts.
        assert!(
            pos("end t0") < flushes[1] && flushes[1] < pos("start t1"),
            "{log:?}"
        );
        assert!(
            pos("end t1") < flushes[2] && flushes[2] < pos("start t2"),
            "{log:?}"
        );
        // The run reports its end only once everything is durable.
        assert_eq!(log.last().unwrap(), "flushed", "{log:?}");
        assert!(pos("run end") < log.len() - 1);
    }

    #[test]
    fn independent_tasks_do_not_wait_for_flushes() {
        let sink = Recorder::new(Duration::from_secs(1), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let mut wf = crate::yaml::parse_workflow(
            "name: w\nconfig: {max_parallel: 1}\ntasks:\n  - {name: a, type: shell, config: {command: \"true\"}}\n  - {name: b, type: shell, config: {command: \"true\"}}\n  - {name: c, type: shell, config: {command: \"true\"}}\n",
            "w.yaml",
        )
        .unwrap();
        wf.config.max_parallel = Some(1);
        let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
        assert!(report.success());
        let log = sink.log();
        let flushes: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "flushed").collect();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        // After the execution's own flush, the first completion's flush takes a second; tasks
        // that do not depend on it go on meanwhile.
        assert!(flushes[0] < pos("start a"), "{log:?}");
        assert!(pos("end c") < flushes[1], "{log:?}");
        assert_eq!(log.last().unwrap(), "flushed", "{log:?}");
    }

    #[test]
    fn a_failed_flush_stops_the_run_with_an_error() {
        // The execution's start is recorded, the first completion is not.
        let sink = Recorder::new(Duration::from_millis(10), 1);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let err =
            smol::block_on(engine.run(&chain(5, "sleep 0.3"), RunOptions::default())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let log = sink.log();
        let started = log.iter().filter(|l| l.starts_with("start")).count();
        assert!(
            started < 5,
            "no task starts after the store failed: {log:?}"
        );
    }

    #[test]
    fn no_task_starts_when_the_execution_cannot_be_recorded() {
        let sink = Recorder::new(Duration::from_millis(10), 0);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let err = smol::block_on(engine.run(&chain(2, "true"), RunOptions::default())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let log = sink.log();
        assert!(!log.iter().any(|l| l.starts_with("start")), "{log:?}");
    }

    /// A task its condition skips is a completion like any other: its dependents start once
    /// it is durable, even when nothing else is running to bring a flush about.
    #[test]
    fn a_task_skipped_by_its_condition_releases_its_dependents() {
        let sink = Recorder::new(Duration::from_millis(10), usize::MAX);
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, when: 'false', config: {command: \"true\"}}\n  - {name: b, type: shell, depends_on: [a], config: {command: \"true\"}}\n",
            "w.yaml",
        )
        .unwrap();
        let report = future::block_on(async {
            future::or(engine.run(&wf, RunOptions::default()), async {
                smol::Timer::after(Duration::from_secs(20)).await;
                panic!("the run never ended: {:?}", sink.log());
            })
            .await
        })
        .unwrap();
        assert!(report.success());
        assert_eq!(report.tasks[0].state, TaskState::Skipped);
        assert_eq!(report.tasks[1].state, TaskState::Success);
        let log = sink.log();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        assert!(pos("skip a") < pos("start b"), "{log:?}");
    }
}
