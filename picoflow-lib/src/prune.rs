//! Retention (CFG-005): history older than `[logs] retention_days` and task log directories
//! past that age or beyond `[logs] max_size_mb` are deleted. Recent records are never touched,
//! and neither is anything belonging to a running execution.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::error::Result;
use crate::store::Store;

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Workflow executions deleted from the state store.
    pub executions: usize,
    /// Task attempts deleted from the state store.
    pub task_executions: usize,
    /// Execution log directories deleted.
    pub log_dirs: usize,
    /// Bytes of log files deleted.
    pub log_bytes: u64,
    /// Output directories of executions that ended without removing them (a crash) deleted
    /// from the run directory ([`Config::run_dir`]).
    pub run_dirs: usize,
}

/// Prunes the store and the log directory of `config` as of `now`.
pub fn prune(store: &Store, config: &Config, now: DateTime<Utc>) -> Result<PruneReport> {
    let cutoff = now - chrono::Duration::days(i64::from(config.logs.retention_days));
    let s = store.prune(cutoff)?;
    let running: Vec<String> = store
        .executions(&crate::store::HistoryFilter {
            status: Some(crate::events::WorkflowStatus::Running),
            ..Default::default()
        })?
        .into_iter()
        .map(|e| e.id)
        .collect();
    let (log_dirs, log_bytes) = prune_logs(
        &config.logs.dir,
        cutoff.into(),
        config.logs.max_size_mb.saturating_mul(1024 * 1024),
        &running,
    );
    let run_dirs = prune_run_dirs(&config.run_dir(), &running, SystemTime::now());
    Ok(PruneReport {
        executions: s.executions,
        task_executions: s.task_executions,
        log_dirs,
        log_bytes,
        run_dirs,
    })
}

/// How long a new output directory is kept whatever its execution's record says: an
/// execution that starts while a prune reads the records makes its directory afterwards.
const RUN_DIR_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the output directories (`<run_dir>/<execution id>`) of executions that are not
/// running, left by runs that ended without removing their own (a crash, a power cut); those
/// in `keep` and those changed in the last hour stay. Nothing is deleted unless `run_dir` is
/// PicoFlow's private directory (see [`crate::private::check_dir`]), and only directories
/// are: never a link or what it points to. Returns how many were deleted.
fn prune_run_dirs(run_dir: &Path, keep: &[String], now: SystemTime) -> usize {
    if crate::private::check_dir(run_dir).is_err() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let recent = meta
            .modified()
            .is_ok_and(|m| now.duration_since(m).unwrap_or_default() < RUN_DIR_GRACE);
        if !meta.is_dir() || recent || keep.contains(&name) {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Deletes execution log directories (`<root>/<workflow>/<stamp>_<id>`) older than `cutoff`,
/// then the oldest ones until the total is at most `max_bytes`. Directories of executions in
/// `keep` are never deleted. Returns (directories, bytes) removed.
pub fn prune_logs(
    root: &Path,
    cutoff: SystemTime,
    max_bytes: u64,
    keep: &[String],
) -> (usize, u64) {
    let mut dirs: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
    let Ok(workflows) = std::fs::read_dir(root) else {
        return (0, 0);
    };
    for wf in workflows.flatten() {
        let Ok(execs) = std::fs::read_dir(wf.path()) else {
            continue;
        };
        for e in execs.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.iter().any(|id| name.ends_with(id.as_str())) {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            dirs.push((modified, path.clone(), dir_size(&path)));
        }
    }
    dirs.sort();
    let mut total: u64 = dirs.iter().map(|d| d.2).sum();
    let (mut n, mut bytes) = (0, 0);
    for (modified, path, size) in dirs {
        if modified >= cutoff && total <= max_bytes {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            n += 1;
            bytes += size;
            total -= size;
        }
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn old_and_oversized_log_dirs_go_recent_ones_stay() {
        let root = std::env::temp_dir().join(format!("pf-prune-{}", crate::events::new_id()));
        let mk = |name: &str, bytes: usize| {
            let d = root.join("wf").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("t.log"), vec![b'x'; bytes]).unwrap();
            d
        };
        let old = mk("2020-01-01_000000_old", 10);
        let recent = mk("2026-01-01_000000_new", 10);
        let running = mk("2020-01-01_000000_run", 10);
        let past = SystemTime::now() - Duration::from_secs(90 * 86400);
        let f = std::fs::File::open(&old).unwrap();
        f.set_modified(past).unwrap();
        let f = std::fs::File::open(&running).unwrap();
        f.set_modified(past).unwrap();
        let cutoff = SystemTime::now() - Duration::from_secs(30 * 86400);
        let (n, bytes) = prune_logs(&root, cutoff, u64::MAX, &["run".to_string()]);
        assert_eq!((n, bytes), (1, 10));
        assert!(!old.exists() && recent.exists() && running.exists());
        // Size bound: only 5 bytes allowed, the oldest non-running directory goes.
        let (n, _) = prune_logs(&root, cutoff, 5, &["run".to_string()]);
        assert_eq!(n, 1);
        assert!(!recent.exists() && running.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn output_dirs_of_ended_executions_go_running_and_new_ones_stay() {
        let root = std::env::temp_dir().join(format!("pf-prune-run-{}", crate::events::new_id()));
        crate::private::private_dir(&root).unwrap();
        let mk = |name: &str, age: u64| {
            let d = root.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("t.1"), "k=v\n").unwrap();
            let f = std::fs::File::open(&d).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age))
                .unwrap();
            d
        };
        let crashed = mk("crashed", 7200);
        let running = mk("running", 7200);
        let new = mk("new", 10);
        let target = root.with_extension("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        let n = prune_run_dirs(&root, &["running".to_string()], SystemTime::now());
        assert_eq!(n, 1);
        assert!(!crashed.exists() && running.exists() && new.exists());
        assert!(target.exists() && root.join("link").symlink_metadata().is_ok());
        // A run directory that is not PicoFlow's own private one is left alone.
        let open = root.with_extension("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::create_dir(open.join("x")).unwrap();
        let f = std::fs::File::open(open.join("x")).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        assert_eq!(prune_run_dirs(&open, &[], SystemTime::now()), 0);
        assert!(open.join("x").exists());
        for d in [&root, &target, &open] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
