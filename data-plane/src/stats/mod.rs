//! Stats records on their way to the control plane.
//!
//! The request path pushes one [`RequestRecord`] per upstream attempt into a
//! [`StatsSink`]; the [`uploader`] task takes them in batches and streams
//! them to the control plane, keeping each batch until it is acknowledged.
//! The sink is bounded by `--stats-buffer` records held, pending and
//! unacknowledged together: when full, the new record is dropped, counted in
//! `llmlb_proxy_stats_dropped_total` and logged (at most every 10 s).

pub mod uploader;

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmlb_proto::v1::RequestRecord;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::warn;

use crate::metrics::Metrics;

/// Least time between two "buffer full" warnings.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Handle to the stats buffer; cheap to clone.
#[derive(Clone, Debug)]
pub struct StatsSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Records waiting to be sent, and the count of records held.
    buffer: Mutex<Buffer>,
    /// Most records held.
    capacity: usize,
    /// Wakes the uploader when a record arrives.
    arrived: Notify,
    /// Wakes flush waiters when the last held record is acknowledged.
    drained: Notify,
    /// Exported counters and gauges.
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Buffer {
    /// Records not sent yet, oldest first.
    pending: VecDeque<RequestRecord>,
    /// Records pending plus records sent and not yet acknowledged.
    held: usize,
    /// Records dropped since the last warning.
    dropped_since_warning: u64,
    /// When the last "buffer full" warning was logged.
    last_warning: Option<Instant>,
}

impl StatsSink {
    /// An empty sink holding at most `capacity` records.
    pub fn new(capacity: usize, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                buffer: Mutex::new(Buffer::default()),
                capacity,
                arrived: Notify::new(),
                drained: Notify::new(),
                metrics,
            }),
        }
    }

    /// Queues a record, or drops it (counted, logged) if the buffer is full.
    pub fn push(&self, record: RequestRecord) {
        let mut buffer = self.inner.buffer.lock();
        if buffer.held >= self.inner.capacity {
            buffer.dropped_since_warning += 1;
            let now = Instant::now();
            let warn_now = buffer
                .last_warning
                .is_none_or(|at| now.duration_since(at) >= DROP_WARN_INTERVAL);
            let dropped = buffer.dropped_since_warning;
            if warn_now {
                buffer.last_warning = Some(now);
                buffer.dropped_since_warning = 0;
            }
            drop(buffer);
            self.inner.metrics.stats_dropped();
            if warn_now {
                warn!(
                    capacity = self.inner.capacity,
                    dropped,
                    "stats buffer full (control plane unreachable or slow): dropping new records"
                );
            }
            return;
        }
        buffer.pending.push_back(record);
        buffer.held += 1;
        let held = buffer.held;
        drop(buffer);
        self.inner.metrics.set_stats_buffered(held);
        self.inner.arrived.notify_one();
    }

    /// Records held: pending and unacknowledged.
    pub fn held(&self) -> usize {
        self.inner.buffer.lock().held
    }

    /// Records waiting to be sent.
    pub fn pending(&self) -> usize {
        self.inner.buffer.lock().pending.len()
    }

    /// Waits until every record held is acknowledged or `deadline` passes;
    /// returns the records still held.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let mut drained = pin!(self.inner.drained.notified());
            drained.as_mut().enable();
            let held = self.held();
            if held == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return self.held();
            }
        }
    }

    /// Takes up to `max` pending records, oldest first; they stay held until
    /// [`acked`](Self::acked).
    pub(crate) fn take(&self, max: usize) -> Vec<RequestRecord> {
        let mut buffer = self.inner.buffer.lock();
        let n = max.min(buffer.pending.len());
        buffer.pending.drain(..n).collect()
    }

    /// `records` sent earlier were acknowledged.
    pub(crate) fn acked(&self, records: usize) {
        let mut buffer = self.inner.buffer.lock();
        buffer.held = buffer.held.saturating_sub(records);
        let held = buffer.held;
        drop(buffer);
        self.inner.metrics.set_stats_buffered(held);
        if held == 0 {
            self.inner.drained.notify_waiters();
        }
    }

    /// Resolves when a record arrived since the last call (remembered once).
    pub(crate) async fn arrived(&self) {
        self.inner.arrived.notified().await;
    }

    /// The metrics this sink reports to.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RequestRecord {
        RequestRecord {
            request_id: id.into(),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn full_buffer_drops_new_records_and_counts_them() {
        let metrics = Metrics::new();
        let sink = StatsSink::new(2, metrics.clone());
        sink.push(record("1"));
        sink.push(record("2"));
        let taken = sink.take(10);
        assert_eq!(taken.len(), 2);
        // Sent but unacknowledged records still count.
        sink.push(record("3"));
        assert_eq!(metrics.stats_dropped_total(), 1);
        sink.acked(2);
        sink.push(record("4"));
        assert_eq!(sink.take(10)[0].request_id, "4");
        assert_eq!(sink.held(), 1);
    }

    #[tokio::test]
    async fn flush_waits_for_acks_until_the_deadline() {
        let sink = StatsSink::new(10, Metrics::new());
        assert_eq!(sink.flush(tokio::time::Instant::now()).await, 0);
        sink.push(record("1"));
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert_eq!(sink.flush(soon).await, 1);
        let waiter = {
            let sink = sink.clone();
            tokio::spawn(async move {
                sink.flush(tokio::time::Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        sink.take(1);
        sink.acked(1);
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
