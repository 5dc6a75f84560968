//! `llmlb.v1.EndpointService`.

use llmlb_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::parse_id;
use crate::db::endpoints::EndpointRow;
use crate::load::LoadManager;
use crate::registry::{EndpointChanges, NewEndpoint, Registry};
use crate::types::timestamp;

/// The operator-facing endpoint registry API.
#[derive(Clone, Debug)]
pub struct EndpointApi {
    /// The registry.
    pub registry: Registry,
    /// To forget TPS entries of deleted endpoints.
    pub load: LoadManager,
}

/// The API view of an endpoint (never the upstream key).
pub fn to_pb(e: &EndpointRow) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id.to_string(),
        name: e.name.clone(),
        base_url: e.base_url.clone(),
        health_path: e.health_path.clone(),
        has_api_key: e.api_key.is_some(),
        models: e.models().to_vec(),
        static_models: e.static_models.is_some(),
        status: pb::EndpointStatus::from(e.status) as i32,
        latency_ms: e.latency_ms,
        last_checked_at: e.last_checked_at.map(timestamp),
        last_error: e.last_error.clone(),
        created_at: Some(timestamp(e.created_at)),
        updated_at: Some(timestamp(e.updated_at)),
    }
}

#[tonic::async_trait]
impl pb::endpoint_service_server::EndpointService for EndpointApi {
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let r = request.into_inner();
        let row = self
            .registry
            .create(NewEndpoint {
                name: r.name,
                base_url: r.base_url,
                api_key: r.api_key,
                models: r.models,
                health_path: r.health_path,
            })
            .await?;
        tracing::info!(endpoint_id = %row.id, name = %row.name, base_url = %row.base_url, "endpoint created");
        Ok(Response::new(to_pb(&row)))
    }

    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(to_pb(&self.registry.get(id)?)))
    }

    async fn list_endpoints(
        &self,
        _request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let endpoints = self.registry.snapshot().iter().map(to_pb).collect();
        Ok(Response::new(pb::ListEndpointsResponse { endpoints }))
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let changes = EndpointChanges {
            name: r.name,
            base_url: r.base_url,
            api_key: r.api_key,
            models: (!r.models.is_empty()).then_some(r.models),
            clear_models: r.clear_models,
            health_path: r.health_path,
        };
        let row = self.registry.update(id, changes).await?;
        tracing::info!(endpoint_id = %row.id, name = %row.name, "endpoint updated");
        Ok(Response::new(to_pb(&row)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        self.registry.delete(id).await?;
        self.load.forget_endpoint(id);
        tracing::info!(endpoint_id = %id, "endpoint deleted");
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }
}
