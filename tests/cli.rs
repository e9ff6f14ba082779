//! The command line's promises (CLI-001, CLI-002): the exit code table of the API reference,
//! the same in the README and in `picoflow --help`, and every code of it a user can provoke,
//! provoked by a real `picoflow` process.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{picoflow, run, stderr, stdout, wait_for, TempDir};

/// The lines of the README's fenced block that follows the line starting with `heading`.
fn readme_block(heading: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let at = readme
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README: no line starting with {heading:?}"));
    let rest = &readme[at..];
    let open = rest.find("```").expect("a fenced block after the heading");
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close].lines().map(String::from).collect()
}

/// The README's table and the one `picoflow --help` ends with are the same, line by line.
///
/// They used to disagree with the commands: `daemon stop --help` promised 1 for a daemon
/// that did not stop while it exited 8, and the top-level help had no table at all.
#[test]
fn the_readme_and_help_show_one_exit_code_table() {
    let out = run(picoflow(Path::new(".")).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    let at = help
        .find("Error codes:")
        .expect("--help lists the exit codes");
    let from_help: Vec<String> = help[at..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    let from_readme = readme_block("Exit codes");
    assert_eq!(from_help, from_readme);
    let codes: Vec<&str> = from_readme
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(codes, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    // The commands' own help uses the table's meanings.
    let stop = stdout(&run(
        picoflow(Path::new(".")).args(["daemon", "stop", "--help"])
    ));
    assert!(stop.contains("1 not running, 8 still running"), "{stop}");
    let start = stdout(&run(
        picoflow(Path::new(".")).args(["daemon", "start", "--help"])
    ));
    for code in [
        "1 another daemon",
        "2 an invalid workflow",
        "4 bad configuration",
        "5 a file not found",
        "6 the state",
        "7 the web UI",
    ] {
        assert!(start.contains(code), "{code}: {start}");
    }
}

const OK: &str = "name: ok\ntasks:\n  - {name: a, type: shell, config: {command: \"true\"}}\n";
const FAILS: &str =
    "name: fails\ntasks:\n  - {name: a, type: shell, retry: 0, config: {command: \"exit 3\"}}\n";
const CYCLE: &str = "name: cyc\ntasks:\n  - {name: a, type: shell, depends_on: [b], config: {command: \"true\"}}\n  - {name: b, type: shell, depends_on: [a], config: {command: \"true\"}}\n";

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Each exit code of the table that a user can provoke, by the commands that give it.
#[test]
fn every_exit_code_a_user_can_provoke() {
    let dir = TempDir::new("codes");
    let d = dir.path();
    dir.write("ok.yaml", OK);
    dir.write("fails.yaml", FAILS);
    dir.write("cycle.yaml", CYCLE);
    let cases: Vec<(i32, &str, Output)> = vec![
        (
            0,
            "valid file",
            run(picoflow(d).args(["validate", "ok.yaml"])),
        ),
        (
            1,
            "no daemon to show",
            run(picoflow(d).args(["daemon", "status"])),
        ),
        (
            1,
            "no daemon to stop",
            run(picoflow(d).args(["daemon", "stop"])),
        ),
        (
            2,
            "validate a cycle",
            run(picoflow(d).args(["validate", "cycle.yaml"])),
        ),
        (
            2,
            "daemon start with a cycle",
            run(picoflow(d).args(["daemon", "start", "cycle.yaml"])),
        ),
        (
            3,
            "a task fails",
            run(picoflow(d).args(["run", "fails.yaml"])),
        ),
        (
            4,
            "unknown option",
            run(picoflow(d).args(["history", "--colour"])),
        ),
        (
            4,
            "bad option value",
            run(picoflow(d).args(["history", "--format", "xml"])),
        ),
        (
            4,
            "daemon start without files",
            run(picoflow(d).args(["daemon", "start"])),
        ),
        (
            5,
            "validate a missing file",
            run(picoflow(d).args(["validate", "nope.yaml"])),
        ),
        (
            5,
            "no interrupted execution to resume",
            run(picoflow(d).args(["run", "--resume", "ok.yaml"])),
        ),
        (
            5,
            "no log to show",
            run(picoflow(d).args(["logs", "--workflow", "ok"])),
        ),
        (
            5,
            "daemon start with a missing file",
            run(picoflow(d).args(["daemon", "start", "nope.yaml"])),
        ),
    ];
    for (want, what, out) in &cases {
        assert_eq!(code(out), Some(*want), "{what}: {}", stderr(out));
    }

    // 4: a configuration file with a key PicoFlow does not know stops a daemon's start.
    let conf = TempDir::new("codes-conf");
    conf.write("ok.yaml", OK);
    conf.write("picoflow.toml", "[daemon]\ncolour = 1\n");
    let out = run(picoflow(conf.path()).args(["daemon", "start", "ok.yaml"]));
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));

    // 6: a state file that is not one.
    let broken = TempDir::new("codes-state");
    broken.write("picoflow.redb", &"not a state file\n".repeat(300));
    let out = run(picoflow(broken.path()).arg("history"));
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("state store"), "{}", stderr(&out));

    // 7: the web UI's port is taken (the `web` feature).
    let version = stdout(&run(picoflow(d).arg("--version")));
    if version.contains("+web") {
        let web = TempDir::new("codes-web");
        web.write("ok.yaml", OK);
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        web.write("picoflow.toml", &format!("[web]\nport = {port}\n"));
        let out = run(picoflow(web.path()).args(["daemon", "start", "--web", "ok.yaml"]));
        assert_eq!(code(&out), Some(7), "{}", stderr(&out));
    }

    // 8: `daemon stop --timeout 1` while the daemon lets a running task finish.
    let slow = TempDir::new("codes-stop");
    slow.write(
        "slow.yaml",
        "name: slow\nschedule: \"* * * * * *\"\ntasks:\n  - {name: t, type: shell, config: {command: \"echo started >> s.txt; sleep 30\"}}\n",
    );
    slow.write("picoflow.toml", "[daemon]\nshutdown_timeout_seconds = 5\n");
    let mut daemon = picoflow(slow.path())
        .args(["daemon", "start", "slow.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the task to start", || {
        slow.path().join("s.txt").exists()
    });
    let out = run(picoflow(slow.path()).args(["daemon", "stop", "--timeout", "1"]));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(code(&out), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not stop"), "{}", stderr(&out));

    // 9: SIGINT stops a run.
    dir.write(
        "long.yaml",
        "name: long\ntasks:\n  - {name: t, type: shell, config: {command: \"echo started >> l.txt; sleep 30\"}}\n",
    );
    let child = picoflow(d)
        .args(["run", "long.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the task to start", || {
        d.join("l.txt").exists()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = common::finish(child, "run long.yaml");
    assert_eq!(code(&out), Some(9));
}

/// `workflow list` shows the active workflows — every scheduled one (it will run) and every
/// other one run in the last 30 days — and `--all` adds the inactive ones (the user guide:
/// "`--all`: Show all workflows including inactive"). Its help said `--all` was needed for
/// a workflow without runs in 30 days, yet a scheduled one that never ran was always listed.
#[test]
fn workflow_list_shows_active_workflows_and_all_adds_the_inactive() {
    let dir = TempDir::new("wf-list");
    let d = dir.path();
    dir.write("ok.yaml", OK);
    assert_eq!(code(&run(picoflow(d).args(["run", "ok.yaml"]))), Some(0));
    {
        let store = picoflow_lib::Store::open(d.join("picoflow.redb")).unwrap();
        store
            .record_workflow("nightly", Some("0 0 2 * * *"), None)
            .unwrap();
        store.record_workflow("idle", None, None).unwrap();
    }
    let names = |all: bool| -> Vec<String> {
        let mut cmd = picoflow(d);
        cmd.args(["workflow", "list", "--format", "json"]);
        if all {
            cmd.arg("--all");
        }
        let out = run(&mut cmd);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(false), ["nightly", "ok"]);
    assert_eq!(names(true), ["idle", "nightly", "ok"]);
    let help = stdout(&run(picoflow(d).args(["workflow", "list", "--help"])));
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("every scheduled workflow")
            && help.contains("without a schedule that did not run in the last 30 days"),
        "{help}"
    );
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The cells of the rows of the README table whose header line is `header`.
fn readme_table(header: &str) -> Vec<Vec<String>> {
    let text = readme();
    let at = text
        .find(&format!("\n{header}\n"))
        .unwrap_or_else(|| panic!("README: no table {header:?}"));
    text[at + 1..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The `…`-quoted words of a table cell.
fn quoted(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// Every key of the configuration file and every task type's `config:` key is documented in
/// the README, and nothing more: the tables are compared with the parser's own lists. Keys
/// such as `[retry] max_backoff_seconds`, `[logs] dir`, `[daemon] pid_file` or an ssh task's
/// `known_hosts` used to appear only in error messages and in the source.
#[test]
fn every_configuration_key_is_documented() {
    // `[section] key` starts a section; the bare keys after it in the cell belong to it.
    let mut documented = std::collections::BTreeSet::new();
    for row in readme_table("| setting | default | meaning |") {
        let mut section = None;
        for word in quoted(&row[0]) {
            let key = match word.strip_prefix('[').and_then(|w| w.split_once("] ")) {
                Some((s, k)) => {
                    section = Some(s.to_string());
                    k.to_string()
                }
                None => word,
            };
            documented.insert(match &section {
                Some(s) => format!("{s}.{key}"),
                None => key,
            });
        }
    }
    let parsed: std::collections::BTreeSet<String> =
        picoflow_lib::config_keys().into_iter().collect();
    assert_eq!(
        documented, parsed,
        "README's configuration table vs config.rs"
    );

    let rows = readme_table("| task type | `config:` keys |");
    for (kind, keys) in picoflow_lib::task_config_keys() {
        let row = rows
            .iter()
            .find(|r| r[0] == kind)
            .unwrap_or_else(|| panic!("README: no row for {kind}"));
        // Only the keys themselves: `(22)`, `(\`none\`)` and the like are defaults.
        let cell = row[1]
            .split(", ")
            .flat_map(|part| quoted(part).into_iter().take(1).chain(alias(part)))
            .collect::<std::collections::BTreeSet<_>>();
        let parsed: std::collections::BTreeSet<String> =
            keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(cell, parsed, "README's `config:` keys of {kind} vs yaml.rs");
    }
    assert_eq!(rows.len(), picoflow_lib::task_config_keys().len());
}

/// `workdir` (or `working_dir`): the alias in parentheses is a key too.
fn alias(part: &str) -> Option<String> {
    let (_, rest) = part.split_once("(or `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The README's Quick start shows what `picoflow run` prints for the sample (times and the
/// execution id aside), and its `--version` example is the default build's. Both used to
/// leave things out: the summary lines after the run, and docker among the features.
#[test]
fn the_readme_shows_what_run_and_version_print() {
    let dir = TempDir::new("quick-start");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-world.yaml");
    let out = run(picoflow(dir.path()).arg("run").arg(&sample));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    // Digits become 0 and the execution id goes: they change from run to run.
    let normal = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let l = match l.split_once("(execution ") {
                    Some((head, _)) => format!("{head}(execution …)"),
                    None => l.to_string(),
                };
                l.chars()
                    .map(|c| if c.is_ascii_digit() { '0' } else { c })
                    .collect()
            })
            .collect()
    };
    let text = readme();
    let start = text.find("\n## Quick start").unwrap();
    let shown = text[start..].split("```").nth(3).unwrap();
    let shown = shown.strip_prefix('\n').unwrap();
    assert_eq!(normal(&stdout(&out)), normal(shown));

    let version = stdout(&run(picoflow(dir.path()).arg("--version")));
    let features = &version[version.find('(').unwrap()..].trim_end();
    assert!(
        text.contains(&format!("(`{}`", version.trim_end())),
        "README lacks {version}"
    );
    let listed: Vec<&str> = features
        .trim_matches(|c| c == '(' || c == ')')
        .split(' ')
        .map(|f| f.trim_start_matches(['+', '-']))
        .collect();
    let install = text
        .lines()
        .find(|l| {
            l.starts_with("cargo install --path picoflow-cli ") && l.contains("# all features: ")
        })
        .unwrap();
    let install = install.split("# all features: ").nth(1).unwrap();
    assert_eq!(install.split(", ").collect::<Vec<_>>(), listed);
}
