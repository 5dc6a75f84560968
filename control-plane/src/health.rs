//! The health checker: probes `GET {baseUrl}/v1/models` of every endpoint
//! on its own schedule and applies the status rules through the registry.
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

/// A successful probe: latency in ms and the models served.
pub type ProbeOk = (f64, Vec<String>);

/// A probe's outcome; the error is a one-line reason.
pub type ProbeResult = Result<ProbeOk, String>;

/// Something that can probe an endpoint.
pub trait Probe: Send + Sync + 'static {
    /// Probes `base_url`; the error is a one-line reason.
    fn probe<'a>(
        &'a self,
        base_url: &'a str,
        api_key: Option<&'a str>,
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

impl Probe for HttpProbe {
    fn probe<'a>(
        &'a self,
        base_url: &'a str,
        api_key: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            let mut req = http::Request::get(format!("{base_url}/v1/models"));
            if let Some(key) = api_key {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| format!("bad request: {e}"))?;
            let started = Instant::now();
            let resp =
                self.client.request(req).await.map_err(|e| {
                    match std::error::Error::source(&e) {
                        Some(cause) => format!("request failed: {cause}"),
                        None => format!("request failed: {e}"),
                    }
                })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_MODELS_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading /v1/models failed: {e}"))?
                .to_bytes();
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                return Err(format!("GET /v1/models answered {status}"));
            }
            Ok((latency_ms, parse_models(&body)?))
        })
    }
}

/// Model ids of an OpenAI `/v1/models` reply.
pub fn parse_models(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        id: String,
    }
    let list: List =
        serde_json::from_slice(body).map_err(|e| format!("invalid /v1/models reply: {e}"))?;
    Ok(list.data.into_iter().map(|i| i.id).collect())
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
        let result = match tokio::time::timeout(
            config.timeout,
            probe.probe(&endpoint.base_url, endpoint.api_key.as_deref()),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!(
                "timed out after {}",
                humantime::format_duration(config.timeout)
            )),
        };
        metrics.observe_probe(started.elapsed());
        match &result {
            Ok((latency, models)) => {
                tracing::debug!(endpoint_id = %id, latency_ms = latency, models = models.len(), "probe ok")
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
        let body = br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#;
        assert_eq!(
            parse_models(body).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(parse_models(b"<html>").is_err());
        assert!(parse_models(br#"{"data":"x"}"#).is_err());
    }
}
