//! `type: docker`: one container per attempt, through the Docker Engine API (EXEC-006).
//!
//! PicoFlow talks to the engine over its unix socket with isahc (the `http` executor's
//! client): `unix:///var/run/docker.sock`, or the socket named by `DOCKER_HOST=unix://…`.
//! No docker command is needed. Podman's Docker-compatible service works the same way.
//!
//! One attempt:
//! 1. Containers an earlier attempt of the same task in the same execution left behind (the
//!    process that ran it was killed, say) are removed, so a resumed task never runs beside its
//!    own survivor. Every container carries labels naming its workflow, execution, task,
//!    attempt and owner (`picoflow.*`); before a run after a crash, the containers of the
//!    workflow whose owner has died are removed too ([`remove_orphans`], with the processes
//!    `orphans` stops).
//! 2. The image is pulled when `pull` asks for it (`never` by default: a device runs what was
//!    put on it).
//! 3. The container is created and started: `command` without a shell, `env` (with `${VAR}`
//!    expansion, as everything else), `workdir`, `user`, `volumes`, `network` (`none` unless
//!    set). The attempt's output file is mounted at `/picoflow/output` and named by
//!    `$PICOFLOW_OUTPUT`, so a container publishes values as a shell task does.
//! 4. Its output is streamed into the task's output, stdout and stderr apart, with the shell
//!    executor's cap and log files, until the container ends; its exit code, read from its
//!    state, is the attempt's.
//! 5. The container is removed (unless `remove: false`).
//!
//! A timeout or a cancelled run stops the container (SIGTERM, then SIGKILL after the grace
//! period, by the engine's stop call) and removes it. A missing image, an engine that does not
//! answer and a socket PicoFlow may not open each fail the attempt with a message saying so;
//! only the unreachable engine is worth another try, like a network error.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt as _};
use isahc::config::Configurable as _;
use isahc::net::Dialer;
use isahc::{AsyncBody, HttpClient, Request};
use serde_json::{json, Value};
use tracing::instrument::WithSubscriber as _;

use super::shell::KILL_GRACE;
use super::{
    stop, BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::httpd::percent_encode;
use crate::model::{Task, TaskConfig};
use crate::proc;
use crate::settings::docker::{check_volume, DockerConfig, PullPolicy};

/// The engine's socket when `DOCKER_HOST` names none.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// API version asked for: Docker 20.10 and later, Podman 3 and later.
const API: &str = "http://localhost/v1.41";

/// Longest wait for one API call other than following output and pulling an image.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// Where a container finds its attempt's output file (`$PICOFLOW_OUTPUT`).
const OUTPUT_IN_CONTAINER: &str = "/picoflow/output";

/// How often a container that is ending is looked at until it has ended.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Labels every container of PicoFlow's carries.
const LABEL_WORKFLOW: &str = "picoflow.workflow";
const LABEL_EXECUTION: &str = "picoflow.execution";
const LABEL_TASK: &str = "picoflow.task";
const LABEL_ATTEMPT: &str = "picoflow.attempt";
const LABEL_OWNER: &str = "picoflow.owner";

/// Exit code recorded when the container never ran (no engine, no image).
const EXIT_NOT_RUN: i32 = 125;

#[derive(Debug, Default)]
pub(crate) struct DockerExecutor;

impl Executor for DockerExecutor {
    fn check(&self, task: &Task) -> Result<(), String> {
        match &task.config {
            TaskConfig::Docker(_) => Ok(()),
            _ => Err("config: expected a docker configuration".into()),
        }
    }

    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            match &ctx.task.config {
                TaskConfig::Docker(cfg) => run(cfg, &ctx).await,
                _ => TaskOutput::failed("docker executor given a non-docker task", false),
            }
        })
    }

    fn remove_leftovers<'a>(&'a self, workflow: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(remove_orphans(workflow))
    }
}

/// How the attempt's steps ended: by themselves, or stopped (a timeout, a cancellation)
/// before its container did.
enum Stop {
    Ended(Result<(), Failure>),
    Stopped(stop::Stop),
}

/// A failed step: what to tell the user, and whether another attempt may succeed.
#[derive(Debug)]
struct Failure {
    message: String,
    retryable: bool,
}

impl Failure {
    fn new(message: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            message: message.into(),
            retryable,
        }
    }
}

async fn run(cfg: &DockerConfig, ctx: &TaskContext<'_>) -> TaskOutput {
    let socket = match engine_socket() {
        Ok(s) => s,
        Err(f) => return not_run(f),
    };
    let key = format!("docker.client:{}", socket.display());
    let client = ctx.shared.get_or_insert(&key, || Engine::new(&socket));
    let engine = match client.as_ref() {
        Ok(e) => e,
        Err(f) => return not_run(Failure::new(f.clone(), true)),
    };

    let mut stdout = Capture::default();
    let mut stderr = Capture::default();
    let container: Mutex<Option<String>> = Mutex::new(None);
    let stop = {
        let work = attempt(engine, cfg, ctx, &container, &mut stdout, &mut stderr);
        match stop::race(ctx, std::pin::pin!(work)).await {
            Ok(ended) => Stop::Ended(ended),
            Err(stopped) => Stop::Stopped(stopped),
        }
    };

    let id = container.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = TaskOutput {
        outcome: Outcome::Failed,
        exit_code: None,
        stdout,
        stderr,
        error: None,
        retryable: true,
    };
    let status = match &id {
        Some(id) => end_container(engine, cfg, ctx, id, &stop).await,
        None => None,
    };
    let short = id.as_deref().map_or("", short_id);
    match (stop, status) {
        (Stop::Ended(Err(f)), _) => {
            out.error = Some(f.message);
            out.retryable = f.retryable;
            out.exit_code = Some(EXIT_NOT_RUN);
        }
        (Stop::Ended(Ok(())), Some(Ok(0))) => {
            out.outcome = Outcome::Success;
            out.exit_code = Some(0);
        }
        (Stop::Ended(Ok(())), Some(Ok(code))) => {
            out.exit_code = Some(code);
            out.error = Some(format!("container {short} exited with code {code}"));
        }
        (Stop::Ended(Ok(())), status) => {
            let why = match status {
                Some(Err(f)) => f.message,
                _ => "no container".into(),
            };
            out.error = Some(format!("cannot learn how container {short} ended: {why}"));
        }
        (Stop::Stopped(stopped), _) => {
            let how = format!(
                "container {short} stopped{}",
                if cfg.remove { " and removed" } else { "" }
            );
            return stopped.output(&how, out.stdout, out.stderr);
        }
    }
    out
}

/// Step 5 and the end of the container `id` after the attempt's steps ended as `stop` says:
/// stopped unless it ended by itself (a timeout, a cancellation, or a step that failed after
/// the container was created, its output cut off, say), then removed unless `remove: false`.
/// How it ended, asked after its output ended or once it was stopped; `None` when a step
/// failed.
async fn end_container(
    engine: &Engine,
    cfg: &DockerConfig,
    ctx: &TaskContext<'_>,
    id: &str,
    stop: &Stop,
) -> Option<Result<i32, Failure>> {
    if !matches!(stop, Stop::Ended(Ok(()))) {
        if let Err(f) = engine.stop(id).await {
            tracing::warn!(task = %ctx.task.name, error = %f.message, "cannot stop the container");
        }
    }
    let status = if matches!(stop, Stop::Ended(Err(_))) {
        None
    } else {
        Some(engine.exit_code(id).await)
    };
    if cfg.remove {
        if let Err(f) = engine.remove(id).await {
            tracing::warn!(task = %ctx.task.name, container = %id, error = %f.message, "cannot remove the container");
        }
    }
    status
}

/// Steps 1 to 4 of an attempt; the container's id goes into `container` as soon as it exists.
async fn attempt(
    engine: &Engine,
    cfg: &DockerConfig,
    ctx: &TaskContext<'_>,
    container: &Mutex<Option<String>>,
    stdout: &mut Capture,
    stderr: &mut Capture,
) -> Result<(), Failure> {
    let left = engine
        .remove_labelled(&[
            (LABEL_EXECUTION, ctx.execution_id),
            (LABEL_TASK, &ctx.task.name),
        ])
        .await?;
    if left > 0 {
        tracing::info!(task = %ctx.task.name, containers = left, "removed containers an interrupted attempt left");
    }
    let image = ctx.vars.expand(&cfg.image);
    let pull = match cfg.pull {
        PullPolicy::Never => false,
        PullPolicy::Always => true,
        PullPolicy::Missing => !engine.has_image(&image).await?,
    };
    if pull {
        engine.pull(&image).await?;
    }
    let spec = container_spec(cfg, ctx, &image)?;
    let id = engine.create(&spec, &image, cfg.pull).await?;
    *container.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
    engine.start(&id).await?;
    engine.follow_output(&id, ctx, stdout, stderr).await
}

/// The body of the create call.
fn container_spec(
    cfg: &DockerConfig,
    ctx: &TaskContext<'_>,
    image: &str,
) -> Result<Value, Failure> {
    let expand = |s: &String| ctx.vars.expand(s);
    let mut binds = Vec::with_capacity(cfg.volumes.len());
    for v in &cfg.volumes {
        let v = expand(v);
        if let Err(why) = check_volume(&v) {
            return Err(Failure::new(format!("config.volumes: '{v}' {why}"), false));
        }
        binds.push(v);
    }
    // The attempt's output file, mounted where `$PICOFLOW_OUTPUT` says, writable whatever
    // user the container runs as: the file is 0666, set on its descriptor, inside the
    // execution's private directory (0700, checked), so no other user of the host reaches
    // it. It is made new (`O_EXCL`, no link followed); one a crashed attempt left goes first.
    let output = ctx.output_file();
    let made = crate::private::check_dir(ctx.output_dir).and_then(|()| {
        match std::fs::remove_file(&output) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::private::create_new(&output, 0o666).map(drop)
    });
    if let Err(e) = made {
        return Err(Failure::new(
            format!("cannot create the output file {}: {e}", output.display()),
            true,
        ));
    }
    binds.push(format!("{}:{OUTPUT_IN_CONTAINER}", output.display()));
    let mut env: Vec<String> = cfg
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}", expand(v)))
        .collect();
    env.push(format!(
        "{}={OUTPUT_IN_CONTAINER}",
        crate::executor::OUTPUT_VAR
    ));
    let mut spec = json!({
        "Image": image,
        "Env": env,
        "Labels": {
            LABEL_WORKFLOW: ctx.workflow,
            LABEL_EXECUTION: ctx.execution_id,
            LABEL_TASK: ctx.task.name,
            LABEL_ATTEMPT: ctx.attempt.to_string(),
            LABEL_OWNER: proc::owner(),
        },
        "AttachStdin": false,
        "AttachStdout": true,
        "AttachStderr": true,
        "Tty": false,
        "HostConfig": {
            "NetworkMode": expand(&cfg.network),
            "Binds": binds,
        },
    });
    if let Some(cmd) = &cfg.command {
        spec["Cmd"] = json!(cmd.iter().map(expand).collect::<Vec<_>>());
    }
    if let Some(w) = &cfg.workdir {
        spec["WorkingDir"] = json!(expand(w));
    }
    if let Some(u) = &cfg.user {
        spec["User"] = json!(expand(u));
    }
    Ok(spec)
}

/// The engine's socket: `DOCKER_HOST=unix:///path`, or the default.
fn socket_path(docker_host: Option<&str>) -> Result<PathBuf, Failure> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
            _ => Err(Failure::new(
                format!(
                    "DOCKER_HOST={h} is not supported: PicoFlow reaches the engine through its unix socket (unix:///path)"
                ),
                false,
            )),
        },
    }
}

/// Removes the containers of `workflow` whose owner (the PicoFlow process that started
/// them) has died; how many. The executor's part of the search for leftovers before a run
/// ([`Executor::remove_leftovers`]):
/// nothing stops a container when the process that started it dies. Quiet when no engine is
/// reachable, as on most machines.
async fn remove_orphans(workflow: &str) -> usize {
    let Ok(socket) = engine_socket() else {
        return 0;
    };
    let Ok(engine) = Engine::new(&socket) else {
        return 0;
    };
    let found = async {
        let list = engine.labelled(&[(LABEL_WORKFLOW, workflow)]).await?;
        let mut removed = 0;
        for c in &list {
            let label = |k: &str| c["Labels"][k].as_str().unwrap_or_default().to_string();
            let Some(id) = c["Id"].as_str() else { continue };
            if proc::owner_alive(&label(LABEL_OWNER)) {
                continue;
            }
            tracing::warn!(
                workflow,
                execution = %label(LABEL_EXECUTION),
                task = %label(LABEL_TASK),
                container = %short_id(id),
                "removing a container left by an interrupted execution"
            );
            engine.remove(id).await?;
            removed += 1;
        }
        Ok::<usize, Failure>(removed)
    }
    .await;
    found.unwrap_or_else(|f| {
        tracing::warn!(workflow, error = %f.message, "cannot look for leftover containers");
        0
    })
}

/// A container's id as engines show it: its first 12 characters.
fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The engine's socket (see [`socket_path`]), once it takes a connection.
fn engine_socket() -> Result<PathBuf, Failure> {
    let socket = socket_path(std::env::var("DOCKER_HOST").ok().as_deref())?;
    reachable(&socket)?;
    Ok(socket)
}

/// Whether the socket takes a connection; the failure says what is wrong in the user's terms.
fn reachable(socket: &std::path::Path) -> Result<(), Failure> {
    use std::io::ErrorKind;
    let shown = socket.display();
    match UnixStream::connect(socket) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            ErrorKind::NotFound => Failure::new(
                format!("no container engine: {shown} does not exist (is Docker or Podman running? DOCKER_HOST names another socket)"),
                true,
            ),
            ErrorKind::ConnectionRefused => Failure::new(
                format!("the container engine does not answer at {shown} (connection refused)"),
                true,
            ),
            ErrorKind::PermissionDenied => Failure::new(
                format!("permission denied on {shown}: the user running PicoFlow needs access to the engine's socket (e.g. membership of the docker group)"),
                false,
            ),
            _ => Failure::new(format!("cannot connect to the container engine at {shown}: {e}"), true),
        }),
    }
}

/// An attempt that ended before a container existed.
fn not_run(f: Failure) -> TaskOutput {
    let mut out = TaskOutput::failed(f.message, f.retryable);
    out.exit_code = Some(EXIT_NOT_RUN);
    out
}

/// The engine's API on one socket, shared by the docker tasks of a run.
struct Engine {
    http: HttpClient,
    /// isahc traces request bodies' neighbours (headers, URLs); the create call carries the
    /// task's environment, so its tracing stays off.
    quiet: tracing::Dispatch,
}

/// An answer: status and body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    /// The engine's message in an error answer (`{"message": …}`), else the body's text.
    fn message(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string())
    }
}

impl Engine {
    fn new(socket: &std::path::Path) -> Result<Engine, String> {
        let http = HttpClient::builder()
            .dial(Dialer::unix_socket(socket))
            .build()
            .map_err(|e| format!("cannot start the client for the container engine: {e}"))?;
        Ok(Engine {
            http,
            quiet: tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new()),
        })
    }

    /// Sends a call and reads the whole answer, within [`CALL_LIMIT`] unless `unbounded`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        unbounded: bool,
    ) -> Result<Reply, Failure> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let request = Request::builder()
            .method(method)
            .uri(format!("{API}{path}"))
            .header("content-type", "application/json")
            .body(match body {
                Some(b) => AsyncBody::from(b.to_string()),
                None => AsyncBody::empty(),
            })
            .map_err(|e| Failure::new(format!("{what}: {e}"), false))?;
        let exchange = async {
            let response = self.http.send_async(request).await.map_err(|e| {
                Failure::new(
                    format!("the container engine did not answer {what}: {e}"),
                    true,
                )
            })?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            response
                .into_body()
                .read_to_end(&mut body)
                .await
                .map_err(|e| Failure::new(format!("{what}: the answer was cut off: {e}"), true))?;
            Ok(Reply { status, body })
        }
        .with_subscriber(self.quiet.clone());
        if unbounded {
            return exchange.await;
        }
        future::or(exchange, async {
            smol::Timer::after(CALL_LIMIT).await;
            Err(Failure::new(
                format!(
                    "the container engine did not answer {what} within {}s",
                    CALL_LIMIT.as_secs()
                ),
                true,
            ))
        })
        .await
    }

    /// Every container carrying all these labels, running or not, as the engine lists them.
    async fn labelled(&self, labels: &[(&str, &str)]) -> Result<Vec<Value>, Failure> {
        let filter = json!({
            "label": labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()
        });
        let path = format!(
            "/containers/json?all=1&filters={}",
            percent_encode(&filter.to_string())
        );
        let reply = self.call("GET", &path, None, false).await?;
        if reply.status != 200 {
            return Err(Failure::new(
                format!(
                    "cannot list containers: {} {}",
                    reply.status,
                    reply.message()
                ),
                true,
            ));
        }
        Ok(serde_json::from_slice(&reply.body).unwrap_or_default())
    }

    /// Removes every container carrying all these labels, running or not; how many.
    async fn remove_labelled(&self, labels: &[(&str, &str)]) -> Result<usize, Failure> {
        let mut removed = 0;
        for c in &self.labelled(labels).await? {
            if let Some(id) = c.get("Id").and_then(Value::as_str) {
                self.remove(id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn has_image(&self, image: &str) -> Result<bool, Failure> {
        let reply = self
            .call(
                "GET",
                &format!("/images/{}/json", percent_encode(image)),
                None,
                false,
            )
            .await?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(Failure::new(
                format!("cannot look up image '{image}': {s} {}", reply.message()),
                true,
            )),
        }
    }

    /// Pulls `image` (its tag, `latest` when it names none). The engine answers 200 at once
    /// and reports progress, and any failure, in the body.
    async fn pull(&self, image: &str) -> Result<(), Failure> {
        let (name, tag) = split_reference(image);
        let mut path = format!("/images/create?fromImage={}", percent_encode(name));
        if let Some(tag) = tag {
            path.push_str(&format!("&tag={}", percent_encode(tag)));
        }
        let reply = self.call("POST", &path, None, true).await?;
        let failed = |m: String| Failure::new(format!("cannot pull image '{image}': {m}"), true);
        if reply.status != 200 {
            return Err(failed(format!("{} {}", reply.status, reply.message())));
        }
        // One JSON object per progress report; an error ends the stream.
        let stream = serde_json::Deserializer::from_slice(&reply.body).into_iter::<Value>();
        for report in stream.flatten() {
            if let Some(e) = report.get("error").and_then(Value::as_str) {
                return Err(failed(e.to_string()));
            }
        }
        Ok(())
    }

    async fn create(&self, spec: &Value, image: &str, pull: PullPolicy) -> Result<String, Failure> {
        let reply = self
            .call("POST", "/containers/create", Some(spec), false)
            .await?;
        match reply.status {
            201 => serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("Id").and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| Failure::new("the engine created a container but sent no id", true)),
            404 if pull == PullPolicy::Never => Err(Failure::new(
                format!("image '{image}' is not on this host (pull: never); load or pull it first, or set pull: missing"),
                false,
            )),
            404 => Err(Failure::new(format!("image '{image}' is not on this host: {}", reply.message()), false)),
            s => Err(Failure::new(
                format!("cannot create the container: {s} {}", reply.message()),
                s >= 500,
            )),
        }
    }

    async fn start(&self, id: &str) -> Result<(), Failure> {
        let reply = self
            .call("POST", &format!("/containers/{id}/start"), None, false)
            .await?;
        match reply.status {
            204 | 304 => Ok(()),
            s => Err(Failure::new(
                format!("cannot start the container: {s} {}", reply.message()),
                false,
            )),
        }
    }

    /// Streams the container's output into the task's until the container ends.
    async fn follow_output(
        &self,
        id: &str,
        ctx: &TaskContext<'_>,
        stdout: &mut Capture,
        stderr: &mut Capture,
    ) -> Result<(), Failure> {
        let path = format!("/containers/{id}/logs?follow=1&stdout=1&stderr=1");
        let request = Request::get(format!("{API}{path}"))
            .body(AsyncBody::empty())
            .map_err(|e| Failure::new(e.to_string(), false))?;
        let lost =
            |e: String| Failure::new(format!("the container's output was cut off: {e}"), true);
        let mut reader = self
            .http
            .send_async(request)
            .with_subscriber(self.quiet.clone())
            .await
            .map_err(|e| lost(e.to_string()))?
            .into_body();
        let mut frames = Demux::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| lost(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            frames.push(&buf[..n], |stream, chunk| {
                ctx.output.output(stream, chunk);
                match stream {
                    Stream::Stdout => stdout.push(chunk, CAPTURE_LIMIT),
                    Stream::Stderr => stderr.push(chunk, CAPTURE_LIMIT),
                }
            });
        }
    }

    /// Stops a running container: SIGTERM, SIGKILL after [`KILL_GRACE`].
    async fn stop(&self, id: &str) -> Result<(), Failure> {
        let path = format!("/containers/{id}/stop?t={}", KILL_GRACE.as_secs());
        let reply = self.call("POST", &path, None, false).await?;
        match reply.status {
            204 | 304 | 404 => Ok(()),
            s => Err(Failure::new(format!("{s} {}", reply.message()), true)),
        }
    }

    /// The exit code of a container that has ended (or is ending: its output has ended, or
    /// it has been stopped), read from its state. The engine's wait call is not used: Podman
    /// 4 spins a processor core while it waits, and may wait long after the end.
    async fn exit_code(&self, id: &str) -> Result<i32, Failure> {
        let deadline = std::time::Instant::now() + CALL_LIMIT;
        loop {
            let reply = self
                .call("GET", &format!("/containers/{id}/json"), None, false)
                .await?;
            if reply.status != 200 {
                return Err(Failure::new(
                    format!("{} {}", reply.status, reply.message()),
                    true,
                ));
            }
            let state = serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("State").cloned())
                .unwrap_or(Value::Null);
            if state.get("Running").and_then(Value::as_bool) == Some(false) {
                return state
                    .get("ExitCode")
                    .and_then(Value::as_i64)
                    .map(|c| c as i32)
                    .ok_or_else(|| Failure::new("the engine's answer names no exit code", true));
            }
            if std::time::Instant::now() > deadline {
                return Err(Failure::new(
                    format!(
                        "still running {}s after its output ended",
                        CALL_LIMIT.as_secs()
                    ),
                    true,
                ));
            }
            smol::Timer::after(EXIT_POLL).await;
        }
    }

    /// Removes a container, stopping it first if it runs.
    async fn remove(&self, id: &str) -> Result<(), Failure> {
        let reply = self
            .call("DELETE", &format!("/containers/{id}?force=1"), None, false)
            .await?;
        match reply.status {
            204 | 404 => Ok(()),
            s => Err(Failure::new(
                format!("cannot remove container {id}: {s} {}", reply.message()),
                true,
            )),
        }
    }
}

/// `name` and `tag` of an image reference (`None` for a digest or no tag: the engine's
/// default applies, or the digest is part of the name).
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], Some(&image[last + i + 1..])),
        None => (image, Some("latest")),
    }
}

/// Splits the engine's multiplexed output (no TTY): frames of an 8-byte header — the stream
/// (1 stdout, 2 stderr), three zero bytes, the length as a big-endian u32 — then the data.
/// A frame may arrive in pieces, and a piece may hold several frames.
#[derive(Debug, Default)]
struct Demux {
    header: Vec<u8>,
    stream: Option<Stream>,
    left: usize,
}

impl Demux {
    fn push(&mut self, mut data: &[u8], mut out: impl FnMut(Stream, &[u8])) {
        while !data.is_empty() {
            if self.left == 0 {
                let need = 8 - self.header.len();
                let take = need.min(data.len());
                self.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.header.len() < 8 {
                    return;
                }
                self.stream = match self.header[0] {
                    1 => Some(Stream::Stdout),
                    2 => Some(Stream::Stderr),
                    _ => None,
                };
                let len = [
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ];
                self.left = u32::from_be_bytes(len) as usize;
                self.header.clear();
                continue;
            }
            let take = self.left.min(data.len());
            if let Some(s) = self.stream {
                out(s, &data[..take]);
            }
            self.left -= take;
            data = &data[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_by_stream_whatever_the_pieces() {
        let mut bytes = Vec::new();
        for (s, text) in [(1u8, "out one\n"), (2, "err\n"), (1, "out two\n")] {
            bytes.extend_from_slice(&[s, 0, 0, 0]);
            bytes.extend_from_slice(&(text.len() as u32).to_be_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
        for piece in [1, 3, 7, 8, 9, bytes.len()] {
            let mut d = Demux::default();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            for chunk in bytes.chunks(piece) {
                d.push(chunk, |s, c| match s {
                    Stream::Stdout => out.extend_from_slice(c),
                    Stream::Stderr => err.extend_from_slice(c),
                });
            }
            assert_eq!(out, b"out one\nout two\n", "pieces of {piece}");
            assert_eq!(err, b"err\n", "pieces of {piece}");
        }
    }

    #[test]
    fn docker_host_names_a_unix_socket_or_nothing() {
        assert_eq!(socket_path(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_path(Some("")).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_path(Some("unix:///run/user/1000/podman/podman.sock")).unwrap(),
            PathBuf::from("/run/user/1000/podman/podman.sock")
        );
        let e = socket_path(Some("tcp://10.0.0.2:2375")).unwrap_err();
        assert!(
            e.message.contains("tcp://10.0.0.2:2375") && e.message.contains("unix"),
            "{}",
            e.message
        );
        assert!(!e.retryable);
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("alpine"), ("alpine", Some("latest")));
        assert_eq!(split_reference("alpine:3.20"), ("alpine", Some("3.20")));
        assert_eq!(
            split_reference("registry.local:5000/team/backup"),
            ("registry.local:5000/team/backup", Some("latest"))
        );
        assert_eq!(
            split_reference("registry.local:5000/team/backup:v2"),
            ("registry.local:5000/team/backup", Some("v2"))
        );
        assert_eq!(
            split_reference("alpine@sha256:abcd"),
            ("alpine@sha256:abcd", None)
        );
    }

    #[test]
    fn an_unreachable_socket_is_named_with_its_cause() {
        let dir = std::env::temp_dir().join(format!("picoflow-docker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("none.sock");
        let e = reachable(&missing).unwrap_err();
        assert!(
            e.message.contains("does not exist") && e.retryable,
            "{}",
            e.message
        );
        // A socket file nobody listens on any more.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let e = reachable(&stale).unwrap_err();
        assert!(
            e.message.contains("connection refused") && e.retryable,
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
