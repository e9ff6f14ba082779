//! Work that waits on the disk (pruning, the status file, reading the workflow files again),
//! run on a short-lived thread of its own so that the scheduler's thread never waits on it.
//!
//! Not `smol::unblock`: the pool behind it (the `blocking` crate) keeps its idle threads, each
//! waking twice a second, and an idle daemon must sleep until its next fire. A thread per job
//! costs nothing that matters here: jobs come at start, on SIGHUP and once a day.

/// The result of [`offload`]ed work, to wait for.
pub(super) struct Offloaded<T>(smol::channel::Receiver<T>);

impl<T> Offloaded<T> {
    /// The work's result; `None` if its thread could not start (logged) or it panicked.
    pub(super) async fn wait(self) -> Option<T> {
        self.0.recv().await.ok()
    }
}

/// Runs `work` on a thread named `picoflow-{what}`.
pub(super) fn offload<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Offloaded<T> {
    let (tx, rx) = smol::channel::bounded(1);
    start(
        what,
        Box::new(move || {
            let _ = tx.try_send(work());
        }),
    );
    Offloaded(rx)
}

/// Starts `job` on a thread named `picoflow-{what}`, or logs why it cannot: the part of
/// [`offload`] that is the same whatever the work returns, in the binary once.
#[inline(never)]
fn start(what: &str, job: Box<dyn FnOnce() + Send>) {
    if let Err(e) = crate::threads::spawn(format!("picoflow-{what}"), job) {
        tracing::error!(work = what, error = %e, "cannot start a thread; the work is not done");
    }
}
