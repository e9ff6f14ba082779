//! `type: ssh` settings (EXEC-002, SEC-001): what `config:` holds, read and checked when a
//! workflow is loaded, in every build (a build without `ssh` then refuses the task by name).
//! Declared by `settings` (below the model, which holds them); the running code is this
//! folder's `mod.rs`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{from_value, seconds, Problems, Value, ValueError};

/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Default SSH connection timeout, in seconds.
pub const DEFAULT_SSH_TIMEOUT_SECS: u64 = 30;

/// `type: ssh` configuration (EXEC-002, SEC-001).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// Remote host name or address.
    pub host: String,
    /// Remote port (default 22).
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Command run by the remote shell.
    pub command: String,
    /// Private key; default `~/.ssh/id_rsa`, then `~/.ssh/id_ed25519`.
    pub key_path: Option<PathBuf>,
    /// Connection timeout in seconds (1-3600, default 30).
    pub timeout: u64,
    /// `known_hosts` file; default `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
}

/// `config:` as written; an unknown key is an error that names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    host: String,
    #[serde(default)]
    port: Option<i64>,
    user: String,
    command: String,
    #[serde(default)]
    key_path: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    known_hosts: Option<String>,
}

/// The keys `config:` accepts.
pub(crate) fn keys() -> &'static [&'static str] {
    crate::fields::of::<RawSsh>()
}

/// Reads a task's `config:`; a value of the wrong shape is the error, a value out of its
/// range or format is added to `problems`.
pub(crate) fn parse(config: Value, problems: &mut Problems<'_>) -> Result<SshConfig, ValueError> {
    let r: RawSsh = from_value(config)?;
    for (field, v) in [
        ("host", &r.host),
        ("user", &r.user),
        ("command", &r.command),
    ] {
        if v.trim().is_empty() {
            problems.add(format_args!("config.{field} must not be empty"));
        }
    }
    let port = problems.range("config.port", r.port, 1, 65_535);
    let timeout = problems.range("config.timeout", r.timeout, 1, 3600);
    Ok(SshConfig {
        host: r.host,
        port: port.map(|p| p as u16).unwrap_or(DEFAULT_SSH_PORT),
        user: r.user,
        command: r.command,
        key_path: r.key_path.map(PathBuf::from),
        timeout: timeout
            .map(|t| t as u64)
            .unwrap_or(DEFAULT_SSH_TIMEOUT_SECS),
        known_hosts: r.known_hosts.map(PathBuf::from),
    })
}
