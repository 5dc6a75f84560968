//! [`RelayBody`]: streams an upstream response body to the client chunk by
//! chunk, reading usage on the way, and ends its [`Attempt`].
//!
//! - Event streams (`text/event-stream`) go through an [`SseScanner`]: in
//!   strip mode (the proxy added `stream_options.include_usage`) only
//!   complete events are forwarded and the usage-only chunk is dropped;
//!   otherwise chunks are forwarded at once and a copy is scanned.
//! - JSON bodies are forwarded at once; the chunks are kept (by reference,
//!   up to [`JSON_COPY_LIMIT`]) to read `usage` at the end.
//! - Anything else is forwarded untouched.
//!
//! The attempt ends when the upstream body ends (success if 2xx and the body
//! is well formed: a JSON body that parses, an event stream whose events
//! carry JSON data or `[DONE]`; the bytes are relayed either way), fails, or
//! stays silent longer than the idle timeout; if the client goes away first,
//! hyper drops the body, which drops the upstream response (closing that
//! connection) and the attempt (recorded as a failure).

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
use crate::sse::SseScanner;
use crate::usage::{self, Usage};

/// Most bytes of a JSON response kept to read its usage.
pub const JSON_COPY_LIMIT: usize = 16 * 1024 * 1024;

/// How the body is read on its way through.
#[derive(Debug)]
pub enum Mode {
    /// Server-sent events.
    Sse(SseScanner),
    /// A JSON document.
    Json(JsonCopy),
    /// Anything else.
    Opaque,
}

impl Mode {
    /// The mode for a response of `content_type`; `strip` drops the
    /// usage-only chunk of event streams.
    pub fn for_content_type(content_type: Option<&str>, strip: bool) -> Self {
        let essence = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("text/event-stream") if strip => Self::Sse(SseScanner::stripper()),
            Some("text/event-stream") => Self::Sse(SseScanner::observer()),
            Some(c) if c == "application/json" || c.ends_with("+json") => {
                Self::Json(JsonCopy::default())
            }
            _ => Self::Opaque,
        }
    }

    /// Whether the bytes sent to the client may differ from upstream's.
    pub fn rewrites(&self) -> bool {
        matches!(self, Self::Sse(s) if s.strips())
    }

    /// Takes an upstream chunk, returns what to forward now.
    fn chunk(&mut self, data: Bytes) -> Bytes {
        match self {
            Self::Sse(scanner) if scanner.strips() => scanner.filter(&data),
            Self::Sse(scanner) => {
                scanner.observe(&data);
                data
            }
            Self::Json(copy) => {
                copy.push(&data);
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

    /// Usage read from the body (call after [`finish`](Self::finish)).
    fn usage(&self) -> Option<Usage> {
        self.outcome().0
    }

    /// Usage read from the body, and why the body is malformed if it is: an
    /// event stream with an event whose data is not JSON, or a JSON body
    /// that does not parse (call after [`finish`](Self::finish)).
    fn outcome(&self) -> (Option<Usage>, Option<String>) {
        match self {
            Self::Sse(scanner) => {
                let malformed = (scanner.malformed() > 0).then(|| {
                    format!(
                        "upstream sent {} event(s) whose data is not JSON",
                        scanner.malformed()
                    )
                });
                (scanner.usage(), malformed)
            }
            Self::Json(copy) => {
                let (usage, valid) = copy.inspect();
                let malformed =
                    (!valid).then(|| "upstream sent a body that is not valid JSON".to_owned());
                (usage, malformed)
            }
            Self::Opaque => (None, None),
        }
    }
}

/// The chunks of a JSON body, kept by reference.
#[derive(Debug, Default)]
pub struct JsonCopy {
    chunks: Vec<Bytes>,
    len: usize,
    overflowed: bool,
}

impl JsonCopy {
    fn push(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.len + data.len() > JSON_COPY_LIMIT {
            self.overflowed = true;
            self.chunks = Vec::new();
            return;
        }
        self.len += data.len();
        self.chunks.push(data.clone());
    }

    /// The usage of the document, and whether it is valid JSON (a body too
    /// large to keep is taken as valid).
    fn inspect(&self) -> (Option<Usage>, bool) {
        if self.overflowed {
            return (None, true);
        }
        let whole;
        let document: &[u8] = match self.chunks.as_slice() {
            [one] => one,
            chunks => {
                let mut joined = BytesMut::with_capacity(self.len);
                chunks.iter().for_each(|c| joined.extend_from_slice(c));
                whole = joined;
                &whole
            }
        };
        match usage::parse(document) {
            Some(info) => (info.usage, true),
            None => (None, usage::is_json(document)),
        }
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
    /// The upstream body ended (or failed): nothing more to poll.
    ended: bool,
    /// Keeps the client request counted in flight.
    _inflight: InflightRequest,
}

impl RelayBody {
    /// Relays `upstream` for `attempt`.
    pub fn new(
        upstream: Incoming,
        mode: Mode,
        attempt: Attempt,
        idle_timeout: Duration,
        inflight: InflightRequest,
    ) -> Self {
        Self {
            upstream,
            mode,
            attempt,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            ended: false,
            _inflight: inflight,
        }
    }

    /// The upstream body is complete: read usage, end the attempt, and
    /// return the bytes still to forward (appended to `out`).
    fn complete(&mut self, out: Bytes) -> Bytes {
        self.ended = true;
        let tail = self.mode.finish();
        let out = if tail.is_empty() {
            out
        } else if out.is_empty() {
            tail
        } else {
            let mut joined = BytesMut::with_capacity(out.len() + tail.len());
            joined.extend_from_slice(&out);
            joined.extend_from_slice(&tail);
            joined.freeze()
        };
        if !out.is_empty() {
            self.attempt.first_byte();
        }
        let (usage, malformed) = self.mode.outcome();
        if let Some(usage) = usage {
            self.attempt.set_usage(usage);
        }
        // The bytes are relayed as they came (the status line is long gone),
        // but a malformed 2xx body is not a successful attempt. (A non-2xx
        // answer is a failure anyway, recorded with its status.)
        let ok_status = self
            .attempt
            .status()
            .is_some_and(|s| (200..300).contains(&s));
        match malformed {
            Some(error) if ok_status => self.attempt.fail(error),
            _ => self.attempt.complete(),
        }
        out
    }

    fn fail(&mut self, error: String) -> BoxError {
        self.ended = true;
        if let Some(usage) = self.mode.usage() {
            self.attempt.set_usage(usage);
        }
        self.attempt.fail(error.clone());
        error.into()
    }
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
                        return Poll::Ready(Some(Err(this.fail(error))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let out = this.complete(Bytes::new());
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = format!("upstream body failed: {}", super::error_chain(&e));
                    return Poll::Ready(Some(Err(this.fail(error))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let deadline = Instant::now() + this.idle_timeout;
            this.idle.as_mut().reset(deadline);
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers go through as they are.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let mut out = this.mode.chunk(data);
            // A body with a known length may never be polled to its end by
            // hyper: end the attempt as soon as the last byte is here.
            if this.upstream.is_end_stream() {
                out = this.complete(out);
            } else if !out.is_empty() {
                this.attempt.first_byte();
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
