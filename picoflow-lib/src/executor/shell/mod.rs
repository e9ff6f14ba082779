//! `type: shell`: local commands (EXEC-001, EXEC-004, EXEC-005, DAG-008).
//!
//! * `command` + `args` (or a command without whitespace) is executed directly; a command
//!   line without `args` runs as `/bin/sh -c "<command>"` (`DECISIONS.md` 3). `${VAR}` is
//!   expanded in directly executed commands, arguments, `env` values and `workdir`; a
//!   `/bin/sh -c` command line is passed verbatim and the shell expands variables from the
//!   task's environment, so no value can inject shell syntax.
//! * Every task runs in its own process group. On timeout or cancellation the whole group
//!   gets SIGTERM, then SIGKILL after [`KILL_GRACE`]. When the main process exits, whatever
//!   it left running in its group is killed too: a task's processes never outlive it.
//!   Where PicoFlow has a cgroup v2 subtree of its own (systemd's `Delegate=yes`), each
//!   attempt also runs in a cgroup of its own, which is stopped the same way: a process that
//!   left the group (`setsid`, a double fork) is stopped with it (see `cgroup`). Elsewhere
//!   PicoFlow and the task's first process are child subreapers, and the processes that left
//!   the group are found by parentage instead (see `subreaper`).
//! * The task's process is killed when the PicoFlow process dies (`PR_SET_PDEATHSIG`, REL-002).
//!   The kernel sends that signal when the *thread* that started the process ends, so tasks
//!   are started from the thread that runs the engine, which lives as long as the run. The
//!   task's environment names it (`PICOFLOW_WORKFLOW`, `PICOFLOW_EXECUTION_ID`,
//!   `PICOFLOW_TASK`, `PICOFLOW_ATTEMPT`, `PICOFLOW_OWNER`), so what it started in turn can be
//!   found and stopped after a crash (see `orphans`).
//! * stdout and stderr are read concurrently while the task runs and capped at
//!   [`CAPTURE_LIMIT`] each; nothing is buffered beyond that.
//! * The task's `limits:` (see `limits`) are set by its process on itself before it executes
//!   the program, the memory limit as its cgroup's `memory.max` where it has one that takes
//!   it. An attempt that fails at a limit says which.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use futures_lite::{future, AsyncRead, AsyncReadExt};

use super::cgroup::Cgroup;
use super::spawn::{Child, Command, Limit, Resource};
use super::{stop, subreaper};
use super::{
    BoxFuture, Capture, Executor, Outcome, Stream, TaskContext, TaskOutput, CAPTURE_LIMIT,
};
use crate::limits::{self, Limits, MemoryVia};
use crate::model::TaskConfig;
use crate::proc;
use crate::settings::shell::ShellConfig;

/// Time between SIGTERM and SIGKILL when a task's process group is stopped.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct ShellExecutor;

impl Executor for ShellExecutor {
    fn check(&self, task: &crate::model::Task) -> Result<(), String> {
        match &task.config {
            TaskConfig::Shell(_) => Ok(()),
            _ => Err("config: expected a shell configuration".into()),
        }
    }

    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            match &ctx.task.config {
                TaskConfig::Shell(cfg) => run(cfg, &ctx).await,
                _ => TaskOutput::failed("shell executor given a non-shell task", false),
            }
        })
    }
}

/// What of the task cannot be handed to a process because a value put in it holds a NUL
/// byte (a C string ends there): named by the `${…}` it came from where there is one.
fn nul_problem(cfg: &ShellConfig, ctx: &TaskContext<'_>) -> Option<String> {
    let holds_nul = |template: &str| ctx.vars.expand(template).contains('\0');
    let named = |template: &str, place: String| {
        let refs = crate::expand::Vars::referenced(template);
        let from = refs
            .iter()
            .find(|r| holds_nul(&format!("${{{r}}}")))
            .map_or(String::new(), |r| format!(" (the value of ${{{r}}})"));
        format!("{place}{from} holds a NUL byte, which a process's arguments and environment cannot carry")
    };
    if !cfg.uses_shell() {
        if holds_nul(cfg.command.trim()) {
            return Some(named(cfg.command.trim(), "command".into()));
        }
        for (i, a) in cfg.args.iter().flatten().enumerate() {
            if holds_nul(a) {
                return Some(named(a, format!("args[{i}]")));
            }
        }
    }
    cfg.env.iter().find(|(_, v)| holds_nul(v)).map(|(k, v)| {
        // A `/bin/sh -c` line reads its references as `PICOFLOW_REF_n` variables.
        let place = match k.starts_with("PICOFLOW_REF_") {
            true => "a reference in the command line".to_string(),
            false => format!("env {k}"),
        };
        named(v, place)
    })
}

async fn run(cfg: &ShellConfig, ctx: &TaskContext<'_>) -> TaskOutput {
    if let Some(problem) = nul_problem(cfg, ctx) {
        return TaskOutput::failed(problem, false);
    }
    let (mut cmd, workdir) = command(cfg, ctx);
    // Dropped at the end of the attempt, which kills what is left in it.
    let cgroup = Cgroup::create(ctx.workflow);
    let reaping = match &cgroup {
        Some(cg) => {
            cmd.cgroup(cg.procs_fd());
            false
        }
        None => subreaper::enable(),
    };
    if reaping {
        cmd.subreaper();
    }
    let limits = ctx.limits;
    let via = apply_limits(&mut cmd, &limits, cgroup.as_ref(), ctx);

    // In its own process group, killed if this thread dies, stdin from /dev/null.
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(cfg, workdir.as_deref(), &e),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let readers = async {
        future::zip(
            read_capped(stdout, Stream::Stdout, ctx),
            read_capped(stderr, Stream::Stderr, ctx),
        )
        .await
    };
    let group = Group {
        cgroup: cgroup.as_ref(),
        reaping,
    };
    let waiter = wait_or_stop(ctx, &mut child, group);
    let ((stdout, stderr), end) = future::zip(readers, waiter).await;
    match end {
        Ok(Ok(status)) => {
            let mut out = finished(status, stdout, stderr);
            if let Some(failure) = &out.error {
                let oom_kills = cgroup.as_ref().map_or(0, Cgroup::oom_kills);
                let cpu = child.cpu_time();
                let by_limit =
                    limits::ended_by_limit(&limits, via, failure, status.signal(), cpu, oom_kills);
                if by_limit.is_some() {
                    out.error = by_limit;
                }
            }
            out
        }
        Ok(Err(e)) => {
            let mut out = TaskOutput::failed(format!("cannot wait for the process: {e}"), true);
            (out.stdout, out.stderr) = (stdout, stderr);
            out
        }
        Err(stop) => stop.output("process group terminated", stdout, stderr),
    }
}

/// Sets the task's limits on `cmd` (the memory limit on `cgroup` when it takes it); how the
/// memory limit is enforced.
fn apply_limits(
    cmd: &mut Command,
    limits: &Limits,
    cgroup: Option<&Cgroup>,
    ctx: &TaskContext<'_>,
) -> MemoryVia {
    if let Some(n) = limits.nice {
        cmd.limit(
            Limit::Nice(n),
            format!("cannot set limits.nice to {n} (a priority above PicoFlow's own needs root or CAP_SYS_NICE)"),
        );
    }
    if let Some(io) = limits.io {
        cmd.limit(
            Limit::IoPrio(io.ioprio()),
            format!("cannot set limits.io to {io} (the realtime class needs root)"),
        );
    }
    let mut via = MemoryVia::Rlimit;
    if let Some(m) = limits.memory {
        let (how, note) = limits::memory_via(cgroup.map(|cg| cg.set_memory_max(m)));
        if let Some(note) = note {
            tracing::info!(workflow = ctx.workflow, task = %ctx.task.name, "{note}");
        }
        if how == MemoryVia::Rlimit {
            cmd.limit(
                Limit::Rlimit(Resource::AddressSpace, m, m),
                format!("cannot set limits.memory to {}", limits::format_size(m)),
            );
        }
        via = how;
    }
    if let Some(c) = limits.cpu_seconds {
        let hard = c.saturating_add(limits::CPU_GRACE_SECS);
        cmd.limit(
            Limit::Rlimit(Resource::Cpu, c, hard),
            format!("cannot set limits.cpu_seconds to {c}"),
        );
    }
    if let Some(o) = limits.open_files {
        cmd.limit(
            Limit::Rlimit(Resource::OpenFiles, o, o),
            format!("cannot set limits.open_files to {o}"),
        );
    }
    if !limits.is_empty() {
        let memory = match (limits.memory, via) {
            (None, _) => "",
            (Some(_), MemoryVia::Cgroup) => "; memory as the cgroup's memory.max",
            (Some(_), MemoryVia::Rlimit) => "; memory as RLIMIT_AS",
        };
        tracing::debug!(workflow = ctx.workflow, task = %ctx.task.name, "limits: {limits}{memory}");
    }
    via
}

/// The process to start for `cfg`, with `${VAR}` expanded where it is, and its working
/// directory (expanded) if it has one.
fn command(cfg: &ShellConfig, ctx: &TaskContext<'_>) -> (Command, Option<String>) {
    let mut cmd = if cfg.uses_shell() {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(&cfg.command);
        c
    } else {
        let mut c = Command::new(ctx.vars.expand(cfg.command.trim()));
        for a in cfg.args.iter().flatten() {
            c.arg(ctx.vars.expand(a));
        }
        c
    };
    for (k, v) in &cfg.env {
        cmd.env(k, ctx.vars.expand(v));
    }
    let workdir = cfg
        .workdir
        .as_ref()
        .map(|dir| ctx.vars.expand(&dir.to_string_lossy()));
    if let Some(dir) = &workdir {
        cmd.current_dir(dir);
    }
    // After the task's own `env`, so that no task can hide from the search for leftovers.
    cmd.env(proc::WORKFLOW_VAR, ctx.workflow)
        .env(proc::EXECUTION_VAR, ctx.execution_id)
        .env(proc::TASK_VAR, &ctx.task.name)
        .env(proc::ATTEMPT_VAR, ctx.attempt.to_string())
        .env(proc::OWNER_VAR, proc::owner())
        .env(crate::executor::OUTPUT_VAR, ctx.output_file());
    (cmd, workdir)
}

/// The attempt when its process could not be started (`e`): exit code 127 for a program
/// not found, else 126, as a shell gives.
fn not_started(cfg: &ShellConfig, workdir: Option<&str>, e: &std::io::Error) -> TaskOutput {
    let what = if cfg.uses_shell() {
        "/bin/sh"
    } else {
        cfg.command.trim()
    };
    // The child cannot say whether its chdir or its exec failed: a working directory
    // that cannot be entered is the likelier cause when there is one.
    let unusable = workdir.and_then(|d| match std::fs::metadata(d) {
        Err(err) => Some(format!("workdir '{d}': {err}")),
        Ok(m) if !m.is_dir() => Some(format!("workdir '{d}': not a directory")),
        Ok(_) => None,
    });
    let message = unusable.unwrap_or_else(|| match e.to_string() {
        // A limit the kernel refused says so itself.
        refused if refused.starts_with("cannot set limits.") => refused,
        _ => format!("cannot start '{what}': {e}"),
    });
    let mut out = TaskOutput::failed(message, true);
    out.exit_code = Some(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
    out
}

/// Where a task's processes besides its process group are found: its cgroup, or by
/// parentage when PicoFlow is their subreaper.
#[derive(Clone, Copy)]
struct Group<'a> {
    cgroup: Option<&'a Cgroup>,
    reaping: bool,
}

/// Waits for the task's first process to end, or stops the task at its timeout or when the
/// run is cancelled. Either way, what the task left running is stopped too.
async fn wait_or_stop(
    ctx: &TaskContext<'_>,
    child: &mut Child,
    group: Group<'_>,
) -> Result<std::io::Result<ExitStatus>, stop::Stop> {
    let pgid = child.id() as i32;
    let raced = stop::race(ctx, std::pin::pin!(child.status())).await;
    match raced {
        Ok(status) => {
            // Leftovers in the group (background jobs), which would keep the pipes open,
            // were killed as the first process ended (see `Child::status`).
            stop_leftovers(group).await;
            Ok(status)
        }
        Err(stop) => {
            signal_group(pgid, libc::SIGTERM);
            if let Some(cg) = group.cgroup {
                cg.signal(libc::SIGTERM);
            }
            if group.reaping {
                subreaper::signal_descendants(pgid as u32, libc::SIGTERM);
            }
            let ended = future::or(async { Some(child.status().await) }, async {
                smol::Timer::after(KILL_GRACE).await;
                None
            })
            .await;
            if ended.is_none() {
                // Still running, so its pid still names its group.
                signal_group(pgid, libc::SIGKILL);
                let _ = child.status().await;
            }
            // The first process has ended: what it left is PicoFlow's now.
            stop_leftovers(group).await;
            Err(stop)
        }
    }
}

/// Stops what is left of a task whose first process has ended: its cgroup, or the strays
/// PicoFlow inherited as their subreaper.
async fn stop_leftovers(group: Group<'_>) {
    if let Some(cg) = group.cgroup {
        cg.kill(KILL_GRACE).await;
    }
    if group.reaping {
        subreaper::stop_strays(KILL_GRACE).await;
    }
}

/// The attempt of a process that ended with `status`.
fn finished(status: ExitStatus, stdout: Capture, stderr: Capture) -> TaskOutput {
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let error = match (status.success(), status.signal()) {
        (true, _) => None,
        (false, Some(sig)) => Some(format!("killed by signal {sig}")),
        (false, None) => Some(format!("exited with code {code}")),
    };
    TaskOutput {
        outcome: if status.success() {
            Outcome::Success
        } else {
            Outcome::Failed
        },
        exit_code: Some(code),
        stdout,
        stderr,
        error,
        retryable: true,
    }
}

/// Reads a pipe to its end, passing chunks on and keeping at most [`CAPTURE_LIMIT`] bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: Stream,
    ctx: &TaskContext<'_>,
) -> Capture {
    let mut cap = Capture::default();
    let Some(mut pipe) = pipe else { return cap };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                ctx.output.output(stream, &buf[..n]);
                cap.push(&buf[..n], CAPTURE_LIMIT);
            }
        }
    }
    cap
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CancelToken, NoOutput, SharedState};
    use crate::expand::Vars;
    use crate::model::Task;
    use std::time::Instant;

    fn task(cfg: ShellConfig) -> Task {
        Task::new("t", "shell", TaskConfig::Shell(cfg))
    }

    fn exec(cfg: ShellConfig, timeout: Option<Duration>, vars: &Vars) -> TaskOutput {
        let t = task(cfg);
        let shared = SharedState::default();
        let ctx = TaskContext {
            workflow: "w",
            execution_id: "e",
            task: &t,
            attempt: 1,
            timeout,
            cancel: CancelToken::never(),
            vars,
            shared: &shared,
            output: &NoOutput,
            output_dir: std::path::Path::new("/nonexistent"),
            limits: Default::default(),
        };
        smol::block_on(ShellExecutor.execute(ctx))
    }

    fn sh(line: &str) -> ShellConfig {
        ShellConfig {
            command: line.into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_line_runs_through_sh() {
        let out = exec(sh("echo abc | tr a x"), None, &Vars::isolated());
        assert_eq!(out.outcome, Outcome::Success);
        assert_eq!(out.stdout.data, b"xbc\n");
    }

    #[test]
    fn args_are_expanded_but_never_interpreted() {
        let mut vars = Vars::isolated();
        vars.set("WHO", "$(touch /tmp/picoflow-injected); world");
        let cfg = ShellConfig {
            command: "/bin/echo".into(),
            args: Some(vec![
                "hello ${WHO}".into(),
                "$$1".into(),
                "[${NOPE}]".into(),
            ]),
            ..Default::default()
        };
        let out = exec(cfg, None, &vars);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout.data),
            "hello $(touch /tmp/picoflow-injected); world $1 []\n"
        );
    }

    #[test]
    fn shell_form_leaves_variables_to_the_shell() {
        let mut cfg = sh("echo \"$GREETING\" ${GREETING}");
        cfg.env.insert("GREETING".into(), "a;b".into());
        let out = exec(cfg, None, &Vars::isolated());
        assert_eq!(out.stdout.data, b"a;b a;b\n");
    }

    #[test]
    fn a_value_with_a_nul_byte_is_named_not_run() {
        let mut vars = Vars::isolated();
        vars.set("tasks.a.outputs.v", "a\0b");
        let mut cfg = sh("echo ${PICOFLOW_REF_1}");
        cfg.env
            .insert("PICOFLOW_REF_1".into(), "${tasks.a.outputs.v}".into());
        let out = exec(cfg, None, &vars);
        assert_eq!(out.outcome, Outcome::Failed);
        assert!(!out.retryable);
        let e = out.error.unwrap();
        assert!(
            e.starts_with("a reference in the command line (the value of ${tasks.a.outputs.v}) holds a NUL byte"),
            "{e}"
        );
        let cfg = ShellConfig {
            command: "/bin/echo".into(),
            args: Some(vec!["ok".into(), "x${tasks.a.outputs.v}".into()]),
            ..Default::default()
        };
        let e = exec(cfg, None, &vars).error.unwrap();
        assert!(
            e.starts_with("args[1] (the value of ${tasks.a.outputs.v})"),
            "{e}"
        );
    }

    #[test]
    fn exit_code_and_stderr() {
        let out = exec(sh("echo oops >&2; exit 7"), None, &Vars::isolated());
        assert_eq!(out.outcome, Outcome::Failed);
        assert_eq!(out.exit_code, Some(7));
        assert_eq!(out.stderr.data, b"oops\n");
    }

    #[test]
    fn missing_program() {
        let cfg = ShellConfig {
            command: "/nonexistent/prog".into(),
            ..Default::default()
        };
        let out = exec(cfg, None, &Vars::isolated());
        assert_eq!(out.exit_code, Some(127));
        assert!(out.error.unwrap().contains("/nonexistent/prog"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        let out = exec(
            sh("sleep 60 & sleep 60; wait"),
            Some(Duration::from_millis(300)),
            &Vars::isolated(),
        );
        assert_eq!(out.outcome, Outcome::Timeout);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn background_leftovers_do_not_hold_the_task() {
        let start = Instant::now();
        let out = exec(sh("sleep 30 & echo done"), None, &Vars::isolated());
        assert_eq!(out.outcome, Outcome::Success);
        assert_eq!(out.stdout.data, b"done\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_workdir_that_cannot_be_entered_is_named() {
        for (dir, says) in [
            (
                "/no/such/dir",
                "workdir '/no/such/dir': No such file or directory",
            ),
            ("/etc/passwd", "workdir '/etc/passwd': not a directory"),
        ] {
            let cfg = ShellConfig {
                command: "pwd".into(),
                workdir: Some(dir.into()),
                ..Default::default()
            };
            let out = exec(cfg, None, &Vars::isolated());
            assert_eq!(out.outcome, Outcome::Failed);
            let error = out.error.unwrap_or_default();
            assert!(error.starts_with(says), "{error}");
        }
    }

    #[test]
    fn workdir_and_env() {
        let cfg = ShellConfig {
            command: "/bin/sh".into(),
            args: Some(vec!["-c".into(), "pwd; echo $X".into()]),
            workdir: Some("/tmp".into()),
            env: [("X".to_string(), "1".to_string())].into(),
        };
        let out = exec(cfg, None, &Vars::isolated());
        assert_eq!(out.stdout.data, b"/tmp\n1\n");
    }
}
