//! llmlb data plane: an OpenAI-compatible HTTP proxy.
//!
//! [`start`] binds the listener and spawns three named tasks that share one
//! shutdown sequence ([`ProxyHandle::shutdown`]):
//!
//! - `proxy_listener` ([`server`]): accepts HTTP/1.1 + h2c connections and
//!   hands them to `--workers` worker threads (one current-thread runtime
//!   each), which run the request path in [`proxy`];
//! - `routing_watcher` ([`routing`]): keeps the routing table pushed by the
//!   control plane;
//! - `stats_uploader` ([`stats::uploader`]): streams one record per upstream
//!   attempt to the control plane.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod config;
pub mod control;
pub mod error;
pub mod json;
pub mod loads;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod sse;
pub mod stats;
pub mod usage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

pub use crate::config::{Cli, Config, ConfigError, LogFormat};
use crate::control::{ControlError, ControlPlane};
use crate::loads::Loads;
use crate::metrics::Metrics;
use crate::proxy::attempt::Reporter;
use crate::proxy::App;
use crate::routing::Routes;
use crate::server::DrainReport;
use crate::stats::StatsSink;

/// Least time given to the stats flush on shutdown, even when draining
/// requests used up the grace period.
const MIN_FLUSH_TIME: Duration = Duration::from_secs(1);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The control plane settings are unusable.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Address actually bound.
    local_addr: SocketAddr,
    /// Identity reported to the control plane.
    proxy_id: String,
    /// Drain time for in-flight requests.
    grace: Duration,
    /// Stops the listener (then it drains).
    stop_listener: CancellationToken,
    /// Stops the routing watcher and the stats uploader.
    stop_background: CancellationToken,
    /// Stats buffer, flushed on shutdown.
    stats: StatsSink,
    /// Metrics (also served on `/metrics`).
    metrics: Metrics,
    /// The `proxy_listener` task; ends after draining.
    listener: JoinHandle<DrainReport>,
    /// The `routing_watcher` task.
    routing: JoinHandle<()>,
    /// The `stats_uploader` task.
    uploader: JoinHandle<()>,
}

/// What shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections cut at the end of the grace period.
    pub aborted_connections: usize,
    /// Stats records not acknowledged by the control plane (lost).
    pub unflushed_records: usize,
}

/// Binds the listener, connects to the control plane (lazily) and spawns
/// the tasks.
pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let proxy_id = config.control.proxy_id.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            gethostname::gethostname().to_string_lossy(),
            local_addr.port()
        )
    });
    let control = ControlPlane::new(
        &config.control.url,
        config.control.proxy_token.as_deref(),
        config.control.ca_pem.as_deref(),
    )?;

    let metrics = Metrics::new();
    let stats = StatsSink::new(config.stats.buffer, metrics.clone());
    let routes = Routes::default();
    let loads = Loads::default();
    let reporter = Reporter {
        stats: stats.clone(),
        metrics: metrics.clone(),
    };
    // One App (with its own upstream connection pool) per worker thread;
    // the routing table, loads, stats and metrics are shared.
    let make_app = {
        let (server, upstream) = (config.server.clone(), config.upstream.clone());
        let (proxy_id, routes, loads) = (
            Arc::<str>::from(proxy_id.as_str()),
            routes.clone(),
            loads.clone(),
        );
        move || {
            App::new(
                &server,
                &upstream,
                proxy_id.clone(),
                routes.clone(),
                loads.clone(),
                reporter.clone(),
            )
        }
    };

    info!(listen = %local_addr, proxy_id = %proxy_id, control_plane = %config.control.url, "llmlb-proxy starting");
    let stop_listener = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let grace = config.server.shutdown_grace;
    let listener = tokio::spawn(
        server::serve(
            listener,
            config.server.workers,
            make_app,
            stop_listener.clone(),
            grace,
        )
        .instrument(info_span!("proxy_listener")),
    );
    let routing = tokio::spawn(
        routing::watch(
            control.clone(),
            proxy_id.clone(),
            routes,
            loads.clone(),
            metrics.clone(),
            stop_background.clone(),
        )
        .instrument(info_span!("routing_watcher")),
    );
    let uploader = tokio::spawn(
        stats::uploader::run(
            control,
            proxy_id.clone(),
            stats.clone(),
            loads,
            stop_background.clone(),
        )
        .instrument(info_span!("stats_uploader")),
    );
    Ok(ProxyHandle {
        local_addr,
        proxy_id,
        grace,
        stop_listener,
        stop_background,
        stats,
        metrics,
        listener,
        routing,
        uploader,
    })
}

impl ProxyHandle {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The identity reported to the control plane.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stats records held (pending and unacknowledged).
    pub fn stats_held(&self) -> usize {
        self.stats.held()
    }

    /// Runs until `signal` resolves or a task stops unexpectedly, then shuts
    /// down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> ShutdownReport {
        tokio::select! {
            () = signal => info!("shutdown requested"),
            _ = &mut self.listener => warn!("proxy listener stopped unexpectedly"),
            _ = &mut self.routing => warn!("routing watcher stopped unexpectedly"),
            _ = &mut self.uploader => warn!("stats uploader stopped unexpectedly"),
        }
        self.shutdown().await
    }

    /// Stops accepting, drains in-flight requests for up to the grace period,
    /// then waits for the control plane to acknowledge every stats record
    /// for what is left of it (at least [`MIN_FLUSH_TIME`]).
    pub async fn shutdown(self) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        self.stop_listener.cancel();
        let drain = if self.listener.is_finished() {
            DrainReport {
                aborted_connections: 0,
            }
        } else {
            self.listener.await.unwrap_or(DrainReport {
                aborted_connections: 0,
            })
        };
        let flush_deadline =
            (started + self.grace).max(tokio::time::Instant::now() + MIN_FLUSH_TIME);
        let unflushed_records = self.stats.flush(flush_deadline).await;
        if unflushed_records > 0 {
            warn!(
                records = unflushed_records,
                "stats not acknowledged by the control plane before the deadline: lost"
            );
        }
        self.stop_background.cancel();
        for task in [self.routing, self.uploader] {
            // A task that already ended was awaited by `run_until`.
            if !task.is_finished() {
                let _ = task.await;
            }
        }
        info!(
            aborted_connections = drain.aborted_connections,
            unflushed_records, "llmlb-proxy stopped"
        );
        ShutdownReport {
            aborted_connections: drain.aborted_connections,
            unflushed_records,
        }
    }
}
