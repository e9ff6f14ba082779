//! `type: ssh`: a command run by the remote shell over SSH (EXEC-002, SEC-001), on
//! async-ssh2-lite (libssh2) driven by smol's reactor — no thread of its own.
//!
//! * **Keys only.** Public-key authentication with `key_path` (default `~/.ssh/id_rsa`, then
//!   `~/.ssh/id_ed25519`); a key readable by group or others is refused before connecting.
//! * **Host keys** are checked against `known_hosts` (default `~/.ssh/known_hosts`; hashed
//!   entries and `[host]:port` entries included). An unknown host is refused with the
//!   `ssh-keyscan` line that adds it; a different key is refused as a possible attack.
//! * **Time limits.** The crate has none of its own and a silent peer would hang a handshake
//!   forever, so every network step (resolve, connect, handshake, authentication, channel
//!   open) is bounded by the connection `timeout` (30 s). The task's `timeout` bounds the
//!   whole attempt, connecting included: at it (or when the run is cancelled) the remote
//!   command is stopped, the channel closed, and the attempt ends as every executor's does
//!   (`timeout`, exit code 124; see `stop`).
//!   A connection that fails gives exit code 255 and is retried like any failure.
//! * **Output.** stdout and stderr are read concurrently, passed to the task log and captured
//!   with the shell executor's 10 MB cap.
//! * **Stopping.** The script first prints `PICOFLOW_GROUP_<nonce>=<pid>`, its process id
//!   (sshd makes the command's shell a session leader), with a nonce new for each attempt;
//!   the reader finds that line (an rc file may print lines before it, which stay output)
//!   and takes it off. At the task's timeout or when the run is cancelled, a second channel
//!   sends SIGTERM to the session's processes and the descendants that left it (`setsid`),
//!   SIGKILL a second later (see `group`): closing the channel alone leaves a
//!   command that has no terminal running on the remote host. Not reached: a process whose
//!   parent left the session and exited before the stop (a double fork), and a remote
//!   command whose PicoFlow died.
//! * **One session per host.** Tasks of one run that go to the same host, port, user and key
//!   share one authenticated session (a channel each); a session that broke is replaced once.
//! * **Variables.** `${VAR}` in `host`, `user`, `key_path` and `known_hosts` is replaced by
//!   its value. No value is ever pasted into the text of `command`: each `${…}` reference
//!   becomes a shell variable of the remote shell, as a `/bin/sh -c` command line gets them
//!   locally. The script sent is `PICOFLOW_REF_1='…'; …; export PICOFLOW_REF_1 …;` followed
//!   by the command with `${name}` rewritten to `${PICOFLOW_REF_n}` (see `script`).
//!   A value is written only inside single quotes (a `'` as `'\''`), where the shell reads
//!   every byte as data. In the command the reference expands like a variable: inside `"…"`
//!   and in an unquoted here-document to the value; as a bare word to the value as one word
//!   (it is written `"${PICOFLOW_REF_n}"`, so no splitting and no globbing); inside `'…'` (or
//!   after a `\`) it stays the literal text `${PICOFLOW_REF_n}`, as it would locally. `$$`
//!   gives a `$` for the remote shell (`$$HOME`). The remote login shell must understand
//!   POSIX `sh` syntax (sh, dash, bash, ksh, zsh, busybox ash; not csh or fish). A value
//!   holding a NUL byte cannot be passed and fails the task. sshd runs the script as
//!   `$SHELL -c SCRIPT`, so the values are on that process's command line on the remote host.
//!
//! The folder: `session.rs` connects (the pool, time limits, keys, host keys), `script.rs`
//! writes the remote command's text, `group.rs` finds and stops the remote processes, and
//! `settings.rs` is what `config:` holds (declared by the crate's `settings`, in every build).

mod group;
mod script;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_ssh2_lite::{AsyncChannel, AsyncIoTcpStream, AsyncSession};
use futures_lite::{future, AsyncReadExt};

use super::{
    stop, BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::model::TaskConfig;
use crate::settings::ssh::SshConfig;
use group::{print_group, stop_remote, GroupMarker};
use script::remote_script;
use session::{bounded, open_channel, Failure, Target};

type Session = AsyncSession<AsyncIoTcpStream>;
type Channel = AsyncChannel<AsyncIoTcpStream>;

/// Exit code of a connection or authentication failure (API reference).
const EXIT_CONNECTION: i32 = 255;

#[derive(Debug, Default)]
pub(crate) struct SshExecutor;

impl Executor for SshExecutor {
    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let TaskConfig::Ssh(cfg) = &ctx.task.config else {
                return TaskOutput::failed("not an ssh task", false);
            };
            let started = Started::default();
            let captured = Captured::default();
            let mut work = std::pin::pin!(run(&ctx, cfg, &started, &captured));
            match stop::race(&ctx, work.as_mut()).await {
                Ok(out) => out,
                Err(stopped) => {
                    let mut running = take(&started.running);
                    if running.is_none() && started.sent.load(Ordering::SeqCst) {
                        // The command was sent and may run before its marker line has come
                        // back (a stop right at its start): read on for it, a moment at
                        // most, so that it is stopped rather than left running.
                        let marker = async {
                            loop {
                                if let Some(r) = take(&started.running) {
                                    return Some(r);
                                }
                                smol::Timer::after(Duration::from_millis(20)).await;
                            }
                        };
                        let ended = async {
                            work.as_mut().await;
                            None
                        };
                        let gave_up = async {
                            smol::Timer::after(MARKER_WAIT).await;
                            None
                        };
                        running = future::or(future::or(marker, ended), gave_up).await;
                    }
                    let how = match running {
                        Some((session, group)) => {
                            stop_remote(&session, group).await;
                            "remote command stopped"
                        }
                        None if started.sent.load(Ordering::SeqCst) => {
                            "channel closed before the remote command made itself known"
                        }
                        None => "connection abandoned before the command started",
                    };
                    // The work's channel is closed as it is dropped, after the stop.
                    let (stdout, stderr) = captured.take();
                    stopped.output(how, stdout, stderr)
                }
            }
        })
    }
}

/// What the remote command printed so far, kept outside the work so that a stopped attempt
/// still has it.
#[derive(Default)]
struct Captured(std::sync::Mutex<(Capture, Capture)>);

impl Captured {
    fn push(&self, stream: Stream, data: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match stream {
            Stream::Stdout => c.0.push(data, CAPTURE_LIMIT),
            Stream::Stderr => c.1.push(data, CAPTURE_LIMIT),
        }
    }

    fn take(&self) -> (Capture, Capture) {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A remote command that has started: whether it was sent, and once its marker line was
/// read its session and its session id (the process id of its shell), so that it can be
/// stopped when its task times out or is cancelled.
#[derive(Default)]
struct Started {
    sent: AtomicBool,
    running: std::sync::Mutex<Option<(Session, u32)>>,
}

/// How long a stop that comes between sending the command and reading its marker line reads
/// on for that line.
const MARKER_WAIT: Duration = Duration::from_secs(5);

fn take(running: &std::sync::Mutex<Option<(Session, u32)>>) -> Option<(Session, u32)> {
    running.lock().unwrap_or_else(|e| e.into_inner()).take()
}

async fn run(
    ctx: &TaskContext<'_>,
    cfg: &SshConfig,
    started: &Started,
    captured: &Captured,
) -> TaskOutput {
    let target = Target::new(cfg, ctx);
    let nonce = crate::events::new_id().replace('-', "");
    let command = match remote_script(&cfg.command, |name| ctx.vars.get(name)) {
        Ok(c) => format!("{}{c}", print_group(&nonce)),
        Err(message) => return TaskOutput::failed(message, false),
    };
    match attempt(ctx, &target, &command, &nonce, started, captured).await {
        Ok(out) => out,
        Err(f) => {
            tracing::warn!(task = %ctx.task.name, target = %target.label(), error = %f.message, "ssh task could not run");
            TaskOutput {
                outcome: Outcome::Failed,
                exit_code: Some(f.exit_code),
                stdout: Capture::default(),
                stderr: Capture::default(),
                error: Some(f.message),
                retryable: f.retryable,
            }
        }
    }
}

/// Runs `command` on `t` and reads its output to the end; its exit status is the attempt's.
async fn attempt(
    ctx: &TaskContext<'_>,
    t: &Target,
    command: &str,
    nonce: &str,
    started: &Started,
    captured: &Captured,
) -> Result<TaskOutput, Failure> {
    let (session, mut channel) = open_channel(ctx, t).await?;
    let label = t.label();
    started.sent.store(true, Ordering::SeqCst);
    bounded(
        t.limit,
        "starting the command on",
        &label,
        channel.exec(command),
    )
    .await?;
    read_output(
        ctx,
        &mut channel,
        nonce,
        |sid| {
            *started.running.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((session.clone(), sid));
        },
        captured,
    )
    .await;
    // The command has ended: nothing is left to stop.
    take(&started.running);
    let _ = bounded(
        t.limit,
        "closing the channel to",
        &label,
        channel.wait_close(),
    )
    .await;
    let code = channel.exit_status().unwrap_or(EXIT_CONNECTION);
    let (stdout, stderr) = captured.take();
    Ok(TaskOutput {
        outcome: if code == 0 {
            Outcome::Success
        } else {
            Outcome::Failed
        },
        exit_code: Some(code),
        stdout,
        stderr,
        error: (code != 0).then(|| format!("remote command exited with code {code}")),
        retryable: true,
    })
}

/// Reads the remote command's stdout and stderr concurrently until both end, passing them
/// to the task log and the capture; `started` gets the remote session id once the marker
/// line (see [`print_group`]) has been read, which is taken off the output.
async fn read_output(
    ctx: &TaskContext<'_>,
    channel: &mut Channel,
    nonce: &str,
    mut started: impl FnMut(u32),
    captured: &Captured,
) {
    let mut err_stream = channel.stderr();
    let out = async {
        let mut buf = vec![0u8; 16 * 1024];
        // The marker line with the remote session (print_group), not the task's.
        let mut marker = GroupMarker::new(nonce);
        let mut data = Vec::with_capacity(buf.len());
        loop {
            data.clear();
            let end = match channel.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    marker.finish(&mut data);
                    true
                }
                Ok(n) => {
                    if let Some(sid) = marker.feed(&buf[..n], &mut data) {
                        started(sid);
                    }
                    false
                }
            };
            if !data.is_empty() {
                ctx.output.output(Stream::Stdout, &data);
                captured.push(Stream::Stdout, &data);
            }
            if end {
                break;
            }
        }
    };
    let err = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match err_stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ctx.output.output(Stream::Stderr, &buf[..n]);
                    captured.push(Stream::Stderr, &buf[..n]);
                }
            }
        }
    };
    future::zip(out, err).await;
}
