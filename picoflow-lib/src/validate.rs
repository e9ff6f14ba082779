//! Loading and validating workflows (DAG-001, DAG-002).
//!
//! Validation reports every problem it can find at once, each naming the task and field.
//! Order of checks: YAML syntax and field types (with line and column), field formats and
//! ranges, names and dependencies, the schedule, cycles, and last whether this build has
//! an executor for every task `type` (`DECISIONS.md` 11: a missing feature is reported up
//! front, never mid-run).

use std::path::{Path, PathBuf};

use crate::dag::{Dag, DagError};
use crate::error::{Error, Result};
use crate::executor::{feature_for, Registry};
use crate::model::Workflow;
use crate::schedule::Schedule;

/// Parses and validates workflow YAML. `origin` names the source in messages.
pub fn parse_workflow(text: &str, origin: &str, registry: &Registry) -> Result<Workflow> {
    let wf = crate::yaml::parse_workflow(text, origin)?;
    validate_workflow(&wf, origin, registry)?;
    Ok(wf)
}

/// Reads, parses and validates a workflow file.
pub fn load_workflow(path: &Path, registry: &Registry) -> Result<Workflow> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_workflow(&text, &path.display().to_string(), registry)
}

/// Validates a workflow (parsed or built in code) and returns its task graph.
pub fn validate_workflow(wf: &Workflow, origin: &str, registry: &Registry) -> Result<Dag> {
    let mut problems = Vec::new();
    if wf.tasks.is_empty() {
        problems.push("tasks: at least one task is required".to_string());
    }
    if let Some(expr) = &wf.schedule {
        if let Err(msg) = Schedule::parse(expr, wf.timezone.as_deref()) {
            problems.push(format!("schedule: '{expr}': {msg}"));
        }
    } else if let Some(tz) = &wf.timezone {
        if let Err(msg) = Schedule::parse("0 0 0 * * *", Some(tz)) {
            problems.push(format!("timezone: {msg}"));
        }
    }
    let dag = match Dag::build(wf) {
        Ok(d) => Some(d),
        Err(DagError::Problems(p)) => {
            problems.extend(p);
            None
        }
        Err(DagError::Cycle(path)) => {
            if problems.is_empty() {
                return Err(Error::Cycle {
                    file: origin.to_string(),
                    path,
                });
            }
            problems.push(format!("dependency cycle: {}", path.join(" -> ")));
            None
        }
    };
    if let Some(dag) = &dag {
        problems.extend(crate::flow::check(wf, &|a, b| dag.is_ancestor(a, b)));
    }
    if !problems.is_empty() {
        return Err(Error::Invalid {
            file: origin.to_string(),
            problems,
        });
    }
    for task in wf.tasks.iter().chain(wf.handlers.all().map(|(_, t)| t)) {
        match registry.get(&task.kind) {
            None => {
                return Err(Error::MissingFeature {
                    file: origin.to_string(),
                    task: task.name.clone(),
                    kind: task.kind.clone(),
                    feature: feature_for(&task.kind),
                    known: registry.kinds(),
                })
            }
            Some(exec) => {
                if let Err(msg) = exec.check(task) {
                    problems.push(format!("task '{}': {msg}", task.name));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid {
            file: origin.to_string(),
            problems,
        });
    }
    Ok(dag.expect("no problems means the graph was built"))
}

/// Warnings that do not make a workflow invalid: each `${…}` run value (task outputs,
/// `${item}`, …) that a shell or ssh task's command uses in a shell
/// arithmetic context — `$((…))`, `((…))`, `[[ … ]]` with `-eq`, `-ne`, `-lt`, `-le`, `-gt`
/// or `-ge`, a `let` command, an array subscript `name[…]` — where bash evaluates the value
/// as an expression, so that a value `a[$(cmd)]` runs `cmd`. A text scan, not a shell
/// parser: it may miss a context (`declare -i`, `${s:${n}}`, a `bash -c` in `args`) or see
/// one in a quoted string; each warning names the file, task and reference.
pub fn shell_warnings(wf: &Workflow, origin: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for task in wf.tasks.iter().chain(wf.handlers.all().map(|(_, t)| t)) {
        let command = match &task.config {
            crate::model::TaskConfig::Shell(c) if c.args.is_none() => &c.command,
            crate::model::TaskConfig::Ssh(c) => &c.command,
            _ => continue,
        };
        for (name, context) in arithmetic_references(command) {
            warnings.push(format!(
                "{origin}: task '{}': ${{{name}}} is in a shell arithmetic context ({context}), \
                 where bash evaluates a value as an expression (a value such as a[$(cmd)] runs \
                 cmd); copy it to a variable and check it first: v=\"${{{name}}}\"; \
                 case $v in ''|*[!0-9]*) exit 1;; esac",
                task.name
            ));
        }
    }
    warnings
}

/// The run values `command` uses in a shell arithmetic context, with the context, once each.
fn arithmetic_references(command: &str) -> Vec<(String, String)> {
    let text = command.as_bytes();
    let mut spans: Vec<(usize, usize, String)> = Vec::new();
    // `$((…))` and `((…))`, parentheses counted.
    let mut k = 0;
    while let Some(at) = find(text, b"((", k) {
        let mut depth = 0usize;
        let mut end = text.len();
        for (j, &b) in text.iter().enumerate().skip(at) {
            match b {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let label = if at > 0 && text[at - 1] == b'$' {
            "$((…))"
        } else {
            "((…))"
        };
        spans.push((at, end, label.to_string()));
        k = end.max(at + 2);
    }
    // `[[ … ]]` with an arithmetic comparison.
    let mut k = 0;
    while let Some(at) = find(text, b"[[", k) {
        let end = find(text, b"]]", at + 2).unwrap_or(text.len());
        let inner = &command[at + 2..end];
        if let Some(op) = inner
            .split_whitespace()
            .find(|w| ["-eq", "-ne", "-lt", "-le", "-gt", "-ge"].contains(w))
        {
            spans.push((at, end, format!("[[ … {op} … ]]")));
        }
        k = end.max(at + 2);
    }
    // `let …` up to the end of its command.
    let mut k = 0;
    while let Some(at) = find(text, b"let", k) {
        k = at + 3;
        let starts = command[..at]
            .trim_end_matches([' ', '\t'])
            .chars()
            .last()
            .is_none_or(|c| "\n;&|({!".contains(c));
        if starts && text.get(at + 3).is_some_and(|b| b.is_ascii_whitespace()) {
            let end = text[at..]
                .iter()
                .position(|b| b"\n;&|".contains(b))
                .map_or(text.len(), |e| at + e);
            spans.push((at, end, "let".to_string()));
        }
    }
    // `name[…]`: an array subscript.
    for (at, _) in command.match_indices('[') {
        if at > 0
            && (text[at - 1].is_ascii_alphanumeric() || text[at - 1] == b'_')
            && text.get(at + 1) != Some(&b'[')
        {
            let end = find(text, b"]", at).unwrap_or(text.len());
            spans.push((at, end, "array subscript".to_string()));
        }
    }
    let mut found: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(b"$$") {
            i += 2;
            continue;
        }
        if text[i..].starts_with(b"${") {
            if let Some(len) = command[i + 2..].find('}') {
                let name = &command[i + 2..i + 2 + len];
                if crate::expand::is_var_name(name) && crate::flow::is_run_value(name) {
                    for (start, end, label) in &spans {
                        let hit = (name.to_string(), label.clone());
                        if *start < i && i < *end && !found.contains(&hit) {
                            found.push(hit);
                        }
                    }
                }
                i += 3 + len;
                continue;
            }
        }
        i += 1;
    }
    found
}

fn find(text: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    text.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The workflow files named by `path`: the file itself, or every `*.yaml` / `*.yml` file of a
/// directory (sorted by name).
pub fn workflow_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if (ext == "yaml" || ext == "yml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::NotFound(format!(
            "{}: no *.yaml or *.yml workflow files in this directory",
            path.display()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Dag> {
        parse_workflow(text, "t.yaml", &Registry::builtin())
            .map(|wf| crate::dag::Dag::build(&wf).unwrap())
    }

    #[test]
    fn cycle_error() {
        let text = "name: c\ntasks:\n  - {name: alpha, type: shell, depends_on: [gamma], config: {command: 'true'}}\n  - {name: beta, type: shell, depends_on: [alpha], config: {command: 'true'}}\n  - {name: gamma, type: shell, depends_on: [beta], config: {command: 'true'}}\n";
        let err = check(text).unwrap_err();
        assert!(matches!(err, Error::Cycle { .. }), "{err:?}");
        assert!(
            err.to_string().contains("alpha -> beta -> gamma -> alpha"),
            "{err}"
        );
    }

    #[test]
    fn custom_type_needs_registration() {
        let text = "name: c\ntasks:\n  - {name: a, type: mything, config: {}}\n";
        let err = check(text).unwrap_err();
        assert!(
            matches!(err, Error::MissingFeature { feature: None, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("unknown executor type 'mything'"), "{text}");
        // The types this build has, whichever features it was built with.
        let mut has = vec!["shell"];
        if cfg!(feature = "ssh") {
            has.push("ssh");
        }
        if cfg!(feature = "http") {
            has.push("http");
        }
        if cfg!(feature = "docker") {
            has.push("docker");
        }
        has.sort_unstable();
        assert!(
            text.ends_with(&format!("(this build has: {})", has.join(", "))),
            "{text}"
        );
    }

    #[test]
    fn run_values_in_arithmetic_are_found() {
        let found = |c: &str| -> Vec<String> {
            arithmetic_references(c)
                .into_iter()
                .map(|(n, l)| format!("{n} {l}"))
                .collect()
        };
        assert_eq!(
            found("[[ ${item} -ge 1 ]] && x=$(( (${item_index} + 1) * 2 )) ${item}"),
            ["item [[ … -ge … ]]", "item_index $((…))"]
        );
        assert_eq!(
            found("a[${item}]=1; let y=${item_index}+1; echo ${item_index}"),
            ["item array subscript", "item_index let"]
        );
        // Data, environment variables, `[ … ]`, a `[[` string test, `$$`: nothing.
        assert!(found("echo \"${item}\" $(( ${HOME} )) [ ${item} -gt 1 ] [[ ${item} == x ]] $${item} outlet ${item}").is_empty());
    }

    #[test]
    fn bad_schedule() {
        let text = "name: c\nschedule: \"0 0 25 * * *\"\ntasks:\n  - {name: a, type: shell, config: {command: 'true'}}\n";
        let err = check(text).unwrap_err();
        assert!(err.to_string().contains("schedule"), "{err}");
    }
}
