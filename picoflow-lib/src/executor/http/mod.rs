//! `type: http`: one HTTP request per attempt (EXEC-003, EXEC-005, DAG-008), on isahc.
//!
//! * `url`, header values and the strings of `body` get `${VAR}` expansion (values are
//!   inserted as JSON strings, so no value can change the body's structure). A `body` is sent as JSON with
//!   `Content-Type: application/json` unless a header sets the content type (in any case).
//! * Success is a status in `expected_status`, or any 2xx when it is absent. Redirects are
//!   never followed: a 3xx is a result like any other and is judged by `expected_status`, so
//!   a workflow states explicitly that a redirect is what it expects.
//! * A failed attempt may be retried when another try can help: 5xx, 408 and 429 answers,
//!   timeouts and connection errors. Any other status that is not accepted (a 4xx above all)
//!   is final, since sending the same request again gets the same answer.
//! * `timeout` bounds the whole exchange, connecting and reading the body included; the task
//!   timeout and the run's cancellation end the request as well (the transfer is aborted).
//! * Exit code: 0 when the status is accepted, 1 otherwise (API reference, "Task Exit
//!   Codes"). The response's status line goes to the stderr capture, so the code the server
//!   sent is recorded for every attempt; the body is the stdout capture, streamed to the task
//!   log and capped at [`CAPTURE_LIMIT`] while it is read.
//! * TLS certificates and host names are verified (the TLS backend's system trust store).
//!
//! Secrets (SEC-001 and the API reference's "No logging of Authorization headers"): the
//! values of `Authorization`, `Proxy-Authorization`, `Cookie` and of every header whose name
//! contains `auth`, `cookie`, `token`, `key`, `secret` or `password` (in any case), user
//! info in the URL and query parameters with such names never appear in an event, error
//! message or output this executor produces; they read `[REDACTED]`. Values are also masked
//! by where they come from, whatever a parameter is called: every `${…}` value expanded into
//! the URL's user info, path, query or fragment is shown as `[REDACTED]` (only scheme, host
//! and port are shown as expanded), and values expanded into header values are shown only
//! as the `${…}` the workflow wrote. Since every message, task record, the state file, the
//! exports and the API carry only what this executor shows, none of them holds such a value. isahc's own tracing
//! would show them — its `isahc::wire` trace events dump the request headers, and its debug
//! spans record the URL — so the request runs with tracing switched off (see `Client`).
//!
//! Threads: isahc drives curl from one agent thread per client. PicoFlow creates one client
//! per run, on first use by an HTTP task, and the thread ends with the run. Everything else
//! is async on the caller's executor.

use std::fmt::Write as _;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt as _};
use isahc::config::{Configurable as _, RedirectPolicy};
use isahc::error::ErrorKind;
use isahc::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use isahc::http::{Method, StatusCode};
use isahc::{AsyncBody, HttpClient, Request};
use tracing::instrument::WithSubscriber as _;

use super::{
    stop, BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::model::{Task, TaskConfig};
use crate::settings::http::{is_http_url, HttpConfig};

/// What replaces a secret in anything PicoFlow shows.
const REDACTED: &str = "[REDACTED]";

/// Key of the per-run client in [`super::SharedState`].
const CLIENT_KEY: &str = "http.client";

/// Exit code of an attempt whose status was not accepted or that got no answer.
const EXIT_FAILED: i32 = 1;

#[derive(Debug, Default)]
pub(crate) struct HttpExecutor;

impl Executor for HttpExecutor {
    fn check(&self, task: &Task) -> Result<(), String> {
        let TaskConfig::Http(cfg) = &task.config else {
            return Err("config: expected an http configuration".into());
        };
        // Header names are fixed text, so a bad one is reported when the workflow loads;
        // values may hold ${VAR} and are checked once expanded.
        for (name, _) in &cfg.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "config.headers: '{name}' is not a valid header name"
                ));
            }
        }
        Ok(())
    }

    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            match &ctx.task.config {
                TaskConfig::Http(cfg) => run(cfg, &ctx).await,
                _ => TaskOutput::failed("http executor given a non-http task", false),
            }
        })
    }
}

/// The HTTP client shared by the tasks of one run.
///
/// `quiet` is a registered subscriber that drops everything. Requests are sent and read
/// with it as their default subscriber, so isahc's spans are disabled when a request is
/// created: isahc then leaves curl's verbose mode off, and no wire dump (request headers
/// included) is produced on its agent thread, whatever level the application's subscriber
/// enables. Registering it makes tracing ask subscribers per event instead of caching
/// "always"; that costs a call per enabled event and nothing else.
struct Client {
    http: Result<HttpClient, String>,
    quiet: tracing::Dispatch,
}

impl Client {
    fn new() -> Self {
        let quiet = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new());
        let http = HttpClient::builder()
            .redirect_policy(RedirectPolicy::None)
            .build()
            .map_err(|e| format!("cannot start the HTTP client: {e}"));
        Client { http, quiet }
    }
}

/// Everything needed to send one request, built from the configuration.
struct Prepared {
    request: Request<AsyncBody>,
    /// The URL as it may be shown.
    shown_url: String,
    redactor: Redactor,
}

fn prepare(cfg: &HttpConfig, ctx: &TaskContext<'_>) -> Result<Prepared, String> {
    let (url, spans) = ctx.vars.expand_marked(&cfg.url);
    let (masked, hidden) = mask_values(&url, &spans);
    let shown_url = redact_url(&masked);
    let mut redactor = Redactor::default();
    redactor.add_url(&url);
    hidden.iter().for_each(|v| redactor.add_expanded(v));
    let mut headers = Vec::with_capacity(cfg.headers.len());
    for (name, value) in &cfg.headers {
        let (value, spans) = ctx.vars.expand_marked(value);
        if is_sensitive(name) {
            redactor.add_credential(&value);
        }
        spans
            .iter()
            .for_each(|r| redactor.add_expanded(&value[r.clone()]));
        headers.push((name, value));
    }
    // Messages below may quote the URL or a header's name, never a value.
    let fail = |what: String| redactor.scrub(&what);
    if !is_http_url(&url) {
        return Err(fail(format!(
            "url '{shown_url}' (from '{}') must be an http:// or https:// URL",
            cfg.url
        )));
    }

    let method = Method::from_bytes(cfg.method.as_bytes())
        .map_err(|_| fail(format!("method '{}' is not valid", cfg.method)))?;
    let timeout = Duration::from_secs(cfg.timeout.max(1));
    let mut builder = Request::builder()
        .method(method)
        .uri(url.as_str())
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect_policy(RedirectPolicy::None)
        // Small devices' HTTP servers often do not answer `Expect: 100-continue`, which
        // would cost a one-second wait per request with a body.
        .expect_continue(false);
    let mut has_content_type = false;
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fail(format!("header name '{name}' is not valid")))?;
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            fail(format!(
                "header '{name}': the value is not valid in a header (after ${{VAR}} expansion)"
            ))
        })?;
        v.set_sensitive(is_sensitive(name));
        has_content_type |= header == CONTENT_TYPE;
        builder = builder.header(header, v);
    }
    let body = match &cfg.body {
        Some(json) => {
            if !has_content_type {
                builder = builder.header(CONTENT_TYPE, "application/json");
            }
            let bytes = serde_json::to_vec(&expand_json(json, ctx))
                .map_err(|e| fail(format!("cannot encode the body as JSON: {e}")))?;
            AsyncBody::from(bytes)
        }
        None => AsyncBody::empty(),
    };
    let request = builder
        .body(body)
        .map_err(|e| fail(format!("invalid request to {shown_url}: {e}")))?;
    Ok(Prepared {
        request,
        shown_url,
        redactor,
    })
}

/// How the exchange with the server ended, before it is judged.
enum Exchange {
    /// A complete answer: status and (captured) body.
    Answered(StatusCode),
    /// The request failed or the body was cut off.
    Error {
        message: String,
        timeout: bool,
        retryable: bool,
    },
}

/// How the exchange ended: answered or failed, out of its request timeout, or stopped.
enum Stop {
    Done(Exchange),
    RequestTimeout,
    Stopped(stop::Stop),
}

async fn run(cfg: &HttpConfig, ctx: &TaskContext<'_>) -> TaskOutput {
    super::init_openssl();
    let prepared = match prepare(cfg, ctx) {
        Ok(p) => p,
        Err(message) => {
            tracing::warn!(task = %ctx.task.name, error = %message, "http request not sent");
            let mut out = TaskOutput::failed(message, false);
            out.exit_code = Some(EXIT_FAILED);
            return out;
        }
    };
    let client = ctx.shared.get_or_insert(CLIENT_KEY, Client::new);
    let http = match &client.http {
        Ok(h) => h,
        Err(e) => {
            let mut out = TaskOutput::failed(e.clone(), true);
            out.exit_code = Some(EXIT_FAILED);
            return out;
        }
    };
    let Prepared {
        request,
        shown_url,
        redactor,
    } = prepared;
    tracing::debug!(
        task = %ctx.task.name,
        attempt = ctx.attempt,
        method = %cfg.method,
        url = %shown_url,
        headers = %describe_headers(&cfg.headers),
        "http request"
    );

    let mut body = Capture::default();
    let mut status_line = Capture::default();
    let stop = {
        let exchange = exchange(http, request, ctx, &mut status_line, &mut body)
            .with_subscriber(client.quiet.clone());
        let request_timer = async {
            smol::Timer::after(request_timeout(cfg)).await;
            Stop::RequestTimeout
        };
        let bounded = future::or(async { Stop::Done(exchange.await) }, request_timer);
        match stop::race(ctx, std::pin::pin!(bounded)).await {
            Ok(ended) => ended,
            Err(stopped) => Stop::Stopped(stopped),
        }
    };

    let out = TaskOutput {
        outcome: Outcome::Failed,
        exit_code: Some(EXIT_FAILED),
        stdout: body,
        stderr: status_line,
        error: None,
        retryable: true,
    };
    let out = judge(cfg, ctx, stop, &shown_url, &redactor, out);
    if let Some(e) = &out.error {
        tracing::debug!(task = %ctx.task.name, error = %e, retryable = out.retryable, "http attempt failed");
    }
    out
}

/// The attempt's result from how its exchange ended; `out` holds the captures, and is a
/// failure until found otherwise. Messages show the URL as it may be shown, and an error
/// from the transfer is scrubbed of the request's secrets.
fn judge(
    cfg: &HttpConfig,
    ctx: &TaskContext<'_>,
    stop: Stop,
    shown_url: &str,
    redactor: &Redactor,
    mut out: TaskOutput,
) -> TaskOutput {
    match stop {
        Stop::Done(Exchange::Answered(status)) => {
            let accepted = is_accepted(status.as_u16(), cfg.expected_status.as_deref());
            tracing::debug!(
                task = %ctx.task.name,
                status = status.as_u16(),
                accepted,
                "http response"
            );
            if accepted {
                out.outcome = Outcome::Success;
                out.exit_code = Some(0);
                out.retryable = false;
            } else {
                out.retryable = is_retryable_status(status.as_u16());
                out.error = Some(format!(
                    "{} {} answered {}, expected {}",
                    cfg.method,
                    shown_url,
                    describe_status(status),
                    describe_expected(cfg.expected_status.as_deref())
                ));
            }
        }
        Stop::Done(Exchange::Error {
            message,
            timeout,
            retryable,
        }) => {
            if timeout {
                out.outcome = Outcome::Timeout;
                out.exit_code = Some(stop::EXIT_TIMEOUT);
            }
            out.retryable = retryable;
            out.error = Some(redactor.scrub(&format!("{} {}: {message}", cfg.method, shown_url)));
        }
        Stop::RequestTimeout => {
            out.outcome = Outcome::Timeout;
            out.exit_code = Some(stop::EXIT_TIMEOUT);
            out.error = Some(format!(
                "{} {}: no complete answer within the request timeout of {}s",
                cfg.method,
                shown_url,
                request_timeout(cfg).as_secs()
            ));
        }
        Stop::Stopped(stopped) => {
            let how = format!("{} {}: request aborted", cfg.method, shown_url);
            out = stopped.output(&how, out.stdout, out.stderr);
        }
    }
    out
}

/// The limit of the whole exchange, connecting and reading the body included.
fn request_timeout(cfg: &HttpConfig) -> Duration {
    Duration::from_secs(cfg.timeout.max(1))
}

/// `json` with `${VAR}` expanded in its strings (keys and values).
fn expand_json(json: &serde_json::Value, ctx: &TaskContext<'_>) -> serde_json::Value {
    use serde_json::Value;
    match json {
        Value::String(s) => Value::String(ctx.vars.expand(s)),
        Value::Array(a) => Value::Array(a.iter().map(|v| expand_json(v, ctx)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (ctx.vars.expand(k), expand_json(v, ctx)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Sends the request and reads the whole answer, streaming the body to the task's output.
async fn exchange(
    http: &HttpClient,
    request: Request<AsyncBody>,
    ctx: &TaskContext<'_>,
    status_line: &mut Capture,
    body: &mut Capture,
) -> Exchange {
    let response = match http.send_async(request).await {
        Ok(r) => r,
        Err(e) => {
            let kind = e.kind().clone();
            return Exchange::Error {
                message: e.to_string(),
                timeout: kind == ErrorKind::Timeout,
                retryable: is_retryable_error(&kind),
            };
        }
    };
    let status = response.status();
    let line = format!("{:?} {}\n", response.version(), describe_status(status));
    ctx.output.output(Stream::Stderr, line.as_bytes());
    status_line.push(line.as_bytes(), CAPTURE_LIMIT);

    let mut reader = response.into_body();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return Exchange::Answered(status),
            Ok(n) => {
                ctx.output.output(Stream::Stdout, &buf[..n]);
                body.push(&buf[..n], CAPTURE_LIMIT);
            }
            Err(e) => {
                return Exchange::Error {
                    message: format!(
                        "{}; the response body was cut off: {e}",
                        describe_status(status)
                    ),
                    timeout: e.kind() == std::io::ErrorKind::TimedOut,
                    retryable: true,
                }
            }
        }
    }
}

/// Any 2xx by default, else exactly the listed codes.
fn is_accepted(status: u16, expected: Option<&[u16]>) -> bool {
    match expected {
        Some(codes) => codes.contains(&status),
        None => (200..300).contains(&status),
    }
}

/// Server errors, `408 Request Timeout` and `429 Too Many Requests` may pass on a later try.
fn is_retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Failures to reach or hear the server may pass; a request or certificate the client
/// rejects will be rejected again.
fn is_retryable_error(kind: &ErrorKind) -> bool {
    !matches!(
        kind,
        ErrorKind::BadClientCertificate
            | ErrorKind::BadServerCertificate
            | ErrorKind::ClientInitialization
            | ErrorKind::InvalidContentEncoding
            | ErrorKind::InvalidCredentials
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidTlsConfiguration
            | ErrorKind::ProtocolViolation
            | ErrorKind::RequestBodyNotRewindable
            | ErrorKind::TooManyRedirects
    )
}

fn describe_status(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn describe_expected(expected: Option<&[u16]>) -> String {
    match expected {
        None => "2xx".into(),
        Some([one]) => one.to_string(),
        Some(codes) => {
            let list: Vec<String> = codes.iter().map(u16::to_string).collect();
            format!("one of {}", list.join(", "))
        }
    }
}

/// Whether a header's value is a secret: `Authorization`, `Proxy-Authorization`, `Cookie`
/// and any name containing `auth`, `cookie`, `token`, `key`, `secret` or `password`.
fn is_sensitive(name: &str) -> bool {
    const WORDS: [&str; 6] = ["auth", "cookie", "token", "key", "secret", "password"];
    let lower = name.to_ascii_lowercase();
    WORDS.iter().any(|w| lower.contains(w))
}

/// Header names and values for a log line, with secret values replaced.
fn describe_headers(headers: &[(String, String)]) -> String {
    let mut s = String::new();
    for (name, value) in headers {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let shown = if is_sensitive(name) {
            REDACTED
        } else {
            value.as_str()
        };
        let _ = write!(s, "{name}: {shown}");
    }
    s
}

/// `url` with user info and the values of secret-named query parameters replaced:
/// `https://user:pw@host/p?api_key=x&a=1` becomes
/// `https://[REDACTED]@host/p?api_key=[REDACTED]&a=1`.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, _)) if is_sensitive(name) => {
                        out.push_str(name);
                        out.push('=');
                        out.push_str(REDACTED);
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

/// The parts of a URL where an expanded value is never shown: the user info and everything
/// after the host and port (path, query, fragment), as byte ranges.
fn hidden_parts(url: &str) -> [std::ops::Range<usize>; 2] {
    let start = url.find("://").map_or(0, |i| i + 3);
    let auth_end = start
        + url[start..]
            .find(['/', '?', '#'])
            .unwrap_or(url.len() - start);
    let user_end = url[start..auth_end]
        .rfind('@')
        .map_or(start, |at| start + at);
    [start..user_end, auth_end..url.len()]
}

/// `url` with every part of the values at `spans` (where [`expand_marked`] put them) that
/// lies in a [hidden part](hidden_parts) replaced by [`REDACTED`]; and those parts.
///
/// [`expand_marked`]: crate::expand::Vars::expand_marked
fn mask_values(url: &str, spans: &[std::ops::Range<usize>]) -> (String, Vec<String>) {
    let mut masks: Vec<std::ops::Range<usize>> = Vec::new();
    for part in hidden_parts(url) {
        for span in spans {
            let (start, end) = (span.start.max(part.start), span.end.min(part.end));
            if start < end {
                masks.push(start..end);
            }
        }
    }
    let hidden = masks.iter().map(|m| url[m.clone()].to_string()).collect();
    masks.sort_by_key(|r| r.start);
    // Adjacent or overlapping values read as one mask.
    let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(masks.len());
    for m in masks {
        match merged.last_mut() {
            Some(last) if m.start <= last.end => last.end = last.end.max(m.end),
            _ => merged.push(m),
        }
    }
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for m in merged {
        out.push_str(&url[at..m.start]);
        out.push_str(REDACTED);
        at = m.end;
    }
    out.push_str(&url[at..]);
    (out, hidden)
}

/// Removes known secret strings from text that came from elsewhere (isahc's and curl's
/// error messages), as a second line of defence behind never formatting secrets at all.
#[derive(Debug, Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A header value; for `Bearer x`-style values the credential alone is a secret too.
    fn add_credential(&mut self, value: &str) {
        self.add(value.trim());
        if let Some((_, credential)) = value.trim().split_once(' ') {
            self.add(credential.trim());
        }
    }

    /// The user info of a URL (and its password) and secret query parameter values.
    fn add_url(&mut self, url: &str) {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            self.add(userinfo);
            if let Some((_, password)) = userinfo.split_once(':') {
                self.add(password);
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            let query = query.split('#').next().unwrap_or("");
            for pair in query.split('&') {
                if let Some((name, value)) = pair.split_once('=') {
                    if is_sensitive(name) {
                        self.add(value);
                    }
                }
            }
        }
    }

    /// A value expanded where it is not shown. One shorter than [`Redactor::MIN_SEARCHED`]
    /// is not searched for in other text (a digit would be masked in every number), only
    /// kept out of what PicoFlow itself writes.
    fn add_expanded(&mut self, value: &str) {
        if value.len() >= Self::MIN_SEARCHED {
            self.add(value);
        }
    }

    const MIN_SEARCHED: usize = 4;

    fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_header_names() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-Api-Key",
            "X-Auth-Token",
            "client_secret",
            "X-PASSWORD",
        ] {
            assert!(is_sensitive(name), "{name}");
        }
        for name in ["Accept", "Content-Type", "User-Agent", "X-Request-Id"] {
            assert!(!is_sensitive(name), "{name}");
        }
    }

    #[test]
    fn headers_are_described_without_secret_values() {
        let headers = vec![
            ("Accept".to_string(), "text/plain".to_string()),
            ("Authorization".to_string(), "Bearer s3cr3t".to_string()),
            ("X-Api-KEY".to_string(), "k3y".to_string()),
        ];
        let s = describe_headers(&headers);
        assert_eq!(
            s,
            "Accept: text/plain, Authorization: [REDACTED], X-Api-KEY: [REDACTED]"
        );
    }

    #[test]
    fn url_user_info_and_secret_parameters_are_redacted() {
        assert_eq!(
            redact_url("https://user:pa55@example.com:8443/x?y=1"),
            "https://[REDACTED]@example.com:8443/x?y=1"
        );
        assert_eq!(
            redact_url("http://tok@127.0.0.1/"),
            "http://[REDACTED]@127.0.0.1/"
        );
        assert_eq!(
            redact_url("http://h/p?a=1&api_key=zz&Token=t#frag"),
            "http://h/p?a=1&api_key=[REDACTED]&Token=[REDACTED]#frag"
        );
        // An '@' in the path is not user info.
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_url("http://h"), "http://h");
    }

    #[test]
    fn expanded_values_are_masked_by_where_they_lie() {
        let mut v = crate::expand::Vars::isolated();
        v.set("H", "example.com")
            .set("PW", "pw1")
            .set("S", "sig-value")
            .set("BASE", "https://u:p@host/v1")
            .set("ID", "42");
        let shown = |t: &str| {
            let (url, spans) = v.expand_marked(t);
            let (masked, hidden) = mask_values(&url, &spans);
            (redact_url(&masked), hidden)
        };
        let (u, hidden) = shown("https://${H}:8443/bot${S}/x?pass=${PW}&sig=${S}${ID}#${ID}");
        assert_eq!(
            u,
            "https://example.com:8443/bot[REDACTED]/x?pass=[REDACTED]&sig=[REDACTED]#[REDACTED]"
        );
        assert_eq!(hidden, ["sig-value", "pw1", "sig-value", "42", "42"]);
        // A value spanning host and path: the host part stays readable.
        let (u, hidden) = shown("${BASE}/items");
        assert_eq!(u, "https://[REDACTED]@host[REDACTED]/items");
        assert_eq!(hidden, ["u:p", "/v1"]);
        // Literal text is shown as written (secret-named parameters aside).
        assert_eq!(
            shown("http://h/p?a=1&api_key=2").0,
            "http://h/p?a=1&api_key=[REDACTED]"
        );
    }

    #[test]
    fn redactor_scrubs_whole_values_and_credentials() {
        let mut r = Redactor::default();
        r.add_credential("Bearer abc.def");
        r.add_url("https://me:pw-123@host/?secret=xyz");
        let msg = "sent Bearer abc.def to me:pw-123@host, then abc.def, pw-123 and xyz";
        let scrubbed = r.scrub(msg);
        for secret in ["abc.def", "pw-123", "me:pw-123", "xyz"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(
            scrubbed.starts_with("sent [REDACTED] to [REDACTED]@host"),
            "{scrubbed}"
        );
    }

    #[test]
    fn acceptance_and_retry_rules() {
        assert!(is_accepted(200, None));
        assert!(is_accepted(299, None));
        assert!(!is_accepted(301, None));
        assert!(!is_accepted(404, None));
        assert!(is_accepted(404, Some(&[200, 404])));
        assert!(!is_accepted(200, Some(&[204])));
        assert!(is_retryable_status(503));
        assert!(is_retryable_status(429));
        assert!(!is_retryable_status(400));
        assert!(!is_retryable_status(404));
        assert!(is_retryable_error(&ErrorKind::ConnectionFailed));
        assert!(is_retryable_error(&ErrorKind::Timeout));
        assert!(!is_retryable_error(&ErrorKind::BadServerCertificate));
    }

    #[test]
    fn expected_status_is_described() {
        assert_eq!(describe_expected(None), "2xx");
        assert_eq!(describe_expected(Some(&[204])), "204");
        assert_eq!(describe_expected(Some(&[200, 404])), "one of 200, 404");
    }
}
