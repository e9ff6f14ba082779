//! Connections: one authenticated session per host, port, user and key for the tasks of a
//! run, every network step bounded by the connection timeout, keys checked before use and
//! host keys against `known_hosts`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_ssh2_lite::ssh2::{CheckResult, KnownHostFileKind};
use futures_lite::future;

use super::{Channel, Session, TaskContext, EXIT_CONNECTION};
use crate::settings::ssh::SshConfig;

/// Sessions of one run, by (host, port, user, key). Each slot has its own async lock so that
/// two tasks starting together for one host wait for one connection instead of opening two.
#[derive(Default)]
pub(super) struct Pool {
    slots: Mutex<HashMap<SessionKey, Slot>>,
}

/// (host, port, user, key file).
type SessionKey = (String, u16, String, PathBuf);
type Slot = Arc<smol::lock::Mutex<Option<Session>>>;

/// Why an attempt could not run its command.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) exit_code: i32,
    pub(super) retryable: bool,
}

impl Failure {
    fn connect(message: String) -> Failure {
        Failure {
            message,
            exit_code: EXIT_CONNECTION,
            retryable: true,
        }
    }

    fn refused(message: String) -> Failure {
        Failure {
            message,
            exit_code: EXIT_CONNECTION,
            retryable: false,
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

fn tilde(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

fn key_path(cfg: &SshConfig, ctx: &TaskContext<'_>) -> PathBuf {
    match &cfg.key_path {
        Some(p) => tilde(&ctx.vars.expand(&p.to_string_lossy())),
        None => {
            let rsa = home().join(".ssh/id_rsa");
            let ed = home().join(".ssh/id_ed25519");
            if !rsa.exists() && ed.exists() {
                ed
            } else {
                rsa
            }
        }
    }
}

/// Refuses a private key that others can read (SEC-001), as OpenSSH does.
fn check_key(path: &Path) -> Result<(), Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::refused(format!("cannot read SSH key {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::refused(format!(
            "SSH key {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Bounds one network step by the connection timeout.
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    target: &str,
    step: impl std::future::Future<Output = Result<T, async_ssh2_lite::Error>>,
) -> Result<T, Failure> {
    let timer = async {
        smol::Timer::after(limit).await;
        None
    };
    match future::or(async { Some(step.await) }, timer).await {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Failure::connect(format!("{what} {target} failed: {e}"))),
        None => Err(Failure {
            message: format!("{what} {target} timed out after {}s", limit.as_secs()),
            exit_code: EXIT_CONNECTION,
            retryable: true,
        }),
    }
}

/// Where a task connects, and the time limit of each network step.
pub(super) struct Target {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    pub(super) limit: Duration,
}

impl Target {
    /// Where `cfg` connects, with `${VAR}` replaced in the host, user and key files.
    pub(super) fn new(cfg: &SshConfig, ctx: &TaskContext<'_>) -> Target {
        Target {
            host: ctx.vars.expand(&cfg.host),
            port: cfg.port,
            user: ctx.vars.expand(&cfg.user),
            key: key_path(cfg, ctx),
            known_hosts: cfg.known_hosts.as_ref().map_or_else(
                || home().join(".ssh/known_hosts"),
                |p| tilde(&ctx.vars.expand(&p.to_string_lossy())),
            ),
            limit: Duration::from_secs(cfg.timeout.max(1)),
        }
    }

    /// `user@host:port`, for messages.
    pub(super) fn label(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// A channel to `t` on the run's session for it, connecting first when there is none yet;
/// a shared session that broke (the peer restarted, a NAT forgot it) is replaced once. With
/// it, the session a stop goes through.
pub(super) async fn open_channel(
    ctx: &TaskContext<'_>,
    t: &Target,
) -> Result<(Session, Channel), Failure> {
    check_key(&t.key)?;
    let pool = ctx.shared.get_or_insert("ssh-sessions", Pool::default);
    let slot = pool
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((t.host.clone(), t.port, t.user.clone(), t.key.clone()))
        .or_default()
        .clone();
    let label = t.label();
    let mut fresh = false;
    let session = {
        let mut guard = slot.lock().await;
        match guard.as_ref() {
            Some(s) => s.clone(),
            None => {
                let s = connect(t).await?;
                fresh = true;
                *guard = Some(s.clone());
                s
            }
        }
    };
    match bounded(
        t.limit,
        "opening a channel to",
        &label,
        session.channel_session(),
    )
    .await
    {
        Ok(c) => Ok((session, c)),
        // The new session is the one the command runs on, so the one a stop goes through.
        Err(_) if !fresh => {
            let mut guard = slot.lock().await;
            let s = connect(t).await?;
            *guard = Some(s.clone());
            drop(guard);
            let c = bounded(t.limit, "opening a channel to", &label, s.channel_session()).await?;
            Ok((s, c))
        }
        Err(f) => Err(f),
    }
}

/// Opens and authenticates a new session, every step bounded.
async fn connect(t: &Target) -> Result<Session, Failure> {
    crate::executor::init_openssl();
    let label = t.label();
    let addrs: Vec<SocketAddr> = {
        let host = t.host.clone();
        let port = t.port;
        let resolve = async move { smol::net::resolve((host.as_str(), port)).await };
        let timer = async {
            smol::Timer::after(t.limit).await;
            None
        };
        match future::or(async { Some(resolve.await) }, timer).await {
            Some(Ok(a)) if !a.is_empty() => a,
            Some(Ok(_)) => return Err(Failure::connect(format!("{label}: no address found"))),
            Some(Err(e)) => {
                return Err(Failure::connect(format!("cannot resolve {}: {e}", t.host)))
            }
            None => return Err(Failure::connect(format!("resolving {} timed out", t.host))),
        }
    };
    let mut session = bounded(t.limit, "connecting to", &label, async {
        Session::connect(addrs[0], None).await
    })
    .await?;
    bounded(t.limit, "SSH handshake with", &label, session.handshake()).await?;
    verify_host_key(&session, t)?;
    bounded(
        t.limit,
        "public-key authentication as",
        &label,
        session.userauth_pubkey_file(&t.user, None, &t.key, None),
    )
    .await
    .map_err(|f| Failure {
        message: format!(
            "{} (the server did not accept key {})",
            f.message,
            t.key.display()
        ),
        retryable: false,
        ..f
    })?;
    if !session.authenticated() {
        return Err(Failure::refused(format!(
            "{label}: the server did not accept key {}",
            t.key.display()
        )));
    }
    Ok(session)
}

fn verify_host_key(session: &Session, t: &Target) -> Result<(), Failure> {
    let Some((key, _kind)) = session.host_key() else {
        return Err(Failure::refused(format!(
            "{}: no host key offered",
            t.label()
        )));
    };
    let mut kh = session
        .known_hosts()
        .map_err(|e| Failure::refused(format!("cannot check host keys: {e}")))?;
    if t.known_hosts.exists() {
        kh.read_file(&t.known_hosts, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                Failure::refused(format!("cannot read {}: {e}", t.known_hosts.display()))
            })?;
    }
    let scan = format!(
        "ssh-keyscan -p {} {} >> {}",
        t.port,
        t.host,
        t.known_hosts.display()
    );
    match kh.check_port(&t.host, t.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound => Err(Failure::refused(format!(
            "host {}:{} is not in {}; after checking its fingerprint, add it with: {scan}",
            t.host,
            t.port,
            t.known_hosts.display()
        ))),
        CheckResult::Mismatch => Err(Failure::refused(format!(
            "HOST KEY MISMATCH for {}:{}: the key differs from the one in {}. Someone may be \
             intercepting the connection (man-in-the-middle), or the host was reinstalled. \
             Refusing to connect; if the change is expected, remove the old entry and add the \
             new one ({scan})",
            t.host,
            t.port,
            t.known_hosts.display()
        ))),
        CheckResult::Failure => Err(Failure::refused(format!(
            "cannot check the host key of {}:{}",
            t.host, t.port
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_readable_by_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("pf-key-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_key(&key).err().unwrap();
        assert!(
            e.message.contains("chmod 600") && e.message.contains("id"),
            "{}",
            e.message
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key(&key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
