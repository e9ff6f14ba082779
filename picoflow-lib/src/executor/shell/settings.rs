//! `type: shell` settings (EXEC-001): what `config:` holds, read and checked when a workflow
//! is loaded, in every build. Declared by `settings` (below the model, which holds them); the
//! running code is this folder's `mod.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{from_value, Problems, Value, ValueError};

/// `type: shell` configuration (EXEC-001).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellConfig {
    /// Program path or name, or a whole command line when `args` is absent.
    pub command: String,
    /// Arguments; when present the command is executed directly, never through a shell.
    pub args: Option<Vec<String>>,
    /// Working directory (`workdir`, alias `working_dir`).
    pub workdir: Option<PathBuf>,
    /// Variables added to the inherited environment.
    pub env: BTreeMap<String, String>,
}

impl ShellConfig {
    /// Whether this command runs as `/bin/sh -c "<command>"` (`DECISIONS.md` 3): no `args`
    /// and whitespace in the command.
    pub fn uses_shell(&self) -> bool {
        self.args.is_none() && self.command.trim().contains(char::is_whitespace)
    }
}

/// `config:` as written; an unknown key is an error that names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShell {
    command: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default, alias = "working_dir")]
    workdir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// The keys `config:` accepts.
pub(crate) fn keys() -> &'static [&'static str] {
    crate::fields::of::<RawShell>()
}

/// Reads a task's `config:`; a value of the wrong shape is the error, a value out of its
/// range or format is added to `problems`.
pub(crate) fn parse(config: Value, problems: &mut Problems<'_>) -> Result<ShellConfig, ValueError> {
    let r: RawShell = from_value(config)?;
    if r.command.trim().is_empty() {
        problems.add("config.command must not be empty");
    }
    Ok(ShellConfig {
        command: r.command,
        args: r.args,
        workdir: r.workdir.map(PathBuf::from),
        env: r.env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_rule_of_decisions_3() {
        let mut c = ShellConfig {
            command: "echo abc | tr a x".into(),
            ..Default::default()
        };
        assert!(c.uses_shell());
        c.args = Some(vec![]);
        assert!(!c.uses_shell());
        let plain = ShellConfig {
            command: "/bin/true".into(),
            ..Default::default()
        };
        assert!(!plain.uses_shell());
    }
}
