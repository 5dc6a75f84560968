//! `llmlb.v1.DashboardService`: every figure from memory (registry +
//! LoadManager), never from SQL per request. `GetOverview` over gRPC and
//! REST is encoded by `super::overview::OverviewEncoder`.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use llmlb_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::overview::{self, OverviewEncoder};
use crate::events::Events;
use crate::load::LoadManager;
use crate::registry::Registry;
use crate::types::now_ms;

/// Fastest pace of `WatchOverview` updates.
const WATCH_MIN_GAP: Duration = Duration::from_millis(250);
/// Heartbeat of `WatchOverview` when nothing changes.
const WATCH_HEARTBEAT: Duration = Duration::from_secs(5);

/// The dashboard API.
#[derive(Clone, Debug)]
pub struct DashboardApi {
    /// Endpoints and their counters.
    pub registry: Registry,
    /// Timeline, TPS, active requests.
    pub load: LoadManager,
    /// `GetOverview`, encoded.
    pub encoder: OverviewEncoder,
    /// Wakes watchers on changes.
    pub events: Events,
    /// Ends every watch at shutdown.
    pub shutdown: CancellationToken,
}

impl DashboardApi {
    /// The overview of now, as a message.
    pub fn overview_now(&self) -> pb::Overview {
        overview::overview_at(&self.registry, &self.load, now_ms())
    }
}

#[tonic::async_trait]
impl pb::dashboard_service_server::DashboardService for DashboardApi {
    type WatchOverviewStream = Pin<Box<dyn Stream<Item = Result<pb::Overview, Status>> + Send>>;

    async fn get_stats(
        &self,
        _r: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        Ok(Response::new(overview::stats_at(
            &self.registry,
            &self.load,
            now_ms(),
        )))
    }

    async fn list_endpoint_stats(
        &self,
        _r: Request<pb::ListEndpointStatsRequest>,
    ) -> Result<Response<pb::ListEndpointStatsResponse>, Status> {
        let loads = overview::endpoint_loads(&self.load, crate::types::now_ms());
        let endpoints = overview::endpoints_at(&self.registry.snapshot(), &loads);
        Ok(Response::new(pb::ListEndpointStatsResponse { endpoints }))
    }

    async fn get_request_history(
        &self,
        _r: Request<pb::GetRequestHistoryRequest>,
    ) -> Result<Response<pb::RequestHistory>, Status> {
        Ok(Response::new(pb::RequestHistory {
            minutes: overview::history(&self.load, now_ms()),
        }))
    }

    async fn list_model_tps(
        &self,
        _r: Request<pb::ListModelTpsRequest>,
    ) -> Result<Response<pb::ListModelTpsResponse>, Status> {
        let ids = self
            .registry
            .read()
            .ordered()
            .map(|(row, _)| row.id)
            .collect();
        Ok(Response::new(pb::ListModelTpsResponse {
            entries: overview::model_tps(&self.load, &ids),
        }))
    }

    /// Over gRPC and REST this is answered by the encoder
    /// (`super::overview::DashboardGrpc`); this is the path of in-process
    /// callers.
    async fn get_overview(
        &self,
        _r: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::Overview>, Status> {
        Ok(Response::new(self.overview_now()))
    }

    async fn watch_overview(
        &self,
        _r: Request<pb::WatchOverviewRequest>,
    ) -> Result<Response<Self::WatchOverviewStream>, Status> {
        let this = self.clone();
        let mut changes = self.events.subscribe_dashboard();
        let stream = async_stream::stream! {
            loop {
                changes.borrow_and_update();
                yield Ok(this.overview_now());
                let pace = tokio::time::sleep(WATCH_MIN_GAP);
                tokio::select! {
                    _ = pace => {}
                    _ = this.shutdown.cancelled() => break,
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(WATCH_HEARTBEAT - WATCH_MIN_GAP) => {}
                    _ = this.shutdown.cancelled() => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
