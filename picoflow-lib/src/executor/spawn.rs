//! Starting a local task's process cheaply, and waiting for it.
//!
//! `std::process::Command` forks as soon as a `pre_exec` hook is set, and the shell executor
//! needs one (`PR_SET_PDEATHSIG`, REL-002). A fork copies the page tables of the whole engine,
//! which then takes copy-on-write faults on every page it touches until the child has called
//! `execve`: on a chain of `/bin/true` tasks that was most of PicoFlow's own time per task.
//! Here the child is started the way `posix_spawn` starts one, with
//! `clone(CLONE_VM | CLONE_VFORK)`: it runs on a small stack of its own inside the engine's
//! memory, the engine's thread waits until it has called `execve` (or failed), and nothing is
//! copied. Everything the child needs (paths, argument and environment arrays) is prepared
//! before the clone, so between clone and `execve` the child makes system calls only: it
//! allocates nothing and takes no lock.
//!
//! In the child, in this order: signal handlers are reset to the default (and `SIGPIPE`, which
//! Rust ignores, too), the process moves itself into the task's cgroup if it has one (see
//! `cgroup`), gets a group of its own, asks to be killed when its parent thread dies, becomes
//! a child subreaper if asked to (see `subreaper`), takes `/dev/null` and the two pipes as
//! stdin, stdout and stderr, changes to the working directory, applies the task's limits
//! (`setpriority`, `ioprio_set`, `setrlimit`: see [`Limit`]), unblocks all signals and
//! executes the program. A program named without `/` is looked up in the `PATH` of the
//! child's environment, as `execvp` does, and a file that is not a recognised executable runs
//! through `/bin/sh`. When any step fails, the child writes its `errno` into a close-on-exec
//! pipe, which the parent returns as the spawn error; the pipe (rather than the shared memory)
//! keeps this right where a vfork is emulated by a fork, as under qemu-user. A child that
//! cannot join its cgroup writes the `errno` negated, and is started again without one; a
//! limit the kernel refuses is reported with its number (above the `errno`'s 16 bits), so
//! that the error names it.
//!
//! The end of the process is awaited through a pidfd (Linux 5.3 and later), one per child;
//! on older kernels it is polled.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libc::{c_char, c_int, c_void};
use smol::Async;

/// Stack of the child between clone and `execve`; it calls a handful of libc wrappers only
/// (a guard page below it catches an overflow; see `ChildStack`).
const CHILD_STACK: usize = 32 * 1024;

/// How often the end of a child is checked on a kernel without pidfds.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(5);

/// The pids of the children started here that have not been collected yet: a task's first
/// process. Locked from before a child is cloned until it is registered, so that whoever
/// looks for strays (see `subreaper`) under the lock never takes it for one.
pub(crate) static LEADERS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn leaders() -> std::sync::MutexGuard<'static, Vec<libc::pid_t>> {
    LEADERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A limit the child sets on itself before it executes the program: system calls that take
/// values only, so the child makes them without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `setpriority(PRIO_PROCESS, 0, n)`: the nice value.
    Nice(c_int),
    /// `ioprio_set(IOPRIO_WHO_PROCESS, 0, ioprio)`: the I/O class and level.
    IoPrio(c_int),
    /// `setrlimit(resource, {soft, hard})`.
    Rlimit(Resource, u64, u64),
}

/// The resources of [`Limit::Rlimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `RLIMIT_AS`: address space, in bytes.
    AddressSpace,
    /// `RLIMIT_CPU`: CPU time, in seconds.
    Cpu,
    /// `RLIMIT_NOFILE`: open file descriptors.
    OpenFiles,
}

impl Limit {
    /// Makes the system call in the calling process; whether it succeeded (`errno` tells why
    /// not). Async-signal-safe: it runs in the child between clone and `execve`.
    fn apply(self) -> bool {
        // SAFETY: system calls on the calling process, with values only.
        unsafe {
            match self {
                Limit::Nice(n) => libc::setpriority(libc::PRIO_PROCESS, 0, n) == 0,
                Limit::IoPrio(p) => {
                    const IOPRIO_WHO_PROCESS: c_int = 1;
                    libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, p) == 0
                }
                Limit::Rlimit(resource, soft, hard) => {
                    let rl = libc::rlimit {
                        rlim_cur: soft as libc::rlim_t,
                        rlim_max: hard as libc::rlim_t,
                    };
                    let r = match resource {
                        Resource::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, &rl),
                        Resource::Cpu => libc::setrlimit(libc::RLIMIT_CPU, &rl),
                        Resource::OpenFiles => libc::setrlimit(libc::RLIMIT_NOFILE, &rl),
                    };
                    r == 0
                }
            }
        }
    }
}

/// Bits of the child's report word above the `errno`: the number (from 1) of the limit
/// that failed.
const LIMIT_SHIFT: u32 = 16;

/// A command to start: program, arguments, environment changes and working directory.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<OsString>,
    cgroup: Option<c_int>,
    subreaper: bool,
    limits: Vec<Limit>,
    limit_names: Vec<String>,
}

impl Command {
    pub(crate) fn new(program: impl Into<OsString>) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            cgroup: None,
            subreaper: false,
            limits: Vec::new(),
            limit_names: Vec::new(),
        }
    }

    /// Sets `limit` in the child before it executes the program; a refusal fails the spawn
    /// with an error that begins with `name`.
    pub(crate) fn limit(&mut self, limit: Limit, name: impl Into<String>) -> &mut Command {
        self.limits.push(limit);
        self.limit_names.push(name.into());
        self
    }

    pub(crate) fn arg(&mut self, a: impl Into<OsString>) -> &mut Command {
        self.args.push(a.into());
        self
    }

    /// Sets a variable on top of the inherited environment (a later value wins).
    pub(crate) fn env(&mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> &mut Command {
        self.env.push((k.into(), v.into()));
        self
    }

    pub(crate) fn current_dir(&mut self, dir: impl Into<OsString>) -> &mut Command {
        self.dir = Some(dir.into());
        self
    }

    /// Starts the process in a cgroup: `procs` is its open `cgroup.procs`, which must stay
    /// open until [`Command::spawn`] returns. Where the child cannot move into it, it starts
    /// without it, and so do later children (see `cgroup::unusable`).
    pub(crate) fn cgroup(&mut self, procs: RawFd) -> &mut Command {
        self.cgroup = Some(procs);
        self
    }

    /// Makes the child a child subreaper (`PR_SET_CHILD_SUBREAPER`): what its descendants
    /// leave without a parent stays below it.
    pub(crate) fn subreaper(&mut self) -> &mut Command {
        self.subreaper = true;
        self
    }

    /// The child's environment: the engine's, without PicoFlow's own secrets
    /// ([`crate::config::PRIVATE_VARS`]), with this command's variables set.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        self.environment_from(std::env::vars_os())
    }

    fn environment_from(
        &self,
        inherited: impl Iterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        let mut vars: Vec<(OsString, OsString)> = inherited
            .filter(|(k, _)| {
                !crate::config::PRIVATE_VARS
                    .iter()
                    .any(|p| k.as_encoded_bytes() == p.as_bytes())
            })
            .collect();
        for (k, v) in &self.env {
            match vars.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => vars.push((k.clone(), v.clone())),
            }
        }
        vars
    }

    /// Starts the process, with stdin from `/dev/null` and stdout and stderr piped, in a new
    /// process group whose id is the child's pid. Returns once the program is executing.
    pub(crate) fn spawn(&self) -> io::Result<Child> {
        let vars = self.environment();
        let envp: Vec<CString> = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(kv)
            })
            .collect::<io::Result<_>>()?;
        let path = vars.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v);
        let candidates = candidates(&self.program, path.map(OsString::as_os_str))?;
        let mut argv = vec![cstring(self.program.clone())?];
        for a in &self.args {
            argv.push(cstring(a.clone())?);
        }
        let dir = self.dir.clone().map(cstring).transpose()?;
        let sh = c"/bin/sh";

        let argv_ptrs = null_terminated(&argv);
        // `/bin/sh FILE ARGS…` for a file without a `#!` line; the child fills in FILE.
        let mut sh_argv: Vec<*const c_char> = vec![sh.as_ptr(), std::ptr::null()];
        sh_argv.extend(argv[1..].iter().map(|a| a.as_ptr()));
        sh_argv.push(std::ptr::null());
        let envp_ptrs = null_terminated(&envp);
        let cand_ptrs: Vec<*const c_char> = candidates.iter().map(|c| c.as_ptr()).collect();

        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let null = dev_null()?;
        let shared = ChildArgs {
            candidates: &cand_ptrs,
            argv: argv_ptrs.as_ptr(),
            sh_argv: sh_argv.as_mut_ptr(),
            envp: envp_ptrs.as_ptr(),
            dir: dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
            fds: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            parent: std::process::id() as libc::pid_t,
            report: report_w.as_raw_fd(),
            cgroup: self.cgroup.unwrap_or(-1),
            subreaper: c_int::from(self.subreaper),
            limits: &self.limits,
        };
        let stack = ChildStack::new()?;
        let top = stack.top();
        let mut leaders = leaders();
        // SAFETY: all signals are blocked around the clone, so no handler of the engine runs
        // on the child's stack before the child has reset them. With CLONE_VFORK this thread
        // is suspended until the child has called execve or _exit, so `shared`, `stack` and
        // every array it points into outlive the child's use of them. The child runs only
        // `child_main`, which makes system calls and writes nothing but the second slot of
        // `sh_argv`.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top.cast::<c_void>(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&shared).cast_mut().cast::<c_void>(),
            );
            let clone_error = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(clone_error);
            }
            pid
        };
        drop((out_w, err_w, report_w, stack));
        let errno = match read_report(File::from(report_r)) {
            Ok(errno) => errno,
            Err(e) => {
                // Whether the program runs is unknown: stop the child rather than lose it.
                // SAFETY: kill(2) and waitpid(2) on our own, uncollected child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait_pid(pid, 0);
                return Err(e);
            }
        };
        if errno != 0 {
            // The child has exited already: collect it.
            let _ = wait_pid(pid, 0);
            drop(leaders);
            if errno < 0 {
                // It could not join its cgroup (a negative errno): start it without one.
                super::cgroup::unusable(&io::Error::from_raw_os_error(-errno));
                let again = Command {
                    cgroup: None,
                    ..self.clone()
                };
                return again.spawn();
            }
            return Err(self.spawn_error(errno));
        }
        leaders.push(pid);
        drop(leaders);
        Child::new(pid, out_r, err_r)
    }
}

impl Command {
    /// The error of a child that reported `word`: an `errno`, with the number of the limit
    /// that failed above it when one did.
    fn spawn_error(&self, word: c_int) -> io::Error {
        let errno = word & ((1 << LIMIT_SHIFT) - 1);
        let e = io::Error::from_raw_os_error(errno);
        let which = usize::try_from(word >> LIMIT_SHIFT).unwrap_or(0);
        match which.checked_sub(1).and_then(|i| self.limit_names.get(i)) {
            Some(name) => io::Error::new(
                e.kind(),
                format!("{name}: {}", crate::error::without_os_error(&e.to_string())),
            ),
            None => e,
        }
    }
}

/// The stack the child runs on until `execve`: [`CHILD_STACK`] bytes above a guard page that
/// no access may touch, so that an overflow ends the child with SIGSEGV instead of writing
/// into the engine's memory (the child shares it).
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK.div_ceil(page) * page + page;
        // SAFETY: a new private anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping made above; the stack grows down toward it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer: the end of the mapping (page-aligned, so 16-byte aligned as
    /// every ABI wants); the stack grows down from it.
    fn top(&self) -> *mut u8 {
        // SAFETY: one past the end of the mapping, which is what a downward stack starts at.
        unsafe { self.base.cast::<u8>().add(self.len) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by nothing once the child has exec'd or
        // exited (CLONE_VFORK suspends the parent until then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child's report: 0 when the pipe closed without a word (the program runs: the pipe
/// was close-on-exec), else the `errno` word it wrote. A read interrupted by a signal is
/// retried; a word cut short is an error, not a success.
fn read_report(mut pipe: File) -> io::Result<c_int> {
    let mut word = [0u8; 4];
    let mut got = 0;
    while got < word.len() {
        match pipe.read(&mut word[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    match got {
        0 => Ok(0),
        4 => Ok(c_int::from_ne_bytes(word)),
        n => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the starting process reported {n} of 4 bytes"),
        )),
    }
}

/// A started child: its pid (which is also its process group), its output pipes, its end.
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    pidfd: Option<Async<OwnedFd>>,
    pub(crate) stdout: Option<Async<File>>,
    pub(crate) stderr: Option<Async<File>>,
    status: Option<ExitStatus>,
    /// CPU time the process used (user and system), known once it is collected.
    cpu: Duration,
}

impl Child {
    fn new(pid: libc::pid_t, out: OwnedFd, err: OwnedFd) -> io::Result<Child> {
        let mut child = Child {
            pid,
            pidfd: None,
            stdout: None,
            stderr: None,
            status: None,
            cpu: Duration::ZERO,
        };
        // From here on, dropping `child` collects the process on an error.
        child.pidfd = super::pidfd::try_open(pid)?.map(Async::new).transpose()?;
        child.stdout = Some(Async::new(File::from(out))?);
        child.stderr = Some(Async::new(File::from(err))?);
        Ok(child)
    }

    pub(crate) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The CPU time (user and system) the process itself used, once [`Child::status`] has
    /// returned; zero before.
    pub(crate) fn cpu_time(&self) -> Duration {
        self.cpu
    }

    /// Waits for the process to end (once; later calls return the same status). What is
    /// left of its process group is killed (SIGKILL) before the process is collected: until
    /// then the ended process keeps its pid, which is the group's id, from being reused, so
    /// the signal cannot reach a group that another process later made with that id.
    pub(crate) async fn status(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_status()? {
                return Ok(s);
            }
            match &self.pidfd {
                Some(fd) => fd.readable().await?,
                None => {
                    smol::Timer::after(POLL_WITHOUT_PIDFD).await;
                }
            }
        }
    }

    fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() && has_ended(self.pid)? {
            // SAFETY: kill(2) on the group of our own child, which has ended but is not
            // collected: the group id cannot name anyone else's group.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let collected = wait_pid_usage(self.pid, libc::WNOHANG)?;
            self.status = collected.map(|(status, cpu)| {
                self.cpu = cpu;
                status
            });
            if self.status.is_some() {
                leaders().retain(|p| *p != self.pid);
            }
        }
        Ok(self.status)
    }
}

impl Drop for Child {
    /// A child dropped before its end (an error, a dropped run) is killed and collected, so
    /// that it neither runs on unobserved nor stays a zombie.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        leaders().retain(|p| *p != self.pid);
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        if !matches!(wait_pid(self.pid, libc::WNOHANG), Ok(Some(_))) {
            let pid = self.pid;
            // Not gone yet (e.g. in uninterruptible sleep): collect it off this thread.
            let _ = crate::threads::spawn(
                "picoflow-reap".into(),
                Box::new(move || {
                    let _ = wait_pid(pid, 0);
                }),
            );
        }
    }
}

/// What the child reads (and the one word it writes) in the parent's memory.
struct ChildArgs<'a> {
    /// Paths to try, in order.
    candidates: &'a [*const c_char],
    argv: *const *const c_char,
    sh_argv: *mut *const c_char,
    envp: *const *const c_char,
    /// Working directory, or null.
    dir: *const c_char,
    /// The descriptors that become 0, 1 and 2.
    fds: [c_int; 3],
    parent: libc::pid_t,
    /// Where the `errno` of a failed step goes (negated when joining the cgroup failed).
    report: c_int,
    /// The `cgroup.procs` to move into, or -1.
    cgroup: c_int,
    /// Non-zero: become a child subreaper.
    subreaper: c_int,
    /// Limits to set, in order.
    limits: &'a [Limit],
}

/// The child, from clone to `execve`. It shares the parent's memory, so it must not allocate,
/// take locks or write anything but `args.sh_argv[1]`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the suspended parent keeps alive (see `spawn`).
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    let fail = |errno: c_int| -> c_int {
        let word = if errno == 0 { 1 } else { errno }.to_ne_bytes();
        // SAFETY: a write of four bytes from the stack; _exit ends the child without running
        // anything of the parent's.
        unsafe {
            libc::write(args.report, word.as_ptr().cast::<c_void>(), word.len());
            libc::_exit(127)
        }
    };
    let last = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY: every call below is a thin wrapper of a system call, on values prepared by the
    // parent; the pointers are valid while the parent is suspended.
    unsafe {
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut sa) != 0 {
                continue; // Not a signal number this libc lets programs handle.
            }
            let ignored = sa.sa_sigaction == libc::SIG_IGN;
            if sa.sa_sigaction != libc::SIG_DFL && (!ignored || sig == libc::SIGPIPE) {
                sa.sa_sigaction = libc::SIG_DFL;
                sa.sa_flags = 0;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // First, so that nothing the task runs ever starts outside its cgroup.
        if args.cgroup >= 0 && libc::write(args.cgroup, b"0".as_ptr().cast::<c_void>(), 1) != 1 {
            return fail(-last());
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(last());
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if args.subreaper != 0 {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        // The parent may have died before the signal was armed.
        if libc::getppid() != args.parent {
            libc::_exit(137);
        }
        for (target, &fd) in (0..).zip(args.fds.iter()) {
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                return fail(last());
            }
        }
        if !args.dir.is_null() && libc::chdir(args.dir) != 0 {
            return fail(last());
        }
        // Last, so that a small RLIMIT_NOFILE or RLIMIT_AS does not hinder the steps above.
        for (n, limit) in (1..).zip(args.limits.iter()) {
            if !limit.apply() {
                return fail((n << LIMIT_SHIFT) | last());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        // As execvp: go on past directories without the file; remember a permission error.
        let mut errno = libc::ENOENT;
        let mut denied = false;
        for &path in args.candidates {
            libc::execve(path, args.argv, args.envp);
            let mut e = last();
            if e == libc::ENOEXEC {
                *args.sh_argv.add(1) = path;
                libc::execve(*args.sh_argv, args.sh_argv, args.envp);
                e = last();
            }
            match e {
                libc::EACCES => {
                    denied = true;
                    errno = e;
                }
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {
                    if !denied {
                        errno = e;
                    }
                }
                _ => return fail(e),
            }
        }
        fail(errno)
    }
}

/// The paths `execvp` would try for `program` with this `PATH`.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(vec![cstring(program.to_owned())?]);
    }
    let path = path.map_or(&b"/usr/local/bin:/usr/bin:/bin"[..], OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut p = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            p.push(b'/');
            p.extend_from_slice(program.as_bytes());
            cstring(OsString::from_vec(p))
        })
        .collect()
}

fn cstring(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

fn null_terminated(items: &[CString]) -> Vec<*const c_char> {
    let mut v: Vec<*const c_char> = items.iter().map(|c| c.as_ptr()).collect();
    v.push(std::ptr::null());
    v
}

/// A pipe whose two ends are closed on exec (the child gets copies without the flag).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// `/dev/null`, opened once for every child's stdin.
fn dev_null() -> io::Result<&'static File> {
    static NULL: OnceLock<File> = OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f);
    }
    let f = File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| f))
}

/// Whether the child `pid` has ended, without collecting it (`waitid` with `WNOWAIT`).
fn has_ended(pid: libc::pid_t) -> io::Result<bool> {
    loop {
        // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child, writing into `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: after a successful waitid, si_pid is set (0 when nothing has ended).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => continue,
            e => return Err(e),
        }
    }
}

/// waitpid(2) on one child; `None` while it runs (with `WNOHANG`).
fn wait_pid(pid: libc::pid_t, flags: c_int) -> io::Result<Option<ExitStatus>> {
    Ok(wait_pid_usage(pid, flags)?.map(|(status, _)| status))
}

/// wait4(2) on one child: its status and the CPU time it used; `None` while it runs (with
/// `WNOHANG`).
fn wait_pid_usage(pid: libc::pid_t, flags: c_int) -> io::Result<Option<(ExitStatus, Duration)>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: a zeroed rusage is valid; wait4 writes the status word and the usage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above, into `status` and `usage`.
        match unsafe { libc::wait4(pid, &mut status, flags, &mut usage) } {
            0 => return Ok(None),
            p if p == pid => {
                let time = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                let cpu = time(usage.ru_utime) + time(usage.ru_stime);
                return Ok(Some((ExitStatus::from_raw(status), cpu)));
            }
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt as _;

    fn output(cmd: &Command) -> (ExitStatus, String, String) {
        smol::block_on(async {
            let mut child = cmd.spawn().unwrap();
            let (mut out, mut err) = (String::new(), String::new());
            let mut so = child.stdout.take().unwrap();
            let mut se = child.stderr.take().unwrap();
            so.read_to_string(&mut out).await.unwrap();
            se.read_to_string(&mut err).await.unwrap();
            (child.status().await.unwrap(), out, err)
        })
    }

    #[test]
    fn runs_with_arguments_environment_and_directory() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo \"$1:$A:$(pwd)\"; echo e >&2; read x; echo \"[$x]\"; exit 3")
            .arg("zero")
            .arg("one")
            .env("A", "first")
            .env("A", "second")
            .current_dir("/tmp");
        let (status, out, err) = output(&cmd);
        assert_eq!(status.code(), Some(3));
        assert_eq!(out, "one:second:/tmp\n[]\n");
        assert_eq!(err, "e\n");
    }

    #[test]
    fn picoflows_own_secrets_are_not_inherited() {
        let mut cmd = Command::new("env");
        cmd.env("SET", "by the task");
        let inherited = [
            ("PICOFLOW_WEB_TOKEN", "t0k3n"),
            ("PATH", "/bin"),
            ("SET", "old"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = cmd.environment_from(inherited.into_iter());
        let names: Vec<_> = env.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect();
        assert_eq!(names, ["\"PATH\"=\"/bin\"", "\"SET\"=\"by the task\""]);
    }

    /// What the child itself reads from `/proc/self/FILE`, with `program` and `args`: no
    /// shell in between, whose own signal mask and group would be read instead (dash blocks
    /// every signal for a moment around each command it starts).
    fn from_proc(program: &str, args: &[&str]) -> (u32, String) {
        let mut cmd = Command::new(program);
        for a in args {
            cmd.arg(*a);
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let (status, out) = smol::block_on(async {
            let mut s = String::new();
            let mut so = child.stdout.take().unwrap();
            so.read_to_string(&mut s).await.unwrap();
            (child.status().await.unwrap(), s)
        });
        assert!(status.success(), "{out}");
        (pid, out)
    }

    #[test]
    fn the_child_leads_its_own_group_and_has_default_signals() {
        // Field 5 of /proc/PID/stat is the process group.
        let (pid, out) = from_proc("cut", &["-d", " ", "-f5", "/proc/self/stat"]);
        assert_eq!(out.trim(), pid.to_string());
        let (_, out) = from_proc("grep", &["-E", "^Sig(Ign|Blk)", "/proc/self/status"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        // Nothing blocked, and SIGPIPE (ignored by the Rust runtime) back to its default.
        for l in &lines {
            let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{l}");
            if l.starts_with("SigBlk") {
                assert_eq!(mask, 0, "{l}");
            }
        }
    }

    #[test]
    fn a_missing_program_or_directory_is_the_spawn_error() {
        let e = Command::new("/nonexistent/prog").spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = Command::new("picoflow-no-such-program")
            .spawn()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let mut c = Command::new("/bin/true");
        c.current_dir("/nonexistent-dir");
        assert_eq!(c.spawn().unwrap_err().kind(), io::ErrorKind::NotFound);
        let file = std::env::temp_dir().join(format!("picoflow-noexec-{}", std::process::id()));
        std::fs::write(&file, "echo no\n").unwrap();
        let e = Command::new(&file).spawn().unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn the_path_of_the_childs_environment_is_searched() {
        let dir = std::env::temp_dir().join(format!("picoflow-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No `#!` line: it runs through /bin/sh, as with execvp.
        let script = dir.join("pf-greet");
        std::fs::write(&script, "echo \"hello $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut cmd = Command::new("pf-greet");
        cmd.arg("you")
            .env("PATH", format!("/nonexistent:{}", dir.display()));
        let (status, out, _) = output(&cmd);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(status.success());
        assert_eq!(out, "hello you\n");
    }

    #[test]
    fn a_nul_byte_is_refused_before_starting() {
        let mut c = Command::new("/bin/echo");
        c.arg("a\0b");
        assert_eq!(c.spawn().unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    /// A cgroup the child cannot join does not stop it from starting. (This turns task
    /// cgroups off for the rest of this test process; no other unit test relies on them.)
    #[test]
    fn a_child_that_cannot_join_its_cgroup_starts_without_it() {
        // Open for reading only: the child's write of `0` fails with EBADF.
        let read_only = File::open("/dev/null").unwrap();
        let mut c = Command::new("cat");
        c.arg("/proc/self/cgroup").cgroup(read_only.as_raw_fd());
        let (status, out, err) = output(&c);
        assert!(status.success(), "{err}");
        assert!(out.contains("0::"), "{out}");
        assert!(super::super::cgroup::Cgroup::create("w").is_none());
    }

    #[test]
    fn a_dropped_child_is_killed_and_collected() {
        let child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let proc_dir = format!("/proc/{}", child.id());
        drop(child);
        // A zombie keeps its /proc entry: the entry goes once the child is collected.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&proc_dir).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{proc_dir} still there"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The limits are what the program runs with, and one the kernel refuses fails the
    /// start with its name.
    #[test]
    fn limits_are_set_before_the_program_runs() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -n; ulimit -t; ulimit -v; cut -d' ' -f19 /proc/self/stat")
            .limit(Limit::Rlimit(Resource::OpenFiles, 64, 64), "open_files")
            .limit(Limit::Rlimit(Resource::Cpu, 7, 12), "cpu_seconds")
            .limit(
                Limit::Rlimit(Resource::AddressSpace, 256 << 20, 256 << 20),
                "memory",
            )
            .limit(Limit::Nice(7), "nice")
            .limit(Limit::IoPrio(3 << 13), "io");
        let (status, out, err) = output(&cmd);
        assert!(status.success(), "{err}");
        assert_eq!(out, "64\n7\n262144\n7\n");
        // Beyond fs.nr_open even root cannot raise RLIMIT_NOFILE.
        let mut refused = Command::new("/bin/true");
        refused.limit(Limit::Nice(1), "nice").limit(
            Limit::Rlimit(Resource::OpenFiles, 1 << 40, 1 << 40),
            "limits.open_files",
        );
        let e = refused.spawn().unwrap_err();
        assert!(e.to_string().starts_with("limits.open_files: "), "{e}");
        assert!(!e.to_string().contains("os error"), "{e}");
    }

    #[test]
    fn the_cpu_time_of_the_process_is_kept() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
        let mut child = cmd.spawn().unwrap();
        assert_eq!(child.cpu_time(), Duration::ZERO);
        assert!(smol::block_on(child.status()).unwrap().success());
        assert!(
            child.cpu_time() > Duration::from_millis(10),
            "{:?}",
            child.cpu_time()
        );
    }

    #[test]
    fn a_report_cut_short_is_an_error_not_a_success() {
        use std::io::Write as _;
        for (bytes, expected) in [
            (&[][..], Some(0)),
            (&13i32.to_ne_bytes()[..], Some(13)),
            (&[1u8, 0][..], None),
        ] {
            let (r, w) = pipe().unwrap();
            File::from(w).write_all(bytes).unwrap();
            assert_eq!(read_report(File::from(r)).ok(), expected, "{bytes:?}");
        }
    }

    #[test]
    fn what_the_group_left_is_killed_when_its_first_process_ends() {
        let dir = std::env::temp_dir().join(format!("picoflow-spawn-{}", crate::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("bg.pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "sleep 30 >/dev/null 2>&1 & echo $! > {}",
            pid_file.display()
        ));
        let mut child = cmd.spawn().unwrap();
        let status = smol::block_on(child.status()).unwrap();
        assert!(status.success());
        let bg: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{bg}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "the background sleep lives on"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_childs_stack_has_a_guard_page_below_it() {
        let stack = ChildStack::new().unwrap();
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // The kernel reads the memory for `write`: EFAULT for the guard page, fine above it.
        let (_r, w) = pipe().unwrap();
        // SAFETY: write(2) from addresses inside our own mapping; the kernel checks access.
        let guard = unsafe { libc::write(w.as_raw_fd(), stack.base, 1) };
        let fault = io::Error::last_os_error().raw_os_error();
        assert_eq!((guard, fault), (-1, Some(libc::EFAULT)));
        // SAFETY: as above, one page up: the lowest byte of the stack itself.
        let ok = unsafe { libc::write(w.as_raw_fd(), stack.base.cast::<u8>().add(page).cast(), 1) };
        assert_eq!(ok, 1);
        assert_eq!(stack.top() as usize % 16, 0);
    }
}
