//! `limits:` of a task: what its process may use (nice value, I/O class, memory, CPU time,
//! open files), read from the workflow file, with defaults from `[tasks.limits]` of the
//! configuration file.
//!
//! This module holds the values, how they are read and checked, and what an attempt's end
//! says about them; the shell executor applies them to its process (see `executor::spawn`:
//! `setpriority`, `ioprio_set` and `setrlimit` in the child before it executes the program,
//! and `executor::cgroup` for `memory.max`). Only `type: shell` runs a local process that
//! PicoFlow starts itself, so only shell tasks take `limits:`; any other type refuses it
//! when the workflow is loaded rather than ignore it.
//!
//! Sizes count as the rest of PicoFlow does (`[logs] max_size_mb`, the 10 MB capture):
//! `K`/`KB`/`KiB` are 1024 bytes, `M`/`MB`/`MiB` 1024², `G`/`GB`/`GiB` 1024³; a plain number is
//! bytes.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{from_value, seconds, Problems, Value, ValueError};

/// Lowest `memory` accepted: below it no program starts.
pub(crate) const MIN_MEMORY: u64 = 1024 * 1024;
/// The hard `RLIMIT_CPU` is this many seconds above `cpu_seconds`: at the soft limit the
/// kernel sends SIGXCPU (which ends the program unless it handles it), at the hard one SIGKILL.
pub(crate) const CPU_GRACE_SECS: u64 = 5;

/// What a task's process may use; `None` leaves a resource as PicoFlow's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawLimits")]
pub struct Limits {
    /// Nice value, -20 (first) to 19 (last); below PicoFlow's own needs `CAP_SYS_NICE`.
    pub nice: Option<i32>,
    /// I/O scheduling class and level (`ioprio_set`).
    pub io: Option<IoClass>,
    /// Memory in bytes: the attempt cgroup's `memory.max`, else `RLIMIT_AS`.
    pub memory: Option<u64>,
    /// CPU time in seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`, soft and hard).
    pub open_files: Option<u64>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Each limit of `self`, else the one of `defaults`.
    pub fn or(self, defaults: &Limits) -> Limits {
        Limits {
            nice: self.nice.or(defaults.nice),
            io: self.io.or(defaults.io),
            memory: self.memory.or(defaults.memory),
            cpu_seconds: self.cpu_seconds.or(defaults.cpu_seconds),
            open_files: self.open_files.or(defaults.open_files),
        }
    }
}

impl fmt::Display for Limits {
    /// `nice 10, io idle, memory 100MB, cpu_seconds 60, open_files 256`: the limits set, in
    /// the workflow file's words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::with_capacity(5);
        if let Some(n) = self.nice {
            parts.push(format!("nice {n}"));
        }
        if let Some(io) = self.io {
            parts.push(format!("io {io}"));
        }
        if let Some(m) = self.memory {
            parts.push(format!("memory {}", format_size(m)));
        }
        if let Some(c) = self.cpu_seconds {
            parts.push(format!("cpu_seconds {c}"));
        }
        if let Some(o) = self.open_files {
            parts.push(format!("open_files {o}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// An I/O scheduling class (`ioprio_set`, see ionice(1)), with its level 0 (first) to 7 where
/// the class has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// `realtime[:N]`: before everything else; needs `CAP_SYS_ADMIN` (or `CAP_SYS_NICE`).
    Realtime(u8),
    /// `best_effort[:N]`: the default class; level 4 unless given.
    BestEffort(u8),
    /// `idle`: only when no other process wants the disk.
    Idle,
}

impl IoClass {
    /// Level of `realtime` and `best_effort` without one.
    pub const DEFAULT_LEVEL: u8 = 4;

    /// Parses `idle`, `best_effort`, `best_effort:N`, `realtime` or `realtime:N` (N 0-7).
    pub fn parse(text: &str) -> Result<IoClass, String> {
        let (class, level) = match text.split_once(':') {
            Some((c, l)) => (c, Some(l)),
            None => (text, None),
        };
        let level = match level {
            None => IoClass::DEFAULT_LEVEL,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= 7 => n,
                _ => return Err(format!("'{text}': the level after ':' must be 0-7")),
            },
        };
        match class.trim() {
            "realtime" => Ok(IoClass::Realtime(level)),
            "best_effort" => Ok(IoClass::BestEffort(level)),
            "idle" if text.contains(':') => Err(format!("'{text}': idle has no level")),
            "idle" => Ok(IoClass::Idle),
            _ => Err(format!(
                "'{text}' is not one of idle, best_effort[:0-7], realtime[:0-7]"
            )),
        }
    }

    /// The `ioprio` value `ioprio_set` takes: the class in the top bits, the level below.
    pub fn ioprio(self) -> i32 {
        const CLASS_SHIFT: i32 = 13;
        let (class, level) = match self {
            IoClass::Realtime(l) => (1, l),
            IoClass::BestEffort(l) => (2, l),
            IoClass::Idle => (3, 0),
        };
        (class << CLASS_SHIFT) | i32::from(level)
    }
}

impl fmt::Display for IoClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoClass::Realtime(l) => write!(f, "realtime:{l}"),
            IoClass::BestEffort(l) => write!(f, "best_effort:{l}"),
            IoClass::Idle => f.write_str("idle"),
        }
    }
}

/// Parses a size: bytes (`1048576`), or a number with a unit `K`, `KB`, `KiB`, `M`, `MB`,
/// `MiB`, `G`, `GB`, `GiB` (any case, 1024-based; see the module's docs), with or without a
/// space.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("'{text}' is not a size such as 100MB, 64MiB or 1048576 (bytes)");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// A size as [`parse_size`] reads it back: in the largest unit that divides it (`100MB`,
/// `512KB`), else in bytes.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GB"), (20, "MB"), (10, "KB")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `limits:` as written; an unknown key is an error that names it. Also the shape of
/// `[tasks.limits]` in the configuration file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    nice: Option<i64>,
    #[serde(default)]
    io: Option<String>,
    #[serde(default, deserialize_with = "size_text")]
    memory: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    cpu_seconds: Option<i64>,
    #[serde(default)]
    open_files: Option<i64>,
}

impl RawLimits {
    /// The limits, each checked; a problem is added as `{at}.{field}: …`.
    fn check(self, at: &str, problems: &mut Vec<String>) -> Limits {
        use crate::settings::range;
        let nice = range(problems, &format!("{at}.nice"), self.nice, -20, 19);
        let io = read(problems, at, "io", self.io, IoClass::parse);
        let memory = read(problems, at, "memory", self.memory, |v| {
            parse_size(v).and_then(|b| match b >= MIN_MEMORY {
                true => Ok(b),
                false => Err(format!("'{v}' is below the smallest limit, 1MB")),
            })
        });
        let cpu_seconds = range(
            problems,
            &format!("{at}.cpu_seconds"),
            self.cpu_seconds,
            1,
            31_536_000,
        );
        let open_files = range(
            problems,
            &format!("{at}.open_files"),
            self.open_files,
            16,
            1_048_576,
        );
        Limits {
            nice: nice.map(|n| n as i32),
            io,
            memory,
            cpu_seconds: cpu_seconds.map(|c| c as u64),
            open_files: open_files.map(|o| o as u64),
        }
    }
}

/// `value` read by `parse`; else `None` and the problem `{at}.{field}: …`.
fn read<T>(
    problems: &mut Vec<String>,
    at: &str,
    field: &str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    value.and_then(|v| match parse(&v) {
        Ok(x) => Some(x),
        Err(e) => {
            problems.push(format!("{at}.{field}: {e}"));
            None
        }
    })
}

impl TryFrom<RawLimits> for Limits {
    type Error = String;

    /// `[tasks.limits]` of the configuration file: every problem in one message.
    fn try_from(raw: RawLimits) -> Result<Limits, String> {
        let mut problems = Vec::new();
        let limits = raw.check("tasks.limits", &mut problems);
        match problems.is_empty() {
            true => Ok(limits),
            false => Err(problems.join("; ")),
        }
    }
}

/// A size as a string or a number, as its text.
fn size_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as 100MB, 512KiB or 1048576 (bytes)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Size)
}

/// The keys `limits:` (and `[tasks.limits]`) accepts.
pub(crate) fn keys() -> &'static [&'static str] {
    crate::fields::of::<RawLimits>()
}

/// Reads a task's `limits:` (`value`; `None` when absent) for a task of type `kind`: a value
/// of the wrong shape is the error; a value out of its range or format, or limits on a type
/// that runs no local process, is added to `problems`.
pub(crate) fn parse(
    value: Option<Value>,
    kind: &str,
    problems: &mut Problems<'_>,
) -> Result<Limits, ValueError> {
    let Some(value) = value else {
        return Ok(Limits::default());
    };
    let raw: RawLimits = from_value(value)?;
    let mut list = Vec::new();
    let limits = raw.check("limits", &mut list);
    for p in list {
        problems.add(p);
    }
    if kind != "shell" && !limits.is_empty() {
        problems.add(format_args!(
            "limits: only shell tasks take limits; the work of a `{kind}` task runs outside a process PicoFlow starts (for a container, set its limits in its image or runtime)"
        ));
    }
    Ok(limits)
}

/// How a memory limit is enforced for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryVia {
    /// `memory.max` of the attempt's own cgroup: the kernel kills the task at the limit.
    Cgroup,
    /// `RLIMIT_AS` of the process: allocations beyond it fail inside the program.
    Rlimit,
}

/// How the memory limit of an attempt is enforced, given whether it has a cgroup and, if
/// so, what setting its `memory.max` gave (`Err` with the reason); with the reason to log when
/// the cgroup could not take it.
pub(crate) fn memory_via(cgroup: Option<Result<(), String>>) -> (MemoryVia, Option<String>) {
    match cgroup {
        Some(Ok(())) => (MemoryVia::Cgroup, None),
        Some(Err(why)) => (
            MemoryVia::Rlimit,
            Some(format!(
                "memory.max of the task's cgroup: {why}; RLIMIT_AS instead"
            )),
        ),
        None => (MemoryVia::Rlimit, None),
    }
}

/// How an attempt that ended as `failure` (`exited with code N`, `killed by signal S`) ran
/// into its limits, if it did: `signal` ended it, it used `cpu` of CPU time, and its cgroup
/// counted `oom_kills`. `None` when no limit explains the end.
pub(crate) fn ended_by_limit(
    limits: &Limits,
    via: MemoryVia,
    failure: &str,
    signal: Option<i32>,
    cpu: Duration,
    oom_kills: u64,
) -> Option<String> {
    if let (Some(m), MemoryVia::Cgroup, true) = (limits.memory, via, oom_kills > 0) {
        return Some(format!("killed: memory limit ({}) reached", format_size(m)));
    }
    if let Some(c) = limits.cpu_seconds {
        let cpu_kill = match signal {
            Some(libc::SIGXCPU) => true,
            // Past the hard limit, or SIGXCPU handled: SIGKILL, with the time used to show.
            Some(libc::SIGKILL) => cpu >= Duration::from_secs(c),
            _ => false,
        };
        if cpu_kill {
            return Some(format!("killed: cpu_seconds limit ({c} s) reached"));
        }
    }
    match (limits.memory, via) {
        (Some(m), MemoryVia::Rlimit) => Some(format!(
            "{failure}; the memory limit (RLIMIT_AS {}) may have been reached",
            format_size(m)
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_1024_based_with_or_without_units() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("100MB", 100 << 20),
            ("100 MiB", 100 << 20),
            ("100m", 100 << 20),
            ("512KiB", 512 << 10),
            ("512kb", 512 << 10),
            ("2G", 2 << 30),
            ("7b", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MB", "1.5GB", "-1MB", "10 TB", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999G")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_size(100 << 20), "100MB");
        assert_eq!(format_size(512 << 10), "512KB");
        assert_eq!(format_size(3 << 30), "3GB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(parse_size(&format_size(1_536 << 10)), Ok(1_536 << 10));
    }

    #[test]
    fn io_classes_and_their_ioprio() {
        assert_eq!(IoClass::parse("idle"), Ok(IoClass::Idle));
        assert_eq!(IoClass::parse("best_effort"), Ok(IoClass::BestEffort(4)));
        assert_eq!(IoClass::parse("best_effort:7"), Ok(IoClass::BestEffort(7)));
        assert_eq!(IoClass::parse("realtime:0"), Ok(IoClass::Realtime(0)));
        for bad in ["idle:3", "best_effort:8", "realtime:x", "fast", ""] {
            assert!(IoClass::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(IoClass::Idle.ioprio(), 3 << 13);
        assert_eq!(IoClass::BestEffort(7).ioprio(), (2 << 13) | 7);
        assert_eq!(IoClass::Realtime(0).ioprio(), 1 << 13);
        for c in [IoClass::Idle, IoClass::BestEffort(2), IoClass::Realtime(5)] {
            assert_eq!(IoClass::parse(&c.to_string()), Ok(c));
        }
    }

    fn read(yaml: &str, kind: &str) -> (Limits, Vec<String>) {
        let value: Value = serde_norway::from_str(yaml).unwrap();
        let mut list = Vec::new();
        let limits = parse(
            Some(value),
            kind,
            &mut Problems::new("line 3: task 'a'", &mut list),
        )
        .unwrap();
        (limits, list)
    }

    #[test]
    fn limits_are_read_with_ranges_and_located_problems() {
        let (l, problems) = read(
            "{nice: 10, io: idle, memory: 100MB, cpu_seconds: 1m, open_files: 256}",
            "shell",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            l,
            Limits {
                nice: Some(10),
                io: Some(IoClass::Idle),
                memory: Some(100 << 20),
                cpu_seconds: Some(60),
                open_files: Some(256),
            }
        );
        assert_eq!(
            l.to_string(),
            "nice 10, io idle, memory 100MB, cpu_seconds 60, open_files 256"
        );
        let (l, problems) = read(
            "{nice: 20, io: fast, memory: 10KB, cpu_seconds: 0, open_files: 2}",
            "shell",
        );
        assert!(l.is_empty(), "{l:?}");
        assert_eq!(
            problems,
            [
                "line 3: task 'a': limits.nice: 20 is out of range -20-19",
                "line 3: task 'a': limits.io: 'fast' is not one of idle, best_effort[:0-7], realtime[:0-7]",
                "line 3: task 'a': limits.memory: '10KB' is below the smallest limit, 1MB",
                "line 3: task 'a': limits.cpu_seconds: 0 is out of range 1-31536000",
                "line 3: task 'a': limits.open_files: 2 is out of range 16-1048576",
            ]
        );
        let (_, problems) = read("{memory: lots}", "shell");
        assert!(
            problems[0].contains("limits.memory: 'lots' is not a size"),
            "{problems:?}"
        );
    }

    #[test]
    fn only_shell_tasks_take_limits() {
        for kind in ["docker", "ssh", "http", "mything"] {
            let (_, problems) = read("{nice: 5}", kind);
            assert_eq!(problems.len(), 1, "{kind}");
            assert!(
                problems[0].starts_with("line 3: task 'a': limits: only shell tasks take limits"),
                "{problems:?}"
            );
        }
        assert!(read("{}", "docker").1.is_empty());
        let value: Value = serde_norway::from_str("{colour: red}").unwrap();
        let mut list = Vec::new();
        let e = parse(Some(value), "shell", &mut Problems::new("t", &mut list)).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn a_tasks_limits_win_over_the_defaults() {
        let task = Limits {
            nice: Some(5),
            ..Limits::default()
        };
        let defaults = Limits {
            nice: Some(10),
            open_files: Some(64),
            ..Limits::default()
        };
        let l = task.or(&defaults);
        assert_eq!((l.nice, l.open_files, l.memory), (Some(5), Some(64), None));
    }

    #[test]
    fn the_memory_limit_goes_to_the_cgroup_only_when_it_took_it() {
        assert_eq!(memory_via(Some(Ok(()))), (MemoryVia::Cgroup, None));
        assert_eq!(memory_via(None), (MemoryVia::Rlimit, None));
        let (via, note) = memory_via(Some(Err("no memory controller".into())));
        assert_eq!(via, MemoryVia::Rlimit);
        assert!(note
            .unwrap()
            .contains("no memory controller; RLIMIT_AS instead"));
    }

    #[test]
    fn an_end_names_the_limit_that_caused_it() {
        let l = Limits {
            memory: Some(100 << 20),
            cpu_seconds: Some(60),
            ..Limits::default()
        };
        let secs = Duration::from_secs;
        let end =
            |via, failure, signal, cpu, oom| ended_by_limit(&l, via, failure, signal, cpu, oom);
        assert_eq!(
            end(MemoryVia::Cgroup, "killed by signal 9", Some(9), secs(0), 1).as_deref(),
            Some("killed: memory limit (100MB) reached")
        );
        assert_eq!(
            end(
                MemoryVia::Cgroup,
                "killed by signal 24",
                Some(libc::SIGXCPU),
                secs(60),
                0
            )
            .as_deref(),
            Some("killed: cpu_seconds limit (60 s) reached")
        );
        assert_eq!(
            end(
                MemoryVia::Cgroup,
                "killed by signal 9",
                Some(9),
                secs(65),
                0
            )
            .as_deref(),
            Some("killed: cpu_seconds limit (60 s) reached")
        );
        // A SIGKILL from elsewhere, early: not the CPU limit.
        assert_eq!(
            end(MemoryVia::Cgroup, "killed by signal 9", Some(9), secs(2), 0),
            None
        );
        assert_eq!(
            end(MemoryVia::Rlimit, "exited with code 1", None, secs(0), 0).as_deref(),
            Some("exited with code 1; the memory limit (RLIMIT_AS 100MB) may have been reached")
        );
        let none = Limits::default();
        assert_eq!(
            ended_by_limit(
                &none,
                MemoryVia::Rlimit,
                "exited with code 1",
                None,
                secs(99),
                0
            ),
            None
        );
    }

    #[test]
    fn the_configuration_section_takes_the_same_keys() {
        let l: Limits =
            toml::from_str("nice = 10\nio = \"best_effort:6\"\nmemory = \"64MB\"\n").unwrap();
        assert_eq!(l.io, Some(IoClass::BestEffort(6)));
        assert_eq!(l.memory, Some(64 << 20));
        let e = toml::from_str::<Limits>("memory = 5\n").unwrap_err();
        assert!(e.to_string().contains("tasks.limits.memory"), "{e}");
        assert_eq!(
            keys(),
            ["nice", "io", "memory", "cpu_seconds", "open_files"]
        );
    }
}
