//! Exit codes: the one table (the API reference's "PicoFlow CLI Exit Codes") and the one place
//! where an error becomes a code.
//!
//! `picoflow --help` prints the table (argh's `error_code` list on `Cli`, kept equal to these
//! constants by a test below) and the README repeats it (kept equal by `tests/cli.rs`); each
//! command's help names only codes of this table, with the meaning the table gives them.

use picoflow_lib::Error;

/// Done.
pub(crate) const SUCCESS: u8 = 0;
/// Anything else: another daemon holds the state file, no daemon runs, a signal not sent.
pub(crate) const GENERAL: u8 = 1;
/// A workflow file is invalid.
pub(crate) const INVALID: u8 = 2;
/// `run`: a task failed, so the workflow failed.
pub(crate) const RUN_FAILED: u8 = 3;
/// Bad configuration or command-line arguments.
pub(crate) const CONFIG: u8 = 4;
/// A file not found or not readable/writable.
pub(crate) const IO: u8 = 5;
/// The state file.
pub(crate) const STORE: u8 = 6;
/// A network operation outside of a task.
pub(crate) const NETWORK: u8 = 7;
/// An operation ran out of time.
pub(crate) const TIMEOUT: u8 = 8;
/// Stopped by SIGINT/SIGTERM.
pub(crate) const INTERRUPTED: u8 = 9;

/// The exit code of a command that failed with `e`.
pub(crate) fn of(e: &Error) -> u8 {
    match e {
        Error::Parse { .. }
        | Error::Invalid { .. }
        | Error::Cycle { .. }
        | Error::MissingFeature { .. } => INVALID,
        Error::Config { .. } => CONFIG,
        Error::Io { .. } | Error::NotFound(_) => IO,
        Error::Store { .. } => STORE,
        Error::Network(_) => NETWORK,
        Error::Timeout(_) => TIMEOUT,
        Error::Interrupted => INTERRUPTED,
        _ => GENERAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code with its meaning, as `picoflow --help` and the README print them.
    const TABLE: [(u8, &str); 10] = [
        (SUCCESS, "success"),
        (
            GENERAL,
            "general error (another daemon runs on the state file; daemon not running)",
        ),
        (INVALID, "invalid workflow file"),
        (RUN_FAILED, "a task failed (run)"),
        (CONFIG, "bad configuration or arguments"),
        (
            IO,
            "not found (a file, a log, an execution to resume) or I/O error",
        ),
        (STORE, "state file error (damaged, full disk)"),
        (NETWORK, "network error (the web UI cannot listen)"),
        (
            TIMEOUT,
            "timeout (daemon stop: the daemon did not stop in time)",
        ),
        (INTERRUPTED, "interrupted by SIGINT/SIGTERM"),
    ];

    /// argh's `error_code` takes literals, not constants: the help must say what the table
    /// says, line by line.
    #[test]
    fn help_shows_the_table() {
        let help = match <crate::args::Cli as argh::FromArgs>::from_args(&["picoflow"], &["--help"])
        {
            Err(early) => early.output,
            Ok(_) => panic!("--help parsed as a command"),
        };
        let at = help
            .find("Error codes:")
            .expect("an exit code table in --help");
        let lines: Vec<&str> = help[at..].lines().skip(1).take(TABLE.len()).collect();
        let want: Vec<String> = TABLE.iter().map(|(c, m)| format!("  {c} {m}")).collect();
        assert_eq!(lines, want, "{help}");
    }

    #[test]
    fn errors_map_to_the_table() {
        assert_eq!(of(&Error::Interrupted), INTERRUPTED);
        assert_eq!(of(&Error::NotFound("x".into())), IO);
        assert_eq!(of(&Error::Timeout("x".into())), TIMEOUT);
        assert_eq!(of(&Error::Other("x".into())), GENERAL);
        let config = Error::Config {
            origin: "x".into(),
            message: "y".into(),
        };
        assert_eq!(of(&config), CONFIG);
    }
}
