//! The daemon's membership of a fleet (`[fleet] url`): its outbox in the state file, the
//! fleet thread, the sink that wakes it and the view the web UI reads. Without the `fleet`
//! feature a daemon never has one (`Daemon::run` refuses a `[fleet] url` first).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::contract::{Catalog, FleetSource, Trigger};
use crate::error::Result;
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the fleet thread is handed.
#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
pub(super) struct Join<'a> {
    pub(super) daemon: &'a super::Daemon,
    pub(super) store: &'a Arc<Store>,
    pub(super) catalog: &'a Catalog,
    pub(super) triggers: &'a smol::channel::Sender<Trigger>,
    /// Told when the applied workflows changed.
    pub(super) reload: smol::channel::Sender<()>,
    pub(super) pid_file: &'a Path,
    pub(super) started: DateTime<Utc>,
    pub(super) metrics: &'a Metrics,
}

/// A daemon's membership; none when it belongs to no fleet.
pub(super) struct Membership {
    #[cfg(feature = "fleet")]
    agent: Option<crate::fleet::agent::Agent>,
}

impl Membership {
    /// Keeps the state file's outbox as the daemon's fleet needs it (created for a fleet,
    /// dropped without one), then starts the fleet thread when `dir` (the applied
    /// workflows' directory) says the daemon has a fleet.
    pub(super) fn start(dir: Option<&PathBuf>, join: Join<'_>) -> Result<Membership> {
        #[cfg(feature = "fleet")]
        {
            use crate::fleet::agent::{Agent, Parts};
            let Some(dir) = dir else {
                join.store.close_outbox()?;
                return Ok(Membership { agent: None });
            };
            join.store.open_outbox()?;
            let agent = Agent::start(Parts {
                config: join.daemon.config.fleet.clone(),
                store: join.store.clone(),
                registry: join.daemon.registry.clone(),
                catalog: join.catalog.clone(),
                triggers: join.triggers.clone(),
                reload: join.reload,
                dir: dir.clone(),
                pid_file: join.pid_file.to_path_buf(),
                started: join.started,
                metrics: join.metrics.clone(),
            })?;
            Ok(Membership { agent: Some(agent) })
        }
        #[cfg(not(feature = "fleet"))]
        {
            let _ = (dir, join);
            Ok(Membership {})
        }
    }

    /// Stops the fleet thread (it sends nothing after this) and waits for it.
    pub(super) fn stop(self) {
        #[cfg(feature = "fleet")]
        drop(self.agent);
    }

    /// The engine sink that wakes the fleet thread when records change.
    pub(super) fn sink(&self) -> Option<Arc<dyn EventSink>> {
        #[cfg(feature = "fleet")]
        return self.agent.as_ref().map(|a| a.sink());
        #[cfg(not(feature = "fleet"))]
        None
    }

    /// The fleet as the web UI reads it.
    pub(super) fn source(&self) -> Option<Arc<dyn FleetSource>> {
        #[cfg(feature = "fleet")]
        return self.agent.as_ref().map(|a| a.source());
        #[cfg(not(feature = "fleet"))]
        None
    }
}
