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
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
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
            Self::Sse(sse) => sse.head.is_none() && sse.remaining == 0 && sse.tail.len() == 0,
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
