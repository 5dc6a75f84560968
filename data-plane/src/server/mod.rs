//! The HTTP listener: HTTP/1.1 and h2c on one port, served thread per core.
//!
//! [`serve`] accepts on the caller's runtime and hands each connection, in
//! turn, to one of `--workers` worker threads. A worker is a current-thread
//! tokio runtime with its own [`App`] (so its own upstream connection pool):
//! a request is read, forwarded upstream and relayed back on one thread,
//! with no hand-off between threads on the way (on a multi-thread runtime
//! each hand-off between the client and upstream connection tasks could
//! wake another thread; see docs/benchmarks.md). On shutdown every worker
//! drains its own connections.
//!
//! Every connection is bounded: [`limit`] caps how many are open (below the
//! file descriptor limit, shedding idle ones first), [`conn`] closes those
//! that keep the proxy waiting (header, idle, body and send timeouts), and
//! [`http1`] refuses HTTP/1 requests whose `Host` or `Transfer-Encoding`
//! RFC 9112 forbids.

pub mod conn;
pub mod http1;
pub mod limit;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nix::errno::Errno;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use self::conn::{TrackedBody, Tracker};
use self::limit::{Connections, Registered};
use crate::body_limits::BodyLimits;
use crate::config::Timeouts;
use crate::metrics::Metrics;
use crate::proxy::App;

/// Largest HTTP/1 request head (request line and headers), bytes; a larger
/// one is answered 431. It is also the most hyper buffers per read, which
/// keeps each connection's read buffer at its initial 8 KiB instead of
/// letting it grow past 16 KiB while a request is parsed
/// (docs/benchmarks.md, memory per stream). hyper allows no less.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Idle connections shed when an accept fails for want of descriptors.
const SHED_ON_EMFILE: usize = 16;

/// Least time between two warnings about accepting (failures, or the
/// connection cap), so that an attack does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// HTTP/2 PING interval and how long to wait for the answer: finds clients
/// that vanished during a long stream (the connection is closed without an
/// answer).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the listener serves connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker threads.
    pub workers: usize,
    /// Drain time on shutdown.
    pub grace: Duration,
    /// What a client may keep the proxy waiting for.
    pub timeouts: Timeouts,
    /// Most open connections (before the descriptor limit).
    pub max_connections: usize,
    /// Request body bytes held at once per connection.
    pub body_budget: usize,
}

/// How the drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections cut because the grace period ran out.
    pub aborted_connections: usize,
}

/// A connection accepted and registered, on its way to a worker.
type Accepted = (std::net::TcpStream, SocketAddr, Registered);

/// One worker thread, seen from the acceptor.
struct Worker {
    /// Accepted connections for it.
    connections: mpsc::UnboundedSender<Accepted>,
    /// Its drain report, when it has drained.
    done: oneshot::Receiver<DrainReport>,
}

/// Starts a worker thread serving `app` until `stop` fires (or the acceptor
/// goes away), then draining for up to the grace period.
fn spawn_worker(
    index: usize,
    app: App,
    stop: CancellationToken,
    settings: Settings,
) -> std::io::Result<Worker> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (connections, incoming) = mpsc::unbounded_channel();
    let (report, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("llmlb-worker-{index}"))
        .spawn(move || {
            let drained = runtime.block_on(
                serve_connections(incoming, app, stop, settings)
                    .instrument(info_span!("worker", index)),
            );
            let _ = report.send(drained);
        })?;
    Ok(Worker { connections, done })
}

/// Rate-limited warnings of the accept loop.
#[derive(Default)]
struct Warnings {
    /// When the last one was logged.
    last: Option<Instant>,
    /// How many were not logged since.
    suppressed: u64,
}

impl Warnings {
    /// Whether to log one now; `suppressed` says how many were skipped.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts on `listener` and hands connections to worker threads (each
/// with an [`App`] made by `make_app`) until `stop` fires; then stops
/// accepting, lets the open connections finish their requests for up to
/// the grace period, and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    make_app: impl Fn() -> App,
    metrics: Metrics,
    stop: CancellationToken,
) -> DrainReport {
    let cap = limit::connection_cap(settings.max_connections, settings.workers.max(1));
    let registry = Connections::new(cap, metrics);
    let mut pool = Vec::with_capacity(settings.workers);
    for index in 0..settings.workers.max(1) {
        match spawn_worker(index, make_app(), stop.clone(), settings.clone()) {
            Ok(worker) => pool.push(worker),
            Err(error) => {
                error!(%error, "cannot start a worker thread");
                break;
            }
        }
    }
    let mut next = 0;
    let (mut accept_warnings, mut cap_warnings) = (Warnings::default(), Warnings::default());
    while !pool.is_empty() {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    let out_of_fds = error
                        .raw_os_error()
                        .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE));
                    let shed = if out_of_fds { registry.shed_idle(SHED_ON_EMFILE) } else { 0 };
                    if let Some(suppressed) = accept_warnings.due() {
                        warn!(%error, shed, suppressed, open = registry.open(), "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let budget = settings.body_budget;
        let Some(registered) = registry.admit(|id| Tracker::new(id, budget)) else {
            if let Some(suppressed) = cap_warnings.due() {
                warn!(%peer, cap, suppressed, "at the connection cap with no idle connection: closing new connections");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                debug!(%peer, %error, "cannot hand over a connection");
                continue;
            }
        };
        next = (next + 1) % pool.len();
        if pool[next]
            .connections
            .send((stream, peer, registered))
            .is_err()
        {
            error!(worker = next, "worker thread stopped unexpectedly");
            break;
        }
    }
    drop(listener);
    let mut report = DrainReport {
        aborted_connections: 0,
    };
    let (senders, reports): (Vec<_>, Vec<_>) =
        pool.into_iter().map(|w| (w.connections, w.done)).unzip();
    // Workers also stop when their sender is gone.
    drop(senders);
    for done in reports {
        if let Ok(drained) = done.await {
            report.aborted_connections += drained.aborted_connections;
        }
    }
    report
}

/// A worker's loop: serves the connections it is handed, one task each,
/// until `stop` fires or the acceptor is gone; then drains.
async fn serve_connections(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    app: App,
    stop: CancellationToken,
    settings: Settings,
) -> DrainReport {
    let timeouts = settings.timeouts;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let drain = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next() => {}
            accepted = incoming.recv() => {
                let Some((stream, peer, registered)) = accepted else { break };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(error) => {
                        debug!(%peer, %error, "cannot take over a connection");
                        continue;
                    }
                };
                let tracker = registered.tracker.clone();
                let limits = BodyLimits {
                    timeout: timeouts.body,
                    budget: tracker.budget().clone(),
                    drain: drain.clone(),
                };
                let (service_app, service_tracker) = (app.clone(), tracker.clone());
                let service = service_fn(move |mut request: hyper::Request<Incoming>| {
                    let active = service_tracker.request_started(request.version());
                    let checked = http1::check(request.version(), request.headers());
                    if request.method() == Method::POST {
                        request.extensions_mut().insert(limits.clone());
                    }
                    // Boxed: hyper keeps the allocation of the service
                    // future for the connection's whole life, and the request
                    // path's future is large (3.5 KB); boxed, it is freed as
                    // soon as the response head is ready, so an open stream
                    // holds only the small wrapper (docs/benchmarks.md,
                    // memory per stream).
                    let app = service_app.clone();
                    let handled = checked.map(|()| Box::pin(app.clone().handle_owned(request)));
                    async move {
                        let response = match handled {
                            Ok(handled) => handled.await,
                            Err(refused) => {
                                debug!(%refused, "HTTP/1 request refused");
                                app.metrics().rejected(refused.status().as_u16());
                                let mut response = refused.response();
                                response
                                    .headers_mut()
                                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                                response
                            }
                        };
                        Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, active)))
                    }
                });
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let (drain, metrics) = (drain.clone(), app.metrics().clone());
                connections.spawn(async move {
                    let ended = conn::drive(connection, tracker, timeouts, drain, metrics).await;
                    debug!(%peer, ?ended, "connection done");
                    drop(registered);
                });
            }
        }
    }
    drop(incoming);
    let open = connections.len();
    info!(open_connections = open, grace = ?settings.grace, "stopped accepting; draining");
    drain.cancel();
    // Finished connections are reaped as they end, so that what is left at
    // the end of the grace period is what was still open.
    let drained = tokio::time::timeout(settings.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    while connections.try_join_next().is_some() {}
    let aborted_connections = if drained { 0 } else { connections.len() };
    if aborted_connections > 0 {
        warn!(
            connections = aborted_connections,
            "grace period over: cutting the remaining connections"
        );
    }
    connections.shutdown().await;
    DrainReport {
        aborted_connections,
    }
}
