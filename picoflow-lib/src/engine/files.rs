//! The execution's file thread: the one place an execution's file work is done (task log
//! writes, reading and removing an attempt's output file, removing the output directory at
//! the end), so the engine's thread never waits on the disk.
//!
//! One thread per execution, started with it and ending with it (when the handle is dropped
//! and the jobs queued are done), serving its queue in order; every execution has file work
//! (at least its output directory's removal), so the thread is not started lazily. Why not
//! the `blocking` crate's pool (`smol::unblock`): its threads are shared with whatever else
//! uses it and are started and stopped behind the engine's back; here an execution owns
//! exactly one, jobs of one execution keep their order (a task's log lines stay in order
//! without more bookkeeping), and a job costs a queue push and a wake-up whatever the number
//! of tasks. The queue is a mutex and a condition variable rather than a channel: that is
//! all it needs, and it costs the binary less.
//!
//! The queue is bounded. A task has at most two jobs queued (one writing its pending log
//! output, one ending its attempt: closing the log, reading the output file), and at most
//! `max_parallel` attempts run at once, so `4 × max_parallel` places leave room even for the
//! attempts that have given up their slot and wait for their end's job. Should a stalled
//! disk fill them anyway, the caller waits for room (back-pressure) rather than memory
//! growing. Should the thread fail to start (no resources), jobs run in the caller, as they
//! did before the thread existed, and the problem is logged.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Work for the file thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// A handle on an execution's file thread; dropping it ends the thread once the jobs queued
/// are done.
#[derive(Debug)]
pub(super) struct Files {
    capacity: usize,
    /// The thread's queue; `None` when the thread could not start.
    queue: Option<Arc<Queue>>,
}

/// The jobs waiting for the thread.
struct Queue {
    state: Mutex<State>,
    /// Signalled when a job is queued or the handle is dropped (for the thread), and when
    /// one is taken (for a caller waiting for room).
    changed: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    /// Whether the handle still exists.
    open: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// The thread's loop: runs the jobs in order until the handle is gone and none is left.
    fn serve(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                self.changed.notify_all();
                job();
                state = self.lock();
            } else if !state.open {
                return;
            } else {
                state = self.wait(state);
            }
        }
    }
}

impl Files {
    /// Starts the thread of an execution running at most `parallel` attempts at once.
    pub(super) fn new(parallel: usize) -> Files {
        Files {
            capacity: 4 * parallel + 1,
            queue: start(),
        }
    }

    /// Queues `job` behind every job queued before it.
    pub(super) fn queue(&self, job: Job) {
        let Some(queue) = &self.queue else {
            return job();
        };
        let mut state = queue.lock();
        while state.jobs.len() >= self.capacity {
            state = queue.wait(state);
        }
        state.jobs.push_back(job);
        drop(state);
        queue.changed.notify_all();
    }

    /// Runs `work` on the file thread and returns its result; `None` only if the work
    /// panicked.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        // The job drops `done` when it ends, which wakes the wait below: a channel of `()`
        // the library has anyway, rather than one more for each kind of result.
        let (done, ended) = smol::channel::bounded::<()>(1);
        self.queue(Box::new(move || {
            let value = work();
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            drop(done);
        }));
        let _ = ended.recv().await;
        let mut result = result.lock().unwrap_or_else(|e| e.into_inner());
        result.take()
    }
}

/// Starts a file thread; `None` (logged) when it cannot.
fn start() -> Option<Arc<Queue>> {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            open: true,
        }),
        changed: Condvar::new(),
    });
    let served = queue.clone();
    let started = crate::threads::spawn("picoflow-files".into(), Box::new(move || served.serve()));
    match started {
        Ok(_) => Some(queue),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the execution's file thread; its file work is done on the engine's thread");
            None
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.lock().open = false;
            queue.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn jobs_run_off_the_callers_thread_in_the_order_queued() {
        let files = Files::new(1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        for k in 0..100 {
            let seen = seen.clone();
            files.queue(Box::new(move || seen.lock().unwrap().push(k)));
        }
        let here = std::thread::current().id();
        let there = smol::block_on(files.run(move || std::thread::current().id())).unwrap();
        assert_ne!(here, there);
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn the_thread_ends_with_its_handle_once_its_jobs_are_done() {
        let files = Files::new(1);
        let (tx, rx) = std::sync::mpsc::channel();
        files.queue(Box::new(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx.send(std::thread::current().id()).unwrap();
        }));
        let queue = files.queue.clone().unwrap();
        drop(files);
        rx.recv().unwrap();
        // The thread holds the queue while it runs; once it has returned, only this is left.
        let clock = std::time::Instant::now();
        while Arc::strong_count(&queue) > 1 {
            assert!(clock.elapsed().as_secs() < 10, "the thread did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn the_thread_is_named() {
        let files = Files::new(1);
        let thread = smol::block_on(files.run(std::thread::current)).unwrap();
        assert_eq!(thread.name(), Some("picoflow-files"));
    }
}
