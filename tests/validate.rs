//! `picoflow validate`, `init` and `graph` on real files (DAG-001, DAG-002, CLI-001).
//! Every validation rule has a bad fixture in `tests/fixtures/invalid/`; every example
//! workflow of the specification documents is a fixture in `tests/fixtures/spec/`.

mod common;

use std::path::PathBuf;

use common::{picoflow, run, stderr, stdout, TempDir};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

fn has_feature(name: &str) -> bool {
    let dir = TempDir::new("ver");
    let out = run(picoflow(dir.path()).arg("--version"));
    stdout(&out).contains(&format!("+{name}"))
}

/// (fixture, words the error must contain). All must exit 2.
const INVALID: &[(&str, &[&str])] = &[
    ("yaml-syntax.yaml", &["yaml-syntax.yaml:6:1"]),
    ("unknown-top-field.yaml", &[":2:1", "unknown field `owner`"]),
    (
        "unknown-task-field.yaml",
        &[":5:5", "unknown field `priority`"],
    ),
    (
        "unknown-config-field.yaml",
        &[":3", "task 'a'", "config", "unknown field `shell`"],
    ),
    ("wrong-type.yaml", &[":5:12", "retry", "invalid type"]),
    ("missing-config.yaml", &[":3:5", "missing field `config`"]),
    (
        "bad-workflow-name.yaml",
        &["name", "'my workflow'", "no spaces"],
    ),
    ("long-workflow-name.yaml", &["name", "1-64 characters"]),
    (
        "bad-task-name.yaml",
        &["line 3", "task 'bad name!'", "name must be"],
    ),
    (
        "long-description.yaml",
        &["description", "257 characters", "at most 256"],
    ),
    (
        "max-parallel-range.yaml",
        &["config.max_parallel", "out of range 1-256"],
    ),
    (
        "retry-default-range.yaml",
        &["config.retry_default", "101", "0-100"],
    ),
    (
        "timeout-range.yaml",
        &["task 'a'", "timeout", "86401", "0-86400"],
    ),
    ("no-tasks.yaml", &["at least one task"]),
    ("duplicate-task.yaml", &["task 'a'", "unique"]),
    (
        "unknown-dependency.yaml",
        &["task 'a'", "depends_on", "unknown task 'ghost'"],
    ),
    (
        "self-dependency.yaml",
        &["task 'a'", "cannot depend on itself"],
    ),
    ("cycle.yaml", &["cycle", "alpha -> beta -> gamma -> alpha"]),
    (
        "schedule-fields.yaml",
        &["schedule", "'0 2 * *'", "5 or 6 fields"],
    ),
    ("schedule-dow-range.yaml", &["schedule", "'0 0 9 * * 8'"]),
    ("unknown-timezone.yaml", &["Mars/Olympus"]),
    (
        "empty-command.yaml",
        &["task 'a'", "config.command", "empty"],
    ),
    ("ssh-port-range.yaml", &["task 'a'", "config.port", "70000"]),
    ("http-method.yaml", &["task 'a'", "config.method", "FETCH"]),
    ("http-url.yaml", &["task 'a'", "config.url", "http://"]),
    (
        "limits-values.yaml",
        &[
            "line 3: task 'a': limits.nice: 25 is out of range -20-19",
            "line 3: task 'a': limits.io: 'fast' is not one of",
            "line 3: task 'a': limits.memory: '100XB' is not a size",
        ],
    ),
    (
        "limits-on-http.yaml",
        &["line 3: task 'a': limits: only shell tasks take limits"],
    ),
    (
        "timeout-in-config.yaml",
        &[
            "task 'a'",
            "unknown field `timeout`",
            "`timeout` is a task field: move it out of `config`",
        ],
    ),
];

#[test]
fn every_rule_has_a_failing_fixture() {
    let dir = TempDir::new("invalid");
    let mut failures = Vec::new();
    for (name, words) in INVALID {
        let out = run(picoflow(dir.path())
            .arg("validate")
            .arg(fixture(&format!("invalid/{name}"))));
        let err = stderr(&out);
        if out.status.code() != Some(2) {
            failures.push(format!("{name}: exit {:?}", out.status.code()));
        }
        if !err.contains(name) {
            failures.push(format!("{name}: message does not name the file: {err}"));
        }
        for w in *words {
            if !err.contains(w) {
                failures.push(format!("{name}: message lacks {w:?}: {err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_is_listed() {
    let listed: Vec<&str> = INVALID.iter().map(|(n, _)| *n).collect();
    for e in std::fs::read_dir(fixture("invalid")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(listed.contains(&name.as_str()), "{name} has no expectation");
    }
}

#[test]
fn spec_examples_validate() {
    let dir = TempDir::new("spec");
    let all = has_feature("ssh") && has_feature("http");
    for e in std::fs::read_dir(fixture("spec")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let out = run(picoflow(dir.path()).arg("validate").arg(&path));
        let needs: Vec<&str> = ["ssh", "http"]
            .into_iter()
            .filter(|k| text.contains(&format!("type: {k}")) && !has_feature(k))
            .collect();
        // The first task whose type is missing is the one reported.
        match needs.first() {
            None => {
                assert_eq!(out.status.code(), Some(0), "{}", path.display());
                assert!(stdout(&out).contains("is valid"));
                assert!(stdout(&out).contains("Dependencies validated: No cycles detected"));
            }
            Some(_) => {
                assert!(!all);
                assert_eq!(out.status.code(), Some(2), "{}", path.display());
                assert!(
                    needs
                        .iter()
                        .any(|f| stderr(&out).contains(&format!("Cargo feature '{f}'"))),
                    "{}",
                    stderr(&out)
                );
            }
        }
    }
}

#[test]
fn missing_executor_names_the_feature() {
    let dir = TempDir::new("feat");
    for kind in ["ssh", "http"] {
        let out = run(picoflow(dir.path())
            .arg("validate")
            .arg(fixture("spec/guide-api-deployment.yaml")));
        if kind == "http" && !has_feature("http") {
            assert_eq!(out.status.code(), Some(2));
            assert!(stderr(&out).contains("feature 'http'"));
        }
    }
    let shell_only = run(picoflow(dir.path())
        .arg("validate")
        .arg(fixture("spec/guide-hello-world.yaml")));
    assert_eq!(shell_only.status.code(), Some(0));
}

#[test]
fn validate_output_matches_the_user_guide() {
    let dir = TempDir::new("out");
    let out = run(picoflow(dir.path())
        .arg("validate")
        .arg(fixture("spec/guide-parallel-example.yaml")));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        "Workflow 'parallel-example' is valid\nTasks: 4\nDependencies validated: No cycles detected\nMax parallel levels: 2\n"
    );
}

#[test]
fn a_directory_is_validated_as_a_whole() {
    let dir = TempDir::new("dir");
    dir.write(
        "a.yaml",
        "name: a\ntasks:\n  - {name: t, type: shell, config: {command: \"true\"}}\n",
    );
    dir.write(
        "b.yml",
        "name: b\ntasks:\n  - {name: t, type: shell, config: {command: \"true\"}}\n",
    );
    let out = run(picoflow(dir.path()).args(["validate", "."]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("Workflow 'a' is valid")
            && stdout(&out).contains("Workflow 'b' is valid")
    );
    // Each workflow under the file that holds it, and a summary.
    assert!(
        stdout(&out).contains("File: ./a.yaml\nWorkflow 'a' is valid"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).ends_with("2 files: 2 valid, 0 invalid\n"),
        "{}",
        stdout(&out)
    );
    dir.write("c.yaml", "name: c\ntasks: []\n");
    let out = run(picoflow(dir.path()).args(["validate", "."]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("c.yaml"));
    assert!(stdout(&out).contains("Workflow 'a' is valid"));
    assert!(
        stdout(&out).ends_with("3 files: 2 valid, 1 invalid\n"),
        "{}",
        stdout(&out)
    );
    // One name in two files is refused, as the daemon refuses it.
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    dir.write(
        "copy_of_a.yaml",
        "name: a\ntasks:\n  - {name: t, type: shell, config: {command: \"true\"}}\n",
    );
    let out = run(picoflow(dir.path()).args(["validate", "."]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("workflow name 'a' is also used by ./a.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_exits_5() {
    let dir = TempDir::new("missing");
    let out = run(picoflow(dir.path()).args(["validate", "nope.yaml"]));
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("nope.yaml"));
}

#[test]
fn init_writes_valid_templates_and_never_overwrites() {
    let dir = TempDir::new("init");
    for t in ["minimal", "shell", "ssh", "http", "full"] {
        let name = format!("wf-{t}");
        let out = run(picoflow(dir.path()).args(["init", &name, "--template", t]));
        assert_eq!(out.status.code(), Some(0));
        let file = dir.path().join(format!("{name}.yaml"));
        assert!(file.exists());
        let v = run(picoflow(dir.path()).arg("validate").arg(&file));
        let text = std::fs::read_to_string(&file).unwrap();
        let needs_missing = (text.contains("type: ssh") && !has_feature("ssh"))
            || (text.contains("type: http") && !has_feature("http"));
        assert_eq!(
            v.status.code(),
            Some(if needs_missing { 2 } else { 0 }),
            "{t}"
        );
    }
    let before = std::fs::read_to_string(dir.path().join("wf-minimal.yaml")).unwrap();
    let again = run(picoflow(dir.path()).args(["init", "wf-minimal", "--template", "shell"]));
    assert_ne!(again.status.code(), Some(0));
    assert!(stderr(&again).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("wf-minimal.yaml")).unwrap(),
        before
    );
    let out = run(picoflow(dir.path()).arg("init"));
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.path().join("my-workflow.yaml").exists());
    // A name that reads as an option is refused before anything is written.
    let out = run(picoflow(dir.path()).args(["init", "--", "-dash"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("starts with '-'"), "{}", stderr(&out));
    assert!(!dir.path().join("-dash.yaml").exists());
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dir = TempDir::new("graph");
    let f = fixture("spec/guide-parallel-example.yaml");
    let out = run(picoflow(dir.path()).arg("graph").arg(&f));
    assert_eq!(out.status.code(), Some(0));
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph \"parallel-example\""));
    for dep in ["task_a", "task_b", "task_c"] {
        assert!(dot.contains(&format!("\"{dep}\" -> \"summary\"")), "{dot}");
    }
    let out = run(picoflow(dir.path())
        .arg("graph")
        .arg(&f)
        .args(["--format", "mermaid"]));
    assert!(stdout(&out).starts_with("flowchart LR"));
}

#[test]
fn version_lists_features_and_global_flags_work_anywhere() {
    let dir = TempDir::new("flags");
    let out = run(picoflow(dir.path()).arg("-V"));
    let v = stdout(&out);
    for f in ["ssh", "http", "metrics", "sqlite"] {
        assert!(
            v.contains(&format!("+{f}")) || v.contains(&format!("-{f}")),
            "{v}"
        );
    }
    let out = run(picoflow(dir.path())
        .args(["validate", "--log-level", "debug"])
        .arg(fixture("spec/guide-hello-world.yaml")));
    assert_eq!(out.status.code(), Some(0));
    let out = run(picoflow(dir.path()).args(["--log-level", "loud", "validate", "x.yaml"]));
    assert_eq!(out.status.code(), Some(4));
    let out = run(picoflow(dir.path()).args(["--bogus"]));
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn config_file_is_found_and_checked() {
    let dir = TempDir::new("cfg");
    dir.write("picoflow.toml", "log_level = \"nonsense\"\n");
    let out = run(picoflow(dir.path())
        .arg("validate")
        .arg(fixture("spec/guide-hello-world.yaml")));
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("picoflow.toml") && stderr(&out).contains("log_level"));
    // A flag beats the file.
    let out = run(picoflow(dir.path())
        .args(["--log-level", "warn", "validate"])
        .arg(fixture("spec/guide-hello-world.yaml")));
    assert_eq!(
        out.status.code(),
        Some(4),
        "the file itself is invalid and still reported"
    );
    dir.write(
        "picoflow.toml",
        "log_level = \"warn\"\n[execution]\nmax_parallel = 2\n",
    );
    let out = run(picoflow(dir.path())
        .arg("validate")
        .arg(fixture("spec/guide-hello-world.yaml")));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn validate_shows_the_next_fire_times_in_the_workflow_zone() {
    let dir = TempDir::new("next");
    let file = dir.path().join("nightly.yaml");
    std::fs::write(
        &file,
        "name: nightly\nschedule: \"30 2 * * 1-5\"\ntimezone: Europe/Berlin\ntasks:\n  - name: a\n    type: shell\n    config:\n      command: \"true\"\n",
    )
    .unwrap();
    let out = run(picoflow(dir.path()).arg("validate").arg(&file));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Schedule: 30 2 * * 1-5 (Europe/Berlin)"),
        "{text}"
    );
    let fires: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Next runs:"))
        .skip(1)
        .map(str::trim)
        .collect();
    assert_eq!(fires.len(), 3, "{text}");
    for f in fires {
        // Weekdays only, at 02:30 Berlin time (CET or CEST).
        assert!(f.contains(" 02:30:00 CE"), "{f}");
        let date = chrono::NaiveDate::parse_from_str(&f[..10], "%Y-%m-%d").unwrap();
        use chrono::Datelike;
        assert!(
            date.weekday().num_days_from_monday() < 5,
            "{f} is a weekend"
        );
    }
}

/// The fire times `validate` prints for a schedule, as dates.
fn fire_dates(schedule: &str) -> Result<Vec<chrono::NaiveDate>, String> {
    let dir = TempDir::new("dow");
    let file = dir.write(
        "w.yaml",
        &format!("name: w\nschedule: \"{schedule}\"\ntimezone: UTC\ntasks:\n  - name: a\n    type: shell\n    config:\n      command: \"true\"\n"),
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&file));
    if out.status.code() != Some(0) {
        return Err(stderr(&out));
    }
    Ok(stdout(&out)
        .lines()
        .skip_while(|l| !l.starts_with("Next runs:"))
        .skip(1)
        .map(|l| chrono::NaiveDate::parse_from_str(&l.trim()[..10], "%Y-%m-%d").unwrap())
        .collect())
}

#[test]
fn day_of_week_numbering_is_sunday_zero() {
    use chrono::{Datelike, Weekday};
    for s in ["0 0 9 * * 1", "0 9 * * 1", "0 9 * * MON"] {
        let d = fire_dates(s).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|d| d.weekday() == Weekday::Mon), "{s}: {d:?}");
    }
    for s in ["0 0 9 * * 0", "0 0 9 * * 7", "0 9 * * SUN"] {
        let d = fire_dates(s).unwrap();
        assert!(d.iter().all(|d| d.weekday() == Weekday::Sun), "{s}: {d:?}");
    }
    let d = fire_dates("0 9 * * 1-5").unwrap();
    assert!(
        d.iter().all(|d| d.weekday().num_days_from_monday() < 5),
        "{d:?}"
    );
    let err = fire_dates("0 0 9 * * 8").unwrap_err();
    assert!(err.contains("out of range 0-7"), "{err}");
}

/// A URL built from a variable is checked when the task runs, not by `validate`.
#[test]
fn a_url_from_a_variable_validates() {
    let dir = TempDir::new("url-var");
    let wf = dir.write(
        "hook.yaml",
        "name: hook\ntasks:\n  - name: notify\n    type: http\n    config:\n      url: \"${NOTIFICATION_WEBHOOK_URL}\"\n      method: POST\n",
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    if has_feature("http") {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    } else {
        // Without the feature the task type is what gets refused, never the URL.
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("feature 'http'"), "{}", stderr(&out));
    }
}

#[test]
fn docker_settings_are_checked_and_the_feature_named() {
    let dir = TempDir::new("docker-config");
    let bad = dir.write(
        "bad-docker.yaml",
        "name: bad\ntasks:\n  - name: ok\n    type: shell\n    config: {command: /bin/true}\n  - name: box\n    type: docker\n    config:\n      image: \"alpine 3\"\n      command: []\n      volumes: [\"data:/in\", \"relative/dir:/x\", \"/a:b\", \"/a:/b:rx\"]\n      pull: sometimes\n",
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&bad));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let msg = stderr(&out);
    for want in [
        "line 6: task 'box': config.image 'alpine 3' must be an image reference without spaces",
        "line 6: task 'box': config.command must list the program and its arguments",
        "config.volumes: 'relative/dir:/x' needs an absolute host path or a volume name",
        "config.volumes: '/a:b' needs an absolute path in the container",
        "config.volumes: '/a:/b:rx' ends in a mode other than ro or rw",
        "config.pull 'sometimes' is not one of never, missing, always",
    ] {
        assert!(msg.contains(want), "{want} missing in {msg}");
    }
    assert!(!msg.contains("'data:/in'"), "a named volume is fine: {msg}");
    let typo = dir.write(
        "typo.yaml",
        "name: typo\ntasks:\n  - name: box\n    type: docker\n    config:\n      image: alpine\n      ports: [\"80:80\"]\n",
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&typo));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown field `ports`"),
        "{}",
        stderr(&out)
    );

    let good = dir.write(
        "good-docker.yaml",
        "name: good\ntasks:\n  - name: box\n    type: docker\n    config:\n      image: registry.local:5000/backup:v2\n      command: [\"backup\", \"--to\", \"/out\"]\n      volumes: [\"/srv/out:/out\", \"cache:/cache:ro\"]\n      pull: missing\n",
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&good));
    if has_feature("docker") {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    } else {
        // A build without the feature names it.
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("rebuild with the Cargo feature 'docker'"),
            "{}",
            stderr(&out)
        );
    }
}

/// A run value in a shell arithmetic context (bash evaluates the value as an expression
/// there, and `a[$(cmd)]` in it runs `cmd`) is a warning naming the file, task and
/// reference; the workflow is still valid (exit 0). The same value used as data is not.
#[test]
fn a_run_value_in_shell_arithmetic_is_a_warning() {
    let dir = TempDir::new("arith");
    let wf = dir.write(
        "count.yaml",
        r#"name: count
tasks:
  - name: api
    type: shell
    outputs: {count: stdout}
    config: {command: "echo 3"}
  - name: check
    type: shell
    depends_on: [api]
    config:
      command: |
        if [[ "${tasks.api.outputs.count}" -gt 0 ]]; then echo some; fi
  - name: sum
    type: shell
    depends_on: [api]
    config:
      command: "echo $(( ${tasks.api.outputs.count} + 1 )); let n=${tasks.api.outputs.count}"
  - name: index
    type: shell
    depends_on: [api]
    iterate_over: [a, b]
    config:
      command: "a[${item_index}]=x; (( ${item} )); echo ${item}"
  - name: plain
    type: shell
    depends_on: [api]
    config:
      command: "echo \"${tasks.api.outputs.count}\" [ ${tasks.api.outputs.count} ] $$((1+2)) ${HOME}"
"#,
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("is valid"), "{}", stdout(&out));
    let err = stderr(&out);
    for want in [
        "count.yaml: task 'check': ${tasks.api.outputs.count} is in a shell arithmetic context ([[ … -gt … ]])",
        "count.yaml: task 'sum': ${tasks.api.outputs.count} is in a shell arithmetic context ($((…)))",
        "count.yaml: task 'sum': ${tasks.api.outputs.count} is in a shell arithmetic context (let)",
        "count.yaml: task 'index': ${item_index} is in a shell arithmetic context (array subscript)",
        "count.yaml: task 'index': ${item} is in a shell arithmetic context (((…)))",
        "case $v in ''|*[!0-9]*) exit 1;; esac",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("'plain'"), "{err}");
    assert!(!err.contains("'api'"), "{err}");
    assert_eq!(err.matches("warning:").count(), 5, "{err}");
}

/// `validate` shows the next runs as the daemon of this host will start them, with the
/// workflow's `jitter` applied (the stable per-host offset the daemon uses), and states the
/// bound and the offset. It used to print the bare cron times, ignoring `jitter:`.
#[test]
fn next_runs_include_the_jitter_the_daemon_applies() {
    let host = picoflow_lib::host_name();
    let bound = std::time::Duration::from_secs(3600);
    // A name whose offset on this host is not zero, so that the jitter shows.
    let name = (0..)
        .map(|i| format!("jittery-{i}"))
        .find(|n| !picoflow_lib::jitter_offset(&host, n, bound).is_zero())
        .unwrap();
    let delay = picoflow_lib::jitter_offset(&host, &name, bound).as_secs();
    let dir = TempDir::new("jitter");
    let file = dir.write(
        "w.yaml",
        &format!("name: {name}\nschedule: \"0 0 3 * * *\"\ntimezone: UTC\njitter: 1h\ntasks:\n  - name: a\n    type: shell\n    config:\n      command: \"true\"\n"),
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&file));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Jitter: below 3600s; on this host ({host}) every run starts {delay}s after its time"
        )),
        "{text}"
    );
    let want = format!("{:02}:{:02}:{:02} UTC", 3, delay / 60, delay % 60);
    let runs: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Next runs:"))
        .skip(1)
        .collect();
    assert_eq!(runs.len(), 3, "{text}");
    assert!(runs.iter().all(|l| l.ends_with(&want)), "{want}: {text}");
}
