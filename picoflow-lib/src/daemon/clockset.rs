//! The kernel's notice that the wall clock was set: a `timerfd` on `CLOCK_REALTIME` armed with
//! `TFD_TIMER_CANCEL_ON_SET` becomes readable (its read fails with `ECANCELED`) whenever the
//! clock is set discontinuously — `settimeofday`, `clock_settime`, a time service's step —
//! so the scheduler sees a step at once without waking up to look. Where the kernel gives no
//! such timer, the daemon relies on its other wake-ups and on `[daemon]
//! clock_check_seconds`.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use smol::Async;

/// A timer that fires when the wall clock is set.
#[derive(Debug)]
pub(super) struct ClockSet {
    fd: Async<OwnedFd>,
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
        })
    }

    /// Completes when the wall clock has been set since the last call (or since
    /// [`ClockSet::new`]), and arms the timer again.
    pub(super) async fn changed(&self) {
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

    #[test]
    fn the_timer_arms_and_stays_quiet_while_the_clock_is_not_set() {
        let set = ClockSet::new().expect("timerfd with TFD_TIMER_CANCEL_ON_SET");
        let quiet = smol::block_on(futures_lite::future::or(
            async {
                set.changed().await;
                false
            },
            async {
                smol::Timer::after(std::time::Duration::from_millis(200)).await;
                true
            },
        ));
        assert!(quiet, "woke without a set of the clock");
    }
}
