//! What follows an attempt (DAG-006, DAG-007, DAG-008): another attempt after a backoff, or
//! the task's end and how it ended. [`next_step`] is a pure function of what happened, the
//! attempt's number, the task's [`RetryPolicy`] and whether the run is stopping; the attempt
//! loop in `attempt.rs` only carries its answer out.

use std::time::Duration;

use crate::config::RetryConfig;
use crate::events::TaskState;
use crate::executor::Outcome;

/// How many attempts a task gets and how long it waits between them.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy<'a> {
    /// The number of the task's last allowed attempt (its first one plus its retries).
    pub(super) last_attempt: u32,
    /// The backoff between attempts.
    pub(super) backoff: &'a RetryConfig,
}

/// What happened since the last decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// An attempt ran to `outcome`; `retryable` is what its executor said.
    Ran { outcome: Outcome, retryable: bool },
    /// The run was stopped while the task waited to start an attempt: for a free slot, or
    /// for the backoff before a retry.
    Stopped,
}

/// What the attempt loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Make another attempt once `after` has passed.
    Retry { after: Duration },
    /// The task ends.
    Done(End),
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Its last attempt succeeded.
    Success,
    /// Its last attempt failed (and no retry follows).
    Failed,
    /// Its last attempt ran out of time (and no retry follows).
    TimedOut,
    /// PicoFlow cut its last attempt short: the run was stopped while it ran.
    Interrupted,
    /// The run was stopped while the task waited for an attempt (see [`Ended::Stopped`]).
    Stopped,
}

impl End {
    /// The state the task's last record ends in. PicoFlow's own interruptions are `failed`
    /// (the schema's states; the record's message marks them, see `events::INTERRUPTED`).
    pub(super) fn state(self) -> TaskState {
        match self {
            End::Success => TaskState::Success,
            End::TimedOut => TaskState::Timeout,
            End::Failed | End::Interrupted | End::Stopped => TaskState::Failed,
        }
    }

    /// Whether the task's dependents may run (DECISIONS.md 5): after a success, or after a
    /// failure of a task with `continue_on_failure`; never after PicoFlow cut it short, which
    /// a resumed execution runs again.
    pub(super) fn releases(self, continue_on_failure: bool) -> bool {
        match self {
            End::Success => true,
            End::Failed | End::TimedOut => continue_on_failure,
            End::Interrupted | End::Stopped => false,
        }
    }
}

/// What follows `ended`, the end of attempt number `attempt` (or of the wait before it),
/// for a task with `policy`, while the run is stopping if `cancelled`.
///
/// A failed or timed-out attempt is retried when its executor says it may be, it was not
/// the last one allowed and the run goes on; the wait before attempt `n` is
/// [`RetryConfig::backoff`]`(n)`. Anything else ends the task.
pub(super) fn next_step(
    ended: &Ended,
    attempt: u32,
    policy: &RetryPolicy<'_>,
    cancelled: bool,
) -> Step {
    let (outcome, retryable) = match *ended {
        Ended::Stopped => return Step::Done(End::Stopped),
        Ended::Ran { outcome, retryable } => (outcome, retryable),
    };
    let end = match outcome {
        Outcome::Success => return Step::Done(End::Success),
        Outcome::Cancelled => return Step::Done(End::Interrupted),
        Outcome::Failed => End::Failed,
        Outcome::Timeout => End::TimedOut,
    };
    match retryable && attempt < policy.last_attempt && !cancelled {
        true => Step::Retry {
            after: policy.backoff.backoff(attempt + 1),
        },
        false => Step::Done(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(outcome: Outcome, retryable: bool) -> Ended {
        Ended::Ran { outcome, retryable }
    }

    /// Three attempts (two retries), backoff doubling from one second up to five.
    fn config() -> RetryConfig {
        RetryConfig {
            default_count: 2,
            max_backoff_seconds: 5,
            backoff_multiplier: 2.0,
        }
    }

    fn policy(config: &RetryConfig) -> RetryPolicy<'_> {
        RetryPolicy {
            last_attempt: 3,
            backoff: config,
        }
    }

    #[test]
    fn a_success_ends_the_task_whatever_else_holds() {
        let c = config();
        for (attempt, cancelled) in [(1, false), (3, false), (1, true)] {
            let step = next_step(
                &ran(Outcome::Success, true),
                attempt,
                &policy(&c),
                cancelled,
            );
            assert_eq!(step, Step::Done(End::Success));
        }
    }

    #[test]
    fn a_retryable_failure_or_timeout_is_retried_before_the_last_attempt() {
        let c = config();
        for outcome in [Outcome::Failed, Outcome::Timeout] {
            let step = next_step(&ran(outcome, true), 1, &policy(&c), false);
            assert_eq!(
                step,
                Step::Retry {
                    after: Duration::from_secs(1)
                },
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn a_failure_its_executor_calls_final_is_not_retried() {
        let c = config();
        let step = next_step(&ran(Outcome::Failed, false), 1, &policy(&c), false);
        assert_eq!(step, Step::Done(End::Failed));
        let step = next_step(&ran(Outcome::Timeout, false), 1, &policy(&c), false);
        assert_eq!(step, Step::Done(End::TimedOut));
    }

    #[test]
    fn the_last_attempt_is_not_retried() {
        let c = config();
        let step = next_step(&ran(Outcome::Failed, true), 3, &policy(&c), false);
        assert_eq!(step, Step::Done(End::Failed));
        let step = next_step(&ran(Outcome::Timeout, true), 3, &policy(&c), false);
        assert_eq!(step, Step::Done(End::TimedOut));
        // A resumed task whose attempts are used up gets none more.
        let step = next_step(&ran(Outcome::Failed, true), 7, &policy(&c), false);
        assert_eq!(step, Step::Done(End::Failed));
        // Without retries, the first attempt is the last.
        let none = RetryPolicy {
            last_attempt: 1,
            backoff: &c,
        };
        let step = next_step(&ran(Outcome::Failed, true), 1, &none, false);
        assert_eq!(step, Step::Done(End::Failed));
    }

    #[test]
    fn nothing_is_retried_once_the_run_is_stopping() {
        let c = config();
        let step = next_step(&ran(Outcome::Failed, true), 1, &policy(&c), true);
        assert_eq!(step, Step::Done(End::Failed));
        let step = next_step(&ran(Outcome::Timeout, true), 1, &policy(&c), true);
        assert_eq!(step, Step::Done(End::TimedOut));
    }

    #[test]
    fn an_attempt_the_stop_cut_short_ends_interrupted() {
        let c = config();
        for (retryable, cancelled) in [(true, true), (true, false), (false, true)] {
            let step = next_step(
                &ran(Outcome::Cancelled, retryable),
                1,
                &policy(&c),
                cancelled,
            );
            assert_eq!(step, Step::Done(End::Interrupted));
        }
    }

    #[test]
    fn a_stop_during_the_wait_for_an_attempt_ends_the_task() {
        let c = config();
        // During the backoff before the second attempt, or while waiting for a slot.
        for attempt in [1, 2] {
            let step = next_step(&Ended::Stopped, attempt, &policy(&c), true);
            assert_eq!(step, Step::Done(End::Stopped));
        }
    }

    #[test]
    fn backoff_grows_with_the_attempt_and_stops_at_its_cap() {
        let c = config();
        let long = RetryPolicy {
            last_attempt: 10,
            backoff: &c,
        };
        let waits: Vec<u64> = (1..6)
            .map(
                |n| match next_step(&ran(Outcome::Failed, true), n, &long, false) {
                    Step::Retry { after } => after.as_secs(),
                    other => panic!("attempt {n}: {other:?}"),
                },
            )
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn how_an_end_is_recorded_and_whether_it_releases_dependents() {
        use TaskState::*;
        let table = [
            (End::Success, Success, true, true),
            (End::Failed, Failed, false, true),
            (End::TimedOut, Timeout, false, true),
            (End::Interrupted, Failed, false, false),
            (End::Stopped, Failed, false, false),
        ];
        for (end, state, plain, continuing) in table {
            assert_eq!(end.state(), state, "{end:?}");
            assert_eq!(end.releases(false), plain, "{end:?}");
            assert_eq!(end.releases(true), continuing, "{end:?}");
        }
    }
}
