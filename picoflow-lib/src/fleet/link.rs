//! The connection to the fleet's NATS servers: the client's options from `[fleet]`, the
//! tokio runtime the client needs (one current-thread runtime, on the one thread that uses
//! it), and the link's state as the daemon shows it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ClientError, ConnectOptions, Event};
use chrono::Utc;

use super::settings::{without_userinfo, FleetConfig};
use crate::contract::LinkStatus;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// A current-thread tokio runtime for the fleet client; the engine stays on smol.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Network(Box::new(e)))
}

/// The client's options: credentials and TLS from `cfg`, named `name`. A credentials file
/// that cannot be read is a configuration error naming it. A daemon's client (`node`) takes
/// its replies on inboxes of its own, `_INBOX.NODE.…`, so that a device's NATS user needs
/// (and is given) only those; the operator's commands keep the client's default.
pub(crate) async fn options(
    cfg: &FleetConfig,
    name: &str,
    node: Option<&str>,
) -> Result<ConnectOptions> {
    let mut o = if let Some(path) = &cfg.creds_file {
        ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| Error::Config {
                origin: path.display().to_string(),
                message: format!("fleet.creds_file: {e}"),
            })?
    } else if let Some(path) = &cfg.nkey_file {
        let seed = secret_line(path, "nkey_file")?;
        // The client would drop a seed it cannot read and sign in without it: the server's
        // refusal would then hide the cause.
        if !is_user_seed(&seed) {
            return Err(Error::Config {
                origin: path.display().to_string(),
                message: "fleet.nkey_file: not a user nkey seed (one line of 58 letters and \
                          digits starting with SU)"
                    .into(),
            });
        }
        ConnectOptions::with_nkey(seed)
    } else if let Some(user) = &cfg.user {
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => secret_line(path, "password_file")?,
            (None, None) => String::new(),
        };
        ConnectOptions::with_user_and_password(user.clone(), password)
    } else if let Some(t) = &cfg.token {
        ConnectOptions::with_token(t.clone())
    } else if let Some(path) = &cfg.token_file {
        ConnectOptions::with_token(secret_line(path, "token_file")?)
    } else {
        ConnectOptions::new()
    };
    if let Some(ca) = &cfg.tls_ca_file {
        if !ca.is_file() {
            return Err(Error::Config {
                origin: ca.display().to_string(),
                message: "fleet.tls_ca_file: no such file".into(),
            });
        }
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some(node) = node {
        o = o.custom_inbox_prefix(inbox_prefix(node));
    }
    Ok(o.name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5))))
}

/// What is said of a server that does not run JetStream.
pub(crate) const NO_JETSTREAM: &str =
    "the server does not run JetStream (start it with -js, or jetstream {} in its configuration)";

/// Whether the client's error `e` says that the server does not run JetStream.
pub(crate) fn jetstream_missing(e: &str) -> bool {
    e.contains("jetstream unavailable") || e.contains("no responders")
}

/// The prefix of a daemon's reply inboxes.
pub(crate) fn inbox_prefix(node: &str) -> String {
    format!("_INBOX.{node}")
}

/// The servers of `cfg` as shown to people (no user or password).
pub(crate) fn shown_servers(cfg: &FleetConfig) -> String {
    cfg.url
        .0
        .iter()
        .map(|u| without_userinfo(u))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The link's state, shared by the fleet thread (which changes it) and the daemon's readers.
#[derive(Debug, Clone)]
pub(crate) struct SharedLink {
    inner: Arc<Mutex<LinkStatus>>,
    /// Where the state is written for `daemon status` (`<pid file>.fleet`).
    file: PathBuf,
    /// The gauges of the daemon's metrics.
    metrics: Metrics,
}

impl SharedLink {
    pub(crate) fn new(
        node: &str,
        servers: String,
        pid_file: &Path,
        metrics: Metrics,
    ) -> SharedLink {
        let link = SharedLink {
            inner: Arc::new(Mutex::new(LinkStatus {
                node: node.to_string(),
                servers,
                connected: false,
                since: Utc::now(),
                error: None,
                unsent: 0,
                problem: None,
            })),
            file: status_path(pid_file),
            metrics,
        };
        link.save();
        link
    }

    pub(crate) fn get(&self) -> LinkStatus {
        self.inner.lock().expect("fleet link").clone()
    }

    fn save(&self) {
        let now = self.get();
        self.metrics.set_fleet(now.connected, now.unsent);
        let doc = serde_json::to_vec(&now).unwrap_or_default();
        if let Err(e) = crate::private::replace(&self.file, &doc) {
            tracing::warn!(path = %self.file.display(), error = %e, "cannot write the fleet status file");
        }
    }

    /// Takes in an event of the client; logs a change of state once.
    pub(crate) fn on_event(&self, event: &Event) {
        let mut changed = false;
        {
            let mut s = self.inner.lock().expect("fleet link");
            match event {
                Event::Connected if !s.connected => {
                    tracing::info!(servers = %s.servers, node = %s.node, "fleet: connected");
                    s.connected = true;
                    s.since = Utc::now();
                    s.error = None;
                    changed = true;
                }
                Event::Disconnected | Event::Closed if s.connected => {
                    tracing::warn!(servers = %s.servers,
                        "fleet: connection lost; local schedules go on, reconnecting");
                    s.connected = false;
                    s.since = Utc::now();
                    changed = true;
                }
                Event::ServerError(e) => {
                    let e = e.to_string();
                    if s.error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(servers = %s.servers, error = %e,
                            "fleet: the server refused us; local schedules go on, retrying");
                        s.error = Some(e);
                        changed = true;
                    }
                }
                // A failed connection's kind ("IO error") where the reason is known already
                // ("IO error: invalid peer certificate: UnknownIssuer").
                Event::ClientError(ClientError::Other(kind))
                    if s.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(kind.as_str())) => {}
                Event::ClientError(e) => {
                    let e = e.to_string();
                    if s.error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(servers = %s.servers, error = %e, "fleet: client error");
                        s.error = Some(e);
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if changed {
            self.save();
        }
    }

    /// Takes in the error of a first connection that failed. The reason is kept and logged
    /// where the client's events would give only its kind: a server's refusal (wrong
    /// credentials) is left to them, which log it once.
    pub(crate) fn on_connect_error(&self, e: &async_nats::ConnectError) {
        use async_nats::ConnectErrorKind as Kind;
        if matches!(
            e.kind(),
            Kind::AuthorizationViolation | Kind::Authentication
        ) {
            return;
        }
        let e = e.to_string();
        {
            let mut s = self.inner.lock().expect("fleet link");
            if s.connected || s.error.as_deref() == Some(e.as_str()) {
                return;
            }
            tracing::warn!(servers = %s.servers, error = %e,
                "fleet: cannot connect; local schedules go on, retrying");
            s.error = Some(e);
        }
        self.save();
    }

    /// Records what keeps a connected client from the fleet's buckets and stream (`None`:
    /// nothing now): a server without JetStream, a device that may not create them. Logged
    /// once per reason, shown by `daemon status`.
    pub(crate) fn set_problem(&self, problem: Option<String>) {
        {
            let mut s = self.inner.lock().expect("fleet link");
            if s.problem == problem {
                return;
            }
            if let Some(p) = &problem {
                tracing::warn!(servers = %s.servers, problem = %p,
                    "fleet: connected, but the fleet cannot be used; local schedules go on, retrying");
            }
            s.problem = problem;
        }
        self.save();
    }

    /// Records the number of executions waiting to be sent.
    pub(crate) fn set_unsent(&self, n: usize) {
        let changed = {
            let mut s = self.inner.lock().expect("fleet link");
            std::mem::replace(&mut s.unsent, n) != n
        };
        if changed {
            self.save();
        }
    }

    /// Removes the status file (the daemon stops).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether `s` has the form of a user nkey seed: `SU` and 56 more base32 characters.
fn is_user_seed(s: &str) -> bool {
    s.len() == 58
        && s.starts_with("SU")
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// The first line of a secret file, an error naming the file and its key when it is
/// unreadable or empty (a configuration error, as for `creds_file` and `tls_ca_file`).
pub(crate) fn secret_line(path: &std::path::Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        origin: path.display().to_string(),
        message: format!(
            "fleet.{key}: {}",
            crate::error::without_os_error(&e.to_string())
        ),
    })?;
    match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Ok(t.to_string()),
        None => Err(Error::Config {
            origin: path.display().to_string(),
            message: format!("fleet.{key}: the file is empty"),
        }),
    }
}

/// The fleet status file beside a daemon's PID file.
pub(crate) fn status_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".fleet");
    PathBuf::from(s)
}

/// Reads a daemon's fleet status file, if it has one.
pub(crate) fn read_status(pid_file: &Path) -> Option<LinkStatus> {
    let text = std::fs::read(status_path(pid_file)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_seed_has_its_form() {
        assert!(is_user_seed(&format!("SU{}", "A2".repeat(28))));
        // A public key, a seed of an account, a cut one, one in lower case.
        assert!(!is_user_seed(&format!("UA{}", "A".repeat(56))));
        assert!(!is_user_seed(&format!("SA{}", "A".repeat(56))));
        assert!(!is_user_seed("SUAB"));
        assert!(!is_user_seed(&format!("SU{}", "a".repeat(56))));
    }
}
