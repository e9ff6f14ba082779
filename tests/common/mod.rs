//! Helpers shared by the integration tests: temporary directories and the real binary.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "picoflow-test-{tag}-{}-{}",
            std::process::id(),
            picoflow_lib::new_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `picoflow` binary, run in `dir` with its state there.
///
/// `PICOFLOW_TEST_BIN` names another binary to test (a cross-built one, say) and
/// `PICOFLOW_TEST_RUNNER` a command line it runs under (`qemu-aarch64-static -L /`); without
/// them the tests run the binary cargo built beside them.
pub(crate) fn picoflow(dir: &Path) -> Command {
    let bin = std::env::var_os("PICOFLOW_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_picoflow")),
        PathBuf::from,
    );
    let runner = std::env::var("PICOFLOW_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    c.current_dir(dir)
        .env_remove("PICOFLOW_DB_PATH")
        .env_remove("PICOFLOW_LOG_LEVEL")
        .env_remove("PICOFLOW_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env("HOME", dir);
    c
}

/// How long one command may take before the test fails instead of hanging the suite.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Runs and returns the output; prints it for debugging. A command still running after
/// two minutes is killed and fails the test, so a hung binary cannot stall the whole suite.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start picoflow");
    let out = finish(child, &format!("{cmd:?}"));
    eprintln!(
        "--- {:?} exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for `child` (its piped streams read as they come) for at most two minutes. One that
/// takes longer is killed and fails the test with what it printed so far.
pub(crate) fn finish(mut child: Child, what: &str) -> Output {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // What it printed, unless a process it left holds the pipes open.
            let so_far = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
                rx.recv_timeout(Duration::from_secs(2))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|_| "(still open)".into())
            };
            panic!(
                "{what} did not finish within {COMMAND_LIMIT:?}\n--- stdout\n{}\n--- stderr\n{}",
                so_far(out),
                so_far(err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.recv().unwrap_or_default(),
        stderr: err.recv().unwrap_or_default(),
    }
}

/// Polls `f` every 50 ms until it holds; fails the test, naming `what`, after `limit`.
pub(crate) fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cmd` (a `picoflow` command in `dir`) as `daemon start FILES` with its log in
/// `dir/daemon.log`, and waits (up to 20 s) for its status file.
pub(crate) fn start_daemon(cmd: &mut Command, dir: &Path, files: &[&str]) -> Child {
    let child = cmd
        .args(["--log-format", "pretty", "daemon", "start"])
        .args(files)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the daemon to write its status",
        || dir.join("picoflow.redb.pid.json").exists(),
    );
    child
}

/// Up to 1000 executions of `wf` in the history of the state file in `dir`, newest first, as
/// `history --format json` gives them.
pub(crate) fn history(dir: &Path, wf: &str) -> Vec<serde_json::Value> {
    let out = run(picoflow(dir).args([
        "history",
        "--workflow",
        wf,
        "--limit",
        "1000",
        "--format",
        "json",
    ]));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One request the test server received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
}

/// A real HTTP/1.1 server on 127.0.0.1: answers every request with 200 and `reply` (JSON)
/// and keeps what it received. Stopped when dropped.
pub(crate) struct HttpServer {
    pub(crate) port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpServer {
    pub(crate) fn start(reply: &str) -> HttpServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopped, reply) = (requests.clone(), stop.clone(), reply.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let mut words = first.split_whitespace();
                seen.lock().unwrap().push(Request {
                    method: words.next().unwrap_or_default().to_string(),
                    path: words.next().unwrap_or_default().to_string(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        HttpServer {
            port,
            requests,
            stop,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag and ends.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Headless Chromium as installed by `scripts/install-test-deps.sh`.
pub(crate) fn chromium(args: &[&str], profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed by scripts/install-test-deps.sh");
    assert!(out.status.success(), "chromium {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test CA and a server certificate it signs, for 127.0.0.1 and localhost, made with the
/// `openssl` command (P-256 keys, valid for a day) in a directory of the test's.
pub(crate) struct Certificates {
    /// The CA's certificate (PEM): the trust store of a client.
    pub(crate) ca: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub(crate) cert: PathBuf,
    /// The server's private key (PEM).
    pub(crate) key: PathBuf,
}

impl Certificates {
    /// Makes them in `dir` under names starting with `tag` (two sets may share a directory).
    pub(crate) fn new(dir: &Path, tag: &str) -> Certificates {
        let f = |name: &str| dir.join(format!("{tag}-{name}"));
        let (ca, ca_key) = (f("ca.pem"), f("ca-key.pem"));
        let (cert, key, csr, ext) = (f("cert.pem"), f("key.pem"), f("req.csr"), f("ext.cnf"));
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        // The CA: self-signed, `CA:TRUE` (the `v3_ca` extensions of the default config).
        openssl(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(p256)
                .args([
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN=PicoFlow test CA {tag}"),
                ])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
        );
        // The server's key and request, then its certificate signed by the CA: an end entity
        // (`CA:FALSE`) for server authentication, named by IP address and host name.
        openssl(
            Command::new("openssl")
                .args(["req", "-new"])
                .args(p256)
                .args(["-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        );
        Certificates { ca, cert, key }
    }
}

/// Runs an `openssl` command that must succeed.
fn openssl(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
