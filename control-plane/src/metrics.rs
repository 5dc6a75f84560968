//! Prometheus metrics of the control plane (`GET /metrics`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::load::LoadManager;
use crate::registry::Registry;

/// Label set of the endpoints-by-status gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// Label set of the rejected-values counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Shared handle to the metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The Prometheus registry everything below is registered in.
    registry: PromRegistry,
    /// Stats records applied (new, not duplicates).
    records_ingested: Counter,
    /// Record values refused or changed at ingest, by reason.
    values_rejected: Family<ReasonLabel, Counter>,
    /// Commit latency of stats transactions.
    commit_seconds: Histogram,
    /// Proxies with an open stats stream (set at scrape).
    connected_proxies: Gauge,
    /// Endpoints per status (set at scrape).
    endpoints: Family<StatusLabel, Gauge>,
    /// Health probe durations.
    probe_seconds: Histogram,
    /// Boot-time restore duration.
    restore_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = PromRegistry::with_prefix("llmlb_control");
        let records_ingested = Counter::default();
        registry.register(
            "stats_records_ingested",
            "Stats records applied (duplicates excluded)",
            records_ingested.clone(),
        );
        let values_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "stats_values_rejected",
            "Stats record values refused or changed at ingest, by reason \
             (tokens, duration: stored as 0; future_completion: clamped to the receive time; \
             older_than_retention, malformed_id: record refused)",
            values_rejected.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "stats_commit_duration_seconds",
            "Duration of one stats transaction",
            commit_seconds.clone(),
        );
        let connected_proxies = Gauge::default();
        registry.register(
            "connected_proxies",
            "Proxies with an open stats stream",
            connected_proxies.clone(),
        );
        let endpoints = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "endpoints",
            "Registered endpoints by status",
            endpoints.clone(),
        );
        let probe_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "health_probe_duration_seconds",
            "Duration of health probes",
            probe_seconds.clone(),
        );
        let restore_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "restore_duration_seconds",
            "Time the boot-time restore took",
            restore_seconds.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                records_ingested,
                values_rejected,
                commit_seconds,
                connected_proxies,
                endpoints,
                probe_seconds,
                restore_seconds,
            }),
        }
    }
}

impl Metrics {
    /// One stats transaction committed `records` new records.
    pub fn observe_commit(&self, took: Duration, records: u64) {
        self.inner.commit_seconds.observe(took.as_secs_f64());
        self.inner.records_ingested.inc_by(records);
    }

    /// Counts what ingest refused or changed in one batch.
    pub fn count_rejected(&self, rejected: &crate::ingest::Rejected) {
        for (reason, n) in rejected.by_reason() {
            if n > 0 {
                self.inner
                    .values_rejected
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// One health probe took `took`.
    pub fn observe_probe(&self, took: Duration) {
        self.inner.probe_seconds.observe(took.as_secs_f64());
    }

    /// The boot-time restore took `took`.
    pub fn set_restore(&self, took: Duration) {
        self.inner.restore_seconds.set(took.as_secs_f64());
    }

    /// The text exposition, with scrape-time gauges refreshed.
    pub fn render(&self, registry: &Registry, load: &LoadManager) -> String {
        self.inner
            .connected_proxies
            .set(load.connected_proxies() as i64);
        let mut counts = [("pending", 0), ("online", 0), ("error", 0), ("offline", 0)];
        for e in registry.snapshot() {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == e.status.as_str()) {
                c.1 += 1;
            }
        }
        for (status, n) in counts {
            self.inner
                .endpoints
                .get_or_create(&StatusLabel { status })
                .set(n);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}
