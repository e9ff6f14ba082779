//! The daemon's HTTP endpoints on a thread of their own: `/metrics` and `/health`, and with
//! `web` the UI and API.

use std::sync::Arc;

use crate::config::Config;
use crate::contract::WebContext;
use crate::error::{Error, Result};
use crate::httpd::{Server, Service};
use crate::metrics::Metrics;

/// The daemon's HTTP endpoints (`/metrics`, `/health`, the web UI and API) on a thread of
/// their own, so that neither a client nor a read of the state file for one ever delays the
/// scheduler. Services that share an address share one listener. Dropping it stops the
/// thread and closes every listener.
pub(super) struct HttpThread {
    stop: smol::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpThread {
    /// Starts every configured endpoint. A web UI address that cannot be listened on (in
    /// use, not this host's) is an error: a daemon without it would leave the port to
    /// whoever takes it, and with it the token its clients send. The metrics endpoint is
    /// logged and done without (it holds no secret, and every daemon on a host has the
    /// same default port).
    pub(super) fn start(
        config: &Config,
        metrics: &Metrics,
        web: WebContext,
    ) -> Result<Option<HttpThread>> {
        if !crate::httpd::ANY_SERVICE {
            return Ok(None);
        }
        // (bind address, port, services on that listener, whether it serves the web UI)
        type Endpoint = (String, u16, Vec<Arc<dyn Service>>, bool);
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut add = |bind: &str, port: u16, service: Arc<dyn Service>, web: bool| match endpoints
            .iter_mut()
            .find(|e| e.0 == bind && e.1 == port)
        {
            Some(e) => {
                e.2.push(service);
                e.3 |= web;
            }
            None => endpoints.push((bind.to_string(), port, vec![service], web)),
        };
        if config.metrics.enabled && config.metrics.port != 0 {
            match metrics.service() {
                Some(s) => add(&config.metrics.bind_address, config.metrics.port, s, false),
                None => tracing::warn!(
                    "[metrics] enabled = true, but this build has no `metrics` feature; no endpoint is served"
                ),
            }
        }
        if config.web.enabled {
            match crate::web::service(web) {
                Some(s) => add(&config.web.bind, config.web.port, s, true),
                None => tracing::warn!(
                    "[web] enabled = true, but this build has no `web` feature; no UI is served"
                ),
            }
        }
        let net = Arc::new(smol::Executor::new());
        let mut servers = Vec::new();
        for (bind, port, services, web) in endpoints {
            let n = services.len();
            match Server::start(&net, &bind, port, services) {
                Ok(s) => {
                    tracing::info!(addr = %s.local_addr(), services = n, "serving HTTP");
                    servers.push(s);
                }
                // The UI's clients send the token: its port is never left to another process.
                Err(e) if web => return Err(e),
                // `/metrics` and `/health` hold no secret, and the default port is shared by
                // every daemon on the host: the daemon goes on without them.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the metrics endpoint; going on without it")
                }
            }
        }
        if servers.is_empty() {
            return Ok(None);
        }
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let thread = crate::threads::spawn(
            "picoflow-http".into(),
            Box::new(move || {
                smol::block_on(net.run(async {
                    let _ = stopped.recv().await;
                }));
                drop(servers);
            }),
        );
        match thread {
            Ok(t) => Ok(Some(HttpThread {
                stop,
                thread: Some(t),
            })),
            Err(e) => Err(Error::Other(format!("cannot start the HTTP thread: {e}"))),
        }
    }
}

impl Drop for HttpThread {
    fn drop(&mut self) {
        self.stop.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
