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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use picoflow_lib::expr::{is_reference_name, Expr};
use picoflow_lib::{
    parse_duration, parse_workflow, template, Config, Registry, Schedule, TEMPLATE_NAMES,
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
        let input = mutate(&mut rng, corpus);
        runs += 1;
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let _ = std::panic::take_hook();
            let out = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(format!("fuzz-crash-{name}-{seed}"));
            let _ = std::fs::write(&out, &input);
            panic!(
                "{name}: panic on input {input:?} (saved to {}; seed {seed})",
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
