//! The global configuration file, `picoflow.toml` (API reference, "Configuration File").
//!
//! Searched in order: `./picoflow.toml`, `~/.config/picoflow/config.toml`,
//! `/etc/picoflow/config.toml`; the first one found is used, unless a path is given
//! explicitly. Precedence of every setting: command-line flag > environment variable >
//! configuration file > built-in default. [`Config::load`] reads the file,
//! [`Config::apply_env`] layers the `PICOFLOW_*` variables on top; the CLI applies its flags
//! last.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

// `[fleet]` is read in every build; its settings live in the fleet's folder, declared here
// because the configuration holds them while the fleet's running code uses the configuration's
// neighbours (the store, the executors): this keeps the settings below them.
#[path = "fleet/settings.rs"]
pub(crate) mod fleet_settings;
pub use fleet_settings::{FleetConfig, Urls as FleetUrls};

/// Default state file, in the working directory (`DECISIONS.md` 9).
pub const DEFAULT_DB_PATH: &str = "picoflow.redb";

/// Variables of PicoFlow's own environment that hold its secrets (the web API's token):
/// no task's process inherits them and `${…}` does not expand them.
pub(crate) const PRIVATE_VARS: &[&str] = &["PICOFLOW_WEB_TOKEN"];

/// Resolved global settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State file path.
    pub db_path: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// Log format: json or pretty.
    pub log_format: String,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[web]`.
    pub web: WebConfig,
    /// `[retry]`.
    pub retry: RetryConfig,
    /// `[timeout]`.
    pub timeout: TimeoutConfig,
    /// `[execution]`.
    pub execution: ExecutionConfig,
    /// `[logs]`.
    pub logs: LogsConfig,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[fleet]`: membership of a fleet over NATS JetStream (the `fleet` feature).
    pub fleet: FleetConfig,
    /// `[tasks]`: defaults of every task.
    pub tasks: TasksConfig,
    /// The file these settings came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus endpoint of the daemon (OBS-003).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/health`.
    pub enabled: bool,
    /// TCP port; 0 disables the endpoint.
    pub port: u16,
    /// Address to listen on (localhost only by default).
    pub bind_address: String,
}

/// `[web]`: the daemon's web UI and REST API (OBS-005), built with the `web` feature.
///
/// Served on the same listener as `/metrics` when `port` and `bind` equal the `[metrics]`
/// ones (the default port does), otherwise on a listener of its own.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the UI and the API (off by default; `daemon start --web` turns it on).
    pub enabled: bool,
    /// TCP port.
    pub port: u16,
    /// Address to listen on (localhost only by default).
    pub bind: String,
    /// Bearer token that allows `POST /api/v1/workflows/NAME/run`; without a token (here,
    /// in `token_file` or in `PICOFLOW_WEB_TOKEN`) triggering is disabled.
    pub token: Option<String>,
    /// File holding the token (its first line), so that it stays out of the config file.
    pub token_file: Option<PathBuf>,
    /// Every page and API read needs the token too (a bearer header, or the cookie the
    /// sign-in form sets). Required when `bind` is not a loopback address.
    pub require_token_for_reads: bool,
}

impl std::fmt::Debug for WebConfig {
    // The token is a secret: never printed, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("enabled", &self.enabled)
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_file", &self.token_file)
            .field("require_token_for_reads", &self.require_token_for_reads)
            .finish()
    }
}

impl WebConfig {
    /// The trigger token: `token`, else the first line of `token_file`; `None` when neither
    /// is set. An unreadable or empty token file is an error, so that a typo never silently
    /// disables (or opens) triggering.
    pub fn resolve_token(&self) -> Result<Option<String>> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Ok(Some(t.to_string())),
            None => Err(Error::Config {
                origin: path.display().to_string(),
                message: "web.token_file: the file is empty".into(),
            }),
        }
    }
}

impl WebConfig {
    /// Refuses a setup that would show the history to anyone who can reach the port: a
    /// `bind` that is not a loopback address needs `require_token_for_reads` and a token
    /// (`token` is the resolved one), and `require_token_for_reads` needs a token. The
    /// server speaks plain HTTP, so the message points to a TLS proxy in front.
    pub fn check_exposure(&self, token: Option<&str>, origin: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                origin: origin.to_string(),
                message,
            })
        };
        let exposed = !crate::httpd::is_loopback(&self.bind);
        if exposed && !(self.require_token_for_reads && token.is_some()) {
            return bad(format!(
                "web.bind = \"{}\" is not a loopback address: set require_token_for_reads = \
                 true and a token (token_file, token or PICOFLOW_WEB_TOKEN) so that the history \
                 is not open to the network, or bind to 127.0.0.1; the UI speaks plain HTTP, \
                 so put a TLS reverse proxy in front of it",
                self.bind
            ));
        }
        if self.require_token_for_reads && token.is_none() {
            return bad(
                "web.require_token_for_reads = true needs a token: set token_file, token or \
                 PICOFLOW_WEB_TOKEN"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[retry]`: backoff between attempts (DAG-006, DAG-007).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retry count for workflows that set no `retry_default`.
    pub default_count: u32,
    /// Upper bound of one backoff delay, in seconds.
    pub max_backoff_seconds: u64,
    /// Growth factor: the delay before attempt n+1 is `multiplier^(n-1)` seconds.
    pub backoff_multiplier: f64,
}

/// `[timeout]`: task time limits (DAG-008).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Timeout for workflows that set no `timeout_default` (0 = none).
    pub default_seconds: u64,
    /// Upper bound applied to every task timeout (0 = no bound).
    pub max_seconds: u64,
}

/// `[execution]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Tasks running at once across a whole daemon (and the default for a workflow).
    pub max_parallel: u32,
}

/// `[logs]`: task log files and history retention (CFG-004, CFG-005).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Directory of task log files.
    pub dir: PathBuf,
    /// History and log files older than this many days are pruned.
    pub retention_days: u32,
    /// Upper bound of the log directory's size; oldest executions' logs go first.
    pub max_size_mb: u64,
    /// Whether the daemon prunes once a day.
    pub cleanup_enabled: bool,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// How long a stopping daemon lets running tasks finish before terminating them.
    pub shutdown_timeout_seconds: u64,
    /// PID file; default `<state file>.pid` beside the state file.
    pub pid_file: Option<PathBuf>,
    /// Whether schedules wait for the system clock to be synchronised before they fire
    /// (`"auto"`, `true` or `false`; see [`WaitForClockSync`]).
    pub wait_for_clock_sync: WaitForClockSync,
    /// How long schedules wait for the clock at most; after that the daemon schedules from
    /// the clock it has, with a warning.
    pub clock_sync_timeout_seconds: u64,
    /// Besides the kernel's notice that the clock was set and its other wake-ups, how often
    /// the daemon compares the wall clock with the monotonic clock; 0 (the default) never
    /// wakes for that alone.
    pub clock_check_seconds: u64,
}

/// `[daemon] wait_for_clock_sync`: whether a daemon started before the system clock was set
/// holds back its schedules (and the catch-up of missed fires) until it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitForClockSync {
    /// Wait only where a time service that says when it has synchronised the clock runs
    /// ([`crate::clock::sync_service_present`]), e.g. systemd-timesyncd on Raspberry Pi OS.
    /// Many machines whose clock is right still report it unsynchronised to the kernel
    /// (virtual machines, containers, hosts without an NTP client), and waiting on those
    /// would delay every start by the whole timeout.
    #[default]
    Auto,
    /// Always wait while the clock is reported unsynchronised.
    Always,
    /// Never wait.
    Never,
}

impl WaitForClockSync {
    /// Whether to wait, given whether a time service that reports synchronisation runs here.
    pub fn applies(self, service_present: bool) -> bool {
        match self {
            WaitForClockSync::Auto => service_present,
            WaitForClockSync::Always => true,
            WaitForClockSync::Never => false,
        }
    }
}

impl<'de> Deserialize<'de> for WaitForClockSync {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "\"auto\", true or false")]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(WaitForClockSync::Always),
            Raw::Bool(false) => Ok(WaitForClockSync::Never),
            Raw::Text(t) if t == "auto" => Ok(WaitForClockSync::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "wait_for_clock_sync: expected \"auto\", true or false, not \"{t}\""
            ))),
        }
    }
}

/// `[tasks]`: what every task gets unless its workflow file says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// `[tasks.limits]`: the limits of every shell task, each replaced by the task's own
    /// `limits:` value where it sets one (same keys and values).
    pub limits: crate::limits::Limits,
}

/// Every key the configuration file accepts: `db_path` at the top level, `section.key`
/// (`retry.max_backoff_seconds`) in a section; any other key is refused as unknown. The
/// README's table of keys is compared with this list by a test.
pub fn config_keys() -> Vec<String> {
    let section = |name: &str| -> Option<&'static [&'static str]> {
        Some(match name {
            "metrics" => crate::fields::of::<MetricsConfig>(),
            "web" => crate::fields::of::<WebConfig>(),
            "retry" => crate::fields::of::<RetryConfig>(),
            "timeout" => crate::fields::of::<TimeoutConfig>(),
            "execution" => crate::fields::of::<ExecutionConfig>(),
            "logs" => crate::fields::of::<LogsConfig>(),
            "daemon" => crate::fields::of::<DaemonConfig>(),
            "fleet" => crate::fields::of::<FleetConfig>(),
            "tasks" => crate::fields::of::<TasksConfig>(),
            "tasks.limits" => crate::limits::keys(),
            _ => return None,
        })
    };
    // A key naming a table of its own (`[tasks.limits]`) stands for that table's keys.
    fn expand(
        key: String,
        section: &dyn Fn(&str) -> Option<&'static [&'static str]>,
    ) -> Vec<String> {
        match section(&key) {
            Some(inner) => inner
                .iter()
                .flat_map(|k| expand(format!("{key}.{k}"), section))
                .collect(),
            None => vec![key],
        }
    }
    crate::fields::of::<Config>()
        .iter()
        .flat_map(|key| expand(key.to_string(), &section))
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            log_level: "info".into(),
            log_format: "json".into(),
            metrics: MetricsConfig::default(),
            web: WebConfig::default(),
            retry: RetryConfig::default(),
            timeout: TimeoutConfig::default(),
            execution: ExecutionConfig::default(),
            logs: LogsConfig::default(),
            daemon: DaemonConfig::default(),
            fleet: FleetConfig::default(),
            tasks: TasksConfig::default(),
            source: None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            port: 9090,
            bind_address: "127.0.0.1".into(),
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: false,
            port: 9090,
            bind: "127.0.0.1".into(),
            token: None,
            token_file: None,
            require_token_for_reads: false,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            default_count: crate::model::DEFAULT_RETRY,
            max_backoff_seconds: 60,
            backoff_multiplier: 2.0,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            default_seconds: crate::model::DEFAULT_TIMEOUT_SECS,
            max_seconds: 0,
        }
    }
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            max_parallel: crate::model::DEFAULT_MAX_PARALLEL,
        }
    }
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            dir: PathBuf::from("logs"),
            retention_days: 30,
            max_size_mb: 1000,
            cleanup_enabled: true,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_timeout_seconds: 60,
            pid_file: None,
            wait_for_clock_sync: WaitForClockSync::Auto,
            // Long enough for timesyncd to reach a server over a Wi-Fi link that comes up
            // late after boot; short enough that a device without network still runs its
            // schedules within minutes.
            clock_sync_timeout_seconds: 300,
            // An idle daemon does not wake: the kernel says when the clock is set.
            clock_check_seconds: 0,
        }
    }
}

impl RetryConfig {
    /// Delay before attempt `next_attempt` (2, 3, …): `multiplier^(next_attempt-2)` seconds,
    /// i.e. 1 s, 2 s, 4 s … for the default multiplier, capped at `max_backoff_seconds`.
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let secs = self.backoff_multiplier.max(1.0).powi(exp);
        let cap = self.max_backoff_seconds as f64;
        Duration::from_secs_f64(secs.min(cap).max(0.0))
    }
}

/// Reads a configuration file, refusing one that another user could have written (like
/// OpenSSH's `StrictModes`): it must be owned by the effective user or root and not be
/// writable by others, nor by its group unless that is the user's own primary group
/// ([`crate::private::writable_by_others`]). The file names commands to run and the PID file
/// `daemon stop` signals, so whoever can write it could act as PicoFlow's user.
fn read_trusted(path: &Path) -> Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    let euid = crate::private::euid();
    let why = if m.uid() != euid && m.uid() != 0 {
        Some(format!(
            "is owned by uid {}, not by uid {euid} or root",
            m.uid()
        ))
    } else if m.mode() & crate::private::writable_by_others(&m) != 0 {
        Some(format!(
            "has mode {:04o}: writable by group or others",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(Error::Config {
            origin: path.display().to_string(),
            message: format!(
                "the configuration file {why}, so another user could have written it: refused \
                 (make it the user's or root's and not writable by others, e.g. chmod go-w)"
            ),
        });
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    Ok(text)
}

impl Config {
    /// The places searched for a configuration file, in order.
    pub fn search_paths() -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from("picoflow.toml")];
        if let Some(home) = std::env::var_os("HOME") {
            v.push(Path::new(&home).join(".config/picoflow/config.toml"));
        }
        v.push(PathBuf::from("/etc/picoflow/config.toml"));
        v
    }

    /// Loads `explicit`, or the first file of [`Config::search_paths`] that exists, or the
    /// defaults when there is none.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Self::search_paths().into_iter().find(|p| p.is_file()),
        };
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = read_trusted(&p)?;
                let mut c = Self::parse(&text, &p.display().to_string())?;
                c.source = Some(p);
                Ok(c)
            }
        }
    }

    /// Parses configuration text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        c.check(origin)?;
        Ok(c)
    }

    /// Applies `PICOFLOW_DB_PATH`, `PICOFLOW_LOG_LEVEL`, `PICOFLOW_LOG_FORMAT`,
    /// `PICOFLOW_METRICS_PORT`, `PICOFLOW_WEB_PORT`, `PICOFLOW_WEB_TOKEN`,
    /// `PICOFLOW_FLEET_URL` and `PICOFLOW_NODE` from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = env("PICOFLOW_DB_PATH").filter(|v| !v.is_empty()) {
            self.db_path = PathBuf::from(v);
        }
        if let Some(v) = env("PICOFLOW_LOG_LEVEL").filter(|v| !v.is_empty()) {
            self.log_level = v;
        }
        if let Some(v) = env("PICOFLOW_LOG_FORMAT").filter(|v| !v.is_empty()) {
            self.log_format = v;
        }
        let port = |name: &str| -> Result<Option<u16>> {
            let Some(v) = env(name).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            v.parse().map(Some).map_err(|_| Error::Config {
                origin: name.into(),
                message: format!("'{v}' is not a port number (0-65535)"),
            })
        };
        if let Some(p) = port("PICOFLOW_METRICS_PORT")? {
            self.metrics.port = p;
        }
        if let Some(p) = port("PICOFLOW_WEB_PORT")? {
            self.web.port = p;
        }
        if let Some(v) = env("PICOFLOW_WEB_TOKEN").filter(|v| !v.is_empty()) {
            self.web.token = Some(v);
        }
        self.fleet.apply_env(&env);
        self.check("environment")
    }

    /// Checks value ranges; `origin` names the source in messages.
    pub fn check(&self, origin: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                origin: origin.to_string(),
                message,
            })
        };
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return bad(format!(
                "log_level: '{}' is not one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        if !["json", "pretty"].contains(&self.log_format.as_str()) {
            return bad(format!(
                "log_format: '{}' is not one of json, pretty",
                self.log_format
            ));
        }
        if !(1..=256).contains(&self.execution.max_parallel) {
            return bad(format!(
                "execution.max_parallel: {} is out of range 1-256",
                self.execution.max_parallel
            ));
        }
        if self.retry.default_count > 100 {
            return bad(format!(
                "retry.default_count: {} is out of range 0-100",
                self.retry.default_count
            ));
        }
        if !(self.retry.backoff_multiplier >= 1.0 && self.retry.backoff_multiplier <= 10.0) {
            return bad(format!(
                "retry.backoff_multiplier: {} is out of range 1.0-10.0",
                self.retry.backoff_multiplier
            ));
        }
        if self.timeout.default_seconds > 86_400 {
            return bad(format!(
                "timeout.default_seconds: {} is out of range 0-86400",
                self.timeout.default_seconds
            ));
        }
        self.fleet.check(origin)
    }

    /// PID file of a daemon using this state file: `[daemon] pid_file`, or `<db_path>.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.daemon.pid_file.clone().unwrap_or_else(|| {
            let mut s = self.db_path.clone().into_os_string();
            s.push(".pid");
            PathBuf::from(s)
        })
    }

    /// The directory of the workflows a daemon applied from its fleet: `<db_path>.fleet`,
    /// beside the state file.
    pub fn fleet_dir(&self) -> PathBuf {
        let mut s = self.db_path.clone().into_os_string();
        s.push(".fleet");
        PathBuf::from(s)
    }

    /// The private directory (0700) of running executions' files (the values tasks write to
    /// `$PICOFLOW_OUTPUT`): `<db_path>.run`, beside the state file, owned like it.
    pub fn run_dir(&self) -> PathBuf {
        let mut s = self.db_path.clone().into_os_string();
        s.push(".run");
        PathBuf::from(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `bind` beyond the loopback served every record to the network without a word.
    #[test]
    fn a_bind_beyond_the_loopback_needs_the_token_for_reads() {
        let web = |bind: &str, reads: bool| WebConfig {
            bind: bind.into(),
            require_token_for_reads: reads,
            ..WebConfig::default()
        };
        let refused = |w: WebConfig, token: Option<&str>| {
            w.check_exposure(token, "picoflow.toml")
                .unwrap_err()
                .to_string()
        };
        for bind in ["0.0.0.0", "192.168.1.20", "::", "device.lan"] {
            let e = refused(web(bind, false), Some("t"));
            assert!(
                e.contains(bind) && e.contains("require_token_for_reads"),
                "{e}"
            );
            assert!(e.contains("TLS"), "{e}");
            let e = refused(web(bind, true), None);
            assert!(e.contains(bind) && e.contains("and a token"), "{e}");
            web(bind, true).check_exposure(Some("t"), "x").unwrap();
        }
        for bind in ["127.0.0.1", "::1", "localhost"] {
            web(bind, false).check_exposure(None, "x").unwrap();
            web(bind, true).check_exposure(Some("t"), "x").unwrap();
        }
        assert!(refused(web("127.0.0.1", true), None).contains("needs a token"));
        let parsed = Config::parse("[web]\nrequire_token_for_reads = true\n", "x").unwrap();
        assert!(parsed.web.require_token_for_reads);
        assert!(!Config::default().web.require_token_for_reads);
    }

    #[test]
    fn full_example_of_the_api_reference_parses() {
        let text = r#"
db_path = "/var/lib/picoflow/picoflow.db"
log_level = "info"
log_format = "json"

[metrics]
enabled = true
port = 9090
bind_address = "127.0.0.1"

[retry]
default_count = 5
max_backoff_seconds = 600
backoff_multiplier = 2.0

[timeout]
default_seconds = 600
max_seconds = 7200

[execution]
max_parallel = 4

[logs]
retention_days = 30
max_size_mb = 500
cleanup_enabled = true
"#;
        let c = Config::parse(text, "c.toml").unwrap();
        assert_eq!(c.retry.default_count, 5);
        assert_eq!(c.logs.max_size_mb, 500);
        assert_eq!(
            c.pid_file(),
            PathBuf::from("/var/lib/picoflow/picoflow.db.pid")
        );
    }

    #[test]
    fn config_keys_are_the_parsers() {
        let keys = config_keys();
        for k in [
            "db_path",
            "retry.max_backoff_seconds",
            "logs.dir",
            "daemon.pid_file",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k}: {keys:?}");
        }
        assert!(
            !keys.iter().any(|k| k == "source" || k == "retry"),
            "{keys:?}"
        );
        for k in &keys {
            let toml = match k.split_once('.') {
                Some((section, key)) => format!("[{section}]\n{key} = 1\n"),
                None => format!("{k} = 1\n"),
            };
            // A key of the list may refuse the value 1, never the key itself.
            if let Err(e) = Config::parse(&toml, "c.toml") {
                assert!(!e.to_string().contains("unknown field"), "{k}: {e}");
            }
        }
    }

    #[test]
    fn wait_for_clock_sync_takes_auto_true_or_false() {
        let parse = |v: &str| Config::parse(&format!("[daemon]\nwait_for_clock_sync = {v}\n"), "c");
        assert_eq!(
            Config::default().daemon.wait_for_clock_sync,
            WaitForClockSync::Auto
        );
        assert_eq!(Config::default().daemon.clock_sync_timeout_seconds, 300);
        let w = |v: &str| parse(v).unwrap().daemon.wait_for_clock_sync;
        assert_eq!(w("\"auto\""), WaitForClockSync::Auto);
        assert_eq!(w("true"), WaitForClockSync::Always);
        assert_eq!(w("false"), WaitForClockSync::Never);
        let e = parse("\"sometimes\"").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        assert!(parse("3").is_err());
        assert!(WaitForClockSync::Auto.applies(true));
        assert!(!WaitForClockSync::Auto.applies(false));
        assert!(WaitForClockSync::Always.applies(false));
        assert!(!WaitForClockSync::Never.applies(true));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_config_errors() {
        let e = Config::parse("colour = 1\n", "c.toml").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Config::parse("log_level = \"loud\"\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("log_level"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::parse("db_path = \"a.redb\"\n", "c.toml").unwrap();
        c.apply_env(|k| (k == "PICOFLOW_DB_PATH").then(|| "b.redb".to_string()))
            .unwrap();
        assert_eq!(c.db_path, PathBuf::from("b.redb"));
        let e = c
            .apply_env(|k| (k == "PICOFLOW_METRICS_PORT").then(|| "x".to_string()))
            .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        c.apply_env(|k| (k == "PICOFLOW_WEB_PORT").then(|| "8081".to_string()))
            .unwrap();
        assert_eq!(c.web.port, 8081);
        let e = c
            .apply_env(|k| (k == "PICOFLOW_WEB_PORT").then(|| "99999".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("PICOFLOW_WEB_PORT"), "{e}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetryConfig::default();
        assert_eq!(r.backoff(2), Duration::from_secs(1));
        assert_eq!(r.backoff(3), Duration::from_secs(2));
        assert_eq!(r.backoff(4), Duration::from_secs(4));
        assert_eq!(r.backoff(20), Duration::from_secs(60));
    }
}
