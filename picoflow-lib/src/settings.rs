//! What each built-in task type accepts under `config:`, compiled in every build: the YAML
//! schema never depends on features, so a `type: ssh` task parses (and is checked) in a build
//! without `ssh`, which then refuses it by name.
//!
//! Each type's settings live in its executor's folder, beside its running code
//! (`executor/<type>/settings.rs`: the settings struct, the strict serde struct the YAML is
//! read into, the parse-and-validate function, its defaults and its documented keys). They are
//! declared here rather than by their folder's `mod.rs` because the model's `TaskConfig` holds
//! them while the running code uses the model: this module sits below the model, the running
//! code above it. So the settings import only what
//! is below them — this module's helpers, `fields`, `schedule` — never an executor.
//!
//! The helpers here are the ones the workflow reader (`yaml`) and the types' settings share:
//! the problems list with its task label, ranges, scalars and durations. With `yaml`, this is
//! the only module that names the YAML parser's crate.

use std::fmt::Display;

pub(crate) use serde_norway::{from_value, Error as ValueError, Mapping, Value};

#[path = "executor/docker/settings.rs"]
pub(crate) mod docker;
#[path = "guards/settings.rs"]
pub(crate) mod guards;
#[path = "executor/http/settings.rs"]
pub(crate) mod http;
#[path = "executor/shell/settings.rs"]
pub(crate) mod shell;
#[path = "executor/ssh/settings.rs"]
pub(crate) mod ssh;

/// The problems found in one task: each is added with the label that names the task
/// (`line 4: task 'a'`), so that every message says where it belongs.
pub(crate) struct Problems<'a> {
    task: &'a str,
    list: &'a mut Vec<String>,
}

impl<'a> Problems<'a> {
    /// Problems of the task labelled `task`, added to `list`.
    pub(crate) fn new(task: &'a str, list: &'a mut Vec<String>) -> Self {
        Problems { task, list }
    }

    /// Adds `{task}: {what}`.
    pub(crate) fn add(&mut self, what: impl Display) {
        self.list.push(format!("{}: {what}", self.task));
    }

    /// `value` if it lies in `min..=max`; else `None` and the problem
    /// `{task}: {field}: {value} is out of range {min}-{max}`.
    pub(crate) fn range(
        &mut self,
        field: &str,
        value: Option<i64>,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        range(
            self.list,
            &format!("{}: {field}", self.task),
            value,
            min,
            max,
        )
    }
}

/// `value` if it lies in `min..=max`; else `None` and the problem
/// `{field}: {value} is out of range {min}-{max}`.
pub(crate) fn range(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<i64>,
    min: i64,
    max: i64,
) -> Option<i64> {
    let v = value?;
    if (min..=max).contains(&v) {
        Some(v)
    } else {
        problems.push(format!("{field}: {v} is out of range {min}-{max}"));
        None
    }
}

/// The text of a string, number or boolean; `None` for anything else.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A duration in whole seconds: a number (`90`) or a duration as `jitter` takes it (`1m30s`,
/// `2h`, `45s`), so that every duration of a workflow file has one syntax.
pub(crate) fn seconds<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<i64>, D::Error> {
    struct Seconds;
    impl serde::de::Visitor<'_> for Seconds {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number of seconds or a duration such as 90, 30s, 5m or 1h30m")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            crate::schedule::parse_duration(v)
                .map(|d| Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
                .map_err(E::custom)
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Seconds)
}

/// The keys each built-in task type accepts under `config:` (`working_dir` beside `workdir`),
/// by type name; any other key is refused. The README's table of them is compared with this
/// list by a test.
pub fn task_config_keys() -> [(&'static str, &'static [&'static str]); 4] {
    [
        ("shell", shell::keys()),
        ("ssh", ssh::keys()),
        ("http", http::keys()),
        ("docker", docker::keys()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_config_keys_are_the_parsers() {
        let keys = task_config_keys();
        let shell = keys.iter().find(|(t, _)| *t == "shell").unwrap().1;
        assert!(
            shell.contains(&"working_dir") && shell.contains(&"workdir"),
            "{shell:?}"
        );
        let ssh = keys.iter().find(|(t, _)| *t == "ssh").unwrap().1;
        assert!(ssh.contains(&"known_hosts"), "{ssh:?}");
        for (kind, fields) in keys {
            assert!(!fields.is_empty(), "{kind}");
        }
    }

    #[test]
    fn problems_carry_the_task_label() {
        let mut list = Vec::new();
        let mut p = Problems::new("line 4: task 'a'", &mut list);
        p.add("config.command must not be empty");
        assert_eq!(p.range("config.port", Some(0), 1, 65_535), None);
        assert_eq!(p.range("config.port", Some(22), 1, 65_535), Some(22));
        assert_eq!(p.range("config.port", None, 1, 65_535), None);
        assert_eq!(
            list,
            [
                "line 4: task 'a': config.command must not be empty",
                "line 4: task 'a': config.port: 0 is out of range 1-65535",
            ]
        );
    }
}
