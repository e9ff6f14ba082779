//! Stand-ins for the metrics types in builds without the `metrics` feature.
//!
//! They offer the same API as the real ones so callers compile unchanged, and do nothing:
//! no counters are kept and nothing is served.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::Result;
use crate::events::{Event, EventSink};
use crate::httpd::Service;
use crate::model::Workflow;

/// Run-time metrics (OBS-003); in this build, which lacks the `metrics` feature, a no-op.
#[derive(Clone, Debug, Default)]
pub struct Metrics;

impl Metrics {
    /// A no-op collector.
    #[inline]
    pub fn new() -> Metrics {
        Metrics
    }

    /// Whether this build collects and serves metrics (`false`: built without `metrics`).
    #[inline]
    pub fn enabled() -> bool {
        false
    }

    /// Nothing to serve in this build.
    #[inline]
    pub(crate) fn service(&self) -> Option<Arc<dyn Service>> {
        None
    }

    /// Ignored in this build.
    #[inline]
    pub fn set_workflows<'w>(&self, _workflows: impl IntoIterator<Item = &'w Workflow>) {}

    /// [`Metrics::new`]: nothing is collected.
    pub fn for_daemon(_fleet: bool) -> Metrics {
        Metrics
    }

    /// Does nothing.
    pub fn set_fleet(&self, _connected: bool, _unsent: usize) {}

    /// Does nothing.
    #[inline]
    pub fn set_clock(&self, _synced: bool, _waiting: bool) {}

    /// Does nothing.
    #[inline]
    pub fn clock_jumped(&self) {}

    /// Always empty in this build.
    #[inline]
    pub fn render(&self) -> String {
        String::new()
    }

    /// A bare `{"status":"ok"}`: this build keeps no counters to report.
    #[inline]
    pub fn health_json(&self) -> String {
        r#"{"status":"ok"}"#.to_string()
    }
}

impl EventSink for Metrics {
    #[inline]
    fn on_event(&self, _event: &Event) {}
}

/// The metrics HTTP endpoint; in this build, which lacks the `metrics` feature, it serves
/// nothing.
#[derive(Debug)]
pub struct MetricsServer;

impl MetricsServer {
    /// Opens no port and spawns nothing; always succeeds.
    #[inline]
    pub fn start(
        _ex: &Arc<smol::Executor<'static>>,
        _bind: &str,
        _port: u16,
        _metrics: Metrics,
    ) -> Result<MetricsServer> {
        Ok(MetricsServer)
    }

    /// Always `None`: nothing listens in this build.
    #[inline]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}
