//! The writer thread's queue: a mutex and a condition variable. That is all the writer needs
//! (senders in every sink, one receiver that waits with a deadline), and it costs the binary
//! less than std's channel, which brings in its three kinds of channel for the message type.
//!
//! It behaves as std's channel does where the writer relies on it: a receiver gets what was
//! queued before it hears that every sender is gone; a send fails once the receiver is gone,
//! and what was still queued then is dropped (a waiter's acknowledgement among it tells the
//! waiter that the writer has stopped).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub(super) use std::sync::mpsc::RecvTimeoutError;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item is queued or the last sender is gone.
    changed: Condvar,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    /// Whether the receiver still exists.
    receiver: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue with one sender and its receiver.
pub(super) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        changed: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Queues items for the [`Receiver`]; cloned for each sink.
pub(super) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item`; gives it back when the receiver is gone.
    pub(super) fn send(&self, item: T) -> Result<(), T> {
        let mut state = self.0.lock();
        if !state.receiver {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.0.changed.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.0.changed.notify_one();
        }
    }
}

/// Takes the items queued, in order.
pub(super) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item, waiting for one until `deadline` (for good without one): `Timeout`
    /// when the deadline passes first, `Disconnected` once nothing is queued and every
    /// sender is gone.
    pub(super) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut state = self.0.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Ok(item);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            state = match deadline {
                None => self
                    .0
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    let waited = self.0.changed.wait_timeout(state, left);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver = false;
        let left = std::mem::take(&mut state.items);
        drop(state);
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn items_come_in_order_then_the_end_of_the_senders() {
        let (tx, rx) = channel();
        let other = tx.clone();
        tx.send(1).unwrap();
        other.send(2).unwrap();
        drop(tx);
        drop(other);
        assert_eq!(rx.recv(None), Ok(1));
        assert_eq!(rx.recv(None), Ok(2));
        assert_eq!(rx.recv(None), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_with_an_item_from_another_thread() {
        let (tx, rx) = channel();
        let clock = Instant::now();
        let deadline = clock + Duration::from_millis(50);
        assert_eq!(rx.recv(Some(deadline)), Err(RecvTimeoutError::Timeout));
        assert!(clock.elapsed() >= Duration::from_millis(50));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        assert_eq!(
            rx.recv(Some(Instant::now() + Duration::from_secs(30))),
            Ok(7)
        );
        sender.join().unwrap();
        assert_eq!(rx.recv(None), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn once_the_receiver_is_gone_sends_fail_and_what_was_queued_is_dropped() {
        let (tx, rx) = channel();
        let (ack, acked) = smol::channel::bounded::<()>(1);
        tx.send(Some(ack)).unwrap();
        drop(rx);
        assert!(acked.is_closed(), "the queued acknowledgement was dropped");
        assert!(tx.send(None).is_err());
    }
}
