//! `type: shell` (placeholder until the shell executor lands).
use super::{BoxFuture, Executor, TaskContext, TaskOutput};

#[derive(Debug, Default)]
pub(crate) struct ShellExecutor;

impl Executor for ShellExecutor {
    fn execute<'a>(&'a self, _ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async { TaskOutput::failed("shell executor not implemented yet", false) })
    }
}
