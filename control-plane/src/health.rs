//! The health checker: probes every endpoint on its own schedule and applies
//! the status rules through the registry. What counts as alive (the
//! liveness rule of `proto/llmlb/v1/endpoint.proto`, also in docs/api.md):
//!
//! 1. `healthPath` set: `GET {baseUrl}{healthPath}` answers 2xx. Without
//!    models given by hand, `GET {baseUrl}/v1/models` must then also answer
//!    2xx with a list (the models come from it).
//! 2. Models given by hand, no `healthPath`: `GET {baseUrl}/v1/models`
//!    answers anything but 5xx (a server without a model list answers 404).
//! 3. Otherwise: `GET {baseUrl}/v1/models` answers 2xx with a model list.
//!
//! A failure's one-line reason names the full URL asked.
//!
//! Each endpoint has its own probe loop, so a slow endpoint never delays
//! another; a supervisor starts, restarts (after a configuration change) and
//! stops the loops as the registry changes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Largest `/v1/models` reply read.
const MAX_MODELS_BODY: usize = 4 << 20;

/// A successful probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeOk {
    /// Duration of the liveness request, ms.
    pub latency_ms: f64,
    /// Model ids the server listed (empty when it has no list).
    pub models: Vec<String>,
    /// Each listed model's full object, as JSON text, in list order.
    pub objects: Vec<(String, String)>,
}

impl ProbeOk {
    /// A probe that found `models` (no model objects).
    pub fn listed(latency_ms: f64, models: Vec<String>) -> ProbeOk {
        ProbeOk {
            latency_ms,
            models,
            objects: Vec::new(),
        }
    }
}

/// A probe's outcome; the error is a one-line reason.
pub type ProbeResult = Result<ProbeOk, String>;

/// What to probe.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The server root.
    pub base_url: &'a str,
    /// Upstream key, sent as Bearer.
    pub api_key: Option<&'a str>,
    /// Liveness path instead of `/v1/models`.
    pub health_path: Option<&'a str>,
    /// Models were given by hand (no discovery needed).
    pub static_models: bool,
}

/// Something that can probe an endpoint.
pub trait Probe: Send + Sync + 'static {
    /// Probes `target`; the error is a one-line reason.
    fn probe<'a>(
        &'a self,
        target: Target<'a>,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;
}

/// Probes over HTTP or HTTPS (web PKI roots) with a pooled client.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpProbe {
    /// A probe client; fails only if the TLS provider cannot be set up.
    pub fn new() -> Result<HttpProbe, tokio_rustls::rustls::Error> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let provider = tokio_rustls::rustls::crypto::ring::default_provider();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Ok(HttpProbe {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }
}

impl HttpProbe {
    /// `GET url`: the status, the body (up to [`MAX_MODELS_BODY`]) and how
    /// long it took; the error names the URL.
    async fn get(
        &self,
        url: &str,
        api_key: Option<&str>,
    ) -> Result<(http::StatusCode, Bytes, f64), String> {
        let mut req = http::Request::get(url);
        if let Some(key) = api_key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: bad request: {e}"))?;
        let started = Instant::now();
        let resp =
            self.client
                .request(req)
                .await
                .map_err(|e| match std::error::Error::source(&e) {
                    Some(cause) => format!("GET {url} failed: {cause}"),
                    None => format!("GET {url} failed: {e}"),
                })?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_MODELS_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the reply failed: {e}"))?
            .to_bytes();
        Ok((status, body, started.elapsed().as_secs_f64() * 1000.0))
    }
}

impl Probe for HttpProbe {
    fn probe<'a>(
        &'a self,
        t: Target<'a>,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            let models_url = format!("{}/v1/models", t.base_url);
            if let Some(path) = t.health_path {
                let url = format!("{}{path}", t.base_url);
                let (status, _, latency_ms) = self.get(&url, t.api_key).await?;
                if !status.is_success() {
                    return Err(format!("GET {url} answered {status}"));
                }
                if t.static_models {
                    return Ok(ProbeOk::listed(latency_ms, Vec::new()));
                }
                let (status, body, _) = self.get(&models_url, t.api_key).await?;
                if !status.is_success() {
                    return Err(format!("GET {models_url} answered {status}"));
                }
                let objects = parse_models(&body).map_err(|e| format!("GET {models_url}: {e}"))?;
                return Ok(ok(latency_ms, objects));
            }
            let (status, body, latency_ms) = self.get(&models_url, t.api_key).await?;
            if status.is_success() {
                match parse_models(&body) {
                    Ok(objects) => return Ok(ok(latency_ms, objects)),
                    Err(_) if t.static_models => {}
                    Err(e) => return Err(format!("GET {models_url}: {e}")),
                }
            }
            // Models given by hand: any answer but 5xx means the server is up.
            if t.static_models && !status.is_server_error() {
                return Ok(ProbeOk::listed(latency_ms, Vec::new()));
            }
            Err(format!("GET {models_url} answered {status}"))
        })
    }
}

fn ok(latency_ms: f64, objects: Vec<(String, String)>) -> ProbeOk {
    ProbeOk {
        latency_ms,
        models: objects.iter().map(|(id, _)| id.clone()).collect(),
        objects,
    }
}

/// Each model of an OpenAI `/v1/models` reply: its id and its full object
/// as JSON text (keys in the server's order).
pub fn parse_models(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let list: List =
        serde_json::from_slice(body).map_err(|e| format!("invalid /v1/models reply: {e}"))?;
    list.data
        .into_iter()
        .map(|object| {
            let Some(serde_json::Value::String(id)) = object.get("id") else {
                return Err("invalid /v1/models reply: a model without a string id".to_string());
            };
            let json = serde_json::to_string(&object).map_err(|e| e.to_string())?;
            Ok((id.clone(), json))
        })
        .collect()
}

/// Settings of the checker.
#[derive(Clone, Copy, Debug)]
pub struct HealthConfig {
    /// Time between two probes of one endpoint.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
}

/// Runs the supervisor until `shutdown`.
pub async fn run(
    registry: Registry,
    probe: Arc<dyn Probe>,
    config: HealthConfig,
    events: Events,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut routing = events.subscribe_routing();
    // Endpoint → (config version it probes, its loop).
    let mut loops: HashMap<Uuid, (i64, JoinHandle<()>)> = HashMap::new();
    loop {
        let endpoints = registry.snapshot();
        loops.retain(|id, (_, task)| {
            let keep = endpoints.iter().any(|e| e.id == *id);
            if !keep {
                task.abort();
            }
            keep
        });
        for e in &endpoints {
            if loops
                .get(&e.id)
                .is_some_and(|(version, _)| *version == e.updated_at)
            {
                continue;
            }
            if let Some((_, old)) = loops.remove(&e.id) {
                old.abort();
            }
            let task = tokio::spawn(probe_loop(
                e.id,
                registry.clone(),
                probe.clone(),
                config,
                metrics.clone(),
            ));
            loops.insert(e.id, (e.updated_at, task));
        }
        tokio::select! {
            changed = routing.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    for (_, (_, task)) in loops {
        task.abort();
    }
    tracing::info!("health checker stopped");
}

async fn probe_loop(
    id: Uuid,
    registry: Registry,
    probe: Arc<dyn Probe>,
    config: HealthConfig,
    metrics: Metrics,
) {
    loop {
        let Ok(endpoint) = registry.get(id) else {
            return;
        };
        let started = Instant::now();
        let target = Target {
            base_url: &endpoint.base_url,
            api_key: endpoint.api_key.as_deref(),
            health_path: endpoint.health_path.as_deref(),
            static_models: endpoint.static_models.is_some(),
        };
        let result = match tokio::time::timeout(config.timeout, probe.probe(target)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "timed out after {}",
                humantime::format_duration(config.timeout)
            )),
        };
        metrics.observe_probe(started.elapsed());
        match &result {
            Ok(ok) => {
                tracing::debug!(endpoint_id = %id, latency_ms = ok.latency_ms, models = ok.models.len(), "probe ok")
            }
            Err(error) => tracing::debug!(endpoint_id = %id, %error, "probe failed"),
        }
        if let Err(error) = registry.record_probe(id, endpoint.updated_at, result).await {
            tracing::warn!(endpoint_id = %id, %error, "recording a probe failed");
        }
        tokio::time::sleep(config.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_read_from_an_openai_list() {
        let body = br#"{"object":"list","data":[{"id":"a","object":"model","max_model_len":32768},{"id":"b"}]}"#;
        assert_eq!(
            parse_models(body).unwrap(),
            vec![
                (
                    "a".to_string(),
                    r#"{"id":"a","object":"model","max_model_len":32768}"#.to_string()
                ),
                ("b".to_string(), r#"{"id":"b"}"#.to_string())
            ]
        );
        assert!(parse_models(br#"{"data":[{"id":5}]}"#).is_err());
        assert!(parse_models(b"<html>").is_err());
        assert!(parse_models(br#"{"data":"x"}"#).is_err());
    }
}
