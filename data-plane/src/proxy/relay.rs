//! [`RelayBody`]: streams an upstream response body to the client chunk by
//! chunk, reading usage on the way, and ends its [`Attempt`].
//!
//! - Event streams (`text/event-stream`) go through an [`SseScanner`]: in
//!   strip mode (the proxy added `stream_options.include_usage`) complete
//!   events are forwarded as soon as they are complete, with that usage
//!   removed; otherwise chunks are forwarded at once and a copy is scanned.
//!   While the upstream is silent, a `: keep-alive` comment goes to the
//!   client every `keepalive` (between events only), so that intermediaries
//!   with idle timeouts do not cut a model that thinks for minutes.
//! - JSON bodies are forwarded at once; [`JsonScan`] keeps a bounded copy to
//!   read `usage` at the end.
//! - Anything else is forwarded untouched.
//!
//! When the attempt ends:
//!
//! - an event stream ends it at its terminal event (`data: [DONE]`, or the
//!   Responses API's `response.completed`-style event), as soon as that
//!   event is handed on to the client: what the connection does afterwards
//!   (openai-python and LangChain close it at `[DONE]`, uvicorn servers end
//!   the body a moment later) changes nothing. A stream that ends before its
//!   terminal event is a failure, with the usage seen so far;
//! - any other body ends it when the upstream body ends (success if 2xx and
//!   well formed: JSON that parses, in UTF-8; the bytes are relayed either
//!   way);
//! - an upstream error, or silence longer than the idle timeout, fails it;
//! - if the client goes away first, hyper drops the body, which drops the
//!   upstream response (closing that connection, which cancels the request
//!   upstream) and the attempt (recorded as a failure).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::attempt::Attempt;
use super::body::BoxError;
use crate::metrics::InflightRequest;
use crate::sse::{SseScanner, Terminal};
use crate::usage::{self, Usage};

/// A JSON body up to this size is kept whole to read its usage and check
/// that it parses; past it only its last [`JSON_TAIL`] bytes are kept.
pub const JSON_KEEP_LIMIT: usize = 256 * 1024;

/// Bytes kept from the end of a JSON body larger than [`JSON_KEEP_LIMIT`].
pub const JSON_TAIL: usize = 64 * 1024;

/// The comment sent while an event stream's upstream is silent.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// How the body is read on its way through.
#[derive(Debug)]
pub enum Mode {
    /// Server-sent events.
    Sse(SseScanner),
    /// A JSON document.
    Json(JsonScan),
    /// Anything else.
    Opaque,
}

/// What the body said, once read.
struct Verdict {
    usage: Option<Usage>,
    /// Why the attempt failed although the upstream answered.
    error: Option<String>,
}

impl Mode {
    /// The mode for a response of `content_type`; `strip` removes the usage
    /// the proxy asked for from event streams.
    pub fn for_content_type(content_type: Option<&str>, strip: bool) -> Self {
        let essence = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("text/event-stream") => Self::Sse(SseScanner::new(strip, crate::sse::MAX_EVENT)),
            Some(c) if c == "application/json" || c.ends_with("+json") => {
                Self::Json(JsonScan::default())
            }
            _ => Self::Opaque,
        }
    }

    /// Whether the bytes sent to the client may differ from upstream's
    /// (usage removed, keep-alive comments added): true of event streams.
    pub fn rewrites(&self) -> bool {
        matches!(self, Self::Sse(_))
    }

    /// Takes an upstream chunk, returns what to forward now.
    fn chunk(&mut self, data: Bytes) -> Bytes {
        match self {
            Self::Sse(scanner) if scanner.strips() => scanner.filter(&data),
            Self::Sse(scanner) => {
                scanner.observe(&data);
                data
            }
            Self::Json(scan) => {
                scan.push(&data);
                data
            }
            Self::Opaque => data,
        }
    }

    /// End of the upstream body: returns bytes still to forward.
    fn finish(&mut self) -> Bytes {
        match self {
            Self::Sse(scanner) => scanner.finish(),
            _ => Bytes::new(),
        }
    }

    /// An event outgrew the scanner's limit.
    fn oversized(&self) -> bool {
        matches!(self, Self::Sse(s) if s.oversized())
    }

    /// The event stream's terminal event, once it went by.
    fn terminal(&self) -> Option<Terminal> {
        match self {
            Self::Sse(scanner) => scanner.terminal(),
            _ => None,
        }
    }

    /// A comment may be sent now without splitting an event.
    fn keepalive_allowed(&self) -> bool {
        matches!(self, Self::Sse(s) if s.at_boundary())
    }

    /// What the body said so far; `ended`: the upstream body is over.
    fn verdict(&self, ended: bool) -> Verdict {
        match self {
            Self::Sse(scanner) => {
                let error = if scanner.malformed() > 0 {
                    Some(format!(
                        "upstream sent {} event(s) whose data is not JSON",
                        scanner.malformed()
                    ))
                } else {
                    match scanner.terminal() {
                        Some(Terminal::Complete) => None,
                        Some(Terminal::Failed) => {
                            Some("upstream ended the stream with an error event".to_owned())
                        }
                        None if ended => Some(
                            "upstream stream ended before its terminal event ([DONE])".to_owned(),
                        ),
                        None => None,
                    }
                };
                Verdict {
                    usage: scanner.usage(),
                    error,
                }
            }
            Self::Json(scan) => {
                let (usage, valid) = scan.inspect();
                Verdict {
                    usage,
                    error: (!valid)
                        .then(|| "upstream sent a body that is not valid JSON".to_owned()),
                }
            }
            Self::Opaque => Verdict {
                usage: None,
                error: None,
            },
        }
    }
}

/// A bounded copy of a JSON body, kept by reference: the whole body up to
/// [`JSON_KEEP_LIMIT`], then only its tail; its UTF-8 is checked as it
/// passes.
#[derive(Debug)]
pub struct JsonScan {
    chunks: VecDeque<Bytes>,
    kept: usize,
    whole: bool,
    utf8: Utf8Check,
}

impl Default for JsonScan {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            kept: 0,
            whole: true,
            utf8: Utf8Check::default(),
        }
    }
}

impl JsonScan {
    fn push(&mut self, data: &Bytes) {
        self.utf8.feed(data);
        self.kept += data.len();
        self.chunks.push_back(data.clone());
        if self.kept > JSON_KEEP_LIMIT {
            self.whole = false;
        }
        if !self.whole {
            while self
                .chunks
                .front()
                .is_some_and(|c| self.kept - c.len() >= JSON_TAIL)
            {
                let dropped = self.chunks.pop_front().map_or(0, |c| c.len());
                self.kept -= dropped;
            }
        }
    }

    /// The usage of the document, and whether it is valid. A body kept
    /// whole is parsed; of a larger one only the UTF-8 is checked and the
    /// usage is read from the tail ([`usage::find_in_tail`]).
    fn inspect(&self) -> (Option<Usage>, bool) {
        let whole;
        let kept: &[u8] = match (self.chunks.len(), self.chunks.front()) {
            (1, Some(one)) => one,
            _ => {
                let mut joined = BytesMut::with_capacity(self.kept);
                self.chunks.iter().for_each(|c| joined.extend_from_slice(c));
                whole = joined;
                &whole
            }
        };
        if !self.whole {
            return (usage::find_in_tail(kept), self.utf8.valid());
        }
        match usage::parse(kept) {
            Some(info) => (info.usage, true),
            None => (None, usage::is_json(kept)),
        }
    }
}

/// Checks that a byte stream is UTF-8, chunk by chunk, keeping only the
/// bytes of a character split between two chunks.
#[derive(Debug, Default)]
struct Utf8Check {
    /// Leading bytes of a split character.
    carry: [u8; 4],
    carry_len: usize,
    invalid: bool,
}

impl Utf8Check {
    fn feed(&mut self, mut chunk: &[u8]) {
        if self.invalid {
            return;
        }
        if self.carry_len > 0 {
            let width = match self.carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - self.carry_len).min(chunk.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            self.carry_len += take;
            chunk = &chunk[take..];
            if self.carry_len < width {
                return;
            }
            if std::str::from_utf8(&self.carry[..width]).is_err() {
                self.invalid = true;
                return;
            }
            self.carry_len = 0;
        }
        if let Err(e) = std::str::from_utf8(chunk) {
            match e.error_len() {
                Some(_) => self.invalid = true,
                None => {
                    let rest = &chunk[e.valid_up_to()..];
                    self.carry[..rest.len()].copy_from_slice(rest);
                    self.carry_len = rest.len();
                }
            }
        }
    }

    /// Everything fed was UTF-8, ending on a character boundary.
    fn valid(&self) -> bool {
        !self.invalid && self.carry_len == 0
    }
}

/// An upstream body on its way to the client; see the module documentation.
#[derive(Debug)]
pub struct RelayBody {
    /// The upstream body.
    upstream: Incoming,
    /// How it is read.
    mode: Mode,
    /// The attempt this body ends.
    attempt: Attempt,
    /// Longest silence allowed between two upstream chunks.
    idle_timeout: Duration,
    /// Fires after `idle_timeout` without a chunk.
    idle: Pin<Box<Sleep>>,
    /// Event streams: the keep-alive period and its timer.
    keepalive: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The upstream body ended (or failed): nothing more to poll.
    ended: bool,
    /// Keeps the client request counted in flight.
    _inflight: InflightRequest,
}

impl RelayBody {
    /// Relays `upstream` for `attempt`; event streams get a keep-alive
    /// comment after each `keepalive` of upstream silence (`None`: never).
    pub fn new(
        upstream: Incoming,
        mode: Mode,
        attempt: Attempt,
        idle_timeout: Duration,
        keepalive: Option<Duration>,
        inflight: InflightRequest,
    ) -> Self {
        let keepalive = keepalive
            .filter(|_| matches!(mode, Mode::Sse(_)))
            .map(|every| (every, Box::pin(tokio::time::sleep(every))));
        Self {
            upstream,
            mode,
            attempt,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            keepalive,
            ended: false,
            _inflight: inflight,
        }
    }

    /// Ends the attempt with what the body said; `ended`: the upstream body
    /// is over (otherwise the terminal event was just relayed).
    fn record(&mut self, ended: bool) {
        if self.attempt.is_finished() {
            return;
        }
        let verdict = self.mode.verdict(ended);
        if let Some(usage) = verdict.usage {
            self.attempt.set_usage(usage);
        }
        // A non-2xx answer is a failure anyway, recorded with its status.
        let ok_status = self
            .attempt
            .status()
            .is_some_and(|s| (200..300).contains(&s));
        match verdict.error {
            Some(error) if ok_status => self.attempt.fail(error),
            _ => self.attempt.complete(),
        }
    }

    /// The upstream body is complete: end the attempt and return the bytes
    /// still to forward (appended to `out`).
    fn complete(&mut self, out: Bytes) -> Bytes {
        self.ended = true;
        let tail = self.mode.finish();
        let out = join(out, tail);
        if !out.is_empty() {
            self.attempt.first_byte();
        }
        self.record(true);
        out
    }

    /// The upstream failed (`error`): fail the attempt, unless its terminal
    /// event already went to the client; then the body just ends.
    fn fail(&mut self, error: String) -> Option<BoxError> {
        self.ended = true;
        if self.attempt.is_finished() {
            return None;
        }
        if let Some(usage) = self.mode.verdict(true).usage {
            self.attempt.set_usage(usage);
        }
        self.attempt.fail(error.clone());
        Some(error.into())
    }

    /// A chunk arrived: restart both timers.
    fn reset_timers(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
        if let Some((every, timer)) = &mut self.keepalive {
            timer.as_mut().reset(Instant::now() + *every);
        }
    }

    /// Upstream is silent: a keep-alive comment, if one is due.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let (every, timer) = self.keepalive.as_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        timer.as_mut().reset(Instant::now() + *every);
        let due = !self.attempt.is_finished() && self.mode.keepalive_allowed();
        due.then(|| Bytes::from_static(KEEPALIVE))
    }
}

fn join(head: Bytes, tail: Bytes) -> Bytes {
    if tail.is_empty() {
        return head;
    }
    if head.is_empty() {
        return tail;
    }
    let mut joined = BytesMut::with_capacity(head.len() + tail.len());
    joined.extend_from_slice(&head);
    joined.extend_from_slice(&tail);
    joined.freeze()
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let secs = this.idle_timeout.as_secs_f64();
                        let error = format!("upstream sent nothing for {secs}s");
                        return Poll::Ready(this.fail(error).map(Err));
                    }
                    if let Some(comment) = this.poll_keepalive(cx) {
                        return Poll::Ready(Some(Ok(Frame::data(comment))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let out = this.complete(Bytes::new());
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = format!("upstream body failed: {}", super::error_chain(&e));
                    return Poll::Ready(this.fail(error).map(Err));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            this.reset_timers();
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers go through as they are.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let mut out = this.mode.chunk(data);
            if this.mode.oversized() {
                let limit = crate::sse::MAX_EVENT;
                let error = format!("upstream sent an event larger than {limit} bytes");
                return Poll::Ready(this.fail(error).map(Err));
            }
            // A body with a known length may never be polled to its end by
            // hyper: end the attempt as soon as the last byte is here.
            if this.upstream.is_end_stream() {
                out = this.complete(out);
            } else {
                if !out.is_empty() {
                    this.attempt.first_byte();
                }
                if this.mode.terminal().is_some() {
                    this.record(false);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        if self.mode.rewrites() || self.ended {
            SizeHint::default()
        } else {
            self.upstream.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_checked_across_chunk_boundaries() {
        let text = "héllo ✓ 𝄞 end".as_bytes();
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut check = Utf8Check::default();
                check.feed(&text[..cut]);
                check.feed(&text[cut..cut2]);
                check.feed(&text[cut2..]);
                assert!(check.valid(), "{cut} {cut2}");
            }
        }
        for bad in [
            &b"ab\xffcd"[..],
            b"\xc3",
            b"\xe2\x9c",
            b"\xed\xa0\x80",
            b"\xc3\x28",
        ] {
            for cut in 0..=bad.len() {
                let mut check = Utf8Check::default();
                check.feed(&bad[..cut]);
                check.feed(&bad[cut..]);
                assert!(!check.valid(), "{bad:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn json_scan_keeps_a_bounded_tail_of_large_bodies() {
        let mut scan = JsonScan::default();
        let item = Bytes::from(format!(
            "{{\"embedding\":[{}]}},",
            "0.1,".repeat(1000) + "0"
        ));
        scan.push(&Bytes::from_static(b"{\"data\":["));
        for _ in 0..200 {
            scan.push(&item);
        }
        scan.push(&Bytes::from_static(
            b"{}],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}",
        ));
        assert!(
            scan.kept < JSON_TAIL + item.len() + 64,
            "kept {}",
            scan.kept
        );
        assert_eq!(
            scan.inspect(),
            (
                Some(Usage {
                    input_tokens: 7,
                    output_tokens: 0
                }),
                true
            )
        );
        let mut small = JsonScan::default();
        small.push(&Bytes::from_static(
            b"{\"usage\":{\"prompt_tokens\":1},\"x\":\"\xff\"}",
        ));
        assert!(!small.inspect().1, "invalid UTF-8 in a string");
    }
}
