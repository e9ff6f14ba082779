//! The daemon's web UI and REST API (OBS-005), built with the `web` feature.
//!
//! Served on the daemon's HTTP endpoint (see `httpd`), on its own thread:
//!
//! * **Pages**, rendered on the server with a small script and style sheet embedded in the
//!   binary (nothing is fetched from elsewhere, devices are often offline): the workflows
//!   (`/`), one workflow with its DAG as SVG and its history (`/workflows/NAME`), one
//!   execution with its tasks and a timeline of every attempt (`/executions/ID`), and a task's
//!   log (`/executions/ID/tasks/TASK/log`). While an execution runs, its pages reload their
//!   content once a second and the log viewer follows the file.
//! * **API** under `/api/v1/`, JSON in the shapes of the command line's `--format json`:
//!   `workflows`, `workflows/NAME`, `workflows/NAME/executions`, `executions` (the filters of
//!   `history`: `workflow`, `status`, `since`, `limit`), `executions/ID`,
//!   `executions/ID/tasks/TASK/log?offset=N`, and `POST workflows/NAME/run`.
//!
//! Safety: everything shown is read-only; triggering a run needs the configured bearer token
//! (compared in constant time) and obeys the workflow's overlap rule. With
//! `require_token_for_reads`, every page and API read needs it too: as a bearer header, or as
//! the session cookie (`HttpOnly`, `SameSite=Strict`) that the sign-in form (`POST /login`)
//! sets; the cookie holds a random key drawn at start, never the token, and never triggers a
//! run. An execution view shows only the last [`CAPTURE_TAIL`] bytes of each captured stream,
//! so that no answer repeats megabytes of output; the log endpoint has all of it. Names from
//! a request are only looked up among the recorded workflows, executions and tasks, never
//! joined into a path, so the log endpoint cannot reach any other file. Task configurations and
//! environments are never shown. When the endpoint listens on a loopback address, requests
//! whose `Host` names another host are refused, so a web page cannot reach the UI through DNS
//! rebinding.

mod page;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use smol::future;

use crate::contract::{CatalogEntry, Trigger, Triggered, WebContext};
use crate::error::{Error, Result};
use crate::events::{last_attempts, TaskExecution, WorkflowExecution, WorkflowStatus};
use crate::httpd::{percent_encode, Request, Response, Service};
use crate::logs::{execution_log_dir, task_log_path};
use crate::model::Workflow;
use crate::store::{HistoryFilter, Store, WorkflowRecord};
use crate::views::{self, WorkflowSummary};

/// Most executions one history request returns.
const MAX_LIMIT: usize = 1000;
/// Executions a history request returns when it sets no `limit`.
const DEFAULT_LIMIT: usize = 20;
/// Most bytes of a log one request returns.
const LOG_CHUNK: usize = 64 * 1024;
/// How long the API waits for the daemon to answer a trigger.
const TRIGGER_WAIT: Duration = Duration::from_secs(10);
/// Most bytes of each captured stream (stdout, stderr) an execution view shows: its end.
const CAPTURE_TAIL: usize = 4 * 1024;
/// The cookie that carries a signed-in browser's session key.
const SESSION_COOKIE: &str = "picoflow_session";

const SCRIPT: &str = include_str!("picoflow.js");
const STYLE: &str = include_str!("picoflow.css");

/// The UI and API as a service of the daemon's HTTP endpoint.
pub(crate) fn service(context: WebContext) -> Option<Arc<dyn Service>> {
    let session = session_key();
    Some(Arc::new(Web {
        cx: context,
        session,
    }))
}

struct Web {
    cx: WebContext,
    /// What the session cookie holds once a browser signed in; `None` when no random key
    /// could be drawn (signing in is then refused, bearer headers still work).
    session: Option<String>,
}

/// 256 random bits from the kernel, in hex.
fn session_key() -> Option<String> {
    let mut key = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    match read {
        Ok(()) => Some(key.iter().map(|b| format!("{b:02x}")).collect()),
        Err(e) => {
            tracing::error!(error = %e, "web: cannot draw a session key; signing in is disabled");
            None
        }
    }
}

/// What a request asked for that is not there, or could not be answered.
#[derive(Debug)]
enum Problem {
    /// 400, with what is wrong.
    BadRequest(String),
    /// 404, with what is missing.
    NotFound(String),
    /// 500: reading the state failed.
    Internal(Error),
    /// 503, with why: the fleet's server cannot be read.
    Unavailable(String),
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::Config { origin, message } => {
                Problem::BadRequest(format!("{origin}: {message}"))
            }
            e => Problem::Internal(e),
        }
    }
}

impl Problem {
    fn status(&self) -> u16 {
        match self {
            Problem::BadRequest(_) => 400,
            Problem::NotFound(_) => 404,
            Problem::Internal(_) => 500,
            Problem::Unavailable(_) => 503,
        }
    }

    fn message(&self) -> String {
        match self {
            Problem::BadRequest(m) | Problem::NotFound(m) | Problem::Unavailable(m) => m.clone(),
            Problem::Internal(e) => {
                tracing::error!(error = %e, "web: cannot read the state");
                "cannot read the state file; see the daemon's log".to_string()
            }
        }
    }
}

type Answer = std::result::Result<Response, Problem>;

fn api_error(status: u16, message: &str) -> Response {
    Response::json(status, json!({ "error": message }).to_string())
}

fn api_json(value: &Value) -> Answer {
    Ok(Response::json(
        200,
        serde_json::to_string_pretty(value).unwrap_or_default(),
    ))
}

impl Service for Web {
    /// Pages and the API read records of up to 10 MB a stream and wait for triggers: on the
    /// worker thread, one at a time, never in the way of `/health` and `/metrics`.
    fn on_worker(&self) -> bool {
        true
    }

    fn handle(&self, r: &Request) -> Option<Response> {
        let seg: Vec<&str> = r.segments.iter().map(String::as_str).collect();
        let api = seg.first() == Some(&"api");
        let route = match seg.as_slice() {
            [""]
            | ["fleet"]
            | ["workflows", _]
            | ["executions", _]
            | ["executions", _, "tasks", _, "log"] => Route::Page,
            ["static", "picoflow.js"] | ["static", "picoflow.css"] => Route::Static,
            ["login"] => Route::Login,
            ["api", "v1", "workflows", _, "run"] => Route::Post,
            ["api", ..] => Route::Api,
            _ => return None,
        };
        if self.cx.loopback && !host_allowed(r.header("host")) {
            let m = "this endpoint answers only requests for localhost";
            return Some(if api {
                api_error(403, m)
            } else {
                Response::status(403)
            });
        }
        let post = matches!(route, Route::Post | Route::Login);
        let expected = if post { "POST" } else { "GET" };
        if r.method != expected {
            let allow = if post { "POST" } else { "GET, HEAD" };
            return Some(if api {
                api_error(405, &format!("use {expected}")).with("Allow", allow)
            } else {
                Response::status(405).with("Allow", allow)
            });
        }
        if self.cx.reads_need_token
            && matches!(route, Route::Page | Route::Api)
            && !self.may_read(r)
        {
            return Some(if api {
                api_error(
                    401,
                    "a valid 'Authorization: Bearer <token>' or a signed-in session is needed",
                )
                .with("WWW-Authenticate", "Bearer")
            } else {
                page::login(401, &r.path, None)
            });
        }
        let answer = match (route, seg.as_slice()) {
            (Route::Static, [_, "picoflow.js"]) => Ok(static_file("text/javascript", SCRIPT)),
            (Route::Static, _) => Ok(static_file("text/css", STYLE)),
            (Route::Login, _) => Ok(self.login(r)),
            (Route::Post, [_, _, _, name, _]) => Ok(self.trigger(r, name)),
            (Route::Api, ["api", "v1", rest @ ..]) => self.api(r, rest),
            (Route::Api, _) => Err(Problem::NotFound("no such API; see /api/v1/".into())),
            (_, [""]) => self.workflows_page(),
            (_, ["fleet"]) => self.fleet_page(),
            (_, ["workflows", name]) => self.workflow_page(name),
            (_, ["executions", id]) => self.execution_page(id),
            (_, ["executions", id, _, task, _]) => self.log_page(id, task),
            _ => Err(Problem::NotFound("not found".into())),
        };
        Some(match answer {
            Ok(response) => response,
            Err(p) if api => api_error(p.status(), &p.message()),
            Err(p) => page::error(p.status(), &p.message()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Page,
    Static,
    Api,
    Post,
    Login,
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    Response::new(200, content_type, body).with("Cache-Control", "max-age=3600")
}

/// The data of one workflow as the UI shows it.
struct WorkflowView {
    entry: CatalogEntry,
    summary: Option<WorkflowSummary>,
}

/// One execution with its attempts.
struct ExecutionView {
    exec: WorkflowExecution,
    attempts: Vec<TaskExecution>,
}

impl Web {
    fn store(&self) -> &Store {
        &self.cx.store
    }

    fn workflows(&self) -> Result<Vec<WorkflowView>> {
        let records = self.store().workflows()?;
        let entries = self.cx.catalog.entries();
        entries
            .into_iter()
            .map(|entry| self.view(entry, &records))
            .collect()
    }

    fn workflow(&self, name: &str) -> std::result::Result<WorkflowView, Problem> {
        let entry = self
            .cx
            .catalog
            .get(name)
            .ok_or_else(|| Problem::NotFound(format!("no loaded workflow '{name}'")))?;
        Ok(self.view(entry, &self.store().workflows()?)?)
    }

    /// A loaded workflow with the summary of its stored record, if it has one yet.
    fn view(&self, entry: CatalogEntry, records: &[WorkflowRecord]) -> Result<WorkflowView> {
        let summary = match records.iter().find(|r| r.name == entry.wf.name) {
            Some(r) => Some(WorkflowSummary::of(self.store(), r.clone())?),
            None => None,
        };
        Ok(WorkflowView { entry, summary })
    }

    fn execution(&self, id: &str) -> std::result::Result<ExecutionView, Problem> {
        let missing = || Problem::NotFound(format!("no execution '{id}'"));
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !well_formed {
            return Err(missing());
        }
        let exec = self.store().execution(id)?.ok_or_else(missing)?;
        let attempts = self.store().task_executions(id)?;
        Ok(ExecutionView { exec, attempts })
    }

    /// The history a request asks for, each capture cut to its tail as it is read.
    fn history(
        &self,
        r: &Request,
        workflow: Option<&str>,
    ) -> std::result::Result<History, Problem> {
        let limit = match param(r, "limit") {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    Problem::BadRequest(format!(
                        "limit: '{v}' is not a number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        };
        let filter = HistoryFilter {
            workflow: workflow.or(param(r, "workflow")).map(String::from),
            status: param(r, "status")
                .map(|s| views::parse_status(s, "status"))
                .transpose()?,
            since: param(r, "since")
                .map(|s| views::parse_since(s, "since"))
                .transpose()?,
            limit: Some(limit),
        };
        let mut cuts = Cuts::new();
        let list = self
            .store()
            .history_with(&filter, |t| cuts.append(&mut cut_captures(t)))?;
        Ok((list, cuts))
    }

    fn api(&self, r: &Request, rest: &[&str]) -> Answer {
        match rest {
            [] | [""] => api_json(&json!({
                "version": env!("CARGO_PKG_VERSION"),
                "endpoints": [
                    "GET /api/v1/workflows",
                    "GET /api/v1/workflows/{name}",
                    "GET /api/v1/workflows/{name}/executions?status=&since=&limit=",
                    "POST /api/v1/workflows/{name}/run",
                    "GET /api/v1/executions?workflow=&status=&since=&limit=",
                    "GET /api/v1/executions/{id}",
                    "GET /api/v1/executions/{id}/tasks/{task}/log?offset=",
                    "GET /api/v1/fleet",
                ],
            })),
            ["workflows"] => {
                let list: Vec<Value> = self.workflows()?.iter().map(workflow_json).collect();
                api_json(&Value::Array(list))
            }
            ["workflows", name] => {
                let view = self.workflow(name)?;
                let mut j = workflow_json(&view);
                j["tasks"] = tasks_json(&view.entry.wf);
                j["handlers"] = handlers_json(&view.entry.wf);
                j["latest"] = match self.store().latest_execution(name)? {
                    Some(e) => {
                        let mut attempts = self.store().task_executions(&e.id)?;
                        let cuts = cut_captures(&mut attempts);
                        let mut latest = views::execution_json(&e, &attempts);
                        mark_cuts(&mut latest, &cuts);
                        latest
                    }
                    None => Value::Null,
                };
                api_json(&j)
            }
            ["workflows", name, "executions"] => {
                self.workflow(name)?;
                history_answer(self.history(r, Some(name))?)
            }
            ["executions"] => history_answer(self.history(r, None)?),
            ["fleet"] => api_json(&self.fleet_snapshot()?),
            ["executions", id] => {
                let mut v = self.execution(id)?;
                let cuts = cut_captures(&mut v.attempts);
                let mut j = views::execution_json(&v.exec, &v.attempts);
                j["attempts"] = serde_json::to_value(&v.attempts).unwrap_or_default();
                mark_cuts(&mut j, &cuts);
                api_json(&j)
            }
            ["executions", id, "tasks", task, "log"] => {
                let v = self.execution(id)?;
                let offset = match param(r, "offset") {
                    None => 0,
                    Some(o) => o.parse::<u64>().map_err(|_| {
                        Problem::BadRequest(format!("offset: '{o}' is not a byte offset"))
                    })?,
                };
                let chunk = self.log_chunk(&v, task, Some(offset), LOG_CHUNK)?;
                api_json(&json!({
                    "execution_id": v.exec.id,
                    "task": task,
                    "offset": chunk.offset,
                    "next_offset": chunk.next_offset,
                    "size": chunk.size,
                    "text": chunk.text,
                    "complete": chunk.complete,
                }))
            }
            _ => Err(Problem::NotFound("no such API; see /api/v1/".into())),
        }
    }

    /// Up to `max` bytes of a task's log from `offset`, or its last `max` bytes when `offset`
    /// is `None`. Only a task the execution recorded or planned is looked up; its file is
    /// found by [`task_log_path`], which keeps every name inside the execution's log
    /// directory.
    fn log_chunk(
        &self,
        v: &ExecutionView,
        task: &str,
        offset: Option<u64>,
        max: usize,
    ) -> std::result::Result<LogChunk, Problem> {
        let from = |size: u64| match offset {
            Some(o) => o.min(size),
            None => size.saturating_sub(max as u64),
        };
        let last = last_attempts(&v.attempts);
        let recorded = last.iter().any(|t| t.task_name == task);
        if !recorded && !views::planned_tasks(&v.exec).iter().any(|n| n == task) {
            return Err(Problem::NotFound(format!(
                "task '{task}' has no record in execution {}",
                v.exec.id
            )));
        }
        let running = v.exec.status == WorkflowStatus::Running;
        let dir = execution_log_dir(
            &self.cx.log_dir,
            &v.exec.workflow_name,
            v.exec.started_at,
            &v.exec.id,
        );
        let bytes = match std::fs::File::open(task_log_path(&dir, task)) {
            Ok(mut f) => {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let start = from(size);
                let mut buf = Vec::new();
                let read = f
                    .seek(SeekFrom::Start(start))
                    .and_then(|_| f.by_ref().take(max as u64).read_to_end(&mut buf));
                if let Err(e) = read {
                    return Err(Problem::Internal(Error::io(&dir, e)));
                }
                (start, size, buf)
            }
            // No file: the task wrote nothing or its logs were pruned; the record's capture.
            Err(_) => {
                let text = last
                    .iter()
                    .find(|t| t.task_name == task)
                    .map_or_else(String::new, |t| views::captured_output(t));
                let size = text.len() as u64;
                let start = from(size) as usize;
                let end = (start + max).min(text.len());
                (start as u64, size, text.as_bytes()[start..end].to_vec())
            }
        };
        let (start, size, mut buf) = bytes;
        // Never cut a character in two: an incomplete one at the end waits for the next read.
        if let Err(e) = std::str::from_utf8(&buf) {
            if e.error_len().is_none() && start + (buf.len() as u64) < size {
                buf.truncate(e.valid_up_to());
            }
        }
        let next_offset = start + buf.len() as u64;
        Ok(LogChunk {
            offset: start,
            next_offset,
            size,
            text: String::from_utf8_lossy(&buf).into_owned(),
            complete: !running && next_offset >= size,
        })
    }

    /// `POST /api/v1/workflows/NAME/run`: 202 with the new execution's id, 401 without the
    /// right token, 403 when no token is configured, 404 for an unknown workflow, 409 when a
    /// run is going and the workflow does not allow overlapping, 503 when the daemon stops.
    fn trigger(&self, r: &Request, name: &str) -> Response {
        let Some(token) = &self.cx.token else {
            return api_error(
                403,
                "triggering runs is disabled: set [web] token or token_file",
            );
        };
        if !bearer_matches(r, token) {
            return api_error(401, "a valid 'Authorization: Bearer <token>' is needed")
                .with("WWW-Authenticate", "Bearer");
        }
        let (reply, answer) = smol::channel::bounded(1);
        let request = Trigger {
            workflow: name.to_string(),
            reply,
            by: "the web API",
        };
        if self.cx.triggers.try_send(request).is_err() {
            return api_error(503, "the daemon is stopping or busy; try again");
        }
        let answer = smol::block_on(future::or(async { answer.recv().await.ok() }, async {
            smol::Timer::after(TRIGGER_WAIT).await;
            None
        }));
        match answer {
            Some(Triggered::Started(id)) => {
                let url = format!("/api/v1/executions/{id}");
                Response::json(
                    202,
                    json!({ "workflow": name, "execution_id": id, "execution": url }).to_string(),
                )
                .with("Location", url)
            }
            Some(Triggered::NotFound) => api_error(404, &format!("no loaded workflow '{name}'")),
            Some(Triggered::Busy) => api_error(
                409,
                &format!("workflow '{name}' is running and does not set allow_concurrent"),
            ),
            None => api_error(503, "the daemon is stopping or busy; try again"),
        }
    }

    /// Whether a read may be answered: the bearer token, or the session cookie of a
    /// browser that signed in.
    fn may_read(&self, r: &Request) -> bool {
        let Some(token) = &self.cx.token else {
            return false;
        };
        if bearer_matches(r, token) {
            return true;
        }
        let Some(key) = &self.session else {
            return false;
        };
        cookies(r)
            .filter(|(name, _)| *name == SESSION_COOKIE)
            .any(|(_, value)| constant_time_eq(value.as_bytes(), key.as_bytes()))
    }

    /// `POST /login` with the form's `token` and `next`: with the right token, 303 to `next`
    /// (a path on this server) with the session cookie; else the form again with 401.
    fn login(&self, r: &Request) -> Response {
        let form = std::str::from_utf8(&r.body)
            .ok()
            .and_then(crate::httpd::parse_form)
            .unwrap_or_default();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let next = field("next");
        // Only a path here: `//host` or `/\host` would lead the browser to another site.
        let next = if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
            next
        } else {
            "/"
        };
        let right = self
            .cx
            .token
            .as_ref()
            .is_some_and(|t| constant_time_eq(field("token").trim().as_bytes(), t.as_bytes()));
        match (&self.session, right) {
            (Some(key), true) => Response::new(303, "text/plain; charset=utf-8", "signed in\n")
                .with("Location", local_location(next))
                .with(
                    "Set-Cookie",
                    format!("{SESSION_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict"),
                )
                .with("Cache-Control", "no-store"),
            (None, true) => page::error(503, "signing in is disabled; see the daemon's log"),
            (_, false) => page::login(401, next, Some("wrong token")),
        }
    }

    fn workflows_page(&self) -> Answer {
        Ok(page::workflows(
            &self.workflows()?,
            Utc::now(),
            self.cx.fleet.is_some(),
        ))
    }

    /// The fleet as the daemon's fleet thread reads it; 404 without a fleet, 503 when its
    /// server cannot be read.
    fn fleet_snapshot(&self) -> std::result::Result<Value, Problem> {
        let Some(fleet) = &self.cx.fleet else {
            return Err(Problem::NotFound(
                "this daemon belongs to no fleet ([fleet] url)".into(),
            ));
        };
        fleet.snapshot().map_err(Problem::Unavailable)
    }

    fn fleet_page(&self) -> Answer {
        Ok(page::fleet(&self.fleet_snapshot()?))
    }

    fn workflow_page(&self, name: &str) -> Answer {
        let view = self.workflow(name)?;
        let filter = HistoryFilter {
            workflow: Some(name.to_string()),
            limit: Some(50),
            ..Default::default()
        };
        // The page shows no captures: each is cut as it is read.
        let history = self.store().history_with(&filter, |t| {
            cut_captures(t);
        })?;
        let latest = history.first();
        let states = latest.map(|(e, t)| task_states(&view.entry.wf, e, t));
        Ok(page::workflow(&view, states.as_ref(), &history))
    }

    fn execution_page(&self, id: &str) -> Answer {
        let v = self.execution(id)?;
        let planned = views::planned_tasks(&v.exec);
        let last = views::in_workflow_order(last_attempts(&v.attempts), &planned);
        Ok(page::execution(
            &v.exec,
            &last,
            &v.attempts,
            &planned,
            Utc::now(),
        ))
    }

    fn log_page(&self, id: &str, task: &str) -> Answer {
        let v = self.execution(id)?;
        // The page shows the end of the log; its script follows from there.
        let chunk = self.log_chunk(&v, task, None, LOG_CHUNK)?;
        Ok(page::log(&v.exec, task, &chunk))
    }
}

/// DNS-rebinding guard for a loopback listener: a request may name only a loopback host
/// (or none, as HTTP/1.0 clients do).
fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    crate::httpd::is_loopback(name)
}

/// Executions with their attempts, and the captures cut in them.
type History = (Vec<(WorkflowExecution, Vec<TaskExecution>)>, Cuts);

/// A history as the API answers it: `history --format json`, each capture cut to its tail.
fn history_answer((list, cuts): History) -> Answer {
    let mut j = Value::Array(
        list.iter()
            .map(|(e, t)| views::history_json(e, t))
            .collect(),
    );
    mark_cuts(&mut j, &cuts);
    api_json(&j)
}

/// The original sizes of the captures (stdout, stderr) that were cut, by attempt id.
type Cuts = BTreeMap<String, [Option<usize>; 2]>;

/// Cuts each capture longer than [`CAPTURE_TAIL`] bytes to its end, and says which.
fn cut_captures(attempts: &mut [TaskExecution]) -> Cuts {
    let mut cuts = Cuts::new();
    for t in attempts {
        let mut sizes = [None, None];
        let whole = [t.stdout_size.take(), t.stderr_size.take()];
        for ((size, capture), whole) in sizes
            .iter_mut()
            .zip([&mut t.stdout, &mut t.stderr])
            .zip(whole)
        {
            // The state file may hold only the end already; `whole` is then the full size.
            if let Some(text) = capture.as_mut() {
                if text.len() > CAPTURE_TAIL {
                    *size = Some(whole.map_or(text.len(), |w| w as usize));
                    *text = tail(text, CAPTURE_TAIL).to_string();
                } else if let Some(w) = whole {
                    *size = Some(w as usize);
                }
            }
        }
        if sizes != [None, None] {
            cuts.insert(t.id.clone(), sizes);
        }
    }
    cuts
}

/// The last `max` bytes of `s` or a little fewer, never splitting a character.
fn tail(s: &str, max: usize) -> &str {
    let mut from = s.len().saturating_sub(max);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}

/// Adds to every attempt in `v` whose captures were cut `stdout_truncated` /
/// `stderr_truncated` (true), `stdout_size` / `stderr_size` (the whole capture's bytes) and
/// `log`, the API path of the task's whole log. Attempts shown whole get none of these, so
/// they keep the shapes of the command line's JSON.
fn mark_cuts(v: &mut Value, cuts: &Cuts) {
    if cuts.is_empty() {
        return;
    }
    match v {
        Value::Array(items) => items.iter_mut().for_each(|x| mark_cuts(x, cuts)),
        Value::Object(o) => {
            let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            let attempt = (text("id"), text("workflow_execution_id"), text("task_name"));
            if let (Some(id), Some(exec), Some(task)) = attempt {
                let Some(sizes) = cuts.get(&id) else { return };
                for (stream, size) in ["stdout", "stderr"].into_iter().zip(sizes) {
                    if let Some(size) = size {
                        o.insert(format!("{stream}_truncated"), json!(true));
                        o.insert(format!("{stream}_size"), json!(size));
                    }
                }
                let log = format!(
                    "/api/v1/executions/{}/tasks/{}/log",
                    percent_encode(&exec),
                    percent_encode(&task)
                );
                o.insert("log".into(), json!(log));
            } else {
                o.values_mut().for_each(|x| mark_cuts(x, cuts));
            }
        }
        _ => {}
    }
}

/// `next` (a decoded path on this server) as a `Location`: each segment percent-encoded,
/// so no byte of it can end the header.
fn local_location(next: &str) -> String {
    let segments: Vec<String> = next[1..].split('/').map(percent_encode).collect();
    format!("/{}", segments.join("/"))
}

/// Whether the request carries `Authorization: Bearer <token>`.
fn bearer_matches(r: &Request, token: &str) -> bool {
    let given = r
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// The `name=value` pairs of every `Cookie` header.
fn cookies(r: &Request) -> impl Iterator<Item = (&str, &str)> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

/// A query parameter's first value.
fn param<'r>(r: &'r Request, key: &str) -> Option<&'r str> {
    r.query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Compares two secrets in time that depends only on their lengths, not on where they
/// first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A piece of a task's log.
struct LogChunk {
    offset: u64,
    next_offset: u64,
    size: u64,
    text: String,
    /// Nothing more will come: the execution ended and this chunk reaches the end.
    complete: bool,
}

/// The state of each task of `wf` in one execution; a loop's items combine into the loop's
/// (running over failed over anything unfinished over success).
fn task_states(
    wf: &Workflow,
    exec: &WorkflowExecution,
    attempts: &[TaskExecution],
) -> BTreeMap<String, &'static str> {
    let last = last_attempts(attempts);
    let rank = |s: &str| match s {
        "running" | "retrying" => 5,
        "failed" | "timeout" | "interrupted" => 4,
        "pending" => 3,
        "skipped" => 2,
        _ => 1,
    };
    let mut out = BTreeMap::new();
    for task in &wf.tasks {
        let mut state: Option<&'static str> = None;
        for t in &last {
            if !views::is_attempt_of(&t.task_name, &task.name) {
                continue;
            }
            let s = views::shown_state(t, exec.status == WorkflowStatus::Running);
            if state.is_none_or(|old| rank(s) > rank(old)) {
                state = Some(s);
            }
        }
        let state = state.unwrap_or(if exec.status == WorkflowStatus::Running {
            "pending"
        } else {
            "not-run"
        });
        out.insert(task.name.clone(), state);
    }
    out
}

/// The `workflow list --format json` object of a loaded workflow, plus what the UI adds:
/// description, timezone, next run, success rate, task count.
fn workflow_json(v: &WorkflowView) -> Value {
    let wf = &v.entry.wf;
    let mut j = match &v.summary {
        Some(s) => s.to_json(),
        None => json!({
            "name": wf.name,
            "type": if wf.schedule.is_some() { "cron" } else { "on-demand" },
            "schedule": wf.schedule,
            "file": v.entry.source.display().to_string(),
            "last_run": null, "last_status": null, "success": 0, "failed": 0,
        }),
    };
    j["description"] = json!(wf.description);
    j["timezone"] = json!(wf.timezone);
    j["next_run"] = json!(v.entry.next);
    j["success_rate"] = json!(v.summary.as_ref().and_then(WorkflowSummary::success_rate));
    j["allow_concurrent"] = json!(wf.allow_concurrent);
    j["task_count"] = json!(wf.tasks.len());
    j
}

/// The DAG: each task's name, type, dependencies and level (0 for tasks without any).
/// Configurations are left out: they may hold secrets.
fn tasks_json(wf: &Workflow) -> Value {
    let levels = levels(wf);
    Value::Array(
        wf.tasks
            .iter()
            .zip(levels)
            .map(|(t, level)| {
                json!({
                    "name": t.name,
                    "type": t.kind,
                    "depends_on": t.depends_on,
                    "level": level,
                    "loop": t.iterate_over.is_some(),
                    "condition": t.when,
                })
            })
            .collect(),
    )
}

fn handlers_json(wf: &Workflow) -> Value {
    let mut j = json!({ "on_success": [], "on_failure": [], "on_exit": [] });
    for (when, t) in wf.handlers.all() {
        if let Some(list) = j[when].as_array_mut() {
            list.push(json!({ "name": t.name, "type": t.kind }));
        }
    }
    j
}

/// Each task's position in `wf.tasks`, by name.
fn task_index(wf: &Workflow) -> BTreeMap<&str, usize> {
    wf.tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect()
}

/// Each task's dependency level, in task order: 0 without dependencies, else one more than
/// its deepest dependency. Workflows are validated acyclic; a cycle would stop at the count.
fn levels(wf: &Workflow) -> Vec<usize> {
    let index = task_index(wf);
    let mut level = vec![0usize; wf.tasks.len()];
    for _ in 0..wf.tasks.len() {
        let mut changed = false;
        for (i, t) in wf.tasks.iter().enumerate() {
            let l = t
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .map(|&d| level[d] + 1)
                .max()
                .unwrap_or(0);
            if l != level[i] {
                level[i] = l;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskState;

    fn wf(tasks: &[(&str, &[&str])]) -> Workflow {
        let mut text = String::from("name: w\ntasks:\n");
        for (name, deps) in tasks {
            text.push_str(&format!(
                "  - {{name: {name}, type: shell, depends_on: [{}], config: {{command: x}}}}\n",
                deps.join(", ")
            ));
        }
        crate::yaml::parse_workflow(&text, "w.yaml").unwrap()
    }

    #[test]
    fn levels_follow_the_longest_dependency_chain() {
        let w = wf(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a", "b"]),
            ("d", &[]),
            ("e", &["d", "c"]),
        ]);
        assert_eq!(levels(&w), [0, 1, 2, 0, 3]);
    }

    /// A host name that only starts like a loopback address (`127.attacker.example`, which
    /// any DNS server can point anywhere) passed the guard.
    #[test]
    fn only_loopback_hosts_pass_the_rebinding_guard() {
        for ok in [
            None,
            Some("localhost"),
            Some("LOCALHOST:9090"),
            Some("127.0.0.1:9090"),
            Some("127.1.2.3"),
            Some("[::1]:9090"),
        ] {
            assert!(host_allowed(ok), "{ok:?}");
        }
        for bad in [
            "attacker.example",
            "127.attacker.example:9090",
            "localhost.attacker.example",
            "10.0.0.1:9090",
            "[::2]:9090",
            "",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad}");
        }
    }

    fn attempt(id: &str, task: &str, stdout: &str, stderr: Option<&str>) -> TaskExecution {
        let now = Utc::now();
        TaskExecution {
            id: id.into(),
            workflow_execution_id: "e-1".into(),
            task_name: task.into(),
            status: TaskState::Success,
            started_at: now,
            finished_at: Some(now),
            exit_code: Some(0),
            stdout: Some(stdout.into()),
            stderr: stderr.map(String::from),
            stdout_size: None,
            stderr_size: None,
            attempt: 1,
            error_message: None,
            duration_seconds: Some(1.0),
            created_at: now,
            outputs: None,
        }
    }

    /// An execution view repeated every capture whole (10 MB a stream), twice.
    #[test]
    fn long_captures_are_cut_to_their_tail_and_marked() {
        let long = format!("{}é-the-end\n", "x".repeat(3 * CAPTURE_TAIL));
        let mut attempts = vec![
            attempt("a-1", "up[a b]", &long, Some("short")),
            attempt("a-2", "quiet", "short", None),
        ];
        let cuts = cut_captures(&mut attempts);
        let out = attempts[0].stdout.as_deref().unwrap();
        assert!(out.len() <= CAPTURE_TAIL && out.ends_with("é-the-end\n"));
        assert_eq!(attempts[0].stderr.as_deref(), Some("short"));
        assert_eq!(attempts[1].stdout.as_deref(), Some("short"));
        assert_eq!(cuts.len(), 1);
        let mut j = json!({ "tasks": serde_json::to_value(&attempts).unwrap() });
        mark_cuts(&mut j, &cuts);
        let cut = &j["tasks"][0];
        assert_eq!(cut["stdout_truncated"], true);
        assert_eq!(cut["stdout_size"], long.len());
        assert_eq!(cut["log"], "/api/v1/executions/e-1/tasks/up%5Ba%20b%5D/log");
        assert!(cut.get("stderr_truncated").is_none());
        let whole = &j["tasks"][1];
        assert!(whole.get("stdout_truncated").is_none() && whole.get("log").is_none());
    }

    #[test]
    fn tails_never_split_a_character() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aéé", 3), "é");
    }

    /// The place to go after signing in ends up in a `Location` header.
    #[test]
    fn locations_after_sign_in_cannot_end_the_header() {
        assert_eq!(local_location("/executions/e-1"), "/executions/e-1");
        assert_eq!(local_location("/"), "/");
        assert_eq!(
            local_location("/workflows/a\r\nSet-Cookie: x"),
            "/workflows/a%0D%0ASet-Cookie%3A%20x"
        );
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
