//! The bookkeeping of one execution, apart from everything that runs or records: which tasks
//! are ready, what a finished task unblocks or skips, and which completions must be durable
//! before whom (DAG-003 … DAG-005, REL-004). [`Plan`] does no I/O and knows no clock, so every
//! rule is unit-tested here without processes or a store; the engine's loop only spawns what
//! the plan says may start and reports back what ended.
//!
//! Durability: completions are numbered as they are reported. A task that becomes ready
//! carries the number of completions made so far; it may start only once that many are
//! durable ([`Plan::durable`]), which covers its own dependencies. Tasks that do not depend
//! on a completion never wait for its flush, and at most one flush is in flight.

use std::collections::VecDeque;

use crate::model::RunIf;

/// Where a task stands in the execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting,
    Running,
    /// Finished; the flag says whether it counts as a success for its dependents.
    Done(bool),
    /// Not run; the flag as for `Done`.
    Skipped(bool),
}

/// Why the plan skipped a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// A task it needs failed: the task that failed first, upstream.
    Failed(usize),
    /// Its `run_if` rule does not hold (a failure handler when nothing failed). Counts as a
    /// success for its own dependents.
    Rule,
}

/// The state of one execution's tasks. Indices are those of the workflow's tasks.
#[derive(Debug)]
pub(crate) struct Plan {
    slots: Vec<Slot>,
    dependents: Vec<Vec<usize>>,
    rules: Vec<RunIf>,
    dependency_count: Vec<usize>,
    /// Dependencies of each task that have not ended yet.
    remaining: Vec<usize>,
    /// Of those that ended, how many failed (or were skipped because of a failure), and the
    /// failure upstream that caused the first of them.
    failed: Vec<usize>,
    cause: Vec<Option<usize>>,
    /// Ready tasks in the order they became ready, each with the number of completions that
    /// must be durable before it starts.
    ready: VecDeque<(usize, u64)>,
    /// Skips not yet taken by the caller.
    skipped: Vec<(usize, Skip)>,
    limit: usize,
    running: usize,
    /// Completions reported so far.
    completed: u64,
    /// Completions known to be durable.
    covered: u64,
    flushing: bool,
}

impl Plan {
    /// A plan for tasks whose dependencies are `dependencies[i]` and whose trigger rules are
    /// `rules[i]`, at most `limit` running at once. Tasks with `done[i]` set finished in an
    /// earlier run of the execution (a resume): they do not run and they count as successes.
    pub(crate) fn new(
        dependencies: &[Vec<usize>],
        rules: &[RunIf],
        done: &[bool],
        limit: usize,
    ) -> Plan {
        let n = dependencies.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in dependencies.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        let slots: Vec<Slot> = (0..n)
            .map(|i| match done[i] {
                true => Slot::Done(true),
                false => Slot::Waiting,
            })
            .collect();
        let remaining: Vec<usize> = dependencies
            .iter()
            .map(|deps| deps.iter().filter(|&&d| !done[d]).count())
            .collect();
        let mut plan = Plan {
            slots,
            dependents,
            rules: rules.to_vec(),
            dependency_count: dependencies.iter().map(Vec::len).collect(),
            remaining,
            failed: vec![0; n],
            cause: vec![None; n],
            ready: VecDeque::new(),
            skipped: Vec::new(),
            limit: limit.max(1),
            running: 0,
            completed: 0,
            covered: 0,
            flushing: false,
        };
        // What can be decided at once; on a resume that includes skips, whose dependents
        // must hear of them. (None of these depends on another: each has no dependency left.)
        let decidable: Vec<usize> = (0..n)
            .filter(|&i| plan.slots[i] == Slot::Waiting && plan.remaining[i] == 0)
            .collect();
        for i in decidable {
            if let Some(skip) = plan.decide(i) {
                let cause = plan.cause[i];
                plan.resolved(i, skip == Skip::Rule, cause);
            }
        }
        plan
    }

    /// The task that may start now, if any: the first ready one, when a slot is free and the
    /// completions it depends on are durable. [`Plan::start`] it, or leave it for later.
    pub(crate) fn startable(&self) -> Option<usize> {
        let &(i, needs) = self.ready.front()?;
        (self.running < self.limit && needs <= self.covered).then_some(i)
    }

    /// Marks the task [`Plan::startable`] returned as running.
    pub(crate) fn start(&mut self, i: usize) {
        let (front, _) = self.ready.pop_front().expect("a startable task");
        debug_assert_eq!(front, i, "start the task startable() returned");
        self.slots[i] = Slot::Running;
        self.running += 1;
    }

    /// Records that running task `i` ended, as a success for its dependents (`ok`: it
    /// succeeded, failed with `continue_on_failure`, or its condition skipped it) or as a
    /// failure. Dependents whose every dependency has ended become ready, or are skipped by
    /// their rule ([`Plan::take_skipped`]).
    pub(crate) fn finish(&mut self, i: usize, ok: bool) {
        debug_assert_eq!(self.slots[i], Slot::Running);
        self.running -= 1;
        self.completed += 1;
        self.slots[i] = Slot::Done(ok);
        self.resolved(i, ok, if ok { None } else { Some(i) });
    }

    /// The tasks skipped since the last call, in the order the plan decided.
    pub(crate) fn take_skipped(&mut self) -> Vec<(usize, Skip)> {
        std::mem::take(&mut self.skipped)
    }

    /// Task `i` ended (`ok` as in [`Plan::finish`]); tells its dependents, breadth first.
    fn resolved(&mut self, i: usize, ok: bool, cause: Option<usize>) {
        let mut queue = VecDeque::from([(i, ok, cause)]);
        while let Some((i, ok, cause)) = queue.pop_front() {
            for k in 0..self.dependents[i].len() {
                let d = self.dependents[i][k];
                self.remaining[d] -= 1;
                if !ok {
                    self.failed[d] += 1;
                    self.cause[d] = self.cause[d].or(cause);
                }
                if self.slots[d] == Slot::Waiting && self.decidable(d) {
                    if let Some(skip) = self.decide(d) {
                        let ok = skip == Skip::Rule;
                        queue.push_back((d, ok, self.cause[d]));
                    }
                }
            }
        }
    }

    /// Whether waiting task `i`'s fate is known: every dependency has ended, or enough of
    /// them for its rule never to hold (a failure under `all_success`, a success under
    /// `all_failed`), so that it is skipped at once.
    fn decidable(&self, i: usize) -> bool {
        let ended_ok = self.dependency_count[i] - self.remaining[i] - self.failed[i];
        self.remaining[i] == 0
            || match self.rules[i] {
                RunIf::AllSuccess => self.failed[i] > 0,
                RunIf::AllFailed => ended_ok > 0,
                RunIf::AllDone | RunIf::AnyFailed => false,
            }
    }

    /// Waiting task `i` is [`Plan::decidable`]: it becomes ready, or is skipped.
    fn decide(&mut self, i: usize) -> Option<Skip> {
        let failed = self.failed[i];
        let runs = match self.rules[i] {
            RunIf::AllSuccess => failed == 0,
            RunIf::AllDone => true,
            RunIf::AnyFailed => failed > 0,
            RunIf::AllFailed => failed > 0 && failed == self.dependency_count[i],
        };
        if runs {
            self.ready.push_back((i, self.completed));
            return None;
        }
        let skip = match (self.rules[i], self.cause[i]) {
            (RunIf::AllSuccess, Some(c)) => Skip::Failed(c),
            _ => Skip::Rule,
        };
        self.slots[i] = Slot::Skipped(skip == Skip::Rule);
        self.skipped.push((i, skip));
        Some(skip)
    }

    /// The number of completions a flush should make durable, when one is due: there are
    /// completions not yet durable and no flush is in flight. The flush is then in flight
    /// until [`Plan::durable`] or [`Plan::flush_failed`].
    pub(crate) fn flush_due(&mut self) -> Option<u64> {
        if self.flushing || self.completed <= self.covered {
            return None;
        }
        self.flushing = true;
        Some(self.completed)
    }

    /// The flush in flight made the first `upto` completions durable.
    pub(crate) fn durable(&mut self, upto: u64) {
        self.flushing = false;
        self.covered = self.covered.max(upto);
    }

    /// The flush in flight failed; nothing more is durable.
    pub(crate) fn flush_failed(&mut self) {
        self.flushing = false;
    }

    /// Whether the loop is over: nothing runs, and nothing more will start (the run stops,
    /// or no task is ready).
    pub(crate) fn settled(&self, stopping: bool) -> bool {
        self.running == 0 && (stopping || self.ready.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan where every task has the default rule.
    fn plan(deps: &[Vec<usize>], done: &[bool], limit: usize) -> Plan {
        Plan::new(deps, &vec![RunIf::AllSuccess; deps.len()], done, limit)
    }

    /// Starts everything startable; returns the indices in start order.
    fn start_all(p: &mut Plan) -> Vec<usize> {
        let mut started = Vec::new();
        while let Some(i) = p.startable() {
            p.start(i);
            started.push(i);
        }
        started
    }

    /// Makes every completion so far durable.
    fn sync(p: &mut Plan) {
        if let Some(upto) = p.flush_due() {
            p.durable(upto);
        }
    }

    /// On a resume, a task whose dependencies had all finished and whose rule did not hold
    /// was skipped, but its own dependents were never told: they waited for it forever, and
    /// the run ended with them still pending.
    #[test]
    fn a_task_skipped_by_its_rule_on_a_resume_releases_its_dependents() {
        // 0 succeeded in the earlier run; 1 runs only if 0 failed; 2 needs 1.
        let rules = [RunIf::AllSuccess, RunIf::AnyFailed, RunIf::AllSuccess];
        let mut p = Plan::new(
            &[vec![], vec![0], vec![1]],
            &rules,
            &[true, false, false],
            4,
        );
        assert_eq!(p.take_skipped(), vec![(1, Skip::Rule)]);
        assert_eq!(start_all(&mut p), vec![2]);
        p.finish(2, true);
        assert!(p.settled(false));
    }

    #[test]
    fn a_chain_runs_one_task_at_a_time_each_after_its_dependency_is_durable() {
        let mut p = plan(&[vec![], vec![0], vec![1]], &[false; 3], 4);
        assert_eq!(start_all(&mut p), [0]);
        p.finish(0, true);
        // Released, but its dependency's completion is not durable yet.
        assert_eq!(p.startable(), None);
        sync(&mut p);
        assert_eq!(start_all(&mut p), [1]);
        p.finish(1, true);
        sync(&mut p);
        assert_eq!(start_all(&mut p), [2]);
        p.finish(2, true);
        // Nothing more to start; the run's closing flush covers the last completion.
        assert!(p.settled(false));
        assert_eq!(p.flush_due(), Some(3));
    }

    #[test]
    fn the_limit_bounds_running_tasks_and_independent_tasks_never_wait_for_a_flush() {
        let mut p = plan(&[vec![], vec![], vec![], vec![0]], &[false; 4], 2);
        // Task 2 is ready too, but two run already.
        assert_eq!(start_all(&mut p), [0, 1]);
        p.finish(1, true);
        // Task 2 depends on nothing: it starts while task 1's completion is unflushed.
        assert_eq!(start_all(&mut p), [2]);
        p.finish(0, true);
        assert_eq!(p.flush_due(), Some(2));
        // One flush at a time: a completion meanwhile waits for the next one.
        p.finish(2, true);
        assert_eq!(p.flush_due(), None);
        assert_eq!(p.startable(), None, "task 3 waits for task 0's flush");
        p.durable(2);
        assert_eq!(start_all(&mut p), [3]);
        assert_eq!(p.flush_due(), Some(3));
    }

    #[test]
    fn a_failure_skips_everything_downstream_and_nothing_else() {
        // 0 -> 1 -> 3, 0 -> 2, 4 alone; 5 depends on 3 and 4.
        let deps = [vec![], vec![0], vec![0], vec![1], vec![], vec![3, 4]];
        let mut p = plan(&deps, &[false; 6], 8);
        assert_eq!(start_all(&mut p), [0, 4]);
        p.finish(0, false);
        let failed = Skip::Failed(0);
        assert_eq!(
            p.take_skipped(),
            [(1, failed), (2, failed), (3, failed), (5, failed)]
        );
        p.finish(4, true);
        sync(&mut p);
        assert_eq!(p.startable(), None);
        assert!(p.settled(false));
    }

    #[test]
    fn a_released_failure_lets_its_dependents_run() {
        // `continue_on_failure`: the engine releases the dependents of a failed task.
        let mut p = plan(&[vec![], vec![0]], &[false; 2], 1);
        start_all(&mut p);
        p.finish(0, true);
        sync(&mut p);
        assert_eq!(start_all(&mut p), [1]);
    }

    #[test]
    fn a_resume_starts_after_the_tasks_that_finished_before() {
        let deps = [vec![], vec![0], vec![1], vec![]];
        let mut p = plan(&deps, &[true, true, false, false], 4);
        assert_eq!(start_all(&mut p), [2, 3]);
    }

    #[test]
    fn a_failed_flush_makes_nothing_durable_and_a_later_one_can_retry() {
        let mut p = plan(&[vec![], vec![0]], &[false; 2], 2);
        start_all(&mut p);
        p.finish(0, true);
        assert_eq!(p.flush_due(), Some(1));
        p.flush_failed();
        assert_eq!(p.startable(), None);
        assert_eq!(p.flush_due(), Some(1));
        p.durable(1);
        assert_eq!(start_all(&mut p), [1]);
    }

    #[test]
    fn a_stopping_run_settles_once_its_running_tasks_end() {
        let mut p = plan(&[vec![], vec![], vec![]], &[false; 3], 1);
        start_all(&mut p);
        assert!(!p.settled(true), "a task still runs");
        p.finish(0, true);
        assert!(p.settled(true), "ready tasks do not start when stopping");
        assert!(!p.settled(false));
    }

    #[test]
    fn trigger_rules_decide_once_every_dependency_has_ended() {
        // 0 fails; 1 needs it (skipped); 2 cleans up (all_done) after 0 and 1; 3 handles
        // failures of 1 (a skip caused by a failure counts); 4 runs only if 0 and 5 both
        // failed; 5 succeeds; 6 depends on handler 4, which its rule skipped.
        let deps = [
            vec![],
            vec![0],
            vec![0, 1],
            vec![1],
            vec![0, 5],
            vec![],
            vec![4],
        ];
        let rules = [
            RunIf::AllSuccess,
            RunIf::AllSuccess,
            RunIf::AllDone,
            RunIf::AnyFailed,
            RunIf::AllFailed,
            RunIf::AllSuccess,
            RunIf::AllSuccess,
        ];
        let mut p = Plan::new(&deps, &rules, &[false; 7], 8);
        assert_eq!(start_all(&mut p), [0, 5]);
        p.finish(0, false);
        assert_eq!(p.take_skipped(), [(1, Skip::Failed(0))]);
        p.finish(5, true);
        assert_eq!(p.take_skipped(), [(4, Skip::Rule)]);
        sync(&mut p);
        // The rule's skip counts as a success: 6 runs.
        assert_eq!(start_all(&mut p), [2, 3, 6]);
    }

    #[test]
    fn a_failure_handler_is_skipped_when_nothing_failed() {
        let deps = [vec![], vec![0]];
        let mut p = Plan::new(
            &deps,
            &[RunIf::AllSuccess, RunIf::AnyFailed],
            &[false; 2],
            2,
        );
        start_all(&mut p);
        p.finish(0, true);
        assert_eq!(p.take_skipped(), [(1, Skip::Rule)]);
        sync(&mut p);
        assert!(p.settled(false));
    }

    #[test]
    fn on_resume_a_rule_sees_the_tasks_finished_before() {
        // 0 succeeded in the earlier run: a handler of its failure is skipped at once.
        let deps = [vec![], vec![0]];
        let mut p = Plan::new(
            &deps,
            &[RunIf::AllSuccess, RunIf::AnyFailed],
            &[true, false],
            2,
        );
        assert_eq!(p.take_skipped(), [(1, Skip::Rule)]);
        assert_eq!(p.startable(), None);
    }
}
