//! The HTTP listener: HTTP/1.1 and h2c on one port, one task per connection,
//! graceful drain on shutdown.

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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

/// Serves `listener` until `stop` fires, then stops accepting, lets the open
/// connections finish their requests for up to `grace`, and cuts the rest.
pub async fn serve(
    listener: TcpListener,
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
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(request).await) }
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
    drop(listener);
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
