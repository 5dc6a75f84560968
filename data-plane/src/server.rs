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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::proxy::App;

/// Longest wait for a client's request headers (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest HTTP/1 request head (request line and headers), bytes; a larger
/// one is answered 431. It is also the most hyper buffers per read, which
/// keeps each connection's read buffer at its initial 8 KiB instead of
/// letting it grow past 16 KiB while a request is parsed
/// (docs/benchmarks.md, memory per stream). hyper allows no less.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How the drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections cut because the grace period ran out.
    pub aborted_connections: usize,
}

/// A connection accepted, on its way to a worker.
type Accepted = (std::net::TcpStream, SocketAddr);

/// One worker thread, seen from the acceptor.
struct Worker {
    /// Accepted connections for it.
    connections: mpsc::UnboundedSender<Accepted>,
    /// Its drain report, when it has drained.
    done: oneshot::Receiver<DrainReport>,
}

/// Starts a worker thread serving `app` until `stop` fires (or the acceptor
/// goes away), then draining for up to `grace`.
fn spawn_worker(
    index: usize,
    app: App,
    stop: CancellationToken,
    grace: Duration,
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
                serve_connections(incoming, app, stop, grace)
                    .instrument(info_span!("worker", index)),
            );
            let _ = report.send(drained);
        })?;
    Ok(Worker { connections, done })
}

/// Accepts on `listener` and hands connections to `workers` worker threads
/// (each with an [`App`] made by `make_app`) until `stop` fires; then stops
/// accepting, lets the open connections finish their requests for up to
/// `grace`, and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    workers: usize,
    make_app: impl Fn() -> App,
    stop: CancellationToken,
    grace: Duration,
) -> DrainReport {
    let mut pool = Vec::with_capacity(workers);
    for index in 0..workers.max(1) {
        match spawn_worker(index, make_app(), stop.clone(), grace) {
            Ok(worker) => pool.push(worker),
            Err(error) => {
                error!(%error, "cannot start a worker thread");
                break;
            }
        }
    }
    let mut next = 0;
    while !pool.is_empty() {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
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
        if pool[next].connections.send((stream, peer)).is_err() {
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
    grace: Duration,
) -> DrainReport {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next() => {}
            accepted = incoming.recv() => {
                let Some((stream, peer)) = accepted else { break };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(error) => {
                        debug!(%peer, %error, "cannot take over a connection");
                        continue;
                    }
                };
                let app = app.clone();
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    // Boxed: hyper keeps the allocation of the service
                    // future for the connection's whole life, and the request
                    // path's future is large (3.5 KB); boxed, it is freed as
                    // soon as the response head is ready, so an open stream
                    // holds only the small wrapper (docs/benchmarks.md,
                    // memory per stream).
                    let handled = Box::pin(app.clone().handle_owned(request));
                    async move { Ok::<_, Infallible>(handled.await) }
                });
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(incoming);
    let open = connections.len();
    info!(open_connections = open, grace = ?grace, "stopped accepting; draining");
    let drained = tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok();
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
