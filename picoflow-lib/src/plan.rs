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

/// Where a task stands in the execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting,
    Running,
    /// Finished; the flag says whether its dependents may run.
    Done(bool),
    Skipped,
}

/// The state of one execution's tasks. Indices are those of the workflow's tasks.
#[derive(Debug)]
pub(crate) struct Plan {
    slots: Vec<Slot>,
    dependents: Vec<Vec<usize>>,
    /// Dependencies of each task that have not released it yet.
    remaining: Vec<usize>,
    /// Ready tasks in the order they became ready, each with the number of completions that
    /// must be durable before it starts.
    ready: VecDeque<(usize, u64)>,
    limit: usize,
    running: usize,
    /// Completions reported so far.
    completed: u64,
    /// Completions known to be durable.
    covered: u64,
    flushing: bool,
}

impl Plan {
    /// A plan for tasks whose dependencies are `dependencies[i]`, at most `limit` running at
    /// once. Tasks with `done[i]` set finished in an earlier run of the execution (a resume):
    /// they do not run and they release their dependents.
    pub(crate) fn new(dependencies: &[Vec<usize>], done: &[bool], limit: usize) -> Plan {
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
        let ready = (0..n)
            .filter(|&i| slots[i] == Slot::Waiting && remaining[i] == 0)
            .map(|i| (i, 0))
            .collect();
        Plan {
            slots,
            dependents,
            remaining,
            ready,
            limit: limit.max(1),
            running: 0,
            completed: 0,
            covered: 0,
            flushing: false,
        }
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

    /// Records that running task `i` ended. With `release` its dependents may run once this
    /// completion is durable; without it, every task downstream that has not run is skipped
    /// and returned (in breadth-first order) for the caller to report.
    pub(crate) fn finish(&mut self, i: usize, release: bool) -> Vec<usize> {
        debug_assert_eq!(self.slots[i], Slot::Running);
        self.running -= 1;
        self.completed += 1;
        self.slots[i] = Slot::Done(release);
        if release {
            for &d in &self.dependents[i] {
                self.remaining[d] -= 1;
                if self.remaining[d] == 0 && self.slots[d] == Slot::Waiting {
                    self.ready.push_back((d, self.completed));
                }
            }
            return Vec::new();
        }
        let mut skipped = Vec::new();
        let mut queue: VecDeque<usize> = self.dependents[i].iter().copied().collect();
        while let Some(d) = queue.pop_front() {
            if self.slots[d] != Slot::Waiting {
                continue;
            }
            self.slots[d] = Slot::Skipped;
            skipped.push(d);
            queue.extend(self.dependents[d].iter().copied());
        }
        skipped
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

    #[test]
    fn a_chain_runs_one_task_at_a_time_each_after_its_dependency_is_durable() {
        let mut p = Plan::new(&[vec![], vec![0], vec![1]], &[false; 3], 4);
        assert_eq!(start_all(&mut p), [0]);
        assert!(p.finish(0, true).is_empty());
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
        let mut p = Plan::new(&[vec![], vec![], vec![], vec![0]], &[false; 4], 2);
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
        let mut p = Plan::new(&deps, &[false; 6], 8);
        assert_eq!(start_all(&mut p), [0, 4]);
        assert_eq!(p.finish(0, false), [1, 2, 3, 5]);
        p.finish(4, true);
        sync(&mut p);
        assert_eq!(p.startable(), None);
        assert!(p.settled(false));
    }

    #[test]
    fn a_released_failure_lets_its_dependents_run() {
        // `continue_on_failure`: the engine releases the dependents of a failed task.
        let mut p = Plan::new(&[vec![], vec![0]], &[false; 2], 1);
        start_all(&mut p);
        assert!(p.finish(0, true).is_empty());
        sync(&mut p);
        assert_eq!(start_all(&mut p), [1]);
    }

    #[test]
    fn a_resume_starts_after_the_tasks_that_finished_before() {
        let deps = [vec![], vec![0], vec![1], vec![]];
        let mut p = Plan::new(&deps, &[true, true, false, false], 4);
        assert_eq!(start_all(&mut p), [2, 3]);
    }

    #[test]
    fn a_failed_flush_makes_nothing_durable_and_a_later_one_can_retry() {
        let mut p = Plan::new(&[vec![], vec![0]], &[false; 2], 2);
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
        let mut p = Plan::new(&[vec![], vec![], vec![]], &[false; 3], 1);
        start_all(&mut p);
        assert!(!p.settled(true), "a task still runs");
        p.finish(0, true);
        assert!(p.settled(true), "ready tasks do not start when stopping");
        assert!(!p.settled(false));
    }
}
