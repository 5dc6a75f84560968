//! `llmlb.v1.ApiKeyService`.

use llmlb_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::parse_id;
use crate::api_keys::ApiKeys;
use crate::db::api_keys::ApiKeyRow;
use crate::types::timestamp;

/// The operator-facing API key API.
#[derive(Clone, Debug)]
pub struct ApiKeyApi {
    /// The keys.
    pub keys: ApiKeys,
}

fn to_pb(k: &ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        created_at: Some(timestamp(k.created_at)),
        last_used_at: k.last_used_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let (row, secret) = self.keys.create(&request.into_inner().name).await?;
        tracing::info!(api_key_id = %row.id, name = %row.name, "api key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(to_pb(&row)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        _request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let api_keys = self.keys.list().iter().map(to_pb).collect();
        Ok(Response::new(pb::ListApiKeysResponse { api_keys }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        self.keys.revoke(id).await?;
        tracing::info!(api_key_id = %id, "api key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
