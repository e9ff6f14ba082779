//! The daemon's membership of a fleet (`[fleet] url`): its outbox in the state file, the
//! fleet thread, the sink that wakes it and the view the web UI reads. Without the `fleet`
//! feature a daemon never has one (`Daemon::run` refuses a `[fleet] url` first).
//!
//! `enabled.rs` is the membership with the feature, `disabled.rs` the one without: the only
//! place the feature is named is the choice between them.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::contract::{Catalog, Trigger};
use crate::metrics::Metrics;
use crate::store::Store;

/// What the fleet thread is handed.
#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
pub(in crate::daemon) struct Join<'a> {
    pub(in crate::daemon) daemon: &'a super::Daemon,
    pub(in crate::daemon) store: &'a Arc<Store>,
    pub(in crate::daemon) catalog: &'a Catalog,
    pub(in crate::daemon) triggers: &'a smol::channel::Sender<Trigger>,
    /// Told when the applied workflows changed.
    pub(in crate::daemon) reload: smol::channel::Sender<()>,
    pub(in crate::daemon) pid_file: &'a Path,
    pub(in crate::daemon) started: DateTime<Utc>,
    pub(in crate::daemon) metrics: &'a Metrics,
}

#[cfg_attr(feature = "fleet", path = "enabled.rs")]
#[cfg_attr(not(feature = "fleet"), path = "disabled.rs")]
mod membership;

pub(super) use membership::Membership;
