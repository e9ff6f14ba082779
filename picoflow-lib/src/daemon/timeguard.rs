//! The scheduler's guards against a wall clock that cannot be trusted: a board without a
//! real-time clock boots at the last saved time (or 1970) and is stepped when a time service
//! synchronises it, possibly long after the daemon started.
//!
//! * [`ClockWatch`] holds the schedules back while the clock is unsynchronised (when
//!   `[daemon] wait_for_clock_sync` says to wait), at most `clock_sync_timeout_seconds`, and
//!   sees the wall clock step while the daemon runs by comparing its advance with the
//!   monotonic clock's between two wake-ups ([`detect_jump`]).
//! * [`runs_after_jump`] bounds what a forward step fires by the workflow's `catchup`, as the
//!   catch-up after an outage is bounded; the scheduler never fires an instant at or before
//!   the last one it handled ([`not_before`]), so a backward step repeats nothing.
//!
//! Everything here is pure: the clocks' readings and the synchronisation status come in as
//! arguments, so the rules are tested without a clock.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::ClockStatus;
use crate::clock::ClockSync;
use crate::model::Catchup;

/// A difference between the wall clock's and the monotonic clock's advance larger than this
/// is a step of the wall clock. NTP slews the clock by at most 0.5 ms a second, and both
/// clocks advance alike while the process is descheduled, so anything near this size is a
/// step; smaller steps change no fire that matters.
pub(super) const JUMP_THRESHOLD: Duration = Duration::from_secs(2);

/// How often the clock's synchronisation is checked while the schedules wait for it.
pub(super) const SYNC_POLL: Duration = Duration::from_secs(1);

/// A step of the wall clock against the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Jump {
    /// The wall time the monotonic clock's advance predicted.
    pub(super) expected: DateTime<Utc>,
    /// The wall time read.
    pub(super) now: DateTime<Utc>,
}

impl Jump {
    /// Whether the clock went forward.
    pub(super) fn is_forward(&self) -> bool {
        self.now > self.expected
    }

    /// The size of the step in whole seconds (rounded), positive forward and negative
    /// backward.
    pub(super) fn seconds(&self) -> i64 {
        ((self.now - self.expected).num_milliseconds() as f64 / 1000.0).round() as i64
    }
}

/// The step between two readings of both clocks, if the wall clock's advance differs from the
/// monotonic clock's by more than [`JUMP_THRESHOLD`].
pub(super) fn detect_jump(
    before: (DateTime<Utc>, Instant),
    now: (DateTime<Utc>, Instant),
) -> Option<Jump> {
    let elapsed = now.1.saturating_duration_since(before.1);
    let expected = before.0 + chrono::Duration::from_std(elapsed).ok()?;
    let off = (now.0 - expected).abs().to_std().ok()?;
    (off > JUMP_THRESHOLD).then_some(Jump {
        expected,
        now: now.0,
    })
}

/// How many runs a forward step of the wall clock starts for one workflow: `due` says
/// whether its pending fire was due before the step anyway (it fires, as it would have),
/// `skipped` how many fire instants the step jumped over (counted up to at least
/// [`Catchup::MAX_ALL`]). The skipped ones are made up as `catchup` makes up an outage:
/// `none` nothing, `latest` one run, `all` one per instant, at most [`Catchup::MAX_ALL`] in
/// all; never a storm.
pub(super) fn runs_after_jump(catchup: Catchup, due: bool, skipped: usize) -> usize {
    let due = usize::from(due);
    match catchup {
        Catchup::None => due,
        Catchup::Latest => usize::from(due + skipped > 0),
        Catchup::All => (due + skipped).min(Catchup::MAX_ALL),
    }
}

/// The instant the next fire is looked for after: `now`, or the last instant already handled
/// when the clock went back behind it, so that no instant fires twice.
pub(super) fn not_before(now: DateTime<Utc>, done_until: Option<DateTime<Utc>>) -> DateTime<Utc> {
    done_until.map_or(now, |d| d.max(now))
}

/// What the clock said at a wake-up of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    /// The schedules still wait for synchronisation.
    Waiting,
    /// The wait ended: the clock is synchronised (`true`), or the bound passed (`false`).
    WaitEnded(bool),
    /// The wall clock stepped since the last wake-up.
    Jumped(Jump),
    /// Nothing to do for the clock.
    Steady,
}

/// The scheduler's view of the wall clock: whether its schedules wait for synchronisation,
/// and the readings of both clocks at its last wake-up.
#[derive(Debug)]
pub(super) struct ClockWatch {
    /// Since when the schedules wait (both clocks), while they do.
    waiting: Option<(DateTime<Utc>, Instant)>,
    /// Whether a wait ended at its bound with the clock still unsynchronised.
    gave_up: bool,
    /// The last synchronisation status read.
    synced: bool,
    timeout: Duration,
    /// Both clocks at the last wake-up.
    last: (DateTime<Utc>, Instant),
}

impl ClockWatch {
    /// The watch of a daemon starting at `now` with the clock `sync`: it waits when `wait`
    /// (the setting applies) and the clock is not synchronised, for at most `timeout`.
    pub(super) fn start(
        wait: bool,
        sync: ClockSync,
        timeout: Duration,
        now: (DateTime<Utc>, Instant),
    ) -> ClockWatch {
        let synced = sync == ClockSync::Synced;
        ClockWatch {
            waiting: (wait && !synced).then_some(now),
            gave_up: false,
            synced,
            timeout,
            last: now,
        }
    }

    /// Whether the schedules wait for the clock.
    pub(super) fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Whether the clock was synchronised at the last reading.
    pub(super) fn is_synced(&self) -> bool {
        self.synced
    }

    /// The longest wait, in seconds.
    pub(super) fn timeout_seconds(&self) -> u64 {
        self.timeout.as_secs()
    }

    /// A wake-up at `now` with the clock `sync`. Ending a wait resets the readings: the step
    /// that synchronised the clock is what the wait was for, not a jump.
    pub(super) fn tick(&mut self, sync: ClockSync, now: (DateTime<Utc>, Instant)) -> Tick {
        self.synced = sync == ClockSync::Synced;
        let before = std::mem::replace(&mut self.last, now);
        if let Some((_, since)) = self.waiting {
            if self.synced {
                self.waiting = None;
                return Tick::WaitEnded(true);
            }
            if now.1.saturating_duration_since(since) >= self.timeout {
                self.waiting = None;
                self.gave_up = true;
                return Tick::WaitEnded(false);
            }
            return Tick::Waiting;
        }
        detect_jump(before, now).map_or(Tick::Steady, Tick::Jumped)
    }

    /// What `daemon status` shows.
    pub(super) fn status(&self) -> ClockStatus {
        match (self.waiting, self.synced) {
            (Some((since, _)), _) => ClockStatus::Waiting {
                since,
                timeout_seconds: self.timeout.as_secs(),
            },
            (None, true) => ClockStatus::Synced,
            (None, false) if self.gave_up => ClockStatus::GaveUp {
                timeout_seconds: self.timeout.as_secs(),
            },
            (None, false) => ClockStatus::Unsynced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_step_is_a_difference_between_the_clocks_beyond_the_threshold() {
        let (t0, m0) = (at("2026-01-01T00:00:00Z"), Instant::now());
        let cd = chrono::Duration::seconds;
        // Both advance alike: no jump, however long the sleep.
        assert_eq!(
            detect_jump((t0, m0), (t0 + cd(3600), m0 + secs(3600))),
            None
        );
        // Up to the threshold: slewing and rounding, no jump.
        assert_eq!(detect_jump((t0, m0), (t0 + cd(7), m0 + secs(5))), None);
        let fwd = detect_jump((t0, m0), (t0 + cd(30 * 86_400 + 5), m0 + secs(5))).unwrap();
        assert!(fwd.is_forward());
        assert_eq!(fwd.seconds(), 30 * 86_400);
        assert_eq!(fwd.expected, t0 + cd(5));
        let almost = cd(30 * 86_400 + 5) - chrono::Duration::milliseconds(2);
        let fwd = detect_jump((t0, m0), (t0 + almost, m0 + secs(5))).unwrap();
        assert_eq!(fwd.seconds(), 30 * 86_400);
        let back = detect_jump((t0, m0), (t0 - cd(3600 - 5), m0 + secs(5))).unwrap();
        assert!(!back.is_forward());
        assert_eq!(back.seconds(), -3600);
        // The wall clock standing still for 5 s is a step back of 5 s.
        assert!(detect_jump((t0, m0), (t0, m0 + secs(5))).is_some());
    }

    #[test]
    fn a_forward_jump_fires_at_most_what_the_catchup_policy_allows() {
        // catchup: none: only a fire that was due anyway.
        assert_eq!(runs_after_jump(Catchup::None, false, 2_592_000), 0);
        assert_eq!(runs_after_jump(Catchup::None, true, 2_592_000), 1);
        // latest: one run for any number of skipped instants, none when nothing was skipped.
        assert_eq!(runs_after_jump(Catchup::Latest, false, 2_592_000), 1);
        assert_eq!(runs_after_jump(Catchup::Latest, true, 5), 1);
        assert_eq!(runs_after_jump(Catchup::Latest, false, 0), 0);
        // all: one per instant, the due one included, at most MAX_ALL.
        assert_eq!(runs_after_jump(Catchup::All, false, 3), 3);
        assert_eq!(runs_after_jump(Catchup::All, true, 3), 4);
        assert_eq!(
            runs_after_jump(Catchup::All, true, 2_592_000),
            Catchup::MAX_ALL
        );
    }

    #[test]
    fn no_instant_at_or_before_the_last_handled_one_is_looked_for() {
        let fired = at("2026-01-01T10:00:00Z");
        // The clock went back an hour: look after the last fire, not after now.
        let back = at("2026-01-01T09:00:00Z");
        assert_eq!(not_before(back, Some(fired)), fired);
        let later = at("2026-01-01T10:00:05Z");
        assert_eq!(not_before(later, Some(fired)), later);
        assert_eq!(not_before(back, None), back);
    }

    #[test]
    fn the_wait_ends_on_synchronisation_or_at_its_bound() {
        let (t0, m0) = (at("1970-01-01T00:01:00Z"), Instant::now());
        let mut w = ClockWatch::start(true, ClockSync::Unsynced, secs(10), (t0, m0));
        assert!(w.is_waiting());
        assert!(
            matches!(w.status(), ClockStatus::Waiting { since, timeout_seconds: 10 } if since == t0)
        );
        assert_eq!(
            w.tick(ClockSync::Unsynced, (t0, m0 + secs(1))),
            Tick::Waiting
        );
        // The step that synchronises the clock ends the wait and is not a jump.
        let synced_at = at("2026-01-01T00:00:00Z");
        assert_eq!(
            w.tick(ClockSync::Synced, (synced_at, m0 + secs(2))),
            Tick::WaitEnded(true)
        );
        assert_eq!(w.status(), ClockStatus::Synced);
        let t = synced_at + chrono::Duration::seconds(5);
        assert_eq!(w.tick(ClockSync::Synced, (t, m0 + secs(7))), Tick::Steady);

        let mut w = ClockWatch::start(true, ClockSync::Unsynced, secs(10), (t0, m0));
        assert_eq!(
            w.tick(ClockSync::Unsynced, (t0, m0 + secs(9))),
            Tick::Waiting
        );
        assert_eq!(
            w.tick(ClockSync::Unsynced, (t0, m0 + secs(10))),
            Tick::WaitEnded(false)
        );
        assert_eq!(
            w.status(),
            ClockStatus::GaveUp {
                timeout_seconds: 10
            }
        );
    }

    #[test]
    fn no_wait_when_synced_or_not_asked_for() {
        let now = (at("2026-01-01T00:00:00Z"), Instant::now());
        let w = ClockWatch::start(true, ClockSync::Synced, secs(10), now);
        assert!(!w.is_waiting());
        assert_eq!(w.status(), ClockStatus::Synced);
        let w = ClockWatch::start(false, ClockSync::Unsynced, secs(10), now);
        assert!(!w.is_waiting());
        assert_eq!(w.status(), ClockStatus::Unsynced);
    }
}
