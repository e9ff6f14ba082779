//! `type: ssh` (placeholder until the SSH executor lands).
use super::{BoxFuture, Executor, TaskContext, TaskOutput};

#[derive(Debug, Default)]
pub(crate) struct SshExecutor;

impl Executor for SshExecutor {
    fn execute<'a>(&'a self, _ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async { TaskOutput::failed("ssh executor not implemented yet", false) })
    }
}
