//! The module that reads workflow YAML.
//!
//! The parser is serde_norway, a fork of the deprecated serde_yaml with its own libyaml port
//! (measured against the other forks and the pure-Rust saphyr crates on a 5000-task file:
//! as fast as the fastest, the same size, and the same messages; `features.md` has the
//! figures). Everything that touches it is here and in `settings` (the task types' settings,
//! read from its values), so moving again is the `use` line below, the one in `settings` and
//! the Cargo dependency. The text is first
//! deserialized into strict "raw" structures (unknown fields are errors that name the field,
//! with line and column), then converted into the [`Workflow`] model, collecting every
//! range and format problem with the line of the task it belongs to. A task's `config:` is
//! read by its type's settings (`executor/<type>/settings.rs`), looked up in `task_config`.

use std::time::Duration;

use serde::Deserialize;
use serde_norway as yaml;

use crate::error::{Error, Result};
use crate::model::{
    is_valid_name, Catchup, Handlers, Items, RunIf, Task, TaskConfig, Workflow, WorkflowConfig,
};
use crate::settings::{self, range, scalar_text, seconds, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    allow_concurrent: bool,
    #[serde(default)]
    catchup: Option<String>,
    #[serde(default)]
    jitter: Option<yaml::Value>,
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    requires: Option<yaml::Value>,
    tasks: Vec<RawTask>,
    #[serde(default)]
    on_success: Vec<RawTask>,
    #[serde(default)]
    on_failure: Vec<RawTask>,
    #[serde(default)]
    on_exit: Vec<RawTask>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    max_parallel: Option<i64>,
    #[serde(default)]
    retry_default: Option<i64>,
    #[serde(default, deserialize_with = "seconds")]
    timeout_default: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    depends_on: Vec<String>,
    config: yaml::Value,
    #[serde(default)]
    retry: Option<i64>,
    #[serde(default, deserialize_with = "seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    continue_on_failure: bool,
    #[serde(default)]
    outputs: yaml::Mapping,
    #[serde(default)]
    when: Option<yaml::Value>,
    #[serde(default)]
    run_if: Option<String>,
    #[serde(default)]
    on_success: Vec<String>,
    #[serde(default)]
    on_failure: Vec<String>,
    #[serde(default)]
    iterate_over: Option<yaml::Value>,
    #[serde(default)]
    requires: Option<yaml::Value>,
    limits: Option<yaml::Value>,
}

/// Parses workflow YAML into the model, checking every field's format and range.
///
/// `origin` names the file in messages. Dependencies, cycles, schedules and executor
/// availability are checked by `validate`.
pub(crate) fn parse_workflow(text: &str, origin: &str) -> Result<Workflow> {
    let raw: RawWorkflow = yaml::from_str(text).map_err(|e| {
        // Deserializing stops at the first field it cannot use, which may come before a
        // syntax error further down (a mis-indented `config:` makes its task lack `config`).
        // A syntax error anywhere is the real problem: report it, at its own line.
        match yaml::from_str::<serde::de::IgnoredAny>(text) {
            Err(syntax) => syntax_error(origin, &syntax),
            Ok(_) => syntax_error(origin, &e),
        }
    })?;
    let mut problems = Vec::new();
    check_header(&raw, &mut problems);
    let config = workflow_config(raw.config, &mut problems);
    let catchup = match raw.catchup.as_deref() {
        None | Some("none") => Catchup::None,
        Some("latest") => Catchup::Latest,
        Some("all") => Catchup::All,
        Some(other) => {
            problems.push(format!(
                "catchup: '{other}' is not one of none, latest, all"
            ));
            Catchup::None
        }
    };
    let jitter = match raw.jitter {
        None => None,
        Some(v) => match jitter_value(&v) {
            Ok(d) => Some(d),
            Err(msg) => {
                problems.push(format!("jitter: {msg}"));
                None
            }
        },
    };
    let requires = workflow_requires(raw.requires.as_ref(), text, &mut problems);

    let mut sections = Vec::with_capacity(4);
    for (section, list) in [
        ("tasks", raw.tasks),
        ("on_success", raw.on_success),
        ("on_failure", raw.on_failure),
        ("on_exit", raw.on_exit),
    ] {
        let lines = TaskLines::new(text, section);
        let mut tasks = Vec::with_capacity(list.len());
        for (index, rt) in list.into_iter().enumerate() {
            let at = lines.line_of(index, &rt.name);
            tasks.push(task(rt, at, origin, &mut problems)?);
        }
        sections.push(tasks);
    }
    let mut sections = sections.into_iter();
    let mut next = || sections.next().unwrap_or_default();
    let (tasks, on_success, on_failure, on_exit) = (next(), next(), next(), next());

    if !problems.is_empty() {
        return Err(Error::Invalid {
            file: origin.to_string(),
            problems,
        });
    }
    Ok(Workflow {
        name: raw.name,
        description: raw.description,
        schedule: raw.schedule,
        timezone: raw.timezone,
        allow_concurrent: raw.allow_concurrent,
        catchup,
        jitter,
        config,
        requires,
        tasks,
        handlers: Handlers {
            on_success,
            on_failure,
            on_exit,
        },
    })
}

/// The workflow's own `requires:`, its problems labelled with its line (a top-level key).
fn workflow_requires(
    v: Option<&yaml::Value>,
    text: &str,
    problems: &mut Vec<String>,
) -> Option<settings::guards::Requires> {
    let v = v?;
    let label = text
        .lines()
        .position(|l| l.starts_with("requires:"))
        .map_or("workflow".to_string(), |i| format!("line {}", i + 1));
    settings::guards::parse(v, &mut Problems::new(&label, problems))
}

/// The workflow's own fields: its name, its description's length, and that it has tasks.
fn check_header(raw: &RawWorkflow, problems: &mut Vec<String>) {
    if !is_valid_name(&raw.name) {
        problems.push(format!(
            "name: '{}' must be 1-64 characters of letters, digits, '-' and '_' (no spaces)",
            raw.name
        ));
    }
    if let Some(d) = &raw.description {
        if d.chars().count() > 256 {
            problems.push(format!(
                "description: {} characters, at most 256 allowed",
                d.chars().count()
            ));
        }
    }
    if raw.tasks.is_empty() {
        problems.push("tasks: at least one task is required".to_string());
    }
}

/// The `config:` block, each value in its range.
fn workflow_config(raw: Option<RawConfig>, problems: &mut Vec<String>) -> WorkflowConfig {
    let Some(c) = raw else {
        return WorkflowConfig::default();
    };
    WorkflowConfig {
        max_parallel: range(problems, "config.max_parallel", c.max_parallel, 1, 256)
            .map(|v| v as u32),
        retry_default: range(problems, "config.retry_default", c.retry_default, 0, 100)
            .map(|v| v as u32),
        timeout_default: range(
            problems,
            "config.timeout_default",
            c.timeout_default,
            0,
            86_400,
        )
        .map(|v| v as u64),
    }
}

/// Converts one task (of `tasks:` or of a handler list) found at line `at`.
fn task(
    mut rt: RawTask,
    at: Option<usize>,
    origin: &str,
    problems: &mut Vec<String>,
) -> Result<Task> {
    let where_ = match at {
        Some(l) => format!("line {l}: task '{}'", rt.name),
        None => format!("task '{}'", rt.name),
    };
    if !is_valid_name(&rt.name) {
        problems.push(format!(
            "{where_}: name must be 1-64 characters of letters, digits, '-' and '_'"
        ));
    }
    let retry = range(problems, &format!("{where_}: retry"), rt.retry, 0, 100);
    let timeout = range(
        problems,
        &format!("{where_}: timeout"),
        rt.timeout,
        0,
        86_400,
    );
    let mut outputs = Vec::with_capacity(rt.outputs.len());
    for (k, v) in &rt.outputs {
        match (scalar_text(k), scalar_text(v)) {
            (Some(k), Some(v)) => outputs.push((k, v)),
            _ => problems.push(format!(
                "{where_}: outputs: names and selectors must be strings"
            )),
        }
    }
    let when = match rt.when.take() {
        None => None,
        Some(v) => match scalar_text(&v) {
            Some(t) => Some(t),
            None => {
                problems.push(format!(
                    "{where_}: when: expected a condition such as \"${{tasks.check.outputs.changed}} == 'yes'\""
                ));
                None
            }
        },
    };
    let (depends_on, run_if) = triggers(&mut rt, &where_, problems);
    let iterate_over = rt
        .iterate_over
        .take()
        .and_then(|v| iterate_over(v, &where_, problems));
    let requires = rt
        .requires
        .take()
        .and_then(|v| settings::guards::parse(&v, &mut Problems::new(&where_, problems)));
    let limits = task_limits(&mut rt, at, origin, &where_, problems)?;
    let config = task_config(&rt.kind, rt.config, origin, at, &rt.name, &where_, problems)?;
    Ok(Task {
        name: rt.name,
        kind: rt.kind,
        depends_on,
        config,
        retry: retry.map(|v| v as u32),
        timeout: timeout.map(|v| v as u64),
        continue_on_failure: rt.continue_on_failure,
        outputs,
        when,
        run_if,
        iterate_over,
        requires,
        limits,
        line: at,
    })
}

/// The task's `limits:` (see `limits`); a value of the wrong shape stops the parse with the
/// task's line.
fn task_limits(
    rt: &mut RawTask,
    at: Option<usize>,
    origin: &str,
    where_: &str,
    problems: &mut Vec<String>,
) -> Result<crate::limits::Limits> {
    let mut p = Problems::new(where_, problems);
    crate::limits::parse(rt.limits.take(), &rt.kind, &mut p).map_err(|e| Error::Parse {
        file: origin.to_string(),
        line: at,
        column: None,
        message: format!(
            "task '{}': limits: {}",
            rt.name,
            strip_location(&e.to_string())
        ),
    })
}

/// The task's dependencies and trigger rule: `depends_on` and `run_if`, or their shorthands
/// `on_success: [a]` / `on_failure: [a]`.
fn triggers(rt: &mut RawTask, where_: &str, problems: &mut Vec<String>) -> (Vec<String>, RunIf) {
    let mut depends_on = std::mem::take(&mut rt.depends_on);
    let mut run_if = match rt.run_if.as_deref() {
        None => RunIf::AllSuccess,
        Some(r) => RunIf::parse(r).unwrap_or_else(|| {
            problems.push(format!(
                "{where_}: run_if: '{r}' is not one of all_success, all_done, any_failed, all_failed"
            ));
            RunIf::AllSuccess
        }),
    };
    match (rt.on_success.is_empty(), rt.on_failure.is_empty()) {
        (true, true) => {}
        (false, false) => problems.push(format!(
            "{where_}: on_success and on_failure cannot both be set; use depends_on with run_if"
        )),
        (false, true) if rt.run_if.is_some() => problems.push(format!(
            "{where_}: on_success is short for depends_on with run_if: all_success; it cannot be combined with run_if"
        )),
        (true, false) if rt.run_if.is_some() || !depends_on.is_empty() => problems.push(format!(
            "{where_}: on_failure is short for depends_on with run_if: any_failed; it cannot be combined with depends_on or run_if"
        )),
        (false, true) => depends_on.extend(rt.on_success.iter().cloned()),
        (true, false) => {
            depends_on = rt.on_failure.clone();
            run_if = RunIf::AnyFailed;
        }
    }
    (depends_on, run_if)
}

/// The items of a loop task: a written list, or a reference to a value of the run.
fn iterate_over(v: yaml::Value, where_: &str, problems: &mut Vec<String>) -> Option<Items> {
    match v {
        yaml::Value::Sequence(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in &items {
                match scalar_text(item) {
                    Some(t) => list.push(t),
                    None => problems.push(format!(
                        "{where_}: iterate_over: items must be strings or numbers"
                    )),
                }
            }
            Some(Items::List(list))
        }
        yaml::Value::String(r) => Some(Items::From(r)),
        _ => {
            problems.push(format!(
                "{where_}: iterate_over: expected a list of items or a reference such as \"${{tasks.list.outputs.files}}\""
            ));
            None
        }
    }
}

/// The fields of a task itself, beside its `config`.
const TASK_FIELDS: &[&str] = &[
    "name",
    "type",
    "depends_on",
    "retry",
    "timeout",
    "continue_on_failure",
    "outputs",
    "when",
    "run_if",
    "on_success",
    "on_failure",
    "iterate_over",
    "requires",
    "limits",
];

/// Reads a task's `config:` by its type: a built-in type's settings check themselves (see
/// `settings`); any other type keeps the object as JSON for its executor's
/// [`check`](crate::Executor::check). A value of the wrong shape stops the parse with the
/// task's line; other problems are added to `problems`.
fn task_config(
    kind: &str,
    value: yaml::Value,
    origin: &str,
    line: Option<usize>,
    task: &str,
    where_: &str,
    problems: &mut Vec<String>,
) -> Result<TaskConfig> {
    let field_error = |e: yaml::Error| {
        let text = strip_location(&e.to_string());
        // Real workflows put task fields (`timeout:` most of all) under `config:`.
        let hint = text
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field)
            .filter(|f| TASK_FIELDS.contains(f))
            .map(|f| format!("; `{f}` is a task field: move it out of `config`"))
            .unwrap_or_default();
        Error::Parse {
            file: origin.to_string(),
            line,
            column: None,
            message: format!("task '{task}': config: {text}{hint}"),
        }
    };
    let mut at = Problems::new(where_, problems);
    let config = match kind {
        "shell" => settings::shell::parse(value, &mut at).map(TaskConfig::Shell),
        "ssh" => settings::ssh::parse(value, &mut at).map(TaskConfig::Ssh),
        "http" => settings::http::parse(value, &mut at).map(TaskConfig::Http),
        "docker" => settings::docker::parse(value, &mut at).map(TaskConfig::Docker),
        _ => Ok(match serde_json::to_value(&value) {
            Ok(j) => TaskConfig::Custom(j),
            Err(e) => {
                at.add(format_args!("config cannot be represented: {e}"));
                TaskConfig::Custom(serde_json::Value::Null)
            }
        }),
    };
    config.map_err(field_error)
}

fn jitter_value(v: &yaml::Value) -> std::result::Result<Duration, String> {
    match v {
        yaml::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds")),
        yaml::Value::String(s) => crate::schedule::parse_duration(s),
        _ => Err("expected a duration such as 30s, 5m or 1h".to_string()),
    }
}

/// A syntax error at its position. The parser's message names the problem's position and,
/// after ", while …", where the construct it was reading began; when the problem is the end
/// of the file (an unclosed quote or bracket), the beginning is the useful position.
fn syntax_error(origin: &str, e: &yaml::Error) -> Error {
    let text = e.to_string();
    let (problem, context) = match text.split_once(", while ") {
        Some((p, c)) => (p, Some(c)),
        None => (text.as_str(), None),
    };
    let loc = e.location();
    let mut at = loc.as_ref().map(|l| (l.line(), l.column()));
    let mut message = strip_location(problem);
    if let Some(c) = context {
        let start = location_in(c);
        if problem.contains("end of stream") && start.is_some() {
            at = start;
        }
        message = format!("{message}, while {}", strip_location(c));
    }
    Error::Parse {
        file: origin.to_string(),
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        message,
    }
}

/// The parser appends " at line X column Y" to messages; the location is reported separately.
/// What remains is put in the workflow file's words (see [`plain`]).
fn strip_location(msg: &str) -> String {
    plain(match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    })
}

/// A deserializer's message without the names of PicoFlow's Rust types: `expected struct
/// RawWorkflow` says what the file should hold, `expected i64` says a whole number.
fn plain(msg: &str) -> String {
    let mut out = msg
        .replace(
            "expected struct RawWorkflow",
            "expected a workflow: a mapping with `name` and `tasks`",
        )
        .replace(
            "expected struct RawTask",
            "expected a task: a mapping with `name`, `type` and `config`",
        );
    while let Some(i) = out.find("expected struct Raw") {
        let end = out[i + 16..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |e| i + 16 + e);
        out.replace_range(i..end, "expected a mapping");
    }
    for (rust, words) in [
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

/// The `(line, column)` of an " at line X column Y" in `msg`.
fn location_in(msg: &str) -> Option<(usize, usize)> {
    let rest = &msg[msg.find(" at line ")? + 9..];
    let (line, rest) = rest.split_once(" column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// Finds the line on which each task's `name:` appears, so that problems found after
/// deserialization can still point at the file. One pass over the text, then each lookup
/// reads only its task's lines.
struct TaskLines<'a> {
    text: &'a str,
    /// Each task's list item: its line number (1-based) and byte offset.
    starts: Vec<(usize, usize)>,
}

impl<'a> TaskLines<'a> {
    /// The items of the top-level list `section` (`tasks`, `on_failure` …).
    fn new(text: &'a str, section: &str) -> Self {
        let mut starts = Vec::new();
        let mut in_tasks = false;
        let mut item_indent = None;
        let mut offset = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let at = offset;
            offset += line.len();
            let line = line.trim_end_matches(['\n', '\r']);
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if indent == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
                in_tasks = trimmed
                    .strip_prefix(section)
                    .is_some_and(|rest| rest.starts_with(':'));
                item_indent = None;
                continue;
            }
            if !in_tasks || !trimmed.starts_with('-') {
                continue;
            }
            match item_indent {
                None => item_indent = Some(indent),
                Some(ind) if ind != indent => continue,
                _ => {}
            }
            starts.push((i + 1, at));
        }
        TaskLines { text, starts }
    }

    /// Line of the `name:` of task number `index`, or of its list item.
    fn line_of(&self, index: usize, name: &str) -> Option<usize> {
        let (start, offset) = *self.starts.get(index)?;
        let end = self.starts.get(index + 1).map_or(self.text.len(), |s| s.1);
        for (i, line) in self.text[offset..end].lines().enumerate() {
            let t = line.trim_start().trim_start_matches('-').trim_start();
            if let Some(v) = t.strip_prefix("name:") {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if v == name {
                    return Some(start + i);
                }
            }
        }
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "name: hello-world\ndescription: \"x\"\ntasks:\n  - name: say_hello\n    type: shell\n    config:\n      command: \"echo\"\n      args: [\"Hello\"]\n  - name: show_date\n    type: shell\n    depends_on: [say_hello]\n    config:\n      command: \"date\"\n";

    #[test]
    fn parses_the_user_guide_hello_world() {
        let wf = parse_workflow(HELLO, "hello.yaml").unwrap();
        assert_eq!(wf.name, "hello-world");
        assert_eq!(wf.tasks.len(), 2);
        assert_eq!(wf.tasks[1].depends_on, vec!["say_hello"]);
        assert_eq!(wf.config, WorkflowConfig::default());
        match &wf.tasks[0].config {
            TaskConfig::Shell(s) => assert_eq!(s.args.as_deref(), Some(&["Hello".to_string()][..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn task_lines_point_at_each_name() {
        for nl in ["\n", "\r\n"] {
            let text = [
                "name: w",
                "tasks:",
                "  - name: a",
                "    type: shell",
                "  # a comment",
                "  - type: shell",
                "    config: {command: x}",
                "    name: \"b\"",
                "  - name: c",
                "config:",
                "  max_parallel: 2",
            ]
            .join(nl);
            let lines = TaskLines::new(&text, "tasks");
            assert_eq!(lines.line_of(0, "a"), Some(3));
            assert_eq!(lines.line_of(1, "b"), Some(8));
            assert_eq!(lines.line_of(2, "c"), Some(9));
            // A name not found falls back to the item's first line.
            assert_eq!(lines.line_of(1, "zz"), Some(6));
            assert_eq!(lines.line_of(3, "d"), None);
        }
    }

    #[test]
    fn unknown_field_names_the_field_with_line() {
        let text = "name: x\ntasks:\n  - name: a\n    type: shell\n    bogus: 1\n    config: {command: echo}\n";
        let err = parse_workflow(text, "w.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bogus"), "{msg}");
        assert!(msg.starts_with("w.yaml:"), "{msg}");
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    }

    #[test]
    fn unknown_config_field_names_task_and_field() {
        let text = "name: x\ntasks:\n  - name: a\n    type: shell\n    config:\n      command: echo\n      colour: red\n";
        let msg = parse_workflow(text, "w.yaml").unwrap_err().to_string();
        assert!(msg.contains("task 'a'") && msg.contains("colour"), "{msg}");
        assert!(msg.contains("w.yaml:3"), "{msg}");
    }

    /// The digest `run --resume` compares: blind to comments, not to a changed command.
    #[test]
    fn the_digest_follows_the_definition_not_the_comments() {
        let text =
            "name: d\ntasks:\n  - name: a\n    type: shell\n    config: {command: \"echo 1\"}\n";
        let digest = |t: &str| parse_workflow(t, "d.yaml").unwrap().digest();
        assert_eq!(digest(text), digest(text));
        assert_eq!(digest(text), digest(&format!("{text}# a note\n")));
        assert_ne!(digest(text), digest(&text.replace("echo 1", "echo 2")));
        assert_eq!(digest(text).len(), 16);
    }

    /// Every duration of a workflow file takes seconds or the syntax `jitter` takes.
    #[test]
    fn durations_take_seconds_or_units_everywhere() {
        let text = "name: x\nconfig: {timeout_default: 2h}\ntasks:\n  - name: a\n    type: shell\n    timeout: 1m30s\n    config: {command: ls}\n  - name: b\n    type: shell\n    timeout: 45\n    config: {command: ls}\n";
        let wf = parse_workflow(text, "w.yaml").unwrap();
        assert_eq!(wf.config.timeout_default, Some(7200));
        assert_eq!(wf.tasks[0].timeout, Some(90));
        assert_eq!(wf.tasks[1].timeout, Some(45));
        let bad = "name: x\ntasks:\n  - name: a\n    type: shell\n    timeout: soon\n    config: {command: ls}\n";
        let msg = parse_workflow(bad, "w.yaml").unwrap_err().to_string();
        assert!(msg.contains("invalid duration 'soon'"), "{msg}");
        let range = "name: x\ntasks:\n  - name: a\n    type: shell\n    timeout: 2d\n    config: {command: ls}\n";
        let msg = parse_workflow(range, "w.yaml").unwrap_err().to_string();
        assert!(msg.contains("timeout: 172800 is out of range"), "{msg}");
    }

    /// Messages speak of what the file should hold, not of PicoFlow's Rust types.
    #[test]
    fn type_errors_name_no_rust_types() {
        for (text, says) in [
            (
                "- a\n- b\n",
                "expected a workflow: a mapping with `name` and `tasks`",
            ),
            (
                "name: x\nconfig: {max_parallel: many}\ntasks: []\n",
                "expected a whole number",
            ),
            ("name: x\ntasks: [1]\n", "expected a task: a mapping with"),
            ("name: x\nconfig: 3\ntasks: []\n", "expected a mapping"),
        ] {
            let msg = parse_workflow(text, "w.yaml").unwrap_err().to_string();
            assert!(msg.contains(says), "{text}: {msg}");
            assert!(!msg.contains("Raw") && !msg.contains("i64"), "{msg}");
        }
    }

    #[test]
    fn working_dir_alias_and_ranges() {
        let text = "name: x\nconfig: {max_parallel: 0}\ntasks:\n  - name: a\n    type: shell\n    retry: 101\n    config: {command: ls, working_dir: /tmp}\n";
        let msg = parse_workflow(text, "w.yaml").unwrap_err().to_string();
        assert!(
            msg.contains("config.max_parallel: 0 is out of range 1-256"),
            "{msg}"
        );
        assert!(
            msg.contains("line 4: task 'a': retry: 101 is out of range 0-100"),
            "{msg}"
        );
        let ok = "name: x\ntasks:\n  - name: a\n    type: shell\n    config: {command: ls, working_dir: /tmp}\n";
        let wf = parse_workflow(ok, "w.yaml").unwrap();
        match &wf.tasks[0].config {
            TaskConfig::Shell(s) => {
                assert_eq!(s.workdir.as_deref(), Some(std::path::Path::new("/tmp")))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_method_is_case_insensitive() {
        let text = "name: x\ntasks:\n  - name: a\n    type: http\n    config: {url: \"http://127.0.0.1:1/\", method: get, headers: {Authorization: \"Bearer ${T}\"}, body: {a: 1}}\n";
        let wf = parse_workflow(text, "w.yaml").unwrap();
        match &wf.tasks[0].config {
            TaskConfig::Http(h) => {
                assert_eq!(h.method, "GET");
                assert_eq!(h.timeout, 30);
                assert_eq!(h.body, Some(serde_json::json!({"a": 1})));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse_workflow("name: x\ntasks: [\n", "bad.yaml").unwrap_err();
        match err {
            Error::Parse { line, column, .. } => {
                assert!(line.is_some() && column.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    /// An unclosed quote was reported at the end of the file (the parser's problem position)
    /// instead of the line where the quoted text begins.
    #[test]
    fn an_unclosed_quote_is_reported_where_it_opens() {
        let mut text = String::from("name: q\ntasks:\n");
        for i in 0..5 {
            let command = if i == 1 { "\"abc" } else { "/bin/true" };
            text.push_str(&format!(
                "  - name: t{i}\n    type: shell\n    config:\n      command: {command}\n"
            ));
        }
        match parse_workflow(&text, "w.yaml").unwrap_err() {
            Error::Parse {
                line,
                column,
                message,
                ..
            } => {
                assert_eq!((line, column), (Some(10), Some(16)), "{message}");
                assert!(message.contains("quoted scalar"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A tab in the indentation is reported at the tab, with what was being read.
    #[test]
    fn a_tab_is_reported_at_its_line() {
        let text = "name: t\ntasks:\n  - name: a\n    type: shell\n\tconfig:\n      command: x\n";
        match parse_workflow(text, "w.yaml").unwrap_err() {
            Error::Parse { line, message, .. } => {
                assert_eq!(line, Some(5), "{message}");
                assert!(message.contains("tab"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A `config:` one column left of its task's other keys was reported as the task missing
    /// `config` at the task's first line; the YAML itself is invalid two lines further down.
    #[test]
    fn a_mis_indented_key_is_a_syntax_error_at_its_own_line() {
        let text =
            "name: t\ntasks:\n  - name: a\n    type: shell\n   config:\n      command: \"true\"\n";
        match parse_workflow(text, "w.yaml").unwrap_err() {
            Error::Parse { line, message, .. } => {
                assert_eq!(line, Some(5), "{message}");
                assert!(!message.contains("missing field"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn custom_types_keep_their_config() {
        let text = "name: x\ntasks:\n  - name: a\n    type: mything\n    config: {speed: 3}\n";
        let wf = parse_workflow(text, "w.yaml").unwrap();
        assert_eq!(
            wf.tasks[0].config,
            TaskConfig::Custom(serde_json::json!({"speed": 3}))
        );
    }
}
