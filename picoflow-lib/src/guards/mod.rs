//! Edge guards: whether the device is fit to start a workflow's execution or a task —
//! the clock set, the network there, room on the disk, memory free, not too hot, enough
//! power, not overloaded (`requires:`; its settings are `settings.rs`).
//!
//! Each guard reads one source and says whether it holds, and if not, why, in one line that
//! becomes the task's record message. The sources are the kernel's files: `/proc/meminfo`,
//! `/proc/loadavg`, `/proc/net/route` and `/proc/net/ipv6_route`, `/sys/class/thermal` and
//! `/sys/class/power_supply`; `PICOFLOW_HOST_ROOT`, where set, is put in front of those paths
//! (and only those), so that a test or a trial can present a device it is not running on. The
//! clock's state is `clock`'s; free disk space is `statvfs(3)` of the path itself; a host is
//! reachable when a TCP connection to it opens within [`CONNECT_TIMEOUT`].
//!
//! A source the device lacks — no thermal zone, no power supply class at all — cannot say
//! the device is unfit, so its guard holds: a board without a temperature sensor is not
//! known to be hot, and a device without a battery or supply entry runs from the mains.
//! `validate` warns about such a guard on the device it runs on, and the check logs it.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use crate::settings::guards::{Guard, OnUnmet, Requires, DEFAULT_WAIT_TIMEOUT, GUARD_KEYS};

use crate::clock::{sync_status, ClockSync};
use crate::limits::format_size;
use crate::settings::guards::approx_size;

/// The variable that moves the guards' `/proc` and `/sys` sources under another root.
pub const HOST_ROOT_VAR: &str = "PICOFLOW_HOST_ROOT";

/// How long a `network: {host, port}` guard waits for a connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often `on_unmet: wait` checks again.
pub const WAIT_POLL: Duration = Duration::from_secs(2);

/// A guard that does not hold: which, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmet {
    /// The guard's key (`network`, `min_free_disk`, …).
    pub guard: &'static str,
    /// What was found, for the record: `nas.local:445 unreachable: Connection refused`.
    pub detail: String,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.guard, self.detail)
    }
}

/// Checks every guard of `req` in order, `workdir` standing for a disk guard without a path;
/// the first that does not hold. Blocking (files, DNS, a connection): run it off the engine's
/// thread.
pub fn check(req: &Requires, workdir: &Path) -> Result<(), Unmet> {
    req.guards.iter().try_for_each(|g| check_one(g, workdir))
}

/// Checks one guard.
pub fn check_one(guard: &Guard, workdir: &Path) -> Result<(), Unmet> {
    let unmet = |detail: String| Unmet {
        guard: guard.key(),
        detail,
    };
    match guard {
        Guard::ClockSynced => match sync_status() {
            ClockSync::Synced => Ok(()),
            ClockSync::Unsynced => Err(unmet("the system clock is not synchronised".into())),
        },
        Guard::Online => match default_route() {
            Some(_) => Ok(()),
            None => Err(unmet(
                "offline: no default route through an interface other than lo".into(),
            )),
        },
        Guard::Reachable { host, port } => {
            reachable(host, *port).map_err(|e| unmet(format!("{host}:{port} unreachable: {e}")))
        }
        Guard::FreeDisk { path, bytes } => {
            let path = path.as_deref().unwrap_or(workdir);
            match free_disk(path) {
                Ok(free) if free >= *bytes => Ok(()),
                Ok(free) => Err(unmet(format!(
                    "{} free on {}, {} required",
                    approx_size(free),
                    path.display(),
                    format_size(*bytes)
                ))),
                Err(e) => Err(unmet(format!("cannot measure {}: {e}", path.display()))),
            }
        }
        Guard::FreeMemory(bytes) => match available_memory() {
            Some(free) if free >= *bytes => Ok(()),
            Some(free) => Err(unmet(format!(
                "{} available, {} required",
                approx_size(free),
                format_size(*bytes)
            ))),
            None => Err(unmet(
                "MemAvailable cannot be read from /proc/meminfo".into(),
            )),
        },
        Guard::MaxTemperature(max) => match temperature() {
            Some(c) if c <= *max => Ok(()),
            Some(c) => Err(unmet(format!("CPU at {c:.1} °C, at most {max} °C allowed"))),
            None => {
                absent_once("max_cpu_temperature", "no thermal zone");
                Ok(())
            }
        },
        Guard::OnMains | Guard::BatteryAbove(_) => power(guard).map_err(unmet),
        Guard::MaxLoad(max) => match load() {
            Some(l) if l <= *max => Ok(()),
            Some(l) => Err(unmet(format!(
                "1-minute load {l:.2}, at most {max} allowed"
            ))),
            None => Err(unmet("the load average cannot be read".into())),
        },
    }
}

/// Guards of `req` whose source this device lacks, with what is missing: `validate` warns
/// about them.
pub fn absent_sources(req: &Requires) -> Vec<String> {
    let mut out = Vec::new();
    for g in &req.guards {
        match g {
            Guard::MaxTemperature(_) if temperature().is_none() => out.push(format!(
                "requires.max_cpu_temperature: this device has no thermal zone in {}; the guard will always hold here",
                source("/sys/class/thermal").display()
            )),
            Guard::OnMains | Guard::BatteryAbove(_) if supplies().is_empty() => out.push(format!(
                "requires.power: this device reports no power supply in {}; the guard will always hold here (mains power assumed)",
                source("/sys/class/power_supply").display()
            )),
            _ => {}
        }
    }
    out
}

/// Warnings for `validate`: each guard of `wf` (of the workflow, its tasks and handlers)
/// whose source this device lacks, naming the file (`origin`) and the task.
pub fn warnings(wf: &crate::model::Workflow, origin: &str) -> Vec<String> {
    let tasks = wf.tasks.iter().chain(wf.handlers.all().map(|(_, t)| t));
    let owners = std::iter::once(("requires".to_string(), wf.requires.as_ref()))
        .chain(tasks.map(|t| (format!("task '{}'", t.name), t.requires.as_ref())));
    let mut out = Vec::new();
    for (who, req) in owners {
        for w in req.map(absent_sources).unwrap_or_default() {
            let w = match who.as_str() {
                "requires" => w,
                _ => format!("{who}: {w}"),
            };
            out.push(format!("{origin}: {w}"));
        }
    }
    out
}

/// A source path under [`HOST_ROOT_VAR`] when it is set.
fn source(path: &str) -> PathBuf {
    match std::env::var_os(HOST_ROOT_VAR) {
        Some(root) if !root.is_empty() => {
            Path::new(&root).join(path.strip_prefix('/').unwrap_or(path))
        }
        _ => PathBuf::from(path),
    }
}

/// Logs once per process that a guard's source is missing, so that a guard that always holds
/// here says why once.
fn absent_once(guard: &str, what: &str) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(guard, "{what} on this device: the guard holds");
    }
}

/// The interface of a default route (IPv4 or IPv6) other than `lo`, if there is one.
fn default_route() -> Option<String> {
    // /proc/net/route: Iface Destination Gateway Flags …, hex; a default route has
    // destination 00000000 and mask 00000000, and the flag RTF_UP (1).
    let v4 = std::fs::read_to_string(source("/proc/net/route")).unwrap_or_default();
    let found = v4.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let up = f
            .get(3)
            .and_then(|x| u32::from_str_radix(x, 16).ok())
            .is_some_and(|flags| flags & 1 == 1);
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && up && f[0] != "lo")
            .then(|| f[0].to_string())
    });
    if found.is_some() {
        return found;
    }
    // /proc/net/ipv6_route: dest, dest prefix length, …, flags (9th), interface (10th).
    let v6 = std::fs::read_to_string(source("/proc/net/ipv6_route")).unwrap_or_default();
    v6.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let up = f
            .get(8)
            .and_then(|x| u32::from_str_radix(x, 16).ok())
            .is_some_and(|flags| flags & 1 == 1);
        (f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && up && f[9] != "lo")
            .then(|| f[9].to_string())
    })
}

/// Whether a TCP connection to `host:port` opens within [`CONNECT_TIMEOUT`], trying each
/// address the name resolves to.
fn reachable(host: &str, port: u16) -> Result<(), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let mut last = "the name has no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = crate::error::without_os_error(&e.to_string()).to_string(),
        }
    }
    Err(last)
}

/// Bytes free for unprivileged users on the file system of `path`.
fn free_disk(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is written by it.
    let (r, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The fields are 32 bits wide on some 32-bit targets (armv7) and 64 on others.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string(source("/proc/meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// The 1-minute load average.
fn load() -> Option<f64> {
    let text = std::fs::read_to_string(source("/proc/loadavg")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The hottest thermal zone, in °C; `None` when there is none.
fn temperature() -> Option<f64> {
    let dir = std::fs::read_dir(source("/sys/class/thermal")).ok()?;
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .reduce(f64::max)
}

/// One entry of `/sys/class/power_supply`.
#[derive(Debug)]
struct Supply {
    name: String,
    /// `Mains`, `USB`, `Battery`, …
    kind: String,
    online: bool,
    capacity: Option<u8>,
}

fn supplies() -> Vec<Supply> {
    let Ok(dir) = std::fs::read_dir(source("/sys/class/power_supply")) else {
        return Vec::new();
    };
    let read = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut list: Vec<Supply> = dir
        .flatten()
        .map(|e| {
            let p = e.path();
            Supply {
                name: e.file_name().to_string_lossy().into_owned(),
                kind: read(&p, "type").unwrap_or_default(),
                online: read(&p, "online").as_deref() == Some("1"),
                capacity: read(&p, "capacity").and_then(|c| c.parse().ok()),
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// `power: ac` and `power: {battery_above: N%}`.
fn power(guard: &Guard) -> Result<(), String> {
    let list = supplies();
    if list.is_empty() {
        absent_once("power", "no power supply class");
        return Ok(());
    }
    let batteries: Vec<&Supply> = list.iter().filter(|s| s.kind == "Battery").collect();
    // Mains, USB or any other kind that is not a battery feeds the device when online; a
    // device that lists only non-battery supplies runs from them.
    let on_mains = list.iter().any(|s| s.kind != "Battery" && s.online)
        || (batteries.is_empty() && list.iter().all(|s| s.kind != "Battery"));
    match guard {
        Guard::OnMains if on_mains => Ok(()),
        Guard::OnMains => Err(match batteries.first().and_then(|b| b.capacity) {
            Some(c) => format!("on battery ({c}%)"),
            None => "on battery".to_string(),
        }),
        Guard::BatteryAbove(_) if on_mains => Ok(()),
        Guard::BatteryAbove(min) => {
            match batteries
                .iter()
                .find(|b| b.capacity.is_some_and(|c| c < *min))
            {
                Some(b) => Err(format!(
                    "battery {} at {}%, above {min}% required",
                    b.name,
                    b.capacity.unwrap_or(0)
                )),
                None => Ok(()),
            }
        }
        _ => unreachable!("only power guards are asked for"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/sys` and `/proc` under a temporary root. Tests that set the variable run one
    /// at a time.
    struct Root(PathBuf);

    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl Root {
        fn new(name: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("picoflow-guards-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
        fn file(&self, path: &str, text: &str) {
            let p = self.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        fn with<T>(&self, f: impl FnOnce() -> T) -> T {
            let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            std::env::set_var(HOST_ROOT_VAR, &self.0);
            let out = f();
            std::env::remove_var(HOST_ROOT_VAR);
            out
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn here() -> &'static Path {
        Path::new("/")
    }

    #[test]
    fn memory_load_and_temperature_read_their_files() {
        let root = Root::new("mem");
        root.file(
            "proc/meminfo",
            "MemTotal: 500000 kB\nMemFree: 1000 kB\nMemAvailable: 65536 kB\n",
        );
        root.file("proc/loadavg", "3.50 1.00 0.50 1/100 999\n");
        root.file("sys/class/thermal/thermal_zone0/temp", "81234\n");
        root.file("sys/class/thermal/thermal_zone1/temp", "40000\n");
        root.with(|| {
            assert_eq!(check_one(&Guard::FreeMemory(64 << 20), here()), Ok(()));
            let e = check_one(&Guard::FreeMemory(100 << 20), here()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "min_free_memory: 64MB available, 100MB required"
            );
            let e = check_one(&Guard::MaxLoad(2.0), here()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "max_load: 1-minute load 3.50, at most 2 allowed"
            );
            assert_eq!(check_one(&Guard::MaxLoad(4.0), here()), Ok(()));
            let e = check_one(&Guard::MaxTemperature(80.0), here()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "max_cpu_temperature: CPU at 81.2 °C, at most 80 °C allowed"
            );
            assert_eq!(check_one(&Guard::MaxTemperature(85.0), here()), Ok(()));
        });
    }

    #[test]
    fn absent_sources_hold_and_are_named() {
        let root = Root::new("absent");
        root.file("proc/loadavg", "0.1 0.1 0.1 1/1 1\n");
        root.with(|| {
            assert_eq!(check_one(&Guard::MaxTemperature(10.0), here()), Ok(()));
            assert_eq!(check_one(&Guard::OnMains, here()), Ok(()));
            let req = Requires {
                guards: vec![Guard::MaxTemperature(70.0), Guard::BatteryAbove(20)],
                on_unmet: OnUnmet::Skip,
                wait_timeout: Duration::from_secs(1),
            };
            let warnings = absent_sources(&req);
            assert_eq!(warnings.len(), 2, "{warnings:?}");
            assert!(warnings[0].contains("no thermal zone"), "{warnings:?}");
        });
    }

    #[test]
    fn power_follows_the_supplies() {
        let root = Root::new("power");
        root.file("sys/class/power_supply/AC/type", "Mains\n");
        root.file("sys/class/power_supply/AC/online", "0\n");
        root.file("sys/class/power_supply/BAT0/type", "Battery\n");
        root.file("sys/class/power_supply/BAT0/capacity", "25\n");
        root.with(|| {
            let e = check_one(&Guard::OnMains, here()).unwrap_err();
            assert_eq!(e.to_string(), "power: on battery (25%)");
            let e = check_one(&Guard::BatteryAbove(30), here()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "power: battery BAT0 at 25%, above 30% required"
            );
            assert_eq!(check_one(&Guard::BatteryAbove(20), here()), Ok(()));
        });
        root.file("sys/class/power_supply/AC/online", "1\n");
        root.with(|| {
            assert_eq!(check_one(&Guard::OnMains, here()), Ok(()));
            assert_eq!(check_one(&Guard::BatteryAbove(90), here()), Ok(()));
        });
    }

    #[test]
    fn online_needs_a_default_route_off_loopback() {
        let root = Root::new("route");
        let header =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n";
        root.file(
            "proc/net/route",
            &format!("{header}eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"),
        );
        root.with(|| {
            let e = check_one(&Guard::Online, here()).unwrap_err();
            assert!(e.detail.starts_with("offline"), "{e}");
        });
        root.file(
            "proc/net/route",
            &format!("{header}wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"),
        );
        root.with(|| assert_eq!(check_one(&Guard::Online, here()), Ok(())));
    }

    #[test]
    fn a_closed_port_is_unreachable_and_an_open_one_reachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Guard::Reachable {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(check_one(&open, here()), Ok(()));
        drop(listener);
        let e = check_one(&open, here()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("network: 127.0.0.1:{port} unreachable: ")),
            "{e}"
        );
    }

    #[test]
    fn free_disk_compares_with_statvfs() {
        let dir = std::env::temp_dir();
        assert_eq!(
            check_one(
                &Guard::FreeDisk {
                    path: Some(dir.clone()),
                    bytes: 1
                },
                here()
            ),
            Ok(())
        );
        let e = check_one(
            &Guard::FreeDisk {
                path: None,
                bytes: u64::MAX,
            },
            &dir,
        )
        .unwrap_err();
        assert!(e.detail.contains("required"), "{e}");
        let e = check_one(
            &Guard::FreeDisk {
                path: Some("/no/such/dir".into()),
                bytes: 1,
            },
            here(),
        )
        .unwrap_err();
        assert!(e.detail.starts_with("cannot measure /no/such/dir"), "{e}");
    }
}
