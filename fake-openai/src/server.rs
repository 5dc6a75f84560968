//! The listener, its per-connection tasks, and the [`FakeServer`] handle.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::body::FakeBody;
use crate::config::{FakeConfig, FakeMode};
use crate::handler;
use crate::state::{InFlight, RecordedRequest, Shared};

/// Pending connections the kernel queues before `accept`.
const BACKLOG: u32 = 1024;

/// A running fake OpenAI backend. Dropping it stops it too (without waiting);
/// [`FakeServer::stop`] waits until the port is free.
pub struct FakeServer {
    /// Bound address (the real port when started on port 0).
    addr: SocketAddr,
    /// Config, counters and last request, shared with the connection tasks.
    shared: Arc<Shared>,
    /// Cancelled to stop accepting and to end every connection.
    shutdown: CancellationToken,
    /// The accept loop; it owns the listener and every connection task.
    task: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`, with `SO_REUSEADDR` so a port freed by [`FakeServer::stop`]
    /// can be bound again at once.
    pub async fn start_on(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeServer> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        tracing::debug!(%addr, "fake-openai listening");
        Ok(FakeServer {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the whole config; the next request sees it.
    pub fn set_config(&self, config: FakeConfig) {
        self.shared.set_config(config);
    }

    /// Replaces only the mode; the next request sees it.
    pub fn set_mode(&self, mode: FakeMode) {
        self.shared.update_config(|config| config.mode = mode);
    }

    /// POST requests received on `/v1/*` (not `/v1/models`), whatever the reply.
    pub fn requests(&self) -> u64 {
        self.shared.requests()
    }

    /// `GET /v1/models` requests received, whatever the reply.
    pub fn model_requests(&self) -> u64 {
        self.shared.model_requests()
    }

    /// Requests being answered now: from their arrival until their response
    /// body ends, or until their client goes away (which cancels them).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight()
    }

    /// The last POST counted by [`FakeServer::requests`].
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request()
    }

    /// Stops accepting, closes every open connection (in-flight requests and
    /// streams are cut), and returns once the listening port is free.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // The loop only ends by cancellation; a panic in it has nothing to report.
            let _ = task.await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

// === Connections ===

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let builder = auto::Builder::new(ShutdownExecutor(shutdown.clone()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(builder.clone(), stream, shared.clone()));
                }
                Err(error) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(%error, "fake-openai accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Aborts every connection task and waits until each has dropped its socket.
    connections.shutdown().await;
}

async fn serve(builder: auto::Builder<ShutdownExecutor>, stream: TcpStream, shared: Arc<Shared>) {
    // Token frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let in_flight = shared.start_request();
            let response = handler::handle(&shared, req).await;
            Ok::<_, Infallible>(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::trace!(%error, "fake-openai connection ended with an error");
    }
}

/// Spawns HTTP/2 stream tasks so that they end with the server, like the
/// connection tasks in the accept loop's `JoinSet`.
#[derive(Clone)]
struct ShutdownExecutor(CancellationToken);

impl<F> hyper::rt::Executor<F> for ShutdownExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let shutdown = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// A response body that keeps its request counted in flight until it ends or
/// is dropped.
struct TrackedBody {
    body: FakeBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
