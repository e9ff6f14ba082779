//! Data between tasks: outputs, the values `${…}` reads from a run, conditions' inputs, loop
//! items and the checks of all of them.
//!
//! * A task publishes named values: a shell task writes `KEY=VALUE` lines (or `KEY<<EOF` …
//!   `EOF` blocks) to the file named by `$PICOFLOW_OUTPUT`; any task can publish parts of
//!   its result with `outputs: {name: selector}` (`stdout`, `stdout.a.b` on JSON output,
//!   `stderr`, `exit_code`; for HTTP `body`, `body.a.b` and `status`). At most
//!   [`OUTPUT_LIMIT`] bytes per task.
//! * Dependents read them as `${tasks.NAME.outputs.KEY}`, and a task's result as
//!   `${tasks.NAME.status}`. `${workflow.name}` and `${execution.id}` are always set;
//!   handlers also get `${execution.status}` and `${failed_tasks}`; a loop's tasks `${item}`
//!   and `${item_index}`.
//! * In a command line run by `/bin/sh -c` such a reference is handed to the shell as an
//!   environment variable (`PICOFLOW_REF_1` …): the value is never pasted into shell text,
//!   so no value can inject commands.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::events::TaskState;
use crate::expand::Vars;
use crate::expr::Expr;
use crate::model::{Items, Task, TaskConfig, Workflow};

/// Largest total size of one task's published values (names and values), in bytes.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Largest number of items a loop may have.
pub const MAX_ITEMS: usize = 10_000;

/// Whether `name` is a value PicoFlow provides during a run (rather than an environment
/// variable or a configured value).
pub(crate) fn is_run_value(name: &str) -> bool {
    name.starts_with("tasks.")
        || name.starts_with("workflow.")
        || name.starts_with("execution.")
        || matches!(name, "failed_tasks" | "item" | "item_index")
}

/// Checks, before anything is recorded, the run directory an engine will use (see
/// [`Engine::with_run_dir`](crate::Engine::with_run_dir)): one that exists must be a
/// directory of the effective user with mode 0700, not a symbolic link. One that does not
/// exist yet is fine (the first execution creates it); nothing is created here.
/// `picoflow run` and the daemon call it before they open the state file, so that a run they
/// would refuse leaves no state file behind.
pub fn check_run_dir(run_dir: &Path) -> crate::Result<()> {
    match crate::private::check_dir(run_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| crate::Error::io(run_dir, e)),
    }
}

/// Creates the private directory (0700) of an execution's output files.
///
/// With a run directory (`run_dir`; the CLI and the daemon use `<state file>.run`), it is
/// `<run_dir>/<execution id>`: the run directory is created 0700, or, when it exists,
/// checked with `lstat` — a directory, not a symbolic link, owned by the effective user,
/// mode 0700 — and refused otherwise; an execution directory a crash left there is removed
/// and made anew. So no other user can plant files or links where tasks write and the
/// engine reads.
///
/// Without one (a library user who set none), it is a new directory with an unguessable
/// name in the system's temporary directory, made by `mkdir`, which fails on any existing
/// name (links included).
pub(crate) fn create_output_dir(
    run_dir: Option<&Path>,
    execution_id: &str,
) -> crate::Result<PathBuf> {
    let private = |d: &Path| crate::private::private_dir(d).map_err(|e| crate::Error::io(d, e));
    if let Some(base) = run_dir {
        private(base)?;
        // Absolute: a task may change its working directory before writing to the file.
        let dir = std::path::absolute(base)
            .map_err(|e| crate::Error::io(base, e))?
            .join(execution_id);
        // One a crash left holds files of attempts that ran to no end: a resumed execution
        // starts with an empty one.
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(crate::Error::io(&dir, e))
            }
            _ => {}
        }
        private(&dir)?;
        return Ok(dir);
    }
    loop {
        let dir = std::env::temp_dir().join(format!(
            "picoflow-{execution_id}-{}",
            crate::events::new_id()
        ));
        match private(&dir) {
            Err(e) if dir.symlink_metadata().is_ok() => {
                tracing::debug!(error = %e, "output directory name taken; drawing another");
            }
            other => return other.map(|()| dir),
        }
    }
}

/// What one finished task left for the others.
#[derive(Debug, Clone)]
struct Published {
    status: TaskState,
    outputs: BTreeMap<String, String>,
}

/// The values of one run that `${…}` and conditions read.
#[derive(Debug, Default)]
pub(crate) struct RunValues {
    workflow: String,
    execution_id: String,
    status: Option<String>,
    failed_tasks: Option<String>,
    tasks: HashMap<String, Published>,
}

impl RunValues {
    pub(crate) fn new(workflow: &str, execution_id: &str) -> RunValues {
        RunValues {
            workflow: workflow.to_string(),
            execution_id: execution_id.to_string(),
            ..RunValues::default()
        }
    }

    /// Records how a task ended and what it published.
    pub(crate) fn publish(
        &mut self,
        task: &str,
        status: TaskState,
        outputs: Option<BTreeMap<String, String>>,
    ) {
        self.tasks.insert(
            task.to_string(),
            Published {
                status,
                outputs: outputs.unwrap_or_default(),
            },
        );
    }

    /// Sets the values handlers see: the execution's status and its failed tasks.
    pub(crate) fn finish(&mut self, status: &str, failed_tasks: &[&str]) {
        self.status = Some(status.to_string());
        self.failed_tasks = Some(failed_tasks.join(","));
    }

    /// The value of a run reference (see [`is_run_value`]); `None` if it has none (yet).
    pub(crate) fn get(&self, name: &str, item: Option<(&str, usize)>) -> Option<String> {
        match name {
            "workflow.name" => return Some(self.workflow.clone()),
            "execution.id" => return Some(self.execution_id.clone()),
            "execution.status" => {
                return Some(self.status.clone().unwrap_or_else(|| "running".into()))
            }
            "failed_tasks" => return self.failed_tasks.clone(),
            "item" => return item.map(|(v, _)| v.to_string()),
            "item_index" => return item.map(|(_, i)| i.to_string()),
            _ => {}
        }
        let (task, what) = split_task_reference(name)?;
        let p = self.tasks.get(task)?;
        match what {
            TaskField::Status => Some(p.status.as_str().to_string()),
            TaskField::Output(key) => p.outputs.get(key).cloned(),
        }
    }

    /// The `${…}` values for one attempt of `task`: `base` plus the run values the task
    /// references (including those a `/bin/sh -c` command line reads as `PICOFLOW_REF_n`).
    pub(crate) fn vars_for(
        &self,
        base: &Vars,
        refs: &[String],
        item: Option<(&str, usize)>,
    ) -> Vars {
        let mut vars = base.clone();
        for name in refs {
            if let Some(v) = self.get(name, item) {
                vars.set(name.clone(), v);
            }
        }
        vars
    }

    /// Evaluates a task's `when` condition.
    pub(crate) fn condition(&self, expr: &Expr, base: &Vars, item: Option<(&str, usize)>) -> bool {
        expr.eval(&|name: &str| match is_run_value(name) {
            true => self.get(name, item),
            false => base.get(name),
        })
    }

    /// The items of a loop: the list itself, or the referenced value split into lines (or
    /// read as a JSON array).
    pub(crate) fn items(&self, items: &Items, base: &Vars) -> Result<Vec<String>, String> {
        let list = match items {
            Items::List(l) => l.clone(),
            Items::From(text) => {
                let value = crate::expand::expand_with(text, |n| match is_run_value(n) {
                    true => self.get(n, None),
                    false => base.get(n),
                });
                split_items(&value)?
            }
        };
        if list.len() > MAX_ITEMS {
            return Err(format!(
                "iterate_over: {} items, at most {MAX_ITEMS}",
                list.len()
            ));
        }
        Ok(list)
    }
}

/// A JSON array (of strings, numbers or booleans) or one item per non-empty line.
fn split_items(value: &str) -> Result<Vec<String>, String> {
    match crate::expr::json_list(value) {
        Some(list) => list.map_err(|e| format!("iterate_over: {e}")),
        None => Ok(value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
    }
}

enum TaskField<'a> {
    Status,
    Output(&'a str),
}

/// Splits `tasks.NAME.status` / `tasks.NAME.outputs.KEY`.
fn split_task_reference(name: &str) -> Option<(&str, TaskField<'_>)> {
    let rest = name.strip_prefix("tasks.")?;
    if let Some(task) = rest.strip_suffix(".status") {
        return Some((task, TaskField::Status));
    }
    let (task, key) = rest.split_once(".outputs.")?;
    (!key.contains('.')).then_some((task, TaskField::Output(key)))
}

/// Reads the `KEY=VALUE` lines and `KEY<<DELIMITER` … `DELIMITER` blocks a task wrote.
pub(crate) fn parse_output_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = if let Some((key, delimiter)) = line.split_once("<<") {
            let delimiter = delimiter.trim();
            if delimiter.is_empty() {
                return Err(format!("line {}: '{key}<<' needs a delimiter", n + 1));
            }
            let mut block: Vec<&str> = Vec::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == delimiter => break,
                    Some((_, l)) => block.push(l),
                    None => {
                        return Err(format!(
                            "line {}: no closing '{delimiter}' for '{key}'",
                            n + 1
                        ))
                    }
                }
            }
            (key, block.join("\n"))
        } else if let Some((key, value)) = line.split_once('=') {
            (key, value.to_string())
        } else {
            return Err(format!(
                "line {}: expected KEY=VALUE or KEY<<DELIMITER",
                n + 1
            ));
        };
        if !is_output_name(key) {
            return Err(format!(
                "line {}: '{key}' is not a valid output name (letters, digits and '_', not starting with a digit)",
                n + 1
            ));
        }
        values.insert(key.to_string(), value);
    }
    Ok(values)
}

/// Whether `name` may name an output: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 bytes.
pub(crate) fn is_output_name(name: &str) -> bool {
    let mut b = name.bytes();
    name.len() <= 64
        && matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// What an attempt produced, for the selectors of `outputs:`.
pub(crate) struct Produced<'a> {
    pub(crate) stdout: &'a str,
    pub(crate) stderr: &'a str,
    pub(crate) exit_code: Option<i32>,
    /// The task is an HTTP request (stdout is the body, stderr the status line).
    pub(crate) http: bool,
}

/// Applies a task's `outputs:` selectors.
pub(crate) fn select(
    selectors: &[(String, String)],
    produced: &Produced<'_>,
    into: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, selector) in selectors {
        let value = select_one(selector, produced)
            .map_err(|e| format!("outputs.{name}: '{selector}': {e}"))?;
        into.insert(name.clone(), value);
    }
    Ok(())
}

/// What a selector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Stdout,
    Stderr,
    ExitCode,
    /// The HTTP status.
    Status,
}

/// Splits a selector into what it reads, its name and the JSON path after it (`body.a.b`).
fn parse_selector(selector: &str, http: bool) -> Result<(Source, &str, Option<&str>), String> {
    let (head, path) = match selector.split_once('.') {
        Some((h, rest)) => (h, Some(rest)),
        None => (selector, None),
    };
    let source = match (head, http, path) {
        ("stdout", _, _) | ("body", true, _) => Source::Stdout,
        ("stderr", false, _) => Source::Stderr,
        ("exit_code", _, None) => Source::ExitCode,
        ("status", true, None) => Source::Status,
        _ => return Err(selector_help(http)),
    };
    Ok((source, head, path))
}

fn select_one(selector: &str, p: &Produced<'_>) -> Result<String, String> {
    let (source, head, path) = parse_selector(selector, p.http)?;
    let source = match source {
        Source::Stdout => p.stdout,
        Source::Stderr => p.stderr,
        Source::ExitCode => return Ok(p.exit_code.map(|c| c.to_string()).unwrap_or_default()),
        // The HTTP executor's stderr is the status line: `HTTP/1.1 200 OK`.
        Source::Status => {
            return p
                .stderr
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
                .ok_or_else(|| "no HTTP status was received".to_string())
        }
    };
    let Some(path) = path else {
        return Ok(source.strip_suffix('\n').unwrap_or(source).to_string());
    };
    let json: serde_json::Value =
        serde_json::from_str(source).map_err(|e| format!("the {head} is not JSON: {e}"))?;
    let mut at = &json;
    for field in path.split('.') {
        at = match at {
            serde_json::Value::Object(m) => m.get(field),
            serde_json::Value::Array(a) => field.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("the {head} has no field '{path}'"))?;
    }
    Ok(match at {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn selector_help(http: bool) -> String {
    match http {
        true => "expected status, body, body.FIELD.SUB… or exit_code".into(),
        false => "expected stdout, stdout.FIELD.SUB… (JSON output), stderr or exit_code".into(),
    }
}

/// Total size of published values, checked against [`OUTPUT_LIMIT`].
pub(crate) fn check_size(values: &BTreeMap<String, String>) -> Result<(), String> {
    let size: usize = values.iter().map(|(k, v)| k.len() + v.len()).sum();
    match size > OUTPUT_LIMIT {
        true => Err(format!(
            "outputs: {size} bytes, at most {OUTPUT_LIMIT} per task (pass larger data in a file)"
        )),
        false => Ok(()),
    }
}

/// The text fields of a task in which `${…}` is expanded (or, for `/bin/sh -c`, handed over).
pub(crate) fn texts(task: &Task) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    match &task.config {
        TaskConfig::Shell(c) => {
            out.push(Cow::Borrowed(&c.command));
            out.extend(c.args.iter().flatten().map(|a| Cow::Borrowed(a.as_str())));
            out.extend(c.env.values().map(|v| Cow::Borrowed(v.as_str())));
            if let Some(w) = &c.workdir {
                out.push(w.to_string_lossy());
            }
        }
        TaskConfig::Ssh(c) => {
            out.extend([&c.host, &c.user, &c.command].map(|s| Cow::Borrowed(s.as_str())));
        }
        TaskConfig::Http(c) => {
            out.push(Cow::Borrowed(&c.url));
            out.extend(c.headers.iter().map(|(_, v)| Cow::Borrowed(v.as_str())));
            if let Some(b) = &c.body {
                json_strings(b, &mut out);
            }
        }
        TaskConfig::Docker(c) => {
            out.push(Cow::Borrowed(&c.image));
            out.extend(
                c.command
                    .iter()
                    .flatten()
                    .map(|a| Cow::Borrowed(a.as_str())),
            );
            out.extend(c.env.values().map(|v| Cow::Borrowed(v.as_str())));
            out.extend(c.volumes.iter().map(|v| Cow::Borrowed(v.as_str())));
            out.extend(
                c.workdir
                    .iter()
                    .chain(&c.user)
                    .map(|v| Cow::Borrowed(v.as_str())),
            );
        }
        TaskConfig::Custom(v) => json_strings(v, &mut out),
    }
    if let Some(Items::From(r)) = &task.iterate_over {
        out.push(Cow::Borrowed(r));
    }
    out
}

fn json_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<Cow<'a, str>>) {
    match v {
        serde_json::Value::String(s) => out.push(Cow::Borrowed(s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(Cow::Borrowed(k));
            json_strings(x, out)
        }),
        _ => {}
    }
}

/// The run values a task reads, for [`RunValues::vars_for`] (of the [`prepare`]d task).
pub(crate) fn run_references(task: &Task) -> Vec<String> {
    run_values_in(texts(task).iter().map(|t| t.as_ref()))
}

/// The run values a `/bin/sh -c` command line references, in order.
fn shell_references(task: &Task) -> Vec<String> {
    match &task.config {
        TaskConfig::Shell(c) if c.uses_shell() => run_values_in([c.command.as_str()]),
        _ => Vec::new(),
    }
}

/// The run values (see [`is_run_value`]) `${…}` names in `texts`, once each, in order.
fn run_values_in<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for text in texts {
        for name in Vars::referenced(text) {
            if is_run_value(&name) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The task as it runs: a `/bin/sh -c` command line's run references become environment
/// variables (`${tasks.a.outputs.k}` → `${PICOFLOW_REF_1}`, with `PICOFLOW_REF_1` set from
/// the value), so the shell sees values only as variables, never as code.
pub(crate) fn prepare(task: &Task) -> Cow<'_, Task> {
    let names = shell_references(task);
    if names.is_empty() {
        return Cow::Borrowed(task);
    }
    let mut t = task.clone();
    if let TaskConfig::Shell(c) = &mut t.config {
        for (i, name) in names.iter().enumerate() {
            let var = format!("PICOFLOW_REF_{}", i + 1);
            c.command = c
                .command
                .replace(&format!("${{{name}}}"), &format!("${{{var}}}"));
            c.env.insert(var, format!("${{{name}}}"));
        }
    }
    Cow::Owned(t)
}

/// A task's condition, trigger rule and loop, in words, for `validate` and `graph`.
pub(crate) fn notes(task: &Task) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(w) = &task.when {
        notes.push(format!("when: {w}"));
    }
    if task.run_if != crate::model::RunIf::AllSuccess {
        notes.push(format!("run_if: {}", task.run_if.as_str()));
    }
    match &task.iterate_over {
        Some(Items::List(l)) => notes.push(format!("for each of {} items", l.len())),
        Some(Items::From(r)) => notes.push(format!("for each item of {r}")),
        None => {}
    }
    notes
}

/// Checks the run references, conditions, rules and loops of a workflow: every problem, each
/// naming the task (and its line).
pub(crate) fn check(wf: &Workflow, ancestors: &dyn Fn(usize, usize) -> bool) -> Vec<String> {
    let mut problems = Vec::new();
    let index: HashMap<&str, usize> = wf
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // Each task with its index; handlers have none (every task has run before them).
    let all = wf
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (Some(i), t))
        .chain(wf.handlers.all().map(|(_, t)| (None, t)));
    for (index_of, task) in all {
        let handler = index_of.is_none();
        let at = task.label();
        let mut refs: Vec<String> = Vec::new();
        for text in texts(task) {
            refs.extend(Vars::referenced(&text));
        }
        if let Some(w) = &task.when {
            match Expr::parse(w) {
                Ok(e) => refs.extend(e.references().into_iter().map(str::to_string)),
                Err(msg) => problems.push(format!("{at}: when: {msg}")),
            }
        }
        for name in &refs {
            if !name.starts_with("tasks.") {
                if matches!(name.as_str(), "item" | "item_index") && task.iterate_over.is_none() {
                    problems.push(format!(
                        "{at}: ${{{name}}} is set only in a task with iterate_over"
                    ));
                }
                if (name.starts_with("workflow.") && name != "workflow.name")
                    || (name.starts_with("execution.")
                        && !matches!(name.as_str(), "execution.id" | "execution.status"))
                {
                    problems.push(format!(
                        "{at}: ${{{name}}}: unknown value (workflow.name, execution.id, execution.status)"
                    ));
                }
                continue;
            }
            let Some((other, _)) = split_task_reference(name) else {
                problems.push(format!(
                    "{at}: ${{{name}}}: expected tasks.NAME.outputs.KEY or tasks.NAME.status"
                ));
                continue;
            };
            match index.get(other) {
                None => problems.push(format!("{at}: ${{{name}}}: unknown task '{other}'")),
                Some(&o) if index_of.is_some_and(|i| !ancestors(o, i)) => problems.push(format!(
                    "{at}: ${{{name}}}: task '{other}' is not among the tasks this one depends on (directly or indirectly), so it may not have run yet"
                )),
                Some(_) => {}
            }
        }
        for (name, _) in &task.outputs {
            if !is_output_name(name) {
                problems.push(format!(
                    "{at}: outputs: '{name}' is not a valid output name (letters, digits and '_', not starting with a digit)"
                ));
            }
        }
        for (name, selector) in &task.outputs {
            if let Err(msg) = parse_selector(selector, task.kind == "http") {
                problems.push(format!("{at}: outputs.{name}: '{selector}': {msg}"));
            }
        }
        if task.run_if != crate::model::RunIf::AllSuccess && task.depends_on.is_empty() {
            problems.push(format!(
                "{at}: run_if: {} needs depends_on (the tasks whose results it looks at)",
                task.run_if.as_str()
            ));
        }
        if handler && (!task.depends_on.is_empty() || task.iterate_over.is_some()) {
            problems.push(format!(
                "{at}: a handler runs after the whole workflow: depends_on, on_success, on_failure and iterate_over are not allowed here"
            ));
        }
        if let Some(Items::From(r)) = &task.iterate_over {
            if Vars::referenced(r).is_empty() {
                problems.push(format!(
                    "{at}: iterate_over: '{r}' is neither a list nor a reference such as \"${{tasks.list.outputs.files}}\""
                ));
            }
        }
        // A written list's items are taken as written (`${HOME}` in one is text): a value of
        // the run in one, which cannot be known when the file is written, is a mistake.
        if let Some(Items::List(items)) = &task.iterate_over {
            let run_value = |i: &&String| Vars::referenced(i).iter().any(|n| is_run_value(n));
            if let Some(r) = items.iter().find(run_value) {
                problems.push(format!(
                    "{at}: iterate_over: the item '{r}' holds a value of the run, which a written list does not expand; write iterate_over: \"{r}\" to loop over the items of a value"
                ));
            }
        }
    }
    // Task names are checked with the graph; a handler's must differ from every other name.
    let mut names: HashMap<&str, &Task> = wf.tasks.iter().map(|t| (t.name.as_str(), t)).collect();
    for (_, h) in wf.handlers.all() {
        if let Some(first) = names.insert(&h.name, h) {
            problems.push(format!(
                "{}: name is used by another task or handler ({})",
                h.label(),
                first.label()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs were written to `/tmp/picoflow-<execution id>`, accepted when it existed: a
    /// local user who created it first (0777, with links named like the output files) had a
    /// task's outputs appended to a file of theirs choosing and read back as its values.
    #[test]
    fn output_dirs_others_could_prepare_are_refused() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let root = std::env::temp_dir().join(format!("pf-flow-{}", crate::new_id()));
        std::fs::create_dir(&root).unwrap();
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let run = root.join("state.redb.run");
        std::os::unix::fs::symlink(&elsewhere, &run).unwrap();
        let e = create_output_dir(Some(&run), "e1").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: is a symbolic link", run.display())),
            "{e}"
        );
        assert!(!elsewhere.join("e1").exists());
        std::fs::remove_file(&run).unwrap();
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = create_output_dir(Some(&run), "e1").unwrap_err().to_string();
        assert!(e.contains("has mode 0777, not 0700"), "{e}");
        // Ours: accepted; the execution's directory a crash left there is emptied.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let d = create_output_dir(Some(&run), "e1").unwrap();
        assert_eq!(d, run.join("e1"));
        let relative = PathBuf::from(format!("pf-flow-relative-{}", crate::new_id()));
        let rel = create_output_dir(Some(&relative), "e1").unwrap();
        assert!(
            rel.is_absolute() && rel.ends_with("e1"),
            "{}",
            rel.display()
        );
        std::fs::remove_dir_all(&relative).unwrap();
        std::fs::write(d.join("t.1"), "stale=1\n").unwrap();
        assert_eq!(create_output_dir(Some(&run), "e1").unwrap(), d);
        assert!(!d.join("t.1").exists());
        // Without a run directory: a new, unguessable one each time.
        let a = create_output_dir(None, "e1").unwrap();
        let b = create_output_dir(None, "e1").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            std::fs::symlink_metadata(&a).unwrap().mode() & 0o7777,
            0o700
        );
        for d in [a, b, root] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn output_file_lines_and_blocks() {
        let text = "A=1\nB=x=y\n\nMULTI<<EOF\nline 1\n$(rm -rf /)\n\"quoted\"\nEOF\nC=\n";
        let v = parse_output_file(text).unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "x=y");
        assert_eq!(v["MULTI"], "line 1\n$(rm -rf /)\n\"quoted\"");
        assert_eq!(v["C"], "");
        assert!(parse_output_file("nonsense\n")
            .unwrap_err()
            .contains("line 1: expected KEY=VALUE"));
        assert!(parse_output_file("X<<END\nnot closed\n")
            .unwrap_err()
            .contains("no closing 'END'"));
        assert!(parse_output_file("1BAD=x\n")
            .unwrap_err()
            .contains("not a valid output name"));
    }

    #[test]
    fn selectors_read_output_json_and_status() {
        let p = Produced {
            stdout: "{\"id\": 7, \"user\": {\"name\": \"ann\"}, \"list\": [\"a\", \"b\"]}\n",
            stderr: "HTTP/1.1 201 Created\n",
            exit_code: Some(0),
            http: true,
        };
        let sel = |s: &str| select_one(s, &p);
        assert_eq!(sel("status").unwrap(), "201");
        assert_eq!(sel("body.id").unwrap(), "7");
        assert_eq!(sel("body.user.name").unwrap(), "ann");
        assert_eq!(sel("body.list.1").unwrap(), "b");
        assert_eq!(sel("body.user").unwrap(), "{\"name\":\"ann\"}");
        assert!(sel("body.nope").unwrap_err().contains("no field 'nope'"));
        assert!(sel("stderr").is_err(), "HTTP tasks have no stderr selector");
        let shell = Produced {
            stdout: "plain\n",
            stderr: "warn",
            exit_code: Some(3),
            http: false,
        };
        assert_eq!(select_one("stdout", &shell).unwrap(), "plain");
        assert_eq!(select_one("exit_code", &shell).unwrap(), "3");
        assert!(select_one("stdout.x", &shell)
            .unwrap_err()
            .contains("not JSON"));
        assert!(select_one("status", &shell).is_err());
    }

    #[test]
    fn run_values_and_items() {
        let mut v = RunValues::new("wf", "e1");
        let outs: BTreeMap<String, String> =
            [("files".to_string(), "a.txt\n\n b.txt \n".to_string())].into();
        v.publish("list", TaskState::Success, Some(outs));
        assert_eq!(v.get("tasks.list.status", None).as_deref(), Some("success"));
        assert_eq!(v.get("tasks.list.outputs.nope", None), None);
        assert_eq!(v.get("workflow.name", None).as_deref(), Some("wf"));
        assert_eq!(v.get("item_index", Some(("x", 2))).as_deref(), Some("2"));
        let base = Vars::isolated();
        let items = v
            .items(&Items::From("${tasks.list.outputs.files}".into()), &base)
            .unwrap();
        assert_eq!(items, ["a.txt", "b.txt"]);
        assert_eq!(split_items("[\"x\", 2, true]").unwrap(), ["x", "2", "true"]);
        assert!(split_items("[{}]").is_err());
    }

    #[test]
    fn shell_command_lines_get_references_as_variables() {
        let wf = crate::yaml::parse_workflow(
            "name: w\ntasks:\n  - name: a\n    type: shell\n    config: {command: \"echo '${tasks.x.outputs.v}' $$ ${HOME} ${tasks.x.outputs.v}\"}\n",
            "w.yaml",
        )
        .unwrap();
        let t = prepare(&wf.tasks[0]);
        let TaskConfig::Shell(c) = &t.config else {
            panic!()
        };
        assert_eq!(
            c.command,
            "echo '${PICOFLOW_REF_1}' $$ ${HOME} ${PICOFLOW_REF_1}"
        );
        assert_eq!(c.env["PICOFLOW_REF_1"], "${tasks.x.outputs.v}");
        assert_eq!(run_references(&t), ["tasks.x.outputs.v"]);
    }
}
