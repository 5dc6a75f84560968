//! The HTTP request path.
//!
//! [`App::handle`] reads top to bottom:
//!
//! 1. route by method and path (`/healthz`, `/metrics`, `/v1/models`, the
//!    four POST APIs; 404 or 405 otherwise);
//! 2. for the APIs: a routing table must be there (503), the client API key
//!    must be valid when keys are required (401), the body must fit the
//!    limit (413) and be a JSON object with a string `model` (400);
//! 3. the model must be served by some endpoint (404) that is ONLINE (503);
//! 4. [`forward`] sends it upstream with failover and relays the answer;
//!    every error becomes an OpenAI error body in [`ProxyError::response`].

pub mod attempt;
pub mod body;
pub mod forward;
pub mod relay;
pub mod request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tracing::{debug, debug_span, field, Instrument, Span};

use self::attempt::{Reporter, RequestInfo};
use self::body::{BoxError, ProxyBody};
use self::forward::Forward;
use crate::config::{ServerConfig, UpstreamConfig};
pub use crate::error::error_chain;
use crate::error::{json_response, ProxyError};
use crate::loads::Loads;
use crate::metrics::{self, InflightRequest, Metrics};
use crate::routing::{RouteError, Routes};

/// The pooled upstream client type: HTTP, or HTTPS with the web PKI roots.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Read buffer of an upstream connection, bytes: every read takes at most
/// this much, and an upstream's response head must fit in it.
const UPSTREAM_READ_BUF: usize = 4096;

/// TCP keepalive on upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Shared state of the request path; cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<Inner>,
}

/// What every request needs.
#[derive(Debug)]
pub struct Inner {
    /// Routing table pushed by the control plane.
    routes: Routes,
    /// Per-endpoint in-flight counts and latency estimates.
    loads: Loads,
    /// Pooled upstream client, created once for the process.
    client: UpstreamClient,
    /// Stats sink and metrics for finished attempts.
    reporter: Reporter,
    /// Proxy identity in stats records.
    proxy_id: Arc<str>,
    /// Largest request body, bytes.
    max_body_size: usize,
    /// Require an API key even when the table has none.
    require_api_key: bool,
    /// Timeout to response headers and between body chunks.
    upstream_timeout: Duration,
    /// Keep-alive comment period of silent event streams.
    sse_keepalive: Option<Duration>,
}

impl std::ops::Deref for App {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Wraps `connector` for `https://` upstreams (rustls with ring and the web
/// PKI roots; ALPN offers HTTP/1.1 only, like the plain connector).
fn https_connector(connector: HttpConnector) -> HttpsConnector<HttpConnector> {
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let builder =
        match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider) {
            Ok(builder) => builder,
            // ring's default provider supports the safe default versions.
            Err(error) => unreachable!("ring TLS provider: {error}"),
        };
    builder
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector)
}

impl App {
    /// Builds the request path and its upstream client.
    pub fn new(
        server: &ServerConfig,
        upstream: &UpstreamConfig,
        proxy_id: Arc<str>,
        routes: Routes,
        loads: Loads,
        reporter: Reporter,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        connector.enforce_http(false);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http1_read_buf_exact_size(UPSTREAM_READ_BUF)
            .build(https_connector(connector));
        Self {
            inner: Arc::new(Inner {
                routes,
                loads,
                client,
                reporter,
                proxy_id,
                max_body_size: server.max_body_size,
                require_api_key: server.require_api_key,
                upstream_timeout: upstream.timeout,
                sse_keepalive: upstream.sse_keepalive,
            }),
        }
    }

    /// Metrics of the proxy.
    pub fn metrics(&self) -> &Metrics {
        &self.reporter.metrics
    }

    /// [`handle`](Self::handle) on an owned `App`, for a `'static` future.
    pub async fn handle_owned<B>(self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.handle(request).await
    }

    /// Answers one client request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let received = Instant::now();
        let inflight = self.metrics().inflight_request();
        // Debug-level: see `Attempt::start`.
        let span = debug_span!("request", method = %request.method(), path = request.uri().path(), model = field::Empty);
        let answer = self
            .route(request, received, inflight)
            .instrument(span.clone())
            .await;
        answer.unwrap_or_else(|error| {
            span.in_scope(|| debug!(status = error.status().as_u16(), %error, "request answered by the proxy"));
            self.metrics().rejected(error.status().as_u16());
            if matches!(error, ProxyError::BodyTimeout { .. }) {
                self.metrics().timeout(metrics::TimeoutKind::Body);
            }
            error.response()
        })
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        received: Instant,
        inflight: InflightRequest,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path();
        let method = request.method();
        let (allow, kind) = match path {
            "/healthz" | "/metrics" | "/v1/models" => ("GET", None),
            _ => match request::api_kind(path) {
                Some(kind) => ("POST", Some(kind)),
                None => {
                    return Err(ProxyError::NotFound {
                        method: method.to_string(),
                        path: path.to_owned(),
                    })
                }
            },
        };
        if method.as_str() != allow {
            return Err(ProxyError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_owned(),
                allow,
            });
        }
        match (path, kind) {
            ("/healthz", _) => Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok")),
            ("/metrics", _) => {
                let cooldowns = self.loads.cooldowns(Instant::now());
                let left = cooldowns.iter().map(|(id, left)| (id.as_str(), *left));
                self.metrics().set_cooldowns(left);
                Ok(text(
                    StatusCode::OK,
                    metrics::CONTENT_TYPE,
                    self.metrics().encode(),
                ))
            }
            (_, None) => self.models(&request),
            (_, Some(kind)) => self.api(kind, request, received, inflight).await,
        }
    }

    /// `GET /v1/models`: the models of the ONLINE endpoints, each as the
    /// first ONLINE endpoint's server described it (its whole object from
    /// that server's `/v1/models`: `created`, `owned_by`, `max_model_len`,
    /// ...); a placeholder for models no server listed (given by hand).
    fn models<B>(&self, request: &Request<B>) -> Result<Response<ProxyBody>, ProxyError> {
        let table = self.routes.current().ok_or(ProxyError::NotReady)?;
        request::authorize(&table, request.headers(), self.require_api_key)?;
        let data: Vec<_> = table
            .online_models()
            .into_iter()
            .map(|id| {
                table
                    .model_object(id)
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
                    .filter(|object| object.get("id").and_then(|v| v.as_str()) == Some(id))
                    .unwrap_or_else(
                        || json!({"id": id, "object": "model", "created": 0, "owned_by": "llmlb"}),
                    )
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": data}),
        ))
    }

    /// The four OpenAI POST APIs.
    async fn api<B>(
        &self,
        kind: llmlb_proto::v1::ApiKind,
        request: Request<B>,
        received: Instant,
        inflight: InflightRequest,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let table = self.routes.current().ok_or(ProxyError::NotReady)?;
        let api_key_id = request::authorize(&table, request.headers(), self.require_api_key)?;
        let (parts, body) = request.into_parts();
        // The bytes stay counted against the connection's budget until the
        // response head is ready (the body is kept for failover until then).
        let (body, _held) = request::read_body(
            body,
            &parts.headers,
            self.max_body_size,
            parts.extensions.get(),
        )
        .await?;
        let parsed = request::parse(body, kind)?;
        // A client may send any string as the model: logs and error
        // messages show at most its first characters.
        let shown = || crate::error::clip(&parsed.model);
        let span = Span::current();
        if !span.is_disabled() {
            span.record("model", shown().as_str());
        }
        let candidates = table.route(&parsed.model).map_err(|e| match e {
            RouteError::UnknownModel => ProxyError::ModelNotFound(shown()),
            RouteError::NoOnlineEndpoint => ProxyError::NoOnlineEndpoint(shown()),
        })?;
        drop(table);
        let info = Arc::new(RequestInfo {
            proxy_id: self.proxy_id.clone(),
            model: parsed.model.clone(),
            api_kind: kind,
            api_key_id,
            received,
        });
        self.forward(Forward {
            parts,
            parsed,
            info,
            candidates,
            inflight,
        })
        .await
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
