//! `type: http` settings (EXEC-003): what `config:` holds, read and checked when a workflow
//! is loaded, in every build (a build without `http` then refuses the task by name). Declared
//! by `settings` (below the model, which holds them); the running code is this folder's
//! `mod.rs`.

use serde::Deserialize;

use crate::settings::{from_value, scalar_text, seconds, Mapping, Problems, Value, ValueError};

/// Default HTTP request timeout (connect + read), in seconds.
pub const DEFAULT_HTTP_TIMEOUT_SECS: u64 = 30;

/// The HTTP methods the HTTP executor accepts.
pub const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// `type: http` configuration (EXEC-003).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Full `http://` or `https://` URL.
    pub url: String,
    /// Upper-case method: GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS.
    pub method: String,
    /// Request headers, in file order; values get `${VAR}` expansion.
    pub headers: Vec<(String, String)>,
    /// JSON body built from the YAML object.
    pub body: Option<serde_json::Value>,
    /// Request timeout (connect + read) in seconds (1-3600, default 30).
    pub timeout: u64,
    /// Accepted status codes; any 2xx when absent.
    pub expected_status: Option<Vec<u16>>,
}

/// `config:` as written; an unknown key is an error that names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: String,
    method: String,
    #[serde(default)]
    headers: Mapping,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default, deserialize_with = "seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    expected_status: Option<Vec<i64>>,
}

/// The keys `config:` accepts.
pub(crate) fn keys() -> &'static [&'static str] {
    crate::fields::of::<RawHttp>()
}

/// Whether `url` is an `http://` or `https://` URL with something after the scheme.
pub(crate) fn is_http_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["http://", "https://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme) && url.len() > scheme.len())
}

/// Reads a task's `config:`; a value of the wrong shape is the error, a value out of its
/// range or format is added to `problems`.
pub(crate) fn parse(config: Value, problems: &mut Problems<'_>) -> Result<HttpConfig, ValueError> {
    let r: RawHttp = from_value(config)?;
    let method = r.method.to_ascii_uppercase();
    if !HTTP_METHODS.contains(&method.as_str()) {
        problems.add(format_args!(
            "config.method '{}' is not one of {}",
            r.method,
            HTTP_METHODS.join(", ")
        ));
    }
    // A URL built from `${VAR}` is checked once expanded, when the task runs.
    if !r.url.contains("${") && !is_http_url(&r.url) {
        problems.add(format_args!(
            "config.url '{}' must be an http:// or https:// URL",
            r.url
        ));
    }
    let timeout = problems.range("config.timeout", r.timeout, 1, 3600);
    let expected_status = r.expected_status.map(|codes| {
        codes
            .into_iter()
            .filter_map(|c| {
                if (100..=599).contains(&c) {
                    Some(c as u16)
                } else {
                    problems.add(format_args!(
                        "config.expected_status: {c} is not an HTTP status (100-599)"
                    ));
                    None
                }
            })
            .collect()
    });
    Ok(HttpConfig {
        url: r.url,
        method,
        headers: headers(r.headers, problems),
        body: r.body.and_then(|b| match serde_json::to_value(&b) {
            Ok(j) => Some(j),
            Err(e) => {
                problems.add(format_args!("config.body cannot be sent as JSON: {e}"));
                None
            }
        }),
        timeout: timeout
            .map(|t| t as u64)
            .unwrap_or(DEFAULT_HTTP_TIMEOUT_SECS),
        expected_status,
    })
}

/// The headers, in file order; names and values must be scalars.
fn headers(written: Mapping, problems: &mut Problems<'_>) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(written.len());
    for (k, v) in written {
        match (scalar_text(&k), scalar_text(&v)) {
            (Some(k), Some(v)) => headers.push((k, v)),
            _ => problems.add("config.headers: names and values must be strings"),
        }
    }
    headers
}
