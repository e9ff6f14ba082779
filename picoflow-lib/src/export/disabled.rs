//! Stand-in for the SQLite export in builds without the `sqlite` feature: the same API,
//! failing with an error that names the feature.
use std::path::Path;

use crate::error::{Error, Result};
use crate::events::{TaskExecution, WorkflowExecution};

/// What an export wrote (nothing, in this build).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Workflow executions added to the file.
    pub executions_added: usize,
    /// Workflow executions already there whose row changed.
    pub executions_updated: usize,
    /// Task attempts added.
    pub tasks_added: usize,
    /// Task attempts already there whose row changed.
    pub tasks_updated: usize,
}

/// Always fails: this build has no SQLite.
pub fn export_sqlite(
    _path: &Path,
    _executions: &[WorkflowExecution],
    _attempts: impl FnMut(&str) -> Result<Vec<TaskExecution>>,
) -> Result<ExportReport> {
    Err(Error::Config {
        origin: "export sqlite".into(),
        message: "this build has no `sqlite` feature; rebuild with `--features sqlite`".into(),
    })
}
