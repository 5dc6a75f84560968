//! Boot order and the long-running tasks of the control plane.
//!
//! Boot: open and migrate the database → load the registry and API keys →
//! restore the LoadManager → recreate missing aggregate tables → only then
//! start the stats writer, the health checker, the retention pruner and the
//! listeners (so no proxy is accepted and no dashboard served before the
//! figures are back).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use llmlb_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::api_keys::ApiKeys;
use crate::config::Config;
use crate::db::{request_history, Db, DbError};
use crate::events::Events;
use crate::grpc::{
    api_keys::ApiKeyApi,
    auth::BearerAuth,
    dashboard::DashboardApi,
    endpoints::EndpointApi,
    overview::{DashboardGrpc, OverviewEncoder},
    routing::RoutingApi,
};
use crate::health::{self, HealthConfig, HttpProbe};
use crate::ingest::{StatsService, StatsWriter, WriterDeps};
use crate::load::LoadManager;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rest::{self, Gateway};
use crate::restore::restore;
use crate::tls::{self, TlsFiles};
use crate::types::now_ms;

/// Errors that stop the boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The database cannot be opened or migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The registry cannot be read.
    #[error("cannot load the endpoint registry: {0}")]
    Registry(sqlx::Error),
    /// The TLS certificate or key is not usable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Cancel to stop everything.
    pub shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    db: Db,
}

impl Running {
    /// Waits until a task ends by itself (which stops the rest) or `shutdown`
    /// fires, then drains every task within `grace` and closes the database.
    pub async fn wait(mut self, grace: Duration) {
        let first = futures::future::select_all(self.tasks.iter_mut().map(|(_, t)| t));
        let finished = tokio::select! {
            (result, index, _) = first => {
                let name = self.tasks[index].0;
                match result {
                    Ok(()) if self.shutdown.is_cancelled() => {}
                    Ok(()) => tracing::error!(task = name, "task stopped unexpectedly; shutting down"),
                    Err(e) => tracing::error!(task = name, error = %e, "task failed; shutting down"),
                }
                Some(index)
            }
            _ = self.shutdown.cancelled() => None,
        };
        self.shutdown.cancel();
        let rest: Vec<_> = self
            .tasks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != finished)
            .map(|(_, t)| t)
            .collect();
        let deadline = tokio::time::Instant::now() + grace;
        for (name, task) in rest {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(task = name, "task did not stop within the grace period");
            }
        }
        self.db.close().await;
        tracing::info!("control plane stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BootError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BootError::Bind { addr, source })
}

/// Boots the control plane and starts its tasks.
pub async fn start(config: Config) -> Result<Running, BootError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles::load(cert, key)?),
        _ => None,
    };
    let db = Db::open(&config.sqlite_path()).await?;
    let events = Events::default();
    let metrics = Metrics::default();
    let registry = Registry::load(db.clone(), events.clone())
        .await
        .map_err(BootError::Registry)?;
    let api_keys = ApiKeys::load(db.clone(), events.clone())
        .await
        .map_err(BootError::Registry)?;
    let load = LoadManager::new(events.clone());

    let report = restore(&db, &load, now_ms()).await;
    metrics.set_restore(Duration::from_secs_f64(report.took_ms / 1000.0));
    match db.missing_aggregate_tables().await {
        Ok(missing) if !missing.is_empty() => {
            tracing::warn!(tables = ?missing, "aggregate tables are missing; recreating them empty");
            if let Err(error) = db.recreate_missing_tables().await {
                tracing::warn!(%error, "recreating aggregate tables failed");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "checking aggregate tables failed"),
    }
    let endpoints = registry.snapshot();
    tracing::info!(
        endpoints = endpoints.len(),
        requests = endpoints
            .iter()
            .fold(0u64, |n, e| n.saturating_add(e.counters.total_requests)),
        timeline_minutes = report.minutes,
        exact_tps = report.exact_tps,
        daily_tps = report.daily_tps,
        failed_steps = ?report.failed_steps,
        took_ms = report.took_ms,
        "restored dashboard state"
    );

    let grpc_listener = bind(config.grpc_listen).await?;
    let http_listener = bind(config.http_listen).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| BootError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| BootError::Bind {
            addr: config.http_listen,
            source,
        })?;

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let deps = WriterDeps {
        db: db.clone(),
        registry: registry.clone(),
        load: load.clone(),
        api_keys: api_keys.clone(),
        metrics: metrics.clone(),
    };
    let (writer, writer_task) = StatsWriter::spawn(deps, shutdown.clone());
    tasks.push(("stats writer", writer_task));

    let probe = HttpProbe::new().map_err(|e| crate::tls::TlsError::Invalid(e.to_string()))?;
    let health_config = HealthConfig {
        interval: config.health_check_interval,
        timeout: config.health_check_timeout,
    };
    tasks.push((
        "health checker",
        tokio::spawn(health::run(
            registry.clone(),
            Arc::new(probe),
            health_config,
            events.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
    ));
    tasks.push((
        "retention pruner",
        tokio::spawn(prune_history(
            db.clone(),
            config.history_retention,
            shutdown.clone(),
        )),
    ));

    let admin = BearerAuth::new(config.admin_token.clone(), "admin token");
    let proxy_auth = BearerAuth::new(config.proxy_token.clone(), "proxy token");
    let endpoint_api = EndpointApi {
        registry: registry.clone(),
        load: load.clone(),
    };
    let dashboard_api = DashboardApi {
        registry: registry.clone(),
        load: load.clone(),
        encoder: OverviewEncoder::new(registry.clone(), load.clone()),
        events: events.clone(),
        shutdown: shutdown.clone(),
    };
    let key_api = ApiKeyApi {
        keys: api_keys.clone(),
    };
    let routing_api = RoutingApi {
        registry: registry.clone(),
        keys: api_keys.clone(),
        events: events.clone(),
        shutdown: shutdown.clone(),
    };
    let stats_service = StatsService {
        writer,
        load: load.clone(),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        retention: config.history_retention,
    };

    let grpc = grpc_server(
        grpc_listener,
        GrpcServices {
            endpoint_api: endpoint_api.clone(),
            dashboard_api: dashboard_api.clone(),
            key_api: key_api.clone(),
            routing_api,
            stats_service,
        },
        admin.clone(),
        proxy_auth,
        tls.clone(),
        shutdown.clone(),
    );
    tasks.push(("grpc server", tokio::spawn(grpc)));

    let gateway = Gateway {
        endpoints: endpoint_api,
        dashboard: dashboard_api,
        keys: key_api,
        admin,
        metrics,
    };
    let router = rest::router(gateway);
    let http_shutdown = shutdown.clone();
    let http_task = match &tls {
        Some(files) => tokio::spawn(tls::serve_https(
            http_listener,
            router,
            files.acceptor()?,
            http_shutdown,
        )),
        None => tokio::spawn(async move {
            // Small replies must not wait for delayed ACKs (Nagle).
            let listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::error!(%error, "http server failed");
            }
        }),
    };
    tasks.push(("http server", http_task));
    tracing::info!(grpc = %grpc_addr, http = %http_addr, database = %config.sqlite_path().display(), "control plane listening");
    Ok(Running {
        grpc_addr,
        http_addr,
        shutdown,
        tasks,
        db,
    })
}

struct GrpcServices {
    endpoint_api: EndpointApi,
    dashboard_api: DashboardApi,
    key_api: ApiKeyApi,
    routing_api: RoutingApi,
    stats_service: StatsService,
}

/// How long in-flight gRPC calls get to finish after a shutdown signal.
const GRPC_DRAIN: Duration = Duration::from_secs(1);

async fn grpc_server(
    listener: TcpListener,
    s: GrpcServices,
    admin: BearerAuth,
    proxy: BearerAuth,
    tls: Option<TlsFiles>,
    shutdown: CancellationToken,
) {
    use pb::{
        api_key_service_server::ApiKeyServiceServer,
        dashboard_service_server::DashboardServiceServer,
        endpoint_service_server::EndpointServiceServer,
        routing_service_server::RoutingServiceServer, stats_service_server::StatsServiceServer,
    };
    use tonic::service::interceptor::InterceptedService;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EndpointServiceServer<EndpointApi>>()
        .await;
    health_reporter
        .set_serving::<DashboardServiceServer<DashboardApi>>()
        .await;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(llmlb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1();
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha();
    let (Ok(reflection_v1), Ok(reflection_v1alpha)) = (reflection_v1, reflection_v1alpha) else {
        tracing::error!("building server reflection failed");
        return;
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = tls {
        let identity = tonic::transport::Identity::from_pem(files.cert_pem, files.key_pem);
        builder =
            match builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
                Ok(b) => b,
                Err(error) => {
                    tracing::error!(%error, "gRPC TLS setup failed");
                    return;
                }
            };
    }
    let serve = builder
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(EndpointServiceServer::with_interceptor(
            s.endpoint_api,
            admin.clone(),
        ))
        .add_service(InterceptedService::new(
            DashboardGrpc::new(
                DashboardServiceServer::new(s.dashboard_api.clone()),
                s.dashboard_api.encoder,
            ),
            admin.clone(),
        ))
        .add_service(ApiKeyServiceServer::with_interceptor(s.key_api, admin))
        .add_service(RoutingServiceServer::with_interceptor(
            s.routing_api,
            proxy.clone(),
        ))
        .add_service(StatsServiceServer::with_interceptor(s.stats_service, proxy))
        .serve_with_incoming_shutdown(
            // Our own listener: tonic's `tcp_nodelay` does not reach these
            // sockets, and without it small replies wait for delayed ACKs.
            TcpListenerStream::new(listener).map(|tcp| {
                if let Ok(tcp) = &tcp {
                    let _ = tcp.set_nodelay(true);
                }
                tcp
            }),
            shutdown.clone().cancelled_owned(),
        );
    // A graceful HTTP/2 shutdown waits for every client to close its
    // connection, which idle clients may never do: after a short drain, the
    // remaining connections are dropped. Nothing acknowledged is lost (the
    // writer commits what it has queued) and proxies resend what was not.
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(GRPC_DRAIN).await;
    };
    tokio::select! {
        result = serve => if let Err(error) = result {
            tracing::error!(%error, "grpc server failed");
        },
        _ = drained => tracing::debug!("closing the remaining gRPC connections"),
    }
}

/// Rows deleted by one pruning statement.
const PRUNE_BATCH: u32 = 1_000;

/// How often the pruner runs: half the retention, between 1 s and 60 s (so
/// a row lives at most 1.5 × the retention, or the retention + 60 s).
fn prune_interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes request history older than `retention` in small batches
/// ([`PRUNE_BATCH`] rows per statement, each its own transaction), so the
/// stats writer (same connection) waits for one short statement at most.
async fn prune_history(db: Db, retention: Duration, shutdown: CancellationToken) {
    const BATCH: u32 = PRUNE_BATCH;
    let mut tick = tokio::time::interval(prune_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut removed = 0;
        loop {
            match request_history::prune_before(&db.write, cutoff, BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < u64::from(BATCH) || shutdown.is_cancelled() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning request history failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "pruned request history past the retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pruner_runs_at_half_the_retention_within_bounds() {
        assert_eq!(
            prune_interval(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            prune_interval(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
    }
}
