//! The fleet over real NATS servers (the `fleet` feature): daemons on 127.0.0.1 joining one
//! `nats-server` (or a cluster of three), roll-outs and their refusals, runs on demand,
//! inventory and results, the faults a device meets: its server down at start, wrong
//! credentials, a crash during a run, a server of the cluster killed mid-operation; and each way
//! to sign in (token, nkey, credentials file) and TLS with the fleet's own CA. The TLS
//! certificates are made with `openssl` (`common::Certificates`), the nkeys and the JWTs of the
//! credentials file with the `nkeys` crate, all in the test.
//!
//! Each test starts its own servers on free ports with their storage in a temporary
//! directory; every server and daemon is killed when its guard drops, a failing test
//! included. `nats-server` (2.9 or later) must be on the PATH or in /usr/sbin.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{chromium, free_port, picoflow, run, stderr, stdout, wait_for, Certificates, TempDir};
use serde_json::Value;

/// The fleet's prefix (the default).
const PREFIX: &str = "picoflow";

/// Whether the binary under test has the fleet; the tests say so and pass when not.
fn fleet_built() -> bool {
    let version = stdout(&run(picoflow(Path::new(".")).arg("--version")));
    let built = version.contains("+fleet");
    if !built {
        println!("these tests need the fleet feature: {version}");
    }
    built
}

fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A `nats-server` with JetStream, its storage and log in a directory of its own; killed
/// (SIGKILL) on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    name: String,
    dir: PathBuf,
    extra: Vec<String>,
    /// Started with `-js` (all but one test's).
    jetstream: bool,
}

impl Nats {
    /// A single server on `port`, with `extra` arguments (`--user`, …).
    fn start(root: &Path, name: &str, port: u16, extra: &[String]) -> Nats {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats {
            child: None,
            port,
            monitor: free_port(),
            name: name.to_string(),
            dir,
            extra: extra.to_vec(),
            jetstream: true,
        };
        n.spawn();
        n
    }

    /// A single server on `port` without JetStream.
    fn without_jetstream(root: &Path, port: u16) -> Nats {
        let dir = root.join("plain");
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats {
            child: None,
            port,
            monitor: free_port(),
            name: "plain".into(),
            dir,
            extra: Vec::new(),
            jetstream: false,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let before = self.log().matches("Server is ready").count();
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string(), "-n", &self.name])
            .args(if self.jetstream {
                vec!["-js".into(), "-sd".into(), self.dir.join("store")]
            } else {
                Vec::new()
            })
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is needed (package nats-server)");
        self.child = Some(child);
        wait_for(Duration::from_secs(15), "nats-server to be ready", || {
            self.log().matches("Server is ready").count() > before
        });
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash or a pulled plug.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The monitoring endpoint's `/jsz` (JetStream state).
    fn jsz(&self) -> Option<Value> {
        let (code, body) = http_get(self.monitor, "/jsz")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1)?.to_string();
    Some((code, body))
}

/// Three clustered servers (routes between them, JetStream on each), ready when they agree
/// on a meta leader.
struct Cluster {
    servers: Vec<Nats>,
}

impl Cluster {
    fn start(root: &Path) -> Cluster {
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let routes: Vec<String> = cports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            let extra = vec![
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cports[i]),
                "--routes".into(),
                routes.join(","),
                "--cluster_name".into(),
                "c1".into(),
            ];
            servers.push(Nats::start(root, &format!("n{i}"), free_port(), &extra));
        }
        let c = Cluster { servers };
        c.wait_for_leader();
        c
    }

    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(Nats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits for a meta leader that sees both other servers as current peers: before that, a
    /// stream of three replicas cannot be placed.
    fn wait_for_leader(&self) {
        wait_for(
            Duration::from_secs(60),
            "the cluster's JetStream meta leader and its two peers",
            || {
                self.servers
                    .iter()
                    .filter(|s| s.child.is_some())
                    .filter_map(Nats::jsz)
                    .any(|j| {
                        let meta = &j["meta_cluster"];
                        let peers = meta["replicas"].as_array().cloned().unwrap_or_default();
                        meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                            && peers.len() == 2
                            && peers.iter().all(|p| p["current"] == Value::Bool(true))
                    })
            },
        );
    }

    /// The server that leads stream `stream` (its raft group), as a live server sees it.
    fn stream_leader(&self, stream: &str) -> Option<String> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .filter_map(|s| http_get(s.monitor, "/jsz?accounts=true&streams=true"))
            .filter_map(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .find_map(|j| {
                j["account_details"]
                    .as_array()?
                    .iter()
                    .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                    .find(|d| d["name"] == stream)
                    .and_then(|d| d["cluster"]["leader"].as_str().map(str::to_string))
            })
            .filter(|l| !l.is_empty())
    }

    /// Waits for every stream of the fleet to have a leader among the live servers.
    fn wait_for_stream_leaders(&self) {
        let live: Vec<&str> = self
            .servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.name.as_str())
            .collect();
        wait_for(Duration::from_secs(40), "every stream's leader", || {
            fleet_streams().iter().all(|s| {
                self.stream_leader(s)
                    .is_some_and(|l| live.contains(&l.as_str()))
            })
        });
    }

    fn by_name(&mut self, name: &str) -> &mut Nats {
        self.servers.iter_mut().find(|s| s.name == name).unwrap()
    }
}

/// The fleet's streams: its three buckets' and the results.
fn fleet_streams() -> [String; 4] {
    [
        format!("KV_{PREFIX}-nodes"),
        format!("KV_{PREFIX}-workflows"),
        format!("KV_{PREFIX}-applied"),
        format!("{PREFIX}-results"),
    ]
}

/// A picoflow daemon of the fleet in a directory of its own; SIGKILLed on drop.
struct Node {
    child: Option<Child>,
    dir: TempDir,
    name: String,
    files: Vec<String>,
    /// `--log-level` of the daemon.
    level: &'static str,
}

impl Node {
    /// Writes `picoflow.toml` (`[fleet]` with `fleet` as its body after url, node and labels)
    /// and the workflow files `(file, text)`, and starts the daemon on them.
    fn start(
        name: &str,
        url: &str,
        labels: &[&str],
        fleet: &str,
        files: &[(&str, String)],
    ) -> Node {
        Node::with_level(name, url, labels, fleet, files, "info")
    }

    /// [`Node::start`] with the daemon's `--log-level`.
    fn with_level(
        name: &str,
        url: &str,
        labels: &[&str],
        fleet: &str,
        files: &[(&str, String)],
        level: &'static str,
    ) -> Node {
        let dir = TempDir::new(&format!("fleet-{name}"));
        let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
        dir.write(
            "picoflow.toml",
            &format!(
                "[fleet]\nurl = \"{url}\"\nnode = \"{name}\"\nlabels = [{}]\n{fleet}",
                labels.join(", ")
            ),
        );
        Node::in_dir(dir, name, files, level)
    }

    /// A daemon in no fleet: its `picoflow.toml` is `toml`.
    fn alone(name: &str, toml: &str, files: &[(&str, String)]) -> Node {
        let dir = TempDir::new(&format!("fleet-{name}"));
        dir.write("picoflow.toml", toml);
        Node::in_dir(dir, name, files, "info")
    }

    /// Writes the workflow files `(file, text)` into `dir` and starts the daemon on them.
    fn in_dir(dir: TempDir, name: &str, files: &[(&str, String)], level: &'static str) -> Node {
        for (f, text) in files {
            dir.write(f, text);
        }
        let mut n = Node {
            child: None,
            dir,
            name: name.to_string(),
            files: files.iter().map(|(f, _)| f.to_string()).collect(),
            level,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.dir.path().join("picoflow.redb.pid.json"));
        let child = picoflow(self.dir.path())
            .args(["--log-format", "pretty", "--log-level", self.level])
            .args(["daemon", "start"])
            .args(&self.files)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let pid_json = self.dir.path().join("picoflow.redb.pid.json");
        wait_for(
            Duration::from_secs(15),
            "the daemon to write its status",
            || pid_json.exists(),
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn status(&self) -> String {
        stdout(&run(picoflow(self.path()).args(["daemon", "status"])))
    }

    /// The applied workflow file of `wf` in the fleet directory beside the state file.
    fn applied_file(&self, wf: &str) -> PathBuf {
        self.path().join(format!("picoflow.redb.fleet/{wf}.yaml"))
    }

    /// Local history of `wf` (every execution, newest first).
    fn history(&self, wf: &str) -> Vec<Value> {
        let out = run(picoflow(self.path()).args([
            "history",
            "--workflow",
            wf,
            "--limit",
            "100000",
            "--format",
            "json",
        ]));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator's machine: a directory with `[fleet]` pointing at the servers.
struct Operator {
    dir: TempDir,
    /// Commands that time out (exit 7) are made again, for up to 40 s: a cluster that lost a
    /// server may take that long to place the consumers commands make.
    patient: bool,
}

impl Operator {
    fn new(url: &str, extra: &str) -> Operator {
        let dir = TempDir::new("fleet-operator");
        dir.write(
            "picoflow.toml",
            &format!("[fleet]\nurl = \"{url}\"\n{extra}"),
        );
        Operator {
            dir,
            patient: false,
        }
    }

    fn fleet(&self, args: &[&str]) -> Output {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let out = run(picoflow(self.dir.path()).arg("fleet").args(args));
            if !self.patient || out.status.code() != Some(7) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A `fleet` command with `--format json` that must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        let out = self.fleet(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        self.dir.write(name, text)
    }

    /// `fleet workflows --format json`'s node reports for workflow `wf`: node → (status,
    /// revision, error).
    fn applied(&self, wf: &str) -> BTreeMap<String, (String, u64, String)> {
        let v = self.json(&["workflows"]);
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["workflow"] == wf)
            .map(|a| {
                (
                    a["node"].as_str().unwrap().to_string(),
                    (
                        a["status"].as_str().unwrap().to_string(),
                        a["revision"].as_u64().unwrap(),
                        a["error"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// `fleet history` (all of it) of one node and/or workflow.
    fn history(&self, node: Option<&str>, wf: Option<&str>) -> Vec<Value> {
        let mut args = vec!["history", "--limit", "100000"];
        if let Some(n) = node {
            args.extend(["--node", n]);
        }
        if let Some(w) = wf {
            args.extend(["--workflow", w]);
        }
        self.json(&args).as_array().unwrap().clone()
    }

    /// Waits for every node in `nodes` to be listed alive by `fleet nodes`.
    fn wait_for_nodes(&self, nodes: &[&str]) -> Vec<Value> {
        let mut listed = Vec::new();
        wait_for(Duration::from_secs(30), "the nodes' inventory", || {
            listed = self.json(&["nodes"]).as_array().unwrap().clone();
            nodes.iter().all(|n| {
                listed
                    .iter()
                    .any(|r| r["node"] == *n && r["alive"] == Value::Bool(true))
            })
        });
        listed
    }
}

/// A published revision from `Published 'NAME' to TARGET (revision N)`.
fn revision(out: &Output, wf: &str) -> u64 {
    let text = stdout(out);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("Published '{wf}'")))
        .unwrap_or_else(|| panic!("no publication of {wf}: {text}"));
    line.rsplit("revision ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

fn shell_wf(name: &str, schedule: Option<&str>, command: &str) -> String {
    let schedule = schedule
        .map(|s| format!("schedule: \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "name: {name}\n{schedule}tasks:\n  - name: t\n    type: shell\n    config:\n      command: \"{command}\"\n"
    )
}

/// Exactly what the engine recorded: id → status, of executions that ended.
fn statuses(execs: &[Value]) -> BTreeMap<String, String> {
    execs
        .iter()
        .map(|e| {
            let e = if e["execution"].is_object() {
                &e["execution"]
            } else {
                e
            };
            (
                e["id"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A client of the NATS text protocol, to write what no picoflow command would and to read
/// the results stream message by message.
struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    sid: u32,
    /// The inbox prefix of its requests: a device user's own (`_INBOX.NODE`) when it signs
    /// in as one.
    inbox: String,
}

impl RawNats {
    fn connect(url: &str, auth: Option<(&str, &str)>) -> RawNats {
        let addr = url.trim_start_matches("nats://");
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = RawNats {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            sid: 0,
            inbox: auth.map_or("_INBOX.fleettest".into(), |(user, _)| {
                format!("_INBOX.{user}")
            }),
        };
        let info = c.line();
        assert!(info.starts_with("INFO "), "{info}");
        let auth = auth
            .map(|(u, p)| format!(",\"user\":\"{u}\",\"pass\":\"{p}\""))
            .unwrap_or_default();
        write!(
            c.writer,
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true{auth}}}\r\nPING\r\n"
        )
        .unwrap();
        c.until_pong();
        c
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the server closed the connection");
        l.trim_end().to_string()
    }

    fn until_pong(&mut self) {
        loop {
            let l = self.line();
            match l.as_str() {
                "PONG" => return,
                "PING" => self.writer.write_all(b"PONG\r\n").unwrap(),
                l if l.starts_with("-ERR") => panic!("{l}"),
                _ => {}
            }
        }
    }

    /// Publishes `payload` on `subject`; returns once the server has it.
    fn publish(&mut self, subject: &str, payload: &[u8]) {
        write!(self.writer, "PUB {subject} {}\r\n", payload.len()).unwrap();
        self.writer.write_all(payload).unwrap();
        self.writer.write_all(b"\r\nPING\r\n").unwrap();
        self.until_pong();
    }

    /// A request and its reply.
    fn request(&mut self, subject: &str, payload: &[u8]) -> Vec<u8> {
        self.sid += 1;
        let inbox = format!("{}.{}", self.inbox, self.sid);
        write!(self.writer, "SUB {inbox} {}\r\n", self.sid).unwrap();
        write!(self.writer, "PUB {subject} {inbox} {}\r\n", payload.len()).unwrap();
        self.writer.write_all(payload).unwrap();
        self.writer.write_all(b"\r\n").unwrap();
        loop {
            let l = self.line();
            if l == "PING" {
                self.writer.write_all(b"PONG\r\n").unwrap();
                continue;
            }
            assert!(!l.starts_with("-ERR"), "{l}");
            let words: Vec<&str> = l.split_whitespace().collect();
            let (hdr, total) = match words.first() {
                Some(&"MSG") => (0, words.last().unwrap().parse::<usize>().unwrap()),
                Some(&"HMSG") => (
                    words[words.len() - 2].parse::<usize>().unwrap(),
                    words.last().unwrap().parse::<usize>().unwrap(),
                ),
                _ => continue,
            };
            let mut body = vec![0; total + 2];
            self.reader.read_exact(&mut body).unwrap();
            body.truncate(total);
            if words[2] == self.sid.to_string() {
                write!(self.writer, "UNSUB {}\r\n", self.sid).unwrap();
                return body[hdr..].to_vec();
            }
        }
    }

    /// Sends `command` (a `PUB` line and its payload, or a `SUB`) and a PING: the server's
    /// `-ERR` about it, or `None` when the server took it.
    fn error_of(&mut self, command: &str) -> Option<String> {
        write!(self.writer, "{command}\r\nPING\r\n").unwrap();
        let mut err = None;
        loop {
            let l = self.line();
            match l.as_str() {
                "PONG" => return err,
                "PING" => self.writer.write_all(b"PONG\r\n").unwrap(),
                l if l.starts_with("-ERR") => err = Some(l.to_string()),
                _ => {}
            }
        }
    }

    /// Every message of the fleet's results stream: (subject, payload).
    fn results(&mut self) -> Vec<(String, Vec<u8>)> {
        let stream = format!("{PREFIX}-results");
        let info: Value =
            serde_json::from_slice(&self.request(&format!("$JS.API.STREAM.INFO.{stream}"), b""))
                .unwrap();
        let (first, last) = (
            info["state"]["first_seq"].as_u64().unwrap(),
            info["state"]["last_seq"].as_u64().unwrap(),
        );
        let mut out = Vec::new();
        for seq in first..=last {
            let m: Value = serde_json::from_slice(&self.request(
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                format!("{{\"seq\":{seq}}}").as_bytes(),
            ))
            .unwrap();
            if let Some(data) = m["message"]["data"].as_str() {
                out.push((
                    m["message"]["subject"].as_str().unwrap().to_string(),
                    base64(data),
                ));
            }
        }
        out
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (val(*c) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// What the results stream holds, checked: no message is there twice, and every record
/// decodes. Returns the records.
fn stream_records(raw: &mut RawNats) -> Vec<Value> {
    let msgs = raw.results();
    let mut seen = BTreeSet::new();
    for (subject, body) in &msgs {
        assert!(
            seen.insert(body.clone()),
            "a record is in the stream twice ({subject}): {}",
            String::from_utf8_lossy(body)
        );
    }
    msgs.iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect()
}

/// 1. Five nodes: roll-outs to all and to a label converge, a run on a label waits for both
///    nodes' results, and the inventory, status and history show every node.
#[test]
fn five_nodes_apply_run_and_report() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-five");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let names = ["cam-1", "cam-2", "gar-1", "gar-2", "gar-3"];
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            let label = if n.starts_with("cam") {
                "camera"
            } else {
                "garage"
            };
            Node::start(
                n,
                &server.url(),
                &[label],
                "",
                &[("local.yaml", shell_wf("local", Some("0 0 0 1 1 *"), "true"))],
            )
        })
        .collect();

    // The inventory: every node, its labels, architecture and version.
    let listed = op.wait_for_nodes(&names);
    assert_eq!(listed.len(), 5, "{listed:?}");
    for r in &listed {
        let n = r["node"].as_str().unwrap();
        let label = if n.starts_with("cam") {
            "camera"
        } else {
            "garage"
        };
        assert_eq!(r["labels"], serde_json::json!([label]), "{r}");
        assert!(!r["arch"].as_str().unwrap().is_empty(), "{r}");
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert!(r["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "fleet"));
        assert_eq!(r["workflows"]["local"], Value::Null, "{r}");
    }
    let table = stdout(&op.fleet(&["nodes"]));
    for n in names {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(n) && l.contains(" up ")),
            "{table}"
        );
    }

    // To all: every node applies it.
    let hello = op.write("hello.yaml", &shell_wf("hello", None, "echo hello"));
    let out = op.fleet(&["apply", hello.to_str().unwrap(), "--to", "all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev_hello = revision(&out, "hello");
    // To a label: the camera nodes only.
    let snap = op.write("snap.yaml", &shell_wf("snap", None, "sleep 0.5; echo snap"));
    let out = op.fleet(&["apply", snap.to_str().unwrap(), "--to", "camera"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev_snap = revision(&out, "snap");
    wait_for(Duration::from_secs(20), "every node to apply", || {
        let h = op.applied("hello");
        let s = op.applied("snap");
        names.iter().all(|n| {
            h.get(*n)
                .is_some_and(|a| a.0 == "applied" && a.1 == rev_hello)
        }) && s.len() == 2
            && ["cam-1", "cam-2"].iter().all(|n| {
                s.get(*n)
                    .is_some_and(|a| a.0 == "applied" && a.1 == rev_snap)
            })
    });
    for n in &nodes {
        assert!(n.applied_file("hello").is_file(), "{}", n.name);
        assert_eq!(
            n.applied_file("snap").is_file(),
            n.name.starts_with("cam"),
            "{}",
            n.name
        );
        // Loaded beside the local workflow.
        let name = n.name.clone();
        wait_for(Duration::from_secs(10), "the daemon to reload", || {
            let st = n.status();
            st.contains("hello (on demand)")
                && st.contains("local (cron:")
                && st.contains("snap (on demand)") == name.starts_with("cam")
        });
    }
    let shown = stdout(&op.fleet(&["workflows"]));
    assert!(
        shown.contains(&format!("snap → camera (revision {rev_snap}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("hello → all (revision {rev_hello}")),
        "{shown}"
    );
    for n in names {
        assert!(
            shown.contains(&format!("{n:<20} applied revision {rev_hello}")),
            "{shown}"
        );
    }

    // A run on the label: both camera nodes, waited for.
    let out = op.fleet(&["run", "snap", "--on", "camera", "--wait", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for n in ["cam-1", "cam-2"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(n) && l.contains("success")),
            "{text}"
        );
    }
    assert!(!text.contains("gar-"), "{text}");
    assert!(text.contains("2 nodes: 2 succeeded"), "{text}");
    // And on all of them.
    let out = op.fleet(&["run", "hello", "--wait", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("5 nodes: 5 succeeded"),
        "{}",
        stdout(&out)
    );

    // Status: the latest execution of each workflow on each node, as each node recorded it.
    let status = op.json(&["status"]);
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in status.as_array().unwrap() {
        seen.insert(
            (
                r["node"].as_str().unwrap().to_string(),
                r["execution"]["workflow_name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            r["execution"]["status"].as_str().unwrap().to_string(),
        );
    }
    let mut want = BTreeMap::new();
    for n in names {
        want.insert((n.to_string(), "hello".to_string()), "success".to_string());
        if n.starts_with("cam") {
            want.insert((n.to_string(), "snap".to_string()), "success".to_string());
        }
    }
    assert_eq!(seen, want);
    let table = stdout(&op.fleet(&["status"]));
    assert_eq!(
        table.lines().filter(|l| l.contains(" success ")).count(),
        7,
        "{table}"
    );

    // History of one node: exactly its local history.
    for n in &nodes {
        let fleet = op.history(Some(&n.name), None);
        assert!(
            fleet.iter().all(|r| r["node"] == n.name.as_str()),
            "{fleet:?}"
        );
        let mut local = n.history("hello");
        local.extend(n.history("snap"));
        assert_eq!(statuses(&fleet), statuses(&local), "{}", n.name);
    }
    let mut raw = RawNats::connect(&server.url(), None);
    assert_eq!(
        stream_records(&mut raw)
            .iter()
            .filter(|r| r["execution"]["status"] == "success")
            .count(),
        7
    );

    // Arguments that are not names are refused before anything is asked (exit 4); a target
    // no node has is said at once (exit 5), not waited for.
    for args in [
        &["history", "--node", ">"][..],
        &["status", "--workflow", "*"],
        &["run", "a.b"],
        &["run", "hello", "--on", ">"],
        &["remove", "x.*"],
    ] {
        let out = op.fleet(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a"), "{}", stderr(&out));
    }
    let asked = Instant::now();
    let out = op.fleet(&["run", "hello", "--on", "nosuch", "--answer-timeout", "60"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no node of the fleet is 'nosuch'"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("refused"), "{}", stderr(&out));
    assert!(asked.elapsed() < Duration::from_secs(30));

    // History with --limit reads the stream's tail: 600 more executions of a node, the
    // newest shown first, with or without a status filter.
    let mut template = op.history(Some("cam-1"), Some("hello"))[0].clone();
    template["node"] = "bulk-node".into();
    template["execution"]["workflow_name"] = "bulk".into();
    template["tasks"] = serde_json::json!([]);
    for i in 0..600 {
        let mut r = template.clone();
        r["execution"]["id"] = format!("bulk-{i:03}").into();
        r["execution"]["started_at"] = format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60).into();
        r["execution"]["status"] = if i % 2 == 0 { "success" } else { "failed" }.into();
        raw.publish(
            &format!("{PREFIX}.exec.bulk-node.bulk"),
            r.to_string().as_bytes(),
        );
    }
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["history"];
        all.extend(args);
        op.json(&all)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["execution"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&["--limit", "3"]), ["bulk-599", "bulk-598", "bulk-597"]);
    assert_eq!(
        ids(&["--workflow", "bulk", "--status", "success", "--limit", "2"]),
        ["bulk-598", "bulk-596"]
    );
    assert_eq!(ids(&["--node", "bulk-node", "--limit", "1000"]).len(), 600);

    // The results stream's limits: 90 days and 1 GiB when made; an operator whose
    // configuration says otherwise sets them.
    let limits = |raw: &mut RawNats| {
        let info: Value = serde_json::from_slice(
            &raw.request(&format!("$JS.API.STREAM.INFO.{PREFIX}-results"), b""),
        )
        .unwrap();
        (
            info["config"]["max_age"].as_u64().unwrap(),
            info["config"]["max_bytes"].as_i64().unwrap(),
        )
    };
    const DAY_NS: u64 = 24 * 3600 * 1_000_000_000;
    assert_eq!(limits(&mut raw), (90 * DAY_NS, 1 << 30));
    let strict = Operator::new(&server.url(), "results_max_days = 7\nresults_max_mb = 64\n");
    let out = strict.fleet(&["nodes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(limits(&mut raw), (7 * DAY_NS, 64 << 20));

    // One name published to a label and to a node: `fleet workflows` lists every node under
    // it with the publication it took; withdrawn, once, with every node's removal.
    let out = op.fleet(&["apply", snap.to_str().unwrap(), "--to", "cam-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev_cam_1 = revision(&out, "snap");
    wait_for(Duration::from_secs(20), "cam-1 to take its own", || {
        op.applied("snap").get("cam-1").map(|a| a.1) == Some(rev_cam_1)
    });
    let shown = stdout(&op.fleet(&["workflows"]));
    assert!(
        shown.contains(&format!(
            "cam-1                applied revision {rev_cam_1} via cam-1"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "cam-2                applied revision {rev_snap} via camera"
        )),
        "{shown}"
    );
    let out = op.fleet(&["remove", "snap"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(2 publications)"),
        "{}",
        stdout(&out)
    );
    wait_for(Duration::from_secs(20), "the removals", || {
        let a = op.applied("snap");
        a.len() == 2 && a.values().all(|a| a.0 == "removed")
    });
    let shown = stdout(&op.fleet(&["workflows"]));
    assert_eq!(shown.matches("snap (not published)").count(), 1, "{shown}");
    assert!(shown.contains("cam-1                removed"), "{shown}");
    assert!(shown.contains("cam-2                removed"), "{shown}");
}

/// A retired node is forgotten once silent; whether a node is silent is the server's clock's
/// word, not the time a record claims (a device whose clock says 2099 is silent all the same
/// three heartbeats after its last record); a node still heard from, or one the fleet never
/// had, is not forgotten.
#[test]
fn a_retired_node_is_forgotten_by_the_servers_clock() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-forget");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let out = op.fleet(&["nodes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record = serde_json::json!({
        "v": 1, "node": "retired", "labels": ["garage"], "version": "1.0.0",
        "features": ["fleet"], "arch": "aarch64", "uptime_seconds": 10,
        "daemon_started_at": "2099-01-01T00:00:00Z", "load1": 0.1,
        "memory_available_bytes": 1000, "disk_free_bytes": 1000,
        "cpu_temperature_celsius": null, "running": 0, "workflows": {},
        "heartbeat": "2099-01-01T00:00:00Z",
    });
    let report = serde_json::json!({"v": 1, "node": "retired", "workflow": "hello",
        "target": "all", "revision": 1, "status": "applied", "error": null,
        "at": "2099-01-01T00:00:00Z"});
    let mut raw = RawNats::connect(&server.url(), None);
    raw.publish(
        &format!("$KV.{PREFIX}-nodes.retired"),
        record.to_string().as_bytes(),
    );
    raw.publish(
        &format!("$KV.{PREFIX}-applied.retired.hello"),
        report.to_string().as_bytes(),
    );
    // Just heard from: listed up, at the server's time, and not to be forgotten yet.
    let listed = op.json(&["nodes"]);
    assert_eq!(listed[0]["alive"], true, "{listed}");
    assert!(
        !listed[0]["heartbeat"].as_str().unwrap().starts_with("2099"),
        "{listed}"
    );
    let out = op.fleet(&["forget", "retired"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("still heard from"),
        "{}",
        stderr(&out)
    );
    let out = op.fleet(&["forget", "never-was"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    // Three heartbeats (10 s each) later it is silent, whatever its record says.
    wait_for(Duration::from_secs(60), "the node to be silent", || {
        stdout(&op.fleet(&["nodes"]))
            .lines()
            .any(|l| l.starts_with("retired") && l.contains("silent"))
    });
    assert!(op.applied("hello").contains_key("retired"));
    let out = op.fleet(&["forget", "retired"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Forgot node 'retired' (its inventory record and 1 report"),
        "{}",
        stdout(&out)
    );
    assert_eq!(op.json(&["nodes"]), serde_json::json!([]));
    assert!(op.applied("hello").is_empty());
}

/// 2. Refusals: an invalid file is refused before anything is published; a node whose local
///    file has the name refuses the roll-out (the others apply it); records no picoflow would
///    write are refused with a reason and the daemons go on.
#[test]
fn refused_workflows_are_reported_and_nothing_stops() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-refuse");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let mut nodes: Vec<Node> = ["r-1", "r-2", "r-3"]
        .iter()
        .map(|n| {
            let mut files = vec![("tick.yaml", shell_wf("tick", Some("* * * * * *"), "true"))];
            if *n == "r-1" {
                files.push((
                    "clash.yaml",
                    shell_wf("clash", Some("0 0 0 1 1 *"), "echo local"),
                ));
            }
            Node::start(n, &server.url(), &["lab"], "", &files)
        })
        .collect();
    op.wait_for_nodes(&["r-1", "r-2", "r-3"]);

    // Invalid here: exit 2, the file named, nothing published (not even the valid one).
    let good = op.write("good.yaml", &shell_wf("good", None, "true"));
    let bad = op.write(
        "bad.yaml",
        "name: bad\ntasks:\n  - name: t\n    type: shel\n    config:\n      command: \"true\"\n",
    );
    let out = op.fleet(&["apply", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.yaml"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("Published"), "{}", stdout(&out));
    let v = op.json(&["workflows"]);
    assert_eq!(v["published"], serde_json::json!([]), "{v}");

    // A local file wins on its node; the others apply the roll-out.
    let clash = op.write("clash.yaml", &shell_wf("clash", None, "echo fleet"));
    let out = op.fleet(&["apply", clash.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev = revision(&out, "clash");
    let mut reports = BTreeMap::new();
    wait_for(Duration::from_secs(20), "three reports", || {
        reports = op.applied("clash");
        reports.len() == 3
    });
    assert_eq!(reports["r-2"], ("applied".into(), rev, String::new()));
    assert_eq!(reports["r-3"], ("applied".into(), rev, String::new()));
    assert_eq!(reports["r-1"].0, "refused");
    assert!(reports["r-1"].2.contains("local files win"), "{reports:?}");
    assert!(!nodes[0].applied_file("clash").exists());
    assert!(nodes[1].applied_file("clash").is_file());
    let shown = stdout(&op.fleet(&["workflows"]));
    assert!(
        shown.contains(&format!(
            "r-1                  refused revision {rev}: a local workflow file"
        )),
        "{shown}"
    );

    // Raw records on the bucket: not JSON, and a file that names another workflow.
    let mut raw = RawNats::connect(&server.url(), None);
    raw.publish(&format!("$KV.{PREFIX}-workflows.all.junk"), b"hello");
    let other = serde_json::json!({
        "v": 1,
        "yaml": shell_wf("other", None, "true"),
        "file": "x.yaml",
        "published_at": "2024-01-01T00:00:00Z",
    });
    raw.publish(
        &format!("$KV.{PREFIX}-workflows.lab.mismatch"),
        other.to_string().as_bytes(),
    );
    // Brackets nested 100,000 deep (200 KB, under the message limit): the YAML reader would
    // take minutes on it, keeping the fleet thread from heartbeats and run requests.
    let nested = serde_json::json!({
        "v": 1,
        "yaml": format!("name: nest\ntasks: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        "file": "nest.yaml",
        "published_at": "2024-01-01T00:00:00Z",
    });
    raw.publish(
        &format!("$KV.{PREFIX}-workflows.all.nest"),
        nested.to_string().as_bytes(),
    );
    // A key of another shape is not a workflow at all.
    raw.publish(&format!("$KV.{PREFIX}-workflows.a.b.c"), b"{}");
    wait_for(Duration::from_secs(20), "the refusals", || {
        let junk = op.applied("junk");
        let mismatch = op.applied("mismatch");
        let nest = op.applied("nest");
        junk.len() == 3
            && mismatch.len() == 3
            && nest.len() == 3
            && junk.values().all(|a| a.0 == "refused")
            && mismatch.values().all(|a| a.0 == "refused")
            && nest.values().all(|a| a.0 == "refused")
    });
    for a in op.applied("nest").values() {
        assert!(a.2.contains("nested more than 64 deep"), "{a:?}");
    }
    for a in op.applied("junk").values() {
        assert!(a.2.contains("malformed record"), "{a:?}");
    }
    for a in op.applied("mismatch").values() {
        assert!(a.2.contains("defines workflow 'other'"), "{a:?}");
    }
    for n in &mut nodes {
        assert!(n.alive(), "{}", n.log());
        let log = n.log();
        assert!(
            log.lines()
                .any(|l| l.contains("fleet: workflow refused") && l.contains("workflow=junk")),
            "{log}"
        );
        assert!(!n.applied_file("junk").exists());
        assert!(!n.applied_file("mismatch").exists());
        assert!(!log.contains("panicked"), "{log}");
    }
    // The daemons go on: a later roll-out is applied everywhere, their schedules run.
    let after = op.write("after.yaml", &shell_wf("after", None, "true"));
    let out = op.fleet(&["apply", after.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev = revision(&out, "after");
    wait_for(Duration::from_secs(20), "the later roll-out", || {
        let a = op.applied("after");
        a.len() == 3 && a.values().all(|a| a.0 == "applied" && a.1 == rev)
    });
    for n in &nodes {
        let before = n.history("tick").len();
        wait_for(Duration::from_secs(10), "the schedule to go on", || {
            n.history("tick").len() > before
        });
    }
    // Removing the roll-out removes the applied files.
    let out = op.fleet(&["remove", "clash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "the removal", || {
        !nodes[1].applied_file("clash").exists() && !nodes[2].applied_file("clash").exists()
    });
    let out = op.fleet(&["remove", "clash"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("workflow 'clash' is not published"),
        "{}",
        stderr(&out)
    );

    // A run that fails says which task failed and why.
    let fails = op.write("fails.yaml", &shell_wf("fails", None, "exit 3"));
    let out = op.fleet(&["apply", fails.to_str().unwrap(), "--to", "r-2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "the failing run", || {
        let out = op.fleet(&["run", "fails", "--on", "r-2", "--wait", "--timeout", "20"]);
        out.status.code() == Some(3)
            && stdout(&out).contains("r-2                  failed")
            && stdout(&out).contains(": task 't' failed (exit code 3)")
    });

    // A local file that takes an applied workflow's name later wins too, and the report
    // says so (within a heartbeat of the reload).
    nodes[2]
        .dir
        .write("tick.yaml", &shell_wf("after", None, "echo local"));
    nodes[2].signal(libc::SIGHUP);
    wait_for(
        Duration::from_secs(30),
        "the later local file's refusal",
        || {
            op.applied("after")
                .get("r-3")
                .is_some_and(|a| a.0 == "refused" && a.2.contains("local files win"))
        },
    );
    assert!(!nodes[2].applied_file("after").exists());
    assert!(nodes[1].applied_file("after").is_file());
}

/// A server that restarts (killed, storage kept) changes nothing on the nodes: they
/// reconnect and keep what they applied (no removal and re-application, no reload),
/// `fleet workflows` still says applied, and runs on demand work again.
#[test]
fn a_server_restart_leaves_applied_workflows_alone() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-restart");
    let mut server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    // Started before anything is published.
    let node = Node::start(
        "steady",
        &server.url(),
        &[],
        "",
        &[("local.yaml", shell_wf("local", Some("0 0 0 1 1 *"), "true"))],
    );
    op.wait_for_nodes(&["steady"]);
    let wf = op.write("kept.yaml", &shell_wf("kept", None, "true"));
    let out = op.fleet(&["apply", wf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev = revision(&out, "kept");
    wait_for(Duration::from_secs(20), "the roll-out", || {
        op.applied("kept").get("steady") == Some(&("applied".into(), rev, String::new()))
    });
    server.kill();
    wait_for(Duration::from_secs(10), "the link to drop", || {
        node.status().contains("Fleet: not connected")
    });
    server.spawn();
    wait_for(Duration::from_secs(30), "the link again", || {
        node.status().contains("Fleet: connected")
    });
    // The watch is made again within a few seconds of the reconnection.
    std::thread::sleep(Duration::from_secs(4));
    let log = node.log();
    assert!(!log.contains("fleet: workflow removed"), "{log}");
    assert_eq!(log.matches("fleet: workflow applied").count(), 1, "{log}");
    assert!(node.applied_file("kept").is_file());
    assert_eq!(
        op.applied("kept").get("steady"),
        Some(&("applied".into(), rev, String::new()))
    );
    let out = op.fleet(&["run", "kept", "--on", "steady", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// 3b. A server without JetStream: the daemon connects, says in its status and once in its
///     log that the server does not run JetStream, and runs its schedule alone.
#[test]
fn a_server_without_jetstream_is_named_as_the_problem() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-nojs");
    let server = Nats::without_jetstream(root.path(), free_port());
    let node = Node::start(
        "plain",
        &server.url(),
        &[],
        "",
        &[("tick.yaml", shell_wf("tick", Some("*/1 * * * * *"), "true"))],
    );
    wait_for(
        Duration::from_secs(30),
        "the problem in daemon status",
        || {
            node.status().contains(&format!(
                "Fleet: connected as plain to {} (since",
                server.url()
            )) && node
                .status()
                .contains("but the server does not run JetStream (start it with -js")
        },
    );
    wait_for(Duration::from_secs(15), "local runs", || {
        node.history("tick").len() >= 2
    });
    let log = node.log();
    assert_eq!(log.matches("does not run JetStream").count(), 1, "{log}");
    let op = Operator::new(&server.url(), "");
    let out = op.fleet(&["nodes"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not run JetStream (start it with -js"),
        "{}",
        stderr(&out)
    );
}

/// 3c. A device of a fleet starts without a workflow file of its own and runs what the fleet
///     gives it; a daemon in no fleet still needs one (exit 4).
#[test]
fn a_device_may_start_with_only_what_the_fleet_gives_it() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-bare");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let node = Node::start("bare", &server.url(), &[], "", &[]);
    op.wait_for_nodes(&["bare"]);
    assert!(
        node.status().contains("Workflows: 0 loaded"),
        "{}",
        node.status()
    );
    let hello = op.write("hello.yaml", &shell_wf("hello", None, "echo hi"));
    let out = op.fleet(&["apply", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for(
        Duration::from_secs(20),
        "a run of the applied workflow",
        || {
            let out = op.fleet(&["run", "hello", "--wait", "--timeout", "20"]);
            out.status.code() == Some(0) && stdout(&out).contains("1 node: 1 succeeded")
        },
    );
    let alone = TempDir::new("fleet-nofiles");
    let out = run(picoflow(alone.path()).args(["daemon", "start"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("give one or more workflow files or directories"),
        "{}",
        stderr(&out)
    );
}

/// 3a. A node whose server is down at start runs its schedule alone; once the server is up it
///     connects and sends every execution's records once.
#[test]
fn a_node_without_its_server_works_alone_then_reports_each_execution_once() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-late");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let node = Node::start(
        "late",
        &url,
        &[],
        "",
        &[("tick.yaml", shell_wf("tick", Some("*/1 * * * * *"), "true"))],
    );
    let st = node.status();
    assert!(
        st.contains(&format!("Fleet: not connected as late to {url}")),
        "{st}"
    );
    wait_for(Duration::from_secs(15), "local runs", || {
        node.history("tick").len() >= 4
    });
    let st = node.status();
    assert!(st.contains("executions' records not yet sent"), "{st}");

    let server = Nats::start(root.path(), "s", port, &[]);
    wait_for(Duration::from_secs(30), "the link", || {
        node.status()
            .contains(&format!("Fleet: connected as late to {url}"))
    });
    // Stop the schedule (a reload), so that the counts can settle.
    node.dir
        .write("tick.yaml", &shell_wf("tick", Some("0 0 0 1 1 *"), "true"));
    node.signal(libc::SIGHUP);
    let op = Operator::new(&url, "");
    let mut fleet = Vec::new();
    let mut local = Vec::new();
    wait_for(Duration::from_secs(30), "every record", || {
        local = node.history("tick");
        fleet = op.history(Some("late"), Some("tick"));
        local.iter().all(|e| e["status"] != "running")
            && statuses(&fleet) == statuses(&local)
            && !node.status().contains("not yet sent")
    });
    let ids: Vec<&str> = fleet
        .iter()
        .map(|r| r["execution"]["id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "an execution twice: {ids:?}");
    assert_eq!(fleet.len(), local.len());
    // In the stream: no record twice, and one final record per execution.
    let mut raw = RawNats::connect(&server.url(), None);
    let records = stream_records(&mut raw);
    let finals: Vec<&str> = records
        .iter()
        .filter(|r| r["execution"]["status"] == "success")
        .map(|r| r["execution"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(finals.len(), local.len(), "{finals:?}");
    let log = node.log();
    assert_eq!(log.matches("fleet: connected").count(), 1, "{log}");
}

/// 3b. Wrong credentials: the daemon runs its schedule, `daemon status` shows the server's
///     refusal, and the log says so once however often the client retries.
#[test]
fn wrong_credentials_are_shown_and_logged_once() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-auth");
    let server = Nats::start(
        root.path(),
        "s",
        free_port(),
        &[
            "--user".into(),
            "fleet".into(),
            "--pass".into(),
            "right-pass".into(),
        ],
    );
    let node = Node::start(
        "locked",
        &server.url(),
        &[],
        "user = \"fleet\"\npassword = \"wrong-pass\"\n",
        &[("tick.yaml", shell_wf("tick", Some("* * * * * *"), "true"))],
    );
    let mut st = String::new();
    wait_for(Duration::from_secs(20), "the refusal in the status", || {
        st = node.status();
        st.contains("Fleet: not connected as locked") && st.to_lowercase().contains("authorization")
    });
    // Several retries later: still one line in the log, and the schedule runs.
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "local runs", || {
        node.history("tick").len() >= 4
    });
    std::thread::sleep(Duration::from_secs(8).saturating_sub(t.elapsed()));
    let log = node.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("authorization violation"))
        .collect();
    assert_eq!(said.len(), 1, "logged more than once:\n{log}");
    assert!(said[0].contains("fleet:"), "{log}");
    assert!(!log.contains("fleet: connected"), "{log}");
    assert!(!log.contains("wrong-pass") && !st.contains("wrong-pass"));
    assert!(node.status().contains("Fleet: not connected as locked"));
    // The server saw the retries.
    assert!(
        server.log().matches("authentication error").count() >= 2,
        "{}",
        server.log()
    );
}

/// 3c. A daemon killed during a run: after its restart the fleet's view of that execution ends
///     as the node's own history does (interrupted, or resumed and ended).
#[test]
fn a_run_cut_by_a_crash_ends_in_the_fleet_as_on_the_node() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-crash");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let mut node = Node::start(
        "crashy",
        &server.url(),
        &[],
        "",
        &[(
            "long.yaml",
            shell_wf("long", None, "echo started >> started.txt; sleep 3"),
        )],
    );
    op.wait_for_nodes(&["crashy"]);
    let out = op.fleet(&["run", "long", "--on", "crashy"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let id = text
        .split("started (execution ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    wait_for(Duration::from_secs(15), "the running record", || {
        statuses(&op.history(Some("crashy"), None)).get(&id) == Some(&"running".to_string())
    });
    node.kill();
    node.spawn();
    let mut fleet = BTreeMap::new();
    let mut local = BTreeMap::new();
    wait_for(Duration::from_secs(30), "the fleet to agree", || {
        local = statuses(&node.history("long"));
        fleet = statuses(&op.history(Some("crashy"), Some("long")));
        local.values().all(|s| s != "running") && fleet == local
    });
    assert!(
        matches!(local[&id].as_str(), "interrupted" | "success"),
        "{local:?}"
    );
    let status = op.json(&["status", "--node", "crashy"]);
    assert_eq!(status.as_array().unwrap().len(), 1, "{status}");
    assert_ne!(status[0]["execution"]["status"], "running", "{status}");
}

/// 4. Three clustered servers, buckets and stream with three replicas: a server killed during
///    a roll-out and another during a run lose nothing and double nothing.
#[test]
fn a_cluster_survives_a_server_killed_during_apply_and_run() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-cluster");
    let mut cluster = Cluster::start(root.path());
    let urls = cluster.urls();
    let mut op = Operator::new(&urls, "replicas = 3\n");
    op.patient = true;
    let names = ["k-1", "k-2"];
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            Node::start(
                n,
                &urls,
                &["box"],
                "replicas = 3\n",
                &[("local.yaml", shell_wf("local", Some("0 0 0 1 1 *"), "true"))],
            )
        })
        .collect();
    op.wait_for_nodes(&names);
    // The fleet's buckets and stream are replicated three times.
    let mut raw = RawNats::connect(&cluster.servers[0].url(), None);
    for s in [
        format!("KV_{PREFIX}-workflows"),
        format!("KV_{PREFIX}-applied"),
        format!("{PREFIX}-results"),
    ] {
        let info: Value =
            serde_json::from_slice(&raw.request(&format!("$JS.API.STREAM.INFO.{s}"), b"")).unwrap();
        assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    }
    drop(raw);

    // A roll-out while the server leading the bucket of desired workflows dies.
    let wf = op.write("work.yaml", &shell_wf("work", None, "sleep 2; echo done"));
    let victim = cluster
        .stream_leader(&format!("KV_{PREFIX}-workflows"))
        .unwrap();
    let apply = picoflow(op.dir.path())
        .args(["fleet", "apply", wf.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    cluster.by_name(&victim).kill();
    let out = common::finish(apply, "fleet apply");
    eprintln!(
        "apply with {victim} killed: {:?} {} {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    let mut publications = usize::from(out.status.code() == Some(0));
    // Until the streams have leaders again the operator's commands time out (exit 7).
    let t = Instant::now();
    cluster.wait_for_stream_leaders();
    eprintln!("the streams have leaders again after {:?}", t.elapsed());
    // With a server of three gone, the server (2.9) may place the ephemeral consumer a
    // command makes on the dead one, and the command times out (exit 7): the server comes
    // back before the operator looks.
    cluster.by_name(&victim).spawn();
    cluster.wait_for_stream_leaders();
    // An operator whose publication was not acknowledged publishes again.
    if publications == 0 {
        let out = op.fleet(&["apply", wf.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        publications = 1;
    }
    let v = op.json(&["workflows"]);
    let published = v["published"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{v}");
    let rev = published[0]["revision"].as_u64().unwrap();
    wait_for(Duration::from_secs(40), "both nodes to apply", || {
        let a = op.applied("work");
        names
            .iter()
            .all(|n| a.get(*n).is_some_and(|a| a.0 == "applied" && a.1 == rev))
    });
    for n in &nodes {
        wait_for(Duration::from_secs(10), "the reload", || {
            n.status().contains("work (on demand)")
        });
    }
    // Each node applied the revision once, however often its watch was made again.
    for n in &nodes {
        let log = n.log();
        let applied = log
            .lines()
            .filter(|l| l.contains("fleet: workflow applied") && l.contains("workflow=work"))
            .count();
        assert_eq!(applied, publications, "{log}");
    }
    // The restarted server catches up before the next one goes.
    wait_for(
        Duration::from_secs(30),
        "the restarted server to rejoin",
        || {
            cluster.by_name(&victim).jsz().is_some_and(|j| {
                j["streams"].as_u64() >= Some(4) && j["meta_cluster"]["leader"].is_string()
            })
        },
    );

    // A run while the server leading the results stream dies.
    let victim = cluster.stream_leader(&format!("{PREFIX}-results")).unwrap();
    let run_cmd = picoflow(op.dir.path())
        .args(["fleet", "run", "work", "--wait", "--timeout", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(15), "the runs to start", || {
        nodes
            .iter()
            .all(|n| n.history("work").iter().any(|e| e["status"] == "running"))
    });
    cluster.by_name(&victim).kill();
    let t = Instant::now();
    let out = common::finish(run_cmd, "fleet run");
    eprintln!(
        "run: after {:?} {:?} {} {}",
        t.elapsed(),
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    // The run itself does not depend on the servers; following it does: the operator's
    // consumer on the killed server is gone, and the results are read afresh instead.
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("2 nodes: 2 succeeded"), "{text}");
    cluster.by_name(&victim).spawn();
    cluster.wait_for_stream_leaders();

    // Nothing lost, nothing doubled: the fleet holds each node's history exactly, and the
    // stream holds no record twice.
    for n in &nodes {
        let local = statuses(&n.history("work"));
        assert_eq!(local.len(), 1, "{local:?}");
        wait_for(Duration::from_secs(30), "the records", || {
            statuses(&op.history(Some(&n.name), Some("work"))) == local
        });
    }
    // The leader changes made the nodes watch the desired workflows again: they kept what
    // they applied, and say so.
    let a = op.applied("work");
    for n in &nodes {
        assert_eq!(a[&n.name], ("applied".into(), rev, String::new()), "{a:?}");
        let log = n.log();
        assert!(!log.contains("fleet: workflow removed"), "{log}");
    }
    let live = cluster
        .servers
        .iter()
        .find(|s| s.child.is_some())
        .unwrap()
        .url();
    let mut raw = RawNats::connect(&live, None);
    let records = stream_records(&mut raw);
    let finals = records
        .iter()
        .filter(|r| r["execution"]["status"] == "success")
        .count();
    assert_eq!(finals, 2, "{records:?}");
}

/// The web UI of a daemon in a fleet shows every node with its health and the latest result
/// of each workflow on each node, rendered by a real browser; the API gives the same.
#[test]
fn the_fleet_page_shows_every_node_and_its_latest_results() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-page");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let web = free_port();
    let page_node = format!("[web]\nenabled = true\nport = {web}\n");
    let local = || [("local.yaml", shell_wf("local", Some("0 0 0 1 1 *"), "true"))];
    let nodes = [
        Node::start("hub", &server.url(), &["hub"], &page_node, &local()),
        Node::start("cam-1", &server.url(), &["camera"], "", &local()),
    ];
    op.wait_for_nodes(&["hub", "cam-1"]);
    let good = op.write("ok.yaml", &shell_wf("ok", None, "true"));
    let bad = op.write("bad.yaml", &shell_wf("bad", None, "exit 3"));
    for f in [&good, &bad] {
        let out = op.fleet(&["apply", f.to_str().unwrap(), "--to", "all"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    for n in &nodes {
        wait_for(Duration::from_secs(20), "the roll-out", || {
            n.dir.path().join("picoflow.redb.fleet/ok.yaml").exists()
                && n.dir.path().join("picoflow.redb.fleet/bad.yaml").exists()
        });
    }
    // Applied files are loaded after the report: wait until every node runs them.
    wait_for(Duration::from_secs(20), "the workflows to load", || {
        let out = op.fleet(&["run", "ok", "--wait", "--answer-timeout", "3"]);
        out.status.code() == Some(0) && stdout(&out).contains("2 nodes: 2 succeeded")
    });
    let out = op.fleet(&["run", "bad", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));

    let base = format!("http://127.0.0.1:{web}");
    let profile = root.path().join("chromium");
    let mut dom = String::new();
    wait_for(
        Duration::from_secs(20),
        "the page to show both results",
        || {
            dom = chromium(&["--dump-dom", &format!("{base}/fleet")], &profile);
            dom.matches("data-workflow=\"bad\"").count() == 2
        },
    );
    for n in ["hub", "cam-1"] {
        let row = dom
            .split("<tr data-node=\"")
            .find(|r| r.starts_with(&format!("{n}\"><td>")))
            .unwrap_or_else(|| panic!("no row for {n}: {dom}"));
        assert!(row.contains("s-up"), "{row}");
        let result = |wf: &str| {
            dom.split("<tr data-node=\"")
                .find(|r| r.starts_with(&format!("{n}\" data-workflow=\"{wf}\"")))
                .unwrap_or_else(|| panic!("no {wf} result of {n}: {dom}"))
                .to_string()
        };
        assert!(result("ok").contains("s-success"), "{dom}");
        assert!(result("bad").contains("s-failed"), "{dom}");
    }
    // The workflows page links to it.
    let home = chromium(&["--dump-dom", &format!("{base}/")], &profile);
    assert!(home.contains("href=\"/fleet\""), "{home}");
    // The API says the same.
    let (status, body) = http_get(web, "/api/v1/fleet").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["latest"].as_array().unwrap().len(), 4, "{v}");

    // Without its server the page says why instead of hanging.
    drop(server);
    let (status, body) = http_get(web, "/api/v1/fleet").unwrap();
    assert_eq!(status, 503, "{body}");
}

/// A file only its owner may read (mode 0600), as a secret is kept.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(name);
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

/// `--tls` arguments of a server with the certificate and key of `certs`.
fn tls_args(certs: &Certificates) -> Vec<String> {
    vec![
        "--tls".into(),
        "--tlscert".into(),
        certs.cert.display().to_string(),
        "--tlskey".into(),
        certs.key.display().to_string(),
    ]
}

/// What a daemon shows and leaves behind, for a secret to be looked for in: its log, its
/// `daemon status` and its fleet status file.
fn daemon_traces(node: &Node) -> String {
    let status_file = node.path().join("picoflow.redb.pid.json.fleet");
    format!(
        "{}\n{}\n{}",
        node.log(),
        node.status(),
        std::fs::read_to_string(status_file).unwrap_or_default()
    )
}

/// 5a. TLS: a daemon and an operator given the CA that signed the server's certificate
///     connect over `tls://`; a daemon without it, or with another CA, does not, runs its
///     schedule alone and shows why in `daemon status`.
#[test]
fn tls_connects_with_the_fleet_ca_only() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-tls");
    let certs = Certificates::new(root.path(), "fleet");
    let other = Certificates::new(root.path(), "other");
    let server = Nats::start(root.path(), "s", free_port(), &tls_args(&certs));
    let url = format!("tls://127.0.0.1:{}", server.port);
    let ca = |c: &Certificates| format!("tls_ca_file = \"{}\"\n", c.ca.display());
    let tick = || [("tick.yaml", shell_wf("tick", Some("* * * * * *"), "true"))];
    let op = Operator::new(&url, &ca(&certs));
    let sealed = Node::start("sealed", &url, &[], &ca(&certs), &tick());
    let no_ca = Node::start("no-ca", &url, &[], "", &tick());
    let wrong_ca = Node::start("wrong-ca", &url, &[], &ca(&other), &tick());

    op.wait_for_nodes(&["sealed"]);
    wait_for(Duration::from_secs(10), "the connected status", || {
        sealed
            .status()
            .contains(&format!("Fleet: connected as sealed to {url}"))
    });
    let out = op.fleet(&["run", "tick", "--on", "sealed", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 node: 1 succeeded"),
        "{}",
        stdout(&out)
    );

    // The untrusting daemons: not connected, with the reason, and their schedule runs.
    for n in [&no_ca, &wrong_ca] {
        let mut st = String::new();
        wait_for(
            Duration::from_secs(20),
            "the TLS failure in the status",
            || {
                st = n.status();
                st.contains(&format!("Fleet: not connected as {}", n.name)) && st.contains("(since")
            },
        );
        // The reason, not only its kind ("IO error").
        assert!(st.contains("invalid peer certificate"), "{st}");
        wait_for(Duration::from_secs(20), "local runs", || {
            n.history("tick").len() >= 2
        });
        let log = n.log();
        assert!(!log.contains("fleet: connected"), "{log}");
        // Said once, however often the client retried.
        let said = log.matches("invalid peer certificate").count();
        assert_eq!(said, 1, "{log}");
    }
    // The server saw their handshakes fail, and the fleet never heard of them.
    assert!(
        server.log().contains("TLS handshake error"),
        "{}",
        server.log()
    );
    let listed = op.json(&["nodes"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sealed"], "{listed}");

    // An operator without the CA is refused too, and says so.
    let blind = Operator::new(&url, "");
    let out = blind.fleet(&["nodes"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("invalid peer certificate"),
        "{}",
        stderr(&out)
    );
}

/// 5b. Token: a daemon and an operator reading the token from a 0600 file sign in; the
///     token is in none of their output, logs (at debug level) or status files.
#[test]
fn a_token_file_signs_in_and_the_token_stays_secret() {
    if !fleet_built() {
        return;
    }
    const TOKEN: &str = "tok-5f1d9c2e7a-fleet";
    let root = TempDir::new("fleet-token");
    let server = Nats::start(
        root.path(),
        "s",
        free_port(),
        &["--auth".into(), TOKEN.into()],
    );
    let token_file = secret_file(root.path(), "token", &format!("{TOKEN}\n"));
    let fleet = format!("token_file = \"{}\"\n", token_file.display());
    let op = Operator::new(&server.url(), &fleet);
    let node = Node::with_level(
        "tokened",
        &server.url(),
        &[],
        &fleet,
        &[("hello.yaml", shell_wf("hello", None, "echo hello"))],
        "debug",
    );
    op.wait_for_nodes(&["tokened"]);
    let out = op.fleet(&["run", "hello", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut shown = format!("{}{}", stdout(&out), stderr(&out));
    for args in [&["nodes"][..], &["status"], &["history"]] {
        let out = op.fleet(args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        shown += &format!("{}{}", stdout(&out), stderr(&out));
    }
    shown += &daemon_traces(&node);
    assert!(shown.contains("fleet: connected"), "{shown}");
    assert!(!shown.contains(TOKEN), "the token was shown:\n{shown}");

    // Without the token: refused.
    let stranger = Operator::new(&server.url(), "");
    let out = stranger.fleet(&["nodes"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// 5c. nkey: the server knows the public keys of two user nkeys; a daemon and an operator,
///     each given its seed in a file, sign in with it.
#[test]
fn an_nkey_seed_file_signs_in() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-nkey");
    let (node_key, op_key) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let conf = root.path().join("nkeys.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{\n  users = [\n    {{ nkey: {} }}\n    {{ nkey: {} }}\n  ]\n}}\n",
            node_key.public_key(),
            op_key.public_key()
        ),
    )
    .unwrap();
    let server = Nats::start(
        root.path(),
        "s",
        free_port(),
        &["-c".into(), conf.display().to_string()],
    );
    let seed = |k: &nkeys::KeyPair, name: &str| {
        let f = secret_file(root.path(), name, &format!("{}\n", k.seed().unwrap()));
        format!("nkey_file = \"{}\"\n", f.display())
    };
    let op = Operator::new(&server.url(), &seed(&op_key, "op.nk"));
    let node = Node::start(
        "keyed",
        &server.url(),
        &[],
        &seed(&node_key, "node.nk"),
        &[("hello.yaml", shell_wf("hello", None, "echo hello"))],
    );
    op.wait_for_nodes(&["keyed"]);
    let out = op.fleet(&["run", "hello", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let traces = daemon_traces(&node);
    assert!(
        !traces.contains(&node_key.seed().unwrap()),
        "the seed was shown:\n{traces}"
    );
    // A key the server does not know is refused.
    let stranger = Operator::new(
        &server.url(),
        &seed(&nkeys::KeyPair::new_user(), "stranger.nk"),
    );
    let out = stranger.fleet(&["nodes"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// base64url without padding, as a JWT's parts are written.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A NATS JWT (version 2) about `subject`, signed by `issuer`, with `nats` as its claims.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let claims = serde_json::json!({
        "jti": format!("PICOFLOWTEST{}", picoflow_lib::new_id()).to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// 5d. creds_file: a server in operator mode (an operator, a system account and an account
///     with JetStream, made and signed here) and a daemon and an operator each given a
///     credentials file (a user JWT the account signed and the user's seed) sign in.
#[test]
fn a_credentials_file_signs_in() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-creds");
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let op_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2,
            "system_account": system.public_key()}),
    );
    let account_claims = |js: bool| {
        let mut limits = serde_json::json!({"subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        if js {
            for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[k] = (-1).into();
            }
        }
        serde_json::json!({"type": "account", "version": 2, "limits": limits,
            "default_permissions": {"pub": {}, "sub": {}}})
    };
    let sys_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        account_claims(false),
    );
    let acc_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "fleet",
        account_claims(true),
    );
    let op_file = root.path().join("operator.jwt");
    std::fs::write(&op_file, &op_jwt).unwrap();
    let conf = root.path().join("operator.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  \
             {}: \"{sys_jwt}\"\n  {}: \"{acc_jwt}\"\n}}\n",
            op_file.display(),
            system.public_key(),
            system.public_key(),
            account.public_key(),
        ),
    )
    .unwrap();
    let server = Nats::start(
        root.path(),
        "s",
        free_port(),
        &["-c".into(), conf.display().to_string()],
    );
    let creds = |name: &str| {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            &account,
            &user.public_key(),
            name,
            serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1}),
        );
        let text = format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        );
        let f = secret_file(root.path(), &format!("{name}.creds"), &text);
        format!("creds_file = \"{}\"\n", f.display())
    };
    let op = Operator::new(&server.url(), &creds("operator"));
    let _node = Node::start(
        "credentialed",
        &server.url(),
        &[],
        &creds("node"),
        &[("hello.yaml", shell_wf("hello", None, "echo hello"))],
    );
    op.wait_for_nodes(&["credentialed"]);
    let out = op.fleet(&["run", "hello", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Without credentials the server lets no one in.
    let stranger = Operator::new(&server.url(), "");
    let out = stranger.fleet(&["nodes"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// 5e. An nkey file that is not there, or holds no seed, stops `daemon start` at once with
///     the file and its key named (the client would retry for a file that will not appear,
///     or sign in without the seed and show only the server's refusal).
#[test]
fn a_missing_or_wrong_nkey_file_stops_the_daemon_start() {
    if !fleet_built() {
        return;
    }
    let dir = TempDir::new("fleet-nokey");
    let missing = dir.path().join("absent.nk");
    let public = dir.write(
        "public.nk",
        &format!("{}\n", nkeys::KeyPair::new_user().public_key()),
    );
    dir.write("hello.yaml", &shell_wf("hello", None, "true"));
    for (file, says) in [
        (&missing, "fleet.nkey_file: No such file or directory"),
        (&public, "fleet.nkey_file: not a user nkey seed"),
    ] {
        dir.write(
            "picoflow.toml",
            &format!(
                "[fleet]\nurl = \"nats://127.0.0.1:{}\"\nnode = \"n\"\nnkey_file = \"{}\"\n",
                free_port(),
                file.display()
            ),
        );
        let out = run(picoflow(dir.path()).args(["daemon", "start", "hello.yaml"]));
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains(&format!("{}: {says}", file.display())),
            "{text}"
        );
        // No daemon was left behind.
        let out = run(picoflow(dir.path()).args(["daemon", "status"]));
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    }
}

/// The password of user `user` in the servers' configuration made by [`readme_permissions`].
fn password_of(user: &str) -> String {
    format!("{user}-secret")
}

/// The NATS server configuration of README's "Permissions", as printed there: its device
/// `pi-07` (label `camera`), a second device `pi-08` made from it as README says (one such
/// user per device: its own name, without the label) and its operator, each with a password
/// in place of README's `…`.
fn readme_permissions() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("\n### Permissions\n")
        .nth(1)
        .expect("README has a Permissions section");
    let block = section.split("```").nth(1).expect("a configuration block");
    let (head, rest) = block
        .split_once("    { user: pi-07,")
        .expect("the block has a user pi-07");
    let (device, operator) = rest
        .split_once("    { user: operator,")
        .expect("the block has a user operator");
    let pi_07 = format!("    {{ user: pi-07,{device}");
    let pi_08 = pi_07
        .replace("pi-07", "pi-08")
        .replace("\"picoflow.run.camera\",", "");
    assert!(!pi_08.contains("camera"), "{pi_08}");
    let operator = format!("    {{ user: operator,{operator}");
    let with_password = |entry: &str, user: &str| {
        assert!(entry.contains("password: \"…\""), "{entry}");
        entry.replacen(
            "password: \"…\"",
            &format!("password: \"{}\"", password_of(user)),
            1,
        )
    };
    format!(
        "{head}{}{}{}",
        with_password(&pi_07, "pi-07"),
        with_password(&pi_08, "pi-08"),
        with_password(&operator, "operator")
    )
}

/// 6. README's permissions, on a server configured with them: two devices and the operator
///    sign in, the operator's one `fleet nodes` creates the buckets and the stream (a device
///    may not, and one started before retries until they exist), and inventory, roll-outs to
///    all and to a label, runs and results work end to end with no permission refused. A
///    device signed in so may not write another's inventory, results or reports, the desired
///    workflows or run requests, nor delete or purge a stream, nor listen to another's run
///    requests: the server refuses each.
#[test]
fn the_documented_permissions_work_and_confine_each_device() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-perms");
    let conf = root.path().join("permissions.conf");
    std::fs::write(&conf, readme_permissions()).unwrap();
    let server = Nats::start(
        root.path(),
        "s",
        free_port(),
        &["-c".into(), conf.display().to_string()],
    );
    let url = server.url();
    let sign_in = |user: &str| format!("user = \"{user}\"\npassword = \"{}\"\n", password_of(user));
    let local = |name: &str| [("local.yaml", shell_wf(name, None, "true"))];
    // pi-08 starts before the buckets exist, and may not make them.
    let pi_08 = Node::start("pi-08", &url, &[], &sign_in("pi-08"), &local("local-8"));
    let op = Operator::new(&url, &sign_in("operator"));
    let out = op.fleet(&["nodes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pi_07 = Node::start(
        "pi-07",
        &url,
        &["camera"],
        &sign_in("pi-07"),
        &local("local-7"),
    );
    op.wait_for_nodes(&["pi-07", "pi-08"]);

    let both = op.write("both.yaml", &shell_wf("both", None, "true"));
    let snap = op.write("snap.yaml", &shell_wf("snap", None, "true"));
    let out = op.fleet(&["apply", both.to_str().unwrap(), "--to", "all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev_both = revision(&out, "both");
    let out = op.fleet(&["apply", snap.to_str().unwrap(), "--to", "camera"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rev_snap = revision(&out, "snap");
    wait_for(Duration::from_secs(30), "the roll-outs' reports", || {
        let b = op.applied("both");
        let s = op.applied("snap");
        ["pi-07", "pi-08"]
            .iter()
            .all(|n| b.get(*n) == Some(&("applied".into(), rev_both, String::new())))
            && s.len() == 1
            && s.get("pi-07") == Some(&("applied".into(), rev_snap, String::new()))
    });
    assert!(!pi_08.applied_file("snap").exists());
    // Applied files are loaded after the report: wait until both nodes run them.
    wait_for(Duration::from_secs(30), "runs on both nodes", || {
        let out = op.fleet(&["run", "both", "--wait", "--answer-timeout", "3"]);
        out.status.code() == Some(0) && stdout(&out).contains("2 nodes: 2 succeeded")
    });
    let out = op.fleet(&["run", "snap", "--on", "camera", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("1 node: 1 succeeded"),
        "{}",
        stdout(&out)
    );
    let out = op.fleet(&[
        "run",
        "local-8",
        "--on",
        "pi-08",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // Every node's records reached the stream.
    wait_for(Duration::from_secs(30), "both nodes' results", || {
        let nodes: BTreeSet<String> = op
            .history(None, Some("both"))
            .iter()
            .filter(|r| r["execution"]["status"] == "success")
            .map(|r| r["node"].as_str().unwrap().to_string())
            .collect();
        nodes.len() == 2 && op.history(Some("pi-08"), Some("local-8")).len() == 1
    });
    // No request of either device was refused, but pi-08's to create the buckets.
    for n in [&pi_07, &pi_08] {
        let log = n.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("violation"))
            .collect();
        assert!(
            refused
                .iter()
                .all(|l| n.name == "pi-08" && l.contains("\"$JS.API.STREAM.CREATE.")),
            "{log}"
        );
    }
    let server_log = server.log();
    assert!(
        server_log
            .lines()
            .filter(|l| l.contains("Violation"))
            .all(|l| l.contains("pi-08") && l.contains("$JS.API.STREAM.CREATE.")),
        "{server_log}"
    );

    // pi-07 on a connection of its own, writing and listening where it may not.
    let mut raw = RawNats::connect(&url, Some(("pi-07", &password_of("pi-07"))));
    for subject in [
        "$KV.picoflow-nodes.pi-08",
        "picoflow.exec.pi-08.x",
        "$KV.picoflow-applied.pi-08.both",
        "$KV.picoflow-workflows.pi-07.evil",
        "picoflow.run.pi-08",
        "$JS.API.STREAM.DELETE.KV_picoflow-workflows",
        "$JS.API.STREAM.PURGE.picoflow-results",
        "$JS.API.STREAM.CREATE.picoflow-other",
        "_INBOX.pi-08.answer",
        "_INBOX.somebody",
        "picoflow.answer.pi-08.r1",
    ] {
        let err = raw.error_of(&format!("PUB {subject} 2\r\n{{}}"));
        let expected = format!("Permissions Violation for Publish to \"{subject}\"");
        assert!(
            err.as_deref().is_some_and(|e| e.contains(&expected)),
            "{subject}: {err:?}"
        );
    }
    for (i, subject) in [
        "picoflow.run.pi-08",
        "picoflow.exec.>",
        "$KV.picoflow-nodes.>",
        "_INBOX.>",
        "_INBOX.pi-08.>",
        "_INBOX.*.*",
    ]
    .iter()
    .enumerate()
    {
        let err = raw.error_of(&format!("SUB {subject} {}", 100 + i));
        let expected = format!("Permissions Violation for Subscription to \"{subject}\"");
        assert!(
            err.as_deref().is_some_and(|e| e.contains(&expected)),
            "{subject}: {err:?}"
        );
    }
    // Its own run requests and replies it may hear.
    for (i, subject) in [
        "picoflow.run.pi-07",
        "picoflow.run.camera",
        "picoflow.run.all",
        "_INBOX.pi-07.>",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(raw.error_of(&format!("SUB {subject} {}", 200 + i)), None);
    }
    // pi-08 has no label camera: its run requests are not pi-08's to hear.
    let mut raw_8 = RawNats::connect(&url, Some(("pi-08", &password_of("pi-08"))));
    let err = raw_8.error_of("SUB picoflow.run.camera 1");
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("Permissions Violation for Subscription")),
        "{err:?}"
    );
    // Under its own subjects and keys pi-07 writes records that name pi-08 (and a node that
    // does not exist): the server takes them, every view refuses them.
    let real = op
        .history(Some("pi-07"), Some("both"))
        .into_iter()
        .next()
        .expect("a record of pi-07");
    let mut forged = real.clone();
    forged["node"] = "pi-08".into();
    forged["execution"]["id"] = "forged-execution".into();
    forged["execution"]["status"] = "failed".into();
    let mut node_record = op
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "pi-07")
        .unwrap()
        .clone();
    node_record["node"] = "pi-99".into();
    node_record.as_object_mut().unwrap().remove("alive");
    let report = serde_json::json!({"v": 1, "node": "pi-08", "workflow": "both", "target": "all",
        "revision": rev_both, "status": "refused", "error": "forged", "at": "2026-01-01T00:00:00Z"});
    for (subject, body) in [
        ("picoflow.exec.pi-07.both", forged.to_string()),
        ("$KV.picoflow-nodes.pi-07", node_record.to_string()),
        ("$KV.picoflow-applied.pi-07.forged", report.to_string()),
    ] {
        let err = raw.error_of(&format!("PUB {subject} {}\r\n{body}", body.len()));
        assert_eq!(err, None, "{subject}");
    }
    let all = op.history(None, None);
    assert!(
        all.iter()
            .all(|r| r["execution"]["id"] != "forged-execution"),
        "{all:?}"
    );
    let listed = op.json(&["nodes"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["node"] != "pi-99"),
        "{listed}"
    );
    assert_eq!(
        op.applied("both").get("pi-08").map(|a| a.0.as_str()),
        Some("applied")
    );
    // The operator's commands said why they left them out.
    let out = op.fleet(&["history"]);
    assert!(
        stderr(&out).contains("names node 'pi-08' and workflow 'both', not those of its subject"),
        "{}",
        stderr(&out)
    );
    // A heartbeat puts pi-07's own record back.
    op.wait_for_nodes(&["pi-07", "pi-08"]);

    // pi-07 may create consumers on the desired workflows' stream (it reads it so), and NATS
    // does not bound where one delivers: one pointed at every node's run requests, with idle
    // heartbeats every 100 ms, starts nothing and floods no log.
    let consumer = serde_json::json!({
        "stream_name": "KV_picoflow-workflows",
        "config": {"deliver_subject": "picoflow.run.all", "idle_heartbeat": 100_000_000u64,
                   "ack_policy": "none", "deliver_policy": "all"},
    });
    let made: Value = serde_json::from_slice(&raw.request(
        "$JS.API.CONSUMER.CREATE.KV_picoflow-workflows",
        consumer.to_string().as_bytes(),
    ))
    .unwrap();
    assert!(made["error"].is_null(), "{made}");
    let before: Vec<usize> = [&pi_07, &pi_08]
        .iter()
        .map(|n| n.history("both").len())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for (n, runs) in [&pi_07, &pi_08].iter().zip(before) {
        let log = n.log();
        assert!(!log.contains("run request refused"), "{log}");
        assert_eq!(n.history("both").len(), runs);
    }

    // Nothing was changed: the workflows, reports and inventory stand, and the fleet works.
    let b = op.applied("both");
    assert_eq!(b.len(), 2, "{b:?}");
    let listed = op.wait_for_nodes(&["pi-07", "pi-08"]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let out = op.fleet(&["run", "both", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// The value of gauge `name` in the `/metrics` of the daemon whose metrics listen on `port`;
/// `None` when it is not shown (or the endpoint does not answer).
fn gauge(port: u16, name: &str) -> Option<f64> {
    let (code, body) = http_get(port, "/metrics")?;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

/// 7. The fleet's gauges in a daemon's metrics: `picoflow_fleet_connected` is 1 while connected
///    and 0 soon after its server dies; `picoflow_fleet_unsent_executions` grows while the
///    server is down and the schedule runs, and is 0 again once the server is back and has
///    every record. A daemon without `[fleet]` shows neither gauge.
#[test]
fn the_metrics_show_the_link_and_what_waits_to_be_sent() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-metrics");
    let mut server = Nats::start(root.path(), "s", free_port(), &[]);
    let port = free_port();
    // A heartbeat longer than every wait below: the count follows the executions, not it.
    let node = Node::start(
        "gauged",
        &server.url(),
        &[],
        &format!("heartbeat_seconds = 60\n[metrics]\nenabled = true\nport = {port}\n"),
        &[("tick.yaml", shell_wf("tick", Some("*/1 * * * * *"), "true"))],
    );
    const CONNECTED: &str = "picoflow_fleet_connected";
    const UNSENT: &str = "picoflow_fleet_unsent_executions";
    wait_for(Duration::from_secs(30), "connected 1", || {
        gauge(port, CONNECTED) == Some(1.0)
    });
    wait_for(Duration::from_secs(30), "nothing unsent", || {
        gauge(port, UNSENT) == Some(0.0)
    });

    server.kill();
    wait_for(Duration::from_secs(10), "connected 0", || {
        gauge(port, CONNECTED) == Some(0.0)
    });
    let mut first = 0.0;
    wait_for(Duration::from_secs(30), "unsent executions", || {
        first = gauge(port, UNSENT).unwrap();
        first >= 2.0
    });
    wait_for(Duration::from_secs(30), "more unsent executions", || {
        gauge(port, UNSENT).unwrap() >= first + 2.0
    });
    assert_eq!(gauge(port, CONNECTED), Some(0.0));

    server.spawn();
    wait_for(Duration::from_secs(30), "connected 1 again", || {
        gauge(port, CONNECTED) == Some(1.0)
    });
    // The schedule goes on: each new execution is sent within a moment, and the backlog
    // with it.
    wait_for(Duration::from_secs(30), "the backlog sent", || {
        gauge(port, UNSENT) == Some(0.0)
    });
    let op = Operator::new(&server.url(), "");
    let local = node.history("tick");
    let sent = op.history(Some("gauged"), Some("tick"));
    assert!(
        sent.len() as f64 >= first + 2.0,
        "{} of {}",
        sent.len(),
        local.len()
    );

    // Without [fleet], neither gauge.
    let alone = free_port();
    let _plain = Node::alone(
        "plain",
        &format!("[metrics]\nenabled = true\nport = {alone}\n"),
        &[("tick.yaml", shell_wf("tick", Some("*/1 * * * * *"), "true"))],
    );
    let mut body = String::new();
    wait_for(
        Duration::from_secs(15),
        "the metrics of a daemon alone",
        || match http_get(alone, "/metrics") {
            Some((200, b)) if b.contains("picoflow_") => {
                body = b;
                true
            }
            _ => false,
        },
    );
    assert!(!body.contains("picoflow_fleet"), "{body}");
}

/// The applied workflows in a node's fleet directory: name → revision, from each file's
/// first line.
fn applied_files(node: &Node) -> BTreeMap<String, u64> {
    let dir = node.path().join("picoflow.redb.fleet");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.strip_suffix(".yaml")?.to_string();
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    let rev = text
                        .lines()
                        .next()?
                        .rsplit("revision=")
                        .next()?
                        .parse()
                        .ok()?;
                    Some((name, rev))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// 8. A device that was off during a roll-out (stopped with `daemon stop`) converges when it
///    comes back: it applies a workflow published meanwhile and the new revision of another,
///    removes the one withdrawn, and reports each; it then runs the latest revision.
#[test]
fn a_device_off_during_a_rollout_converges_when_it_comes_back() {
    if !fleet_built() {
        return;
    }
    let root = TempDir::new("fleet-off");
    let server = Nats::start(root.path(), "s", free_port(), &[]);
    let op = Operator::new(&server.url(), "");
    let local = || [("local.yaml", shell_wf("local", Some("0 0 0 1 1 *"), "true"))];
    let on = Node::start("on", &server.url(), &[], "", &local());
    let mut off = Node::start("off", &server.url(), &[], "", &local());
    op.wait_for_nodes(&["on", "off"]);
    let marker = root.path().join("kept.txt");
    let kept = |v: &str| shell_wf("kept", None, &format!("echo {v} >> {}", marker.display()));
    let apply = |file: &str, text: &str| {
        let f = op.write(file, text);
        let out = op.fleet(&["apply", f.to_str().unwrap(), "--to", "all"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        revision(&out, file.trim_end_matches(".yaml"))
    };
    let kept_1 = apply("kept.yaml", &kept("v1"));
    let gone = apply("gone.yaml", &shell_wf("gone", None, "true"));
    for n in [&on, &off] {
        wait_for(Duration::from_secs(30), "the first roll-out", || {
            applied_files(n) == BTreeMap::from([("kept".into(), kept_1), ("gone".into(), gone)])
        });
    }

    let out = run(picoflow(off.path()).args(["daemon", "stop"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for(Duration::from_secs(30), "the daemon to stop", || {
        !off.alive()
    });

    let kept_2 = apply("kept.yaml", &kept("v2"));
    let added = apply("added.yaml", &shell_wf("added", None, "true"));
    let out = op.fleet(&["remove", "gone"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let wanted = BTreeMap::from([("kept".into(), kept_2), ("added".into(), added)]);
    wait_for(Duration::from_secs(30), "the node that stayed on", || {
        applied_files(&on) == wanted
    });
    // Meanwhile nothing changed on the device that is off.
    assert_eq!(
        applied_files(&off),
        BTreeMap::from([("kept".into(), kept_1), ("gone".into(), gone)])
    );

    off.spawn();
    wait_for(Duration::from_secs(30), "the device to converge", || {
        applied_files(&off) == wanted
    });
    wait_for(Duration::from_secs(30), "its reports", || {
        let applied = |wf: &str, rev: u64| {
            op.applied(wf).get("off") == Some(&("applied".into(), rev, String::new()))
        };
        applied("kept", kept_2)
            && applied("added", added)
            && op.applied("gone").get("off").map(|(s, _, _)| s.as_str()) == Some("removed")
    });
    let v = op.json(&["workflows"]);
    let published: BTreeSet<&str> = v["published"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|d| d["workflow"].as_str().unwrap())
        .collect();
    assert_eq!(published, BTreeSet::from(["kept", "added"]), "{v}");
    // Its inventory lists exactly the published set beside its local workflow, and it runs
    // the latest revision.
    wait_for(Duration::from_secs(30), "the inventory", || {
        let nodes = op.json(&["nodes"]);
        let row = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == "off")
            .cloned()
            .unwrap_or_default();
        row["workflows"] == serde_json::json!({ "local": null, "kept": kept_2, "added": added })
    });
    let out = op.fleet(&["run", "kept", "--on", "off", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let log = off.log();
    assert!(log.contains("fleet: workflow removed"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().lines().last(),
        Some("v2")
    );
}
