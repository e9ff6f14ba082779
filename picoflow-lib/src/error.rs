//! The library's single error type.

use std::fmt;
use std::path::PathBuf;

/// A boxed error from an executor, a store back end or another optional part.
///
/// Optional features carry their causes in this box so that enabling a feature
/// never changes the shape of [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in PicoFlow, in the user's terms.
///
/// Each variant is one kind of failure the user can act on; the `picoflow` command maps each
/// to one of the API reference's exit codes (its `exit.rs`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The YAML text of a workflow is malformed, or a field has the wrong type.
    Parse {
        /// The workflow file (or `<string>` for text given in code).
        file: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The workflow parsed but breaks one or more rules; every problem is listed.
    Invalid {
        /// The workflow file (or `<string>`).
        file: String,
        /// One line per problem, each naming the task and field.
        problems: Vec<String>,
    },
    /// The dependencies form a cycle; the path starts and ends with the same task.
    Cycle {
        /// The workflow file (or `<string>`).
        file: String,
        /// Task names along the cycle, first repeated at the end.
        path: Vec<String>,
    },
    /// A task uses an executor type that this build does not contain.
    MissingFeature {
        /// The workflow file (or `<string>`).
        file: String,
        /// The task using it.
        task: String,
        /// The task `type`.
        kind: String,
        /// The Cargo feature that provides it, if it is a built-in type.
        feature: Option<&'static str>,
        /// The types the registry has, sorted.
        known: Vec<String>,
    },
    /// The configuration file or a command-line value is invalid.
    Config {
        /// Where the bad value came from (file path, flag or variable name).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The state store failed.
    Store {
        /// What was being done.
        context: String,
        /// The cause.
        source: BoxError,
    },
    /// A network operation failed (SSH or HTTP outside of a task).
    Network(BoxError),
    /// An operation ran out of time.
    Timeout(String),
    /// A signal or a caller stopped the operation.
    Interrupted,
    /// A requested item (workflow, execution, log) does not exist.
    NotFound(String),
    /// Any other failure; the message says what.
    Other(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn store(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Store {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// An error's text as a user reads it: the system's words without std's ` (os error N)`
/// tail (`Permission denied`, not `Permission denied (os error 13)`). The library's own
/// messages use it, and so does a program showing an error's causes.
pub fn without_os_error(text: &str) -> &str {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(
                f,
                "{}: {}",
                path.display(),
                without_os_error(&source.to_string())
            ),
            Error::Parse {
                file,
                line,
                column,
                message,
            } => {
                write!(f, "{file}")?;
                if let Some(l) = line {
                    write!(f, ":{l}")?;
                    if let Some(c) = column {
                        write!(f, ":{c}")?;
                    }
                }
                write!(f, ": {message}")
            }
            Error::Invalid { file, problems } => {
                write!(f, "{file}: invalid workflow")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            Error::Cycle { file, path } => {
                write!(f, "{file}: dependency cycle: {}", path.join(" -> "))
            }
            Error::MissingFeature {
                file,
                task,
                kind,
                feature,
                known,
            } => match feature {
                Some(feat) => write!(
                    f,
                    "{file}: task '{task}': executor type '{kind}' is not compiled into this build; rebuild with the Cargo feature '{feat}' (e.g. `cargo build --features {feat}`)"
                ),
                None => write!(
                    f,
                    "{file}: task '{task}': unknown executor type '{kind}' (this build has: {})",
                    known.join(", ")
                ),
            },
            Error::Config { origin, message } => write!(f, "{origin}: {message}"),
            Error::Store { context, source } => write!(f, "state store: {context}: {source}"),
            Error::Network(e) => write!(f, "network error: {e}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Interrupted => write!(f, "interrupted"),
            Error::NotFound(what) => write!(f, "not found: {what}"),
            Error::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Store { source, .. } => Some(source.as_ref()),
            Error::Network(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// `Result` with PicoFlow's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_place() {
        let parse = Error::Parse {
            file: "a.yaml".into(),
            line: Some(3),
            column: Some(5),
            message: "bad".into(),
        };
        assert_eq!(parse.to_string(), "a.yaml:3:5: bad");
        let cycle = Error::Cycle {
            file: "w.yaml".into(),
            path: vec!["a".into(), "b".into(), "a".into()],
        };
        assert!(cycle.to_string().contains("a -> b -> a"));
    }

    #[test]
    fn io_errors_read_without_the_os_error_number() {
        let e = Error::io(
            "/x/state.redb",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(e.to_string(), "/x/state.redb: Permission denied");
        let custom = std::io::Error::other("is a symbolic link");
        assert_eq!(Error::io("a", custom).to_string(), "a: is a symbolic link");
    }
}
