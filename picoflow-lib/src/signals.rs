//! Process signals for the CLI and the daemon (REL-002), on smol (async-signal).

use futures_lite::StreamExt;

use crate::error::{Error, Result};

/// A signal PicoFlow reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl+C): stop.
    Interrupt,
    /// SIGTERM: stop.
    Terminate,
    /// SIGHUP: reload workflow files (daemon).
    Hangup,
}

/// Receives SIGINT, SIGTERM and SIGHUP once created; until then their default actions apply.
#[derive(Debug)]
pub struct Signals {
    inner: async_signal::Signals,
}

impl Signals {
    /// Starts receiving the signals.
    pub fn new() -> Result<Signals> {
        use async_signal::Signal;
        let inner = async_signal::Signals::new([Signal::Int, Signal::Term, Signal::Hup])
            .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
        Ok(Signals { inner })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Option<StopSignal> {
        use async_signal::Signal;
        loop {
            match self.inner.next().await? {
                Ok(Signal::Int) => return Some(StopSignal::Interrupt),
                Ok(Signal::Term) => return Some(StopSignal::Terminate),
                Ok(Signal::Hup) => return Some(StopSignal::Hangup),
                _ => continue,
            }
        }
    }
}
