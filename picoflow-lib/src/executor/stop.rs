//! One way to end an attempt early, for every executor.
//!
//! An attempt ends early when the task's `timeout` passes or the run is cancelled, whichever
//! comes first. [`race`] runs an executor's work against both; when one wins, the executor
//! stops what it started — *how* is its own business (signal the process group, stop the
//! container, stop the remote command, abort the request) — and [`Stop::output`] makes the
//! attempt's result, the same for every executor: a timeout is [`Outcome::Timeout`] with exit
//! code 124 and may be retried; a cancellation is [`Outcome::Cancelled`] with exit code 130 and
//! is not; the message says which, then how the work was stopped.

use std::future::Future;
use std::time::Duration;

use futures_lite::future;

use super::{Capture, Outcome, TaskContext, TaskOutput};

/// Exit code of an attempt stopped at its timeout (as `timeout(1)` has it).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of an attempt stopped because its run was cancelled (128 + SIGINT).
pub const EXIT_CANCELLED: i32 = 130;

/// Why an attempt's work was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The task's timeout passed.
    Timeout(Duration),
    /// The run was cancelled (SIGINT, SIGTERM, a daemon's shutdown).
    Cancelled,
}

impl Stop {
    /// The attempt's result once the executor has stopped its work: `how` says what it did
    /// ("process group terminated", "container 0a1b2c stopped"); the captures hold what the
    /// work printed before it was stopped.
    pub fn output(self, how: &str, stdout: Capture, stderr: Capture) -> TaskOutput {
        let (outcome, exit_code, error, retryable) = match self {
            Stop::Timeout(t) => (
                Outcome::Timeout,
                EXIT_TIMEOUT,
                format!("timed out after {}s; {how}", t.as_secs()),
                true,
            ),
            Stop::Cancelled => (
                Outcome::Cancelled,
                EXIT_CANCELLED,
                format!("cancelled; {how}"),
                false,
            ),
        };
        TaskOutput {
            outcome,
            exit_code: Some(exit_code),
            stdout,
            stderr,
            error: Some(error),
            retryable,
        }
    }
}

/// Runs `work` until it ends, the attempt's timeout passes or its run is cancelled,
/// whichever comes first; work that has ended wins over a timeout or cancellation that comes
/// at the same moment (what ended is not stopped).
///
/// The work is borrowed, not consumed: when it is stopped, it is still there (not polled any
/// more) while the executor stops what it started — a connection the work holds stays open
/// until then — and is dropped after. Pin it with [`std::pin::pin!`].
pub async fn race<F: Future>(
    ctx: &TaskContext<'_>,
    work: std::pin::Pin<&mut F>,
) -> Result<F::Output, Stop> {
    let limit = ctx.timeout;
    let timer = async {
        match limit {
            Some(t) => {
                smol::Timer::after(t).await;
                Err(Stop::Timeout(t))
            }
            None => future::pending().await,
        }
    };
    let cancelled = async {
        ctx.cancel.cancelled().await;
        Err(Stop::Cancelled)
    };
    future::or(async { Ok(work.await) }, future::or(timer, cancelled)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CancelToken, NoOutput, SharedState};
    use crate::expand::Vars;
    use crate::model::Task;

    fn with_ctx<T>(
        timeout: Option<Duration>,
        cancel: CancelToken,
        f: impl FnOnce(TaskContext<'_>) -> T,
    ) -> T {
        let task: Task = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - name: t\n    type: shell\n    config: {command: \"true\"}\n",
            "w.yaml",
        )
        .unwrap()
        .tasks
        .remove(0);
        let vars = Vars::isolated();
        let shared = SharedState::default();
        let dir = std::env::temp_dir();
        f(TaskContext {
            workflow: "w",
            execution_id: "e",
            task: &task,
            attempt: 1,
            timeout,
            cancel,
            vars: &vars,
            shared: &shared,
            output: &NoOutput,
            output_dir: &dir,
            limits: Default::default(),
        })
    }

    #[test]
    fn work_that_ends_first_wins() {
        let r = with_ctx(Some(Duration::from_secs(5)), CancelToken::never(), |ctx| {
            smol::block_on(race(&ctx, std::pin::pin!(async { 7 })))
        });
        assert_eq!(r, Ok(7));
    }

    #[test]
    fn the_timeout_and_the_cancellation_stop_it_and_say_so() {
        let slow = || smol::Timer::after(Duration::from_secs(30));
        let r = with_ctx(
            Some(Duration::from_millis(20)),
            CancelToken::never(),
            |ctx| smol::block_on(race(&ctx, std::pin::pin!(slow()))),
        );
        let stop = r.unwrap_err();
        assert_eq!(stop, Stop::Timeout(Duration::from_millis(20)));
        let out = Stop::Timeout(Duration::from_secs(3)).output(
            "x stopped",
            Capture::default(),
            Capture::default(),
        );
        assert_eq!(
            (out.outcome, out.exit_code, out.retryable),
            (Outcome::Timeout, Some(124), true)
        );
        assert_eq!(out.error.as_deref(), Some("timed out after 3s; x stopped"));

        let (canceller, token) = CancelToken::new();
        canceller.cancel();
        let r = with_ctx(None, token, |ctx| {
            smol::block_on(race(
                &ctx,
                std::pin::pin!(smol::Timer::after(Duration::from_secs(30))),
            ))
        });
        assert_eq!(r.unwrap_err(), Stop::Cancelled);
        let out = Stop::Cancelled.output("x stopped", Capture::default(), Capture::default());
        assert_eq!(
            (out.outcome, out.exit_code, out.retryable),
            (Outcome::Cancelled, Some(130), false)
        );
        assert_eq!(out.error.as_deref(), Some("cancelled; x stopped"));
    }
}
