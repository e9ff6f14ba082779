//! Whether the system clock can be trusted: a Raspberry Pi has no battery-backed clock, boots
//! at the last saved time (or 1970), and jumps when a time service synchronises it, perhaps
//! minutes after PicoFlow started.
//!
//! The clock counts as synchronised when the kernel says so (`adjtimex(2)` without
//! `STA_UNSYNC`, which chrony, ntpd and systemd-timesyncd clear once they have set the time)
//! or when systemd-timesyncd's marker `/run/systemd/timesync/synchronized` exists. Where
//! `PICOFLOW_CLOCK_SYNC_FILE` is set, that alone decides: the clock is synchronised exactly
//! while the file it names exists (for trying a configuration, and for tests, without
//! touching the machine's clock).

use std::path::Path;

/// The variable that replaces the clock's sources with one file's existence.
pub const CLOCK_SYNC_FILE_VAR: &str = "PICOFLOW_CLOCK_SYNC_FILE";

/// systemd-timesyncd's directory; it exists while the service runs.
const TIMESYNCD_DIR: &str = "/run/systemd/timesync";
/// systemd-timesyncd's marker, created once it has synchronised the clock.
const TIMESYNCD_MARKER: &str = "/run/systemd/timesync/synchronized";

/// What the sources say of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSync {
    /// A source says the clock has been set by a time service.
    Synced,
    /// No source says so.
    Unsynced,
}

impl ClockSync {
    /// `synced` or `unsynced`, as `daemon status` and the metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockSync::Synced => "synced",
            ClockSync::Unsynced => "unsynced",
        }
    }
}

/// The clock's state now (see the module's docs for the sources).
pub fn sync_status() -> ClockSync {
    if let Some(file) = override_file() {
        return synced_if(Path::new(&file).exists());
    }
    synced_if(kernel_synced() || Path::new(TIMESYNCD_MARKER).exists())
}

/// Whether a time service that says when it has synchronised the clock runs here (or the
/// override variable is set): only then is waiting for it worth anything.
pub fn sync_service_present() -> bool {
    override_file().is_some() || Path::new(TIMESYNCD_DIR).is_dir()
}

/// The file [`CLOCK_SYNC_FILE_VAR`] names; an empty value names none.
fn override_file() -> Option<std::ffi::OsString> {
    std::env::var_os(CLOCK_SYNC_FILE_VAR).filter(|f| !f.is_empty())
}

fn synced_if(yes: bool) -> ClockSync {
    match yes {
        true => ClockSync::Synced,
        false => ClockSync::Unsynced,
    }
}

/// The kernel's view: `adjtimex` with no modes only reads.
fn kernel_synced() -> bool {
    // SAFETY: a zeroed `timex` with `modes == 0` asks for nothing to change; the kernel only
    // fills the structure, which lives for the call.
    let (state, status) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut t);
        (state, t.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case() {
        assert_eq!(ClockSync::Synced.as_str(), "synced");
        assert_eq!(ClockSync::Unsynced.as_str(), "unsynced");
    }

    #[test]
    fn the_kernel_answers_without_privileges() {
        // Whatever the answer, reading must not fail: both values are possible here.
        let _ = kernel_synced();
    }
}
