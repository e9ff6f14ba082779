//! Command output. Every command writes its output through here, so that output into a
//! closed pipe (`picoflow history | head -1`) ends the command quietly instead of panicking:
//! a failed write becomes an [`Error::Io`] on [`STDOUT`], which `main` turns into exit
//! status 0 with nothing printed, once the command has unwound and closed the state file.
//! Messages for stderr are best effort: a closed stderr never stops a command.

use std::fmt;
use std::io::Write;

use picoflow_lib::Error;

/// The path that names standard output in an [`Error::Io`].
pub(crate) const STDOUT: &str = "<stdout>";

/// Writes formatted text to stdout; `?` ends the command when the reader has gone.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// A line on stderr; a closed stderr is ignored.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::error_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, out, outln};

pub(crate) fn write(args: fmt::Arguments<'_>) -> Result<(), Error> {
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(stdout_error)
}

/// Writes bytes to stdout and flushes them (log output that is followed as it grows).
pub(crate) fn bytes(buf: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(buf)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

pub(crate) fn flush() -> Result<(), Error> {
    std::io::stdout().flush().map_err(stdout_error)
}

pub(crate) fn error_line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        path: STDOUT.into(),
        source,
    }
}

/// True for the error of a write into a pipe whose reader has gone.
pub(crate) fn is_closed_stdout(e: &Error) -> bool {
    matches!(e, Error::Io { path, source }
        if path.as_os_str() == STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe)
}
