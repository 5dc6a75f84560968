//! One client connection, bounded in time: [`drive`] serves it and closes
//! it when the client keeps the proxy waiting.
//!
//! What a client can make the proxy wait for, and the bound of each:
//!
//! - its first request head (a silent connection, a partial HTTP/2 preface,
//!   an HTTP/2 connection that opens no stream): `--header-timeout`, counted
//!   from the accept; later HTTP/1 heads are timed by hyper
//!   (`header_read_timeout`, counted from when it starts waiting for one, so
//!   an idle HTTP/1 connection closes after it too);
//! - its next request while none is in flight: `--idle-timeout` (HTTP/2
//!   gets a GOAWAY);
//! - the next chunk of a request body: `--body-timeout`, applied where the
//!   body is read ([`crate::body_limits`]);
//! - taking a response chunk: `--send-timeout`. Each response body is
//!   wrapped in a [`TrackedBody`] that notes when it handed a chunk to hyper
//!   and hyper has not asked for the next one (hyper asks only once the
//!   client has taken what it could: HTTP/2 flow control, or a full socket
//!   buffer); past the timeout the inner body is dropped, which closes the
//!   upstream connection and records the attempt as failed ("client went
//!   away before the response body ended"), and an HTTP/1 connection is cut.
//!
//! The checks run on one timer per connection, moved to the next deadline,
//! and at least every quarter of the send timeout (nothing tells the driver
//! that a request started, so that requests cost nothing here).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::body_limits::BodyBudget;
use crate::config::Timeouts;
use crate::metrics::{Metrics, TimeoutKind};
use crate::proxy::body::{BoxError, ProxyBody};

/// How long a connection told to close (after a timeout) may take to say
/// goodbye (an HTTP/2 GOAWAY) before it is cut.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// `Stream::handed` when the stream is not waiting for the client.
const NOT_WAITING: u64 = u64::MAX;

/// The state of one connection shared by its driver, its requests and the
/// acceptor (which sheds idle connections).
#[derive(Debug)]
pub struct Tracker {
    /// Registry id (increasing: a lower id is an older connection).
    id: u64,
    /// When it was accepted; the times below count from here.
    epoch: Instant,
    /// Requests in flight (until their response body is dropped).
    active: AtomicUsize,
    /// Milliseconds from `epoch` to when `active` last fell to 0.
    idle_since: AtomicU64,
    /// A request arrived.
    served: AtomicBool,
    /// The last request was HTTP/1 (a stuck response then cuts the
    /// connection: nothing else can use it).
    http1: AtomicBool,
    /// Told to close to make room for a new connection.
    shed: AtomicBool,
    /// Cancelled to cut the connection now.
    close: CancellationToken,
    /// Response bodies being sent.
    streams: Mutex<Vec<Arc<Stream>>>,
    /// Request body bytes held for this connection.
    budget: BodyBudget,
}

/// A response body being sent, seen by the driver.
#[derive(Debug)]
struct Stream {
    /// Milliseconds from the connection's epoch to when a chunk was handed
    /// to hyper that it has not come back after ([`NOT_WAITING`] if none).
    handed: AtomicU64,
    /// The body; taken (dropped) by the driver after the send timeout.
    body: Mutex<Option<ProxyBody>>,
}

impl Tracker {
    /// A connection accepted now, with a body budget of `budget` bytes.
    pub fn new(id: u64, budget: usize) -> Self {
        Self {
            id,
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            served: AtomicBool::new(false),
            http1: AtomicBool::new(true),
            shed: AtomicBool::new(false),
            close: CancellationToken::new(),
            streams: Mutex::new(Vec::new()),
            budget: BodyBudget::new(budget),
        }
    }

    /// Registry id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection's request body budget.
    pub fn budget(&self) -> &BodyBudget {
        &self.budget
    }

    /// No request in flight.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
    }

    /// Marks it shed; false if it already was.
    pub fn mark_shed(&self) -> bool {
        !self.shed.swap(true, Ordering::Relaxed)
    }

    /// Whether it was shed.
    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Relaxed)
    }

    /// Cuts the connection now.
    pub fn close_now(&self) {
        self.close.cancel();
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// A request of `version` arrived; it is in flight until the guard (or
    /// the [`TrackedBody`] it goes into) drops.
    pub fn request_started(self: &Arc<Self>, version: http::Version) -> Active {
        self.served.store(true, Ordering::Relaxed);
        self.http1
            .store(version < http::Version::HTTP_2, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active {
            tracker: self.clone(),
        }
    }

    /// What to do at `now`: close the connection after a timeout, or look
    /// again at a deadline. Response bodies that waited for the client
    /// longer than the send timeout are dropped here (and counted).
    fn check(&self, now: Instant, timeouts: &Timeouts, metrics: &Metrics) -> Check {
        let send = timeouts.send;
        // Nothing tells the driver when a request starts: it looks again at
        // least this often, idle or not (one timer per connection, no cost
        // per request).
        let mut next = now + (send / 4).max(Duration::from_millis(10));
        if self.is_idle() {
            let (since, limit, kind) = if self.served.load(Ordering::Relaxed) {
                let since = self.at(self.idle_since.load(Ordering::Relaxed));
                (since, timeouts.idle, TimeoutKind::Idle)
            } else {
                (self.epoch, timeouts.header, TimeoutKind::Header)
            };
            let deadline = since + limit;
            return if now >= deadline {
                Check::Close(kind)
            } else {
                Check::At(deadline.min(next))
            };
        }
        let mut stuck = Vec::new();
        // Streams whose body was dropped after the send timeout; hyper
        // keeps them until the client makes room for their reset (HTTP/2).
        let mut dead = 0;
        for stream in self.streams.lock().iter() {
            if stream.body.lock().is_none() {
                dead += 1;
                continue;
            }
            let handed = stream.handed.load(Ordering::Relaxed);
            if handed == NOT_WAITING {
                continue;
            }
            let deadline = self.at(handed) + send;
            if now >= deadline {
                stuck.push(stream.clone());
            } else {
                next = next.min(deadline);
            }
        }
        let timed_out = !stuck.is_empty();
        for stream in stuck {
            // Dropped outside of the streams lock: dropping a relayed body
            // ends its attempt.
            let body = stream.body.lock().take();
            if body.is_some() {
                dead += 1;
                metrics.timeout(TimeoutKind::Send);
                debug!(
                    send_timeout = ?send,
                    "the client took no response data within the send timeout: upstream cancelled"
                );
            }
            drop(body);
        }
        // HTTP/1 cannot use the connection again; HTTP/2 can, unless it is
        // left with nothing but dead streams.
        let http1 = self.http1.load(Ordering::Relaxed);
        if (timed_out && http1) || (dead > 0 && dead >= self.active.load(Ordering::Relaxed)) {
            Check::Cut
        } else {
            Check::At(next)
        }
    }
}

/// What the driver does next.
#[derive(Debug)]
enum Check {
    /// Close the connection (gracefully, then cut after [`CLOSE_LINGER`]).
    Close(TimeoutKind),
    /// Cut it now (an HTTP/1 response the client does not take).
    Cut,
    /// Look again then.
    At(Instant),
}

/// A request in flight; see [`Tracker::request_started`].
#[derive(Debug)]
pub struct Active {
    tracker: Arc<Tracker>,
}

impl Drop for Active {
    fn drop(&mut self) {
        let tracker = &self.tracker;
        if tracker.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = tracker.millis(Instant::now());
            tracker.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

/// A response body whose progress the connection's driver watches; see the
/// module documentation.
#[derive(Debug)]
pub struct TrackedBody {
    stream: Arc<Stream>,
    /// Keeps the request in flight.
    active: Active,
}

impl TrackedBody {
    /// Wraps `body`, the response of the request `active`.
    pub fn new(body: ProxyBody, active: Active) -> Self {
        let stream = Arc::new(Stream {
            handed: AtomicU64::new(NOT_WAITING),
            body: Mutex::new(Some(body)),
        });
        active.tracker.streams.lock().push(stream.clone());
        Self { stream, active }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let mut streams = self.active.tracker.streams.lock();
        if let Some(at) = streams.iter().position(|s| Arc::ptr_eq(s, &self.stream)) {
            streams.swap_remove(at);
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Asked again: the client took what it was handed.
        this.stream.handed.store(NOT_WAITING, Ordering::Relaxed);
        let mut body = this.stream.body.lock();
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err("the client took no response data in time".into())));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                let now = this.active.tracker.millis(Instant::now());
                this.stream.handed.store(now, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stream
            .body
            .lock()
            .as_ref()
            .is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.stream
            .body
            .lock()
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It finished (the client closed it, or it closed after a timeout or
    /// the drain).
    Closed,
    /// The proxy cut it (shed, or a response the client did not take).
    Cut,
}

/// Serves `connection` until it ends, closing it after the timeouts (see
/// the module documentation), gracefully when `drain` fires, and at once
/// when the tracker says so.
pub async fn drive<C>(
    connection: C,
    tracker: Arc<Tracker>,
    timeouts: Timeouts,
    drain: CancellationToken,
    metrics: Metrics,
) -> Ended
where
    C: GracefulConnection,
    C::Error: Into<BoxError>,
{
    tokio::pin!(connection);
    let closed = tracker.close.cancelled();
    tokio::pin!(closed);
    let drained = drain.cancelled();
    tokio::pin!(drained);
    // The first check sets the first deadline.
    let wake = tokio::time::sleep_until(tracker.epoch);
    tokio::pin!(wake);
    let mut closing: Option<Instant> = None;
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    let error: BoxError = error.into();
                    let hyper_timeout = error
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if hyper_timeout {
                        metrics.timeout(TimeoutKind::Header);
                    }
                    debug!(%error, "connection ended with an error");
                }
                return Ended::Closed;
            }
            () = &mut closed => return Ended::Cut,
            () = &mut drained, if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut wake => {
                let now = Instant::now();
                if let Some(cut_at) = closing {
                    if now >= cut_at {
                        return Ended::Cut;
                    }
                }
                match tracker.check(now, &timeouts, &metrics) {
                    Check::Close(kind) if closing.is_none() => {
                        metrics.timeout(kind);
                        debug!(timeout = kind.label(), "closing a connection that kept the proxy waiting");
                        connection.as_mut().graceful_shutdown();
                        closing = Some(now + CLOSE_LINGER);
                        wake.as_mut().reset(now + CLOSE_LINGER);
                    }
                    Check::Close(_) => wake.as_mut().reset(closing.unwrap_or(now)),
                    Check::Cut => return Ended::Cut,
                    Check::At(next) => wake.as_mut().reset(closing.map_or(next, |c| c.min(next))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(60),
            send: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_closed_after_its_header_then_idle_timeout() {
        let metrics = Metrics::new();
        let tracker = Arc::new(Tracker::new(0, 1024));
        let t = timeouts();
        let start = Instant::now();
        let look = t.send / 4;
        assert!(matches!(tracker.check(start, &t, &metrics), Check::At(d) if d == start + look));
        let later = start + t.header - Duration::from_secs(1);
        assert!(
            matches!(tracker.check(later, &t, &metrics), Check::At(d) if d == start + t.header)
        );
        assert!(matches!(
            tracker.check(start + t.header, &t, &metrics),
            Check::Close(TimeoutKind::Header)
        ));
        let active = tracker.request_started(http::Version::HTTP_2);
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        assert!(matches!(tracker.check(now, &t, &metrics), Check::At(d) if d == now + look));
        drop(active);
        let later = now + t.idle - Duration::from_secs(1);
        assert!(matches!(tracker.check(later, &t, &metrics), Check::At(d) if d == now + t.idle));
        assert!(matches!(
            tracker.check(now + t.idle, &t, &metrics),
            Check::Close(TimeoutKind::Idle)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_take_is_dropped_after_the_send_timeout() {
        use http_body_util::BodyExt;
        let metrics = Metrics::new();
        let t = timeouts();
        // HTTP/2: the stuck stream is dropped, the connection stays for the
        // live one, and is cut once only the dead stream is left.
        let tracker = Arc::new(Tracker::new(0, 1024));
        let live = tracker.request_started(http::Version::HTTP_2);
        let live = TrackedBody::new(ProxyBody::full("later"), live);
        let stuck = tracker.request_started(http::Version::HTTP_2);
        let mut stuck = TrackedBody::new(ProxyBody::full("hello"), stuck);
        let frame = stuck.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        // Handed over, never asked for more.
        tokio::time::advance(t.send).await;
        let verdict = tracker.check(Instant::now(), &t, &metrics);
        assert!(matches!(verdict, Check::At(_)), "{verdict:?}");
        assert!(
            stuck.frame().await.unwrap().is_err(),
            "the body was dropped"
        );
        drop(live);
        let verdict = tracker.check(Instant::now(), &t, &metrics);
        assert!(matches!(verdict, Check::Cut), "{verdict:?}");
        drop(stuck);
        assert!(tracker.streams.lock().is_empty());

        // HTTP/1: the connection is cut at once.
        let tracker = Arc::new(Tracker::new(1, 1024));
        let active = tracker.request_started(http::Version::HTTP_11);
        let mut body = TrackedBody::new(ProxyBody::full("hello"), active);
        body.frame().await.unwrap().unwrap();
        tokio::time::advance(t.send).await;
        let verdict = tracker.check(Instant::now(), &t, &metrics);
        assert!(matches!(verdict, Check::Cut), "{verdict:?}");
        assert_eq!(metrics.timeouts_total(TimeoutKind::Send), 2);
    }
}
