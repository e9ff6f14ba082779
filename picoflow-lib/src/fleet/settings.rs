//! `[fleet]` in the configuration file: which NATS servers, who this device is, how it signs
//! in. Compiled in every build, so that a build without the `fleet` feature can name the
//! feature when a configuration asks for a fleet.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default prefix of every subject, bucket and stream name.
pub(crate) const DEFAULT_PREFIX: &str = "picoflow";

/// `[fleet]`: the device's membership of a fleet over NATS JetStream. Off while `url` is
/// empty.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`), separated by commas. The
    /// client moves to another one when its server goes away.
    pub url: Urls,
    /// This device's name in the fleet; default: the host name up to its first dot.
    pub node: Option<String>,
    /// Labels a roll-out or a run can target (`--to camera`).
    pub labels: Vec<String>,
    /// First part of every subject, bucket and stream name (one fleet per prefix).
    pub prefix: String,
    /// User name, with `password` or `password_file`.
    pub user: Option<String>,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// Authentication token (prefer `token_file`).
    pub token: Option<String>,
    /// File holding the token (its first line).
    pub token_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and nkey seed, from `nsc`).
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs the servers' TLS certificates; setting it requires
    /// TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Seconds between two inventory records (at least 10).
    pub heartbeat_seconds: u64,
    /// Copies the server keeps of each bucket and stream when a node creates them: 1 on a
    /// single server, 3 on a 3-server cluster.
    pub replicas: usize,
    /// Days the results stream keeps an execution record, when a node creates it (or the
    /// operator's `picoflow fleet` command finds it different).
    pub results_max_days: u64,
    /// Megabytes the results stream may hold; the oldest records go first beyond it.
    pub results_max_mb: u64,
}

/// One server URL or several, separated by commas (`"nats://a:4222, nats://b:4222"`).
#[derive(Clone, PartialEq, Default)]
pub struct Urls(pub Vec<String>);

// Read as one string: the code that reads a string is in every build already, where a
// list-or-string value would add its own copy of the TOML reader (about 23 KB).
impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Urls, D::Error> {
        String::deserialize(d).map(|s| Urls(split_urls(&s)))
    }
}

/// `a,b` or `a b`: the URL list of `PICOFLOW_FLEET_URL` and of a single string.
fn split_urls(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

impl std::fmt::Debug for Urls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL may carry `user:password@`: only the hosts are shown.
        f.debug_list()
            .entries(self.0.iter().map(|u| without_userinfo(u)))
            .finish()
    }
}

/// `nats://user:pw@host:4222` shown as `nats://host:4222`.
pub(crate) fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if scheme.is_empty() {
        rest.to_string()
    } else {
        format!("{scheme}://{rest}")
    }
}

impl std::fmt::Debug for FleetConfig {
    // Secrets are never printed, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "<set>");
        f.debug_struct("FleetConfig")
            .field("url", &self.url)
            .field("node", &self.node)
            .field("labels", &self.labels)
            .field("prefix", &self.prefix)
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &set(&self.token))
            .field("token_file", &self.token_file)
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("heartbeat_seconds", &self.heartbeat_seconds)
            .field("replicas", &self.replicas)
            .field("results_max_days", &self.results_max_days)
            .field("results_max_mb", &self.results_max_mb)
            .finish()
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            url: Urls::default(),
            node: None,
            labels: Vec::new(),
            prefix: DEFAULT_PREFIX.into(),
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            creds_file: None,
            nkey_file: None,
            tls_ca_file: None,
            heartbeat_seconds: 10,
            replicas: 1,
            results_max_days: 90,
            results_max_mb: 1024,
        }
    }
}

/// A node name or label: one token of a NATS subject and of a key-value key (letters,
/// digits, `-` and `_`, 1 to 64 of them, as a workflow name), and not `all`, which targets
/// every node.
pub(crate) fn is_node_name(s: &str) -> bool {
    crate::model::is_valid_name(s) && s != "all"
}

impl FleetConfig {
    /// Whether this device belongs to a fleet (`url` is set).
    pub fn enabled(&self) -> bool {
        !self.url.0.is_empty()
    }

    /// This device's node name: `node`, or the host name up to its first dot with any
    /// character a subject cannot hold replaced by `-`.
    pub fn node_name(&self) -> String {
        match &self.node {
            Some(n) => n.clone(),
            None => {
                let host = crate::schedule::host_name();
                let short = host.split('.').next().unwrap_or("localhost");
                let name: String = short
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect();
                if name.is_empty() {
                    "localhost".into()
                } else {
                    name
                }
            }
        }
    }

    /// Time between two inventory records.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds.max(10))
    }

    /// Applies `PICOFLOW_FLEET_URL` and `PICOFLOW_NODE`.
    pub(crate) fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        if let Some(v) = env("PICOFLOW_FLEET_URL").filter(|v| !v.trim().is_empty()) {
            self.url = Urls(split_urls(&v));
        }
        if let Some(v) = env("PICOFLOW_NODE").filter(|v| !v.is_empty()) {
            self.node = Some(v);
        }
    }

    /// Checks names and combinations; `origin` names the source in messages.
    pub(crate) fn check(&self, origin: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                origin: origin.to_string(),
                message,
            })
        };
        if !crate::model::is_valid_name(&self.prefix) {
            return bad(format!(
                "fleet.prefix: '{}' must be 1-64 letters, digits, '-' or '_'",
                self.prefix
            ));
        }
        if let Some(n) = &self.node {
            if !is_node_name(n) {
                return bad(format!(
                    "fleet.node: '{n}' must be 1-64 letters, digits, '-' or '_' (it is a \
                     subject token), and not 'all'"
                ));
            }
        }
        for l in &self.labels {
            if !is_node_name(l) {
                return bad(format!(
                    "fleet.labels: '{l}' must be 1-64 letters, digits, '-' or '_', and not 'all'"
                ));
            }
        }
        for u in &self.url.0 {
            let scheme = u.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, None | Some("nats" | "tls")) {
                return bad(format!(
                    "fleet.url: '{}' must be nats://host:port or tls://host:port",
                    without_userinfo(u)
                ));
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad("fleet: set password or password_file, not both".into());
        }
        if self.token.is_some() && self.token_file.is_some() {
            return bad("fleet: set token or token_file, not both".into());
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if has_password != self.user.is_some() {
            return bad("fleet: user and password (or password_file) go together".into());
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some() || self.token_file.is_some(),
            self.creds_file.is_some(),
            self.nkey_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return bad(
                "fleet: choose one way to sign in: user/password, token, creds_file or nkey_file"
                    .into(),
            );
        }
        let ranges = [
            ("heartbeat_seconds", self.heartbeat_seconds, 10, 3600),
            ("replicas", self.replicas as u64, 1, 5),
            ("results_max_days", self.results_max_days, 1, 3650),
            ("results_max_mb", self.results_max_mb, 1, 1_048_576),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return bad(format!("fleet.{key}: {value} is out of range {low}-{high}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FleetConfig> {
        let c: FleetConfig = toml::from_str(text).map_err(|e| Error::Config {
            origin: "t".into(),
            message: e.to_string(),
        })?;
        c.check("t")?;
        Ok(c)
    }

    #[test]
    fn one_url_or_several() {
        let c = parse("url = \"nats://a:4222, nats://b:4222\"").unwrap();
        assert_eq!(c.url.0, ["nats://a:4222", "nats://b:4222"]);
        let c = parse("url = \"nats://a:4222,tls://b:4222\"").unwrap();
        assert_eq!(c.url.0, ["nats://a:4222", "tls://b:4222"]);
        assert!(!parse("").unwrap().enabled());
    }

    #[test]
    fn names_must_be_subject_tokens() {
        let e = parse("node = \"pi.garage\"").unwrap_err().to_string();
        assert!(e.contains("fleet.node: 'pi.garage'"), "{e}");
        let e = parse("labels = [\"ok\", \"a b\"]").unwrap_err().to_string();
        assert!(e.contains("fleet.labels: 'a b'"), "{e}");
        let e = parse("url = \"http://x\"").unwrap_err().to_string();
        assert!(e.contains("nats://host:port"), "{e}");
    }

    #[test]
    fn numbers_in_their_ranges() {
        let c = parse("").unwrap();
        assert_eq!((c.heartbeat_seconds, c.replicas), (10, 1));
        assert_eq!((c.results_max_days, c.results_max_mb), (90, 1024));
        for (text, said) in [
            (
                "heartbeat_seconds = 5",
                "fleet.heartbeat_seconds: 5 is out of range 10-3600",
            ),
            ("replicas = 6", "fleet.replicas: 6 is out of range 1-5"),
            (
                "results_max_days = 0",
                "fleet.results_max_days: 0 is out of range 1-3650",
            ),
            (
                "results_max_mb = 0",
                "fleet.results_max_mb: 0 is out of range 1-1048576",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(said), "{text}: {e}");
        }
        assert_eq!(parse("results_max_mb = 64").unwrap().results_max_mb, 64);
    }

    #[test]
    fn one_way_to_sign_in() {
        let e = parse("user = \"a\"\npassword = \"b\"\ntoken = \"c\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one way"), "{e}");
        let e = parse("user = \"a\"").unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        parse("user = \"a\"\npassword_file = \"/p\"").unwrap();
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c =
            parse("url = \"nats://dev:hunter2@x:4222\"\nuser = \"dev\"\npassword = \"hunter2\"")
                .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("nats://x:4222"), "{shown}");
    }

    #[test]
    fn environment_overrides() {
        let mut c = FleetConfig::default();
        c.apply_env(&|k| match k {
            "PICOFLOW_FLEET_URL" => Some("nats://a:1,nats://b:2".into()),
            "PICOFLOW_NODE" => Some("pi-7".into()),
            _ => None,
        });
        assert_eq!(c.url.0.len(), 2);
        assert_eq!(c.node_name(), "pi-7");
    }

    #[test]
    fn the_default_node_is_the_short_host_name_as_a_token() {
        let n = FleetConfig::default().node_name();
        assert!(crate::model::is_valid_name(&n), "{n}");
        assert!(!n.contains('.'));
    }
}
