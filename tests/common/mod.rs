//! Helpers shared by the integration tests: temporary directories and the real binary.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "picoflow-test-{tag}-{}-{}",
            std::process::id(),
            picoflow_lib::new_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `picoflow` binary, run in `dir` with its state there.
///
/// `PICOFLOW_TEST_BIN` names another binary to test (a cross-built one, say) and
/// `PICOFLOW_TEST_RUNNER` a command line it runs under (`qemu-aarch64-static -L /`); without
/// them the tests run the binary cargo built beside them.
pub(crate) fn picoflow(dir: &Path) -> Command {
    let bin = std::env::var_os("PICOFLOW_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_picoflow")),
        PathBuf::from,
    );
    let runner = std::env::var("PICOFLOW_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    c.current_dir(dir)
        .env_remove("PICOFLOW_DB_PATH")
        .env_remove("PICOFLOW_LOG_LEVEL")
        .env_remove("PICOFLOW_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env("HOME", dir);
    c
}

/// How long one command may take before the test fails instead of hanging the suite.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Runs and returns the output; prints it for debugging. A command still running after
/// two minutes is killed and fails the test, so a hung binary cannot stall the whole suite.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start picoflow");
    let out = finish(child, &format!("{cmd:?}"));
    eprintln!(
        "--- {:?} exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for `child` (its piped streams read as they come) for at most two minutes.
pub(crate) fn finish(mut child: Child, what: &str) -> Output {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut buf).unwrap();
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
