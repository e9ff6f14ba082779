//! Secrets in http tasks never reach output, logs, task log files or history, even at
//! `--log-level trace` (EXEC-003, SEC-002), against a real HTTP server on 127.0.0.1.

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
