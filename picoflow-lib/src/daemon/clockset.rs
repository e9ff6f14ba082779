//! The kernel's notice that the wall clock was set: a `timerfd` on `CLOCK_REALTIME` armed with
//! `TFD_TIMER_CANCEL_ON_SET` becomes readable (its read fails with `ECANCELED`) whenever the
//! clock is set discontinuously — `settimeofday`, `clock_settime`, a time service's step —
//! so the scheduler sees a step at once without waking up to look. Where the kernel gives no
//! such timer, the daemon relies on its other wake-ups and on `[daemon]
//! clock_check_seconds`. Some machines have the clock set many times a second (a virtual
//! machine's agent keeping the guest's clock to the host's): after a notice, the next is
//! taken [`MIN_GAP`] later at the earliest, so such a machine wakes the daemon at most that
//! often.

use std::cell::Cell;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use smol::Async;

/// The shortest time between two notices.
pub(super) const MIN_GAP: Duration = Duration::from_secs(5);

/// A timer that fires when the wall clock is set.
#[derive(Debug)]
pub(super) struct ClockSet {
    fd: Async<OwnedFd>,
    /// When the last notice was given.
    last: Cell<Option<Instant>>,
}

impl ClockSet {
    /// The armed timer; `None` (logged at debug) where the kernel refuses one.
    pub(super) fn new() -> Option<ClockSet> {
        // SAFETY: timerfd_create takes no pointers; the descriptor is owned below.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            tracing::debug!(
                "no timer for clock steps: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: `raw` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        arm(&fd).ok()?;
        Some(ClockSet {
            fd: Async::new(fd).ok()?,
            last: Cell::new(None),
        })
    }

    /// Completes when the wall clock has been set since the last call (or since
    /// [`ClockSet::new`]), and arms the timer again; never sooner than [`MIN_GAP`] after the
    /// last notice.
    pub(super) async fn changed(&self) {
        if let Some(last) = self.last.get() {
            smol::Timer::at(last + MIN_GAP).await;
        }
        loop {
            if self.fd.readable().await.is_err() {
                return futures_lite::future::pending().await;
            }
            let mut buf = [0u8; 8];
            // SAFETY: a read of at most 8 bytes into `buf`.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            let e = std::io::Error::last_os_error();
            let cancelled = n < 0 && e.raw_os_error() == Some(libc::ECANCELED);
            // Cancelled by a set of the clock, or (n == 8) expired: armed again either way.
            if (cancelled || n == 8) && arm(self.fd.get_ref()).is_err() {
                return futures_lite::future::pending().await;
            }
            if cancelled {
                self.last.set(Some(Instant::now()));
                return;
            }
            // EAGAIN (woken without news) or the far expiry: wait again.
        }
    }
}

/// Arms `fd` to expire far in the future (absolute, on the wall clock) and to be cancelled
/// by a set of the clock.
fn arm(fd: &OwnedFd) -> std::io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // An absolute expiry far away: the year 2200, or the last second a 32-bit `time_t`
        // holds (2038) where that is all there is; an expiry re-arms the timer.
        it_value: libc::timespec {
            tv_sec: libc::time_t::try_from(7_258_118_400_i64).unwrap_or(libc::time_t::MAX),
            tv_nsec: 0,
        },
    };
    // SAFETY: `spec` lives for the call; no old value is asked for.
    let r = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
            &spec,
            std::ptr::null_mut(),
        )
    };
    match r {
        0 => Ok(()),
        _ => {
            let e = std::io::Error::last_os_error();
            tracing::debug!("no timer for clock steps: {e}");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `set.changed()` completes within `limit`.
    fn notices_within(set: &ClockSet, limit: Duration) -> bool {
        smol::block_on(futures_lite::future::or(
            async {
                set.changed().await;
                true
            },
            async {
                smol::Timer::after(limit).await;
                false
            },
        ))
    }

    #[test]
    fn the_timer_arms_and_a_notice_waits_its_gap_after_the_last() {
        // Whether the clock is set meanwhile depends on the machine (some set it many times a
        // second): what holds everywhere is that no notice comes within the gap.
        let set = ClockSet::new().expect("timerfd with TFD_TIMER_CANCEL_ON_SET");
        set.last.set(Some(Instant::now()));
        assert!(!notices_within(&set, Duration::from_millis(300)));
    }
}
