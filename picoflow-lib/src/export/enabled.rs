//! `picoflow export sqlite`: the history in the API reference's SQLite schema (CFG-003,
//! OBS-004; `DECISIONS.md` 9), so every query of the documents runs on it unchanged.
//!
//! * **Schema.** [`SCHEMA`] is the API reference's DDL: both tables with their columns, types,
//!   `NOT NULL`, defaults, primary keys, the foreign key with `ON DELETE CASCADE`, and the
//!   seven indexes with their documented names.
//! * **Outputs.** Values tasks published go to one more table, [`OUTPUTS_SCHEMA`]'s
//!   `task_outputs` (one row per attempt and name); the documented tables stay exact, and an
//!   export made before outputs existed gets the table added.
//! * **Values.** Timestamps are UTC in SQLite's own ISO 8601 form, `YYYY-MM-DD HH:MM:SS.SSS`,
//!   so comparisons with `datetime('now', '-1 day')` and `BETWEEN '2025-11-01' AND …` work
//!   as text; statuses are lower case; one `task_executions` row per attempt.
//! * **Again and again.** Exporting into an existing export adds new executions and attempts
//!   and updates rows whose execution was still running last time; nothing is duplicated.
//! * **All or nothing.** A new file is written under a temporary name and renamed into place;
//!   an existing export is updated in one transaction. An interrupted export leaves the
//!   previous file as it was.
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::events::{TaskExecution, WorkflowExecution};

/// The API reference's schema, as written there.
pub(crate) const SCHEMA: &str = "
CREATE TABLE workflow_executions (
    id TEXT PRIMARY KEY,              -- UUID v4
    workflow_name TEXT NOT NULL,      -- Workflow name from YAML
    started_at TEXT NOT NULL,         -- ISO 8601 timestamp
    finished_at TEXT,                 -- ISO 8601 timestamp (NULL if running)
    status TEXT NOT NULL,             -- pending, running, success, failed
    duration_seconds REAL,            -- Execution duration
    total_tasks INTEGER NOT NULL,     -- Total task count
    successful_tasks INTEGER,         -- Number of successful tasks
    failed_tasks INTEGER,             -- Number of failed tasks
    created_at TEXT NOT NULL          -- Record creation timestamp
);

CREATE INDEX idx_workflow_name ON workflow_executions(workflow_name);
CREATE INDEX idx_started_at ON workflow_executions(started_at);
CREATE INDEX idx_status ON workflow_executions(status);

CREATE TABLE task_executions (
    id TEXT PRIMARY KEY,                      -- UUID v4
    workflow_execution_id TEXT NOT NULL,      -- FK to workflow_executions
    task_name TEXT NOT NULL,                  -- Task name from YAML
    status TEXT NOT NULL,                     -- pending, running, success, failed, timeout
    started_at TEXT NOT NULL,                 -- ISO 8601 timestamp
    finished_at TEXT,                         -- ISO 8601 timestamp (NULL if running)
    exit_code INTEGER,                        -- Command exit code
    stdout TEXT,                              -- Captured stdout (truncated at 10MB)
    stderr TEXT,                              -- Captured stderr (truncated at 10MB)
    attempt INTEGER NOT NULL DEFAULT 1,       -- Retry attempt number
    error_message TEXT,                       -- Error message if failed
    duration_seconds REAL,                    -- Execution duration
    created_at TEXT NOT NULL,                 -- Record creation timestamp
    FOREIGN KEY (workflow_execution_id) REFERENCES workflow_executions(id) ON DELETE CASCADE
);

CREATE INDEX idx_workflow_execution_id ON task_executions(workflow_execution_id);
CREATE INDEX idx_task_name ON task_executions(task_name);
CREATE INDEX idx_task_status ON task_executions(status);
CREATE INDEX idx_task_started_at ON task_executions(started_at);
";

/// The table of published values, beside the documented ones.
pub(crate) const OUTPUTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS task_outputs (
    task_execution_id TEXT NOT NULL,          -- FK to task_executions
    name TEXT NOT NULL,                       -- Output name
    value TEXT NOT NULL,                      -- Published value
    PRIMARY KEY (task_execution_id, name),
    FOREIGN KEY (task_execution_id) REFERENCES task_executions(id) ON DELETE CASCADE
);
";

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Workflow executions added to the file.
    pub executions_added: usize,
    /// Workflow executions already there whose row changed (they were running before).
    pub executions_updated: usize,
    /// Task attempts added.
    pub tasks_added: usize,
    /// Task attempts already there whose row changed.
    pub tasks_updated: usize,
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// A SQLite failure on the export target is an I/O error on that file (a full disk, a
/// file size limit): it names the target, never the state store, which is only read.
fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::io(path, std::io::Error::other(format!("cannot export: {e}")))
}

/// Writes `executions` (each with its attempts, fetched by `attempts`) into the SQLite file
/// at `path`, creating it with the documented schema or adding to an earlier export.
pub fn export_sqlite(
    path: &Path,
    executions: &[WorkflowExecution],
    mut attempts: impl FnMut(&str) -> Result<Vec<TaskExecution>>,
) -> Result<ExportReport> {
    // An existing target must be a file of ours, not a link: SQLite follows links, and
    // another user's file (made 0666 in a shared directory) would receive the history.
    let existing = match crate::private::open_existing(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(path, e)),
    };
    let fresh = existing
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .is_none_or(|m| m.len() == 0);
    let target: PathBuf = if fresh {
        let mut t = path.as_os_str().to_owned();
        t.push(format!(".tmp-{}", std::process::id()));
        PathBuf::from(t)
    } else {
        path.to_path_buf()
    };
    let err = db_err(path);
    let result = (|| {
        if fresh {
            // The history holds task output: a new export is 0600 (SQLite's own journal
            // files take the database's mode). An existing export keeps the mode its owner
            // gave it.
            let _ = std::fs::remove_file(&target);
            // The error names the file the user asked for, not the temporary one.
            crate::private::create_new(&target, crate::private::FILE_MODE)
                .map_err(|e| Error::io(path, e))?;
        }
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(&target, flags).map_err(&err)?;
        // The file SQLite opened is the one checked above (not one swapped in since).
        if let (false, Some(f)) = (fresh, &existing) {
            crate::private::same_file(f, path).map_err(|e| Error::io(path, e))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(&err)?;
        let tx = conn.transaction().map_err(&err)?;
        if fresh {
            tx.execute_batch(SCHEMA).map_err(&err)?;
        } else {
            check_schema(&tx, path)?;
        }
        tx.execute_batch(OUTPUTS_SCHEMA).map_err(&err)?;
        let mut report = ExportReport::default();
        {
            let mut get_exec = tx
                .prepare("SELECT status, finished_at FROM workflow_executions WHERE id = ?1")
                .map_err(&err)?;
            let mut put_exec = tx
                .prepare(
                    "INSERT INTO workflow_executions (id, workflow_name, started_at, finished_at, \
                     status, duration_seconds, total_tasks, successful_tasks, failed_tasks, \
                     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                     ON CONFLICT(id) DO UPDATE SET finished_at = excluded.finished_at, \
                     status = excluded.status, duration_seconds = excluded.duration_seconds, \
                     total_tasks = excluded.total_tasks, \
                     successful_tasks = excluded.successful_tasks, \
                     failed_tasks = excluded.failed_tasks",
                )
                .map_err(&err)?;
            let mut get_task = tx
                .prepare("SELECT status, finished_at FROM task_executions WHERE id = ?1")
                .map_err(&err)?;
            let mut put_task = tx
                .prepare(
                    "INSERT INTO task_executions (id, workflow_execution_id, task_name, status, \
                     started_at, finished_at, exit_code, stdout, stderr, attempt, \
                     error_message, duration_seconds, created_at) VALUES (?1, ?2, ?3, ?4, ?5, \
                     ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     ON CONFLICT(id) DO UPDATE SET status = excluded.status, \
                     finished_at = excluded.finished_at, exit_code = excluded.exit_code, \
                     stdout = excluded.stdout, stderr = excluded.stderr, \
                     error_message = excluded.error_message, \
                     duration_seconds = excluded.duration_seconds",
                )
                .map_err(&err)?;
            let mut put_output = tx
                .prepare(
                    "INSERT INTO task_outputs (task_execution_id, name, value) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO UPDATE SET value = excluded.value",
                )
                .map_err(&err)?;
            for e in executions {
                let finished = e.finished_at.map(ts);
                let before: Option<(String, Option<String>)> = get_exec
                    .query_row(params![e.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(&err)?;
                let changed = before
                    .as_ref()
                    .is_none_or(|(s, f)| s != e.status.as_str() || *f != finished);
                if changed {
                    put_exec
                        .execute(params![
                            e.id,
                            e.workflow_name,
                            ts(e.started_at),
                            finished,
                            e.status.as_str(),
                            e.duration_seconds,
                            e.total_tasks,
                            e.successful_tasks,
                            e.failed_tasks,
                            ts(e.created_at),
                        ])
                        .map_err(&err)?;
                    if before.is_some() {
                        report.executions_updated += 1;
                    } else {
                        report.executions_added += 1;
                    }
                } else {
                    // Finished and exported before: its attempts cannot have changed either.
                    continue;
                }
                for t in attempts(&e.id)? {
                    let finished = t.finished_at.map(ts);
                    let before: Option<(String, Option<String>)> = get_task
                        .query_row(params![t.id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                        .map_err(&err)?;
                    if before
                        .as_ref()
                        .is_some_and(|(s, f)| s == t.status.as_str() && *f == finished)
                    {
                        continue;
                    }
                    put_task
                        .execute(params![
                            t.id,
                            t.workflow_execution_id,
                            t.task_name,
                            t.status.as_str(),
                            ts(t.started_at),
                            finished,
                            t.exit_code,
                            t.stdout,
                            t.stderr,
                            t.attempt,
                            t.error_message,
                            t.duration_seconds,
                            ts(t.created_at),
                        ])
                        .map_err(&err)?;
                    for (name, value) in t.outputs.iter().flatten() {
                        put_output
                            .execute(params![t.id, name, value])
                            .map_err(&err)?;
                    }
                    if before.is_some() {
                        report.tasks_updated += 1;
                    } else {
                        report.tasks_added += 1;
                    }
                }
            }
        }
        tx.commit().map_err(&err)?;
        conn.close().map_err(|(_, e)| err(e))?;
        if fresh {
            std::fs::rename(&target, path).map_err(|e| Error::io(path, e))?;
        }
        Ok(report)
    })();
    if result.is_err() && fresh {
        let _ = std::fs::remove_file(&target);
    }
    result
}

/// Refuses to write into a SQLite file that is not an export of this schema.
fn check_schema(conn: &Connection, path: &Path) -> Result<()> {
    let expected = Connection::open_in_memory().map_err(db_err(path))?;
    expected.execute_batch(SCHEMA).map_err(db_err(path))?;
    let shape = |c: &Connection| -> rusqlite::Result<Vec<(String, String)>> {
        let mut st = c.prepare(
            "SELECT m.name, group_concat(p.name || ':' || p.type || ':' || p.\"notnull\" || ':' || \
             ifnull(p.dflt_value, '') || ':' || p.pk, ',') \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name IN ('workflow_executions', 'task_executions') \
             GROUP BY m.name ORDER BY m.name",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    let have = shape(conn).map_err(|_| not_an_export(path))?;
    let want = shape(&expected).map_err(db_err(path))?;
    if have != want {
        return Err(not_an_export(path));
    }
    Ok(())
}

fn not_an_export(path: &Path) -> Error {
    Error::Config {
        origin: path.display().to_string(),
        message: "exists and is not a PicoFlow SQLite export (tables workflow_executions and \
                  task_executions with the documented columns); choose another file"
            .into(),
    }
}
