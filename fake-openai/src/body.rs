//! Response bodies: a fixed buffer, or a server-sent-event stream that emits one
//! frame per token, `token_interval` apart.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::config::Habits;

/// The body of every response the fake sends.
pub(crate) enum FakeBody {
    /// A complete body, sent as one frame with a `content-length`.
    Full(Option<Bytes>),
    /// A streamed body.
    Sse(SseBody),
}

impl FakeBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

/// `head`, then `tokens` copies of `token` (each its own frame, each preceded by
/// `interval`), then every frame of `tail`.
pub(crate) struct SseBody {
    head: Option<Bytes>,
    token: Bytes,
    remaining: u32,
    interval: Duration,
    /// Armed on the first token; its deadline advances by `interval` per token so
    /// the token rate does not drift with scheduling delays.
    sleep: Option<Pin<Box<Sleep>>>,
    tail: std::vec::IntoIter<Bytes>,
    /// Send every frame as two, split in the middle (habit `split-lines`).
    split: bool,
    /// Second half of a split frame, sent next.
    rest: Option<Bytes>,
    /// Pause between the last frame and the end of the body (habit `late-eof`).
    late_eof: Option<Pin<Box<Sleep>>>,
    late_eof_after: Option<Duration>,
}

impl SseBody {
    pub(crate) fn new(
        head: Option<Bytes>,
        token: Bytes,
        tokens: u32,
        interval: Duration,
        tail: Vec<Bytes>,
    ) -> Self {
        Self {
            head,
            token,
            remaining: tokens,
            interval,
            sleep: None,
            tail: tail.into_iter(),
            split: false,
            rest: None,
            late_eof: None,
            late_eof_after: None,
        }
    }

    /// Applies the stream habits of `habits` (`split-lines`, `late-eof`).
    pub(crate) fn with_habits(mut self, habits: &Habits) -> Self {
        self.split = habits.split_lines;
        self.late_eof_after = habits.late_eof;
        self
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(rest) = self.rest.take() {
            return Poll::Ready(Some(rest));
        }
        let next = ready!(self.poll_frame_bytes(cx));
        match next {
            Some(mut frame) if self.split && frame.len() > 1 => {
                self.rest = Some(frame.split_off(frame.len() / 2));
                Poll::Ready(Some(frame))
            }
            Some(frame) => Poll::Ready(Some(frame)),
            None => {
                if let Some(pause) = self.late_eof_after.take() {
                    self.late_eof = Some(Box::pin(tokio::time::sleep(pause)));
                }
                if let Some(sleep) = &mut self.late_eof {
                    ready!(sleep.as_mut().poll(cx));
                    self.late_eof = None;
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_done(&self) -> bool {
        self.head.is_none()
            && self.remaining == 0
            && self.tail.len() == 0
            && self.rest.is_none()
            && self.late_eof.is_none()
            && self.late_eof_after.is_none()
    }

    fn poll_frame_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(head));
        }
        if self.remaining > 0 {
            if !self.interval.is_zero() {
                let interval = self.interval;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
                ready!(sleep.as_mut().poll(cx));
                let next = sleep.deadline() + interval;
                sleep.as_mut().reset(next);
            }
            self.remaining -= 1;
            return Poll::Ready(Some(self.token.clone()));
        }
        Poll::Ready(self.tail.next())
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            Self::Full(bytes) => bytes.take(),
            Self::Sse(sse) => ready!(sse.poll_next(cx)),
        };
        Poll::Ready(next.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Sse(sse) => sse.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Sse(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn sse_body_emits_one_frame_per_token_at_the_interval() {
        let start = tokio::time::Instant::now();
        let mut body = FakeBody::Sse(SseBody::new(
            Some(Bytes::from_static(b"head")),
            Bytes::from_static(b"tok"),
            3,
            Duration::from_millis(100),
            vec![Bytes::from_static(b"end")],
        ));
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            seen.push((data, start.elapsed().as_millis()));
        }
        let expected: Vec<(Bytes, u128)> = vec![
            (Bytes::from_static(b"head"), 0),
            (Bytes::from_static(b"tok"), 100),
            (Bytes::from_static(b"tok"), 200),
            (Bytes::from_static(b"tok"), 300),
            (Bytes::from_static(b"end"), 300),
        ];
        assert_eq!(seen, expected);
        assert!(body.is_end_stream());
    }

    #[test]
    fn full_body_reports_exact_length() {
        let body = FakeBody::full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
    }
}
