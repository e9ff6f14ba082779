//! The [`OutputSink`] the engine hands an executor for one attempt when task logs are kept
//! (CFG-004): it caps each stream at [`CAPTURE_LIMIT`] as today's capture is capped, keeps
//! what is to be written in arrival order, and leaves the writing to the execution's file
//! thread (`files.rs`), so an executor's read loop never waits on the disk.
//!
//! The bytes not yet written wait in the sink: at most the two capped streams of one attempt
//! (what its executor's capture holds in memory anyway), whatever the disk's speed. While
//! some wait, one job of the sink is queued on the file thread; it writes until none are
//! left, so a chatty task costs one job per burst of output, not one per chunk. At the
//! attempt's end the engine waits for the file thread only while writes are under way;
//! otherwise it queues the file's closing and goes on (the execution's end waits for every
//! job).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::executor::{OutputSink, Stream, CAPTURE_LIMIT};
use crate::logs::LogFile;

use super::files::Files;

/// One attempt's task log, written on the file thread.
#[derive(Debug)]
pub(super) struct LogSink<'f> {
    files: &'f Files,
    shared: Arc<Shared>,
}

/// What the sink and its jobs on the file thread share.
#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    file: Mutex<LogFile>,
}

/// What arrived and is not written yet, and how much of each stream was taken.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Whether a job that writes `bytes` is queued or running.
    queued: bool,
    taken: [usize; 2],
    marked: [bool; 2],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'f> LogSink<'f> {
    /// The sink of `file`, written through `files`.
    pub(super) fn new(files: &'f Files, file: LogFile) -> Self {
        LogSink {
            files,
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                file: Mutex::new(file),
            }),
        }
    }

    /// Ends the log once the executor is done with the sink. When its writes are done
    /// already — the usual case, a task's process outliving its last write's trip to the
    /// disk — the file is closed on the file thread without waiting for it, and why the log
    /// is incomplete, if it is, is known at once. Otherwise the end waits for the writes.
    pub(super) fn end(self) -> LogEnd {
        {
            let p = lock(&self.shared.pending);
            if p.taken == [0, 0] {
                // Given nothing: no file was made.
                return LogEnd::Done(None);
            }
            if p.queued {
                return LogEnd::Wait(Closing(self.shared.clone()));
            }
        }
        // No job writes: the file is free.
        let problem = lock(&self.shared.file).problem();
        let shared = self.shared;
        self.files.queue(Box::new(move || {
            lock(&shared.file).close();
        }));
        LogEnd::Done(problem)
    }
}

/// How a task log ends (see [`LogSink::end`]).
#[derive(Debug)]
pub(super) enum LogEnd {
    /// Ended; why the log is incomplete, if it is.
    Done(Option<String>),
    /// Its writes are still under way: [`Closing::close`] runs on the file thread behind
    /// them.
    Wait(Closing),
}

/// A task log whose end waits for its writes.
#[derive(Debug)]
pub(super) struct Closing(Arc<Shared>);

impl Closing {
    /// Closes the log and says why it is incomplete, if it is; on the file thread, after the
    /// log's writes.
    pub(super) fn close(self) -> Option<String> {
        lock(&self.0.file).close()
    }
}

impl Shared {
    /// Writes what is pending until nothing is; on the file thread.
    fn drain(&self) {
        loop {
            let bytes = {
                let mut p = lock(&self.pending);
                if p.bytes.is_empty() {
                    p.queued = false;
                    return;
                }
                std::mem::take(&mut p.bytes)
            };
            lock(&self.file).write(&bytes);
        }
    }
}

impl OutputSink for LogSink<'_> {
    fn output(&self, stream: Stream, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let idx = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut p = lock(&self.shared.pending);
        let room = CAPTURE_LIMIT.saturating_sub(p.taken[idx]);
        if room == 0 {
            if p.marked[idx] {
                return;
            }
            p.marked[idx] = true;
            p.bytes
                .extend_from_slice(b"\n[output truncated at 10 MB]\n");
        } else {
            let n = chunk.len().min(room);
            p.taken[idx] += n;
            p.bytes.extend_from_slice(&chunk[..n]);
        }
        if std::mem::replace(&mut p.queued, true) {
            return;
        }
        drop(p);
        let shared = self.shared.clone();
        self.files.queue(Box::new(move || shared.drain()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::task_log_path;

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pf-sink-{}", crate::events::new_id()))
    }

    /// Feeds `chunks` to a sink of a log at `path` and ends it as the engine does.
    fn write(path: &std::path::Path, chunks: &[(Stream, &[u8])]) -> Option<String> {
        let files = Files::new(1);
        let sink = LogSink::new(&files, LogFile::new(path.to_path_buf(), None));
        for (stream, chunk) in chunks {
            sink.output(*stream, chunk);
        }
        match sink.end() {
            LogEnd::Done(problem) => {
                // The file is closed by a job of its own: wait for it as the run's end does.
                smol::block_on(files.run(|| ())).unwrap();
                problem
            }
            LogEnd::Wait(closing) => smol::block_on(files.run(move || closing.close())).unwrap(),
        }
    }

    #[test]
    fn quiet_tasks_leave_no_file() {
        let dir = temp_dir();
        let path = task_log_path(&dir.join("w/run"), "t");
        assert_eq!(write(&path, &[(Stream::Stdout, b"")]), None);
        assert!(!path.exists());
    }

    #[test]
    fn lines_are_written_in_the_order_they_came() {
        let dir = temp_dir();
        let path = task_log_path(&dir.join("w/run"), "t");
        let lines: Vec<(Stream, Vec<u8>)> = (0..2000)
            .map(|k| match k % 3 {
                0 => (Stream::Stderr, format!("e{k}\n").into_bytes()),
                _ => (Stream::Stdout, format!("o{k}\n").into_bytes()),
            })
            .collect();
        let chunks: Vec<(Stream, &[u8])> = lines.iter().map(|(s, l)| (*s, &l[..])).collect();
        assert_eq!(write(&path, &chunks), None);
        let expected: Vec<u8> = lines.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_stream_is_capped_at_10_mb_once_marked() {
        let dir = temp_dir();
        let path = task_log_path(&dir.join("w/run"), "t");
        let mb = vec![b'x'; 1024 * 1024];
        let mut chunks: Vec<(Stream, &[u8])> = vec![(Stream::Stdout, &mb[..]); 12];
        chunks.push((Stream::Stderr, b"still here\n"));
        chunks.push((Stream::Stdout, b"dropped\n"));
        assert_eq!(write(&path, &chunks), None);
        let text = std::fs::read(&path).unwrap();
        let marker = b"\n[output truncated at 10 MB]\n";
        assert_eq!(text.len(), CAPTURE_LIMIT + marker.len() + 11);
        assert!(text[..CAPTURE_LIMIT].iter().all(|&b| b == b'x'));
        assert_eq!(&text[CAPTURE_LIMIT..CAPTURE_LIMIT + marker.len()], marker);
        assert!(text.ends_with(b"still here\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_that_cannot_be_written_says_why_at_the_end() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file where the execution's directory should be.
        let blocker = dir.join("exec");
        std::fs::write(&blocker, "").unwrap();
        let problem = write(&task_log_path(&blocker, "t"), &[(Stream::Stdout, b"hi\n")]);
        let p = problem.expect("a problem");
        assert!(p.contains("t.log") && p.contains("not written"), "{p}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_whose_writes_are_done_ends_without_waiting() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("exec");
        std::fs::write(&blocker, "").unwrap();
        let files = Files::new(1);
        let good = task_log_path(&dir.join("w/run"), "t");
        let bad = task_log_path(&blocker, "t");
        for (path, fails) in [(good.clone(), false), (bad, true)] {
            let sink = LogSink::new(&files, LogFile::new(path, None));
            sink.output(Stream::Stdout, b"hi\n");
            // Jobs run in order: once this one has, the sink's write has too.
            smol::block_on(files.run(|| ())).unwrap();
            match sink.end() {
                LogEnd::Done(problem) => assert_eq!(problem.is_some(), fails, "{problem:?}"),
                LogEnd::Wait(_) => panic!("the writes were done"),
            }
        }
        smol::block_on(files.run(|| ())).unwrap();
        assert_eq!(std::fs::read_to_string(&good).unwrap(), "hi\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
