//! What the daemon and its web UI share: the loaded workflows as the UI shows them
//! ([`Catalog`]), the request to run one now ([`Trigger`]) and its answer ([`Triggered`]), and
//! everything the UI reads ([`WebContext`]); and the daemon's link to its fleet as `daemon
//! status` shows it ([`LinkStatus`]), written by the fleet's thread.
//!
//! A leaf below both: the daemon fills these in and the web module reads them, so neither
//! imports the other's internals. Compiled in every build (a build without `web` still hands
//! the daemon's context to the stand-in that serves nothing).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Workflow;
use crate::store::Store;

/// The daemon's loaded workflows as its web UI shows them. The daemon publishes them on start
/// and reload and after each fire (for the next fire time); the HTTP thread reads them.
#[derive(Clone, Default)]
pub(crate) struct Catalog(Arc<Mutex<BTreeMap<String, CatalogEntry>>>);

/// One loaded workflow in the [`Catalog`].
#[derive(Clone)]
#[allow(dead_code)] // read by the `web` feature only
pub(crate) struct CatalogEntry {
    pub(crate) wf: Arc<Workflow>,
    pub(crate) source: PathBuf,
    pub(crate) next: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Replaces every entry with `entries`.
    pub(crate) fn publish(&self, entries: impl IntoIterator<Item = CatalogEntry>) {
        let map = entries
            .into_iter()
            .map(|e| (e.wf.name.clone(), e))
            .collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Every loaded workflow, by name.
    #[allow(dead_code)] // used by the `web` feature only
    pub(crate) fn entries(&self) -> Vec<CatalogEntry> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// One loaded workflow.
    #[allow(dead_code)] // used by the `web` feature only
    pub(crate) fn get(&self, name: &str) -> Option<CatalogEntry> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }
}

/// A request to run a workflow now, sent by the web API to the daemon's scheduler, which
/// applies the overlap rule (SCHED-004) exactly as for a scheduled fire.
pub(crate) struct Trigger {
    pub(crate) workflow: String,
    pub(crate) reply: smol::channel::Sender<Triggered>,
    /// Who asks, as the daemon's log says it: `the web API`, `the fleet`.
    pub(crate) by: &'static str,
}

/// The daemon's answer to a [`Trigger`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Triggered {
    /// Started; the new execution's id.
    Started(String),
    /// No loaded workflow has that name.
    NotFound,
    /// A run is going and the workflow does not set `allow_concurrent`.
    Busy,
}

/// What the web UI and API read: the state file, the task logs, the loaded workflows, and
/// the way to ask for a run.
#[allow(dead_code)] // read by the `web` feature only
pub(crate) struct WebContext {
    pub(crate) store: Arc<Store>,
    pub(crate) log_dir: PathBuf,
    pub(crate) catalog: Catalog,
    pub(crate) triggers: smol::channel::Sender<Trigger>,
    /// The bearer token that allows triggering; `None` disables it.
    pub(crate) token: Option<String>,
    /// The endpoint listens on a loopback address only.
    pub(crate) loopback: bool,
    /// Pages and API reads need the token (or the sign-in cookie) too.
    pub(crate) reads_need_token: bool,
    /// The fleet's view, when the daemon belongs to a fleet.
    pub(crate) fleet: Option<Arc<dyn FleetSource>>,
}

/// What the web UI shows of the fleet, read by the daemon's fleet thread: `{"nodes": [node
/// records with "alive"], "latest": [the latest execution report per node and workflow]}`.
/// JSON, so that the web module needs none of the fleet's types.
pub(crate) trait FleetSource: Send + Sync {
    /// The fleet now, or why it cannot be read (the server is unreachable).
    #[cfg_attr(not(feature = "web"), allow(dead_code))] // read by the `web` feature only
    fn snapshot(&self) -> std::result::Result<serde_json::Value, String>;
}

/// A daemon's link to its fleet, as `daemon status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// This node's name.
    pub node: String,
    /// The servers, without credentials.
    pub servers: String,
    /// Connected now.
    pub connected: bool,
    /// Since when it is connected, or not.
    pub since: DateTime<Utc>,
    /// The last error the server or the client reported, if any.
    pub error: Option<String>,
    /// Executions whose latest records the fleet has not yet received.
    pub unsent: usize,
    /// What keeps a connected daemon from using the fleet (a server without JetStream, the
    /// fleet's buckets missing and not its to create); `None` when nothing does.
    #[serde(default)]
    pub problem: Option<String>,
}
