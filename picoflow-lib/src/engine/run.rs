//! What every task of one execution shares ([`Run`]): the prepared tasks and handlers, the
//! values they publish and read, the stop signal, the slots a loop's tasks take, the file
//! thread, and a resumed execution's earlier attempts.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use smol::lock::Semaphore;

use crate::events::TaskExecution;
use crate::executor::{CancelToken, SharedState};
use crate::expr::Expr;
use crate::flow::RunValues;
use crate::model::{Task, Workflow};

use super::files::Files;
use super::guard::WorkflowGate;
use super::resume::earlier_attempts;
use super::RunOptions;

/// What every task of one execution shares.
pub(super) struct Run<'a> {
    pub(super) wf: &'a Workflow,
    /// The tasks as they run (see `flow::prepare`), then the handlers.
    pub(super) tasks: Vec<Cow<'a, Task>>,
    /// The run values each of them reads.
    pub(super) refs: Vec<Vec<String>>,
    /// Each one's parsed `when`.
    pub(super) conditions: Vec<Option<Expr>>,
    pub(super) execution_id: String,
    /// Where task logs go, when they are kept.
    pub(super) log_dir: Option<PathBuf>,
    /// The execution's private directory of output files (see `flow::create_output_dir`).
    pub(super) output_dir: PathBuf,
    pub(super) cancel: CancelToken,
    pub(super) shared: SharedState,
    pub(super) values: RefCell<RunValues>,
    /// Bounds every attempt by `max_parallel` when loops run tasks beside the plan's.
    pub(super) slots: Option<Semaphore>,
    /// The last attempt of each task of a resumed execution, by task name.
    pub(super) earlier: HashMap<String, TaskExecution>,
    /// Where the execution's file work is done.
    pub(super) files: Files,
    /// The workflow's `requires:`, once answered.
    pub(super) gate: WorkflowGate,
}

impl<'a> Run<'a> {
    /// The shared part of execution `execution_id` of `wf`, running at most `limit` attempts
    /// at once.
    pub(super) fn new(
        wf: &'a Workflow,
        execution_id: &str,
        log_dir: Option<PathBuf>,
        output_dir: PathBuf,
        opts: &RunOptions,
        limit: usize,
    ) -> Run<'a> {
        let tasks: Vec<Cow<'a, Task>> = wf
            .tasks
            .iter()
            .chain(wf.handlers.all().map(|(_, t)| t))
            .map(crate::flow::prepare)
            .collect();
        let refs = tasks
            .iter()
            .map(|t| crate::flow::run_references(t))
            .collect();
        let conditions = tasks
            .iter()
            .map(|t| t.when.as_deref().and_then(|w| Expr::parse(w).ok()))
            .collect();
        let loops = wf.tasks.iter().any(|t| t.iterate_over.is_some());
        Run {
            wf,
            tasks,
            refs,
            conditions,
            execution_id: execution_id.to_string(),
            log_dir,
            output_dir,
            cancel: opts.cancel.clone(),
            shared: SharedState::default(),
            values: RefCell::new(RunValues::new(&wf.name, execution_id)),
            slots: loops.then(|| Semaphore::new(limit)),
            earlier: earlier_attempts(opts),
            files: Files::new(limit),
            gate: WorkflowGate::default(),
        }
    }
}
