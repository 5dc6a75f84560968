//! Incremental scanner of a server-sent event stream (no app dependencies).
//!
//! Fed with the chunks of an upstream body as they arrive, split at any
//! byte, it finds complete events (separated by a blank line: `\n\n` or
//! `\r\n\r\n`), reads their `data:` lines, notes `[DONE]`, counts events
//! whose data is not JSON, and keeps the last token usage found (see
//! [`crate::usage`]).
//!
//! Two modes:
//!
//! - **observe** ([`SseScanner::observe`]): the caller forwards its chunks as
//!   they are and the scanner reads a copy, keeping only the current partial
//!   line;
//! - **strip** ([`SseScanner::filter`]): the scanner returns the bytes to
//!   forward, made only of complete events, without the usage-only chunk of a
//!   chat/completions stream (`"choices":[]` with `usage`); it holds the
//!   partial tail until the rest arrives, and [`SseScanner::finish`] hands it
//!   over at the end of the stream.
//!
//! Lines ending with a lone `\r` (allowed by the SSE spec, never sent by
//! OpenAI-compatible servers) are not recognised as line ends.

use bytes::{Bytes, BytesMut};

use crate::usage::{self, Usage};

/// A partial line or event longer than this is not scanned (it is still
/// forwarded): it bounds the memory one stream can hold.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// Incremental SSE scanner. See the module documentation.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// Drop the usage-only chunk and forward complete events only.
    strip: bool,
    /// Bytes not released yet: the partial event (strip) or line (observe).
    buf: BytesMut,
    /// Offset in `buf` of the first byte of the current, incomplete line.
    line_start: usize,
    /// `buf` starts in the middle of a line whose head was already released.
    mid_line: bool,
    /// The current event being read.
    event: EventState,
    /// Last usage seen.
    usage: Option<Usage>,
    /// A `data: [DONE]` event was seen.
    done: bool,
    /// Complete events seen.
    events: u64,
    /// Usage-only chunks dropped.
    stripped: u64,
    /// Events whose data is neither JSON nor `[DONE]`.
    malformed: u64,
}

/// The event being read.
#[derive(Debug, Default)]
struct EventState {
    /// `data:` payload, lines joined with `\n`.
    data: Vec<u8>,
    /// At least one `data:` line was read.
    has_data: bool,
    /// At least one line was read.
    started: bool,
    /// Outgrew [`MAX_PENDING`]: no longer read, forwarded as it comes.
    overflowed: bool,
}

impl EventState {
    /// Reads one non-empty line.
    fn line(&mut self, line: &[u8]) {
        self.started = true;
        if self.overflowed {
            return;
        }
        let (field, value) = match memchr(b':', line) {
            Some(0) => return, // comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.has_data = true;
            self.data.extend_from_slice(value);
        }
    }

    fn reset(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.started = false;
        self.overflowed = false;
    }
}

impl SseScanner {
    /// A scanner that reads a copy of the stream.
    pub fn observer() -> Self {
        Self::default()
    }

    /// A scanner that drops the usage-only chunk from the stream it returns.
    pub fn stripper() -> Self {
        Self {
            strip: true,
            ..Self::default()
        }
    }

    /// Whether this scanner strips the usage-only chunk.
    pub fn strips(&self) -> bool {
        self.strip
    }

    /// Last usage found in the stream.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether a `data: [DONE]` event went by.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Complete events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Usage-only chunks dropped so far.
    pub fn stripped(&self) -> u64 {
        self.stripped
    }

    /// Events so far whose `data:` is neither valid JSON nor `[DONE]`
    /// (events with no or empty data, such as keep-alive comments, are not
    /// counted).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Observe mode: reads a chunk that the caller forwards itself.
    pub fn observe(&mut self, chunk: &[u8]) {
        debug_assert!(!self.strip, "observe() on a stripping scanner");
        self.buf.extend_from_slice(chunk);
        self.scan(&mut Out::Discard);
    }

    /// Strip mode: takes a chunk and returns the bytes to forward now.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        debug_assert!(self.strip, "filter() on an observing scanner");
        self.buf.extend_from_slice(chunk);
        let mut out = Out::Keep(Vec::new());
        self.scan(&mut out);
        out.into_bytes()
    }

    /// End of stream: reads what is held and returns it (strip mode; an
    /// event without its final blank line is forwarded as it is, unless it
    /// is the usage-only chunk).
    pub fn finish(&mut self) -> Bytes {
        if self.line_start < self.buf.len() && !self.mid_line {
            let (event, buf) = (&mut self.event, &self.buf);
            let mut line = &buf[self.line_start..];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            event.line(line);
        }
        let keep = if self.event.started && !self.event.overflowed {
            self.event_verdict()
        } else {
            true
        };
        self.event.reset();
        self.line_start = 0;
        self.mid_line = false;
        let tail = self.buf.split().freeze();
        if self.strip && keep {
            tail
        } else {
            Bytes::new()
        }
    }

    /// Processes every complete line in `buf`, releasing bytes to `out`.
    fn scan(&mut self, out: &mut Out) {
        while let Some(nl) = memchr(b'\n', &self.buf[self.line_start..]) {
            let end = self.line_start + nl;
            let mut line_end = end;
            if line_end > self.line_start && self.buf[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let blank = line_end == self.line_start && !self.mid_line;
            if !blank {
                let skip = self.mid_line;
                self.mid_line = false;
                if skip {
                    self.event.started = true;
                } else {
                    let (event, buf) = (&mut self.event, &self.buf);
                    event.line(&buf[self.line_start..line_end]);
                }
                self.line_start = end + 1;
                if !self.strip {
                    self.release(out, true);
                }
                continue;
            }
            self.line_start = end + 1;
            let keep = if self.event.started && !self.event.overflowed {
                self.event_verdict()
            } else {
                true
            };
            self.event.reset();
            self.release(out, keep);
        }
        let held = if self.strip {
            self.buf.len()
        } else {
            self.buf.len() - self.line_start
        };
        if held > MAX_PENDING {
            // Too big to read: forward what is held and stop reading this
            // event; its end is still found by the next blank line.
            self.event.overflowed = true;
            self.event.started = true;
            self.event.data = Vec::new();
            self.mid_line = self.line_start < self.buf.len();
            self.line_start = 0;
            let released = self.buf.split();
            out.push(released);
        }
    }

    /// Releases `buf[..line_start]`: to `out` if `keep`, else dropped.
    fn release(&mut self, out: &mut Out, keep: bool) {
        let released = self.buf.split_to(self.line_start);
        self.line_start = 0;
        if keep {
            out.push(released);
        }
    }

    /// A complete event: note what it says; `false` to drop it.
    fn event_verdict(&mut self) -> bool {
        self.events += 1;
        let data = self.event.data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        if !usage::mentions_usage(data) {
            if !data.is_empty() && !usage::is_json(data) {
                self.malformed += 1;
            }
            return true;
        }
        let Some(info) = usage::parse(data) else {
            if !usage::is_json(data) {
                self.malformed += 1;
            }
            return true;
        };
        if let Some(found) = info.usage {
            self.usage = Some(found);
        }
        if self.strip && info.usage_only_chunk {
            self.stripped += 1;
            return false;
        }
        true
    }
}

/// Where released bytes go.
enum Out {
    Discard,
    Keep(Vec<BytesMut>),
}

impl Out {
    fn push(&mut self, bytes: BytesMut) {
        if let Out::Keep(parts) = self {
            if !bytes.is_empty() {
                parts.push(bytes);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        let Out::Keep(mut parts) = self else {
            return Bytes::new();
        };
        match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().unwrap_or_default().freeze(),
            _ => {
                let mut joined = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
                for part in parts {
                    joined.extend_from_slice(&part);
                }
                joined.freeze()
            }
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
