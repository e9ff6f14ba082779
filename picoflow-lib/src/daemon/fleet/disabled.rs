//! A daemon's membership of a fleet, without the `fleet` feature: never one (`Daemon::run`
//! refuses a `[fleet] url` before it gets here).

use std::path::PathBuf;
use std::sync::Arc;

use super::Join;
use crate::contract::FleetSource;
use crate::error::Result;
use crate::events::EventSink;

/// No membership.
pub(in crate::daemon) struct Membership;

impl Membership {
    /// Nothing to start: there is no fleet directory without the feature.
    pub(in crate::daemon) fn start(_dir: Option<&PathBuf>, _join: Join<'_>) -> Result<Membership> {
        Ok(Membership)
    }

    /// Nothing to stop.
    pub(in crate::daemon) fn stop(self) {}

    /// No sink.
    pub(in crate::daemon) fn sink(&self) -> Option<Arc<dyn EventSink>> {
        None
    }

    /// No fleet to read.
    pub(in crate::daemon) fn source(&self) -> Option<Arc<dyn FleetSource>> {
        None
    }
}
