//! What a finished attempt publishes for its dependents: the values it wrote to the file
//! `$PICOFLOW_OUTPUT` names, then those its `outputs:` selectors take from its output.
//!
//! [`read_output_file`] blocks and runs on the execution's file thread (`files.rs`);
//! [`collect`] works on what it read, on the engine's thread.

use std::collections::BTreeMap;
use std::path::Path;

use crate::executor::{Outcome, TaskOutput, OUTPUT_VAR};
use crate::model::Task;

/// The contents of an attempt's output file, which is removed once read; `None` when the
/// attempt wrote none (or it cannot be read). Not through a link: the file is read as the
/// engine's user.
pub(super) fn read_output_file(file: &Path) -> Option<Vec<u8>> {
    let mut f = crate::private::open_read(file).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
    let _ = std::fs::remove_file(file);
    Some(bytes)
}

/// The values an attempt of `task` that ended as `out` says, with `written` what it wrote to
/// its output file. Only a successful attempt publishes; a problem with its values fails it,
/// for good (a retry would write the same).
pub(super) fn collect(
    task: &Task,
    written: Option<&[u8]>,
    out: &mut TaskOutput,
) -> Option<BTreeMap<String, String>> {
    if out.outcome != Outcome::Success {
        return None;
    }
    let mut values = BTreeMap::new();
    let result = (|| {
        if let Some(bytes) = written {
            values = crate::flow::parse_output_file(&String::from_utf8_lossy(bytes))
                .map_err(|e| format!("${OUTPUT_VAR}: {e}"))?;
        }
        if !task.outputs.is_empty() {
            let stdout = String::from_utf8_lossy(&out.stdout.data);
            let stderr = String::from_utf8_lossy(&out.stderr.data);
            let produced = crate::flow::Produced {
                stdout: &stdout,
                stderr: &stderr,
                exit_code: out.exit_code,
                http: task.kind == "http",
            };
            crate::flow::select(&task.outputs, &produced, &mut values)?;
        }
        crate::flow::check_size(&values)
    })();
    match result {
        Ok(()) => (!values.is_empty()).then_some(values),
        Err(e) => {
            out.outcome = Outcome::Failed;
            out.retryable = false;
            out.error = Some(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Capture;

    fn task(outputs: &str) -> Task {
        let text = format!(
            "name: w\ntasks:\n  - {{name: t, type: shell, {outputs} config: {{command: \"true\"}}}}\n"
        );
        let wf = crate::yaml::parse_workflow(&text, "w.yaml").unwrap();
        wf.tasks[0].clone()
    }

    fn ended(outcome: Outcome, stdout: &str) -> TaskOutput {
        TaskOutput {
            outcome,
            exit_code: Some(0),
            stdout: Capture {
                data: stdout.as_bytes().to_vec(),
                ..Capture::default()
            },
            stderr: Capture::default(),
            error: None,
            retryable: true,
        }
    }

    #[test]
    fn a_successful_attempt_publishes_its_file_and_its_selectors() {
        let mut out = ended(Outcome::Success, "42\n");
        let values = collect(&task("outputs: {n: stdout},"), Some(b"a=1\n"), &mut out);
        let values = values.expect("values");
        assert_eq!(values.get("a").map(String::as_str), Some("1"));
        assert!(values.contains_key("n"), "{values:?}");
        assert_eq!(out.outcome, Outcome::Success);
    }

    #[test]
    fn only_a_successful_attempt_publishes() {
        for outcome in [Outcome::Failed, Outcome::Timeout, Outcome::Cancelled] {
            let mut out = ended(outcome, "42\n");
            assert_eq!(collect(&task(""), Some(b"a=1\n"), &mut out), None);
            assert_eq!(out.outcome, outcome);
        }
        let mut out = ended(Outcome::Success, "");
        assert_eq!(collect(&task(""), None, &mut out), None);
    }

    #[test]
    fn an_output_file_that_does_not_parse_fails_the_attempt_for_good() {
        let mut out = ended(Outcome::Success, "");
        assert_eq!(
            collect(&task(""), Some(b"no equals sign\n"), &mut out),
            None
        );
        assert_eq!(out.outcome, Outcome::Failed);
        assert!(!out.retryable);
        let error = out.error.unwrap_or_default();
        assert!(error.starts_with("$PICOFLOW_OUTPUT: "), "{error}");
    }

    #[test]
    fn the_output_file_is_removed_once_read() {
        let dir = std::env::temp_dir().join(format!("pf-out-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.1");
        assert_eq!(read_output_file(&file), None);
        std::fs::write(&file, "a=1\n").unwrap();
        assert_eq!(read_output_file(&file).as_deref(), Some(&b"a=1\n"[..]));
        assert!(!file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
