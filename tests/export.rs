//! `picoflow export sqlite` (CFG-003, OBS-004): the exported file has exactly the API
//! reference's schema, every query printed in the documents runs on it with the expected
//! numbers, and exporting again adds nothing twice. Checked with the real `sqlite3` CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{picoflow, run, stderr, stdout, TempDir};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sqlite")
        .join(name)
}

/// Runs SQL with the real `sqlite3` command-line tool; returns its output.
fn sqlite3(db: &Path, sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3 is needed: scripts/install-test-deps.sh installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn query_file(db: &Path, name: &str) -> Vec<Vec<String>> {
    let sql = std::fs::read_to_string(fixture(name)).unwrap();
    sqlite3(db, &sql)
        .lines()
        .map(|l| l.split('|').map(String::from).collect())
        .collect()
}

/// A history with successful, failed, retried and continue_on_failure tasks.
fn make_history(dir: &TempDir) {
    dir.write(
        "audit.yaml",
        "name: audit
tasks:
  - name: ok1
    type: shell
    config:
      command: \"echo fine\"
  - name: flaky
    type: shell
    retry: 1
    config:
      command: \"test -f marker || { touch marker; exit 1; }\"
  - name: bad_soft
    type: shell
    retry: 0
    continue_on_failure: true
    config:
      command: \"echo soft failure >&2; exit 3\"
  - name: after
    type: shell
    depends_on: [bad_soft, flaky]
    config:
      command: \"true\"
",
    );
    dir.write(
        "broken.yaml",
        "name: broken
tasks:
  - name: fail
    type: shell
    retry: 0
    config:
      command: \"exit 4\"
  - name: down
    type: shell
    depends_on: [fail]
    config:
      command: \"true\"
",
    );
    let out = run(picoflow(dir.path()).args(["run", "audit.yaml"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(picoflow(dir.path()).args(["run", "broken.yaml"]));
    assert_eq!(out.status.code(), Some(3));
}

fn schema_of(db: &Path) -> String {
    // Everything `PRAGMA table_info`, `index_list`, `index_info` and `foreign_key_list` say.
    let mut all = String::new();
    for table in ["workflow_executions", "task_executions"] {
        all += &sqlite3(db, &format!("SELECT * FROM pragma_table_info('{table}');"));
        all += &sqlite3(
            db,
            &format!("SELECT * FROM pragma_foreign_key_list('{table}');"),
        );
        let indexes = sqlite3(
            db,
            &format!("SELECT name, \"unique\", origin, partial FROM pragma_index_list('{table}') ORDER BY name;"),
        );
        all += &indexes;
        for line in indexes.lines() {
            let name = line.split('|').next().unwrap();
            all += &sqlite3(db, &format!("SELECT * FROM pragma_index_info('{name}');"));
        }
    }
    all
}

#[test]
fn the_export_has_the_documented_schema_and_answers_the_documented_queries() {
    let out = run(picoflow(Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+sqlite"),
        "this test needs the sqlite feature"
    );
    let dir = TempDir::new("export");
    make_history(&dir);
    let db = dir.path().join("history.db");
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&db));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 executions added"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("7 task attempts added"),
        "{}",
        stdout(&out)
    );

    // The schema equals a database made from the API reference's DDL.
    let reference = dir.path().join("reference.db");
    sqlite3(
        &reference,
        &std::fs::read_to_string(fixture("schema.sql")).unwrap(),
    );
    let want = schema_of(&reference);
    assert!(
        want.contains("idx_task_started_at") && want.contains("CASCADE"),
        "{want}"
    );
    assert_eq!(schema_of(&db), want);

    // Values as documented.
    let rows = sqlite3(
        &db,
        "SELECT workflow_name, status, total_tasks, successful_tasks, failed_tasks, \
         duration_seconds IS NOT NULL, length(id), started_at LIKE '____-__-__ __:__:__%' \
         FROM workflow_executions ORDER BY workflow_name;",
    );
    assert_eq!(
        rows,
        "audit|success|4|3|1|1|36|1\nbroken|failed|2|0|1|1|36|1\n"
    );
    let rows = sqlite3(
        &db,
        "SELECT task_name, attempt, status, exit_code, ifnull(error_message, '-') != '-' \
         FROM task_executions ORDER BY task_name, attempt;",
    );
    assert_eq!(
        rows,
        "after|1|success|0|0\nbad_soft|1|failed|3|1\ndown|1|skipped||1\nfail|1|failed|4|1\n\
         flaky|1|retrying|1|1\nflaky|2|success|0|0\nok1|1|success|0|0\n"
    );
    assert_eq!(
        sqlite3(&db, "SELECT stdout, stderr FROM task_executions WHERE task_name IN ('ok1', 'bad_soft') ORDER BY task_name;"),
        "|soft failure\n\nfine\n|\n"
    );

    // Every query of the API reference…
    let recent = query_file(&db, "api-recent-executions.sql");
    assert_eq!(recent.len(), 2);
    assert_eq!(
        (
            recent[0][0].as_str(),
            recent[0][2].as_str(),
            recent[0][4].as_str()
        ),
        ("broken", "failed", "0/2")
    );
    assert_eq!(
        (
            recent[1][0].as_str(),
            recent[1][2].as_str(),
            recent[1][4].as_str()
        ),
        ("audit", "success", "3/4")
    );
    let failed = query_file(&db, "api-failed-tasks-24h.sql");
    let mut names: Vec<&str> = failed.iter().map(|r| r[1].as_str()).collect();
    names.sort();
    assert_eq!(names, ["bad_soft", "fail"]);
    let rate = query_file(&db, "api-workflow-success-rate.sql");
    assert_eq!(
        rate,
        [["audit", "1", "1", "100.0"], ["broken", "1", "0", "0.0"]]
    );
    let avg = query_file(&db, "api-average-task-duration.sql");
    assert_eq!(avg.len(), 6, "{avg:?}");
    let flaky = avg.iter().find(|r| r[0] == "flaky").unwrap();
    assert_eq!(flaky[1], "2", "both attempts of the retried task");

    // …and of the user guide. Its success-rate query compares with 'Success' while statuses
    // are lower case everywhere (DECISIONS.md 6), so it counts no successes; it still runs.
    assert!(
        query_file(&db, "guide-date-range.sql").is_empty(),
        "no run in November 2025"
    );
    let rate = query_file(&db, "guide-task-success-rate.sql");
    assert_eq!(rate.len(), 6);
    assert_eq!(rate.iter().find(|r| r[0] == "flaky").unwrap()[1], "2");
    let by_wf = query_file(&db, "guide-average-execution-time.sql");
    assert_eq!(by_wf.len(), 2);
    assert!(by_wf.iter().all(|r| r[1] == "1"));
    query_file(&db, "guide-vacuum.sql");
    query_file(&db, "guide-clean-old-history.sql");
    assert_eq!(
        sqlite3(&db, "SELECT count(*) FROM workflow_executions;"),
        "2\n"
    );

    // Exporting again adds nothing twice; a new run is added.
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&db));
    assert!(
        stdout(&out).contains("0 executions added, 0 updated; 0 task attempts added"),
        "{}",
        stdout(&out)
    );
    run(picoflow(dir.path()).args(["run", "audit.yaml"]));
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&db));
    assert!(
        stdout(&out).contains("1 executions added"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        sqlite3(&db, "SELECT count(*) FROM workflow_executions;"),
        "3\n"
    );
    assert_eq!(
        sqlite3(
            &db,
            "SELECT count(*), count(DISTINCT id) FROM task_executions;"
        ),
        "11|11\n"
    );

    // Deleting an execution cascades to its attempts, as the schema says.
    sqlite3(
        &db,
        "PRAGMA foreign_keys = ON; DELETE FROM workflow_executions WHERE workflow_name = 'broken';",
    );
    assert_eq!(sqlite3(&db, "SELECT count(*) FROM task_executions;"), "9\n");
}

#[test]
fn filters_and_a_foreign_file_is_left_alone() {
    let dir = TempDir::new("export-filter");
    make_history(&dir);
    let db = dir.path().join("only-audit.db");
    let out = run(picoflow(dir.path())
        .args(["export", "sqlite", "--workflow", "audit"])
        .arg(&db));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        sqlite3(
            &db,
            "SELECT DISTINCT workflow_name FROM workflow_executions;"
        ),
        "audit\n"
    );
    let tomorrow = (chrono::Local::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let none = dir.path().join("none.db");
    let out = run(picoflow(dir.path())
        .args(["export", "sqlite", "--since", &tomorrow])
        .arg(&none));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        sqlite3(&none, "SELECT count(*) FROM workflow_executions;"),
        "0\n"
    );

    let foreign = dir.path().join("other.db");
    sqlite3(
        &foreign,
        "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');",
    );
    let out = run(picoflow(dir.path())
        .args(["export", "sqlite"])
        .arg(&foreign));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a PicoFlow SQLite export"));
    assert_eq!(sqlite3(&foreign, "SELECT x FROM notes;"), "keep me\n");
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

/// An export that cannot be written blames its own file with exit code 5 (an I/O error on a
/// file), never the state store, which it only reads. It used to name its temporary file
/// (`x.db.tmp-<pid>`) when the directory was missing, and to say `state store: cannot export`
/// with exit code 6 when SQLite could not write (a full disk).
#[test]
fn an_export_that_cannot_be_written_blames_its_file_with_exit_5() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("export-unwritable");

    let out = run(picoflow(dir.path()).args(["export", "sqlite", "no-such-dir/x.db"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no-such-dir/x.db: No such file"), "{err}");
    assert!(
        !err.contains(".tmp-") && !err.contains("state store"),
        "{err}"
    );

    // A file size limit of 8 KiB in the child stands in for a full disk: SQLite's writes fail.
    let mut cmd = picoflow(dir.path());
    cmd.args(["export", "sqlite", "full.db"]);
    // SAFETY: setrlimit and signal are async-signal-safe and change the child alone; with
    // SIGXFSZ ignored, a write over the limit fails with EFBIG instead of killing it.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 8192,
                rlim_max: 8192,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("full.db: cannot export"), "{err}");
    assert!(!err.contains("state store"), "{err}");
    assert!(!dir.path().join("full.db").exists());

    // Only a regular file is exported into: a FIFO (or a device) is refused and left as it is.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let before = mode(&fifo);
    let out = run(picoflow(dir.path()).args(["export", "sqlite", "fifo"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a regular file"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode(&fifo), before, "the FIFO's mode is left alone");
}
