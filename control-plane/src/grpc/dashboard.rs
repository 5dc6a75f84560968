//! `llmlb.v1.DashboardService`: every figure from memory (registry +
//! LoadManager), never from SQL per request.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use llmlb_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::db::endpoints::EndpointRow;
use crate::events::Events;
use crate::load::{LoadManager, TpsSource};
use crate::registry::Registry;
use crate::types::{minute_of, now_ms, timestamp, Status as EpStatus, UnixMs};

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
    /// Wakes watchers on changes.
    pub events: Events,
    /// Ends every watch at shutdown.
    pub shutdown: CancellationToken,
}

/// Average response time and its source (seed US3): the mean duration of the
/// requests of the last 60 minutes; else the unweighted mean latency of the
/// ONLINE endpoints that have one; else unknown.
pub fn average_response_time(
    from_requests: Option<f64>,
    endpoints: &[EndpointRow],
) -> (Option<f64>, Option<pb::AverageResponseTimeSource>) {
    if let Some(avg) = from_requests {
        return (Some(avg), Some(pb::AverageResponseTimeSource::Requests));
    }
    let latencies: Vec<f64> = endpoints
        .iter()
        .filter(|e| e.status == EpStatus::Online)
        .filter_map(|e| e.latency_ms)
        .collect();
    if latencies.is_empty() {
        return (None, None);
    }
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    (
        Some(mean),
        Some(pb::AverageResponseTimeSource::EndpointLatency),
    )
}

impl DashboardApi {
    /// Everything, taken at `now`.
    pub fn overview_at(&self, now: UnixMs) -> pb::Overview {
        let endpoints = self.registry.snapshot();
        let active = self.load.active_by_endpoint();
        let generated_at = Some(timestamp(now));
        pb::Overview {
            stats: Some(self.stats(&endpoints, &active, now)),
            endpoints: endpoint_stats(&endpoints, &active),
            history: self.history(now),
            model_tps: self.model_tps(),
            generated_at,
        }
    }

    fn stats(
        &self,
        endpoints: &[EndpointRow],
        active: &HashMap<Uuid, u64>,
        now: UnixMs,
    ) -> pb::Stats {
        let count = |s: EpStatus| endpoints.iter().filter(|e| e.status == s).count() as u32;
        let (avg, source) =
            average_response_time(self.load.average_response_time(minute_of(now)), endpoints);
        let mut s = pb::Stats {
            total_endpoints: endpoints.len() as u32,
            online_endpoints: count(EpStatus::Online),
            offline_endpoints: count(EpStatus::Offline),
            pending_endpoints: count(EpStatus::Pending),
            error_endpoints: count(EpStatus::Error),
            active_requests: endpoints
                .iter()
                .map(|e| active.get(&e.id).copied().unwrap_or(0))
                .sum(),
            average_response_time_ms: avg,
            average_response_time_source: source.map(|s| s as i32),
            connected_proxies: self.load.connected_proxies() as u32,
            generated_at: Some(timestamp(now)),
            ..Default::default()
        };
        for e in endpoints {
            s.total_requests += e.counters.total_requests;
            s.successful_requests += e.counters.successful_requests;
            s.failed_requests += e.counters.failed_requests;
            s.total_input_tokens += e.counters.input_tokens;
            s.total_output_tokens += e.counters.output_tokens;
        }
        s
    }

    fn history(&self, now: UnixMs) -> Vec<pb::HistoryMinute> {
        self.load
            .history(minute_of(now))
            .into_iter()
            .map(|(minute, m)| pb::HistoryMinute {
                minute: Some(timestamp(minute * 60_000)),
                success: m.success,
                failure: m.failure,
            })
            .collect()
    }

    fn model_tps(&self) -> Vec<pb::ModelTps> {
        self.load
            .tps_entries()
            .into_iter()
            .filter(|e| self.registry.contains(&e.key.endpoint_id))
            .map(|e| pb::ModelTps {
                endpoint_id: e.key.endpoint_id.to_string(),
                model: e.key.model,
                api_kind: e.key.api_kind,
                tps: e.state.tps_ema,
                request_count: e.state.request_count,
                total_output_tokens: e.state.total_output_tokens,
                source: match e.source {
                    TpsSource::Live => pb::TpsSource::Live,
                    TpsSource::Restored => pb::TpsSource::Restored,
                } as i32,
            })
            .collect()
    }
}

fn endpoint_stats(
    endpoints: &[EndpointRow],
    active: &HashMap<Uuid, u64>,
) -> Vec<pb::EndpointStats> {
    endpoints
        .iter()
        .map(|e| pb::EndpointStats {
            id: e.id.to_string(),
            name: e.name.clone(),
            base_url: e.base_url.clone(),
            status: pb::EndpointStatus::from(e.status) as i32,
            latency_ms: e.latency_ms,
            models: e.models().to_vec(),
            total_requests: e.counters.total_requests,
            successful_requests: e.counters.successful_requests,
            failed_requests: e.counters.failed_requests,
            active_requests: active.get(&e.id).copied().unwrap_or(0),
            total_input_tokens: e.counters.input_tokens,
            total_output_tokens: e.counters.output_tokens,
            last_checked_at: e.last_checked_at.map(timestamp),
            last_error: e.last_error.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl pb::dashboard_service_server::DashboardService for DashboardApi {
    type WatchOverviewStream = Pin<Box<dyn Stream<Item = Result<pb::Overview, Status>> + Send>>;

    async fn get_stats(
        &self,
        _r: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let endpoints = self.registry.snapshot();
        let active = self.load.active_by_endpoint();
        Ok(Response::new(self.stats(&endpoints, &active, now_ms())))
    }

    async fn list_endpoint_stats(
        &self,
        _r: Request<pb::ListEndpointStatsRequest>,
    ) -> Result<Response<pb::ListEndpointStatsResponse>, Status> {
        let endpoints = endpoint_stats(&self.registry.snapshot(), &self.load.active_by_endpoint());
        Ok(Response::new(pb::ListEndpointStatsResponse { endpoints }))
    }

    async fn get_request_history(
        &self,
        _r: Request<pb::GetRequestHistoryRequest>,
    ) -> Result<Response<pb::RequestHistory>, Status> {
        Ok(Response::new(pb::RequestHistory {
            minutes: self.history(now_ms()),
        }))
    }

    async fn list_model_tps(
        &self,
        _r: Request<pb::ListModelTpsRequest>,
    ) -> Result<Response<pb::ListModelTpsResponse>, Status> {
        Ok(Response::new(pb::ListModelTpsResponse {
            entries: self.model_tps(),
        }))
    }

    async fn get_overview(
        &self,
        _r: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::Overview>, Status> {
        Ok(Response::new(self.overview_at(now_ms())))
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
                yield Ok(this.overview_at(now_ms()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::endpoints::sample;

    fn ep(status: EpStatus, latency: Option<f64>) -> EndpointRow {
        EndpointRow {
            status,
            latency_ms: latency,
            ..sample("x")
        }
    }

    /// Seed T010: no requests in the window → mean latency of ONLINE
    /// endpoints (100, 200 → 150); all offline → unknown.
    #[test]
    fn average_response_time_falls_back_to_endpoint_latency() {
        let online = [
            ep(EpStatus::Online, Some(100.0)),
            ep(EpStatus::Online, Some(200.0)),
            ep(EpStatus::Offline, Some(900.0)),
        ];
        assert_eq!(
            average_response_time(None, &online),
            (
                Some(150.0),
                Some(pb::AverageResponseTimeSource::EndpointLatency)
            )
        );
        assert_eq!(
            average_response_time(Some(42.0), &online),
            (Some(42.0), Some(pb::AverageResponseTimeSource::Requests))
        );
        let offline = [
            ep(EpStatus::Offline, Some(100.0)),
            ep(EpStatus::Error, Some(200.0)),
            ep(EpStatus::Online, None),
        ];
        assert_eq!(average_response_time(None, &offline), (None, None));
    }
}
