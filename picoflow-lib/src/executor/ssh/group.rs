//! Finding and stopping the remote command's processes: the marker line its script prints
//! first (its session id), and the stop sent through a second channel at a timeout or a
//! cancellation.

use std::time::Duration;

use futures_lite::{future, AsyncReadExt};

use super::Session;

/// The first thing the remote script does: print a line `PICOFLOW_GROUP_<nonce>=<pid>`
/// with its process id, which is its session's and its process group's (sshd makes the
/// command's shell a session leader). `nonce` is new for each attempt, so the command
/// cannot forge the line; the reader takes that line alone off the task's output (lines an
/// rc file of the remote account printed before it pass through, see [`GroupMarker`]).
pub(super) fn print_group(nonce: &str) -> String {
    format!("printf 'PICOFLOW_GROUP_{nonce}=%s\\n' \"$$\"; ")
}

/// Finds the line [`print_group`] printed in the remote command's stdout: every other byte
/// is passed on as output, as it arrives. Only the start of a line that may still become
/// the marker is held back (a few dozen bytes).
pub(super) struct GroupMarker {
    prefix: Vec<u8>,
    line: Vec<u8>,
    mid_line: bool,
    found: bool,
}

impl GroupMarker {
    pub(super) fn new(nonce: &str) -> GroupMarker {
        GroupMarker {
            prefix: format!("PICOFLOW_GROUP_{nonce}=").into_bytes(),
            line: Vec::new(),
            mid_line: false,
            found: false,
        }
    }

    /// Reads `data`, appending the task's output in it to `out`; the process id once the
    /// marker line is complete.
    pub(super) fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<u32> {
        for (i, &b) in data.iter().enumerate() {
            if self.found {
                out.extend_from_slice(&data[i..]);
                return None;
            }
            if self.mid_line {
                out.push(b);
                self.mid_line = b != b'\n';
                continue;
            }
            self.line.push(b);
            if b == b'\n' {
                if let Some(pid) = self.marker_pid() {
                    self.found = true;
                    self.line.clear();
                    out.extend_from_slice(&data[i + 1..]);
                    return Some(pid);
                }
                out.append(&mut self.line);
            } else if !self.may_be_marker() {
                out.append(&mut self.line);
                self.mid_line = true;
            }
        }
        None
    }

    /// The process id in `line` (ending in a newline) if it is the marker.
    fn marker_pid(&self) -> Option<u32> {
        let digits = self
            .line
            .strip_prefix(self.prefix.as_slice())?
            .strip_suffix(b"\n")?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits)
            .ok()?
            .parse::<u32>()
            .ok()
            .filter(|&p| p > 1)
    }

    fn may_be_marker(&self) -> bool {
        match self.line.strip_prefix(self.prefix.as_slice()) {
            Some(digits) => digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit),
            None => self.prefix.starts_with(&self.line),
        }
    }

    /// What is held back, at the end of the output.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.line);
    }
}

/// Stops a remote command through a new channel of the same session: SIGTERM, and SIGKILL
/// a second later, to every process of its session (`sid`, the process id of its shell,
/// which sshd made a session leader) and to the descendants of those that made sessions
/// of their own (`setsid`), found by a walk of `/proc` in `/bin/sh` (Linux). Without
/// `/proc` the signals go to the process group `sid`. Closing a channel does not stop a
/// command that runs without a terminal: sshd only closes its pipes.
pub(super) async fn stop_remote(session: &Session, sid: u32) {
    let script = format!(
        "exec /bin/sh -c '{}'",
        STOP_SCRIPT.replace("SID", &sid.to_string())
    );
    let stop = async {
        let mut channel = session.channel_session().await?;
        channel.exec(&script).await?;
        // Whatever the account's rc file prints: the channel closes only once it is read, and
        // the stop must run to its end (closing the channel early could cut it short).
        let mut printed = Vec::new();
        channel.read_to_end(&mut printed).await?;
        channel.wait_close().await
    };
    if let Err(e) = future::or(async { stop.await.map_err(|e| e.to_string()) }, async {
        smol::Timer::after(Duration::from_secs(5)).await;
        Err("no answer within 5 s".to_string())
    })
    .await
    {
        tracing::warn!(sid, error = %e, "cannot stop a remote command");
    }
}

/// The stop, in POSIX sh (no `'`: it is sent in single quotes to `/bin/sh -c`). `l` lists
/// in `M` the processes of session `S` and, by parent id, their descendants, each as
/// `pid:starttime`, and in `A` every process; the SIGKILL goes to those of the first list
/// that still have the same start time (not a new process that got a freed id) and to
/// those the second list finds. A `stat` line is `pid (comm) state ppid pgrp session …`,
/// and comm may hold spaces and `)`: the fields are read after its last `) `.
const STOP_SCRIPT: &str = r#"S=SID
if [ ! -r /proc/self/stat ]; then
  kill -TERM -$S 2>/dev/null || exit 0; sleep 1; kill -KILL -$S 2>/dev/null; exit 0
fi
l() {
  A=" "; M=" "; T=""
  for d in /proc/[0-9]*; do
    { read -r s < "$d/stat"; } 2>/dev/null || continue
    p=${s%% *}; set -- ${s##*) }
    A="$A$p:${20} "; T="$T$p $2 ${20}
"
    [ "$4" = "$S" ] && M="$M$p:${20} "
  done
  c=1
  while [ $c = 1 ]; do
    c=0
    while read -r p q t; do
      case $M in *" $p:"*) continue;; esac
      case $M in *" $q:"*) M="$M$p:$t "; c=1;; esac
    done <<EOF
$T
EOF
  done
}
l; K=$M
[ "$K" = " " ] && exit 0
for e in $K; do kill -TERM "${e%%:*}"; done 2>/dev/null
sleep 1
l
for e in $K; do case $A in *" $e "*) kill -KILL "${e%%:*}";; esac; done 2>/dev/null
for e in $M; do kill -KILL "${e%%:*}"; done 2>/dev/null
exit 0"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines an rc file prints before the marker pass through as output, whatever the
    /// reads' boundaries; only the marker line with this attempt's nonce is taken off.
    #[test]
    fn the_marker_line_is_found_after_other_output_and_taken_off_alone() {
        let text = "hello from .bashrc\nPICOFLOW_GROUP_other=77\nPICOFLOW_GROUP_n0nce=1\nPICOFLOW_GROUP_n0nce=4242\nPICOFLOW_GROUP_n0nce=5\ntask output";
        let expected = "hello from .bashrc\nPICOFLOW_GROUP_other=77\nPICOFLOW_GROUP_n0nce=1\nPICOFLOW_GROUP_n0nce=5\ntask output";
        for size in [1, 2, 5, 17, text.len()] {
            let mut marker = GroupMarker::new("n0nce");
            let mut out = Vec::new();
            let mut found = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                found.extend(marker.feed(chunk, &mut out));
            }
            marker.finish(&mut out);
            assert_eq!(found, [4242], "reads of {size}");
            assert_eq!(String::from_utf8(out).unwrap(), expected, "reads of {size}");
        }
        // No marker: everything is output, a partial marker included.
        let mut marker = GroupMarker::new("n0nce");
        let mut out = Vec::new();
        assert_eq!(marker.feed(b"a\nPICOFLOW_GROUP_n0nce=12", &mut out), None);
        marker.finish(&mut out);
        assert_eq!(out, b"a\nPICOFLOW_GROUP_n0nce=12");
        assert_eq!(
            print_group("n0nce"),
            "printf 'PICOFLOW_GROUP_n0nce=%s\\n' \"$$\"; "
        );
    }
}
