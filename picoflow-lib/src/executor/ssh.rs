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
//!   remote command: the channel is closed and the attempt ends `timeout` with exit code 124.
//!   A connection that fails gives exit code 255 and is retried like any failure.
//! * **Output.** stdout and stderr are read concurrently, passed to the task log and captured
//!   with the shell executor's 10 MB cap.
//! * **One session per host.** Tasks of one run that go to the same host, port, user and key
//!   share one authenticated session (a channel each); a session that broke is replaced once.
//! * **Variables.** `${VAR}` in `host`, `user`, `key_path` and `known_hosts` is replaced by
//!   its value. In `command` it becomes the value as one single-quoted shell word, so a value
//!   reaches the remote shell as data and can never inject shell syntax.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_ssh2_lite::ssh2::{CheckResult, KnownHostFileKind};
use async_ssh2_lite::{AsyncIoTcpStream, AsyncSession};
use futures_lite::{future, AsyncReadExt};

use super::{
    BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::expand::expand_with;
use crate::model::{SshConfig, TaskConfig};

type Session = AsyncSession<AsyncIoTcpStream>;

/// Exit code of a connection or authentication failure (API reference).
const EXIT_CONNECTION: i32 = 255;
/// Exit code of a remote command stopped by the task timeout (API reference).
const EXIT_TIMEOUT: i32 = 124;

#[derive(Debug, Default)]
pub(crate) struct SshExecutor;

/// Sessions of one run, by (host, port, user, key). Each slot has its own async lock so that
/// two tasks starting together for one host wait for one connection instead of opening two.
#[derive(Default)]
struct Pool {
    slots: Mutex<HashMap<SessionKey, Slot>>,
}

/// (host, port, user, key file).
type SessionKey = (String, u16, String, PathBuf);
type Slot = Arc<smol::lock::Mutex<Option<Session>>>;

/// Why an attempt could not run its command.
struct Failure {
    message: String,
    exit_code: i32,
    retryable: bool,
    timeout: bool,
}

impl Failure {
    fn connect(message: String) -> Failure {
        Failure {
            message,
            exit_code: EXIT_CONNECTION,
            retryable: true,
            timeout: false,
        }
    }

    fn refused(message: String) -> Failure {
        Failure {
            message,
            exit_code: EXIT_CONNECTION,
            retryable: false,
            timeout: false,
        }
    }
}

impl Executor for SshExecutor {
    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let TaskConfig::Ssh(cfg) = &ctx.task.config else {
                return TaskOutput::failed("not an ssh task", false);
            };
            let work = run(&ctx, cfg);
            let cancelled = async {
                ctx.cancel.cancelled().await;
                None
            };
            match future::or(async { Some(work.await) }, cancelled).await {
                Some(out) => out,
                None => TaskOutput {
                    outcome: Outcome::Cancelled,
                    exit_code: None,
                    stdout: Capture::default(),
                    stderr: Capture::default(),
                    error: Some("cancelled".into()),
                    retryable: false,
                },
            }
        })
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

fn tilde(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

/// The value of `${VAR}` as one single-quoted shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn key_path(cfg: &SshConfig, ctx: &TaskContext<'_>) -> PathBuf {
    match &cfg.key_path {
        Some(p) => tilde(&ctx.vars.expand(&p.to_string_lossy())),
        None => {
            let rsa = home().join(".ssh/id_rsa");
            let ed = home().join(".ssh/id_ed25519");
            if !rsa.exists() && ed.exists() {
                ed
            } else {
                rsa
            }
        }
    }
}

/// Refuses a private key that others can read (SEC-001), as OpenSSH does.
fn check_key(path: &Path) -> Result<(), Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::refused(format!("cannot read SSH key {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::refused(format!(
            "SSH key {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Bounds one network step by the connection timeout.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    target: &str,
    step: impl std::future::Future<Output = Result<T, async_ssh2_lite::Error>>,
) -> Result<T, Failure> {
    let timer = async {
        smol::Timer::after(limit).await;
        None
    };
    match future::or(async { Some(step.await) }, timer).await {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Failure::connect(format!("{what} {target} failed: {e}"))),
        None => Err(Failure {
            message: format!("{what} {target} timed out after {}s", limit.as_secs()),
            exit_code: EXIT_CONNECTION,
            retryable: true,
            timeout: false,
        }),
    }
}

struct Target {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    limit: Duration,
}

impl Target {
    fn label(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Opens and authenticates a new session, every step bounded.
async fn connect(t: &Target) -> Result<Session, Failure> {
    super::init_openssl();
    let label = t.label();
    let addrs: Vec<SocketAddr> = {
        let host = t.host.clone();
        let port = t.port;
        let resolve = async move { smol::net::resolve((host.as_str(), port)).await };
        let timer = async {
            smol::Timer::after(t.limit).await;
            None
        };
        match future::or(async { Some(resolve.await) }, timer).await {
            Some(Ok(a)) if !a.is_empty() => a,
            Some(Ok(_)) => return Err(Failure::connect(format!("{label}: no address found"))),
            Some(Err(e)) => {
                return Err(Failure::connect(format!("cannot resolve {}: {e}", t.host)))
            }
            None => return Err(Failure::connect(format!("resolving {} timed out", t.host))),
        }
    };
    let mut session = bounded(t.limit, "connecting to", &label, async {
        Session::connect(addrs[0], None).await
    })
    .await?;
    bounded(t.limit, "SSH handshake with", &label, session.handshake()).await?;
    verify_host_key(&session, t)?;
    bounded(
        t.limit,
        "public-key authentication as",
        &label,
        session.userauth_pubkey_file(&t.user, None, &t.key, None),
    )
    .await
    .map_err(|f| Failure {
        message: format!(
            "{} (the server did not accept key {})",
            f.message,
            t.key.display()
        ),
        retryable: false,
        ..f
    })?;
    if !session.authenticated() {
        return Err(Failure::refused(format!(
            "{label}: the server did not accept key {}",
            t.key.display()
        )));
    }
    Ok(session)
}

fn verify_host_key(session: &Session, t: &Target) -> Result<(), Failure> {
    let Some((key, _kind)) = session.host_key() else {
        return Err(Failure::refused(format!(
            "{}: no host key offered",
            t.label()
        )));
    };
    let mut kh = session
        .known_hosts()
        .map_err(|e| Failure::refused(format!("cannot check host keys: {e}")))?;
    if t.known_hosts.exists() {
        kh.read_file(&t.known_hosts, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                Failure::refused(format!("cannot read {}: {e}", t.known_hosts.display()))
            })?;
    }
    let scan = format!(
        "ssh-keyscan -p {} {} >> {}",
        t.port,
        t.host,
        t.known_hosts.display()
    );
    match kh.check_port(&t.host, t.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound => Err(Failure::refused(format!(
            "host {}:{} is not in {}; after checking its fingerprint, add it with: {scan}",
            t.host,
            t.port,
            t.known_hosts.display()
        ))),
        CheckResult::Mismatch => Err(Failure::refused(format!(
            "HOST KEY MISMATCH for {}:{}: the key differs from the one in {}. Someone may be \
             intercepting the connection (man-in-the-middle), or the host was reinstalled. \
             Refusing to connect; if the change is expected, remove the old entry and add the \
             new one ({scan})",
            t.host,
            t.port,
            t.known_hosts.display()
        ))),
        CheckResult::Failure => Err(Failure::refused(format!(
            "cannot check the host key of {}:{}",
            t.host, t.port
        ))),
    }
}

async fn run(ctx: &TaskContext<'_>, cfg: &SshConfig) -> TaskOutput {
    let target = Target {
        host: ctx.vars.expand(&cfg.host),
        port: cfg.port,
        user: ctx.vars.expand(&cfg.user),
        key: key_path(cfg, ctx),
        known_hosts: cfg.known_hosts.as_ref().map_or_else(
            || home().join(".ssh/known_hosts"),
            |p| tilde(&ctx.vars.expand(&p.to_string_lossy())),
        ),
        limit: Duration::from_secs(cfg.timeout.max(1)),
    };
    let command = expand_with(&cfg.command, |name| {
        Some(shell_quote(&ctx.vars.get(name).unwrap_or_default()))
    });
    match attempt(ctx, &target, &command).await {
        Ok(out) => out,
        Err(f) => {
            tracing::warn!(task = %ctx.task.name, target = %target.label(), error = %f.message, "ssh task could not run");
            TaskOutput {
                outcome: if f.timeout {
                    Outcome::Timeout
                } else {
                    Outcome::Failed
                },
                exit_code: Some(f.exit_code),
                stdout: Capture::default(),
                stderr: Capture::default(),
                error: Some(f.message),
                retryable: f.retryable,
            }
        }
    }
}

async fn attempt(ctx: &TaskContext<'_>, t: &Target, command: &str) -> Result<TaskOutput, Failure> {
    check_key(&t.key)?;
    let pool = ctx.shared.get_or_insert("ssh-sessions", Pool::default);
    let slot = pool
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((t.host.clone(), t.port, t.user.clone(), t.key.clone()))
        .or_default()
        .clone();
    let label = t.label();
    let mut fresh = false;
    let session = {
        let mut guard = slot.lock().await;
        match guard.as_ref() {
            Some(s) => s.clone(),
            None => {
                let s = connect(t).await?;
                fresh = true;
                *guard = Some(s.clone());
                s
            }
        }
    };
    let mut channel = match bounded(
        t.limit,
        "opening a channel to",
        &label,
        session.channel_session(),
    )
    .await
    {
        Ok(c) => c,
        Err(_) if !fresh => {
            // The shared session broke (the peer restarted, a NAT forgot it): reconnect once.
            let mut guard = slot.lock().await;
            let s = connect(t).await?;
            *guard = Some(s.clone());
            drop(guard);
            bounded(t.limit, "opening a channel to", &label, s.channel_session()).await?
        }
        Err(f) => return Err(f),
    };
    bounded(
        t.limit,
        "starting the command on",
        &label,
        channel.exec(command),
    )
    .await?;

    let mut stdout = Capture::default();
    let mut stderr = Capture::default();
    let mut err_stream = channel.stderr();
    let read_all = async {
        let out = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match channel.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        ctx.output.output(Stream::Stdout, &buf[..n]);
                        stdout.push(&buf[..n], CAPTURE_LIMIT);
                    }
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
                        stderr.push(&buf[..n], CAPTURE_LIMIT);
                    }
                }
            }
        };
        future::zip(out, err).await;
    };
    let finished = match ctx.timeout {
        Some(limit) => {
            let timer = async {
                smol::Timer::after(limit).await;
                false
            };
            future::or(
                async {
                    read_all.await;
                    true
                },
                timer,
            )
            .await
        }
        None => {
            read_all.await;
            true
        }
    };
    if !finished {
        // Closing the channel ends the remote command's session (sshd hangs it up).
        let _ = bounded(
            Duration::from_secs(2),
            "closing the channel to",
            &label,
            channel.close(),
        )
        .await;
        return Ok(TaskOutput {
            outcome: Outcome::Timeout,
            exit_code: Some(EXIT_TIMEOUT),
            stdout,
            stderr,
            error: Some(format!(
                "timed out after {}s on {label}",
                ctx.timeout.unwrap_or_default().as_secs()
            )),
            retryable: true,
        });
    }
    let _ = bounded(
        t.limit,
        "closing the channel to",
        &label,
        channel.wait_close(),
    )
    .await;
    let code = channel.exit_status().unwrap_or(EXIT_CONNECTION);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_single_quoted_words() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("x'; rm -rf /; '"), r"'x'\''; rm -rf /; '\'''");
        let cmd = expand_with("echo ${V} $$HOME", |n| {
            (n == "V").then(|| shell_quote("$(reboot)"))
        });
        assert_eq!(cmd, "echo '$(reboot)' $HOME");
    }

    #[test]
    fn keys_readable_by_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("pf-key-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_key(&key).err().unwrap();
        assert!(
            e.message.contains("chmod 600") && e.message.contains("id"),
            "{}",
            e.message
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key(&key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
