//! Loop tasks (`iterate_over`): one task `NAME[item]` per item, started in item order on a
//! local executor of the loop's own, at most `max_parallel` running at once (the run's
//! slots); the loop succeeds when every item does. Items finished in an earlier run of a
//! resumed execution are kept, with their outputs, and each item's end is made durable at
//! once, so a resume after a crash keeps it too.

use std::collections::BTreeMap;

use futures_lite::future;
use smol::LocalExecutor;

use crate::events::{SkipReason, TaskState};
use crate::model::Task;

use super::report::{Finished, TaskReport};
use super::resume::finished_before;
use super::run::Run;
use super::Engine;

/// How one item's task ended: its report, whether it lets the loop's dependents run, and
/// what it published.
type ItemEnd = (TaskReport, bool, Option<BTreeMap<String, String>>);

impl Engine {
    /// Runs loop task `index` of the run to its end.
    pub(super) async fn run_loop(&self, run: &Run<'_>, index: usize) -> Finished {
        let task = &run.tasks[index];
        let mut report = TaskReport::pending(&task.name);
        let spec = task.iterate_over.as_ref().expect("a loop task");
        // The borrow of the values ends here: recording a failure below borrows them again.
        let built = run.values.borrow().items(spec, &self.vars);
        let list = match built {
            Ok(l) => l,
            Err(e) => {
                self.record_unrun(run, &task.name, TaskState::Failed, e, &mut report);
                // A failure like any other: `continue_on_failure` lets the run go on.
                return Finished {
                    release_dependents: task.continue_on_failure,
                    ..Finished::failed(index, report)
                };
            }
        };
        if list.is_empty() {
            self.skip(run, &task.name, SkipReason::NoItems.message(), &mut report);
            return Finished {
                release_dependents: true,
                ..Finished::failed(index, report)
            };
        }
        let ends = self.run_items(run, index, &list).await;
        summarize(run, index, report, ends)
    }

    /// Runs the tasks of loop `index` for `list`, and returns how each ended, in item order.
    async fn run_items(&self, run: &Run<'_>, index: usize, list: &[String]) -> Vec<ItemEnd> {
        let task = &run.tasks[index];
        let names = item_names(&task.name, list);
        // What each item's task is made from: without the list, which cloning for every
        // item made a loop's cost grow with the square of its items.
        let mut template = task.clone().into_owned();
        template.iterate_over = None;
        let template = &template;
        let lex = LocalExecutor::new();
        let driver = async {
            let mut handles = Vec::with_capacity(list.len());
            for (k, (item, name)) in list.iter().zip(&names).enumerate() {
                let item = (item.as_str(), k);
                handles.push(
                    self.start_item(run, &lex, index, template, item, name)
                        .await,
                );
            }
            let mut ends = Vec::with_capacity(handles.len());
            for h in handles {
                ends.push(h.await);
            }
            ends
        };
        lex.run(driver).await
    }

    /// Starts the task `name` of `item` (its text and place) of loop `index` on `lex`, made
    /// from `template`: unless a resumed execution finished it already or its condition skips
    /// it, once it has its slot. Items start in their order: each waits for its slot here,
    /// in turn.
    async fn start_item<'r>(
        &'r self,
        run: &'r Run<'r>,
        lex: &LocalExecutor<'r>,
        index: usize,
        template: &Task,
        item: (&'r str, usize),
        name: &str,
    ) -> smol::Task<ItemEnd> {
        let earlier = run.earlier.get(name);
        if let Some(a) = earlier.filter(|a| finished_before(a, &run.tasks[index])) {
            return ended(lex, (TaskReport::resumed(a), true, a.outputs.clone()));
        }
        let mut r = TaskReport::pending(name);
        if !self.condition_holds(run, index, Some(item), &mut r) {
            return ended(lex, (r, true, None));
        }
        let slot = match &run.slots {
            None => None,
            Some(s) => {
                let got = future::or(async { Some(s.acquire().await) }, async {
                    run.cancel.cancelled().await;
                    None
                })
                .await;
                if got.is_none() {
                    r.error = Some("interrupted before starting".into());
                    return ended(lex, (r, false, None));
                }
                got
            }
        };
        let first = earlier.map_or(1, |a| a.attempt + 1);
        let mut t = template.clone();
        t.name = name.to_string();
        lex.spawn(async move {
            let f = self
                .run_task(run, index, &t, Some(item), first, slot.is_some())
                .await;
            drop(slot);
            // An item's end is durable at once: a resume after a crash keeps it.
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, task = %t.name, "cannot record the end of a loop's task");
            }
            (f.report, f.release_dependents, f.outputs)
        })
    }
}

/// A task on `lex` for an item that ended without running as `end` says: one type of task
/// for every such item, so one copy of the executor's task code.
fn ended<'r>(lex: &LocalExecutor<'r>, end: ItemEnd) -> smol::Task<ItemEnd> {
    lex.spawn(future::ready(end))
}

/// The end of loop `index`, whose items ended as `ends`: it succeeds when every item does,
/// and releases its dependents unless an item holds them back; each item's values are
/// published under its own name.
fn summarize(run: &Run<'_>, index: usize, mut report: TaskReport, ends: Vec<ItemEnd>) -> Finished {
    let mut items = Vec::with_capacity(ends.len());
    let mut failures = Vec::new();
    let mut release = true;
    for (r, ok, outputs) in ends {
        run.values.borrow_mut().publish(&r.name, r.state, outputs);
        release &= ok;
        if r.state.is_failure() || r.state == TaskState::Pending {
            failures.push(r.name.clone());
        }
        report.attempts += r.attempts;
        items.push(r);
    }
    report.state = match failures.is_empty() {
        true => TaskState::Success,
        false => TaskState::Failed,
    };
    if !failures.is_empty() {
        report.error = Some(format!(
            "{} of {} items did not succeed: {}",
            failures.len(),
            items.len(),
            failures.join(", ")
        ));
    }
    Finished {
        index,
        report,
        release_dependents: release,
        outputs: None,
        items,
    }
}

/// The names of a loop's tasks: `NAME[item]`, or `NAME[index]` for every item when items
/// repeat, are longer than 64 characters or hold control characters or brackets.
fn item_names(task: &str, items: &[String]) -> Vec<String> {
    let plain = |s: &String| {
        !s.is_empty() && s.len() <= 64 && !s.chars().any(|c| c.is_control() || c == '[' || c == ']')
    };
    let unique = items.iter().collect::<std::collections::HashSet<_>>().len() == items.len();
    match unique && items.iter().all(plain) {
        true => items.iter().map(|i| format!("{task}[{i}]")).collect(),
        false => (0..items.len()).map(|k| format!("{task}[{k}]")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::engine::{Engine, RunOptions};
    use crate::events::TaskState;
    use crate::executor::{BoxFuture, Outcome, Registry, TaskContext, TaskOutput};
    /// A loop whose item list cannot be built (objects, or more items than allowed) fails its
    /// task with a message saying why; the engine goes on and the run ends normally.
    #[test]
    fn a_loop_whose_items_cannot_be_built_fails_its_task_without_a_panic() {
        let engine = Engine::new(Registry::builtin());
        let many = (0..=crate::flow::MAX_ITEMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let from_output = "\"${tasks.gen.outputs.list}\"".to_string();
        for items in [from_output, format!("[{many}]")] {
            let text = format!(
                r#"name: w
tasks:
  - name: gen
    type: shell
    outputs: {{list: stdout}}
    config: {{command: "echo '[{{\"id\":1}},{{\"id\":2}}]'"}}
  - name: each
    type: shell
    depends_on: [gen]
    iterate_over: {items}
    config: {{command: "true"}}
  - name: after
    type: shell
    run_if: all_done
    depends_on: [each]
    config: {{command: "true"}}
"#
            );
            let wf = crate::yaml::parse_workflow(&text, "w.yaml").unwrap();
            let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
            let task = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap();
            assert_eq!(task("each").state, TaskState::Failed, "{report:?}");
            let message = task("each").error.clone().unwrap_or_default();
            assert!(message.contains("item"), "{message}");
            assert!(!report.success());
            assert_eq!(task("after").state, TaskState::Success, "{report:?}");
        }
    }

    /// A loop with `continue_on_failure` whose items could not be built (a list of objects)
    /// failed the run and skipped its dependents, as if the flag were not set: the task
    /// failed before any item ran, and that path ignored it (DECISIONS.md 5).
    #[test]
    fn a_loop_with_continue_on_failure_whose_items_cannot_be_built_lets_the_run_go_on() {
        let engine = Engine::new(Registry::builtin());
        let text = r#"name: w
tasks:
  - name: gen
    type: shell
    outputs: {list: stdout}
    config: {command: "echo '[{\"id\":1}]'"}
  - name: each
    type: shell
    depends_on: [gen]
    continue_on_failure: true
    iterate_over: "${tasks.gen.outputs.list}"
    config: {command: "true"}
  - name: after
    type: shell
    depends_on: [each]
    config: {command: "true"}
"#;
        let wf = crate::yaml::parse_workflow(text, "w.yaml").unwrap();
        let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
        let task = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap();
        assert_eq!(task("each").state, TaskState::Failed, "{report:?}");
        assert_eq!(task("after").state, TaskState::Success, "{report:?}");
        assert!(report.success(), "{report:?}");
    }

    /// Each item's task was made by cloning the loop's task, list of items included, so a
    /// loop's cost grew with the square of its items: 10,000 items of an executor that takes
    /// no time took seconds. Linear, ten times the items take about ten times as long.
    #[test]
    fn a_loops_cost_grows_with_its_items_not_their_square() {
        struct Done;
        impl crate::Executor for Done {
            fn execute<'a>(&'a self, _: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
                Box::pin(async {
                    TaskOutput {
                        outcome: Outcome::Success,
                        exit_code: Some(0),
                        stdout: crate::executor::Capture::default(),
                        stderr: crate::executor::Capture::default(),
                        error: None,
                        retryable: false,
                    }
                })
            }
        }
        let mut registry = Registry::empty();
        registry.register("done", Done);
        let engine = Engine::new(registry);
        let time = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let text = format!(
                "name: w\ntasks:\n  - {{name: each, type: done, iterate_over: [{}], config: {{}}}}\n",
                items.join(",")
            );
            let wf = crate::yaml::parse_workflow(&text, "w.yaml").unwrap();
            let clock = Instant::now();
            let report = smol::block_on(engine.run(&wf, RunOptions::default())).unwrap();
            assert!(report.success());
            assert_eq!(report.tasks.len(), n);
            clock.elapsed()
        };
        // The fastest of a few runs each: other work on the machine only adds time.
        let small = (0..3).map(|_| time(1000)).min().unwrap();
        let big = (0..2).map(|_| time(crate::flow::MAX_ITEMS)).min().unwrap();
        // Linear is about 10; the square was about 60 here (100 in the limit).
        assert!(big < small * 40, "1,000 items: {small:?}, 10,000: {big:?}");
    }
}
