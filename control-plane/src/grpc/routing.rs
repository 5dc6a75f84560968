//! `RoutingService`: the routing table pushed to proxies.

use std::pin::Pin;

use futures::Stream;
use llmlb_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api_keys::ApiKeys;
use crate::events::Events;
use crate::registry::Registry;
use crate::types::{now_ms, timestamp};

/// Builds and streams routing tables.
#[derive(Clone, Debug)]
pub struct RoutingApi {
    /// Endpoints.
    pub registry: Registry,
    /// Client API keys.
    pub keys: ApiKeys,
    /// Wakes on routing changes.
    pub events: Events,
    /// Ends every stream at shutdown.
    pub shutdown: CancellationToken,
}

impl RoutingApi {
    /// The table as of now, with `version`.
    pub fn table(&self, version: u64) -> pb::RoutingTable {
        let endpoints = self
            .registry
            .snapshot()
            .into_iter()
            .map(|e| pb::RouteEndpoint {
                id: e.id.to_string(),
                base_url: e.base_url.clone(),
                models: e.models().to_vec(),
                model_objects: e.model_objects.iter().cloned().collect(),
                api_key: e.api_key,
                status: pb::EndpointStatus::from(e.status) as i32,
                name: e.name,
            })
            .collect();
        let api_keys = self
            .keys
            .list()
            .into_iter()
            .map(|k| pb::RouteApiKey {
                id: k.id,
                sha256: k.sha256,
            })
            .collect();
        pb::RoutingTable {
            version,
            endpoints,
            api_keys,
            require_api_key: self.keys.required(),
            generated_at: Some(timestamp(now_ms())),
        }
    }
}

#[tonic::async_trait]
impl pb::routing_service_server::RoutingService for RoutingApi {
    type WatchRoutingStream = Pin<Box<dyn Stream<Item = Result<pb::RoutingTable, Status>> + Send>>;

    async fn watch_routing(
        &self,
        request: Request<pb::WatchRoutingRequest>,
    ) -> Result<Response<Self::WatchRoutingStream>, Status> {
        let proxy_id = request.into_inner().proxy_id;
        tracing::debug!(%proxy_id, "routing watch opened");
        let this = self.clone();
        let mut changes = self.events.subscribe_routing();
        let stream = async_stream::stream! {
            loop {
                let version = *changes.borrow_and_update() + 1;
                yield Ok(this.table(version));
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = this.shutdown.cancelled() => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
