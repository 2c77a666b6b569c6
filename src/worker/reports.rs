//! What running attempts reported and the worker has not written yet: output (in order,
//! per attempt, in a bounded buffer), the latest checkpoint and the usage of each attempt,
//! and progress. Written in batches — at most every [`FLUSH_EVERY`], sooner when an
//! attempt buffered [`FLUSH_BYTES`] or ended — one statement per kind for every attempt.
//! What an attempt reported is written before its outcome (the session's tick flushes
//! first), so its log, checkpoint and usage survive however it ended; progress is the
//! exception: coalesced, and dropped when the attempt ends (the outcome sets it).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::executor::{Report, Reported, Stream, UsageDelta};
use crate::daemon::link::Link;
use crate::db::tasks::{self, OutputChunk};
use crate::error::Error;

/// Longest time reports wait to be written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Output an attempt may buffer before a write is due at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Most output buffered per attempt while the database does not take it: beyond, the
/// oldest goes (and the log says how much).
const BUFFER_MAX: usize = 4 << 20;
/// Tries of a usage write the database refuses before it is given up.
const USAGE_TRIES: u32 = 3;
/// Output one statement carries at most (about: whole attempts are taken): after an
/// outage, many attempts' buffers go in several statements, none too large to send.
const STATEMENT_MAX: usize = 8 << 20;

type Key = (i64, i32);

/// One attempt's output not yet written, and what the trim needs.
#[derive(Default)]
struct AttemptOutput {
    /// In the order written; consecutive pieces of one stream merged.
    pieces: Vec<(Stream, Vec<u8>)>,
    buffered: usize,
    /// Bytes dropped from the buffer (the database did not keep up).
    dropped: usize,
    /// Bytes written since the task's chunks were last trimmed.
    since_trim: usize,
    /// The attempt ended: what is left is written, then the entry goes.
    ended: bool,
}

impl AttemptOutput {
    fn push(&mut self, stream: Stream, data: Vec<u8>) {
        self.buffered += data.len();
        match self.pieces.last_mut() {
            Some((s, d)) if *s == stream => d.extend_from_slice(&data),
            _ => self.pieces.push((stream, data)),
        }
        // Over the bound, the oldest bytes go (a piece's start, or whole pieces).
        while self.buffered > BUFFER_MAX && !self.pieces.is_empty() {
            let excess = self.buffered - BUFFER_MAX;
            let first = &mut self.pieces[0].1;
            let n = if first.len() > excess {
                first.drain(..excess);
                excess
            } else {
                let n = first.len();
                self.pieces.remove(0);
                n
            };
            self.buffered -= n;
            self.dropped += n;
        }
    }

    /// The chunks to write: whole characters only, except at the attempt's end (a
    /// character cut by a read waits for its rest).
    fn take_chunks(&mut self, id: i64, attempt: i32, out: &mut Vec<OutputChunk>) {
        if self.dropped > 0 {
            out.push(OutputChunk {
                task_id: id,
                attempt,
                stream: Stream::Stderr,
                data: format!(
                    "\n[jrq: {} bytes of output dropped here: the database did not take them in time]\n",
                    self.dropped
                ),
            });
            self.dropped = 0;
        }
        let mut keep: Vec<(Stream, Vec<u8>)> = vec![];
        let pieces = std::mem::take(&mut self.pieces);
        let last_of = |s: Stream| pieces.iter().rposition(|(p, _)| *p == s);
        let (last_out, last_err) = (last_of(Stream::Stdout), last_of(Stream::Stderr));
        for (i, (stream, mut data)) in pieces.into_iter().enumerate() {
            let last = Some(i) == last_out || Some(i) == last_err;
            let cut = if self.ended || !last {
                data.len()
            } else {
                whole_chars(&data)
            };
            let rest = data.split_off(cut);
            if !rest.is_empty() {
                keep.push((stream, rest));
            }
            if !data.is_empty() {
                self.since_trim += data.len();
                out.push(OutputChunk {
                    task_id: id,
                    attempt,
                    stream,
                    data: storable_chunk(&data),
                });
            }
        }
        self.buffered = keep.iter().map(|(_, d)| d.len()).sum();
        self.pieces = keep;
    }
}

/// The length of the longest start of `data` that does not end inside a UTF-8 character.
fn whole_chars(data: &[u8]) -> usize {
    let n = data.len();
    for back in 1..=3.min(n) {
        let b = data[n - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let len = match b {
            b if b & 0x80 == 0 => 1,
            b if b & 0xE0 == 0xC0 => 2,
            b if b & 0xF0 == 0xE0 => 3,
            b if b & 0xF8 == 0xF0 => 4,
            _ => return n, // not UTF-8 anyway
        };
        return if len > back { n - back } else { n };
    }
    n
}

/// Output as PostgreSQL can store it: invalid UTF-8 and NUL become U+FFFD.
fn storable_chunk(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

/// Reports not yet written.
pub(super) struct Reports {
    progress: HashMap<Key, i16>,
    output: HashMap<Key, AttemptOutput>,
    checkpoints: HashMap<Key, String>,
    usage: HashMap<(i64, i32, String), UsageDelta>,
    /// Attempts that ended with reports still to write.
    ended: Vec<Key>,
    last_flush: Instant,
    /// Bytes kept per task (0: no live output).
    keep: usize,
    /// Usage writes refused in a row.
    usage_refused: u32,
}

impl Reports {
    pub fn new(keep: usize) -> Self {
        Reports {
            progress: HashMap::new(),
            output: HashMap::new(),
            checkpoints: HashMap::new(),
            usage: HashMap::new(),
            ended: vec![],
            last_flush: Instant::now(),
            keep,
            usage_refused: 0,
        }
    }

    /// Keeps a report of a running attempt.
    pub fn note(&mut self, r: Reported) {
        let key = (r.task_id, r.attempt);
        match r.report {
            Report::Progress(p) => {
                self.progress.insert(key, p);
            }
            Report::Output { stream, data } => {
                if self.keep > 0 {
                    self.output.entry(key).or_default().push(stream, data);
                }
            }
            Report::Checkpoint(json) => {
                self.checkpoints.insert(key, json);
            }
            Report::Usage { model, delta } => {
                self.usage
                    .entry((r.task_id, r.attempt, model))
                    .or_default()
                    .add(&delta);
            }
        }
    }

    /// An attempt ended: its progress goes; the rest is written before its outcome.
    /// An attempt that left nothing to write (a noop) costs nothing more.
    pub fn ended(&mut self, id: i64, attempt: i32) {
        let key = (id, attempt);
        self.progress.remove(&key);
        let output = match self.output.get_mut(&key) {
            Some(o) if o.buffered > 0 || o.dropped > 0 => {
                o.ended = true;
                true
            }
            Some(_) => {
                self.output.remove(&key);
                false
            }
            None => false,
        };
        let other = self.checkpoints.contains_key(&key)
            || self.usage.keys().any(|(i, a, _)| (*i, *a) == key);
        if output || other {
            self.ended.push(key);
        }
    }

    fn big(&self) -> bool {
        self.output.values().any(|o| o.buffered >= FLUSH_BYTES)
    }

    fn pending(&self) -> bool {
        self.output
            .values()
            .any(|o| o.buffered > 0 || o.dropped > 0)
            || !self.checkpoints.is_empty()
            || !self.usage.is_empty()
            || !self.progress.is_empty()
    }

    /// Whether an ended attempt still has reports to write (its outcome waits for them).
    pub fn holds_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// When the next write is due, if anything waits.
    pub fn next_flush(&self) -> Option<Instant> {
        if self.holds_ended() || self.big() {
            return Some(Instant::now());
        }
        self.pending().then_some(self.last_flush + FLUSH_EVERY)
    }

    /// Writes what is due (all of it with `force`), fenced by `worker` and `instance`.
    /// Returns false when a write failed on a lost connection (what failed is kept);
    /// what the database refused is dropped with a warning, so that it cannot hold back
    /// the outcomes for ever.
    pub async fn flush(
        &mut self,
        link: &mut impl Sink,
        worker: &str,
        instance: Uuid,
        force: bool,
    ) -> bool {
        let due =
            force || self.holds_ended() || self.big() || self.last_flush.elapsed() >= FLUSH_EVERY;
        if !due || !self.pending() && self.ended.is_empty() {
            return true;
        }
        if link.client().is_none() {
            return false;
        }
        self.last_flush = Instant::now();
        let keep = self.keep;

        // Output: every attempt's chunks in one statement (several after an outage, none
        // over STATEMENT_MAX); the tasks that grew by a quarter of the keep since their
        // last trim are trimmed in it. Ended attempts go first, and all of theirs goes
        // now: their outcomes wait for it.
        let mut keys: Vec<Key> = self
            .output
            .iter()
            .filter(|(_, o)| o.buffered > 0 || o.dropped > 0)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_by_key(|k| (!self.output[k].ended, *k));
        let mut next = 0;
        while next < keys.len() {
            let (mut chunks, mut trim, mut bytes) = (Vec::<OutputChunk>::new(), vec![], 0);
            while next < keys.len() && bytes < STATEMENT_MAX {
                let (id, attempt) = keys[next];
                let o = self.output.get_mut(&keys[next]).expect("a key of the map");
                let before = chunks.len();
                o.take_chunks(id, attempt, &mut chunks);
                bytes += chunks[before..].iter().map(|c| c.data.len()).sum::<usize>();
                if o.since_trim > keep / 4 {
                    trim.push(keys[next]);
                }
                next += 1;
            }
            if chunks.is_empty() {
                continue;
            }
            let trim_ids: Vec<i64> = trim.iter().map(|k| k.0).collect();
            let written = match link.client() {
                Some(c) => {
                    tasks::tasks_output(c, worker, instance, &chunks, &trim_ids, keep as i64).await
                }
                None => {
                    self.unflush(chunks);
                    return false;
                }
            };
            match written {
                Ok(_) => {
                    for k in &trim {
                        if let Some(o) = self.output.get_mut(k) {
                            o.since_trim = 0;
                        }
                    }
                }
                Err(e) => {
                    if link.failed("writing task output", &e) {
                        // Put the chunks back in front, to be written when it is back.
                        self.unflush(chunks);
                        return false;
                    }
                    tracing::warn!(chunks = chunks.len(), error = %e, "task output dropped");
                }
            }
            // What is left of running attempts waits for the next flush, due at once.
            if keys.get(next).is_some_and(|k| !self.output[k].ended) {
                break;
            }
        }

        if !self.checkpoints.is_empty() {
            let items: Vec<(i64, i32, &str)> = self
                .checkpoints
                .iter()
                .map(|((id, a), j)| (*id, *a, j.as_str()))
                .collect();
            let written = match link.client() {
                Some(c) => tasks::tasks_checkpoint(c, worker, instance, &items).await,
                None => return false,
            };
            match written {
                Ok(_) => self.checkpoints.clear(),
                Err(e) => {
                    if link.failed("writing checkpoints", &e) {
                        return false;
                    }
                    tracing::warn!(error = %e, "checkpoints dropped");
                    self.checkpoints.clear();
                }
            }
        }

        if !self.usage.is_empty() {
            let items: Vec<(i64, i32, &str, &UsageDelta)> = self
                .usage
                .iter()
                .map(|((id, a, m), d)| (*id, *a, m.as_str(), d))
                .collect();
            let written = match link.client() {
                Some(c) => tasks::tasks_usage(c, worker, instance, &items).await,
                None => return false,
            };
            match written {
                Ok(pauses) => {
                    for p in pauses {
                        tracing::warn!(scope = %p.scope, target = %p.target, reason = %p.reason, "budget reached: paused");
                    }
                    self.usage.clear();
                    self.usage_refused = 0;
                }
                Err(e) => {
                    if link.failed("writing usage", &e) {
                        return false;
                    }
                    // Usage is money: a refusal that may pass (a deadlock, a timeout) is
                    // tried again, a few times, before it is given up.
                    self.usage_refused += 1;
                    if self.usage_refused >= USAGE_TRIES {
                        tracing::error!(error = %e, tries = USAGE_TRIES, "usage not recorded: given up");
                        self.usage.clear();
                        self.usage_refused = 0;
                    } else {
                        tracing::warn!(error = %e, "writing usage failed: tried again next round");
                    }
                }
            }
        }

        if !self.progress.is_empty() {
            let items: Vec<(i64, i32, i16)> = self
                .progress
                .iter()
                .map(|((id, a), p)| (*id, *a, *p))
                .collect();
            let written = match link.client() {
                Some(c) => tasks::tasks_progress(c, worker, instance, &items).await,
                None => return false,
            };
            match written {
                Ok(()) => self.progress.clear(),
                Err(e) => {
                    if link.failed("writing progress", &e) {
                        return false;
                    }
                    self.progress.clear();
                }
            }
        }

        // Ended attempts whose reports are all written go.
        for key in std::mem::take(&mut self.ended) {
            if self
                .output
                .get(&key)
                .is_some_and(|o| o.buffered > 0 || o.dropped > 0)
            {
                self.ended.push(key);
            } else {
                self.output.remove(&key);
            }
        }
        true
    }

    /// Chunks whose write failed go back in front of what came since.
    fn unflush(&mut self, chunks: Vec<OutputChunk>) {
        let mut by: HashMap<Key, Vec<(Stream, Vec<u8>)>> = HashMap::new();
        for c in chunks {
            by.entry((c.task_id, c.attempt))
                .or_default()
                .push((c.stream, c.data.into_bytes()));
        }
        for (key, mut pieces) in by {
            let o = self.output.entry(key).or_default();
            o.since_trim = o
                .since_trim
                .saturating_sub(pieces.iter().map(|p| p.1.len()).sum());
            pieces.append(&mut o.pieces);
            o.buffered = pieces.iter().map(|p| p.1.len()).sum();
            o.pieces = pieces;
        }
    }
}

/// Where reports are written: the daemon's [`Link`] (which reconnects), or a plain
/// client (one round of [`crate::worker::Worker::run_once`]).
pub(super) trait Sink {
    /// The connection, while there is one.
    fn client(&self) -> Option<&tokio_postgres::Client>;
    /// A write failed: whether the connection is lost (then what failed is kept).
    fn failed(&mut self, what: &str, e: &Error) -> bool;
}

impl Sink for Link {
    fn client(&self) -> Option<&tokio_postgres::Client> {
        self.conn().map(|c| &c.client)
    }

    fn failed(&mut self, what: &str, e: &Error) -> bool {
        Link::failed(self, what, e)
    }
}

impl Sink for &tokio_postgres::Client {
    fn client(&self) -> Option<&tokio_postgres::Client> {
        (!self.is_closed()).then_some(*self)
    }

    fn failed(&mut self, what: &str, e: &Error) -> bool {
        tracing::warn!(error = %e, "{what} failed");
        self.is_closed() || e.is_session_unusable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_whole_characters() {
        assert_eq!(whole_chars(b"abc"), 3);
        let e = "é".as_bytes(); // 2 bytes
        assert_eq!(whole_chars(&[b'a', e[0]]), 1);
        assert_eq!(whole_chars(&[b'a', e[0], e[1]]), 3);
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(whole_chars(&[b'x', euro[0], euro[1]]), 1);
        assert_eq!(whole_chars(euro), 3);
        assert_eq!(whole_chars(b""), 0);
    }

    #[test]
    fn output_is_kept_in_order_and_bounded() {
        let mut o = AttemptOutput::default();
        o.push(Stream::Stdout, b"a".to_vec());
        o.push(Stream::Stdout, b"b".to_vec());
        o.push(Stream::Stderr, b"c".to_vec());
        o.push(Stream::Stdout, "d\u{e9}".as_bytes()[..2].to_vec());
        let mut out = vec![];
        o.take_chunks(1, 1, &mut out);
        let got: Vec<(Stream, &str)> = out.iter().map(|c| (c.stream, c.data.as_str())).collect();
        assert_eq!(
            got,
            [
                (Stream::Stdout, "ab"),
                (Stream::Stderr, "c"),
                (Stream::Stdout, "d")
            ]
        );
        // The cut character waits for its rest.
        assert_eq!(o.buffered, 1);
        let mut o = AttemptOutput::default();
        for _ in 0..5 {
            o.push(Stream::Stdout, vec![b'x'; BUFFER_MAX / 2]);
            o.push(Stream::Stderr, vec![b'y'; 10]);
        }
        assert!(o.buffered <= BUFFER_MAX);
        assert!(o.dropped > 0);
        let mut out = vec![];
        o.take_chunks(1, 1, &mut out);
        assert!(
            out[0].data.contains("bytes of output dropped"),
            "{}",
            out[0].data
        );
    }
}
