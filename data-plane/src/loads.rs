//! Per-endpoint load shared by the balancer and the stats uploader.
//!
//! The [`Load`] of an endpoint (in-flight count and latency estimate) lives
//! here, keyed by endpoint id, so that it survives routing-table swaps. Every
//! change of an in-flight count wakes the stats uploader, which reports the
//! map to the control plane.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::balance::Load;

/// Handle to the load registry; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Loads {
    /// The shared registry.
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Load of every endpoint of the current table, and of removed endpoints
    /// that still have requests in flight.
    by_endpoint: RwLock<HashMap<String, Arc<Load>>>,
    /// Wakes the stats uploader when an in-flight count changes.
    changed: Notify,
}

impl Loads {
    /// The load of `endpoint_id`, created idle if unknown.
    pub fn get(&self, endpoint_id: &str) -> Arc<Load> {
        if let Some(load) = self.inner.by_endpoint.read().get(endpoint_id) {
            return load.clone();
        }
        self.inner
            .by_endpoint
            .write()
            .entry(endpoint_id.to_owned())
            .or_insert_with(|| Arc::new(Load::new(Instant::now())))
            .clone()
    }

    /// Forgets endpoints that are not in `keep` and have nothing in flight.
    pub fn retain(&self, keep: &HashSet<&str>) {
        self.inner
            .by_endpoint
            .write()
            .retain(|id, load| keep.contains(id.as_str()) || load.inflight() > 0);
    }

    /// Counts one request in flight to `endpoint_id` until the guard drops.
    pub fn start(&self, endpoint_id: &str) -> InflightGuard {
        let load = self.get(endpoint_id);
        load.start();
        self.inner.changed.notify_one();
        InflightGuard {
            load,
            loads: self.clone(),
        }
    }

    /// In-flight count of every known endpoint, zeros included.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.inner
            .by_endpoint
            .read()
            .iter()
            .map(|(id, load)| (id.clone(), load.inflight()))
            .collect()
    }

    /// Cool-down left of every known endpoint at `now`.
    pub fn cooldowns(&self, now: Instant) -> Vec<(String, std::time::Duration)> {
        self.inner
            .by_endpoint
            .read()
            .iter()
            .map(|(id, load)| (id.clone(), load.breaker.cooldown_left(now)))
            .collect()
    }

    /// Resolves after an in-flight count changed (a change made while
    /// nobody waits is remembered once).
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

/// One request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InflightGuard {
    /// The endpoint's load, decremented on drop.
    load: Arc<Load>,
    /// The registry to wake the stats uploader through.
    loads: Loads,
}

impl InflightGuard {
    /// The endpoint's load.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.load.end();
        self.loads.inner.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_survive_retain() {
        let loads = Loads::default();
        let a = loads.start("a");
        let _b = loads.get("b");
        assert_eq!(
            loads.snapshot(),
            HashMap::from([("a".into(), 1), ("b".into(), 0)])
        );
        loads.retain(&HashSet::new());
        assert_eq!(loads.snapshot(), HashMap::from([("a".into(), 1)]));
        drop(a);
        assert_eq!(loads.snapshot(), HashMap::from([("a".into(), 0)]));
    }
}
