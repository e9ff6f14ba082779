//! Helpers shared by the integration tests: temporary directories and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
pub(crate) fn picoflow(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_picoflow"));
    c.current_dir(dir)
        .env_remove("PICOFLOW_DB_PATH")
        .env_remove("PICOFLOW_LOG_LEVEL")
        .env_remove("PICOFLOW_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env("HOME", dir);
    c
}

/// Runs and returns the output; prints it for debugging.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot start picoflow");
    eprintln!(
        "--- {:?} exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
