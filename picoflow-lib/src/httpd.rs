//! The daemon's HTTP/1.1 endpoint: one listener for `/metrics`, `/health` (the `metrics`
//! feature) and the web UI and API (the `web` feature).
//!
//! Written by hand on smol's networking rather than taken from an HTTP crate: the endpoints
//! are a handful of small GETs and one POST without a body worth streaming, and a responder
//! this size keeps every limit in one place (`features.md` has the measurements behind the
//! choice). Each connection carries one request and is closed after the response. Every byte a
//! client may send is bounded in size and time, at most [`MAX_CONNECTIONS`] are served at once
//! (stalled ones make room for new ones), and each connection is its own task, so a slow or
//! hostile client costs one short-lived task and never holds up another client or the
//! scheduler. Responses waiting for their readers hold at most [`MAX_BUFFERED`] bytes
//! together, so clients that ask and never read cannot fill the memory.

// In a build with neither `metrics` nor `web` nothing is served, and the helpers services
// use to build responses go unused.
#![cfg_attr(not(any(feature = "metrics", feature = "web")), allow(dead_code))]

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Task, Timer};

use crate::error::{Error, Result};

/// Whether this build has anything to serve (`metrics` or `web`). Without either, the daemon
/// starts no endpoint, and none of this module ends up in the binary.
pub(crate) const ANY_SERVICE: bool = cfg!(any(feature = "metrics", feature = "web"));

/// Longest request head accepted; anything longer is answered with 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted; anything longer is answered with 413.
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 64;
/// Time a client has to send its whole request (head and body).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long unread request bytes are drained after the response (see `serve`).
const LINGER: Duration = Duration::from_secs(1);
/// Connections served at once, which bounds memory and tasks even under a connection flood.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// When every connection is taken, one whose client has not finished its request after this
/// long is closed to make room.
const EVICT_AFTER: Duration = Duration::from_millis(250);
/// Most bytes of responses held at once by all connections together, written or waiting for
/// slow readers. A response that does not fit is answered with 503 instead.
pub(crate) const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// The bytes of responses held by connections now, against [`MAX_BUFFERED`].
#[derive(Debug, Default)]
struct Buffered(AtomicUsize);

/// Bytes taken from [`Buffered`], given back when dropped.
struct Held<'b> {
    of: &'b Buffered,
    bytes: usize,
}

impl Buffered {
    /// Takes `bytes` from the budget, or `None` when they do not fit.
    fn hold(&self, bytes: usize) -> Option<Held<'_>> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(bytes).filter(|n| *n <= MAX_BUFFERED)
            })
            .ok()
            .map(|_| Held { of: self, bytes })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.of.0.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    /// `GET`, `POST` … (`HEAD` arrives as `GET`; the server drops the body).
    pub(crate) method: String,
    /// The path, percent-decoded, without the query.
    pub(crate) path: String,
    /// The path's segments after the leading `/`, each percent-decoded on its own (so an
    /// escaped `/` stays inside its segment).
    pub(crate) segments: Vec<String>,
    /// Query parameters, percent-decoded, in order.
    pub(crate) query: Vec<(String, String)>,
    /// Header names in lower case, with their values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// A header's value by its lower-case name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One response; always followed by closing the connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A response with a body of the given type.
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text response whose body is its status line.
    pub(crate) fn status(status: u16) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            format!("{status} {}\n", reason(status)),
        )
    }

    /// A JSON response.
    pub(crate) fn json(status: u16, body: String) -> Response {
        Response::new(status, "application/json", body)
    }

    /// Adds a header.
    pub(crate) fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    fn bytes(&self, with_body: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             X-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
        );
        for (n, v) in &self.headers {
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if with_body {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Something served on the endpoint: answers the requests whose path it owns.
///
/// `handle` runs on the endpoint's thread, never on the scheduler's, so it may read the
/// state file or a log; it should still answer in milliseconds, since the connections of one
/// endpoint share that thread. A service whose answers may take longer says so with
/// [`Service::on_worker`].
pub(crate) trait Service: Send + Sync {
    /// The response, or `None` when the path is not this service's.
    fn handle(&self, request: &Request) -> Option<Response>;

    /// Whether `handle` runs on the endpoint's worker thread, one request at a time, instead
    /// of among the connections: for answers that read records of megabytes, which must
    /// neither hold up a quick one (`/health`, `/metrics`) nor run many at once.
    fn on_worker(&self) -> bool {
        false
    }
}

/// A request for a service on the worker thread, with where its answer goes.
type Job = (
    Arc<dyn Service>,
    Arc<Request>,
    smol::channel::Sender<Option<Response>>,
);

/// The worker thread of an endpoint, for the services that run [`Service::on_worker`].
#[derive(Debug)]
struct Worker {
    jobs: smol::channel::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread; `None` (the services then run among the connections) when the
    /// system refuses one.
    fn start() -> Option<Worker> {
        let (jobs, queue) = smol::channel::bounded::<Job>(MAX_CONNECTIONS);
        let thread = crate::threads::spawn(
            "picoflow-http-worker".into(),
            Box::new(move || {
                while let Ok((service, request, reply)) = queue.recv_blocking() {
                    // A connection closed while it waited needs no answer.
                    if !reply.is_closed() {
                        let _ = reply.try_send(service.handle(&request));
                    }
                }
            }),
        );
        match thread {
            Ok(t) => Some(Worker {
                jobs,
                thread: Some(t),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "HTTP endpoint: cannot start its worker thread");
                None
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listening endpoint. Its accept loop and one task per connection run on the executor
/// passed to [`Server::start`]; services that run [`Service::on_worker`] get one thread of
/// the endpoint's own. Dropping the server cancels the accept loop and every open
/// connection, and ends the worker thread once its current answer is done.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    _accept: Task<()>,
    _worker: Option<Worker>,
}

impl Server {
    /// Listens on `bind:port` and answers with the first of `services` that owns the path
    /// (404 when none does). Binding happens before this returns, so an address in use is
    /// reported here as [`Error::Network`]. Port 0 picks a free port.
    pub(crate) fn start(
        ex: &Arc<Executor<'static>>,
        bind: &str,
        port: u16,
        services: Vec<Arc<dyn Service>>,
    ) -> Result<Server> {
        let fail = |e: std::io::Error| {
            Error::Network(format!("HTTP endpoint: cannot listen on {bind}:{port}: {e}").into())
        };
        let listener = std::net::TcpListener::bind((bind, port)).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let listener = TcpListener::try_from(listener).map_err(fail)?;
        let worker = services
            .iter()
            .any(|s| s.on_worker())
            .then(Worker::start)
            .flatten();
        let jobs = worker.as_ref().map(|w| w.jobs.clone());
        let services: Arc<[Arc<dyn Service>]> = services.into();
        let accept = ex.spawn(accept_loop(listener, Arc::downgrade(ex), services, jobs));
        Ok(Server {
            addr,
            _accept: accept,
            _worker: worker,
        })
    }

    /// The address actually listened on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A connection being served.
struct Connection {
    task: Task<()>,
    accepted: Instant,
    /// Waiting for the client, not for the server: still reading its request, or draining
    /// after the whole response was written. Such a connection may be closed to make room.
    reading: Arc<AtomicBool>,
}

/// Accepts connections and gives each its own task. The connection tasks live in this
/// future: cancelling it cancels them.
///
/// At most [`MAX_CONNECTIONS`] are served at once. When all are taken, the oldest one whose
/// client has spent more than [`EVICT_AFTER`] without finishing its request (or that has its
/// whole response and is only draining) is closed to make room: a client that connects and
/// sends slowly, or nothing, cannot hold the endpoint. When none qualifies, new connections
/// wait in the kernel's queue until one ends.
async fn accept_loop(
    listener: TcpListener,
    ex: Weak<Executor<'static>>,
    services: Arc<[Arc<dyn Service>]>,
    jobs: Option<smol::channel::Sender<Job>>,
) {
    let mut connections: Vec<Connection> = Vec::new();
    let (ended_tx, ended) = smol::channel::unbounded::<()>();
    let buffered = Arc::new(Buffered::default());
    loop {
        loop {
            connections.retain(|c| !c.task.is_finished());
            if connections.len() < MAX_CONNECTIONS {
                break;
            }
            let stalled = connections
                .iter()
                .enumerate()
                .filter(|(_, c)| c.reading.load(Ordering::Relaxed))
                .filter(|(_, c)| c.accepted.elapsed() >= EVICT_AFTER)
                .min_by_key(|(_, c)| c.accepted)
                .map(|(i, _)| i);
            if let Some(i) = stalled {
                // Dropping the task cancels it and closes its socket.
                drop(connections.swap_remove(i));
                continue;
            }
            future::or(
                async {
                    let _ = ended.recv().await;
                },
                async {
                    Timer::after(EVICT_AFTER / 2).await;
                },
            )
            .await;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection aborted before accept: pause briefly
                // instead of spinning on an error that repeats at once.
                tracing::warn!(error = %e, "HTTP endpoint: accept failed");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(ex) = ex.upgrade() else { return };
        let reading = Arc::new(AtomicBool::new(true));
        let task = ex.spawn(serve(
            stream,
            services.clone(),
            reading.clone(),
            buffered.clone(),
            jobs.clone(),
            ended_tx.clone(),
        ));
        connections.push(Connection {
            task,
            accepted: Instant::now(),
            reading,
        });
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq)]
enum ReadError {
    /// Answer with this status and close.
    Status(u16),
    /// The client closed the connection or the socket failed: nothing to answer.
    Closed,
}

/// Whether `host` (an address or a name, without a port) is the loopback: `localhost` or
/// an address in 127.0.0.0/8 or `::1`. Says whether the daemon listens on the loopback only,
/// and which `Host` a request to such a listener may name.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads up to and including the blank line that ends a request head; returns the head and
/// any body bytes that arrived with it.
async fn read_head(stream: &mut TcpStream) -> std::result::Result<(Vec<u8>, Vec<u8>), ReadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => n,
        };
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head[from..]) {
            let rest = head.split_off(from + end);
            if head.len() > MAX_HEAD {
                return Err(ReadError::Status(431));
            }
            return Ok((head, rest));
        }
        if head.len() > MAX_HEAD {
            return Err(ReadError::Status(431));
        }
    }
}

/// Index just past the blank line (`\r\n\r\n`, or a bare `\n\n`) that ends a head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Parses a request head; the body is read afterwards, `Content-Length` bytes of it.
fn parse_head(head: &[u8]) -> std::result::Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.lines();
    let line = lines.next().ok_or(400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") || version.len() != 8 {
        return Err(if version.starts_with("HTTP/") {
            505
        } else {
            400
        });
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(400);
    }
    if !target.starts_with('/') {
        return Err(400);
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path).ok_or(400u16)?;
    let segments = raw_path[1..]
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
        .ok_or(400u16)?;
    let query = parse_form(raw_query).ok_or(400u16)?;
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':').ok_or(400u16)?;
        if n.is_empty() || n.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(400);
        }
        if headers.len() == MAX_HEADERS {
            return Err(431);
        }
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path,
        segments,
        query,
        headers,
        body: Vec::new(),
    })
}

/// The pairs of a query string or an `application/x-www-form-urlencoded` body,
/// percent-decoded, in order; `None` when one is malformed.
pub(crate) fn parse_form(raw: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let plus = |s: &str| s.replace('+', " ");
        pairs.push((percent_decode(&plus(k))?, percent_decode(&plus(v))?));
    }
    Some(pairs)
}

/// `s` with every byte but letters, digits and `-._~` written as `%XX`: one URL path segment
/// or query value.
#[cfg(any(feature = "web", feature = "docker"))]
pub(crate) fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a bad escape, invalid UTF-8 or a NUL byte.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// Reads a request: the head, then its `Content-Length` body.
async fn read_request(stream: &mut TcpStream) -> std::result::Result<Request, ReadError> {
    let (head, mut body) = read_head(stream).await?;
    let mut request = parse_head(&head).map_err(ReadError::Status)?;
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Status(501));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| ReadError::Status(400))?,
    };
    if length > MAX_BODY {
        return Err(ReadError::Status(413));
    }
    let mut chunk = [0u8; 2048];
    while body.len() < length {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => n,
        };
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    request.body = body;
    Ok(request)
}

/// The answer of the first service owning the path; HEAD is served as GET without a body.
/// A service that runs [`Service::on_worker`] is asked on the worker thread when there is
/// one.
async fn dispatch(
    mut request: Request,
    services: &[Arc<dyn Service>],
    jobs: Option<&smol::channel::Sender<Job>>,
) -> (Response, bool) {
    let with_body = request.method != "HEAD";
    if !with_body {
        request.method = "GET".into();
    }
    let request = Arc::new(request);
    for service in services {
        let answer = match jobs.filter(|_| service.on_worker()) {
            Some(jobs) => {
                let (reply, answer) = smol::channel::bounded(1);
                if jobs
                    .send((service.clone(), request.clone(), reply))
                    .await
                    .is_err()
                {
                    return (Response::status(503), with_body);
                }
                match answer.recv().await {
                    Ok(answer) => answer,
                    Err(_) => return (Response::status(503), with_body),
                }
            }
            None => service.handle(&request),
        };
        if let Some(response) = answer {
            return (response, with_body);
        }
    }
    (Response::status(404), with_body)
}

/// Serves one connection: one request, one response, close; says when it ends.
async fn serve(
    mut stream: TcpStream,
    services: Arc<[Arc<dyn Service>]>,
    reading: Arc<AtomicBool>,
    buffered: Arc<Buffered>,
    jobs: Option<smol::channel::Sender<Job>>,
    ended: smol::channel::Sender<()>,
) {
    let request = future::or(async { Some(read_request(&mut stream).await) }, async {
        Timer::after(READ_TIMEOUT).await;
        None
    })
    .await;
    reading.store(false, Ordering::Relaxed);
    let answered = Answering {
        services: &services,
        jobs: jobs.as_ref(),
        buffered: &buffered,
        reading: &reading,
    };
    answer(stream, request, answered).await;
    let _ = ended.try_send(());
}

/// Writes the answer to what was read (nothing when the client went away).
/// What a connection answers with: the services, the worker, the memory budget, and the
/// flag that says the connection waits for its client.
struct Answering<'a> {
    services: &'a [Arc<dyn Service>],
    jobs: Option<&'a smol::channel::Sender<Job>>,
    buffered: &'a Buffered,
    reading: &'a AtomicBool,
}

async fn answer(
    mut stream: TcpStream,
    request: Option<std::result::Result<Request, ReadError>>,
    with: Answering<'_>,
) {
    let Answering {
        services,
        jobs,
        buffered,
        reading,
    } = with;
    let (response, with_body) = match request {
        Some(Ok(request)) => dispatch(request, services, jobs).await,
        Some(Err(ReadError::Status(s))) => (Response::status(s), true),
        Some(Err(ReadError::Closed)) => return,
        None => (Response::status(408), true),
    };
    let mut bytes = response.bytes(with_body);
    drop(response);
    let held = buffered.hold(bytes.len());
    if held.is_none() {
        tracing::warn!(
            bytes = bytes.len(),
            "HTTP endpoint: answers waiting for their readers fill the memory budget; 503"
        );
        // A status line is small enough to be let through beside the budget.
        bytes = Response::status(503).with("Retry-After", "1").bytes(true);
    }
    let written = future::or(
        async {
            stream
                .write_all(&bytes)
                .await
                .and(stream.flush().await)
                .is_ok()
        },
        async {
            Timer::after(WRITE_TIMEOUT).await;
            false
        },
    )
    .await;
    drop(bytes);
    drop(held);
    if !written {
        return;
    }
    reading.store(true, Ordering::Relaxed);
    let _ = stream.shutdown(Shutdown::Write);
    // Closing a socket that still holds unread request bytes makes the kernel send a reset,
    // which can destroy the response before the client reads it (an oversized or timed-out
    // request). Draining briefly lets the client see the whole answer.
    future::or(
        async {
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        },
        async {
            Timer::after(LINGER).await;
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_with_crlf_or_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn heads_parse_into_path_query_and_headers() {
        let r = parse_head(
            b"GET /api/v1/a%20b/up%5Bx%5D?status=failed&limit=5&q=a+b HTTP/1.1\r\n\
              Host: x\r\nAuthorization:  Bearer t0k \r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/a b/up[x]");
        assert_eq!(r.segments, ["api", "v1", "a b", "up[x]"]);
        assert_eq!(r.query[0], ("status".into(), "failed".into()));
        assert_eq!(r.query[2], ("q".into(), "a b".into()));
        assert_eq!(r.header("authorization"), Some("Bearer t0k"));
        assert_eq!(r.header("host"), Some("x"));
        let r = parse_head(b"GET /logs/a%2Fb HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.segments, ["logs", "a/b"]);
    }

    #[test]
    fn malformed_heads_get_their_status() {
        let status = |h: &[u8]| parse_head(h).unwrap_err();
        assert_eq!(status(b"garbage\r\n\r\n"), 400);
        assert_eq!(status(b"GET\r\n\r\n"), 400);
        assert_eq!(status(b"GET / SPDY/3\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/9.9\r\n\r\n"), 505);
        assert_eq!(status(b"\xff / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a%2 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a%00 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a%ff HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n"), 400);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: x\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
    }

    struct Echo;
    impl Service for Echo {
        fn handle(&self, r: &Request) -> Option<Response> {
            (r.path == "/echo").then(|| {
                Response::new(200, "text/plain", r.body.clone()).with("X-Method", &r.method)
            })
        }
    }

    #[test]
    fn head_requests_get_headers_only_and_unknown_paths_404() {
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(Echo)];
        let req = parse_head(b"HEAD /echo HTTP/1.1\r\n\r\n").unwrap();
        let (r, with_body) = smol::block_on(dispatch(req, &services, None));
        assert_eq!(r.status, 200);
        assert!(!with_body);
        let text = String::from_utf8(r.bytes(false)).unwrap();
        assert!(text.contains("X-Method: GET\r\n"), "{text}");
        assert!(
            text.ends_with(
                "Connection: close\r\nX-Content-Type-Options: nosniff\r\nX-Method: GET\r\n\r\n"
            ),
            "{text}"
        );
        let req = parse_head(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(smol::block_on(dispatch(req, &services, None)).0.status, 404);
    }

    #[test]
    fn the_response_budget_is_shared_and_given_back() {
        let budget = Buffered::default();
        let a = budget.hold(MAX_BUFFERED - 10).unwrap();
        assert!(budget.hold(11).is_none());
        let b = budget.hold(10).unwrap();
        assert!(budget.hold(1).is_none());
        drop(a);
        assert!(budget.hold(MAX_BUFFERED - 10).is_some());
        drop(b);
        assert!(budget.hold(MAX_BUFFERED + 1).is_none());
        assert_eq!(budget.0.load(Ordering::Relaxed), 0);
    }

    /// A service answering slowly on the worker thread.
    struct Slow;
    impl Service for Slow {
        fn handle(&self, r: &Request) -> Option<Response> {
            (r.path == "/slow").then(|| {
                std::thread::sleep(Duration::from_millis(300));
                let name = std::thread::current().name().unwrap_or("").to_string();
                Response::new(200, "text/plain", name)
            })
        }
        fn on_worker(&self) -> bool {
            true
        }
    }

    /// Reading records of megabytes for a page held up `/health` on the same thread.
    #[test]
    fn slow_answers_run_on_the_worker_and_never_hold_up_quick_ones() {
        use std::io::{Read, Write};
        let ex = Arc::new(Executor::new());
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(Echo), Arc::new(Slow)];
        let server = Server::start(&ex, "127.0.0.1", 0, services).unwrap();
        let addr = server.local_addr();
        let ask = move |path: &'static str| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let _ = write!(s, "GET {path} HTTP/1.1\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                (out, started.elapsed())
            })
        };
        let slow: Vec<_> = (0..3).map(|_| ask("/slow")).collect();
        std::thread::sleep(Duration::from_millis(50));
        let quick = ask("/echo");
        let answers = smol::block_on(ex.run(async {
            let mut out = Vec::new();
            for c in std::iter::once(quick).chain(slow) {
                while !c.is_finished() {
                    Timer::after(Duration::from_millis(10)).await;
                }
                out.push(c.join().unwrap());
            }
            out
        }));
        let (echo, waited) = &answers[0];
        assert!(echo.starts_with("HTTP/1.1 200 "), "{echo}");
        assert!(*waited < Duration::from_millis(250), "{waited:?}");
        for (answer, _) in &answers[1..] {
            assert!(answer.ends_with("picoflow-http-worker"), "{answer}");
        }
        // One at a time: the last of three waited for the two before it.
        let longest = answers[1..].iter().map(|(_, t)| *t).max().unwrap();
        assert!(longest >= Duration::from_millis(850), "{longest:?}");
    }

    /// A real socket: a body arrives after the head, and oversized or chunked requests are
    /// refused with their status.
    #[test]
    fn requests_over_a_socket() {
        use std::io::{Read, Write};
        let ex = Arc::new(Executor::new());
        let server = Server::start(&ex, "127.0.0.1", 0, vec![Arc::new(Echo)]).unwrap();
        let addr = server.local_addr();
        let ask = move |req: Vec<u8>| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                for part in req.chunks(700) {
                    let _ = s.write_all(part);
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
        };
        let big_head = format!("GET /echo HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let big_body = format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let clients = [
            ask(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
            ask(big_head.into_bytes()),
            ask(big_body.into_bytes()),
            ask(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        ];
        let answers: Vec<String> = smol::block_on(ex.run(async {
            let mut out = Vec::new();
            for c in clients {
                while !c.is_finished() {
                    Timer::after(Duration::from_millis(10)).await;
                }
                out.push(c.join().unwrap());
            }
            out
        }));
        assert!(
            answers[0].starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            answers[0]
        );
        assert!(answers[0].ends_with("\r\n\r\nhello"), "{}", answers[0]);
        assert!(answers[0].contains("X-Method: POST"), "{}", answers[0]);
        assert!(answers[1].starts_with("HTTP/1.1 431 "), "{}", answers[1]);
        assert!(answers[2].starts_with("HTTP/1.1 413 "), "{}", answers[2]);
        assert!(answers[3].starts_with("HTTP/1.1 501 "), "{}", answers[3]);
    }
}
