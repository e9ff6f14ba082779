//! Fuzzing on the stable toolchain: the workflow parser and validator, the cron and duration
//! parsers, the configuration file and the `when:` expression language get mutated versions
//! of real inputs (every fixture, example and template, and lists of schedules, durations,
//! settings and conditions) for a while, and none may panic. A panic writes the input to
//! `target/fuzz-crash-*` and fails.
//!
//! `PICOFLOW_FUZZ_SECONDS` sets how long each target runs (default 2; CI runs 20, a long run
//! 600); `PICOFLOW_FUZZ_SEED` replays a run. Schedules found valid are also asked for their
//! next fire times, so the scheduler's arithmetic is fuzzed too; conditions that parse are
//! evaluated against fixed values (JSON arrays, empty, undefined, hostile text).
//!
//! The engine target generates workflows (dependencies, `run_if`, `when`, loops over written
//! lists and over outputs, `outputs:` from stdout and the output file, references to them,
//! retries, timeouts, `continue_on_failure`, handlers), and runs those the validator accepts
//! through the real [`Engine`] with a fake executor that ends each attempt as its command says:
//! success, failure, retryable failure, timeout, slow or never ending, with hostile output
//! (invalid JSON, NUL bytes, `${…}` text, lists of objects, more items than a loop may have).
//! Besides panics it checks the engine's invariants on every run: every task ends in a final
//! state, the records agree with what the executor said, nothing starts before what it depends
//! on has ended or after it failed, handlers run by the execution's status, and the figures
//! add up. A run that a stop interrupted is resumed from its records and checked again: what
//! had succeeded is kept and not run again, what the stop cut short runs again.
//! `PICOFLOW_FUZZ_INPUT=<file>` runs one saved input (a crash file) instead.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::future;
use picoflow_lib::expr::{is_reference_name, Expr};
use picoflow_lib::{
    expand_with, parse_duration, parse_workflow, template, BoxFuture, CancelToken, Capture, Config,
    Engine, EngineSettings, Event, EventSink, Executor, Items, Outcome, Registry, ResumeFrom,
    RunIf, RunOptions, RunReport, Schedule, Store, Stream, TaskConfig, TaskContext, TaskExecution,
    TaskOutput, TaskReport, TaskState, Vars, Workflow, WorkflowStatus, CAPTURE_LIMIT,
    TEMPLATE_NAMES,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces that tend to reach corners of YAML, TOML, cron, duration and condition syntax.
const TOKENS: &[&str] = &[
    "\n",
    " ",
    "  ",
    "\t",
    ":",
    ": ",
    "- ",
    "-",
    "#",
    "'",
    "\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a",
    "*a",
    "!!str ",
    "|",
    ">",
    "---",
    "...",
    "${",
    "${X}",
    "$$",
    "\\",
    "0",
    "-1",
    "99999999999999999999",
    "1e9",
    "0x10",
    "*",
    "*/0",
    "*/7",
    "?",
    "L",
    "W",
    "#3",
    "SUN",
    "7",
    "60",
    "24",
    "31",
    "13",
    "1-",
    "-5",
    "5-1",
    ",,",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "1h30m",
    "1.5s",
    "\u{0}",
    "é",
    "\u{202e}",
    "=",
    "[logs]",
    "[retry]",
    "true",
    "null",
    "~",
    "tasks:",
    "depends_on: [",
    "type: ssh",
    "type: http",
    "config:",
    "timezone: ",
    "Europe/Berlin",
    "Mars/Base",
    "retry: ",
    "&&",
    "||",
    "!",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    " in ",
    "not",
    " not in ",
    ".",
    "\\'",
    "(",
    ")",
    "${tasks.a.outputs.x}",
    "${item}",
    "when: ",
    "iterate_over: ",
    "run_if: any_failed",
    "on_failure:",
];

fn mutate(rng: &mut Rng, corpus: &[String]) -> String {
    let mut s: Vec<u8> = corpus[rng.below(corpus.len())].clone().into_bytes();
    for _ in 0..=rng.below(6) {
        let at = rng.below(s.len() + 1);
        match rng.below(6) {
            0 if !s.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(s.len());
                s.drain(at.min(end)..end);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                s.splice(at..at, t.iter().copied());
            }
            2 if !s.is_empty() => {
                let i = rng.below(s.len());
                s[i] = s[i].wrapping_add(1 + rng.below(254) as u8);
            }
            3 => {
                // A line of another input.
                let other = &corpus[rng.below(corpus.len())];
                let lines: Vec<&str> = other.lines().collect();
                if !lines.is_empty() {
                    let l = format!("{}\n", lines[rng.below(lines.len())]);
                    s.splice(at..at, l.bytes());
                }
            }
            4 if !s.is_empty() => {
                // Repeat a piece (deep nesting, long values).
                let end = (at + 1 + rng.below(16)).min(s.len());
                let piece: Vec<u8> = s[at.min(end)..end].to_vec();
                for _ in 0..rng.below(64) {
                    s.splice(at..at, piece.iter().copied());
                }
            }
            _ => {
                let i = rng.below(s.len() + 1);
                s.truncate(i.max(1).min(s.len()));
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn fixtures() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root.join("tests/fixtures"), root.join("examples")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    let mut corpus: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    for kind in TEMPLATE_NAMES {
        corpus.extend(template(kind, "fuzzed"));
    }
    assert!(
        corpus.len() > 20,
        "too few workflow inputs: {}",
        corpus.len()
    );
    corpus
}

/// Runs `target` on mutations of `corpus` for the configured time.
fn fuzz(name: &str, corpus: &[String], target: impl Fn(&str)) {
    fuzz_with(name, |rng| mutate(rng, corpus), target);
}

/// Runs `target` on the inputs `generate` makes for the configured time. A panic in `target`
/// saves its input to `target/fuzz-crash-<name>-<seed>` and fails with the panic's message.
fn fuzz_with(name: &str, mut generate: impl FnMut(&mut Rng) -> String, target: impl Fn(&str)) {
    let secs = std::env::var("PICOFLOW_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed = std::env::var("PICOFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    // Panics are caught and reported below; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    while Instant::now() < deadline {
        let input = generate(&mut rng);
        runs += 1;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let _ = std::panic::take_hook();
            let why = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let out = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(format!("fuzz-crash-{name}-{seed}"));
            let _ = std::fs::write(&out, &input);
            panic!(
                "{name}: panic on input {input:?}: {why} (saved to {}; seed {seed})",
                out.display()
            );
        }
    }
    let _ = std::panic::take_hook();
    eprintln!("{name}: {runs} inputs in {secs} s, no panic (seed {seed})");
}

#[test]
fn workflow_files() {
    let corpus = fixtures();
    let registry = Registry::builtin();
    fuzz("workflow", &corpus, |text| {
        let _ = parse_workflow(text, "fuzz.yaml", &registry);
    });
}

#[test]
fn schedules() {
    let corpus: Vec<String> = [
        "0 2 * * *",
        "*/5 * * * *",
        "0 0 9 * * 1-5",
        "30 2 * * 0",
        "0 0 1 1 *",
        "0 */15 8-18 * * MON-FRI",
        "59 23 31 12 7",
        "0 30 2 * * SUN",
        "* * * * * *",
        "0 0 29 2 *",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let now = chrono::Utc::now();
    fuzz("schedule", &corpus, |expr| {
        for tz in [None, Some("Europe/Berlin"), Some("America/New_York")] {
            if let Ok(s) = Schedule::parse(expr, tz) {
                let _ = s.upcoming(now, 3);
                let _ = s.missed_between(now - chrono::Duration::days(3), now, 10);
            }
        }
    });
}

#[test]
fn durations() {
    let corpus: Vec<String> = [
        "30s", "5m", "1h", "1h30m", "250ms", "2d", "0s", "90", "1m30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fuzz("duration", &corpus, |text| {
        let _ = parse_duration(text);
    });
}

#[test]
fn config_files() {
    let corpus: Vec<String> = [
        "db_path = \"state.redb\"\nlog_level = \"debug\"\n",
        "[logs]\ndir = \"logs\"\nretention_days = 7\nmax_size_mb = 100\n",
        "[metrics]\nenabled = true\nport = 9100\nbind_address = \"127.0.0.1\"\n",
        "[execution]\nmax_parallel = 8\n",
        "[retry]\ndefault_count = 5\nmax_backoff_seconds = 600\nbackoff_multiplier = 2.0\n",
        "[timeout]\ndefault_seconds = 600\nmax_seconds = 7200\n",
        "[daemon]\nshutdown_timeout_seconds = 30\n[logs]\ncleanup_enabled = false\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fuzz("config", &corpus, |text| {
        if let Ok(mut c) = Config::parse(text, "fuzz.toml") {
            if c.check("fuzz.toml").is_ok() {
                // The backoff arithmetic of every accepted setting.
                for attempt in [1, 2, 10, 100, u32::MAX] {
                    let _ = c.retry.backoff(attempt);
                }
            }
            let _ = c.apply_env(|_| Some("-1".into()));
        }
    });
}

#[test]
fn expressions() {
    let corpus: Vec<String> = [
        "${tasks.a.outputs.x} == 'yes' && !(${N} > 3)",
        "${item} in ['a', \"b\", 3]",
        "${tasks.a.status} not in \"failed timeout\"",
        "(${a} || ${b}) && ${c} != -1.5",
        "'it\\'s' == \"x\\n\" || true",
        "${L} in ${J}",
        "!!${x} <= 10",
        "${tasks.my-task.status} >= \"ok\" || ((${a})) && ${b} < 0.25",
        "${Q} in [${N}, ${L}, '']",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let values = |name: &str| match name {
        "N" => Some("4".to_string()),
        "J" => Some("[1, \"2\", {\"x\": 1}]".to_string()),
        "L" => Some("[1,2]".to_string()),
        "a" => Some(String::new()),
        "Q" => Some("' || true".to_string()),
        _ => None,
    };
    fuzz("expression", &corpus, |text| {
        if let Ok(e) = Expr::parse(text) {
            let refs = e.references();
            for (i, r) in refs.iter().enumerate() {
                assert!(is_reference_name(r), "invalid reference {r:?}");
                assert!(!refs[..i].contains(r), "{r:?} listed twice");
            }
            let _ = e.eval(&values);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Generated workflows through the real engine, with a fake executor.

/// What a generated task's output may be: the values later tasks read, loop over and compare.
fn hostile_stdout(k: usize) -> Vec<u8> {
    match k {
        0 => Vec::new(),
        1 => b"yes\n".to_vec(),
        2 => b"not json {".to_vec(),
        3 => br#"{"a":{"b":[1,2,{"c":"${tasks.t0.outputs.out}"}]},"n":null}"#.to_vec(),
        4 => br#"["a","b","c"]"#.to_vec(),
        5 => br#"[{"id":1},{"id":2}]"#.to_vec(),
        6 => b"[1, 2.5, true, null]".to_vec(),
        7 => json_numbers(picoflow_lib::MAX_ITEMS + 1).into_bytes(),
        8 => b"a\nb\n\n  c  \nb\n".to_vec(),
        9 => b"\0\0\0a\0b\n".to_vec(),
        10 => vec![b'x'; picoflow_lib::OUTPUT_LIMIT + 10],
        11 => vec![0xff, 0xfe, b'\n', 0xc3],
        12 => b"${tasks.t1.outputs.out} $${item} ${ ${item} $$".to_vec(),
        13 => format!("{}{}", "[".repeat(4000), "]".repeat(4000)).into_bytes(),
        14 => br#"["a","a","a"]"#.to_vec(),
        15 => format!(
            r#"["x/y","[z]","..","é\u202e","{}","","a\u0000b","%2F"]"#,
            "l".repeat(65)
        )
        .into_bytes(),
        16 => b"-1\n1e400\n0x10\n".to_vec(),
        17 => b"   \n\n\t\n".to_vec(),
        18 => br#"[]"#.to_vec(),
        19 => br#"{"a":{"b":["x", {"c": "' || true"}]}}"#.to_vec(),
        // Rare: exactly as many items as a loop may have.
        _ => json_numbers(picoflow_lib::MAX_ITEMS).into_bytes(),
    }
}

fn json_numbers(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(","))
}

/// What a generated task may write to its output file (`$PICOFLOW_OUTPUT`); `None`: nothing.
fn hostile_file(k: usize) -> Option<Vec<u8>> {
    Some(match k {
        0..=2 => return None,
        3 => b"out=from file\nlist=[\"p\",\"q\"]\n".to_vec(),
        4 => b"bad key=1\n".to_vec(),
        5 => b"k<<EOF\nmulti\nline\n".to_vec(),
        6 => b"k<<EOF\na\nEOF\nlist=[1,2]\n".to_vec(),
        7 => b"k<<\n".to_vec(),
        8 => format!("big={}\n", "v".repeat(picoflow_lib::OUTPUT_LIMIT)).into_bytes(),
        9 => b"k=\0\0\nout=\0\n".to_vec(),
        10 => vec![b'k', b'=', 0xff, 0xfe, b'\n'],
        11 => b"=x\n".to_vec(),
        12 => b"1abc=2\n".to_vec(),
        13 => b"out=${tasks.t0.outputs.out}\nlist<<END\na\nb\nEND\n".to_vec(),
        _ => format!("list={}\n", json_numbers(picoflow_lib::MAX_ITEMS + 1)).into_bytes(),
    })
}

/// The common outputs; the rare last one is number `STDOUTS`.
const STDOUTS: usize = 20;
const FILES: usize = 15;

/// How the fake executor ends an attempt, by the first word of the task's command.
const BEHAVIOURS: &[&str] = &[
    "ok", "ok", "ok", "echo", "fail", "retry", "flaky", "slow", "hang", "timeout", "rand",
];

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One attempt as the fake executor ended it.
#[derive(Debug, Clone)]
struct Attempt {
    task: String,
    attempt: u32,
    outcome: Outcome,
    /// The values of other tasks the attempt was given: `tasks.NAME.status` or
    /// `tasks.NAME.outputs.KEY`, and the value (`None`: not set).
    seen: Vec<(String, Option<String>)>,
}

/// Stands in for every task type: real processes would make each run take milliseconds to
/// seconds and depend on the host, while the engine's decisions only need outcomes. It
/// decides from the task's command (expanded as the real executors expand it, so values of
/// earlier tasks steer it), the attempt and a seed, and keeps each decision for the checks.
/// Time is scaled: a timeout of N seconds fires after N milliseconds.
#[derive(Clone)]
struct Fake {
    seed: u64,
    log: Arc<Mutex<Vec<Attempt>>>,
}

impl Fake {
    /// The command line after expansion, as a shell would see it (`sh -c` reads run values
    /// from the environment the engine prepared; `args` are expanded one by one).
    fn command(ctx: &TaskContext<'_>) -> String {
        let lookup = |vars: &Vars, n: &str| vars.get(n);
        match &ctx.task.config {
            TaskConfig::Shell(c) => {
                let mut env = ctx.vars.clone();
                for (k, v) in &c.env {
                    let value = expand_with(v, |n| lookup(ctx.vars, n));
                    env.set(k.clone(), value);
                }
                let mut line = expand_with(&c.command, |n| lookup(&env, n));
                for a in c.args.iter().flatten() {
                    line.push(' ');
                    line.push_str(&expand_with(a, |n| lookup(ctx.vars, n)));
                }
                line
            }
            TaskConfig::Custom(v) => match v.get("command") {
                Some(serde_json::Value::String(s)) => expand_with(s, |n| lookup(ctx.vars, n)),
                _ => "ok".into(),
            },
            _ => "ok".into(),
        }
    }

    /// The texts of a task in which values are expanded (a shell command line reads them
    /// from the environment the engine prepared).
    fn texts(task: &picoflow_lib::Task) -> Vec<String> {
        match &task.config {
            TaskConfig::Shell(c) => std::iter::once(&c.command)
                .chain(c.args.iter().flatten())
                .chain(c.env.values())
                .cloned()
                .collect(),
            TaskConfig::Custom(v) => v
                .get("command")
                .and_then(|c| c.as_str())
                .map(str::to_string)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn attempt(&self, ctx: &TaskContext<'_>) -> TaskOutput {
        let line = Self::command(ctx);
        let mut words = line.split(' ');
        let behaviour = words.next().unwrap_or_default();
        let number = |w: Option<&str>| w.and_then(|w| w.parse::<usize>().ok()).unwrap_or(0);
        let (out_k, file_k) = (number(words.next()), number(words.next()));
        let rest: Vec<&str> = words.collect();
        let h = fnv(&[
            &self.seed.to_le_bytes(),
            ctx.task.name.as_bytes(),
            &ctx.attempt.to_le_bytes(),
            line.as_bytes(),
        ]);
        let behaviour = match behaviour {
            "rand" => BEHAVIOURS[(h % (BEHAVIOURS.len() as u64 - 1)) as usize],
            b => b,
        };
        let mut out = TaskOutput {
            outcome: Outcome::Success,
            exit_code: Some(0),
            stdout: Capture::default(),
            stderr: Capture::default(),
            error: None,
            retryable: true,
        };
        let stdout = match behaviour {
            "echo" => rest.join(" ").into_bytes(),
            _ => hostile_stdout(out_k.min(STDOUTS)),
        };
        ctx.output.output(Stream::Stdout, &stdout);
        out.stdout.push(&stdout, CAPTURE_LIMIT);
        out.stderr
            .push(&stdout[..stdout.len().min(64)], CAPTURE_LIMIT);
        if let Some(bytes) = hostile_file(file_k % FILES) {
            let _ = std::fs::write(ctx.output_file(), bytes);
        }
        // The items of a big loop (past the 50th) take no time: thousands of them would
        // otherwise fill the whole run.
        let item = ctx
            .task
            .name
            .split_once('[')
            .map(|(_, i)| i.trim_end_matches(']'));
        let scale = match item.and_then(|i| i.parse::<u64>().ok()) {
            Some(k) if k >= 50 => 0,
            _ => 1,
        };
        // Waits `ms` (scaled time), as a process would, unless the timeout or the run's
        // cancellation comes first.
        let wait = |ms: u64| async move {
            let limit = ctx
                .timeout
                .map(|t| Duration::from_millis(t.as_secs() * scale));
            let sleep = async {
                smol::Timer::after(Duration::from_millis(ms * scale)).await;
                Outcome::Success
            };
            let timeout = async {
                match limit {
                    Some(l) => {
                        smol::Timer::after(l).await;
                    }
                    None => future::pending::<()>().await,
                }
                Outcome::Timeout
            };
            let cancel = async {
                ctx.cancel.cancelled().await;
                Outcome::Cancelled
            };
            future::or(sleep, future::or(timeout, cancel)).await
        };
        let fail = |out: &mut TaskOutput, retryable: bool| {
            out.outcome = Outcome::Failed;
            out.exit_code = Some(1 + (h % 200) as i32);
            out.error = Some(format!("exit code {:?}", out.exit_code));
            out.retryable = retryable;
        };
        match behaviour {
            "fail" => fail(&mut out, h.is_multiple_of(4)),
            "retry" => fail(&mut out, true),
            "flaky" if ctx.attempt <= (out_k % 3) as u32 => fail(&mut out, true),
            "slow" => out.outcome = wait(1 + h % 4).await,
            // A task that never ends by itself: a timeout or cancellation ends it, or, with
            // neither, a failure after a while (a real one would run forever).
            "hang" => {
                out.outcome = wait(30).await;
                if out.outcome == Outcome::Success {
                    fail(&mut out, false);
                }
            }
            "timeout" => {
                out.outcome = Outcome::Timeout;
                out.exit_code = None;
            }
            _ => {}
        }
        if out.outcome == Outcome::Timeout {
            out.error = Some("timed out".into());
        }
        if out.outcome == Outcome::Cancelled {
            out.error = Some("cancelled".into());
        }
        out
    }
}

impl Executor for Fake {
    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let out = self.attempt(&ctx).await;
            let seen = Self::texts(ctx.task)
                .iter()
                .flat_map(|t| Vars::referenced(t))
                .filter(|n| n.starts_with("tasks."))
                .map(|n| {
                    let v = ctx.vars.get(&n);
                    (n, v)
                })
                .collect();
            self.log.lock().unwrap().push(Attempt {
                task: ctx.task.name.clone(),
                attempt: ctx.attempt,
                outcome: out.outcome,
                seen,
            });
            out
        })
    }
}

/// Keeps every event; its flushes sometimes yield, so completions and starts interleave.
#[derive(Default)]
struct Events {
    log: Mutex<Vec<Event>>,
    yield_on_flush: bool,
}

impl EventSink for Events {
    fn on_event(&self, event: &Event) {
        self.log.lock().unwrap().push(event.clone());
    }

    fn flush(&self) -> BoxFuture<'_, picoflow_lib::Result<()>> {
        Box::pin(async move {
            if self.yield_on_flush {
                future::yield_now().await;
            }
            Ok(())
        })
    }
}

/// Picks one of `items`.
fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// A random workflow in YAML using what the schema offers: dependencies (and the
/// `on_success`/`on_failure` shorthands), `run_if`, `when`, loops over literal lists and
/// over outputs, outputs from stdout and the output file, references to them, retries,
/// timeouts, `continue_on_failure`, workflow defaults and handlers. Mostly valid; now and
/// then a reference or a dependency the validator must refuse.
fn generate_workflow(rng: &mut Rng) -> String {
    let n = 1 + rng.below(8);
    let mut y = String::from("name: fz\n");
    if rng.below(2) == 0 {
        y.push_str("config:\n");
        y.push_str(&format!("  max_parallel: {}\n", 1 + rng.below(4)));
        if rng.below(2) == 0 {
            y.push_str(&format!("  retry_default: {}\n", rng.below(3)));
        }
        if rng.below(3) == 0 {
            y.push_str(&format!("  timeout_default: {}\n", rng.below(4)));
        }
    }
    y.push_str("tasks:\n");
    let mut deps_of: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let mut deps: Vec<usize> = Vec::new();
        if i > 0 {
            for _ in 0..rng.below(4) {
                let d = rng.below(i);
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        y.push_str(&task_yaml(rng, &format!("t{i}"), i, n, &deps, false));
        deps_of.push(deps);
    }
    if rng.below(3) == 0 {
        for list in ["on_success", "on_failure", "on_exit"] {
            let k = rng.below(3);
            if k == 0 {
                continue;
            }
            y.push_str(&format!("{list}:\n"));
            for j in 0..k {
                let all: Vec<usize> = (0..n).collect();
                y.push_str(&task_yaml(rng, &format!("{list}{j}"), n, n, &all, true));
            }
        }
    }
    y
}

/// One task (or handler) of [`generate_workflow`]; `known` are the tasks it may read.
fn task_yaml(
    rng: &mut Rng,
    name: &str,
    i: usize,
    n: usize,
    known: &[usize],
    handler: bool,
) -> String {
    let mut y = format!("  - name: {name}\n");
    let custom = rng.below(3) == 0;
    y.push_str(&format!(
        "    type: {}\n",
        if custom { "fake" } else { "shell" }
    ));
    // A reference to an output or the status of a task this one may read.
    let reference = |rng: &mut Rng| -> String {
        if rng.below(60) == 0 {
            // Sometimes one the validator must refuse (not an ancestor, or unknown).
            return format!("${{tasks.t{}.outputs.out}}", rng.below(n + 1));
        }
        if known.is_empty() {
            return pick(rng, &["${execution.id}", "${workflow.name}", "${FUZZ_ENV}"]).into();
        }
        let t = known[rng.below(known.len())];
        let field = pick(
            rng,
            &["out", "out", "list", "js", "first", "code", "k", "big"],
        );
        match rng.below(5) {
            0 => format!("${{tasks.t{t}.status}}"),
            _ => format!("${{tasks.t{t}.outputs.{field}}}"),
        }
    };
    let is_loop = !handler && rng.below(4) == 0;
    if !handler && !known.is_empty() {
        let list: Vec<String> = known.iter().map(|d| format!("t{d}")).collect();
        match rng.below(8) {
            0 => y.push_str(&format!("    on_failure: [{}]\n", list.join(", "))),
            1 => y.push_str(&format!("    on_success: [{}]\n", list.join(", "))),
            _ => {
                y.push_str(&format!("    depends_on: [{}]\n", list.join(", ")));
                if rng.below(4) == 0 {
                    let rule = pick(
                        rng,
                        &["all_success", "all_done", "any_failed", "all_failed"],
                    );
                    y.push_str(&format!("    run_if: {rule}\n"));
                }
            }
        }
    } else if !handler && rng.below(40) == 0 {
        // A dependency on itself or on a later task: a cycle or an unknown name.
        y.push_str(&format!("    depends_on: [t{}]\n", i + rng.below(2)));
    }
    if rng.below(3) == 0 {
        y.push_str(&format!("    retry: {}\n", rng.below(4)));
    }
    if rng.below(3) == 0 {
        let t = pick(rng, &["1", "2", "3", "1s", "2s", "0"]);
        y.push_str(&format!("    timeout: {t}\n"));
    }
    if rng.below(5) == 0 {
        y.push_str("    continue_on_failure: true\n");
    }
    if rng.below(2) == 0 {
        let mut outs = vec!["out: stdout"];
        for o in [
            "js: stdout.a.b.2.c",
            "first: stdout.0",
            "code: exit_code",
            "err: stderr",
            "list: stdout",
        ] {
            if rng.below(3) == 0 {
                outs.push(o);
            }
        }
        if rng.below(40) == 0 {
            outs.push(pick(rng, &["bad: body", "9x: stdout", "s: status"]));
        }
        y.push_str(&format!("    outputs: {{{}}}\n", outs.join(", ")));
    }
    if rng.below(3) == 0 {
        let r = reference(rng);
        let when = match rng.below(11) {
            0 => format!("{r} == 'yes'"),
            1 => format!("{r} == 'success' || {r} == 'failed'"),
            2 => format!("{r} in ['a', 'b', 'yes', '']"),
            3 => format!("!({r} >= 1) && {r} != ''"),
            4 => "${execution.status} == 'failed'".to_string(),
            5 => "${failed_tasks} != ''".to_string(),
            6 => pick(rng, &["true", "false"]).to_string(),
            7 => "${workflow.name} == 'fz' && ${FUZZ_ENV} == 'on'".to_string(),
            8 => format!("'a' in {r}"),
            _ => match is_loop {
                true => pick(
                    rng,
                    &[
                        "${item} != 'b'",
                        "${item_index} < 3",
                        "${item} in ['a', 'c', '1']",
                        "${item} == ${item}",
                    ],
                )
                .to_string(),
                false => format!("{r} != {r}"),
            },
        };
        y.push_str(&format!("    when: \"{when}\"\n"));
    }
    if is_loop {
        let items = match rng.below(9) {
            0 => "[a, b, c]".to_string(),
            1 => "[1, 2, 3, 2.5, true]".to_string(),
            2 => "[]".to_string(),
            3 => "[\"x/y\", \"[z]\", \"..\", \"${item}\", \"\"]".to_string(),
            4 if rng.below(20) == 0 => json_numbers(picoflow_lib::MAX_ITEMS + 1),
            4 if rng.below(1000) == 0 => json_numbers(picoflow_lib::MAX_ITEMS),
            5 if rng.below(40) == 0 => "[{a: 1}, [2]]".to_string(),
            6 if rng.below(40) == 0 => "{a: 1}".to_string(),
            7 if rng.below(40) == 0 => "\"no reference\"".to_string(),
            8 => format!("\"{}\"", reference(rng)),
            _ if !known.is_empty() => {
                let t = known[rng.below(known.len())];
                let field = pick(rng, &["out", "list", "first", "js"]);
                format!("\"${{tasks.t{t}.outputs.{field}}}\"")
            }
            _ => format!("\"{}\"", reference(rng)),
        };
        y.push_str(&format!("    iterate_over: {items}\n"));
    }
    // The command: how the fake ends it, which output it prints and which file it writes,
    // then values it reads (echoed by `echo`, hashed by `rand`).
    let behaviour = pick(rng, BEHAVIOURS);
    let mut words = vec![
        behaviour.to_string(),
        match rng.below(40) {
            0 => STDOUTS,
            _ => rng.below(STDOUTS),
        }
        .to_string(),
        rng.below(FILES).to_string(),
    ];
    for _ in 0..rng.below(3) {
        words.push(match rng.below(4) {
            0 if is_loop => "${item}".to_string(),
            1 if is_loop => "${item_index}".to_string(),
            2 => "${execution.id}".to_string(),
            _ => reference(rng),
        });
    }
    let command = words.join(" ");
    if custom {
        y.push_str(&format!(
            "    config: {{command: '{command}', nested: {{list: [1, {{deep: '${{FUZZ_ENV}}'}}]}}}}\n"
        ));
    } else if rng.below(3) == 0 {
        let args: Vec<String> = words[1..].iter().map(|w| format!("'{w}'")).collect();
        y.push_str(&format!(
            "    config: {{command: {}, args: [{}]}}\n",
            words[0],
            args.join(", ")
        ));
    } else {
        y.push_str(&format!("    config: {{command: '{command}'}}\n"));
    }
    y
}

/// What the engine target reached, summed over its runs.
#[derive(Default, Debug)]
struct Reach {
    generated: u64,
    rejected: u64,
    runs: u64,
    cancelled_runs: u64,
    stored_runs: u64,
    attempts: u64,
    values_given: u64,
    by_state: BTreeMap<&'static str, u64>,
    by_status: BTreeMap<&'static str, u64>,
    when_true: u64,
    when_false: u64,
    loops_run: u64,
    resumed_runs: u64,
    resumed_tasks: u64,
    loops_over_outputs: u64,
    largest_loop: usize,
    loop_items: u64,
    loops_empty: u64,
    loops_refused: u64,
    timeouts: u64,
    retries: u64,
    handlers: u64,
    skipped_rule_or_failure: u64,
}

/// `run`, or a panic when it has not ended after a minute: the engine hangs (every run of
/// the fake executor takes milliseconds).
async fn watchdog<T>(run: impl std::future::Future<Output = T>) -> T {
    future::or(run, async {
        smol::Timer::after(Duration::from_secs(60)).await;
        panic!("the run has not ended after a minute");
    })
    .await
}

/// The task a report or record name belongs to: a loop's item `t3[a]` to `t3`.
fn base_name(name: &str) -> &str {
    name.split('[').next().unwrap_or(name)
}

/// Runs one workflow through the engine with the fake executor and checks what it did.
fn run_engine(text: &str, reach: &RefCell<Reach>, store: &Store, root: &Path) {
    reach.borrow_mut().generated += 1;
    let seed = fnv(&[text.as_bytes()]);
    let fake = Fake {
        seed,
        log: Arc::default(),
    };
    let mut registry = Registry::empty();
    registry.register("shell", fake.clone());
    registry.register("fake", fake.clone());
    let Ok(wf) = parse_workflow(text, "fuzz.yaml", &registry) else {
        reach.borrow_mut().rejected += 1;
        return;
    };
    // Now and then the run is cancelled after a few milliseconds.
    let cancel_after = (seed >> 44)
        .is_multiple_of(10)
        .then(|| Duration::from_millis((seed >> 48) % 6));
    let mut settings = EngineSettings::default();
    settings.retry.default_count = (seed % 3) as u32;
    // Retries follow at once, except in runs that are cancelled soon: there a retry's
    // delay of a second is cut short, as a daemon's stop cuts it.
    settings.retry.max_backoff_seconds = u64::from(cancel_after.is_some());
    settings.timeout.default_seconds = (seed >> 8) % 3;
    settings.timeout.max_seconds = (seed >> 16) % 4;
    settings.max_parallel = 1 + ((seed >> 24) % 4) as u32;
    let events = Arc::new(Events {
        yield_on_flush: (seed >> 32).is_multiple_of(2),
        ..Events::default()
    });
    let mut vars = Vars::isolated();
    vars.set(
        "FUZZ_ENV",
        if (seed >> 33).is_multiple_of(2) {
            "on"
        } else {
            "$"
        },
    );
    let mut engine = Engine::new(registry)
        .with_settings(settings.clone())
        .with_sink(events.clone())
        .with_vars(vars.clone())
        .with_run_dir(root.join("run"));
    let stored = (seed >> 36).is_multiple_of(16);
    if stored {
        engine = engine.with_sink(store.sink());
    }
    if (seed >> 40).is_multiple_of(8) {
        engine = engine.with_log_dir(root.join("logs"));
    }
    let (canceller, token) = CancelToken::new();
    let opts = RunOptions {
        cancel: token,
        ..RunOptions::default()
    };
    let result = smol::block_on(async {
        let cancel = async {
            if let Some(d) = cancel_after {
                smol::Timer::after(d).await;
                canceller.cancel();
            }
        };
        let (result, ()) = future::zip(watchdog(engine.run(&wf, opts)), cancel).await;
        result
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => panic!("the run failed: {e}"),
    };
    let _ = std::fs::remove_dir_all(root.join("logs"));
    let events = std::mem::take(&mut *events.log.lock().unwrap());
    let attempts = std::mem::take(&mut *fake.log.lock().unwrap());
    let cancelled = cancel_after.is_some();
    check_run(&wf, &settings, &report, &events, &attempts, cancelled);
    if report.execution.status == WorkflowStatus::Interrupted {
        let kept = resume(
            &wf, &settings, vars, seed, &report, &events, &attempts, root,
        );
        let mut r = reach.borrow_mut();
        r.resumed_runs += 1;
        r.resumed_tasks += kept as u64;
    }
    if stored {
        let recorded = store.execution(&report.execution.id).unwrap();
        assert_eq!(
            recorded.map(|e| e.status),
            Some(report.execution.status),
            "the store holds another status"
        );
        let tasks = store.task_executions(&report.execution.id).unwrap();
        for a in picoflow_lib::last_attempts(&tasks) {
            assert!(
                a.status.is_final() && a.status != TaskState::Retrying,
                "the store left {} {}",
                a.task_name,
                a.status
            );
        }
    }

    let mut r = reach.borrow_mut();
    r.runs += 1;
    r.cancelled_runs += u64::from(cancelled);
    r.stored_runs += u64::from(stored);
    r.attempts += attempts.len() as u64;
    r.values_given += attempts.iter().map(|a| a.seen.len() as u64).sum::<u64>();
    *r.by_status
        .entry(report.execution.status.as_str())
        .or_default() += 1;
    for t in &report.tasks {
        *r.by_state.entry(t.state.as_str()).or_default() += 1;
        if wf.handlers.all().any(|(_, h)| h.name == t.name) {
            r.handlers += 1;
        }
    }
    for e in &events {
        match e {
            Event::TaskStarted(rec) => {
                let task = wf.task(base_name(&rec.task_name));
                if rec.attempt == 1 && task.is_some_and(|t| t.when.is_some()) {
                    r.when_true += 1;
                }
                if rec.task_name.contains('[') {
                    r.loop_items += 1;
                }
            }
            Event::TaskSkipped(rec) => {
                let why = rec.error_message.as_deref().unwrap_or_default();
                if why.starts_with("skipped: condition is false") {
                    r.when_false += 1;
                } else if why.contains("iterate_over has no items") {
                    r.loops_empty += 1;
                } else {
                    r.skipped_rule_or_failure += 1;
                }
            }
            Event::TaskFinished { record, retry_in } => {
                r.retries += u64::from(retry_in.is_some());
                if record.error_message.as_deref() == Some("timed out") {
                    r.timeouts += 1;
                }
                let why = record.error_message.as_deref().unwrap_or_default();
                if !record.task_name.contains('[') && why.starts_with("iterate_over") {
                    r.loops_refused += 1;
                }
            }
            _ => {}
        }
    }
    for t in wf.tasks.iter().filter(|t| t.iterate_over.is_some()) {
        let prefix = format!("{}[", t.name);
        let items = report
            .tasks
            .iter()
            .filter(|x| x.name.starts_with(&prefix))
            .count();
        if items > 0 {
            r.loops_run += 1;
            r.loops_over_outputs += u64::from(matches!(t.iterate_over, Some(Items::From(_))));
            r.largest_loop = r.largest_loop.max(items);
        }
    }
}

/// Resumes an interrupted run from the records its events left, as `run --resume` does from
/// the store, and checks the resumed run: what had finished is kept, not run again, and the
/// rest runs to an end. Returns how many tasks were kept.
#[allow(clippy::too_many_arguments)]
fn resume(
    wf: &Workflow,
    settings: &EngineSettings,
    vars: Vars,
    seed: u64,
    first: &RunReport,
    events: &[Event],
    attempts: &[Attempt],
    root: &Path,
) -> usize {
    // The last version of each record, in the order they were made.
    let mut records: Vec<TaskExecution> = Vec::new();
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        let rec = match e {
            Event::TaskStarted(r) | Event::TaskSkipped(r) => r,
            Event::TaskFinished { record, .. } => record,
            _ => continue,
        };
        match at.get(rec.id.as_str()) {
            Some(&k) => records[k] = rec.clone(),
            None => {
                at.insert(&rec.id, records.len());
                records.push(rec.clone());
            }
        }
    }
    let fake = Fake {
        seed: seed.rotate_left(17),
        log: Arc::default(),
    };
    let mut registry = Registry::empty();
    registry.register("shell", fake.clone());
    registry.register("fake", fake.clone());
    let mut settings = settings.clone();
    settings.retry.max_backoff_seconds = 0;
    let sink = Arc::new(Events::default());
    let engine = Engine::new(registry)
        .with_settings(settings.clone())
        .with_sink(sink.clone())
        .with_vars(vars)
        .with_run_dir(root.join("run"));
    let opts = RunOptions {
        resume: Some(ResumeFrom {
            execution: first.execution.clone(),
            tasks: records.clone(),
        }),
        ..RunOptions::default()
    };
    let report = smol::block_on(watchdog(engine.run(wf, opts)))
        .unwrap_or_else(|e| panic!("the resumed run failed: {e}"));
    assert_eq!(report.execution.id, first.execution.id, "another execution");
    let events = std::mem::take(&mut *sink.log.lock().unwrap());
    let again = std::mem::take(&mut *fake.log.lock().unwrap());
    check_run(wf, &settings, &report, &events, &again, false);
    let last: BTreeMap<&str, &TaskExecution> = picoflow_lib::last_attempts(&records)
        .into_iter()
        .map(|a| (a.task_name.as_str(), a))
        .collect();
    let ran_again: std::collections::BTreeSet<&str> =
        again.iter().map(|a| a.task.as_str()).collect();
    let outcomes: BTreeMap<(&str, u32), Outcome> = attempts
        .iter()
        .map(|a| ((a.task.as_str(), a.attempt), a.outcome))
        .collect();
    let mut kept = 0;
    for r in &report.tasks {
        let ran = ran_again.contains(r.name.as_str());
        if r.resumed {
            kept += 1;
            assert!(
                !ran,
                "{} was kept from the earlier run and ran again",
                r.name
            );
        }
        let Some(before) = last.get(r.name.as_str()) else {
            continue;
        };
        if before.status == TaskState::Success {
            assert!(r.resumed && !ran, "{} had succeeded and ran again", r.name);
        }
        // An attempt the stop cut short ran to no end: it runs again.
        let stopped = outcomes.get(&(r.name.as_str(), before.attempt)) == Some(&Outcome::Cancelled);
        if stopped {
            assert!(
                !r.resumed,
                "{} was stopped while it ran and was kept as finished",
                r.name
            );
        }
    }
    kept
}

/// The engine's invariants over one run.
fn check_run(
    wf: &Workflow,
    settings: &EngineSettings,
    report: &RunReport,
    events: &[Event],
    attempts: &[Attempt],
    cancelled: bool,
) {
    let status = report.execution.status;
    // What the executor said, by task and attempt.
    let said: BTreeMap<(&str, u32), Outcome> = attempts
        .iter()
        .map(|a| ((a.task.as_str(), a.attempt), a.outcome))
        .collect();
    assert!(report.execution.finished_at.is_some(), "no end recorded");
    assert!(
        matches!(events.first(), Some(Event::WorkflowStarted(_))),
        "the first event is not the start"
    );
    assert!(
        matches!(events.last(), Some(Event::WorkflowFinished(e)) if e.status == status),
        "the last event is not the end with the report's status"
    );
    let handler = |name: &str| {
        wf.handlers
            .all()
            .find(|(_, h)| h.name == name)
            .map(|(_, h)| h)
    };
    let task_of = |name: &str| wf.task(base_name(name)).or_else(|| handler(name));
    // Every attempt that started ended, once, in an end state, after it started; the fake's
    // outcome and the record agree.
    let mut open: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
    let mut last_event: BTreeMap<&str, usize> = BTreeMap::new();
    let mut final_state: BTreeMap<&str, TaskState> = BTreeMap::new();
    let mut started_at: BTreeMap<&str, usize> = BTreeMap::new();
    // Attempts recorded `retrying`, by id, and the last state recorded for each task.
    let mut retrying: BTreeMap<&str, &str> = BTreeMap::new();
    let mut last_state: BTreeMap<&str, TaskState> = BTreeMap::new();
    let mut last_outputs: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for (at, e) in events.iter().enumerate() {
        match e {
            Event::TaskStarted(rec) => {
                assert!(
                    !final_state.contains_key(rec.task_name.as_str()),
                    "{} started again after it ended",
                    rec.task_name
                );
                assert!(
                    open.insert(&rec.id, (&rec.task_name, rec.attempt))
                        .is_none(),
                    "attempt {} started twice",
                    rec.id
                );
                assert!(
                    !open
                        .values()
                        .any(|(n, a)| *n == rec.task_name && *a != rec.attempt),
                    "two attempts of {} at once",
                    rec.task_name
                );
                started_at.entry(&rec.task_name).or_insert(at);
                last_event.insert(&rec.task_name, at);
            }
            Event::TaskFinished { record, retry_in } => {
                let name = record.task_name.as_str();
                if let Some((n, a)) = open.remove(record.id.as_str()) {
                    assert_eq!((n, a), (name, record.attempt), "an attempt changed name");
                    let outcome = *said
                        .get(&(name, record.attempt))
                        .unwrap_or_else(|| panic!("{name} #{} never ran", record.attempt));
                    if record.status == TaskState::Success {
                        assert_eq!(
                            outcome,
                            Outcome::Success,
                            "{name} #{} recorded as success, its executor said otherwise",
                            record.attempt
                        );
                    }
                    if outcome != Outcome::Success {
                        assert_ne!(record.status, TaskState::Success);
                    }
                } else if retrying.remove(record.id.as_str()).is_some() {
                    // A retry the run's stop cut short: the attempt is recorded again, failed.
                    assert!(cancelled, "{name}: a retry cut short in a run not stopped");
                    assert_eq!(
                        record.status,
                        TaskState::Failed,
                        "{name}: a retry cut short"
                    );
                    assert!(
                        record
                            .error_message
                            .as_deref()
                            .is_some_and(|m| m.starts_with(picoflow_lib::INTERRUPTED)),
                        "{name}: a retry cut short is not marked interrupted"
                    );
                } else {
                    // Ended without running: a loop whose items could not be built.
                    assert!(!said.contains_key(&(name, 1)), "{name} ended twice");
                }
                assert_eq!(
                    retry_in.is_some(),
                    record.status == TaskState::Retrying,
                    "{name}: a retry delay goes with the retrying state only"
                );
                assert!(record.finished_at.is_some(), "{name} has no end time");
                // What a task publishes: every output it names when it succeeded, nothing
                // when it did not.
                if let Some(t) = task_of(name) {
                    let published = record.outputs.as_ref();
                    match record.status {
                        TaskState::Success => assert!(
                            t.outputs
                                .iter()
                                .all(|(k, _)| published.is_some_and(|p| p.contains_key(k))),
                            "{name} succeeded without the outputs it names: {published:?}"
                        ),
                        _ => assert!(published.is_none(), "{name} published after a failure"),
                    }
                }
                if record.status == TaskState::Retrying {
                    retrying.insert(&record.id, name);
                }
                last_state.insert(name, record.status);
                last_outputs.insert(name, record.outputs.clone().unwrap_or_default());
                if record.status != TaskState::Retrying {
                    assert!(
                        record.status.is_final(),
                        "{name} ended in {}",
                        record.status
                    );
                    final_state.insert(name, record.status);
                }
                last_event.insert(name, at);
            }
            Event::TaskSkipped(rec) => {
                assert_eq!(rec.status, TaskState::Skipped);
                assert!(
                    final_state
                        .insert(&rec.task_name, TaskState::Skipped)
                        .is_none(),
                    "{} ended twice",
                    rec.task_name
                );
                last_event.insert(&rec.task_name, at);
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "attempts without an end: {open:?}");
    for (name, state) in &last_state {
        assert_ne!(
            *state,
            TaskState::Retrying,
            "{name}: its last record says a retry follows, after the run"
        );
    }
    let mut made: BTreeMap<&str, u32> = BTreeMap::new();
    for a in attempts {
        *made.entry(&a.task).or_default() += 1;
    }
    for (name, n) in made {
        let t = task_of(name).unwrap_or_else(|| panic!("unknown task {name} ran"));
        let retries = t
            .retry
            .or(wf.config.retry_default)
            .unwrap_or(settings.retry.default_count);
        assert!(
            n <= 1 + retries,
            "{name} made {n} attempts with {retries} retries"
        );
    }
    // The report: every task, each in the state its last event gave it.
    for t in &wf.tasks {
        let mine: Vec<&TaskReport> = report
            .tasks
            .iter()
            .filter(|r| base_name(&r.name) == t.name)
            .collect();
        assert!(!mine.is_empty(), "{} is missing from the report", t.name);
        for r in mine {
            if !cancelled {
                assert!(
                    r.state.is_final() && r.state != TaskState::Retrying,
                    "{} left {}",
                    r.name,
                    r.state
                );
            }
            assert!(
                !matches!(r.state, TaskState::Running | TaskState::Retrying),
                "{} reported {}",
                r.name,
                r.state
            );
            if let Some(&s) = final_state.get(r.name.as_str()) {
                assert_eq!(r.state, s, "{}: report and last record differ", r.name);
            } else if r.state != TaskState::Pending && !r.resumed {
                // A loop whose items ran: its own state is not recorded, only its items'.
                assert!(
                    t.iterate_over.is_some() && r.name == t.name,
                    "{} reported {} without a record",
                    r.name,
                    r.state
                );
            }
        }
    }
    let dag: Vec<&TaskReport> = report
        .tasks
        .iter()
        .filter(|r| handler(&r.name).is_none())
        .collect();
    let failed_without_leave = |r: &&&TaskReport| {
        r.state.is_failure() && !wf.task(base_name(&r.name)).unwrap().continue_on_failure
    };
    if !cancelled {
        match status {
            WorkflowStatus::Success => assert!(
                !dag.iter().any(|r| failed_without_leave(&r)),
                "a run with a failed task succeeded"
            ),
            WorkflowStatus::Failed => assert!(
                dag.iter().any(|r| failed_without_leave(&r)),
                "a run failed without a failed task"
            ),
            s => panic!("a run ended {s}"),
        }
    }
    let e = &report.execution;
    assert_eq!(e.total_tasks as usize, dag.len(), "total_tasks");
    assert_eq!(
        e.successful_tasks as usize,
        dag.iter().filter(|r| r.state == TaskState::Success).count(),
        "successful_tasks"
    );
    // A task the run's stop cut short is interrupted, not failed.
    assert_eq!(
        e.failed_tasks as usize,
        dag.iter()
            .filter(|r| r.state.is_failure() && !picoflow_lib::is_interrupted(r.error.as_deref()))
            .count(),
        "failed_tasks"
    );
    // Order: a task starts after every task it depends on has ended, and not at all after
    // one failed (unless a rule asks for it).
    for t in &wf.tasks {
        let first = started_at
            .iter()
            .filter(|(n, _)| base_name(n) == t.name)
            .map(|(_, &at)| at)
            .min();
        let Some(first) = first else { continue };
        for d in &t.depends_on {
            let family: Vec<(&&str, &usize)> = last_event
                .iter()
                .filter(|(n, _)| base_name(n) == d)
                .collect();
            assert!(
                family.iter().all(|(_, &at)| at < first),
                "{} started before {d} ended",
                t.name
            );
            let dep = wf.task(d).unwrap();
            let dep_failed = report
                .tasks
                .iter()
                .filter(|r| base_name(&r.name) == d)
                .any(|r| r.state.is_failure());
            if dep_failed && !dep.continue_on_failure && t.run_if == RunIf::AllSuccess {
                panic!("{} started although {d} failed", t.name);
            }
        }
    }
    // What an attempt was given of another task is what that task ended with.
    let reports: BTreeMap<&str, &TaskReport> =
        report.tasks.iter().map(|r| (r.name.as_str(), r)).collect();
    for a in attempts {
        for (name, value) in &a.seen {
            let Some(rest) = name.strip_prefix("tasks.") else {
                continue;
            };
            let (other, field) = match rest.split_once(".outputs.") {
                Some((o, k)) => (o, Some(k)),
                None => (rest.trim_end_matches(".status"), None),
            };
            let Some(t) = wf.task(other).filter(|t| t.iterate_over.is_none()) else {
                continue;
            };
            let Some(r) = reports.get(t.name.as_str()) else {
                continue;
            };
            if r.resumed {
                continue;
            }
            let expected = match field {
                None => Some(r.state.as_str().to_string()),
                Some(k) => last_outputs.get(other).and_then(|o| o.get(k).cloned()),
            };
            assert_eq!(value, &expected, "{} was given {name} = {value:?}", a.task);
        }
    }
    // A condition written as a constant decides alone.
    for t in wf.tasks.iter().chain(wf.handlers.all().map(|(_, h)| h)) {
        let ran = started_at.keys().any(|n| base_name(n) == t.name);
        if t.when.as_deref() == Some("false") {
            assert!(!ran, "{} ran with when: false", t.name);
        }
    }
    // A loop over a written list has one task per item.
    for t in &wf.tasks {
        if let Some(Items::List(list)) = &t.iterate_over {
            let items = report
                .tasks
                .iter()
                .filter(|r| r.name.starts_with(&format!("{}[", t.name)))
                .count();
            assert!(
                items == 0 || items == list.len(),
                "{}: {items} tasks for {} items",
                t.name,
                list.len()
            );
        }
    }
    // A task left pending means the run was stopped.
    if report.tasks.iter().any(|r| r.state == TaskState::Pending) {
        assert_eq!(status, WorkflowStatus::Interrupted, "pending tasks");
    }
    // Handlers run by the execution's status, after the whole DAG.
    for (list, h) in wf.handlers.all() {
        if report.tasks.iter().any(|r| r.name == h.name) {
            let due = match list {
                "on_success" => status == WorkflowStatus::Success,
                "on_failure" => status == WorkflowStatus::Failed,
                _ => status != WorkflowStatus::Interrupted,
            };
            assert!(
                due,
                "{list} handler {} ran after a run that ended {status}",
                h.name
            );
        }
    }
    let last_dag = last_event
        .iter()
        .filter(|(n, _)| handler(n).is_none())
        .map(|(_, &at)| at)
        .max();
    for (n, &at) in &started_at {
        if handler(n).is_some() {
            assert!(
                last_dag.is_none_or(|l| l < at),
                "handler {n} ran before the DAG ended"
            );
        }
    }
}

#[test]
fn engine_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-engine");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::open(root.join("state.redb")).unwrap();
    let reach = RefCell::new(Reach::default());
    // `PICOFLOW_FUZZ_INPUT=<file>` runs one saved input (a crash file) instead.
    if let Some(file) = std::env::var_os("PICOFLOW_FUZZ_INPUT") {
        let text = std::fs::read_to_string(file).unwrap();
        run_engine(&text, &reach, &store, &root);
        eprintln!("engine: {:?}", reach.into_inner());
        return;
    }
    // Now and then a generated workflow is mutated too: names, values and numbers the
    // generator would not write, when the validator still takes them.
    let generate = |rng: &mut Rng| {
        let text = generate_workflow(rng);
        match rng.below(5) {
            0 => mutate(rng, &[text]),
            _ => text,
        }
    };
    fuzz_with("engine", generate, |text| {
        run_engine(text, &reach, &store, &root)
    });
    let r = reach.into_inner();
    eprintln!(
        "engine: {} workflows generated, {} refused by the validator, {} run ({} cancelled, {} also stored), \
         {} attempts (given {} values of other tasks); tasks by state {:?}; runs by status {:?}; conditions true {} / false {}; \
         loops run {} ({} over outputs, the largest of {} items; {} item attempts), empty {}, refused {}; {} timeouts, {} retries, {} handlers, \
         {} skipped by a rule or a failure; {} interrupted runs resumed, keeping {} tasks",
        r.generated,
        r.rejected,
        r.runs,
        r.cancelled_runs,
        r.stored_runs,
        r.attempts,
        r.values_given,
        r.by_state,
        r.by_status,
        r.when_true,
        r.when_false,
        r.loops_run,
        r.loops_over_outputs,
        r.largest_loop,
        r.loop_items,
        r.loops_empty,
        r.loops_refused,
        r.timeouts,
        r.retries,
        r.handlers,
        r.skipped_rule_or_failure,
        r.resumed_runs,
        r.resumed_tasks,
    );
    let _ = std::fs::remove_dir_all(&root);
}
