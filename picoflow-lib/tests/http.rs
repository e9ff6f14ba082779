//! `type: http` through the engine against a real HTTP/1.1 server on 127.0.0.1 (EXEC-003):
//! methods, headers and `${VAR}` expansion, JSON bodies, `expected_status`, redirects,
//! retries of 5xx but not 4xx, timeouts, cancellation, refused connections, body capture and
//! its cap, and secrets kept out of messages and tracing output (SEC-001).
//!
//! Run: `cargo test -p picoflow-lib --features http --test http`; without the feature
//! (`--no-default-features`) the one test left checks that an http task is rejected.

#[cfg(not(feature = "http"))]
#[test]
fn http_task_needs_the_http_feature() {
    use picoflow_lib::{parse_workflow, Error, Registry};
    let text = "name: w\ntasks:\n  - name: ping\n    type: http\n    config: {url: \"http://127.0.0.1:9/\", method: GET}\n";
    let err = parse_workflow(text, "w.yaml", &Registry::builtin()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingFeature {
                feature: Some("http"),
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("http") && msg.contains("feature"), "{msg}");
}

#[cfg(feature = "http")]
mod with_http {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use picoflow_lib::{
        execution_log_dir, parse_workflow, task_log_path, CancelToken, Engine, EngineSettings,
        Event, EventSink, Registry, RunOptions, RunReport, TaskExecution, TaskState, Vars,
        CAPTURE_LIMIT,
    };

    // ---- a scripted HTTP/1.1 server -------------------------------------------------------

    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        delay: Duration,
    }

    impl Reply {
        fn new(status: u16, body: &str) -> Reply {
            Reply {
                status,
                headers: vec![],
                body: body.as_bytes().to_vec(),
                delay: Duration::ZERO,
            }
        }

        fn delayed(mut self, d: Duration) -> Reply {
            self.delay = d;
            self
        }

        fn header(mut self, name: &'static str, value: &str) -> Reply {
            self.headers.push((name, value.to_string()));
            self
        }
    }

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        target: String,
        /// Names lower-cased, in arrival order.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Recorded {
        fn header(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    /// Answers the n-th request with the n-th reply (the last one repeats), one thread per
    /// connection, and records every request.
    struct Server {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Server {
        fn start(replies: Vec<Reply>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let recorded = recorded.clone();
                    let replies = replies.clone();
                    std::thread::spawn(move || serve(stream, &recorded, &replies));
                }
            });
            Server { addr, requests }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn serve(stream: TcpStream, recorded: &Mutex<Vec<Recorded>>, replies: &[Reply]) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((n, v)) = h.trim_end().split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let reply = {
            let mut r = recorded.lock().unwrap();
            r.push(Recorded {
                method: method.clone(),
                target,
                headers,
                body,
            });
            replies[(r.len() - 1).min(replies.len() - 1)].clone()
        };
        std::thread::sleep(reply.delay);
        let mut head = format!(
            "HTTP/1.1 {} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n",
            reply.status,
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = stream;
        // The client may have given up (timeout tests): write errors are expected then.
        let _ = stream.write_all(head.as_bytes());
        if method != "HEAD" {
            let _ = stream.write_all(&reply.body);
        }
    }

    // ---- running workflows through the engine ---------------------------------------------

    #[derive(Default)]
    struct Attempts(Mutex<Vec<TaskExecution>>);

    impl EventSink for Attempts {
        fn on_event(&self, event: &Event) {
            if let Event::TaskFinished { record, .. } = event {
                self.0.lock().unwrap().push(record.clone());
            }
        }
    }

    struct Ran {
        report: RunReport,
        attempts: Vec<TaskExecution>,
        took: Duration,
    }

    fn engine(vars: Vars, sink: Arc<Attempts>) -> Engine {
        let mut settings = EngineSettings::default();
        // No backoff between attempts: the retry tests count requests, not seconds.
        settings.retry.max_backoff_seconds = 0;
        Engine::new(Registry::builtin())
            .with_settings(settings)
            .with_vars(vars)
            .with_sink(sink)
    }

    fn workflow(task: &str) -> picoflow_lib::Workflow {
        let text = format!("name: h\ntasks:\n{task}");
        parse_workflow(&text, "h.yaml", &Registry::builtin()).unwrap()
    }

    fn run_with(
        task: &str,
        vars: Vars,
        opts: RunOptions,
        log_dir: Option<&std::path::Path>,
    ) -> Ran {
        let wf = workflow(task);
        let sink = Arc::new(Attempts::default());
        let mut engine = engine(vars, sink.clone());
        if let Some(d) = log_dir {
            engine = engine.with_log_dir(d);
        }
        let t = Instant::now();
        let report = smol::block_on(engine.run(&wf, opts)).unwrap();
        let took = t.elapsed();
        let attempts = sink.0.lock().unwrap().clone();
        eprintln!("report: {:#?}", report.tasks);
        Ran {
            report,
            attempts,
            took,
        }
    }

    fn run(task: &str) -> Ran {
        run_with(task, Vars::isolated(), RunOptions::default(), None)
    }

    fn error(ran: &Ran) -> String {
        ran.report.tasks[0].error.clone().unwrap_or_default()
    }

    // ---- tests -----------------------------------------------------------------------------

    #[test]
    fn get_200_succeeds_and_body_is_captured_and_logged() {
        let server = Server::start(vec![Reply::new(200, "all good\n")]);
        let logs = std::env::temp_dir().join(format!(
            "picoflow-http-logs-{}-{}",
            std::process::id(),
            picoflow_lib::new_id()
        ));
        let task = format!(
            "  - name: health\n    type: http\n    retry: 0\n    config:\n      url: \"{}\"\n      method: get\n",
            server.url("/health")
        );
        let ran = run_with(&task, Vars::isolated(), RunOptions::default(), Some(&logs));
        assert!(ran.report.success());
        let t = &ran.report.tasks[0];
        assert_eq!(
            (t.state, t.attempts, t.exit_code),
            (TaskState::Success, 1, Some(0))
        );
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            (reqs[0].method.as_str(), reqs[0].target.as_str()),
            ("GET", "/health")
        );
        assert!(reqs[0].body.is_empty());
        assert!(reqs[0].header("content-type").is_empty());
        let rec = &ran.attempts[0];
        assert_eq!(rec.stdout.as_deref(), Some("all good\n"));
        assert_eq!(rec.stderr.as_deref(), Some("HTTP/1.1 200 OK\n"));

        let dir = execution_log_dir(
            &logs,
            "h",
            ran.report.execution.started_at,
            &ran.report.execution.id,
        );
        let log = std::fs::read_to_string(task_log_path(&dir, "health")).unwrap();
        let _ = std::fs::remove_dir_all(&logs);
        assert!(log.contains("all good"), "{log}");
    }

    #[test]
    fn not_found_fails_the_workflow() {
        let server = Server::start(vec![Reply::new(404, "no such thing")]);
        let ran = run(&format!(
            "  - name: fetch\n    type: http\n    retry: 0\n    config: {{url: \"{}\", method: GET}}\n",
            server.url("/missing")
        ));
        assert!(!ran.report.success());
        let t = &ran.report.tasks[0];
        assert_eq!((t.state, t.exit_code), (TaskState::Failed, Some(1)));
        assert!(error(&ran).contains("404 Not Found"), "{}", error(&ran));
        assert!(error(&ran).contains("expected 2xx"), "{}", error(&ran));
        assert_eq!(ran.attempts[0].stdout.as_deref(), Some("no such thing"));
    }

    #[test]
    fn expected_status_list_accepts_404() {
        let server = Server::start(vec![Reply::new(404, "")]);
        let ran = run(&format!(
            "  - name: gone\n    type: http\n    retry: 0\n    config:\n      url: \"{}\"\n      method: DELETE\n      expected_status: [200, 204, 404]\n",
            server.url("/x")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        assert_eq!(ran.report.tasks[0].exit_code, Some(0));
        assert_eq!(server.requests()[0].method, "DELETE");
    }

    #[test]
    fn post_sends_json_with_expanded_authorization() {
        let server = Server::start(vec![Reply::new(201, "{\"id\":7}")]);
        let mut vars = Vars::isolated();
        vars.set("TOKEN", "t0k3n-abc").set("PATH_PART", "items");
        let task = format!(
            "  - name: create\n    type: http\n    retry: 0\n    config:\n      url: \"{}/${{PATH_PART}}\"\n      method: post\n      headers:\n        Authorization: \"Bearer ${{TOKEN}}\"\n        X-Trace: plain\n      body:\n        name: edge-1\n        size: 3\n        tags: [a, b]\n",
            server.url("/api")
        );
        let ran = run_with(&task, vars, RunOptions::default(), None);
        assert!(ran.report.success(), "{}", error(&ran));
        let req = &server.requests()[0];
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("POST", "/api/items")
        );
        assert_eq!(req.header("authorization"), ["Bearer t0k3n-abc"]);
        assert_eq!(req.header("x-trace"), ["plain"]);
        assert_eq!(req.header("content-type"), ["application/json"]);
        assert!(req.header("expect").is_empty(), "{:?}", req.headers);
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "edge-1", "size": 3, "tags": ["a", "b"]})
        );
        assert_eq!(ran.attempts[0].stdout.as_deref(), Some("{\"id\":7}"));
    }

    #[test]
    fn content_type_header_is_not_overridden_whatever_its_case() {
        let server = Server::start(vec![Reply::new(200, "")]);
        let ran = run(&format!(
            "  - name: put\n    type: http\n    retry: 0\n    config:\n      url: \"{}\"\n      method: PUT\n      headers: {{content-TYPE: application/merge-patch+json}}\n      body: {{a: 1}}\n",
            server.url("/r")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        let req = &server.requests()[0];
        assert_eq!(req.header("content-type"), ["application/merge-patch+json"]);
        assert_eq!(req.body, b"{\"a\":1}");
    }

    #[test]
    fn server_errors_are_retried_until_success() {
        let server = Server::start(vec![
            Reply::new(503, "busy"),
            Reply::new(503, "busy"),
            Reply::new(200, "ok"),
        ]);
        let ran = run(&format!(
            "  - name: flaky\n    type: http\n    retry: 3\n    config: {{url: \"{}\", method: GET}}\n",
            server.url("/")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        assert_eq!(ran.report.tasks[0].attempts, 3);
        assert_eq!(server.requests().len(), 3);
        let states: Vec<_> = ran.attempts.iter().map(|a| a.status).collect();
        assert_eq!(
            states,
            [TaskState::Retrying, TaskState::Retrying, TaskState::Success]
        );
        assert!(ran.attempts[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("503 Service Unavailable"));
    }

    /// A webhook URL kept in the environment (`url: "${WEBHOOK}"`) used to fail validation as
    /// "must be an http:// or https:// URL". It is checked once expanded, when the task runs.
    #[test]
    fn a_url_from_a_variable_is_checked_when_the_task_runs() {
        let server = Server::start(vec![Reply::new(200, "ok")]);
        let task = "  - name: hook\n    type: http\n    retry: 0\n    config:\n      url: \"${WEBHOOK}\"\n      method: POST\n";
        let mut vars = Vars::isolated();
        vars.set("WEBHOOK", server.url("/hook"));
        let ran = run_with(task, vars, RunOptions::default(), None);
        assert!(ran.report.success(), "{}", error(&ran));
        assert_eq!(server.requests()[0].target, "/hook");

        let mut vars = Vars::isolated();
        vars.set("WEBHOOK", "ftp://files.example/drop");
        let ran = run_with(task, vars, RunOptions::default(), None);
        assert!(!ran.report.success());
        let e = error(&ran);
        // The scheme and host are shown; the path from the variable is not (a webhook's
        // path is often its secret).
        assert!(e.contains("'ftp://files.example[REDACTED]'"), "{e}");
        assert!(!e.contains("/drop"), "{e}");
        assert!(e.contains("${WEBHOOK}"), "{e}");
        assert!(e.contains("must be an http:// or https:// URL"), "{e}");
    }

    #[test]
    fn client_errors_are_not_retried() {
        let server = Server::start(vec![Reply::new(400, "bad"), Reply::new(200, "ok")]);
        let ran = run(&format!(
            "  - name: bad\n    type: http\n    retry: 3\n    config: {{url: \"{}\", method: GET}}\n",
            server.url("/")
        ));
        assert!(!ran.report.success());
        assert_eq!(ran.report.tasks[0].attempts, 1);
        assert_eq!(server.requests().len(), 1);
        assert!(error(&ran).contains("400 Bad Request"), "{}", error(&ran));
    }

    #[test]
    fn redirects_are_results_not_followed() {
        let server = Server::start(vec![Reply::new(302, "").header("Location", "/elsewhere")]);
        let task = |expected: &str| {
            format!(
                "  - name: r\n    type: http\n    retry: 0\n    config:\n      url: \"{}\"\n      method: GET\n{expected}",
                server.url("/old")
            )
        };
        let ran = run(&task(""));
        assert!(!ran.report.success());
        assert!(error(&ran).contains("302 Found"), "{}", error(&ran));
        let ran = run(&task("      expected_status: [302]\n"));
        assert!(ran.report.success(), "{}", error(&ran));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert!(reqs.iter().all(|r| r.target == "/old"));
    }

    #[test]
    fn head_request_has_no_body() {
        let server = Server::start(vec![Reply::new(200, "ignored body")]);
        let ran = run(&format!(
            "  - name: h\n    type: http\n    retry: 0\n    config: {{url: \"{}\", method: head}}\n",
            server.url("/")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        assert_eq!(server.requests()[0].method, "HEAD");
        assert_eq!(ran.attempts[0].stdout, None);
    }

    #[test]
    fn request_timeout_ends_a_slow_answer() {
        let server = Server::start(vec![Reply::new(200, "late").delayed(Duration::from_secs(5))]);
        let ran = run(&format!(
            "  - name: slow\n    type: http\n    retry: 0\n    config: {{url: \"{}\", method: GET, timeout: 1}}\n",
            server.url("/")
        ));
        assert!(ran.took < Duration::from_secs(3), "took {:?}", ran.took);
        let t = &ran.report.tasks[0];
        assert_eq!(t.state, TaskState::Timeout);
        assert_eq!(t.exit_code, Some(124));
        assert!(error(&ran).contains("timeout"), "{}", error(&ran));
    }

    #[test]
    fn task_timeout_ends_a_slow_answer() {
        let server = Server::start(vec![Reply::new(200, "late").delayed(Duration::from_secs(5))]);
        let ran = run(&format!(
            "  - name: slow\n    type: http\n    retry: 0\n    timeout: 1\n    config: {{url: \"{}\", method: GET}}\n",
            server.url("/")
        ));
        assert!(ran.took < Duration::from_secs(3), "took {:?}", ran.took);
        assert_eq!(ran.report.tasks[0].state, TaskState::Timeout);
        assert_eq!(ran.report.tasks[0].exit_code, Some(124));
        assert!(
            error(&ran).starts_with("timed out after 1s; GET http://127.0.0.1:"),
            "{}",
            error(&ran)
        );
    }

    #[test]
    fn timeouts_are_retried() {
        let server = Server::start(vec![
            Reply::new(200, "late").delayed(Duration::from_secs(3)),
            Reply::new(200, "quick"),
        ]);
        let ran = run(&format!(
            "  - name: slow\n    type: http\n    retry: 1\n    config: {{url: \"{}\", method: GET, timeout: 1}}\n",
            server.url("/")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        assert_eq!(ran.report.tasks[0].attempts, 2);
        assert_eq!(ran.attempts[0].status, TaskState::Retrying);
    }

    #[test]
    fn cancellation_aborts_the_request() {
        let server = Server::start(vec![Reply::new(200, "late").delayed(Duration::from_secs(5))]);
        let (canceller, token) = CancelToken::new();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            canceller.cancel();
        });
        let opts = RunOptions {
            cancel: token,
            ..RunOptions::default()
        };
        let ran = run_with(
            &format!(
                "  - name: slow\n    type: http\n    retry: 3\n    config: {{url: \"{}\", method: GET}}\n",
                server.url("/")
            ),
            Vars::isolated(),
            opts,
            None,
        );
        stopper.join().unwrap();
        assert!(ran.took < Duration::from_secs(3), "took {:?}", ran.took);
        assert!(!ran.report.success());
        assert_eq!(ran.report.tasks[0].attempts, 1);
        assert!(error(&ran).contains("cancelled; GET"), "{}", error(&ran));
    }

    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn refused_connection_fails_quickly_and_is_retried() {
        let port = closed_port();
        let ran = run(&format!(
            "  - name: down\n    type: http\n    retry: 1\n    config: {{url: \"http://127.0.0.1:{port}/\", method: GET}}\n"
        ));
        assert!(ran.took < Duration::from_secs(3), "took {:?}", ran.took);
        assert!(!ran.report.success());
        let t = &ran.report.tasks[0];
        assert_eq!(
            (t.state, t.attempts, t.exit_code),
            (TaskState::Failed, 2, Some(1))
        );
        let e = error(&ran);
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.to_lowercase().contains("connect"), "{e}");
    }

    #[test]
    fn url_user_info_is_redacted_in_errors() {
        let port = closed_port();
        let mut vars = Vars::isolated();
        vars.set("PW", "hunter2-pw");
        let ran = run_with(
            &format!(
                "  - name: down\n    type: http\n    retry: 0\n    config: {{url: \"http://admin:${{PW}}@127.0.0.1:{port}/x?api_key=k-987&a=1\", method: GET}}\n"
            ),
            vars,
            RunOptions::default(),
            None,
        );
        let e = error(&ran);
        assert!(
            e.contains(&format!(
                "http://[REDACTED]@127.0.0.1:{port}/x?api_key=[REDACTED]&a=1"
            )),
            "{e}"
        );
        for secret in ["hunter2-pw", "admin", "k-987"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
    }

    #[test]
    fn invalid_secret_header_value_is_not_shown() {
        let server = Server::start(vec![Reply::new(200, "")]);
        let mut vars = Vars::isolated();
        vars.set("KEY", "line1-secret\nline2");
        let ran = run_with(
            &format!(
                "  - name: k\n    type: http\n    retry: 3\n    config:\n      url: \"{}\"\n      method: GET\n      headers: {{X-Api-Key: \"${{KEY}}\"}}\n",
                server.url("/")
            ),
            vars,
            RunOptions::default(),
            None,
        );
        let e = error(&ran);
        assert!(e.contains("X-Api-Key"), "{e}");
        assert!(!e.contains("line1-secret"), "{e}");
        // A bad configuration is not retried and sends nothing.
        assert_eq!(ran.report.tasks[0].attempts, 1);
        assert!(server.requests().is_empty());
    }

    #[test]
    fn invalid_header_name_is_rejected_at_load_time() {
        let text = "name: w\ntasks:\n  - name: t\n    type: http\n    config: {url: \"http://127.0.0.1:9/\", method: GET, headers: {\"bad header\": x}}\n";
        let err = parse_workflow(text, "w.yaml", &Registry::builtin()).unwrap_err();
        assert!(err.to_string().contains("bad header"), "{err}");
    }

    #[test]
    fn body_beyond_the_cap_is_truncated() {
        let big = "x".repeat(CAPTURE_LIMIT + 100_000);
        let server = Server::start(vec![Reply::new(200, &big)]);
        let ran = run(&format!(
            "  - name: big\n    type: http\n    retry: 0\n    config: {{url: \"{}\", method: GET}}\n",
            server.url("/")
        ));
        assert!(ran.report.success(), "{}", error(&ran));
        // The capture stops at the cap; the record keeps its end, with the whole size.
        let a = &ran.attempts[0];
        let out = a.stdout.as_deref().unwrap();
        assert_eq!(out.len(), picoflow_lib::STORED_CAPTURE);
        assert!(
            out.ends_with("x\n[output truncated at 10 MB]\n"),
            "{}",
            &out[out.len() - 40..]
        );
        let whole = a.stdout_size.unwrap() as usize;
        assert!(
            (CAPTURE_LIMIT..CAPTURE_LIMIT + 100).contains(&whole),
            "{whole}"
        );
    }

    // ---- secrets in tracing output ---------------------------------------------------------

    /// A global subscriber at TRACE that keeps every event and span, as text.
    struct Recorder;

    static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    static NEXT_SPAN: AtomicU64 = AtomicU64::new(1);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    fn keep(target: &str, text: String) {
        LINES.lock().unwrap().push((target.to_string(), text));
    }

    impl tracing::Subscriber for Recorder {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut f = Fields(format!("span {}", span.metadata().name()));
            span.record(&mut f);
            keep(span.metadata().target(), f.0);
            tracing::span::Id::from_u64(NEXT_SPAN.fetch_add(1, Ordering::Relaxed))
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            let mut f = Fields("record".into());
            values.record(&mut f);
            keep("?", f.0);
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut f = Fields("event".into());
            event.record(&mut f);
            keep(event.metadata().target(), f.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn install_recorder() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            tracing::subscriber::set_global_default(Recorder).expect("no other global subscriber")
        });
    }

    fn vars_with_secrets() -> Vars {
        let mut vars = Vars::isolated();
        vars.set("TOKEN", "trace-tok-5150")
            .set("PW", "trace-pw-8086");
        vars
    }

    /// isahc dumps request headers in `isahc::wire` trace events and records the URL in
    /// debug spans; with a subscriber taking everything, neither may carry a secret.
    #[test]
    fn secrets_stay_out_of_trace_output() {
        install_recorder();
        let server = Server::start(vec![Reply::new(200, "fine")]);
        let mut vars = Vars::isolated();
        vars.set("TOKEN", "trace-tok-5150")
            .set("PW", "trace-pw-8086");
        let url = server.url("/t").replace("http://", "http://op:${PW}@");
        let ran = run_with(
            &format!(
                "  - name: traced\n    type: http\n    retry: 0\n    config:\n      url: \"{url}\"\n      method: POST\n      headers: {{Authorization: \"Bearer ${{TOKEN}}\", Cookie: \"sid=trace-cookie-1\"}}\n      body: {{a: 1}}\n"
            ),
            vars,
            RunOptions::default(),
            None,
        );
        assert!(ran.report.success(), "{}", error(&ran));
        // The server did get the secrets: they were sent, just not shown.
        let req = &server.requests()[0];
        assert_eq!(req.header("authorization"), ["Bearer trace-tok-5150"]);
        assert_eq!(
            req.header("authorization").len() + req.header("cookie").len(),
            2
        );

        // A failing request: isahc reports the error on its agent thread, at warn level.
        let port = closed_port();
        let ran = run_with(
            &format!(
                "  - name: refused\n    type: http\n    retry: 0\n    config:\n      url: \"http://op:${{PW}}@127.0.0.1:{port}/?token=trace-q-31337\"\n      method: GET\n      headers: {{X-Api-Key: \"${{TOKEN}}\"}}\n"
            ),
            vars_with_secrets(),
            RunOptions::default(),
            None,
        );
        assert!(!ran.report.success());

        let lines = LINES.lock().unwrap().clone();
        for (t, l) in &lines {
            if t.starts_with("isahc::handler") {
                eprintln!("{t}: {l}");
            }
        }
        // The recorder does see isahc (its agent thread reports at debug level) and our own
        // request event, so the absence checked below means something.
        assert!(
            lines.iter().any(|(t, _)| t.starts_with("isahc")),
            "no isahc output recorded"
        );
        let ours: Vec<_> = lines
            .iter()
            .filter(|(_, l)| l.contains("http request") && l.contains("traced"))
            .collect();
        assert_eq!(ours.len(), 1, "{lines:#?}");
        assert!(
            ours[0].1.contains("Authorization: [REDACTED]"),
            "{}",
            ours[0].1
        );
        assert!(
            ours[0].1.contains("http://[REDACTED]@127.0.0.1"),
            "{}",
            ours[0].1
        );
        for (target, line) in &lines {
            for secret in [
                "trace-tok-5150",
                "trace-pw-8086",
                "trace-cookie-1",
                "trace-q-31337",
            ] {
                assert!(
                    !line.contains(secret),
                    "{secret} leaked via {target}: {line}"
                );
            }
            assert_ne!(target, "isahc::wire", "{line}");
        }
    }
}
