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
//!   SIGKILL a second later (see [`STOP_SCRIPT`]): closing the channel alone leaves a
//!   command that has no terminal running on the remote host. Not reached: a process whose
//!   parent left the session and exited before the stop (a double fork), and a remote
//!   command whose PicoFlow died.
//! * **One session per host.** Tasks of one run that go to the same host, port, user and key
//!   share one authenticated session (a channel each); a session that broke is replaced once.
//! * **Variables.** `${VAR}` in `host`, `user`, `key_path` and `known_hosts` is replaced by
//!   its value. No value is ever pasted into the text of `command`: each `${…}` reference
//!   becomes a shell variable of the remote shell, as a `/bin/sh -c` command line gets them
//!   locally. The script sent is `PICOFLOW_REF_1='…'; …; export PICOFLOW_REF_1 …;` followed
//!   by the command with `${name}` rewritten to `${PICOFLOW_REF_n}` (see [`remote_script`]).
//!   A value is written only inside single quotes (a `'` as `'\''`), where the shell reads
//!   every byte as data. In the command the reference expands like a variable: inside `"…"`
//!   and in an unquoted here-document to the value; as a bare word to the value as one word
//!   (it is written `"${PICOFLOW_REF_n}"`, so no splitting and no globbing); inside `'…'` (or
//!   after a `\`) it stays the literal text `${PICOFLOW_REF_n}`, as it would locally. `$$`
//!   gives a `$` for the remote shell (`$$HOME`). The remote login shell must understand
//!   POSIX `sh` syntax (sh, dash, bash, ksh, zsh, busybox ash; not csh or fish). A value
//!   holding a NUL byte cannot be passed and fails the task. sshd runs the script as
//!   `$SHELL -c SCRIPT`, so the values are on that process's command line on the remote host.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_ssh2_lite::ssh2::{CheckResult, KnownHostFileKind};
use async_ssh2_lite::{AsyncIoTcpStream, AsyncSession};
use futures_lite::{future, AsyncReadExt};

use super::{
    stop, BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::expand::is_var_name;
use crate::model::TaskConfig;
use crate::settings::ssh::SshConfig;

type Session = AsyncSession<AsyncIoTcpStream>;

/// Exit code of a connection or authentication failure (API reference).
const EXIT_CONNECTION: i32 = 255;

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
            let started = Started::default();
            let captured = Captured::default();
            let mut work = std::pin::pin!(run(&ctx, cfg, &started, &captured));
            match stop::race(&ctx, work.as_mut()).await {
                Ok(out) => out,
                Err(stopped) => {
                    let running = started.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let how = match running {
                        Some((session, group)) => {
                            stop_remote(&session, group).await;
                            "remote command stopped"
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

/// A remote command that has started: its session and its session id (the process id of
/// its shell), so that it can be stopped when its task times out or is cancelled.
type Started = std::sync::Mutex<Option<(Session, u32)>>;

/// The first thing the remote script does: print a line `PICOFLOW_GROUP_<nonce>=<pid>`
/// with its process id, which is its session's and its process group's (sshd makes the
/// command's shell a session leader). `nonce` is new for each attempt, so the command
/// cannot forge the line; the reader takes that line alone off the task's output (lines an
/// rc file of the remote account printed before it pass through, see [`GroupMarker`]).
fn print_group(nonce: &str) -> String {
    format!("printf 'PICOFLOW_GROUP_{nonce}=%s\\n' \"$$\"; ")
}

/// Finds the line [`print_group`] printed in the remote command's stdout: every other byte
/// is passed on as output, as it arrives. Only the start of a line that may still become
/// the marker is held back (a few dozen bytes).
struct GroupMarker {
    prefix: Vec<u8>,
    line: Vec<u8>,
    mid_line: bool,
    found: bool,
}

impl GroupMarker {
    fn new(nonce: &str) -> GroupMarker {
        GroupMarker {
            prefix: format!("PICOFLOW_GROUP_{nonce}=").into_bytes(),
            line: Vec::new(),
            mid_line: false,
            found: false,
        }
    }

    /// Reads `data`, appending the task's output in it to `out`; the process id once the
    /// marker line is complete.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<u32> {
        for (i, &b) in data.iter().enumerate() {
            if self.found {
                out.extend_from_slice(&data[i..]);
                return None;
            }
            if self.mid_line {
                out.push(b);
                self.mid_line = b != b'\n';
                continue;
            }
            self.line.push(b);
            if b == b'\n' {
                if let Some(pid) = self.marker_pid() {
                    self.found = true;
                    self.line.clear();
                    out.extend_from_slice(&data[i + 1..]);
                    return Some(pid);
                }
                out.append(&mut self.line);
            } else if !self.may_be_marker() {
                out.append(&mut self.line);
                self.mid_line = true;
            }
        }
        None
    }

    /// The process id in `line` (ending in a newline) if it is the marker.
    fn marker_pid(&self) -> Option<u32> {
        let digits = self
            .line
            .strip_prefix(self.prefix.as_slice())?
            .strip_suffix(b"\n")?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits)
            .ok()?
            .parse::<u32>()
            .ok()
            .filter(|&p| p > 1)
    }

    fn may_be_marker(&self) -> bool {
        match self.line.strip_prefix(self.prefix.as_slice()) {
            Some(digits) => digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit),
            None => self.prefix.starts_with(&self.line),
        }
    }

    /// What is held back, at the end of the output.
    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.line);
    }
}

/// Stops a remote command through a new channel of the same session: SIGTERM, and SIGKILL
/// a second later, to every process of its session (`sid`, the process id of its shell,
/// which sshd made a session leader) and to the descendants of those that made sessions
/// of their own (`setsid`), found by a walk of `/proc` in `/bin/sh` (Linux). Without
/// `/proc` the signals go to the process group `sid`. Closing a channel does not stop a
/// command that runs without a terminal: sshd only closes its pipes.
async fn stop_remote(session: &Session, sid: u32) {
    let script = format!(
        "exec /bin/sh -c '{}'",
        STOP_SCRIPT.replace("SID", &sid.to_string())
    );
    let stop = async {
        let mut channel = session.channel_session().await?;
        channel.exec(&script).await?;
        // Whatever the account's rc file prints: the channel closes only once it is read, and
        // the stop must run to its end (closing the channel early could cut it short).
        let mut printed = Vec::new();
        channel.read_to_end(&mut printed).await?;
        channel.wait_close().await
    };
    if let Err(e) = future::or(async { stop.await.map_err(|e| e.to_string()) }, async {
        smol::Timer::after(Duration::from_secs(5)).await;
        Err("no answer within 5 s".to_string())
    })
    .await
    {
        tracing::warn!(sid, error = %e, "cannot stop a remote command");
    }
}

/// The stop, in POSIX sh (no `'`: it is sent in single quotes to `/bin/sh -c`). `l` lists
/// in `M` the processes of session `S` and, by parent id, their descendants, each as
/// `pid:starttime`, and in `A` every process; the SIGKILL goes to those of the first list
/// that still have the same start time (not a new process that got a freed id) and to
/// those the second list finds. A `stat` line is `pid (comm) state ppid pgrp session …`,
/// and comm may hold spaces and `)`: the fields are read after its last `) `.
const STOP_SCRIPT: &str = r#"S=SID
if [ ! -r /proc/self/stat ]; then
  kill -TERM -$S 2>/dev/null || exit 0; sleep 1; kill -KILL -$S 2>/dev/null; exit 0
fi
l() {
  A=" "; M=" "; T=""
  for d in /proc/[0-9]*; do
    { read -r s < "$d/stat"; } 2>/dev/null || continue
    p=${s%% *}; set -- ${s##*) }
    A="$A$p:${20} "; T="$T$p $2 ${20}
"
    [ "$4" = "$S" ] && M="$M$p:${20} "
  done
  c=1
  while [ $c = 1 ]; do
    c=0
    while read -r p q t; do
      case $M in *" $p:"*) continue;; esac
      case $M in *" $q:"*) M="$M$p:$t "; c=1;; esac
    done <<EOF
$T
EOF
  done
}
l; K=$M
[ "$K" = " " ] && exit 0
for e in $K; do kill -TERM "${e%%:*}"; done 2>/dev/null
sleep 1
l
for e in $K; do case $A in *" $e "*) kill -KILL "${e%%:*}";; esac; done 2>/dev/null
for e in $M; do kill -KILL "${e%%:*}"; done 2>/dev/null
exit 0"#;

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

fn tilde(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

/// The script the remote shell runs for `command`: every `${…}` reference becomes a shell
/// variable (`PICOFLOW_REF_1`, … in order of first use), assigned and exported before the
/// command, whose references are rewritten to them. `value` gives a reference's value
/// (`None`: empty). Without references the script is the command (with `$$` as `$`).
///
/// Values are written only inside single quotes, where a POSIX shell takes every byte
/// literally (a `'` is closed, escaped and reopened: `'\''`), so no value, whatever bytes
/// it holds, can end its quotes: the guarantee rests on that alone. Where the command
/// reads a reference, it is written for its quoting (see [`rewrite`]): a mistaken guess
/// there changes how a value is split, never whether it is run.
fn remote_script(command: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut names: Vec<String> = Vec::new();
    let body = rewrite(command, |name| {
        let n = match names.iter().position(|x| x == name) {
            Some(i) => i + 1,
            None => {
                names.push(name.to_string());
                names.len()
            }
        };
        format!("PICOFLOW_REF_{n}")
    });
    if names.is_empty() {
        return Ok(body);
    }
    let mut script = String::with_capacity(body.len() + 64 * names.len());
    for (i, name) in names.iter().enumerate() {
        let v = value(name).unwrap_or_default();
        if v.contains('\0') {
            return Err(format!(
                "${{{name}}}: the value holds a NUL byte, which cannot be passed to a remote shell"
            ));
        }
        let _ = write!(
            script,
            "PICOFLOW_REF_{}='{}'; ",
            i + 1,
            v.replace('\'', r"'\''")
        );
    }
    script.push_str("export");
    for i in 1..=names.len() {
        let _ = write!(script, " PICOFLOW_REF_{i}");
    }
    script.push_str("; ");
    script.push_str(&body);
    Ok(script)
}

/// One piece of a command as written: a character (`$$` gives a `$`) or a `${…}` reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Char(char),
    Ref(&'a str),
}

/// The pieces of `text`, read the way `${VAR}` expansion reads it.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '$' {
            let after = &rest[1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push(Piece::Char('$'));
                rest = tail;
                continue;
            }
            if let Some(body) = after.strip_prefix('{') {
                if let Some(end) = body.find('}').filter(|&e| is_var_name(&body[..e])) {
                    out.push(Piece::Ref(&body[..end]));
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        out.push(Piece::Char(c));
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A here-document whose body is still to come or being read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HereDoc {
    delimiter: String,
    /// `<<-`: leading tabs are removed from its lines.
    strip_tabs: bool,
    /// Unquoted delimiter: `$…` and `` `…` `` are expanded in the body.
    expands: bool,
}

/// Where the shell is in the command's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Quoting {
    /// Unquoted: the command itself, `$(…)` (with its open parentheses), `` `…` ``, and
    /// `${…}` outside double quotes.
    Top,
    Paren(u32),
    /// A `case … esac` in an unquoted context: the `)` of a pattern closes nothing.
    Case,
    /// Arithmetic, with its open parentheses: `$((…))` (where a reference is written
    /// `${V}`: the expression is not split, and dash and busybox refuse quotes there) and
    /// bash's `((…))` command (`quote_refs`: written `"${V}"`, which bash accepts and which
    /// is right where a POSIX shell reads two subshells). No here-document, no comment.
    Arith {
        depth: u32,
        quote_refs: bool,
    },
    Backtick,
    Brace,
    /// `"…"`, and `${…}` inside it.
    Double,
    DoubleBrace,
    Single,
    /// `$'…'` (bash, ksh, zsh): single quotes with backslash escapes.
    Ansi,
    Comment,
    HereDoc(HereDoc),
}

impl Quoting {
    fn unquoted(&self) -> bool {
        matches!(
            self,
            Quoting::Top
                | Quoting::Paren(_)
                | Quoting::Case
                | Quoting::Backtick
                | Quoting::Brace
                | Quoting::Arith {
                    quote_refs: true,
                    ..
                }
        )
    }
}

/// `command` with `$$` as `$` and each reference `${name}` rewritten to the variable
/// `var(name)` names: `"${V}"` where the text is unquoted (one word, as the value was
/// before: no field splitting, no globbing), `${V}` inside double quotes and unquoted
/// here-documents (where it expands to the value) and in `$((…))`, and inside single quotes
/// or after a backslash (where it stays literal text, as in a local `sh -c`). `<<` in
/// `$((…))` and bash's `((…))` is a shift, not a here-document; the `)` of a `case`
/// pattern closes no `$(`. Where the reading is in doubt (bash's `((…))`), the quoted form.
fn rewrite(command: &str, mut var: impl FnMut(&str) -> String) -> String {
    let p = pieces(command);
    let mut out = String::with_capacity(command.len() + 16);
    let mut stack = vec![Quoting::Top];
    let mut pending: Vec<HereDoc> = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    // Writes piece `i` as it is (a reference unquoted) and moves past it.
    let raw = |out: &mut String, i: &mut usize, var: &mut dyn FnMut(&str) -> String| {
        match p.get(*i) {
            Some(Piece::Char(c)) => out.push(*c),
            Some(Piece::Ref(name)) => {
                let _ = write!(out, "${{{}}}", var(name));
            }
            None => return,
        }
        *i += 1;
    };
    while i < p.len() {
        let ctx = stack.last().cloned().unwrap_or(Quoting::Top);
        if let (Quoting::HereDoc(h), true) = (&ctx, line_start) {
            if let Some(n) = delimiter_line(&p[i..], h) {
                for _ in 0..n {
                    raw(&mut out, &mut i, &mut var);
                }
                stack.pop();
                line_start = true;
                continue;
            }
        }
        let c = match p[i] {
            Piece::Ref(name) => {
                let v = var(name);
                if ctx.unquoted() {
                    let _ = write!(out, "\"${{{v}}}\"");
                } else {
                    let _ = write!(out, "${{{v}}}");
                }
                i += 1;
                line_start = false;
                continue;
            }
            Piece::Char(c) => c,
        };
        let before = out.chars().last();
        out.push(c);
        i += 1;
        let next = p.get(i).copied();
        let mut opens = |out: &mut String, i: &mut usize, stack: &mut Vec<Quoting>, brace| {
            match next {
                Some(Piece::Char('('))
                    if p.get(*i + 1) == Some(&Piece::Char('(')) && closes_twice(&p[*i + 2..]) =>
                {
                    stack.push(Quoting::Arith {
                        depth: 2,
                        quote_refs: false,
                    });
                    raw(out, i, &mut var);
                }
                Some(Piece::Char('(')) => stack.push(Quoting::Paren(1)),
                Some(Piece::Char('{')) => stack.push(brace),
                _ => return,
            }
            raw(out, i, &mut var);
        };
        match &ctx {
            Quoting::Top
            | Quoting::Paren(_)
            | Quoting::Case
            | Quoting::Backtick
            | Quoting::Brace => match c {
                '\\' => raw(&mut out, &mut i, &mut var),
                '\'' => stack.push(Quoting::Single),
                '"' => stack.push(Quoting::Double),
                '`' if ctx == Quoting::Backtick => {
                    stack.pop();
                }
                '`' => stack.push(Quoting::Backtick),
                '$' if next == Some(Piece::Char('\'')) => {
                    stack.push(Quoting::Ansi);
                    raw(&mut out, &mut i, &mut var);
                }
                '$' => opens(&mut out, &mut i, &mut stack, Quoting::Brace),
                '(' if next == Some(Piece::Char('('))
                    && closes_twice(&p[i + 1..])
                    && command_position(&out[..out.len() - 1]) =>
                {
                    stack.push(Quoting::Arith {
                        depth: 2,
                        quote_refs: true,
                    });
                    raw(&mut out, &mut i, &mut var);
                }
                '(' => {
                    if let Some(Quoting::Paren(d)) = stack.last_mut() {
                        *d += 1;
                    }
                }
                'c' if ctx != Quoting::Brace
                    && word_at(&p[i..], "ase")
                    && command_position(&out[..out.len() - 1]) =>
                {
                    stack.push(Quoting::Case);
                }
                'e' if ctx == Quoting::Case
                    && word_at(&p[i..], "sac")
                    && before.is_none_or(|b| b.is_whitespace() || ";&|(".contains(b)) =>
                {
                    stack.pop();
                }
                ')' => {
                    if let Some(Quoting::Paren(d)) = stack.last_mut() {
                        *d -= 1;
                        if *d == 0 {
                            stack.pop();
                        }
                    }
                }
                '}' if ctx == Quoting::Brace => {
                    stack.pop();
                }
                '#' if ctx != Quoting::Brace
                    && before.is_none_or(|b| b.is_whitespace() || ";&|()<>".contains(b)) =>
                {
                    stack.push(Quoting::Comment);
                }
                '<' if ctx != Quoting::Brace && next == Some(Piece::Char('<')) => {
                    raw(&mut out, &mut i, &mut var);
                    if let Some(h) = here_doc_operator(&p, &mut i, &mut out) {
                        pending.push(h);
                    }
                }
                '\n' => stack.extend(pending.drain(..).rev().map(Quoting::HereDoc)),
                _ => {}
            },
            Quoting::Double | Quoting::DoubleBrace => match c {
                '\\' => raw(&mut out, &mut i, &mut var),
                '"' if ctx == Quoting::Double => {
                    stack.pop();
                }
                '"' => stack.push(Quoting::Double),
                '`' => stack.push(Quoting::Backtick),
                '$' => opens(&mut out, &mut i, &mut stack, Quoting::DoubleBrace),
                '}' if ctx == Quoting::DoubleBrace => {
                    stack.pop();
                }
                _ => {}
            },
            Quoting::Arith { .. } => match c {
                '\\' => raw(&mut out, &mut i, &mut var),
                '\'' => stack.push(Quoting::Single),
                '"' => stack.push(Quoting::Double),
                '`' => stack.push(Quoting::Backtick),
                '$' => opens(&mut out, &mut i, &mut stack, Quoting::DoubleBrace),
                '(' | ')' => {
                    if let Some(Quoting::Arith { depth, .. }) = stack.last_mut() {
                        if c == '(' {
                            *depth += 1;
                        } else {
                            *depth -= 1;
                            if *depth == 0 {
                                stack.pop();
                            }
                        }
                    }
                }
                _ => {}
            },
            Quoting::Single => {
                if c == '\'' {
                    stack.pop();
                }
            }
            Quoting::Ansi => match c {
                '\\' => raw(&mut out, &mut i, &mut var),
                '\'' => {
                    stack.pop();
                }
                _ => {}
            },
            Quoting::Comment => {
                if c == '\n' {
                    stack.pop();
                    stack.extend(pending.drain(..).rev().map(Quoting::HereDoc));
                }
            }
            Quoting::HereDoc(h) => {
                if h.expands {
                    match c {
                        '\\' => raw(&mut out, &mut i, &mut var),
                        '`' => stack.push(Quoting::Backtick),
                        '$' => opens(&mut out, &mut i, &mut stack, Quoting::DoubleBrace),
                        _ => {}
                    }
                }
            }
        }
        line_start = c == '\n';
    }
    out
}

/// Whether the text after `((` closes it with `))`, as arithmetic does (`$((a) ; b)` is a
/// command substitution of a subshell, where references must be quoted).
fn closes_twice(p: &[Piece<'_>]) -> bool {
    let mut depth = 2u32;
    let mut pieces = p.iter().peekable();
    while let Some(piece) = pieces.next() {
        match piece {
            Piece::Char('(') => depth += 1,
            Piece::Char(')') if depth == 2 => {
                return pieces.peek() == Some(&&Piece::Char(')'));
            }
            Piece::Char(')') => depth -= 1,
            _ => {}
        }
    }
    false
}

/// Whether the text written so far ends where a command starts: at the start, after a
/// newline, `;`, `&`, `|`, `(`, `{` or `!`, or after a keyword such as `then` or `do`.
fn command_position(before: &str) -> bool {
    let t = before.trim_end_matches([' ', '\t']);
    match t.chars().last() {
        None => true,
        Some(c) if "\n;&|({!".contains(c) => true,
        Some(_) => {
            let word = t.trim_end_matches(|c: char| c.is_ascii_alphanumeric());
            let keyword = &t[word.len()..];
            ["then", "do", "else", "elif", "if", "while", "until", "time"].contains(&keyword)
                && word
                    .chars()
                    .last()
                    .is_none_or(|b| b.is_whitespace() || ";&|(".contains(b))
        }
    }
}

/// Whether `p` (just after a first letter) goes on with `rest` and ends a word there.
fn word_at(p: &[Piece<'_>], rest: &str) -> bool {
    let n = rest.chars().count();
    rest.chars()
        .zip(p)
        .all(|(c, piece)| *piece == Piece::Char(c))
        && p.len() >= n
        && match p.get(n) {
            None => true,
            Some(Piece::Char(c)) => c.is_whitespace() || ";&|)".contains(*c),
            Some(Piece::Ref(_)) => false,
        }
}

/// After `<<`: reads `-`, blanks and the delimiter word (copying them to `out`); the
/// here-document it starts, or `None` for `<<<` or a missing word.
fn here_doc_operator(p: &[Piece<'_>], i: &mut usize, out: &mut String) -> Option<HereDoc> {
    let take = |i: &mut usize, out: &mut String| -> Option<char> {
        match p.get(*i) {
            Some(Piece::Char(c)) => {
                out.push(*c);
                *i += 1;
                Some(*c)
            }
            _ => None,
        }
    };
    let peek = |i: usize| match p.get(i) {
        Some(Piece::Char(c)) => Some(*c),
        _ => None,
    };
    if peek(*i) == Some('<') {
        take(i, out);
        return None;
    }
    let strip_tabs = peek(*i) == Some('-');
    if strip_tabs {
        take(i, out);
    }
    while matches!(peek(*i), Some(' ' | '\t')) {
        take(i, out);
    }
    let mut delimiter = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    while let Some(c) = peek(*i) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => delimiter.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                quoted = true;
            }
            None if c == '\\' => {
                quoted = true;
                take(i, out);
                match peek(*i) {
                    Some(e) => delimiter.push(e),
                    None => break,
                }
            }
            None if c.is_whitespace() || ";&|<>()".contains(c) => break,
            None => delimiter.push(c),
        }
        take(i, out);
    }
    (!delimiter.is_empty()).then_some(HereDoc {
        delimiter,
        strip_tabs,
        expands: !quoted,
    })
}

/// When the line starting `p` ends here-document `h`: how many pieces it has (its newline
/// included).
fn delimiter_line(p: &[Piece<'_>], h: &HereDoc) -> Option<usize> {
    let mut line = String::new();
    let mut n = 0;
    for piece in p {
        n += 1;
        match piece {
            Piece::Char('\n') => break,
            Piece::Char(c) => line.push(*c),
            Piece::Ref(_) => return None,
        }
    }
    let text = if h.strip_tabs {
        line.trim_start_matches('\t')
    } else {
        line.as_str()
    };
    (text == h.delimiter).then_some(n)
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

async fn run(
    ctx: &TaskContext<'_>,
    cfg: &SshConfig,
    started: &Started,
    captured: &Captured,
) -> TaskOutput {
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

async fn attempt(
    ctx: &TaskContext<'_>,
    t: &Target,
    command: &str,
    nonce: &str,
    started: &Started,
    captured: &Captured,
) -> Result<TaskOutput, Failure> {
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

    let mut err_stream = channel.stderr();
    let read_all = async {
        let out = async {
            let mut buf = vec![0u8; 16 * 1024];
            // The marker line with the remote session (print_group), not the task's.
            let mut marker = GroupMarker::new(nonce);
            let mut data = Vec::with_capacity(buf.len());
            loop {
                data.clear();
                match channel.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        marker.finish(&mut data);
                        if !data.is_empty() {
                            ctx.output.output(Stream::Stdout, &data);
                            captured.push(Stream::Stdout, &data);
                        }
                        break;
                    }
                    Ok(n) => {
                        if let Some(sid) = marker.feed(&buf[..n], &mut data) {
                            *started.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some((session.clone(), sid));
                        }
                        if !data.is_empty() {
                            ctx.output.output(Stream::Stdout, &data);
                            captured.push(Stream::Stdout, &data);
                        }
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
                        captured.push(Stream::Stderr, &buf[..n]);
                    }
                }
            }
        };
        future::zip(out, err).await;
    };
    read_all.await;
    // The command has ended: nothing is left to stop.
    started.lock().unwrap_or_else(|e| e.into_inner()).take();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn script(command: &str, values: &[(&str, &str)]) -> String {
        remote_script(command, |n| {
            values
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn values_are_assigned_in_single_quotes_and_never_pasted_into_the_command() {
        assert_eq!(
            script("echo \"a ${V}\" '${V}' ${V} $$HOME ${W}", &[("V", "x'; rm -rf /; '")]),
            r"PICOFLOW_REF_1='x'\''; rm -rf /; '\'''; PICOFLOW_REF_2=''; export PICOFLOW_REF_1 PICOFLOW_REF_2; echo ${q}a ${PICOFLOW_REF_1}${q} '${PICOFLOW_REF_1}' ${q}${PICOFLOW_REF_1}${q} $HOME ${q}${PICOFLOW_REF_2}${q}"
                .replace("${q}", "\"")
        );
        // Without references the command is sent as written, `$$` as `$`.
        assert_eq!(
            script("echo $$HOME ${not-a-name}", &[]),
            "echo $HOME ${not-a-name}"
        );
        assert!(remote_script("echo ${V}", |_| Some("a\0b".into()))
            .unwrap_err()
            .contains("NUL"));
    }

    #[test]
    fn references_are_rewritten_for_their_quoting() {
        let r = |c: &str| rewrite(c, |n| n.to_uppercase());
        // Command substitution, backquotes, parameter expansion, nested double quotes.
        assert_eq!(r("echo $(cat ${f})"), "echo $(cat \"${F}\")");
        assert_eq!(
            r("echo \"$(cat \"${f}\") ${g}\""),
            "echo \"$(cat \"${F}\") ${G}\""
        );
        assert_eq!(
            r("echo `cat ${f}` $((1 + 2)) ${g}"),
            "echo `cat \"${F}\"` $((1 + 2)) \"${G}\""
        );
        assert_eq!(
            r("echo $${X:-${v}} \"$${X:-${v}}\""),
            "echo ${X:-\"${V}\"} \"${X:-${V}}\""
        );
        // Escaped, in $'…' and after a comment's quote: literal or unaffected.
        assert_eq!(
            r("echo \\${v} $'it\\'s ${v}' ${w}"),
            "echo \\${V} $'it\\'s ${V}' \"${W}\""
        );
        assert_eq!(r("# don't\necho ${v}"), "# don't\necho \"${V}\"");
        assert_eq!(r("echo a#b ${v}"), "echo a#b \"${V}\"");
        // Here-documents: expanding, quoted, with tabs stripped, two on one line.
        assert_eq!(
            r("cat <<EOF > f\n'${v}' \"x\"\nEOF\necho ${w}"),
            "cat <<EOF > f\n'${V}' \"x\"\nEOF\necho \"${W}\""
        );
        assert_eq!(
            r("cat <<-'E' # it's\n\t${v}\n\tE\necho ${w}"),
            "cat <<-'E' # it's\n\t${V}\n\tE\necho \"${W}\""
        );
        assert_eq!(
            r("cat <<A <<\"B\"\n${v}\nA\n${w}\nB\n${x}"),
            "cat <<A <<\"B\"\n${V}\nA\n${W}\nB\n\"${X}\""
        );
        assert_eq!(r("cat <<< ${v}"), "cat <<< \"${V}\"");
    }

    /// `<<` in arithmetic is a shift, not a here-document; a case pattern's `)` does not
    /// close a command substitution.
    #[test]
    fn arithmetic_and_case_patterns_do_not_confuse_the_quoting() {
        let r = |c: &str| rewrite(c, |n| n.to_uppercase());
        assert_eq!(
            r("x=$(( 1 << 2 ))\necho glob:${v}"),
            "x=$(( 1 << 2 ))\necho glob:\"${V}\""
        );
        assert_eq!(
            r("echo \"$(( (1 + 2) << 2 )) ${v}\" $(( ${v} + 1 )) ${w}"),
            "echo \"$(( (1 + 2) << 2 )) ${V}\" $(( ${V} + 1 )) \"${W}\""
        );
        // Not arithmetic: a subshell in a command substitution.
        assert_eq!(
            r("echo $((echo a) ; echo ${v}) ${w}"),
            "echo $((echo a) ; echo \"${V}\") \"${W}\""
        );
        assert_eq!(
            r("cat <<E\n$(( 1 << 2 )) ${v}\nE\necho ${w}"),
            "cat <<E\n$(( 1 << 2 )) ${V}\nE\necho \"${W}\""
        );
        // bash's arithmetic command (two subshells for a POSIX shell): quoted either way.
        assert_eq!(
            r("(( x << 2 )) && (( ${v} > 0 ))\necho ${w}"),
            "(( x << 2 )) && (( \"${V}\" > 0 ))\necho \"${W}\""
        );
        assert_eq!(
            r("if true; then ((x<<=1)); fi\necho ${w}"),
            "if true; then ((x<<=1)); fi\necho \"${W}\""
        );
        // `let` with a quoted expression (unquoted, `let x=1<<2` is a here-document in
        // bash too).
        assert_eq!(
            r("let \"x = 1 << 2\"\necho ${w}"),
            "let \"x = 1 << 2\"\necho \"${W}\""
        );
        // case … esac in a command substitution, both pattern forms; `case` as a word.
        assert_eq!(
            r("echo \"$(case x in a) echo ${v};; (b) echo;; esac) ${w}\" ${x}"),
            "echo \"$(case x in a) echo \"${V}\";; (b) echo;; esac) ${W}\" \"${X}\""
        );
        assert_eq!(
            r("echo \"$(echo case x in a) ${w}\" ${x}"),
            "echo \"$(echo case x in a) ${W}\" \"${X}\""
        );
        assert_eq!(
            r("y=$(if true; then case 1 in 1) echo ${v};; esac; fi) ${w}"),
            "y=$(if true; then case 1 in 1) echo \"${V}\";; esac; fi) \"${W}\""
        );
    }

    /// The same, run: a value with blanks and a glob stays one word, under every local
    /// POSIX shell (and bash's `((…))` under bash).
    #[test]
    fn arithmetic_and_case_scripts_keep_values_whole_under_every_local_shell() {
        let value = "-la /etc/host*  two";
        let command =
            "x=$(( 1 << 2 ))\nprintf '%s|' ${V} \"$(case x in x) printf %s ${V};; esac)\" \"$x\"";
        let bash_only = "(( y = 1 << 2 ))\nprintf '%s|' ${V} \"$y\"";
        for (sh, command, expected) in [
            ("/bin/sh", command, format!("{value}|{value}|4|")),
            ("/bin/dash", command, format!("{value}|{value}|4|")),
            ("/bin/bash", command, format!("{value}|{value}|4|")),
            ("/bin/busybox", command, format!("{value}|{value}|4|")),
            ("/bin/bash", bash_only, format!("{value}|4|")),
        ] {
            if !Path::new(sh).exists() {
                eprintln!("{sh} is not installed here: not tried");
                continue;
            }
            let script = remote_script(command, |_| Some(value.to_string())).unwrap();
            let mut cmd = std::process::Command::new(sh);
            if sh.ends_with("busybox") {
                cmd.arg("sh");
            }
            let out = cmd.arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{sh}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                expected,
                "{sh}: {script}"
            );
        }
    }

    /// The script runs under the POSIX shells a remote host may have as login shell, with
    /// a hostile value arriving as data in every quoting and running nothing.
    #[test]
    fn the_script_is_safe_under_every_local_posix_shell() {
        let dir = std::env::temp_dir().join(format!("pf-script-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let value = format!(
            "a'b\"c $(touch {d}/P1) `touch {d}/P2` x; touch {d}/P3 #\n'; touch {d}/P4; '\"\\ * $HOME"
        );
        let command =
            "printf '%s|' \"${V}\" ${V} '${V}' \"$(printf %s ${V})\"\ncat <<EOF\n${V}\nEOF";
        let script = remote_script(command, |_| Some(value.clone())).unwrap();
        let expected = format!("{value}|{value}|${{PICOFLOW_REF_1}}|{value}|{value}\n");
        let mut shells = vec!["/bin/sh"];
        for sh in ["/bin/dash", "/bin/bash", "/bin/busybox"] {
            if Path::new(sh).exists() {
                shells.push(sh);
            } else {
                eprintln!("{sh} is not installed here: not tried");
            }
        }
        for sh in shells {
            let mut cmd = std::process::Command::new(sh);
            if sh.ends_with("busybox") {
                cmd.arg("sh");
            }
            let out = cmd.arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{sh}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{sh}");
            let made: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
            assert!(made.is_empty(), "{sh} ran injected code: {made:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Lines an rc file prints before the marker pass through as output, whatever the
    /// reads' boundaries; only the marker line with this attempt's nonce is taken off.
    #[test]
    fn the_marker_line_is_found_after_other_output_and_taken_off_alone() {
        let text = "hello from .bashrc\nPICOFLOW_GROUP_other=77\nPICOFLOW_GROUP_n0nce=1\nPICOFLOW_GROUP_n0nce=4242\nPICOFLOW_GROUP_n0nce=5\ntask output";
        let expected = "hello from .bashrc\nPICOFLOW_GROUP_other=77\nPICOFLOW_GROUP_n0nce=1\nPICOFLOW_GROUP_n0nce=5\ntask output";
        for size in [1, 2, 5, 17, text.len()] {
            let mut marker = GroupMarker::new("n0nce");
            let mut out = Vec::new();
            let mut found = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                found.extend(marker.feed(chunk, &mut out));
            }
            marker.finish(&mut out);
            assert_eq!(found, [4242], "reads of {size}");
            assert_eq!(String::from_utf8(out).unwrap(), expected, "reads of {size}");
        }
        // No marker: everything is output, a partial marker included.
        let mut marker = GroupMarker::new("n0nce");
        let mut out = Vec::new();
        assert_eq!(marker.feed(b"a\nPICOFLOW_GROUP_n0nce=12", &mut out), None);
        marker.finish(&mut out);
        assert_eq!(out, b"a\nPICOFLOW_GROUP_n0nce=12");
        assert_eq!(
            print_group("n0nce"),
            "printf 'PICOFLOW_GROUP_n0nce=%s\\n' \"$$\"; "
        );
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
