//! The web UI and API in builds without the `web` feature: nothing is served.

use std::sync::Arc;

use crate::contract::WebContext;
use crate::httpd::Service;

/// Nothing to serve in this build; the daemon logs that `[web] enabled` has no effect.
#[inline]
pub(crate) fn service(_context: WebContext) -> Option<Arc<dyn Service>> {
    None
}
