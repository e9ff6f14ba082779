//! Data between tasks, conditions, trigger rules, handlers and loops, with the real binary,
//! real processes and a real HTTP server on 127.0.0.1.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{picoflow, run, stderr, stdout, HttpServer, TempDir};
use serde_json::Value;

/// The latest execution of `workflow` as `status --format json` shows it: the execution and
/// each task's last attempt by name.
fn status(dir: &Path, workflow: &str) -> (Value, Vec<Value>) {
    let out = run(picoflow(dir).args(["status", "--workflow", workflow, "--format", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let shown = &v[0];
    (
        shown["execution"].clone(),
        shown["tasks"].as_array().unwrap().clone(),
    )
}

fn task<'a>(tasks: &'a [Value], name: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["task_name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {tasks:#?}"))
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn outputs_pass_hostile_values_between_shell_tasks_without_running_them() {
    let dir = TempDir::new("outputs");
    let wf = dir.write(
        "pass.yaml",
        r#"name: pass
tasks:
  - name: produce
    type: shell
    config:
      command: |
        printf '%s\n' 'SIMPLE=$(touch pwned1)' "QUOTES=it's \"quoted\"; touch pwned2" >> "$PICOFLOW_OUTPUT"
        printf '%s\n' 'MULTI<<END' 'line one' '`touch pwned3`' '$HOME' 'END' >> "$PICOFLOW_OUTPUT"
  - name: consume-shell
    type: shell
    depends_on: [produce]
    config:
      command: "printf '%s' \"${tasks.produce.outputs.SIMPLE}\" > simple.txt; printf '%s' \"${tasks.produce.outputs.MULTI}\" > multi.txt; printf '%s' ${tasks.produce.outputs.QUOTES} > quotes.txt"
  - name: consume-args
    type: shell
    depends_on: [consume-shell]
    config:
      command: printf
      args: ["%s|%s", "${tasks.produce.outputs.QUOTES}", "${tasks.produce.status}"]
"#,
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = dir.path();
    assert_eq!(read(d, "simple.txt"), "$(touch pwned1)");
    assert_eq!(read(d, "multi.txt"), "line one\n`touch pwned3`\n$HOME");
    // Unquoted, the shell splits the value into words, but never runs it.
    assert_eq!(read(d, "quotes.txt"), "it's\"quoted\";touchpwned2");
    for f in ["pwned1", "pwned2", "pwned3"] {
        assert!(!d.join(f).exists(), "{f}: a value was executed");
    }
    let (_, tasks) = status(d, "pass");
    let produce = task(&tasks, "produce");
    assert_eq!(produce["outputs"]["SIMPLE"], "$(touch pwned1)");
    assert_eq!(
        produce["outputs"]["MULTI"],
        "line one\n`touch pwned3`\n$HOME"
    );
    assert_eq!(
        task(&tasks, "consume-args")["stdout"],
        "it's \"quoted\"; touch pwned2|success"
    );
    // The output files are gone with the run (from the private directory beside the state).
    let leftovers: Vec<_> = std::fs::read_dir(d.join("picoflow.redb.run"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let id = produce["workflow_execution_id"].as_str().unwrap();
            e.file_name().to_string_lossy().contains(id)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The SQLite export has them in their own table; the documented ones stay exact.
    let db = d.join("export.db");
    let out = run(picoflow(d).args(["export", "sqlite"]).arg(&db));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let q = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT o.name || '=' || replace(o.value, char(10), '\\n') FROM task_outputs o JOIN task_executions t ON t.id = o.task_execution_id WHERE t.task_name = 'produce' ORDER BY o.name;")
        .output()
        .expect("the sqlite3 CLI (installed by scripts/test.sh)");
    assert_eq!(
        String::from_utf8_lossy(&q.stdout),
        "MULTI=line one\\n`touch pwned3`\\n$HOME\nQUOTES=it's \"quoted\"; touch pwned2\nSIMPLE=$(touch pwned1)\n"
    );
}

#[test]
fn an_http_response_feeds_a_shell_task() {
    let server =
        HttpServer::start(r#"{"id": 42, "user": {"name": "ann; rm -rf /"}, "tags": ["a", "b"]}"#);
    let dir = TempDir::new("http-out");
    let wf = dir.write(
        "api.yaml",
        &format!(
            r#"name: api
tasks:
  - name: lookup
    type: http
    outputs: {{code: status, id: body.id, name: body.user.name, second: body.tags.1}}
    config: {{url: "http://127.0.0.1:{}/users/1", method: GET}}
  - name: use
    type: shell
    depends_on: [lookup]
    config:
      command: "echo \"${{tasks.lookup.outputs.code}} ${{tasks.lookup.outputs.id}} ${{tasks.lookup.outputs.name}} ${{tasks.lookup.outputs.second}}\" > got.txt"
"#,
            server.port
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read(dir.path(), "got.txt"), "200 42 ann; rm -rf / b\n");
    assert_eq!(server.requests()[0].path, "/users/1");

    // A selector that finds nothing fails the task, naming the output and the field.
    let bad = dir.write(
        "bad.yaml",
        &format!(
            "name: bad\ntasks:\n  - name: lookup\n    type: http\n    outputs: {{x: body.missing}}\n    config: {{url: \"http://127.0.0.1:{}/\", method: GET}}\n",
            server.port
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&bad));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let (_, tasks) = status(dir.path(), "bad");
    let msg = task(&tasks, "lookup")["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("outputs.x") && msg.contains("missing"),
        "{msg}"
    );
    assert_eq!(task(&tasks, "lookup")["attempt"], 1, "not retried");
}

#[test]
fn outputs_over_the_limit_fail_the_task_clearly() {
    let dir = TempDir::new("big-out");
    let wf = dir.write(
        "big.yaml",
        "name: big\ntasks:\n  - name: huge\n    type: shell\n    config:\n      command: \"printf 'X=%070000d\\n' 0 >> \\\"$PICOFLOW_OUTPUT\\\"\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let (_, tasks) = status(dir.path(), "big");
    let msg = task(&tasks, "huge")["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("at most 65536"), "{msg}");
}

#[test]
fn conditions_run_or_skip_tasks_and_a_skip_counts_as_success() {
    let dir = TempDir::new("when");
    let wf = dir.write(
        "cond.yaml",
        r#"name: cond
tasks:
  - name: check
    type: shell
    config:
      command: "echo changed=yes >> $PICOFLOW_OUTPUT; echo size=10 >> $PICOFLOW_OUTPUT"
  - name: compress
    type: shell
    depends_on: [check]
    when: "${tasks.check.outputs.changed} == 'yes' && ${tasks.check.outputs.size} > 9"
    config: {command: "touch compressed"}
  - name: never
    type: shell
    depends_on: [check]
    when: "${tasks.check.outputs.changed} != 'yes' || ${tasks.check.outputs.size} < 9"
    config: {command: "touch never-ran"}
  - name: after-never
    type: shell
    depends_on: [never]
    config: {command: "touch after-never"}
  - name: env
    type: shell
    when: "${MODE} in ['prod', 'staging']"
    config: {command: "touch env-ran"}
"#,
    );
    let out = run(picoflow(dir.path())
        .env("MODE", "staging")
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = dir.path();
    assert!(d.join("compressed").exists());
    assert!(!d.join("never-ran").exists());
    assert!(
        d.join("after-never").exists(),
        "a skipped condition releases dependents"
    );
    assert!(d.join("env-ran").exists());
    let (exec, tasks) = status(d, "cond");
    assert_eq!(exec["status"], "success");
    let never = task(&tasks, "never");
    assert_eq!(never["status"], "skipped");
    assert!(
        never["error_message"]
            .as_str()
            .unwrap()
            .starts_with("skipped: condition is false (when: "),
        "{never}"
    );
    // `status` shows why.
    let out = run(picoflow(d).args(["status", "--workflow", "cond"]));
    assert!(
        stdout(&out).contains("condition is false"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn every_trigger_rule() {
    let dir = TempDir::new("rules");
    let mut yaml = String::from("name: rules\ntasks:\n");
    let t = |name: &str, extra: &str| {
        format!("  - name: {name}\n    type: shell\n{extra}    config: {{command: \"touch ran-{name}\"}}\n")
    };
    yaml.push_str(
        "  - name: bad\n    type: shell\n    retry: 0\n    config: {command: \"exit 3\"}\n",
    );
    yaml.push_str(&t("good", ""));
    yaml.push_str(&t("needs-bad", "    depends_on: [bad]\n"));
    yaml.push_str(&t(
        "after-skip",
        "    depends_on: [needs-bad]\n    run_if: any_failed\n",
    ));
    yaml.push_str(&t(
        "all-done",
        "    depends_on: [bad, good]\n    run_if: all_done\n",
    ));
    yaml.push_str(&t(
        "any-failed",
        "    depends_on: [bad, good]\n    run_if: any_failed\n",
    ));
    yaml.push_str(&t(
        "all-failed-no",
        "    depends_on: [bad, good]\n    run_if: all_failed\n",
    ));
    yaml.push_str(&t(
        "all-failed-yes",
        "    depends_on: [bad]\n    run_if: all_failed\n",
    ));
    yaml.push_str(&t("on-failure", "    on_failure: [bad]\n"));
    yaml.push_str(&t("on-failure-no", "    on_failure: [good]\n"));
    yaml.push_str(&t("on-success", "    on_success: [good]\n"));
    yaml.push_str(&t("after-rule-skip", "    depends_on: [on-failure-no]\n"));
    let wf = dir.write("rules.yaml", &yaml);
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(
        out.status.code(),
        Some(3),
        "the failure still fails the run"
    );
    let d = dir.path();
    let ran = |n: &str| d.join(format!("ran-{n}")).exists();
    for n in [
        "good",
        "after-skip",
        "all-done",
        "any-failed",
        "all-failed-yes",
        "on-failure",
        "on-success",
        "after-rule-skip",
    ] {
        assert!(ran(n), "{n} should have run");
    }
    for n in ["needs-bad", "all-failed-no", "on-failure-no"] {
        assert!(!ran(n), "{n} should not have run");
    }
    let (exec, tasks) = status(d, "rules");
    assert_eq!(exec["status"], "failed");
    assert_eq!(
        task(&tasks, "needs-bad")["error_message"],
        "skipped: dependency 'bad' failed"
    );
    assert_eq!(
        task(&tasks, "on-failure-no")["error_message"],
        "skipped: run_if: any_failed does not hold"
    );
}

#[test]
fn handlers_call_a_webhook_after_success_and_after_failure() {
    let server = HttpServer::start("{}");
    let dir = TempDir::new("handlers");
    let workflow = |name: &str, command: &str| {
        format!(
            r#"name: {name}
tasks:
  - name: work
    type: shell
    retry: 0
    config: {{command: "{command}"}}
  - name: other
    type: shell
    config: {{command: "true"}}
on_success:
  - name: tell-success
    type: http
    config:
      url: "http://127.0.0.1:{port}/success"
      method: POST
      body: {{workflow: "${{workflow.name}}", id: "${{execution.id}}", status: "${{execution.status}}"}}
on_failure:
  - name: tell-failure
    type: http
    config:
      url: "http://127.0.0.1:{port}/failure"
      method: POST
      body: {{status: "${{execution.status}}", failed: "${{failed_tasks}}"}}
on_exit:
  - name: broken-cleanup
    type: shell
    retry: 0
    config: {{command: "exit 1"}}
  - name: tell-exit
    type: http
    config: {{url: "http://127.0.0.1:{port}/exit", method: POST, body: {{status: "${{execution.status}}"}}}}
"#,
            port = server.port
        )
    };
    let ok = dir.write("ok.yaml", &workflow("ok", "true"));
    let out = run(picoflow(dir.path()).arg("run").arg(&ok));
    assert_eq!(
        out.status.code(),
        Some(0),
        "a failing handler changes nothing"
    );
    let (exec, tasks) = status(dir.path(), "ok");
    assert_eq!(exec["status"], "success");
    assert_eq!(task(&tasks, "broken-cleanup")["status"], "failed");
    let calls = server.requests();
    let paths: Vec<&str> = calls.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/success", "/exit"]);
    let body: Value = serde_json::from_str(&calls[0].body).unwrap();
    assert_eq!(body["workflow"], "ok");
    assert_eq!(body["status"], "success");
    assert_eq!(body["id"], exec["id"]);

    let bad = dir.write("bad.yaml", &workflow("bad", "exit 2"));
    let out = run(picoflow(dir.path()).arg("run").arg(&bad));
    assert_eq!(
        out.status.code(),
        Some(3),
        "handlers do not make a run succeed"
    );
    let calls = server.requests();
    let paths: Vec<&str> = calls[2..].iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/failure", "/exit"]);
    let body: Value = serde_json::from_str(&calls[2].body).unwrap();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["failed"], "work");
    let (exec, _) = status(dir.path(), "bad");
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["failed_tasks"], 1, "handlers are not counted");
}

#[test]
fn loops_of_one_and_fifty_items_and_from_an_output() {
    let dir = TempDir::new("loops");
    let items: Vec<String> = (1..=50).map(|i| format!("f{i:02}")).collect();
    let wf = dir.write(
        "loop.yaml",
        &format!(
            r#"name: loop
config: {{max_parallel: 4}}
tasks:
  - name: one
    type: shell
    iterate_over: [only]
    config: {{command: "touch one-${{item}}-${{item_index}}"}}
  - name: many
    type: shell
    iterate_over: [{}]
    config:
      command: touch
      args: ["many-${{item}}"]
  - name: count
    type: shell
    depends_on: [many]
    config: {{command: "ls | grep -c '^many-' > count.txt"}}
  - name: list
    type: shell
    config:
      command: "printf 'FILES<<EOF\na b\nc\nEOF\n' >> $PICOFLOW_OUTPUT"
  - name: each
    type: shell
    iterate_over: "${{tasks.list.outputs.FILES}}"
    depends_on: [list]
    config: {{command: "printf '%s' \"${{item}}\" > \"each-${{item_index}}\""}}
  - name: some
    type: shell
    iterate_over: [x, y, z]
    when: "${{item}} != 'y'"
    config: {{command: "touch some-${{item}}"}}
"#,
            items.join(", ")
        ),
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = dir.path();
    assert!(d.join("one-only-0").exists());
    assert_eq!(
        read(d, "count.txt"),
        "50\n",
        "dependents wait for every item"
    );
    assert_eq!(read(d, "each-0"), "a b");
    assert_eq!(read(d, "each-1"), "c");
    assert!(!d.join("each-2").exists());
    // A condition is asked of each item.
    assert!(d.join("some-x").exists() && d.join("some-z").exists());
    assert!(!d.join("some-y").exists());
    let (exec, tasks) = status(d, "loop");
    assert_eq!(task(&tasks, "many[f37]")["status"], "success");
    assert_eq!(task(&tasks, "each[a b]")["status"], "success");
    assert_eq!(task(&tasks, "some[y]")["status"], "skipped");
    // A loop counts by its tasks: 1 + 50 + count + list + 2 + 3.
    assert_eq!(exec["total_tasks"], 58);
    assert_eq!(exec["successful_tasks"], 57);
}

#[test]
fn max_parallel_bounds_a_loop() {
    let dir = TempDir::new("loop-limit");
    // Each item records how many items run beside it.
    let wf = dir.write(
        "limit.yaml",
        "name: limit\nconfig: {max_parallel: 2}\ntasks:\n  - name: l\n    type: shell\n    iterate_over: [a, b, c, d, e, f]\n    config: {command: \"touch running-${item}; ls | grep -c '^running-' >> seen; sleep 0.3; rm running-${item}\"}\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen = read(dir.path(), "seen");
    let most = seen
        .lines()
        .map(|l| l.parse::<u32>().unwrap())
        .max()
        .unwrap();
    assert!(most <= 2, "{seen}");
    assert_eq!(seen.lines().count(), 6);
}

#[test]
fn a_resume_in_the_middle_of_a_loop_keeps_finished_items_and_outputs() {
    let dir = TempDir::new("loop-resume");
    let wf = dir.write(
        "resume.yaml",
        r#"name: resume
config: {max_parallel: 1}
tasks:
  - name: before
    type: shell
    config: {command: "echo TAG=v1-$(date +%N) >> $PICOFLOW_OUTPUT"}
  - name: items
    type: shell
    depends_on: [before]
    iterate_over: [a, b, c, d, e]
    config:
      command: "echo ${item} >> ran.txt; printf '%s\\n' ${tasks.before.outputs.TAG} >> tags.txt; echo V=${item} >> $PICOFLOW_OUTPUT; if [ ${item} = c ] && [ ! -e resumed ]; then sleep 30; fi"
"#,
    );
    let d = dir.path();
    let mut child = picoflow(d)
        .arg("run")
        .arg(&wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(d.join("ran.txt"))
        .unwrap_or_default()
        .contains('c')
    {
        assert!(Instant::now() < deadline, "item c never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: the run crashes in the middle of the loop
    child.wait().unwrap();
    std::fs::write(d.join("resumed"), "").unwrap();
    let out = run(picoflow(d).args(["run", "--resume"]).arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Items finished before the crash ran once, c again (it was cut short), the rest once.
    assert_eq!(read(d, "ran.txt"), "a\nb\nc\nc\nd\ne\n");
    // Every item saw the one value `before` published, restored for the resumed run.
    let tags = read(d, "tags.txt");
    let distinct: std::collections::BTreeSet<&str> = tags.lines().collect();
    assert_eq!(distinct.len(), 1, "{tags}");
    let (exec, tasks) = status(d, "resume");
    assert_eq!(exec["status"], "success");
    assert_eq!(task(&tasks, "items[a]")["outputs"]["V"], "a");
    assert_eq!(task(&tasks, "items[e]")["outputs"]["V"], "e");
    assert_eq!(task(&tasks, "items[c]")["status"], "success");
}

#[test]
fn validation_names_the_line_of_bad_conditions_and_references() {
    let dir = TempDir::new("flow-validate");
    let wf = dir.write(
        "bad.yaml",
        r#"name: bad
tasks:
  - name: a
    type: shell
    config: {command: "true"}
  - name: b
    type: shell
    when: "${tasks.a.outputs.x} == "
    depends_on: [a]
    config: {command: "true"}
  - name: c
    type: shell
    config: {command: "echo ${tasks.a.outputs.x}"}
  - name: d
    type: shell
    depends_on: [a]
    config: {command: "echo ${tasks.zz.outputs.x}"}
  - name: e
    type: shell
    run_if: any_failed
    config: {command: "true"}
  - name: f
    type: shell
    depends_on: [a]
    iterate_over: ["${tasks.a.outputs.x}", two]
    config: {command: "echo ${item}"}
"#,
    );
    let out = run(picoflow(dir.path()).arg("validate").arg(&wf));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("line 6: task 'b': when: "), "{err}");
    assert!(
        err.contains("line 11: task 'c': ${tasks.a.outputs.x}: task 'a' is not among the tasks this one depends on"),
        "{err}"
    );
    assert!(
        err.contains("line 14: task 'd': ${tasks.zz.outputs.x}: unknown task 'zz'"),
        "{err}"
    );
    assert!(
        err.contains("line 18: task 'e': run_if: any_failed needs depends_on"),
        "{err}"
    );
    // A reference in a written list is not expanded: said, not run as a literal item.
    assert!(
        err.contains(
            "line 22: task 'f': iterate_over: the item '${tasks.a.outputs.x}' holds a value of the run"
        ),
        "{err}"
    );
}

#[test]
fn the_backup_example_runs_and_validate_and_graph_show_its_flow() {
    let dir = TempDir::new("backup-example");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/backup.yaml");
    let out = run(picoflow(dir.path()).arg("validate").arg(&example));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Conditions, rules and loops:"), "{text}");
    assert!(text.contains("compress: when: "), "{text}");
    assert!(text.contains("Handlers: "), "{text}");
    let out = run(picoflow(dir.path())
        .args(["graph", "--format", "dot"])
        .arg(&example));
    assert!(stdout(&out).contains("after the run"), "{}", stdout(&out));

    let server = HttpServer::start("{}");
    // Runs the example with its backups in `to`.
    let backup = |to: &Path| {
        run(picoflow(dir.path())
            .env("BACKUP_DIR", to)
            .env(
                "WEBHOOK_URL",
                format!("http://127.0.0.1:{}/hook", server.port),
            )
            .arg("run")
            .arg(&example))
    };
    // Runs the example to success; returns its tasks' last attempts.
    let run_backup = || {
        let out = backup(&dir.path().join("backups"));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        status(dir.path(), "backup").1
    };
    let tasks = run_backup();
    assert_eq!(task(&tasks, "compress")["status"], "success");
    assert!(
        tasks
            .iter()
            .any(|t| t["task_name"].as_str().unwrap().starts_with("upload[")),
        "{tasks:#?}"
    );
    assert!(
        server.requests().is_empty(),
        "the failure webhook is for failures"
    );

    assert!(dir.path().join("backups/uploaded.sha256").exists());

    // Again with the same dump: nothing to compress, so nothing to upload.
    let tasks = run_backup();
    assert_eq!(task(&tasks, "compress")["status"], "skipped");
    assert_eq!(
        task(&tasks, "upload")["error_message"],
        "skipped: iterate_over has no items"
    );

    // A new dump whose upload fails leaves no mark: the next run compresses and uploads again.
    std::fs::remove_file(dir.path().join("backups/uploaded.sha256")).unwrap();
    std::fs::remove_file(dir.path().join("backups/remote/dump.sql.gz")).unwrap();
    std::fs::create_dir(dir.path().join("backups/remote/dump.sql.gz")).unwrap();
    let out = backup(&dir.path().join("backups"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "the upload fails: {}",
        stdout(&out)
    );
    assert!(!dir.path().join("backups/uploaded.sha256").exists());
    std::fs::remove_dir(dir.path().join("backups/remote/dump.sql.gz")).unwrap();
    let tasks = run_backup();
    assert_eq!(task(&tasks, "compress")["status"], "success");
    assert!(dir.path().join("backups/remote/dump.sql.gz").is_file());
    assert!(dir.path().join("backups/uploaded.sha256").exists());

    // A directory that cannot be made fails the dump loudly, writing nothing elsewhere.
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let out = backup(&dir.path().join("not-a-dir/backups"));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let tasks = status(dir.path(), "backup").1;
    assert_eq!(task(&tasks, "dump")["status"], "failed");
    assert!(!dir.path().join("dump.sql").exists());
    assert!(
        !server.requests().is_empty(),
        "the failure webhook was called"
    );
}

/// The read commands show a loop by its items and handlers as handlers: `status` has no
/// "not run" row for a loop whose items ran and marks each handler; `history` lists only the
/// workflow's failed tasks (a failed `on_failure` handler does not change the result); `logs`
/// has no "not started" section for the loop.
#[test]
fn status_history_and_logs_show_loops_by_their_items_and_handlers_apart() {
    let dir = TempDir::new("loop-views");
    let wf = dir.write(
        "l.yaml",
        "name: l\ntasks:\n  - name: list\n    type: shell\n    outputs: {files: stdout}\n    config:\n      command: \"echo '[\\\"a\\\",\\\"b\\\",\\\"c\\\"]'\"\n  - name: checksum\n    type: shell\n    depends_on: [list]\n    iterate_over: \"${tasks.list.outputs.files}\"\n    config:\n      command: \"echo sum ${item}\"\n  - name: boom\n    type: shell\n    retry: 0\n    depends_on: [checksum]\n    config:\n      command: \"exit 3\"\non_failure:\n  - name: sad\n    type: shell\n    retry: 0\n    config:\n      command: \"exit 1\"\non_exit:\n  - name: bye\n    type: shell\n    config:\n      command: \"echo bye\"\n",
    );
    let out = run(picoflow(dir.path()).arg("run").arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    // `run` names handlers as handlers, in its lines and in its summary.
    let text = stdout(&out);
    assert!(
        text.contains("Handler 'sad' (on_failure) started\n"),
        "{text}"
    );
    assert!(
        text.contains("Handler 'bye' (on_exit) completed successfully"),
        "{text}"
    );
    assert!(text.contains("Task 'boom' failed"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" sad ") && l.ends_with("[on_failure handler]: exited with code 1")),
        "{text}"
    );

    let out = run(picoflow(dir.path()).args(["status", "--workflow", "l"]));
    let text = stdout(&out);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {text}"))
            .to_string()
    };
    for item in ["checksum[a]", "checksum[b]", "checksum[c]"] {
        assert!(row(item).contains("completed"), "{text}");
    }
    assert!(!text.contains("not run"), "{text}");
    assert!(row("sad").contains("on_failure handler"), "{text}");
    assert!(row("bye").contains("on_exit handler"), "{text}");
    assert!(!row("boom").contains("handler"), "{text}");

    let out = run(picoflow(dir.path()).args(["history", "--workflow", "l"]));
    let text = stdout(&out);
    assert!(text.contains("Failed: boom\n"), "{text}");

    let out = run(picoflow(dir.path()).args(["logs", "--workflow", "l"]));
    let text = stdout(&out);
    assert!(text.contains("==> checksum[b] <==\nsum b"), "{text}");
    assert!(!text.contains("==> checksum <=="), "{text}");
    assert!(!text.contains("not started"), "{text}");
}
