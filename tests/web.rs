//! The web UI and REST API of a real daemon over TCP (OBS-005): every endpoint, the history
//! filters, triggering with and without the token, the overlap rule, refused traversal and
//! oversized requests, no secret shown; and a real browser (headless Chromium) rendering the
//! workflows, DAG and execution pages and following a log.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{chromium, free_port, picoflow, run, stdout, wait_for, TempDir};
use serde_json::Value;

const TOKEN: &str = "t0ken-with-enough-entropy-4f1c";

/// A daemon with the web UI on a free port; killed if the test did not stop it.
struct Daemon {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// Header lines every request of the test sends (a token, once reads need one).
    auth: String,
}

impl Daemon {
    /// Starts `daemon start --web` in `dir` on the workflow files given; metrics and the web
    /// UI share a free port, and `web` adds lines to the `[web]` section.
    fn start(dir: &Path, web: &str, files: &[&str]) -> Daemon {
        let port = free_port();
        let config = format!("[metrics]\nport = {port}\n[web]\nport = {port}\n{web}\n");
        Daemon::spawn(dir, port, &config, files)
    }

    /// Starts `daemon start --web` with this whole configuration; `port` is the web UI's.
    fn spawn(dir: &Path, port: u16, config: &str, files: &[&str]) -> Daemon {
        write_config(dir, config);
        let child = picoflow(dir)
            .args(["--log-format", "pretty", "daemon", "start", "--web"])
            .args(files)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            port,
            auth: String::new(),
        };
        wait_for(Duration::from_secs(20), "the web endpoint", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        d
    }

    fn get(&self, path: &str) -> Reply {
        self.get_as(path, &self.auth)
    }

    /// A GET with these header lines (each ending in CRLF) instead of the test's own.
    fn get_as(&self, path: &str, headers: &str) -> Reply {
        request(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n"),
        )
    }

    fn json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        serde_json::from_str(&r.body).unwrap()
    }

    fn post_run(&self, workflow: &str, token: Option<&str>) -> Reply {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        request(
            self.port,
            &format!(
                "POST /api/v1/workflows/{workflow}/run HTTP/1.1\r\nHost: localhost\r\n{auth}\
                 Content-Length: 0\r\n\r\n"
            ),
        )
    }

    /// Starts a run over the API with the token; returns the execution id.
    fn run_now(&self, workflow: &str) -> String {
        let r = self.post_run(workflow, Some(TOKEN));
        assert_eq!(r.status, 202, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["execution_id"].as_str().unwrap().to_string()
    }

    /// Waits until the log of `task` in execution `id` contains `text`.
    fn wait_for_log(&self, id: &str, task: &str, text: &str) {
        wait_for(Duration::from_secs(10), text, || {
            self.get(&format!("/api/v1/executions/{id}/tasks/{task}/log"))
                .body
                .contains(text)
        });
    }

    /// Waits until execution `id` is no longer running; returns its API object.
    fn finished(&self, id: &str) -> Value {
        let mut last = Value::Null;
        wait_for(Duration::from_secs(30), "the execution to finish", || {
            let r = self.get(&format!("/api/v1/executions/{id}"));
            if r.status != 200 {
                return false;
            }
            last = serde_json::from_str(&r.body).unwrap();
            last["execution"]["status"] != "running"
        });
        last
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "daemon did not stop\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("picoflow.toml"), text).unwrap();
}

/// A response as received.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes and reads the whole response (the server closes after one).
fn request(port: u16, raw: &str) -> Reply {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may answer (and close) before reading all of an oversized request.
    let _ = s.write_all(raw.as_bytes());
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Reply {
        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let out = run(picoflow(dir).args(args));
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_str(&stdout(&out)).unwrap()
}

const WORKFLOWS: &[(&str, &str)] = &[
    (
        "ok.yaml",
        "name: ok\ndescription: Two steps\ntasks:\n\
         \x20 - {name: first, type: shell, config: {command: \"echo hello from first; echo more\"}}\n\
         \x20 - {name: second, type: shell, depends_on: [first], config: {command: \"echo two\"}}\n",
    ),
    (
        "bad.yaml",
        "name: bad\nschedule: \"0 0 1 1 *\"\ntasks:\n\
         \x20 - {name: boom, type: shell, retry: 0, config: {command: \"echo failing >&2; exit 3\"}}\n",
    ),
    (
        "slow.yaml",
        "name: slow\ntasks:\n  - {name: nap, type: shell, config: {command: \"sleep 2\"}}\n",
    ),
    (
        "secret.yaml",
        "name: secret\ntasks:\n\
         \x20 - name: s\n    type: shell\n    config:\n      command: \"true\"\n      env:\n\
         \x20       API_KEY: hunter2-env\n\
         \x20 - name: h\n    type: http\n    depends_on: [s]\n    config:\n\
         \x20     url: \"http://127.0.0.1:9/never\"\n      method: GET\n      headers:\n\
         \x20       Authorization: \"Bearer hunter2-http\"\n",
    ),
];

fn write_workflows(dir: &TempDir) -> Vec<&'static str> {
    for (name, text) in WORKFLOWS {
        dir.write(name, text);
    }
    WORKFLOWS.iter().map(|(n, _)| *n).collect()
}

#[test]
fn api_lists_triggers_filters_and_follows_logs() {
    let dir = TempDir::new("web-api");
    let files = write_workflows(&dir);
    dir.write("token", &format!("{TOKEN}\n"));
    let d = Daemon::start(dir.path(), "token_file = \"token\"", &files);
    // One listener serves both /metrics and the web UI (it says so once it listens: the line
    // may follow the first connection by a moment, under qemu-user by more).
    wait_for(Duration::from_secs(10), "the listener's log line", || {
        let log = d.log();
        log.contains("serving HTTP") && log.contains("services=2")
    });

    // The workflows, with what the UI adds to `workflow list --format json`.
    let list = d.json("/api/v1/workflows");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad", "ok", "secret", "slow"]);
    let ok = &list[1];
    assert_eq!(ok["description"], "Two steps");
    assert_eq!(ok["type"], "on-demand");
    assert_eq!(ok["task_count"], 2);
    assert!(list[0]["next_run"]
        .as_str()
        .unwrap()
        .ends_with("-01-01T00:00:00Z"));

    // Triggering needs the token.
    assert_eq!(d.post_run("ok", None).status, 401);
    let wrong = d.post_run("ok", Some("t0ken-with-enough-entropy-4f1d"));
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    assert_eq!(d.post_run("nope", Some(TOKEN)).status, 404);
    let started = d.post_run("ok", Some(TOKEN));
    assert_eq!(started.status, 202, "{}", started.body);
    assert!(started
        .header("location")
        .unwrap()
        .starts_with("/api/v1/executions/"));
    let started: Value = serde_json::from_str(&started.body).unwrap();
    let id = started["execution_id"].as_str().unwrap().to_string();
    let exec = d.finished(&id);
    assert_eq!(exec["execution"]["status"], "success");
    let tasks: Vec<&str> = exec["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_name"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["first", "second"]);
    assert_eq!(exec["attempts"].as_array().unwrap().len(), 2);

    // The same shapes as the command line's --format json, read beside the daemon.
    let status = cli_json(
        dir.path(),
        &["status", "--workflow", "ok", "--format", "json"],
    );
    let mut api = exec.clone();
    api.as_object_mut().unwrap().remove("attempts");
    assert_eq!(api, status[0]);
    let bad_id = d.run_now("bad");
    assert_eq!(d.finished(&bad_id)["execution"]["status"], "failed");
    let history = cli_json(dir.path(), &["history", "--format", "json"]);
    assert_eq!(d.json("/api/v1/executions"), history);
    let ok_history = cli_json(
        dir.path(),
        &["history", "--workflow", "ok", "--format", "json"],
    );
    assert_eq!(d.json("/api/v1/workflows/ok/executions"), ok_history);

    // History filters: workflow, status, since, limit; bad values are 400 naming them.
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(d.json("/api/v1/executions?status=failed")),
        [bad_id.as_str()]
    );
    assert_eq!(ids(d.json("/api/v1/executions?workflow=ok")), [id.as_str()]);
    assert_eq!(ids(d.json("/api/v1/executions?limit=1")), [bad_id.as_str()]);
    assert_eq!(ids(d.json("/api/v1/executions?since=2000-01-01")).len(), 2);
    assert!(ids(d.json("/api/v1/executions?since=2999-01-01T00:00:00Z")).is_empty());
    for (query, named) in [
        ("status=meh", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
    ] {
        let r = d.get(&format!("/api/v1/executions?{query}"));
        assert_eq!(r.status, 400, "{query}");
        assert!(r.body.contains(named), "{query}: {}", r.body);
    }

    // One workflow: its DAG (no configuration), its latest execution.
    let wf = d.json("/api/v1/workflows/ok");
    assert_eq!(wf["tasks"][1]["depends_on"][0], "first");
    assert_eq!(wf["tasks"][1]["level"], 1);
    assert_eq!(wf["latest"]["execution"]["id"], id.as_str());
    assert_eq!(d.get("/api/v1/workflows/nope").status, 404);
    assert_eq!(d.get("/api/v1/executions/0000").status, 404);

    // A task's log, whole and from an offset.
    let log = d.json(&format!("/api/v1/executions/{id}/tasks/first/log"));
    assert_eq!(log["text"], "hello from first\nmore\n");
    assert_eq!(log["complete"], true);
    let rest = d.json(&format!(
        "/api/v1/executions/{id}/tasks/first/log?offset=17"
    ));
    assert_eq!(rest["text"], "more\n");
    assert_eq!(rest["offset"], 17);
    assert_eq!(rest["next_offset"], 22);
    let past = d.json(&format!(
        "/api/v1/executions/{id}/tasks/first/log?offset=999"
    ));
    assert_eq!(past["text"], "");
    let stderr_log = d.json(&format!("/api/v1/executions/{bad_id}/tasks/boom/log"));
    assert_eq!(stderr_log["text"], "failing\n");

    // Overlap: a second run while one is going is refused.
    let slow_id = d.run_now("slow");
    let second = d.post_run("slow", Some(TOKEN));
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(second.body.contains("allow_concurrent"), "{}", second.body);
    assert_eq!(d.finished(&slow_id)["execution"]["status"], "success");
    assert_eq!(d.post_run("slow", Some(TOKEN)).status, 202);

    // No path or name from a request reaches the file system.
    let secret_file = dir.path().join("picoflow.toml");
    let traversal = [
        format!("/api/v1/executions/{id}/tasks/..%2F..%2F..%2F..%2Fetc%2Fpasswd/log"),
        format!("/api/v1/executions/{id}/tasks/..%2F..%2Fpicoflow.toml/log"),
        format!("/api/v1/executions/{id}/tasks/%2E%2E/log"),
        "/api/v1/executions/..%2F..%2Fpicoflow.toml/tasks/first/log".to_string(),
        format!("/executions/{id}/tasks/..%2F..%2F..%2Fpicoflow.toml/log"),
        "/static/..%2F..%2Fpicoflow.toml".to_string(),
        "/static/../../picoflow.toml".to_string(),
        format!(
            "/api/v1/executions/{id}/tasks/{}/log",
            secret_file.display()
        ),
    ];
    for path in &traversal {
        let r = d.get(path);
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.body
        );
        assert!(
            !r.body.contains("[web]") && !r.body.contains("root:"),
            "{path}"
        );
    }

    // Oversized and malformed requests, methods, foreign hosts.
    let big_head = format!(
        "GET /api/v1/workflows HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert_eq!(request(d.port, &big_head).status, 431);
    let big_body = format!(
        "POST /api/v1/workflows/ok/run HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \
         {TOKEN}\r\nContent-Length: 10000000\r\n\r\n{}",
        "x".repeat(4096)
    );
    assert_eq!(request(d.port, &big_body).status, 413);
    assert_eq!(request(d.port, "GARBAGE\r\n\r\n").status, 400);
    let delete = request(
        d.port,
        "DELETE /api/v1/workflows HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("allow"), Some("GET, HEAD"));
    assert_eq!(d.get("/api/v1/workflows/ok/run").status, 405);
    let rebinding = request(
        d.port,
        "GET /api/v1/workflows HTTP/1.1\r\nHost: attacker.example:9090\r\n\r\n",
    );
    assert_eq!(rebinding.status, 403);

    // Secrets of task configurations never appear, in the API or the pages.
    let secret_id = d.run_now("secret");
    d.finished(&secret_id);
    for path in [
        "/api/v1/workflows".to_string(),
        "/api/v1/workflows/secret".to_string(),
        "/workflows/secret".to_string(),
        format!("/api/v1/executions/{secret_id}"),
        format!("/executions/{secret_id}"),
    ] {
        let r = d.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            !r.body.contains("hunter2"),
            "{path} shows a secret: {}",
            r.body
        );
    }

    // The API's index lists its endpoints.
    let index = d.json("/api/v1/");
    assert!(index["endpoints"].as_array().unwrap().len() >= 7);
    assert_eq!(d.get("/api/v2/workflows").status, 404);

    // /metrics and /health share the listener.
    assert_eq!(d.get("/health").status, 200);
    assert!(d
        .get("/metrics")
        .body
        .contains("picoflow_workflow_executions_total"));
    d.stop();
}

#[test]
fn triggering_is_forbidden_without_a_token_and_the_ui_stays_on_loopback() {
    let dir = TempDir::new("web-notoken");
    let files = write_workflows(&dir);
    let d = Daemon::start(dir.path(), "", &files);
    let r = d.post_run("ok", Some(TOKEN));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("token"), "{}", r.body);
    assert_eq!(d.get("/api/v1/workflows").status, 200);
    // Listening on 127.0.0.1 only.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{:04X}", d.port);
    let local: Vec<&str> = tcp
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[3] == "0A") // listening sockets
        .map(|f| f[1])
        .filter(|a| a.ends_with(&port))
        .collect();
    assert_eq!(local, [format!("0100007F{port}")]);
    d.stop();
}

#[test]
fn a_missing_token_file_stops_the_daemon_with_its_name() {
    let dir = TempDir::new("web-badtoken");
    let files = write_workflows(&dir);
    write_config(
        dir.path(),
        "[web]\nenabled = true\ntoken_file = \"missing.token\"\n",
    );
    let out = run(picoflow(dir.path()).args(["daemon", "start"]).args(&files));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.token"),
        "{out:?}"
    );
}

/// `(task, state)` of every DAG node in a rendered page.
fn dag_nodes(dom: &str) -> Vec<(String, String)> {
    dom.split("<g class=\"node ")
        .skip(1)
        .map(|g| {
            let attr = |name: &str| {
                let from = g.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                g[from..from + g[from..].find('"').unwrap()].to_string()
            };
            (attr("data-task"), attr("data-state"))
        })
        .collect()
}

#[test]
fn a_browser_renders_workflows_the_dag_an_execution_and_follows_a_log() {
    let dir = TempDir::new("web-browser");
    dir.write(
        "pipeline.yaml",
        "name: pipeline\ndescription: Fetch, check, report\nschedule: \"0 4 * * *\"\ntasks:\n\
         \x20 - {name: fetch, type: shell, config: {command: \"echo fetched\"}}\n\
         \x20 - {name: check, type: shell, depends_on: [fetch], retry: 0, config: {command: \"exit 1\"}}\n\
         \x20 - {name: lint, type: shell, depends_on: [fetch], config: {command: \"true\"}}\n\
         \x20 - {name: report, type: shell, depends_on: [check, lint], config: {command: \"true\"}}\n",
    );
    dir.write(
        "ticker.yaml",
        "name: ticker\ntasks:\n  - name: count\n    type: shell\n    config:\n\
         \x20     command: \"for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done\"\n",
    );
    dir.write("token", TOKEN);
    let d = Daemon::start(
        dir.path(),
        "token_file = \"token\"",
        &["pipeline.yaml", "ticker.yaml"],
    );
    let id = d.run_now("pipeline");
    assert_eq!(d.finished(&id)["execution"]["status"], "failed");

    let profile = dir.path().join("chromium-profile");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://127.0.0.1:{}", d.port);
    let page = |path: &str, shot: &str| -> String {
        let png = shots.join(shot);
        let _ = std::fs::remove_file(&png);
        chromium(
            &[
                &format!("--screenshot={}", png.display()),
                &format!("{base}{path}"),
            ],
            &profile,
        );
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "no screenshot of {path}"
        );
        chromium(&["--dump-dom", &format!("{base}{path}")], &profile)
    };

    // The workflows page.
    let dom = page("/", "workflows.png");
    assert!(dom.contains("data-workflow=\"pipeline\""), "{dom}");
    assert!(dom.contains("Fetch, check, report"));
    assert!(dom.contains("<code>0 4 * * *</code>"));
    assert!(dom.contains("badge s-failed"));
    assert!(dom.contains("0% <small>of 1</small>"), "{dom}");

    // The DAG: one node per task, coloured by its state in the latest execution.
    let dom = page("/workflows/pipeline", "workflow-dag.png");
    let mut nodes = dag_nodes(&dom);
    nodes.sort();
    let expect = [
        ("check", "failed"),
        ("fetch", "success"),
        ("lint", "success"),
        ("report", "skipped"),
    ];
    assert_eq!(
        nodes,
        expect
            .iter()
            .map(|(t, s)| (t.to_string(), s.to_string()))
            .collect::<Vec<_>>(),
        "{dom}"
    );
    assert_eq!(dom.matches("class=\"edge\"").count(), 4);
    assert!(dom.contains(&format!("href=\"/executions/{id}\"")));

    // The execution: task table and one timeline bar per attempt.
    let dom = page(&format!("/executions/{id}"), "execution.png");
    for (task, state) in expect {
        assert!(
            dom.contains(&format!("data-task=\"{task}\" data-state=\"{state}\"")),
            "{task} {state}: {dom}"
        );
    }
    // One bar per attempt: the skipped task's record has one too.
    assert_eq!(dom.matches("class=\"bar s-").count(), 4, "{dom}");
    assert!(dom.contains("data-live=\"false\""));

    // A running execution's log page follows the file until the task ends.
    let tid = d.run_now("ticker");
    let log_url = format!("{base}/executions/{tid}/tasks/count/log");
    d.wait_for_log(&tid, "count", "tick-1");
    let running = d.get(&format!("/executions/{tid}"));
    assert!(
        running.body.contains("data-live=\"true\""),
        "{}",
        running.body
    );
    // Under a virtual time budget the page's timers run at once, while each request to the
    // daemon takes real time: the script polls until the log is complete, then goes idle.
    let dom = chromium(
        &["--virtual-time-budget=3600000", "--dump-dom", &log_url],
        &profile,
    );
    assert!(dom.contains("tick-6"), "the log page did not follow: {dom}");
    assert!(dom.contains("data-follow=\"false\""), "{dom}");
    assert_eq!(d.finished(&tid)["execution"]["status"], "success");

    // A running execution's page reloads its content until the execution ends.
    let tid = d.run_now("ticker");
    let exec_url = format!("{base}/executions/{tid}");
    d.wait_for_log(&tid, "count", "tick-1");
    assert!(d
        .get(&format!("/executions/{tid}"))
        .body
        .contains("data-live=\"true\""));
    let dom = chromium(
        &["--virtual-time-budget=3600000", "--dump-dom", &exec_url],
        &profile,
    );
    assert!(dom.contains("data-live=\"false\""), "{dom}");
    assert!(
        dom.contains("data-task=\"count\" data-state=\"success\""),
        "the page did not follow the run: {dom}"
    );
    d.stop();
}

/// Every page and every API read, task logs included, answered anyone who could reach the
/// port: a local user read the output that the log files' modes hid from them.
#[test]
fn reads_need_the_token_when_the_configuration_says_so() {
    let dir = TempDir::new("web-readtoken");
    let files = write_workflows(&dir);
    dir.write("token", &format!("{TOKEN}\n"));
    let mut d = Daemon::start(
        dir.path(),
        "token_file = \"token\"\nrequire_token_for_reads = true",
        &files,
    );
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    d.auth = bearer.clone();
    let id = d.run_now("ok");
    assert_eq!(d.finished(&id)["execution"]["status"], "success");

    let reads = [
        "/".to_string(),
        "/workflows/ok".to_string(),
        format!("/executions/{id}"),
        format!("/executions/{id}/tasks/first/log"),
        "/api/v1/".to_string(),
        "/api/v1/workflows".to_string(),
        "/api/v1/workflows/ok".to_string(),
        "/api/v1/workflows/ok/executions".to_string(),
        "/api/v1/executions".to_string(),
        format!("/api/v1/executions/{id}"),
        format!("/api/v1/executions/{id}/tasks/first/log"),
    ];
    let wrong = "Authorization: Bearer t0ken-with-enough-entropy-4f1d\r\n";
    for path in &reads {
        for headers in ["", wrong, "Cookie: picoflow_session=guess\r\n"] {
            let r = d.get_as(path, headers);
            assert_eq!(r.status, 401, "{path} with {headers:?}: {}", r.body);
            assert!(!r.body.contains("hello from first"), "{path}: {}", r.body);
            assert!(!r.body.contains("\"ok\""), "{path}: {}", r.body);
        }
        assert_eq!(d.get_as(path, &bearer).status, 200, "{path}");
    }
    let api = d.get_as("/api/v1/workflows", "");
    assert_eq!(api.header("www-authenticate"), Some("Bearer"));
    assert!(api.body.contains("\"error\""), "{}", api.body);
    // A page without the token offers a sign-in form instead.
    let page = d.get_as("/workflows/ok", "");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("action=\"/login\""), "{}", page.body);
    assert!(
        page.body.contains("value=\"/workflows/ok\""),
        "{}",
        page.body
    );

    // Signing in sets a cookie the browser sends with every page and API read.
    let login = |body: &str| {
        request(
            d.port,
            &format!(
                "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let bad = login("token=t0ken-with-enough-entropy-4f1d&next=%2F");
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(bad.header("set-cookie"), None);
    let next = format!("%2Fexecutions%2F{id}");
    let ok = login(&format!("token={TOKEN}&next={next}"));
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert!(
        ok.head.starts_with("HTTP/1.1 303 See Other\r\n"),
        "{}",
        ok.head
    );
    assert_eq!(
        ok.header("location"),
        Some(format!("/executions/{id}").as_str())
    );
    let cookie = ok.header("set-cookie").expect("a cookie").to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let with_cookie = format!("Cookie: theme=dark; {pair}\r\n");
    for path in &reads {
        assert_eq!(d.get_as(path, &with_cookie).status, 200, "{path}");
    }
    // Only a path on this server is a place to go after signing in.
    let away = login(&format!("token={TOKEN}&next=%2F%2Fattacker.example%2F"));
    assert_eq!(away.header("location"), Some("/"));
    // A cookie never triggers a run: that takes the bearer header.
    let post = request(
        d.port,
        &format!(
            "POST /api/v1/workflows/ok/run HTTP/1.1\r\nHost: 127.0.0.1\r\n{with_cookie}\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(post.status, 401, "{}", post.body);

    // The probes and the script and style sheet of the sign-in page stay open.
    assert_eq!(d.get_as("/health", "").status, 200);
    assert_eq!(d.get_as("/static/picoflow.css", "").status, 200);
    d.stop();
}

/// `bind = "0.0.0.0"` turned the rebinding guard off and served all history to the network
/// without a word.
#[test]
fn a_non_loopback_bind_needs_the_token_for_reads() {
    let dir = TempDir::new("web-exposed");
    let files = write_workflows(&dir);
    dir.write("token", &format!("{TOKEN}\n"));
    let port = free_port();
    let base = format!("[metrics]\nenabled = false\n[web]\nport = {port}\nbind = \"0.0.0.0\"\n");
    for extra in [
        "",
        "token_file = \"token\"\n",
        "require_token_for_reads = true\n",
    ] {
        write_config(dir.path(), &format!("{base}{extra}"));
        let out = run(picoflow(dir.path())
            .args(["daemon", "start", "--web"])
            .args(&files));
        assert_eq!(out.status.code(), Some(4), "{extra:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("0.0.0.0") && err.contains("require_token_for_reads"),
            "{extra:?}: {err}"
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{extra:?}: nothing may listen"
        );
        // Refused before anything starts: no state file, no PID file.
        assert!(!dir.path().join("picoflow.redb").exists(), "{extra:?}");
        assert!(!dir.path().join("picoflow.redb.pid").exists(), "{extra:?}");
    }
    // With the token required it starts; connect over the loopback only.
    let config = format!("{base}token_file = \"token\"\nrequire_token_for_reads = true\n");
    let mut d = Daemon::spawn(dir.path(), port, &config, &files);
    assert_eq!(d.get("/api/v1/workflows").status, 401);
    d.auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(d.get("/api/v1/workflows").status, 200);
    // Reached by another name, as from the network: the token is what guards it.
    let named = request(
        port,
        &format!(
            "GET /api/v1/workflows HTTP/1.1\r\nHost: device.lan:{port}\r\n\
             Authorization: Bearer {TOKEN}\r\n\r\n"
        ),
    );
    assert_eq!(named.status, 200, "{}", named.body);
    d.stop();
}

/// A task printing 6 MB: its execution in the API and on its page.
const BIG: &str = "name: big\ntasks:\n  - name: loud\n    type: shell\n    config:\n\
                   \x20     command: \"head -c 6000000 /dev/zero | tr '\\\\0' a; \
                   echo; echo END-OF-OUTPUT\"\n";

/// `/api/v1/executions/ID` repeated each attempt's whole capture (10 MB a stream) twice, in
/// `tasks` and in `attempts`.
#[test]
fn the_execution_view_shows_only_the_tail_of_a_large_capture() {
    let dir = TempDir::new("web-bigcapture");
    dir.write("big.yaml", BIG);
    dir.write("token", TOKEN);
    let d = Daemon::start(dir.path(), "token_file = \"token\"", &["big.yaml"]);
    let id = d.run_now("big");
    let exec = d.finished(&id);
    assert_eq!(exec["execution"]["status"], "success");
    let r = d.get(&format!("/api/v1/executions/{id}"));
    assert!(r.body.len() < 32 * 1024, "{} bytes", r.body.len());
    let log_url = format!("/api/v1/executions/{id}/tasks/loud/log");
    for attempt in [&exec["tasks"][0], &exec["attempts"][0]] {
        let out = attempt["stdout"].as_str().unwrap();
        assert!(out.len() <= 4096, "{} bytes", out.len());
        assert!(out.ends_with("aaaa\nEND-OF-OUTPUT\n"), "{out}");
        assert_eq!(attempt["stdout_truncated"], true, "{attempt}");
        assert_eq!(attempt["stdout_size"], 6_000_015, "{attempt}");
        assert_eq!(attempt["log"], log_url.as_str(), "{attempt}");
        assert!(attempt.get("stderr_truncated").is_none(), "{attempt}");
    }
    // The whole output is still there, through the log endpoint.
    let log = d.json(&format!("{log_url}?offset=5999990"));
    assert_eq!(log["text"], "aaaaaaaaaa\nEND-OF-OUTPUT\n");
    assert_eq!(log["size"], 6_000_015);
    // Every other view of the execution is as small.
    for path in [
        "/api/v1/executions".to_string(),
        "/api/v1/workflows/big/executions".to_string(),
        "/api/v1/workflows/big".to_string(),
        format!("/executions/{id}"),
        "/workflows/big".to_string(),
    ] {
        let r = d.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.len() < 32 * 1024, "{path}: {} bytes", r.body.len());
    }
    d.stop();
}

/// A daemon's run whose task an unmet requirement skipped and whose other task it failed:
/// the execution page, the API and the metrics say which guard and what was found.
#[test]
fn unmet_requirements_show_on_the_execution_page_the_api_and_the_metrics() {
    let dir = TempDir::new("web-guards");
    dir.write(
        "edge.yaml",
        "name: edge
tasks:
  - {name: hot, type: shell, requires: {max_cpu_temperature: 70, on_unmet: skip}, config: {command: \"true\"}}
  - {name: full, type: shell, requires: {min_free_memory: 1000000GB}, config: {command: \"true\"}}
",
    );
    dir.write("token", TOKEN);
    let zone = dir.path().join("root/sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("temp"), "75000\n").unwrap();
    std::env::set_var("PICOFLOW_HOST_ROOT", dir.path().join("root"));
    let d = Daemon::start(dir.path(), "token_file = \"token\"", &["edge.yaml"]);
    std::env::remove_var("PICOFLOW_HOST_ROOT");
    let id = d.run_now("edge");
    let exec = d.finished(&id);
    assert_eq!(exec["execution"]["status"], "failed", "{exec}");
    let hot =
        "skipped: requirement not met: max_cpu_temperature: CPU at 75.0 °C, at most 70 °C allowed";
    let message = |name: &str| {
        exec["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task_name"] == name)
            .map(|t| t["error_message"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    assert_eq!(message("hot"), hot);
    assert!(
        message("full").starts_with("requirement not met: min_free_memory: "),
        "{exec}"
    );
    let page = d.get(&format!("/executions/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(hot), "{}", page.body);
    let metrics = d.get("/metrics").body;
    for line in [
        "picoflow_requirements_unmet_total{workflow=\"edge\",task=\"hot\",guard=\"max_cpu_temperature\",action=\"skip\"} 1",
        "picoflow_requirements_unmet_total{workflow=\"edge\",task=\"full\",guard=\"min_free_memory\",action=\"fail\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    d.stop();
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The most the daemon's resident memory may grow while 64 clients ask for a large
/// execution and never read (README "Web UI and API").
const STALLED_GROWTH_KIB: u64 = 32 * 1024;

/// 64 clients that asked for an execution with 10 MB captures and never read the answer
/// raised the daemon from 19 MB to 767 MB and kept `/metrics` waiting for 8 s.
#[test]
fn stalled_readers_of_a_large_execution_keep_the_daemon_small() {
    let dir = TempDir::new("web-stalled");
    dir.write("big.yaml", BIG);
    dir.write("token", TOKEN);
    let d = Daemon::start(dir.path(), "token_file = \"token\"", &["big.yaml"]);
    let id = d.run_now("big");
    wait_for(Duration::from_secs(30), "the run to finish", || {
        d.get(&format!(
            "/api/v1/executions/{id}/tasks/loud/log?offset=6000000"
        ))
        .body
        .contains("\"complete\": true")
    });
    let pid = d.child.id();
    let before = rss_kib(pid);
    let ask = format!("GET /api/v1/executions/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut stalled = Vec::new();
    let mut peak = before;
    for _ in 0..64 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.write_all(ask.as_bytes()).unwrap();
        stalled.push(s);
        peak = peak.max(rss_kib(pid));
    }
    // Meanwhile the probe still answers, and memory stays bounded.
    let asked = Instant::now();
    let health = d.get("/health");
    let waited = asked.elapsed();
    // Until every client has its answer waiting (or a minute passed), the peak.
    for s in &stalled {
        s.set_nonblocking(true).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(60);
    let answered = |s: &std::net::TcpStream| s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    while Instant::now() < until && !stalled.iter().all(answered) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak = peak.max(rss_kib(pid));
    let served = stalled.iter().filter(|s| answered(s)).count();
    eprintln!(
        "daemon RSS: {before} KiB before, {peak} KiB at most with 64 stalled readers; \
         /health answered in {waited:?}; {served} of them have their answer"
    );
    assert_eq!(served, 64, "every client gets its answer in the end");
    assert_eq!(health.status, 200, "{health:?}");
    assert!(waited < Duration::from_secs(3), "/health took {waited:?}");
    assert!(
        peak <= before + STALLED_GROWTH_KIB,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    drop(stalled);
    d.stop();
}

/// The peak resident memory of a process so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A workflow page or an API history read every listed execution's whole captures before
/// showing any: 50 runs of a task printing 6 MB held 300 MB at once for one page.
#[test]
fn a_history_of_large_captures_is_read_one_execution_at_a_time() {
    let dir = TempDir::new("web-bighistory");
    dir.write("big.yaml", BIG);
    dir.write("token", TOKEN);
    let d = Daemon::start(dir.path(), "token_file = \"token\"", &["big.yaml"]);
    for _ in 0..8 {
        let id = d.run_now("big");
        wait_for(Duration::from_secs(30), "the run to finish", || {
            d.get(&format!(
                "/api/v1/executions/{id}/tasks/loud/log?offset=6000000"
            ))
            .body
            .contains("\"complete\": true")
        });
    }
    let pid = d.child.id();
    // One execution read whole, as every view does, sets the peak the history may reach.
    assert_eq!(d.get("/api/v1/executions?limit=1").status, 200);
    let before = peak_rss_kib(pid);
    for path in [
        "/workflows/big",
        "/api/v1/executions",
        "/api/v1/workflows/big/executions",
    ] {
        let r = d.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.len() < 128 * 1024, "{path}: {} bytes", r.body.len());
    }
    let after = peak_rss_kib(pid);
    eprintln!("daemon peak RSS: {before} KiB before, {after} KiB after reading 8 runs");
    assert!(
        after <= before + 12 * 1024,
        "the peak grew from {before} KiB to {after} KiB"
    );
    d.stop();
}
