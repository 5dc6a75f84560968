//! Prometheus metrics of the proxy, served as OpenMetrics text on
//! `GET /metrics`.
//!
//! `llmlb_proxy_requests_total{endpoint,model,status}` counts upstream
//! attempts by endpoint id, model and upstream status code (`error` when no
//! response arrived), plus the requests the proxy answered itself
//! (`endpoint=""`, `model=""`, status = the code it returned; the model is
//! left out there because it comes from the client and is unbounded).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~330 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

/// Handle to the metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every metric below, for encoding.
    registry: Registry,
    /// Upstream attempts and proxy-answered requests.
    requests: Family<RequestLabels, Counter>,
    /// Duration of upstream attempts, request received to last byte.
    duration: HistogramFamily,
    /// Time to the first body byte relayed.
    ttft: HistogramFamily,
    /// Client requests being handled or relayed.
    inflight: Gauge,
    /// Stats records held (pending + unacknowledged).
    stats_buffered: Gauge,
    /// Stats records sent again after a reconnect.
    stats_resent: Counter,
    /// Stats records dropped because the buffer was full.
    stats_dropped: Counter,
    /// Version of the routing table in use.
    table_version: Gauge,
    /// Seconds since the routing table in use arrived.
    table_age: Gauge<f64, AtomicU64>,
    /// When the routing table in use arrived.
    table_received: Mutex<Option<Instant>>,
    /// Seconds of cool-down left per endpoint (see `crate::breaker`).
    cooldown: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// Cool-downs started per endpoint.
    cooldowns: Family<EndpointLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(latency_histogram);
        let ttft = HistogramFamily::new_with_constructor(latency_histogram);
        let inflight = Gauge::default();
        let stats_buffered = Gauge::default();
        let stats_resent = Counter::default();
        let stats_dropped = Counter::default();
        let table_version = Gauge::default();
        let table_age = Gauge::<f64, AtomicU64>::default();
        let cooldown = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        let cooldowns = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "llmlb_proxy_requests",
            "Upstream attempts by endpoint id, model and upstream status (error: no response), and requests the proxy answered itself (endpoint=\"\")",
            requests.clone(),
        );
        registry.register(
            "llmlb_proxy_request_duration_seconds",
            "Duration of upstream attempts, from the request arriving to the last byte relayed",
            duration.clone(),
        );
        registry.register(
            "llmlb_proxy_time_to_first_token_seconds",
            "Time from the request arriving to the first response body byte relayed",
            ttft.clone(),
        );
        registry.register(
            "llmlb_proxy_inflight_requests",
            "Client requests being handled or relayed",
            inflight.clone(),
        );
        registry.register(
            "llmlb_proxy_stats_buffered",
            "Stats records held for the control plane (pending and unacknowledged)",
            stats_buffered.clone(),
        );
        registry.register(
            "llmlb_proxy_stats_resent",
            "Stats records sent again after a reconnect",
            stats_resent.clone(),
        );
        registry.register(
            "llmlb_proxy_stats_dropped",
            "Stats records dropped because the buffer was full",
            stats_dropped.clone(),
        );
        registry.register(
            "llmlb_proxy_routing_table_version",
            "Version of the routing table in use (0: none yet)",
            table_version.clone(),
        );
        registry.register(
            "llmlb_proxy_routing_table_age_seconds",
            "Seconds since the routing table in use arrived",
            table_age.clone(),
        );
        registry.register(
            "llmlb_proxy_endpoint_cooldown_seconds",
            "Seconds before an endpoint that failed returns to rotation (0: in rotation)",
            cooldown.clone(),
        );
        registry.register(
            "llmlb_proxy_endpoint_cooldowns",
            "Cool-downs started by endpoint id: failed attempts through the endpoint's fault (5xx, 429, connect error, timeout, broken body)",
            cooldowns.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                duration,
                ttft,
                inflight,
                stats_buffered,
                stats_resent,
                stats_dropped,
                table_version,
                table_age,
                table_received: Mutex::new(None),
                cooldown,
                cooldowns,
            }),
        }
    }

    /// Records one finished upstream attempt.
    pub fn attempt(
        &self,
        endpoint_id: &str,
        model: &str,
        status: Option<u16>,
        duration: Duration,
        ttft: Option<Duration>,
    ) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint_id.to_owned(),
                model: model.to_owned(),
                status,
            })
            .inc();
        let endpoint = EndpointLabels {
            endpoint: endpoint_id.to_owned(),
        };
        self.inner
            .duration
            .get_or_create(&endpoint)
            .observe(duration.as_secs_f64());
        if let Some(ttft) = ttft {
            self.inner
                .ttft
                .get_or_create(&endpoint)
                .observe(ttft.as_secs_f64());
        }
    }

    /// Records a request the proxy answered itself with `status`.
    pub fn rejected(&self, status: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                endpoint: String::new(),
                model: String::new(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Counts a client request in flight until the guard drops.
    pub fn inflight_request(&self) -> InflightRequest {
        self.inner.inflight.inc();
        InflightRequest {
            metrics: self.clone(),
        }
    }

    /// Sets the number of stats records held.
    pub fn set_stats_buffered(&self, held: usize) {
        self.inner
            .stats_buffered
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Counts stats records sent again.
    pub fn stats_resent(&self, records: usize) {
        self.inner.stats_resent.inc_by(records as u64);
    }

    /// Counts one stats record dropped.
    pub fn stats_dropped(&self) {
        self.inner.stats_dropped.inc();
    }

    /// Stats records dropped so far.
    pub fn stats_dropped_total(&self) -> u64 {
        self.inner.stats_dropped.get()
    }

    /// Stats records resent so far.
    pub fn stats_resent_total(&self) -> u64 {
        self.inner.stats_resent.get()
    }

    /// Notes the routing table in use.
    pub fn table_installed(&self, version: u64, received: Instant) {
        self.inner
            .table_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        *self.inner.table_received.lock() = Some(received);
    }

    /// An endpoint failed and starts a cool-down.
    pub fn cooldown_started(&self, endpoint_id: &str) {
        self.inner
            .cooldowns
            .get_or_create(&EndpointLabels {
                endpoint: endpoint_id.to_owned(),
            })
            .inc();
    }

    /// Sets the cool-down left of every endpoint (before encoding).
    pub fn set_cooldowns<'a>(&self, left: impl IntoIterator<Item = (&'a str, Duration)>) {
        self.inner.cooldown.clear();
        for (endpoint_id, left) in left {
            self.inner
                .cooldown
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint_id.to_owned(),
                })
                .set(left.as_secs_f64());
        }
    }

    /// Encodes every metric as OpenMetrics text.
    pub fn encode(&self) -> String {
        if let Some(received) = *self.inner.table_received.lock() {
            self.inner.table_age.set(received.elapsed().as_secs_f64());
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

/// A client request in flight; dropping it ends it.
#[derive(Debug)]
pub struct InflightRequest {
    metrics: Metrics,
}

impl Drop for InflightRequest {
    fn drop(&mut self) {
        self.metrics.inner.inflight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family() {
        let metrics = Metrics::new();
        metrics.attempt(
            "ep1",
            "m",
            Some(200),
            Duration::from_millis(30),
            Some(Duration::from_millis(5)),
        );
        metrics.attempt("ep1", "m", None, Duration::from_millis(1), None);
        metrics.rejected(404);
        metrics.table_installed(7, Instant::now());
        let guard = metrics.inflight_request();
        let text = metrics.encode();
        drop(guard);
        for needle in [
            "llmlb_proxy_requests_total{endpoint=\"ep1\",model=\"m\",status=\"200\"} 1",
            "llmlb_proxy_requests_total{endpoint=\"ep1\",model=\"m\",status=\"error\"} 1",
            "llmlb_proxy_requests_total{endpoint=\"\",model=\"\",status=\"404\"} 1",
            "llmlb_proxy_request_duration_seconds_bucket",
            "llmlb_proxy_time_to_first_token_seconds_count{endpoint=\"ep1\"} 1",
            "llmlb_proxy_inflight_requests 1",
            "llmlb_proxy_stats_buffered 0",
            "llmlb_proxy_stats_resent_total 0",
            "llmlb_proxy_stats_dropped_total 0",
            "llmlb_proxy_routing_table_version 7",
            "llmlb_proxy_routing_table_age_seconds",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
