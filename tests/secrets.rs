//! Secrets in http tasks never reach output, logs, task log files or history, even at
//! `--log-level trace` (EXEC-003, SEC-002), against a real HTTP server on 127.0.0.1; values
//! expanded into a URL are masked by where they come from; PicoFlow's own web token never
//! reaches a task, whether `run` or the daemon started it.

mod common;

use common::{picoflow, run, stderr, stdout, HttpServer, TempDir};

fn all_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_token_appears_nowhere_even_at_trace_level() {
    let out = run(picoflow(std::path::Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+http"),
        "this test needs the http feature (run the suite with default features)"
    );
    let dir = TempDir::new("secret");
    let server = HttpServer::start("{\"ok\":true}");
    let port = server.port;
    let token = "s3cr3t-token-7f3a9";
    let wf = dir.write(
        "api.yaml",
        &format!(
            "name: api\ntasks:\n  - name: call\n    type: http\n    config:\n      url: \"http://user:pw-{token}@127.0.0.1:{port}/deploy?api_key=${{TOKEN}}\"\n      method: post\n      headers:\n        Authorization: \"Bearer ${{TOKEN}}\"\n        X-Api-Key: \"${{TOKEN}}\"\n      body:\n        version: \"1.2.3\"\n"
        ),
    );
    let out = run(picoflow(dir.path())
        .env("TOKEN", token)
        .args(["--log-level", "trace", "--log-format", "pretty", "run"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains(token), "token in stdout");
    assert!(!stderr(&out).contains(token), "token in the trace log");
    let out = run(picoflow(dir.path()).env("TOKEN", token).args([
        "--log-level",
        "trace",
        "history",
        "--format",
        "json",
    ]));
    assert!(stdout(&out).contains("\"status\": \"success\""));
    assert!(
        !stdout(&out).contains(token) && !stderr(&out).contains(token),
        "token in history"
    );
    // No file PicoFlow wrote holds it: state file, task logs, anything else.
    let mut files = Vec::new();
    all_files(dir.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("picoflow.redb")));
    for f in files.iter().filter(|f| !f.ends_with("api.yaml")) {
        let bytes = std::fs::read(f).unwrap();
        let hit = bytes.windows(token.len()).any(|w| w == token.as_bytes());
        assert!(!hit, "token found in {}", f.display());
    }
}

/// Runs SQL with the real `sqlite3` command-line tool; returns its output.
fn sqlite3(db: &std::path::Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 is needed: scripts/install-test-deps.sh installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Values expanded from `${…}` into a URL's query string, user info or path are masked by
/// where they came from, whatever the parameter is called (`pass`, `sig`,
/// `X-Amz-Signature` are on no list of secret names): in the debug log, the task's error,
/// `status`, `history`, `logs`, the state file and an SQLite export — while the request
/// the server received carried them.
#[test]
fn values_expanded_into_a_url_are_masked_wherever_it_is_shown() {
    let out = run(picoflow(std::path::Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+http") && stdout(&out).contains("+sqlite"),
        "this test needs the http and sqlite features (run the suite with default features)"
    );
    let dir = TempDir::new("url-origin");
    let server = HttpServer::start("{\"ok\":true}");
    let port = server.port;
    let (pw, sig) = ("pw-Zq81xPLm", "sig-Kd93mQvT");
    // 201 is expected and 200 comes: each task fails, and its error names the URL.
    let wf = dir.write(
        "hook.yaml",
        &format!(
            "name: hook\nconfig:\n  retry_default: 0\ntasks:\n  - name: query\n    type: http\n    config:\n      method: get\n      url: \"http://127.0.0.1:{port}/hook?pass=${{PW}}&sig=${{SIG}}&X-Amz-Signature=${{SIG}}\"\n      headers:\n        X-Sig: \"${{SIG}}\"\n      expected_status: [201]\n  - name: path\n    type: http\n    config:\n      method: get\n      url: \"http://${{PW}}@127.0.0.1:{port}/bot${{SIG}}/send\"\n      expected_status: [201]\n"
        ),
    );
    let secret = |text: &str| text.contains(pw) || text.contains(sig);
    let out = run(picoflow(dir.path())
        .env("PW", pw)
        .env("SIG", sig)
        .args(["--log-level", "debug", "run"])
        .arg(&wf));
    assert_eq!(
        out.status.code(),
        Some(3),
        "both tasks fail: {}",
        stderr(&out)
    );
    assert!(!secret(&stdout(&out)), "a secret in the output of run");
    assert!(!secret(&stderr(&out)), "a secret in the debug log");
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths.contains(&format!("/hook?pass={pw}&sig={sig}&X-Amz-Signature={sig}"))
            && paths.contains(&format!("/bot{sig}/send")),
        "the requests carried the values: {paths:?}"
    );

    let out =
        run(picoflow(dir.path()).args(["--log-level", "debug", "status", "--format", "json"]));
    assert!(
        stdout(&out).contains("pass=[REDACTED]&sig=[REDACTED]&X-Amz-Signature=[REDACTED]"),
        "the error names the URL, masked: {}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("/bot[REDACTED]/send"),
        "{}",
        stdout(&out)
    );
    assert!(
        !secret(&stdout(&out)) && !secret(&stderr(&out)),
        "a secret in status"
    );
    for args in [
        &["history", "--format", "json"][..],
        &["logs", "hook"][..],
        &["logs", "hook", "path"][..],
    ] {
        let out = run(picoflow(dir.path())
            .arg("--log-level")
            .arg("debug")
            .args(args));
        assert!(
            !secret(&stdout(&out)) && !secret(&stderr(&out)),
            "a secret in {args:?}"
        );
    }
    let db = dir.path().join("export.db");
    let out = run(picoflow(dir.path()).args(["export", "sqlite"]).arg(&db));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dump = sqlite3(&db, ".dump");
    assert!(dump.contains("[REDACTED]"), "{dump}");
    assert!(!secret(&dump), "a secret in the SQLite export: {dump}");

    let mut files = Vec::new();
    all_files(dir.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("picoflow.redb")));
    for f in files.iter().filter(|f| !f.ends_with("hook.yaml")) {
        let bytes = std::fs::read(f).unwrap();
        for s in [pw, sig] {
            let hit = bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!hit, "{s} found in {}", f.display());
        }
    }
}

/// `PICOFLOW_WEB_TOKEN` is PicoFlow's own secret: a task's process does not inherit it and
/// `${PICOFLOW_WEB_TOKEN}` expands to nothing, while other variables pass as before.
#[test]
fn the_web_token_never_reaches_a_task() {
    let dir = TempDir::new("web-token");
    let token = "web-tok-Hq72Lx";
    let wf = dir.write(
        "env.yaml",
        "name: env\ntasks:\n  - name: inherited\n    type: shell\n    config:\n      command: env\n  - name: expanded\n    type: shell\n    config:\n      command: echo\n      args: [\"arg:${PICOFLOW_WEB_TOKEN}\", \"visible:${PICOFLOW_TEST_VISIBLE}\"]\n",
    );
    let out = run(picoflow(dir.path())
        .env("PICOFLOW_WEB_TOKEN", token)
        .env("PICOFLOW_TEST_VISIBLE", "yes-9f2")
        .args(["run"])
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let env_out = run(picoflow(dir.path()).args(["logs", "env", "inherited", "--tail", "10000"]));
    let env = stdout(&env_out);
    assert!(env.contains("PICOFLOW_TEST_VISIBLE=yes-9f2"), "{env}");
    assert!(
        !env.contains("PICOFLOW_WEB_TOKEN"),
        "the task inherited the web token: {env}"
    );
    let args = stdout(&run(picoflow(dir.path()).args(["logs", "env", "expanded"])));
    assert!(args.contains("arg: visible:yes-9f2"), "{args}");
    assert!(!stdout(&out).contains(token), "{}", stdout(&out));
}

/// The same for the tasks a daemon starts on schedule.
#[test]
fn the_web_token_never_reaches_a_task_the_daemon_starts() {
    let dir = TempDir::new("web-token-daemon");
    let token = "web-tok-Dm41Qz";
    dir.write(
        "tick.yaml",
        "name: tick\nschedule: \"* * * * * *\"\ntasks:\n  - name: t\n    type: shell\n    config:\n      command: \"env > seen.tmp && mv seen.tmp seen.txt\"\n",
    );
    let mut child = picoflow(dir.path())
        .env("PICOFLOW_WEB_TOKEN", token)
        .env("PICOFLOW_TEST_VISIBLE", "yes-d41")
        .args(["--log-format", "pretty", "daemon", "start", "tick.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = dir.path().join("seen.txt");
    common::wait_for(
        std::time::Duration::from_secs(20),
        "a scheduled run",
        || seen.exists(),
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("PICOFLOW_TEST_VISIBLE=yes-d41"), "{env}");
    assert!(
        !env.contains("PICOFLOW_WEB_TOKEN") && !env.contains(token),
        "the task inherited the web token: {env}"
    );
}
