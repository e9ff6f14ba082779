//! `requires:` as a workflow file writes it, on a workflow and on a task: what must hold
//! before the execution (or the task) starts, and what happens when it does not. Read and
//! checked when a workflow is loaded, in every build; declared by `settings` (below the model,
//! which holds it); the checks themselves are this folder's `mod.rs`.

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{format_size, parse_size};
use crate::settings::{scalar_text, Mapping, Problems, Value};

/// How long `on_unmet: wait` waits by default.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest `wait_timeout` accepted: a day, like a task's timeout.
const MAX_WAIT_SECS: u64 = 86_400;

/// What must hold before a workflow's execution or a task starts (`requires:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Requires {
    /// Every guard, in a fixed order (the order of [`GUARD_KEYS`]).
    pub guards: Vec<Guard>,
    /// What happens when one is not met.
    pub on_unmet: OnUnmet,
    /// How long `on_unmet: wait` waits before the requirement counts as failed.
    pub wait_timeout: Duration,
}

impl Requires {
    /// The requirement as `validate` shows it: its guards, then what happens when one does
    /// not hold.
    pub fn describe(&self) -> String {
        let guards: Vec<String> = self.guards.iter().map(Guard::describe).collect();
        let action = match self.on_unmet {
            OnUnmet::Wait => format!(
                "wait at most {}, then fail",
                show_duration(self.wait_timeout)
            ),
            other => other.as_str().to_string(),
        };
        format!("{} (on_unmet: {action})", guards.join("; "))
    }
}

/// One condition of the device (`requires:` keys).
#[derive(Debug, Clone, PartialEq)]
pub enum Guard {
    /// `clock_synced: true`: the system clock has been set by a time service.
    ClockSynced,
    /// `network: online`: a default route through an interface other than `lo`.
    Online,
    /// `network: {host, port}`: a TCP connection to it succeeds within a few seconds.
    Reachable {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `min_free_disk: {path, bytes}`: at least `bytes` free for unprivileged users on the
    /// file system of `path` (default: the task's working directory).
    FreeDisk {
        /// The path whose file system is measured.
        path: Option<PathBuf>,
        /// Bytes that must be free.
        bytes: u64,
    },
    /// `min_free_memory: SIZE`: at least this much `MemAvailable`.
    FreeMemory(u64),
    /// `max_cpu_temperature: C`: the hottest thermal zone is at most this many °C.
    MaxTemperature(f64),
    /// `power: ac`: running on mains (or USB) power.
    OnMains,
    /// `power: {battery_above: N%}`: on mains power, or every battery at least N % full.
    BatteryAbove(u8),
    /// `max_load: L`: the 1-minute load average is at most `L`.
    MaxLoad(f64),
}

impl Guard {
    /// The key that sets it, as messages and metrics name it.
    pub fn key(&self) -> &'static str {
        match self {
            Guard::ClockSynced => "clock_synced",
            Guard::Online | Guard::Reachable { .. } => "network",
            Guard::FreeDisk { .. } => "min_free_disk",
            Guard::FreeMemory(_) => "min_free_memory",
            Guard::MaxTemperature(_) => "max_cpu_temperature",
            Guard::OnMains | Guard::BatteryAbove(_) => "power",
            Guard::MaxLoad(_) => "max_load",
        }
    }

    /// The guard as `validate` shows it: `network: nas.local:445`.
    pub fn describe(&self) -> String {
        let what = match self {
            Guard::ClockSynced => "true".to_string(),
            Guard::Online => "online".to_string(),
            Guard::Reachable { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Guard::Reachable { host, port } => format!("{host}:{port}"),
            Guard::FreeDisk { path, bytes } => {
                let path = path
                    .as_ref()
                    .map_or("the working directory".into(), |p| p.display().to_string());
                format!("{} on {path}", format_size(*bytes))
            }
            Guard::FreeMemory(b) => format_size(*b),
            Guard::MaxTemperature(c) => format!("{c} °C"),
            Guard::OnMains => "ac".to_string(),
            Guard::BatteryAbove(p) => format!("battery above {p}%"),
            Guard::MaxLoad(l) => l.to_string(),
        };
        format!("{}: {what}", self.key())
    }
}

/// What happens when a requirement is not met (`on_unmet:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnmet {
    /// Check again every few seconds until every guard holds, for at most `wait_timeout`;
    /// then fail.
    Wait,
    /// Record the task (or every task of the execution) skipped, with the reason.
    Skip,
    /// Record the task (or the execution's first tasks) failed, with the reason. The default:
    /// a requirement that does not hold is news its owner wants.
    #[default]
    Fail,
}

impl OnUnmet {
    /// The spelling in workflow files.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnmet::Wait => "wait",
            OnUnmet::Skip => "skip",
            OnUnmet::Fail => "fail",
        }
    }
}

/// The guard keys `requires:` accepts, in the order they are checked (the cheap, local ones
/// first, the network last), then its two settings.
pub const GUARD_KEYS: &[&str] = &[
    "clock_synced",
    "max_load",
    "min_free_memory",
    "max_cpu_temperature",
    "power",
    "min_free_disk",
    "network",
    "on_unmet",
    "wait_timeout",
];

/// Reads `requires:` (`value`), adding each problem to `problems` with the field's name.
/// `None` when it has no guard (or is not a mapping).
pub(crate) fn parse(value: &Value, problems: &mut Problems<'_>) -> Option<Requires> {
    let Value::Mapping(map) = value else {
        problems.add("requires: expected a mapping such as {network: online, on_unmet: skip}");
        return None;
    };
    for key in map.keys() {
        let name = scalar_text(key).unwrap_or_default();
        if !GUARD_KEYS.contains(&name.as_str()) {
            problems.add(format_args!(
                "requires: unknown field `{name}`, expected one of {}",
                GUARD_KEYS.join(", ")
            ));
        }
    }
    let mut guards = Vec::new();
    for key in GUARD_KEYS.iter().take(GUARD_KEYS.len() - 2) {
        if let Some(v) = map.get(*key) {
            match guard(key, v) {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => {}
                Err(e) => problems.add(format_args!("requires.{key}: {e}")),
            }
        }
    }
    let on_unmet = match map.get("on_unmet").map(scalar_text) {
        None => OnUnmet::default(),
        Some(Some(t)) if t == "wait" => OnUnmet::Wait,
        Some(Some(t)) if t == "skip" => OnUnmet::Skip,
        Some(Some(t)) if t == "fail" => OnUnmet::Fail,
        Some(other) => {
            problems.add(format_args!(
                "requires.on_unmet: '{}' is not one of wait, skip, fail",
                other.unwrap_or_default()
            ));
            OnUnmet::default()
        }
    };
    let wait_timeout = match map.get("wait_timeout") {
        None => DEFAULT_WAIT_TIMEOUT,
        Some(v) => match wait_timeout(v) {
            Ok(d) => d,
            Err(e) => {
                problems.add(format_args!("requires.wait_timeout: {e}"));
                DEFAULT_WAIT_TIMEOUT
            }
        },
    };
    if map.contains_key("wait_timeout") && on_unmet != OnUnmet::Wait {
        problems.add("requires.wait_timeout: only used with on_unmet: wait");
    }
    if guards.is_empty() {
        problems.add(format_args!(
            "requires: no guard is set; name one or more of {}",
            GUARD_KEYS[..GUARD_KEYS.len() - 2].join(", ")
        ));
        return None;
    }
    Some(Requires {
        guards,
        on_unmet,
        wait_timeout,
    })
}

/// One guard from its key and value; `Ok(None)` for `clock_synced: false`.
fn guard(key: &str, v: &Value) -> Result<Option<Guard>, String> {
    Ok(Some(match key {
        "clock_synced" => match v {
            Value::Bool(true) => Guard::ClockSynced,
            Value::Bool(false) => return Ok(None),
            _ => return Err("expected true or false".into()),
        },
        "network" => network(v)?,
        "min_free_disk" => free_disk(v)?,
        "min_free_memory" => Guard::FreeMemory(size(v)?),
        "max_cpu_temperature" => {
            let c = number(v)?;
            if !(0.0..=150.0).contains(&c) {
                return Err(format!("{c} is out of range 0-150 (°C)"));
            }
            Guard::MaxTemperature(c)
        }
        "power" => power(v)?,
        "max_load" => {
            let l = number(v)?;
            if !(0.0..=10_000.0).contains(&l) {
                return Err(format!("{l} is out of range 0-10000"));
            }
            Guard::MaxLoad(l)
        }
        _ => unreachable!("only guard keys are asked for"),
    }))
}

fn network(v: &Value) -> Result<Guard, String> {
    const SHAPE: &str = "expected `online` or {host: NAME, port: NUMBER}";
    match v {
        Value::String(s) if s == "online" => Ok(Guard::Online),
        Value::Mapping(m) => {
            only_keys(m, &["host", "port"])?;
            let host = m
                .get("host")
                .and_then(scalar_text)
                .filter(|h| !h.trim().is_empty())
                .ok_or("host: a host name or address is required")?;
            let host = host_name(&host)?;
            let port = match m.get("port") {
                Some(Value::Number(n)) => n.as_u64().filter(|p| (1..=65_535).contains(p)),
                _ => None,
            }
            .ok_or("port: a number 1-65535 is required")?;
            Ok(Guard::Reachable {
                host,
                port: port as u16,
            })
        }
        _ => Err(SHAPE.into()),
    }
}

/// A host name or address as a connection takes it: `[::1]` is `::1`; a port written into
/// the name, spaces and control characters are refused.
fn host_name(host: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "host: '{}' is not a host name or address",
            host.escape_debug()
        )
    };
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if inner
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "[]/@".contains(c))
    {
        return Err(bad());
    }
    if inner.contains(':') && inner.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "host: '{host}' is not a host name or address (give the port as `port:`)"
        ));
    }
    Ok(inner.to_string())
}

fn free_disk(v: &Value) -> Result<Guard, String> {
    match v {
        Value::Mapping(m) => {
            only_keys(m, &["path", "bytes"])?;
            let path = match m.get("path") {
                None => None,
                Some(p) => Some(
                    scalar_text(p)
                        .filter(|p| !p.is_empty() && !p.chars().any(char::is_control))
                        .ok_or("path: expected a path without control characters")?,
                ),
            };
            let bytes = size(
                m.get("bytes")
                    .ok_or("bytes: a size such as 500MB is required")?,
            )
            .map_err(|e| format!("bytes: {e}"))?;
            Ok(Guard::FreeDisk {
                path: path.map(PathBuf::from),
                bytes,
            })
        }
        // A bare size checks the working directory's file system.
        other => Ok(Guard::FreeDisk {
            path: None,
            bytes: size(other)?,
        }),
    }
}

fn power(v: &Value) -> Result<Guard, String> {
    const SHAPE: &str = "expected `ac` or {battery_above: 30%}";
    match v {
        Value::String(s) if s == "ac" => Ok(Guard::OnMains),
        Value::Mapping(m) => {
            only_keys(m, &["battery_above"])?;
            let p = m.get("battery_above").ok_or(SHAPE)?;
            let text = scalar_text(p).ok_or(SHAPE)?;
            let n: u8 = text
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| format!("battery_above: '{text}' is not a percentage 0-100%"))?;
            Ok(Guard::BatteryAbove(n))
        }
        _ => Err(SHAPE.into()),
    }
}

fn only_keys(m: &Mapping, allowed: &[&str]) -> Result<(), String> {
    for k in m.keys() {
        let k = scalar_text(k).unwrap_or_default();
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{k}`, expected {}",
                allowed.join(" or ")
            ));
        }
    }
    Ok(())
}

fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "expected a number".into()),
        _ => Err("expected a number".into()),
    }
}

fn wait_timeout(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds"))?,
        Value::String(s) => crate::schedule::parse_duration(s)?,
        _ => return Err("expected a duration such as 30s, 10m or 1h".into()),
    };
    match d.as_secs() {
        1..=MAX_WAIT_SECS => Ok(d),
        s => Err(format!("{s} s is out of range 1-{MAX_WAIT_SECS} seconds")),
    }
}

fn size(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number of bytes")),
        Value::String(s) => parse_size(s),
        _ => Err("expected a size such as 500MB".into()),
    }
}

/// A measured size as a person reads it: as [`format_size`] when whole in its unit, else in
/// the largest unit with one decimal (`212.4MB`, 1024-based like every size of PicoFlow).
pub(crate) fn approx_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GB"), (20, "MB"), (10, "KB")] {
        let f = 1u64 << shift;
        if bytes >= f {
            return match bytes.is_multiple_of(f) {
                true => format_size(bytes),
                false => format!("{:.1}{unit}", bytes as f64 / f as f64),
            };
        }
    }
    format!("{bytes} bytes")
}

/// A duration as the files write it: `10m`, `1h30m`, `45s`.
pub(crate) fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (sec, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> (Option<Requires>, Vec<String>) {
        let v: Value = serde_norway::from_str(yaml).unwrap();
        let mut list = Vec::new();
        let r = parse(&v, &mut Problems::new("line 3: task 'a'", &mut list));
        (r, list)
    }

    #[test]
    fn every_guard_reads() {
        let (r, problems) = read(
            "{clock_synced: true, network: {host: nas.local, port: 445}, min_free_disk: {path: /mnt/b, bytes: 500MB},
              min_free_memory: 64MiB, max_cpu_temperature: 75, power: {battery_above: 30%}, max_load: 2.5,
              on_unmet: wait, wait_timeout: 10m}",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let r = r.unwrap();
        assert_eq!(r.on_unmet, OnUnmet::Wait);
        assert_eq!(r.wait_timeout, Duration::from_secs(600));
        let shown: Vec<String> = r.guards.iter().map(Guard::describe).collect();
        assert_eq!(
            shown,
            [
                "clock_synced: true",
                "max_load: 2.5",
                "min_free_memory: 64MB",
                "max_cpu_temperature: 75 °C",
                "power: battery above 30%",
                "min_free_disk: 500MB on /mnt/b",
                "network: nas.local:445",
            ]
        );
    }

    #[test]
    fn hosts_are_names_or_addresses_without_a_port() {
        let (r, problems) = read("{network: {host: '[::1]', port: 22}}");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.unwrap().guards[0].describe(), "network: [::1]:22");
        for bad in ["127.0.0.1:22", "nas local", "a/b", "user@nas"] {
            let (_, problems) = read(&format!("{{network: {{host: '{bad}', port: 22}}}}"));
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("is not a host name or address")),
                "{bad}: {problems:?}"
            );
        }
        let (_, problems) = read("{on_unmet: wait}");
        assert!(
            problems[0].contains("requires: no guard is set"),
            "{problems:?}"
        );
        let (_, problems) = read("{min_free_disk: {path: \"/tmp\\nx\", bytes: 1}}");
        assert!(
            problems[0].contains("without control characters"),
            "{problems:?}"
        );
    }

    #[test]
    fn defaults_and_short_forms() {
        let (r, problems) = read("{network: online, power: ac, min_free_disk: 1G}");
        assert!(problems.is_empty(), "{problems:?}");
        let r = r.unwrap();
        assert_eq!(r.on_unmet, OnUnmet::Fail);
        assert_eq!(r.wait_timeout, DEFAULT_WAIT_TIMEOUT);
        assert!(r.guards.contains(&Guard::Online));
        assert!(r.guards.contains(&Guard::OnMains));
        assert!(r.guards.contains(&Guard::FreeDisk {
            path: None,
            bytes: 1 << 30
        }));
    }

    #[test]
    fn bad_values_are_named_with_their_task_and_field() {
        let (_, problems) = read(
            "{network: {host: nas, port: 0}, min_free_disk: {bytes: lots}, power: solar, max_cpu_temperature: 400,
              on_unmet: later, wait_timeout: 5m, wifi: true}",
        );
        let text = problems.join("\n");
        for want in [
            "line 3: task 'a': requires: unknown field `wifi`",
            "line 3: task 'a': requires.network: port: a number 1-65535 is required",
            "line 3: task 'a': requires.min_free_disk: bytes: 'lots' is not a size",
            "line 3: task 'a': requires.power: expected `ac` or {battery_above: 30%}",
            "line 3: task 'a': requires.max_cpu_temperature: 400 is out of range",
            "line 3: task 'a': requires.on_unmet: 'later' is not one of wait, skip, fail",
            "line 3: task 'a': requires.wait_timeout: only used with on_unmet: wait",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn measured_sizes_and_durations_read_well() {
        assert_eq!(approx_size(500 << 20), "500MB");
        assert_eq!(approx_size(23_385_960 * 1024), "22.3GB");
        assert_eq!(approx_size(123), "123 bytes");
        assert_eq!(show_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show_duration(Duration::from_secs(600)), "10m");
    }
}
