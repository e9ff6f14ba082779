//! A daemon's membership of a fleet, with the `fleet` feature: the agent's thread.

use std::path::PathBuf;
use std::sync::Arc;

use super::Join;
use crate::contract::FleetSource;
use crate::error::Result;
use crate::events::EventSink;
use crate::fleet::agent::{Agent, Parts};

/// A daemon's membership; none when it belongs to no fleet.
pub(in crate::daemon) struct Membership {
    agent: Option<Agent>,
}

impl Membership {
    /// Keeps the state file's outbox as the daemon's fleet needs it (created for a fleet,
    /// dropped without one), then starts the fleet thread when `dir` (the applied
    /// workflows' directory) says the daemon has a fleet.
    pub(in crate::daemon) fn start(dir: Option<&PathBuf>, join: Join<'_>) -> Result<Membership> {
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

    /// Stops the fleet thread (it sends nothing after this) and waits for it.
    pub(in crate::daemon) fn stop(self) {
        drop(self.agent);
    }

    /// The engine sink that wakes the fleet thread when records change.
    pub(in crate::daemon) fn sink(&self) -> Option<Arc<dyn EventSink>> {
        self.agent.as_ref().map(Agent::sink)
    }

    /// The fleet as the web UI reads it.
    pub(in crate::daemon) fn source(&self) -> Option<Arc<dyn FleetSource>> {
        self.agent.as_ref().map(Agent::source)
    }
}
