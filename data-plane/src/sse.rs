//! Incremental scanner of a server-sent event stream (no app dependencies).
//!
//! Fed with the chunks of an upstream body as they arrive, split at any
//! byte, it finds complete events (separated by a blank line: `\n\n` or
//! `\r\n\r\n`), reads their `data:` lines, notes the stream's terminal event,
//! counts events whose data is not JSON, and keeps the last token usage found
//! (see [`crate::usage`]).
//!
//! Two modes:
//!
//! - **observe** ([`SseScanner::observe`]): the caller forwards its chunks as
//!   they are and the scanner reads a copy, keeping only the current partial
//!   line;
//! - **strip** ([`SseScanner::filter`]): the scanner returns the bytes to
//!   forward, made only of complete events, with the `usage` the proxy asked
//!   for removed wherever it appears (see [`usage::strip`]); it holds the
//!   partial event until the rest arrives, and [`SseScanner::finish`] hands
//!   it over at the end of the stream.
//!
//! The terminal event ([`Terminal`]) is `data: [DONE]` for chat/completions
//! and completions, and `response.completed`, `response.incomplete`,
//! `response.failed` or `error` for the Responses API (named by the `event:`
//! field or by the data's `type`).
//!
//! Cost: the newline search resumes where the previous one stopped, so a long
//! line is read once however it is split; an event larger than the limit
//! given to [`SseScanner::new`] stops the scan ([`SseScanner::oversized`]),
//! which bounds both memory and CPU per stream.
//!
//! Lines ending with a lone `\r` (allowed by the SSE spec, never sent by
//! OpenAI-compatible servers) are not recognised as line ends.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use crate::usage::{self, Strip, Usage};

/// Default limit on one event's size, bytes.
pub const MAX_EVENT: usize = 8 * 1024 * 1024;

/// How a stream ended, by its terminal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// `data: [DONE]`, `response.completed` or `response.incomplete`.
    Complete,
    /// `response.failed` or an `error` event: the server gave up.
    Failed,
}

/// Incremental SSE scanner. See the module documentation.
#[derive(Debug)]
pub struct SseScanner {
    /// Remove the usage the proxy asked for and forward complete events only.
    strip: bool,
    /// Largest event read, bytes.
    max_event: usize,
    /// Bytes not released yet: the partial event (strip) or line (observe).
    buf: BytesMut,
    /// Offset in `buf` of the first byte of the current, incomplete line.
    line_start: usize,
    /// Offset in `buf` up to which there is no newline after `line_start`.
    searched: usize,
    /// The current event being read.
    event: EventState,
    /// Last usage seen.
    usage: Option<Usage>,
    /// The terminal event, once seen.
    terminal: Option<Terminal>,
    /// Complete events seen.
    events: u64,
    /// Events dropped or rewritten to remove usage.
    stripped: u64,
    /// Events whose data is neither JSON nor `[DONE]`.
    malformed: u64,
    /// An event outgrew `max_event`: the scan stopped.
    oversized: bool,
    /// Bytes searched for a newline so far (each byte once: see the module
    /// documentation).
    searched_bytes: u64,
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
    /// The event has an `event:` field.
    named: bool,
    /// The `event:` field names a terminal event.
    terminal: Option<Terminal>,
    /// Bytes of the lines read so far.
    size: usize,
}

impl EventState {
    /// Reads one non-empty line.
    fn line(&mut self, line: &[u8]) {
        self.started = true;
        self.size += line.len() + 1;
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.has_data = true;
                self.data.extend_from_slice(value);
            }
            b"event" => {
                self.named = true;
                self.terminal = terminal_name(value);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.started = false;
        self.named = false;
        self.terminal = None;
        self.size = 0;
    }
}

/// The terminal events of the Responses API, by name.
fn terminal_name(name: &[u8]) -> Option<Terminal> {
    match name.trim_ascii() {
        b"response.completed" | b"response.incomplete" => Some(Terminal::Complete),
        b"response.failed" | b"error" => Some(Terminal::Failed),
        _ => None,
    }
}

/// The terminal event named by an event's data: a Responses API `type`, for
/// servers that send no `event:` field, or a top-level `error` member (how
/// vLLM and SGLang report a failure in the middle of a chat stream). Only
/// data that mentions one of those names is parsed.
fn terminal_type(data: &[u8]) -> Option<Terminal> {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
        error: Option<serde::de::IgnoredAny>,
    }
    const NAMES: [&[u8]; 4] = [
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
        b"\"error\"",
    ];
    let mentions = NAMES.iter().any(|name| memmem::find(data, name).is_some());
    if !mentions {
        return None;
    }
    let typed: Typed<'_> = serde_json::from_slice(data).ok()?;
    if typed.error.is_some() {
        return Some(Terminal::Failed);
    }
    terminal_name(typed.kind?.as_bytes())
}

/// What to do with a complete event.
enum Verdict {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

impl SseScanner {
    /// A scanner; `strip` removes the usage the proxy asked for, and events
    /// larger than `max_event` bytes stop the scan.
    pub fn new(strip: bool, max_event: usize) -> Self {
        Self {
            strip,
            max_event,
            buf: BytesMut::new(),
            line_start: 0,
            searched: 0,
            event: EventState::default(),
            usage: None,
            terminal: None,
            events: 0,
            stripped: 0,
            malformed: 0,
            oversized: false,
            searched_bytes: 0,
        }
    }

    /// A scanner that reads a copy of the stream.
    pub fn observer() -> Self {
        Self::new(false, MAX_EVENT)
    }

    /// A scanner that removes the usage the proxy asked for.
    pub fn stripper() -> Self {
        Self::new(true, MAX_EVENT)
    }

    /// Whether this scanner removes usage.
    pub fn strips(&self) -> bool {
        self.strip
    }

    /// Last usage found in the stream.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The stream's terminal event, once it went by.
    pub fn terminal(&self) -> Option<Terminal> {
        self.terminal
    }

    /// Whether a `data: [DONE]` (or another terminal event) went by.
    pub fn saw_done(&self) -> bool {
        self.terminal.is_some()
    }

    /// Complete events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Events dropped or rewritten to remove usage, so far.
    pub fn stripped(&self) -> u64 {
        self.stripped
    }

    /// Events so far whose `data:` is neither valid JSON (in UTF-8) nor
    /// `[DONE]` (events with no or empty data, such as keep-alive comments,
    /// are not counted).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// An event outgrew the limit; nothing more is read.
    pub fn oversized(&self) -> bool {
        self.oversized
    }

    /// Bytes searched for line ends so far.
    pub fn searched_bytes(&self) -> u64 {
        self.searched_bytes
    }

    /// Whether what was forwarded so far ends at an event boundary, so that
    /// a comment line can go next without changing any event.
    pub fn at_boundary(&self) -> bool {
        self.strip || (self.buf.is_empty() && !self.event.started)
    }

    /// Observe mode: reads a chunk that the caller forwards itself.
    pub fn observe(&mut self, chunk: &[u8]) {
        debug_assert!(!self.strip, "observe() on a stripping scanner");
        if self.oversized {
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.scan(&mut Out::Discard);
    }

    /// Strip mode: takes a chunk and returns the bytes to forward now.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        debug_assert!(self.strip, "filter() on an observing scanner");
        if self.oversized {
            return Bytes::new();
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Out::Keep(Vec::new());
        self.scan(&mut out);
        out.into_bytes()
    }

    /// End of stream: reads what is held and returns it (strip mode; an
    /// event without its final blank line is forwarded as it is, unless its
    /// verdict drops it).
    pub fn finish(&mut self) -> Bytes {
        if self.oversized {
            return Bytes::new();
        }
        if self.line_start < self.buf.len() {
            let mut line = &self.buf[self.line_start..];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            self.event.line(line);
        }
        let verdict = if self.event.started {
            self.event_verdict()
        } else {
            Verdict::Keep
        };
        self.event.reset();
        self.line_start = self.buf.len();
        let mut out = Out::Keep(Vec::new());
        self.release(&mut out, verdict);
        self.searched = 0;
        if self.strip {
            out.into_bytes()
        } else {
            Bytes::new()
        }
    }

    /// Processes every complete line in `buf`, releasing bytes to `out`.
    fn scan(&mut self, out: &mut Out) {
        loop {
            let from = self.searched.max(self.line_start);
            let Some(nl) = memchr::memchr(b'\n', &self.buf[from..]) else {
                self.searched_bytes += (self.buf.len() - from) as u64;
                self.searched = self.buf.len();
                break;
            };
            self.searched_bytes += nl as u64 + 1;
            let end = from + nl;
            let mut line_end = end;
            if line_end > self.line_start && self.buf[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let blank = line_end == self.line_start;
            let line_start = self.line_start;
            self.line_start = end + 1;
            self.searched = end + 1;
            if !blank {
                let (event, buf) = (&mut self.event, &self.buf);
                event.line(&buf[line_start..line_end]);
                if !self.strip {
                    self.release(out, Verdict::Keep);
                }
                if self.event.size > self.max_event {
                    self.oversized = true;
                    return;
                }
                continue;
            }
            let verdict = if self.event.started {
                self.event_verdict()
            } else {
                Verdict::Keep
            };
            self.event.reset();
            self.release(out, verdict);
        }
        let pending = self.event.size + (self.buf.len() - self.line_start);
        if pending > self.max_event {
            self.oversized = true;
        }
    }

    /// Releases `buf[..line_start]` as `verdict` says.
    fn release(&mut self, out: &mut Out, verdict: Verdict) {
        let released = self.buf.split_to(self.line_start);
        self.searched -= self.line_start.min(self.searched);
        self.line_start = 0;
        match verdict {
            Verdict::Keep => out.push(released),
            Verdict::Drop => {}
            Verdict::Replace(data) => out.push(replace_data(&released, &data)),
        }
    }

    /// A complete event: note what it says, and what to do with it.
    fn event_verdict(&mut self) -> Verdict {
        self.events += 1;
        let data = self.event.data.trim_ascii();
        if data == b"[DONE]" {
            self.terminal.get_or_insert(Terminal::Complete);
            return Verdict::Keep;
        }
        let terminal = if self.event.named {
            self.event.terminal
        } else {
            terminal_type(data)
        };
        if let Some(terminal) = terminal {
            self.terminal.get_or_insert(terminal);
        }
        if data.is_empty() {
            return Verdict::Keep;
        }
        if usage::mentions_usage(data) {
            match usage::parse(data) {
                Some(info) => {
                    if let Some(found) = info.usage {
                        self.usage = Some(found);
                    }
                }
                None if !usage::is_json(data) => self.malformed += 1,
                None => {}
            }
        } else if !usage::is_json(data) {
            self.malformed += 1;
        }
        if !self.strip || !usage::mentions_usage_key(data) {
            return Verdict::Keep;
        }
        match usage::strip(data) {
            Strip::Keep => Verdict::Keep,
            Strip::Drop => {
                self.stripped += 1;
                Verdict::Drop
            }
            Strip::Rewrite(data) => {
                self.stripped += 1;
                Verdict::Replace(data)
            }
        }
    }
}

/// The event `raw` (its lines and final blank line) with its `data:` lines
/// replaced by one line carrying `data`; every other line is kept.
fn replace_data(raw: &[u8], data: &[u8]) -> BytesMut {
    let crlf = raw.ends_with(b"\r\n");
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut out = BytesMut::with_capacity(raw.len());
    let mut wrote_data = false;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let is_data = line == b"data" || line.starts_with(b"data:");
        if !is_data {
            out.extend_from_slice(line);
            out.extend_from_slice(eol);
        } else if !wrote_data {
            wrote_data = true;
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(data);
            out.extend_from_slice(eol);
        }
    }
    out.extend_from_slice(eol);
    out
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

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
