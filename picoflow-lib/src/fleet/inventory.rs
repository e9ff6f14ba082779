//! What a node tells the fleet about itself: read from `/proc` and `/sys`, each value `None`
//! where the machine does not have it.

use std::path::Path;

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub(crate) fn memory_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1-minute load average of `/proc/loadavg`.
pub(crate) fn load1(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

/// Seconds since boot, from `/proc/uptime`.
pub(crate) fn uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(secs as u64)
}

/// The CPU's temperature in °C: the first thermal zone of type `cpu…` or `soc…` (a Pi's is
/// `cpu-thermal`), else the first zone; millidegrees in `temp`.
pub(crate) fn cpu_temperature(sys_thermal: &Path) -> Option<f64> {
    let mut zones: Vec<_> = std::fs::read_dir(sys_thermal)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    let kind = |p: &Path| std::fs::read_to_string(p.join("type")).unwrap_or_default();
    let zone = zones
        .iter()
        .find(|z| {
            let k = kind(z);
            k.starts_with("cpu") || k.starts_with("soc")
        })
        .or_else(|| zones.first())?;
    let milli: f64 = std::fs::read_to_string(zone.join("temp"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(milli / 1000.0)
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub(crate) fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Reads a file of `/proc`, empty when it cannot be read.
pub(crate) fn proc_file(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc").join(name)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let meminfo = "MemTotal:         443800 kB\nMemFree:           20000 kB\nMemAvailable:     301234 kB\n";
        assert_eq!(memory_available(meminfo), Some(301_234 * 1024));
        assert_eq!(memory_available("MemTotal: 1 kB\n"), None);
        assert_eq!(load1("0.52 0.58 0.59 1/123 4567\n"), Some(0.52));
        assert_eq!(uptime("12345.67 4000.00\n"), Some(12345));
        assert_eq!(load1(""), None);
    }

    #[test]
    fn the_cpu_zone_is_preferred() {
        let dir = std::env::temp_dir().join(format!("pf-thermal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (zone, kind, temp) in [
            ("thermal_zone0", "acpitz", "30000"),
            ("thermal_zone1", "cpu-thermal", "51540"),
        ] {
            std::fs::create_dir_all(dir.join(zone)).unwrap();
            std::fs::write(dir.join(zone).join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(dir.join(zone).join("temp"), format!("{temp}\n")).unwrap();
        }
        assert_eq!(cpu_temperature(&dir), Some(51.54));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cpu_temperature(&dir), None);
    }

    #[test]
    fn free_disk_of_the_temp_dir_is_known() {
        assert!(disk_free(&std::env::temp_dir()).is_some_and(|b| b > 0));
        assert_eq!(disk_free(Path::new("/no/such/dir")), None);
    }
}
