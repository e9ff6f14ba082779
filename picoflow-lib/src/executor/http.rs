//! `type: http` (placeholder until the HTTP executor lands).
use super::{BoxFuture, Executor, TaskContext, TaskOutput};

#[derive(Debug, Default)]
pub(crate) struct HttpExecutor;

impl Executor for HttpExecutor {
    fn execute<'a>(&'a self, _ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async { TaskOutput::failed("http executor not implemented yet", false) })
    }
}
