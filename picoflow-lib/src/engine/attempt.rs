//! One task's attempts (DAG-006, DAG-007, DAG-008): wait for a slot and the shared limiter
//! (and, before a retry, its backoff) while watching for the stop; run the attempt with its
//! log sink; record how it ended, with what it published; ask `retry.rs` what follows, and
//! carry that out.
//!
//! Every attempt has one record: `running` when it starts, then `retrying` when another
//! attempt follows, or its final state. A stop that comes while a retry waits ends the task
//! with its last record marked interrupted, so no record stays `retrying` after the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_lite::future;
use smol::lock::{SemaphoreGuard, SemaphoreGuardArc};

use crate::events::{Event, TaskExecution, TaskState, INTERRUPTED};
use crate::executor::{NoOutput, Outcome, OutputSink, TaskContext, TaskOutput};
use crate::logs::{task_log_path, LogFile};
use crate::model::Task;

use super::log_sink::{Closing, LogEnd, LogSink};
use super::outputs;
use super::report::{Finished, TaskReport};
use super::retry::{next_step, End, Ended, RetryPolicy, Step};
use super::run::Run;
use super::Engine;

/// A loop's item for its task: the item's text and its place in the list.
pub(super) type Item<'i> = Option<(&'i str, usize)>;

/// What an attempt holds while it runs: a slot of the run's, and one of the shared limiter.
type Permits<'s> = (Option<SemaphoreGuard<'s>>, Option<SemaphoreGuardArc>);

/// An attempt that ran.
struct Ran {
    /// Its record, complete but for its final state.
    record: TaskExecution,
    outcome: Outcome,
    retryable: bool,
    /// What the task's report says of it.
    exit_code: Option<i32>,
    error: Option<String>,
    /// What it published.
    outputs: Option<BTreeMap<String, String>>,
}

impl Ran {
    fn ended(&self) -> Ended {
        Ended::Ran {
            outcome: self.outcome,
            retryable: self.retryable,
        }
    }

    /// Makes `report` say this attempt was the task's last so far.
    fn tell(&self, report: &mut TaskReport) {
        report.attempts += 1;
        report.exit_code = self.exit_code;
        report.duration_seconds = self.record.duration_seconds;
        report.error = self.error.clone();
    }
}

impl Engine {
    /// Runs every attempt of one task: `task` is the `index`th of the run (a loop's item task
    /// for loops, `item` its loop item), and its first attempt here is `first_attempt` (a
    /// resumed task goes on counting). `slot_held` when the caller took its slot already.
    pub(super) async fn run_task(
        &self,
        run: &Run<'_>,
        index: usize,
        task: &Task,
        item: Item<'_>,
        first_attempt: u32,
        slot_held: bool,
    ) -> Finished {
        let policy = RetryPolicy {
            last_attempt: first_attempt + self.retries(run.wf, task),
            backoff: &self.settings.retry,
        };
        let mut report = TaskReport::pending(&task.name);
        let mut attempt = first_attempt;
        let mut backoff = None;
        // The last attempt made; while a retry waits, its record says `retrying`.
        let mut last: Option<Ran> = None;
        loop {
            let ended = match self.wait_to_start(run, backoff, slot_held).await {
                None => Ended::Stopped,
                Some(permits) => {
                    let ran = self.attempt(run, index, task, item, attempt, permits).await;
                    ran.tell(&mut report);
                    let ended = ran.ended();
                    last = Some(ran);
                    ended
                }
            };
            match next_step(&ended, attempt, &policy, run.cancel.is_cancelled()) {
                Step::Retry { after } => {
                    let ran = last.as_mut().expect("only an attempt that ran is retried");
                    ran.record.status = TaskState::Retrying;
                    self.emit(Event::TaskFinished {
                        record: ran.record.clone(),
                        retry_in: Some(after),
                    });
                    backoff = Some(after);
                    attempt += 1;
                }
                Step::Done(end) => return self.end_task(index, task, end, last, report),
            }
        }
    }

    /// Waits `backoff` (before a retry), then for a slot (unless `slot_held`) and the
    /// shared limiter's permit; `None` if the run is stopped first.
    async fn wait_to_start<'r>(
        &self,
        run: &'r Run<'_>,
        backoff: Option<Duration>,
        slot_held: bool,
    ) -> Option<Permits<'r>> {
        future::or(
            async {
                if let Some(delay) = backoff {
                    smol::Timer::after(delay).await;
                }
                let slot = match (&run.slots, slot_held) {
                    (Some(s), false) => Some(s.acquire().await),
                    _ => None,
                };
                let permit = match &self.limiter {
                    Some(l) => Some(l.acquire_arc().await),
                    None => None,
                };
                Some((slot, permit))
            },
            async {
                run.cancel.cancelled().await;
                None
            },
        )
        .await
    }

    /// Makes attempt number `attempt` of `task` (see [`Engine::run_task`]) while it holds
    /// `permits`, and records it: the record is sent when it starts, and is complete but
    /// for its final state when this returns.
    async fn attempt(
        &self,
        run: &Run<'_>,
        index: usize,
        task: &Task,
        item: Item<'_>,
        attempt: u32,
        permits: Permits<'_>,
    ) -> Ran {
        let executor = self
            .registry
            .get(&task.kind)
            .expect("validated: every task type has an executor");
        // Values of the run this attempt reads, as they are now.
        let refs = &run.refs[index];
        let vars = match refs.is_empty() {
            true => None,
            false => Some(run.values.borrow().vars_for(&self.vars, refs, item)),
        };
        let clock = Instant::now();
        let record = TaskExecution::started(&run.execution_id, &task.name, attempt, Utc::now());
        self.emit(Event::TaskStarted(record.clone()));
        let sink = run.log_dir.as_deref().map(|d| {
            let header = (attempt > 1).then(|| format!("--- attempt {attempt} ---\n"));
            LogSink::new(
                &run.files,
                LogFile::new(task_log_path(d, &task.name), header),
            )
        });
        let output: &dyn OutputSink = match &sink {
            Some(s) => s,
            None => &NoOutput,
        };
        let ctx = TaskContext {
            workflow: &run.wf.name,
            execution_id: &run.execution_id,
            task,
            attempt,
            timeout: self.timeout(run.wf, task),
            cancel: run.cancel.clone(),
            vars: vars.as_ref().unwrap_or(&self.vars),
            shared: &run.shared,
            output,
            output_dir: &run.output_dir,
            limits: task.limits.or(&self.settings.limits),
        };
        let mut out = executor.execute(ctx).await;
        drop(permits);
        let (log_problem, written) = end_files(run, task, attempt, sink).await;
        let outputs = outputs::collect(task, written.as_deref(), &mut out);
        finish_record(record, clock, out, outputs, log_problem)
    }

    /// Ends the task as `end` says, with `last` its last attempt, if one ran.
    fn end_task(
        &self,
        index: usize,
        task: &Task,
        end: End,
        last: Option<Ran>,
        mut report: TaskReport,
    ) -> Finished {
        let ran = match (end, last) {
            (End::Stopped, Some(ran)) => {
                self.retry_cut_short(ran.record, &mut report);
                return Finished::failed(index, report);
            }
            // Only a stop ends a task before its first attempt.
            (_, None) => {
                report.error = Some("interrupted before starting".into());
                return Finished::failed(index, report);
            }
            (_, Some(ran)) => ran,
        };
        let Ran {
            mut record,
            outputs,
            ..
        } = ran;
        record.status = end.state();
        report.state = end.state();
        self.emit(Event::TaskFinished {
            record,
            retry_in: None,
        });
        Finished {
            index,
            report,
            release_dependents: end.releases(task.continue_on_failure),
            outputs,
            items: Vec::new(),
        }
    }

    /// Ends a task whose next attempt will not be made because the run was stopped while it
    /// waited (for its retry delay or a free slot): its last attempt, recorded `retrying`, is
    /// recorded again as failed, so no record stays `retrying` after the run. The message
    /// marks it interrupted, so a resumed execution runs the task again, as it would have.
    fn retry_cut_short(&self, mut record: TaskExecution, report: &mut TaskReport) {
        let why = format!("{INTERRUPTED} the run was stopped while the task waited to retry");
        record.status = TaskState::Failed;
        record.error_message = Some(match record.error_message.take() {
            Some(e) => format!("{why} (after: {e})"),
            None => why,
        });
        report.state = TaskState::Failed;
        report.error = record.error_message.clone();
        self.emit(Event::TaskFinished {
            record,
            retry_in: None,
        });
    }
}

/// The file work at an attempt's end: ends its task log (`sink`), saying why it is
/// incomplete if it is, and reads and removes its output file. Both are done on the
/// execution's file thread, and the engine waits for that thread only when it must (for
/// log writes still under way, for an output file): most attempts write no output file,
/// and a trip to that thread and back would be most of the engine's own cost of a task. Whether the output file exists is asked here, with one
/// name lookup in the directory the engine made for the execution, whose entries the kernel
/// normally holds in its cache; what waits on the disk (reading, removing) is the thread's.
async fn end_files(
    run: &Run<'_>,
    task: &Task,
    attempt: u32,
    sink: Option<LogSink<'_>>,
) -> (Option<String>, Option<Vec<u8>>) {
    let file = crate::executor::output_file(&run.output_dir, &task.name, attempt);
    let log = sink.map(LogSink::end).unwrap_or(LogEnd::Done(None));
    let written = std::fs::symlink_metadata(&file).is_ok();
    let closing = match log {
        LogEnd::Done(problem) if !written => return (problem, None),
        LogEnd::Done(problem) => Err(problem),
        LogEnd::Wait(closing) => Ok(closing),
    };
    let work = move || {
        let problem = closing.map_or_else(|p| p, Closing::close);
        (
            problem,
            written.then(|| outputs::read_output_file(&file)).flatten(),
        )
    };
    run.files.run(work).await.unwrap_or_default()
}

/// The record of an attempt that started as `record` (`clock` running since) and ended as
/// `out`, having published `outputs`; `log_problem` says why its log is incomplete.
fn finish_record(
    mut record: TaskExecution,
    clock: Instant,
    mut out: TaskOutput,
    outputs: Option<BTreeMap<String, String>>,
    log_problem: Option<String>,
) -> Ran {
    record.finished_at = Some(Utc::now());
    record.duration_seconds = Some(clock.elapsed().as_secs_f64());
    record.exit_code = out.exit_code;
    (record.stdout, record.stdout_size) = std::mem::take(&mut out.stdout).into_stored();
    (record.stderr, record.stderr_size) = std::mem::take(&mut out.stderr).into_stored();
    record.error_message = out.error.clone();
    record.outputs = outputs.clone();
    // A log that could not be written (full disk) is said on the task's record.
    if let Some(p) = log_problem {
        record.error_message = Some(match record.error_message.take() {
            Some(e) => format!("{e}; warning: {p}"),
            None => format!("warning: {p}"),
        });
    }
    if out.outcome == Outcome::Cancelled {
        // PicoFlow stopped it: no exit code of the task's own, and one state for it
        // (see `INTERRUPTED`), as for an attempt whose process died.
        let why = out.error.take().unwrap_or_else(|| "cancelled".into());
        out.error = Some(format!("{INTERRUPTED} the run was stopped ({why})"));
        out.exit_code = None;
        record.exit_code = None;
        record.error_message = out.error.clone();
    }
    Ran {
        record,
        outcome: out.outcome,
        retryable: out.retryable,
        exit_code: out.exit_code,
        error: out.error,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::engine::{Engine, EngineSettings, RunOptions};
    use crate::events::{Event, EventSink, TaskExecution, TaskState, WorkflowStatus};
    use crate::executor::{CancelToken, Registry};
    /// A run stopped while a task waited to retry left that task's last record `retrying`
    /// for good: the store and the history said a retry was coming for a run that had
    /// ended, while the report said the task failed.
    #[test]
    fn a_retry_cut_short_by_a_stop_ends_the_task_record() {
        /// Keeps the ends of attempts; stops the run when the first retry is announced, so
        /// the stop comes while the task waits for it (a second).
        struct Ends(
            Mutex<Vec<(TaskExecution, Option<Duration>)>>,
            crate::Canceller,
        );
        impl EventSink for Ends {
            fn on_event(&self, event: &Event) {
                if let Event::TaskFinished { record, retry_in } = event {
                    self.0.lock().unwrap().push((record.clone(), *retry_in));
                    if retry_in.is_some() {
                        self.1.cancel();
                    }
                }
            }
        }
        let (canceller, token) = CancelToken::new();
        let sink = Arc::new(Ends(Mutex::new(Vec::new()), canceller));
        let engine = Engine::new(Registry::builtin()).with_sink(sink.clone());
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, retry: 3, config: {command: \"false\"}}\n",
            "w.yaml",
        )
        .unwrap();
        let opts = RunOptions {
            cancel: token,
            ..RunOptions::default()
        };
        let report = smol::block_on(engine.run(&wf, opts)).unwrap();
        assert_eq!(report.execution.status, WorkflowStatus::Interrupted);
        assert_eq!(report.tasks[0].state, TaskState::Failed, "{report:?}");
        let ends = sink.0.lock().unwrap();
        assert_eq!(ends.len(), 2, "{ends:?}");
        assert_eq!(ends[0].0.status, TaskState::Retrying);
        let (last, retry_in) = &ends[1];
        assert_eq!(last.id, ends[0].0.id, "the same attempt, recorded again");
        assert_eq!(last.status, TaskState::Failed);
        assert!(retry_in.is_none());
        let message = last.error_message.clone().unwrap_or_default();
        assert!(message.starts_with(crate::events::INTERRUPTED), "{message}");
        assert_eq!(report.tasks[0].error.as_deref(), Some(message.as_str()));
    }

    /// The log of a task that is retried holds each attempt's output, in order, the later
    /// ones after their separator, though the file thread writes it.
    #[test]
    fn every_attempt_is_logged_in_order() {
        let dir = std::env::temp_dir().join(format!("pf-attempts-{}", crate::events::new_id()));
        let mut settings = EngineSettings::default();
        settings.retry.max_backoff_seconds = 0;
        let engine = Engine::new(Registry::builtin())
            .with_settings(settings)
            .with_log_dir(&dir);
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - {name: a, type: shell, retry: 1, config: {command: \"for i in 1 2 3; do echo $PICOFLOW_ATTEMPT.$i; done; exit 1\"}}\n",
            "w.yaml",
        )
        .unwrap();
        let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
        assert_eq!(report.tasks[0].attempts, 2, "{report:?}");
        let run_dir = std::fs::read_dir(dir.join("w")).unwrap().next().unwrap();
        let log = std::fs::read_to_string(run_dir.unwrap().path().join("a.log")).unwrap();
        assert_eq!(log, "1.1\n1.2\n1.3\n--- attempt 2 ---\n2.1\n2.2\n2.3\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
