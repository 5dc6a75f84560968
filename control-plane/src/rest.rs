//! The REST/JSON gateway, `/metrics`, `/healthz` and the dashboard page.
//!
//! Every `/api` route calls the same service implementation as its gRPC
//! method and answers in the proto3 JSON mapping; errors follow the
//! grpc-gateway shape `{"code", "message", "details"}` and status table.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use llmlb_proto::v1 as pb;
use llmlb_proto::v1::api_key_service_server::ApiKeyService;
use llmlb_proto::v1::dashboard_service_server::DashboardService;
use llmlb_proto::v1::endpoint_service_server::EndpointService;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use crate::grpc::api_keys::ApiKeyApi;
use crate::grpc::auth::BearerAuth;
use crate::grpc::dashboard::DashboardApi;
use crate::grpc::endpoints::EndpointApi;
use crate::grpc::overview::Form;
use crate::metrics::Metrics;

/// The dashboard page (self-contained: no CDN).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Largest accepted request body.
const MAX_BODY: usize = 1 << 20;

/// What the gateway's handlers share.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// EndpointService.
    pub endpoints: EndpointApi,
    /// DashboardService.
    pub dashboard: DashboardApi,
    /// ApiKeyService.
    pub keys: ApiKeyApi,
    /// Operator token check for `/api`.
    pub admin: BearerAuth,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// A gRPC status as a grpc-gateway JSON error.
pub struct ApiError(pub Status);

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

/// HTTP status of a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.0.code() as i32,
            "message": self.0.message(),
            "details": [],
        });
        (http_status(self.0.code()), Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A request body; when it cannot be read (larger than 1 MiB, broken
/// stream) the answer is still a gateway error body, with HTTP status 413
/// (code OUT_OF_RANGE) or 400.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Code::OutOfRange
                } else {
                    Code::InvalidArgument
                };
                let message = format!(
                    "cannot read the request body (at most {MAX_BODY} bytes): {}",
                    rejection.body_text()
                );
                let mut response = ApiError(Status::new(code, message)).into_response();
                *response.status_mut() = status;
                Err(response)
            }
        }
    }
}

/// Parses a proto3-JSON body; an empty body reads as `{}`.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError(Status::invalid_argument(format!("invalid JSON body: {e}"))))
}

fn reply<T: Serialize>(r: Result<tonic::Response<T>, Status>) -> ApiResult<T> {
    r.map(|r| Json(r.into_inner())).map_err(ApiError)
}

/// The router of the HTTP listener.
pub fn router(gw: Gateway) -> Router {
    let api = Router::new()
        .route("/api/dashboard/overview", get(overview))
        .route("/api/dashboard/stats", get(stats))
        .route("/api/dashboard/endpoints", get(endpoint_stats))
        .route("/api/dashboard/request-history", get(request_history))
        .route("/api/dashboard/model-tps", get(model_tps))
        .route("/api/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/api/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/api/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api/api-keys/{id}", axum::routing::delete(revoke_api_key))
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_admin));
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD_HTML) }))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async { ApiError(Status::not_found("no such route")) })
        .method_not_allowed_fallback(|| async {
            let mut r =
                ApiError(Status::unimplemented("method not allowed on this route")).into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(gw)
}

async fn require_admin(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if gw.admin.allows(header) {
        next.run(request).await
    } else {
        ApiError(Status::unauthenticated(
            "missing or wrong admin token (authorization: Bearer <token>)",
        ))
        .into_response()
    }
}

async fn metrics(State(gw): State<Gateway>) -> impl IntoResponse {
    let text = gw
        .metrics
        .render(&gw.dashboard.registry, &gw.dashboard.load);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// `GET /healthz`: alive, and this replica's role. With SQLite there is one
/// control plane per database file, always the leader (a standby needs a
/// shared database, which this build does not have yet).
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok", "role": "leader"}))
}

// === dashboard ===

/// Encoded by the overview encoder (the same message as gRPC's).
async fn overview(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let json = gw.dashboard.encoder.encode(Form::Json)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

async fn stats(State(gw): State<Gateway>) -> ApiResult<pb::Stats> {
    reply(
        gw.dashboard
            .get_stats(tonic::Request::new(pb::GetStatsRequest {}))
            .await,
    )
}

async fn endpoint_stats(State(gw): State<Gateway>) -> ApiResult<pb::ListEndpointStatsResponse> {
    reply(
        gw.dashboard
            .list_endpoint_stats(tonic::Request::new(pb::ListEndpointStatsRequest {}))
            .await,
    )
}

async fn request_history(State(gw): State<Gateway>) -> ApiResult<pb::RequestHistory> {
    reply(
        gw.dashboard
            .get_request_history(tonic::Request::new(pb::GetRequestHistoryRequest {}))
            .await,
    )
}

async fn model_tps(State(gw): State<Gateway>) -> ApiResult<pb::ListModelTpsResponse> {
    reply(
        gw.dashboard
            .list_model_tps(tonic::Request::new(pb::ListModelTpsRequest {}))
            .await,
    )
}

// === endpoints ===

async fn list_endpoints(State(gw): State<Gateway>) -> ApiResult<pb::ListEndpointsResponse> {
    reply(
        gw.endpoints
            .list_endpoints(tonic::Request::new(pb::ListEndpointsRequest {}))
            .await,
    )
}

async fn create_endpoint(
    State(gw): State<Gateway>,
    Body(body): Body,
) -> Result<(StatusCode, Json<pb::Endpoint>), ApiError> {
    let req: pb::CreateEndpointRequest = parse_body(&body)?;
    let Json(e) = reply(gw.endpoints.create_endpoint(tonic::Request::new(req)).await)?;
    Ok((StatusCode::OK, Json(e)))
}

async fn get_endpoint(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> ApiResult<pb::Endpoint> {
    reply(
        gw.endpoints
            .get_endpoint(tonic::Request::new(pb::GetEndpointRequest { id }))
            .await,
    )
}

async fn update_endpoint(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<pb::Endpoint> {
    let mut req: pb::UpdateEndpointRequest = parse_body(&body)?;
    req.id = id;
    reply(gw.endpoints.update_endpoint(tonic::Request::new(req)).await)
}

async fn delete_endpoint(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> ApiResult<pb::DeleteEndpointResponse> {
    reply(
        gw.endpoints
            .delete_endpoint(tonic::Request::new(pb::DeleteEndpointRequest { id }))
            .await,
    )
}

// === api keys ===

async fn list_api_keys(State(gw): State<Gateway>) -> ApiResult<pb::ListApiKeysResponse> {
    reply(
        gw.keys
            .list_api_keys(tonic::Request::new(pb::ListApiKeysRequest {}))
            .await,
    )
}

async fn create_api_key(
    State(gw): State<Gateway>,
    Body(body): Body,
) -> ApiResult<pb::CreateApiKeyResponse> {
    let req: pb::CreateApiKeyRequest = parse_body(&body)?;
    reply(gw.keys.create_api_key(tonic::Request::new(req)).await)
}

async fn revoke_api_key(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> ApiResult<pb::RevokeApiKeyResponse> {
    reply(
        gw.keys
            .revoke_api_key(tonic::Request::new(pb::RevokeApiKeyRequest { id }))
            .await,
    )
}
