//! The execution's file thread: the one place an execution's file work is done (task log
//! writes, reading and removing an attempt's output file, removing the output directory at
//! the end), so the engine's thread never waits on the disk.
//!
//! One thread per execution, started by the first job and ending with the execution (when
//! the queue's sender is dropped), serving a bounded queue in order. Why not the `blocking`
//! crate's pool (`smol::unblock`): its threads are shared with whatever else uses it and are
//! started and stopped behind the engine's back; here an execution owns exactly one, jobs of
//! one execution keep their order (a task's log lines stay in order without more
//! bookkeeping), and a job costs a queue push and a wake-up, whatever the number of tasks.
//!
//! Each running attempt has at most two jobs queued (its log sink's pending writes, and its
//! end: the log's closing and the output file's reading), and at most `max_parallel`
//! attempts run at once, so a queue of `2 × max_parallel + 1` never fills: the engine never
//! waits to queue. Should the thread fail to start (no resources), jobs run in the caller,
//! as they did before the thread existed, and the problem is logged once.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

/// Work for the file thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// A handle on an execution's file thread.
#[derive(Debug)]
pub(super) struct Files {
    capacity: usize,
    /// The queue, once the first job started the thread; `None` inside when it could not.
    queue: OnceLock<Option<SyncSender<Job>>>,
}

impl Files {
    /// A handle for an execution running at most `parallel` attempts at once; the thread
    /// starts with the first job.
    pub(super) fn new(parallel: usize) -> Files {
        Files {
            capacity: 2 * parallel + 1,
            queue: OnceLock::new(),
        }
    }

    /// Queues `job` behind every job queued before it.
    pub(super) fn queue(&self, job: Job) {
        match self.queue.get_or_init(|| self.start()) {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    // The thread is gone (it can only have panicked): do the work here.
                    (e.0)();
                }
            }
            None => job(),
        }
    }

    /// Runs `work` on the file thread and returns its result; `None` only if the work
    /// panicked.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = smol::channel::bounded(1);
        self.queue(Box::new(move || {
            let _ = tx.try_send(work());
        }));
        rx.recv().await.ok()
    }

    fn start(&self) -> Option<SyncSender<Job>> {
        let (tx, rx) = sync_channel::<Job>(self.capacity);
        let started = std::thread::Builder::new()
            .name("picoflow-files".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the execution's file thread; its file work is done on the engine's thread");
                None
            }
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
    fn the_first_job_starts_the_thread() {
        let files = Files::new(1);
        // Nothing runs before the first job.
        assert!(files.queue.get().is_none());
        let thread = smol::block_on(files.run(std::thread::current)).unwrap();
        assert_eq!(thread.name(), Some("picoflow-files"));
    }
}
