//! The metrics endpoint over real TCP on 127.0.0.1 (OBS-003, OBS-006): scrapes checked by
//! `promtool`, the health body, routing, slow and oversized clients, and counters fed by a
//! real engine run of shell tasks.
#![cfg(feature = "metrics")]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picoflow_lib::{
    parse_workflow, Engine, EngineSettings, Metrics, MetricsServer, Registry, RunOptions,
};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use smol::{Executor, Timer};

const PROMTOOL: &str = "/usr/bin/promtool";

/// Starts a server on an ephemeral loopback port and drives `body` and the server together
/// on one executor, as the daemon does.
fn with_server<F, Fut>(metrics: Metrics, body: F)
where
    F: FnOnce(Arc<Executor<'static>>, MetricsServer) -> Fut,
    Fut: Future<Output = ()>,
{
    let ex = Arc::new(Executor::new());
    let server = MetricsServer::start(&ex, "127.0.0.1", 0, metrics).expect("bind 127.0.0.1:0");
    let addr = server.local_addr().expect("an address in a metrics build");
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    smol::block_on(ex.run(body(ex.clone(), server)));
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends `request` as is and reads the whole response (the server closes after it).
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    parse_reply(&raw)
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n");
    exchange(addr, req.as_bytes()).await
}

fn addr_of(server: &MetricsServer) -> SocketAddr {
    server.local_addr().unwrap()
}

/// Runs `promtool check metrics` on `text`; returns its exit status success and output.
fn promtool(text: &str) -> (bool, String) {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is required for this test (Debian/Ubuntu package `prometheus`)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn scrape_is_valid_prometheus_text() {
    with_server(Metrics::new(), |_ex, server| async move {
        let r = get(addr_of(&server), "/metrics").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(
            r.header("content-length")
                .map(|v| v.parse::<usize>().unwrap()),
            Some(r.body.len())
        );
        assert!(
            r.body.contains("# TYPE picoflow_memory_bytes gauge\n"),
            "{}",
            r.body
        );
        assert!(sample(&r.body, "picoflow_memory_bytes").unwrap() > 0.0);
        let (ok, msg) = promtool(&r.body);
        assert!(ok, "promtool rejected the scrape: {msg}\n{}", r.body);
    });
}

#[test]
fn promtool_check_is_effective() {
    // A counter without `_total` is a lint error: shows the check above can fail.
    let (ok, msg) = promtool("# HELP x_seconds x\n# TYPE x_seconds counter\nx_seconds 1\n");
    assert!(!ok, "promtool accepted a bad exposition: {msg}");
}

#[test]
fn health_routes_and_methods() {
    let metrics = Metrics::new();
    let loaded: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let text = format!(
                "name: {n}\ntasks:\n  - {{name: t, type: shell, config: {{command: x}}}}\n"
            );
            parse_workflow(&text, "w.yaml", &Registry::builtin()).unwrap()
        })
        .collect();
    metrics.set_workflows(&loaded);
    with_server(metrics, |_ex, server| async move {
        let addr = addr_of(&server);
        let r = get(addr, "/health").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["workflows_loaded"], 2);
        assert!(v["uptime_seconds"].is_u64(), "{v}");
        assert!(v["last_results"].as_object().unwrap().is_empty(), "{v}");

        assert_eq!(get(addr, "/").await.status, 404);
        assert_eq!(get(addr, "/metrics/extra").await.status, 404);
        assert_eq!(get(addr, "/metrics?format=x").await.status, 200);

        let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));

        let r = exchange(addr, b"HEAD /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty(), "HEAD got a body: {:?}", r.body);

        let r = exchange(addr, b"GET /health HTTP/1.0\n\n").await;
        assert_eq!(r.status, 200);
        assert_eq!(exchange(addr, b"nonsense\r\n\r\n").await.status, 400);
    });
}

#[test]
fn oversized_request_head_is_rejected() {
    with_server(Metrics::new(), |_ex, server| async move {
        let addr = addr_of(&server);
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 12 * 1024));
        req.extend_from_slice(b"\r\n\r\n");
        let r = exchange(addr, &req).await;
        assert_eq!(r.status, 431, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
        // Just under the limit is still served.
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 7 * 1024));
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(addr, &req).await.status, 200);
    });
}

#[test]
fn stalled_clients_do_not_block_scrapes_and_time_out() {
    with_server(Metrics::new(), |ex, server| async move {
        let addr = addr_of(&server);
        let started = Instant::now();
        // One client sends nothing, one stops halfway through its request line.
        let silent = ex.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            (started.elapsed(), parse_reply(&raw))
        });
        let half = ex.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metr").await.unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            (started.elapsed(), parse_reply(&raw))
        });
        Timer::after(Duration::from_millis(200)).await;

        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(get(addr, "/metrics").await.status, 200);
        }
        let fast = t.elapsed();
        assert!(fast < Duration::from_secs(1), "scrapes took {fast:?}");

        for task in [silent, half] {
            let (after, reply) = task.await;
            assert_eq!(reply.status, 408, "{reply:?}");
            assert!(
                after >= Duration::from_millis(4500) && after < Duration::from_secs(8),
                "stalled client closed after {after:?}"
            );
        }
    });
}

#[test]
fn dropping_the_server_stops_serving() {
    with_server(Metrics::new(), |_ex, server| async move {
        let addr = addr_of(&server);
        assert_eq!(get(addr, "/health").await.status, 200);
        drop(server);
        // Cancellation takes effect when the executor next runs the accept task.
        Timer::after(Duration::from_millis(100)).await;
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "still accepting after drop");
    });
}

#[test]
fn bind_errors_surface_from_start() {
    let ex = Arc::new(Executor::new());
    let first = MetricsServer::start(&ex, "127.0.0.1", 0, Metrics::new()).unwrap();
    let port = first.local_addr().unwrap().port();
    let err = MetricsServer::start(&ex, "127.0.0.1", port, Metrics::new())
        .expect_err("second bind on the same port");
    assert!(matches!(err, picoflow_lib::Error::Network(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(MetricsServer::start(&ex, "not an address", 0, Metrics::new()).is_err());
}

const WORKFLOW: &str = r#"
name: metrics-demo
tasks:
  - name: prepare
    type: shell
    retry: 0
    config:
      command: "true"
  - name: flaky
    type: shell
    retry: 2
    depends_on: [prepare]
    config:
      command: "echo trying; exit 3"
  - name: publish
    type: shell
    retry: 0
    depends_on: [flaky]
    config:
      command: "true"
"#;

const HEALTHY: &str = r#"
name: metrics-ok
tasks:
  - name: only
    type: shell
    retry: 0
    config:
      command: "sleep 0.2"
"#;

#[test]
fn engine_runs_feed_the_counters() {
    let registry = Registry::builtin();
    let failing = parse_workflow(WORKFLOW, "<metrics-demo>", &registry).unwrap();
    let healthy = parse_workflow(HEALTHY, "<metrics-ok>", &registry).unwrap();
    let mut settings = EngineSettings::default();
    // No backoff: the retries are what is measured, not the waiting.
    settings.retry.max_backoff_seconds = 0;
    let metrics = Metrics::new();
    let engine = Engine::new(registry)
        .with_settings(settings)
        .with_sink(Arc::new(metrics.clone()));

    with_server(metrics, |_ex, server| async move {
        let addr = addr_of(&server);
        let report = engine.run(&failing, RunOptions::default()).await.unwrap();
        assert!(!report.success());
        for _ in 0..2 {
            let report = engine.run(&healthy, RunOptions::default()).await.unwrap();
            assert!(report.success());
        }

        let text = get(addr, "/metrics").await.body;
        let expect = |series: &str, value: f64| {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        };
        let wf = "workflow=\"metrics-demo\"";
        expect(
            &format!("picoflow_workflow_executions_total{{{wf},status=\"failed\"}}"),
            1.0,
        );
        expect(&format!("picoflow_workflow_running{{{wf}}}"), 0.0);
        expect(
            &format!("picoflow_workflow_duration_seconds_count{{{wf}}}"),
            1.0,
        );
        expect(
            &format!("picoflow_task_executions_total{{{wf},task=\"prepare\",status=\"success\"}}"),
            1.0,
        );
        expect(
            &format!("picoflow_task_executions_total{{{wf},task=\"flaky\",status=\"failed\"}}"),
            1.0,
        );
        expect(
            &format!("picoflow_task_executions_total{{{wf},task=\"publish\",status=\"skipped\"}}"),
            1.0,
        );
        expect(
            &format!("picoflow_task_retries_total{{{wf},task=\"flaky\"}}"),
            2.0,
        );
        expect(
            &format!("picoflow_task_duration_seconds_count{{{wf},task=\"flaky\"}}"),
            1.0,
        );
        assert_eq!(
            sample(
                &text,
                &format!("picoflow_task_retries_total{{{wf},task=\"prepare\"}}")
            ),
            None
        );

        let ok = "workflow=\"metrics-ok\"";
        expect(
            &format!("picoflow_workflow_executions_total{{{ok},status=\"success\"}}"),
            2.0,
        );
        expect(
            &format!("picoflow_task_executions_total{{{ok},task=\"only\",status=\"success\"}}"),
            2.0,
        );
        expect(
            &format!("picoflow_task_duration_seconds_bucket{{{ok},task=\"only\",le=\"0.1\"}}"),
            0.0,
        );
        expect(
            &format!("picoflow_task_duration_seconds_bucket{{{ok},task=\"only\",le=\"0.5\"}}"),
            2.0,
        );
        let sum = sample(
            &text,
            &format!("picoflow_task_duration_seconds_sum{{{ok},task=\"only\"}}"),
        )
        .unwrap();
        assert!(
            (0.4..1.0).contains(&sum),
            "two 0.2 s sleeps summed to {sum}"
        );

        let (valid, msg) = promtool(&text);
        assert!(valid, "promtool rejected the scrape: {msg}\n{text}");

        let health: serde_json::Value =
            serde_json::from_str(&get(addr, "/health").await.body).unwrap();
        assert_eq!(health["last_results"]["metrics-demo"], "failed");
        assert_eq!(health["last_results"]["metrics-ok"], "success");
    });
}
