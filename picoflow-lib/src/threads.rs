//! Named threads, started by one non-generic function with their work boxed:
//! `std::thread::Builder::spawn` is generic over the closure it runs, and each closure type
//! started through it directly carries a copy of the thread start-up code of its own.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Starts a thread named `name` that runs `job`.
#[inline(never)]
pub(crate) fn spawn(name: String, job: Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> {
    Builder::new().name(name).spawn(job)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_thread_has_its_name_and_runs_its_job() {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = super::spawn(
            "picoflow-test".into(),
            Box::new(move || {
                let name = std::thread::current().name().map(String::from);
                tx.send(name).unwrap();
            }),
        )
        .unwrap();
        handle.join().unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("picoflow-test"));
    }
}
