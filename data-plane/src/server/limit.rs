//! The connection cap: every open client connection is registered here, and
//! at the cap the acceptor sheds idle ones (oldest first) to make room
//! instead of letting the process run out of file descriptors.
//!
//! The cap is `--max-connections`, lowered to fit RLIMIT_NOFILE: half of
//! what is left after [`fd_reserve`] descriptors, because a client
//! connection being served also needs an upstream one. At start the soft
//! descriptor limit is raised to the hard one (as Go's runtime and
//! nginx's `worker_rlimit_nofile` do).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use parking_lot::Mutex;
use tracing::{info, warn};

use super::conn::Tracker;
use crate::metrics::Metrics;

/// Descriptors kept out of the cap for everything but client and upstream
/// connections: the listener, stdio, the control plane's connections, DNS,
/// and each worker's event loop.
pub fn fd_reserve(workers: usize) -> u64 {
    32 + 4 * workers as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard one and returns it (`None` if
/// it cannot be read).
fn nofile_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(error) => warn!(%error, soft, hard, "cannot raise the file descriptor limit"),
        }
    }
    Some(soft)
}

/// The connection cap for `configured` (`--max-connections`) and `workers`.
pub fn connection_cap(configured: usize, workers: usize) -> usize {
    let Some(nofile) = nofile_limit() else {
        return configured;
    };
    let by_fds = nofile.saturating_sub(fd_reserve(workers)) / 2;
    let cap = configured
        .min(usize::try_from(by_fds).unwrap_or(usize::MAX))
        .max(1);
    if cap < configured {
        info!(
            max_connections = configured,
            nofile, cap, "connection cap lowered to fit the file descriptor limit"
        );
    }
    cap
}

/// Every open client connection, and the cap; cheap to clone.
#[derive(Clone, Debug)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Most connections open at once (not counting those being shed).
    cap: usize,
    /// Connections open, including those being shed.
    open: AtomicUsize,
    /// Connections told to close to make room, not closed yet.
    shedding: AtomicUsize,
    /// Id of the next connection (so the oldest comes first in `table`).
    next_id: AtomicU64,
    /// The open connections by id.
    table: Mutex<BTreeMap<u64, Arc<Tracker>>>,
    /// Gauges and counters of connections.
    metrics: Metrics,
}

/// A registered connection; unregisters it on drop.
#[derive(Debug)]
pub struct Registered {
    connections: Connections,
    /// The connection's shared state.
    pub tracker: Arc<Tracker>,
}

impl Connections {
    /// An empty registry with `cap`.
    pub fn new(cap: usize, metrics: Metrics) -> Self {
        metrics.set_connection_limit(cap);
        Self {
            inner: Arc::new(Inner {
                cap,
                open: AtomicUsize::new(0),
                shedding: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                table: Mutex::new(BTreeMap::new()),
                metrics,
            }),
        }
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Registers a new connection made by `tracker` (given its id), shedding
    /// an idle one first at the cap; `None` when at the cap with none idle
    /// (the caller closes the new connection).
    pub fn admit(&self, tracker: impl FnOnce(u64) -> Tracker) -> Option<Registered> {
        let inner = &self.inner;
        let staying = inner
            .open
            .load(Ordering::Relaxed)
            .saturating_sub(inner.shedding.load(Ordering::Relaxed));
        if staying >= inner.cap && self.shed_idle(1) == 0 {
            inner.metrics.connection_refused();
            return None;
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(tracker(id));
        inner.open.fetch_add(1, Ordering::Relaxed);
        inner.metrics.connections_open_add(1);
        inner.table.lock().insert(id, tracker.clone());
        Some(Registered {
            connections: self.clone(),
            tracker,
        })
    }

    /// Tells up to `n` idle connections, oldest first, to close; returns how
    /// many.
    pub fn shed_idle(&self, n: usize) -> usize {
        let mut shed = Vec::new();
        {
            let table = self.inner.table.lock();
            for tracker in table.values() {
                if shed.len() == n {
                    break;
                }
                if tracker.is_idle() && tracker.mark_shed() {
                    shed.push(tracker.clone());
                }
            }
        }
        for tracker in &shed {
            self.inner.shedding.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.connection_shed();
            tracker.close_now();
        }
        shed.len()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let inner = &self.connections.inner;
        inner.table.lock().remove(&self.tracker.id());
        if self.tracker.is_shed() {
            inner.shedding.fetch_sub(1, Ordering::Relaxed);
        }
        inner.open.fetch_sub(1, Ordering::Relaxed);
        inner.metrics.connections_open_add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_is_shed_and_busy_ones_are_kept() {
        let metrics = Metrics::new();
        let connections = Connections::new(2, metrics.clone());
        let first = connections.admit(|id| Tracker::new(id, 1)).unwrap();
        let second = connections.admit(|id| Tracker::new(id, 1)).unwrap();
        let _busy = second.tracker.request_started(http::Version::HTTP_11);
        // At the cap: the idle first connection makes room.
        let third = connections.admit(|id| Tracker::new(id, 1)).unwrap();
        assert!(first.tracker.is_shed());
        assert!(!second.tracker.is_shed());
        assert_eq!(
            connections.open(),
            3,
            "the shed one is open until it closes"
        );
        drop(first);
        assert_eq!(connections.open(), 2);
        // The third is idle and is shed next; with none idle, refused.
        let _busy = third.tracker.request_started(http::Version::HTTP_11);
        assert!(connections.admit(|id| Tracker::new(id, 1)).is_none());
        let text = metrics.encode();
        assert!(
            text.contains("llmlb_proxy_connections_shed_total 1"),
            "{text}"
        );
        assert!(
            text.contains("llmlb_proxy_connections_refused_total 1"),
            "{text}"
        );
        assert!(text.contains("llmlb_proxy_open_connections 2"), "{text}");
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let cap = connection_cap(usize::MAX, 2);
        let (raised, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert!(raised >= soft);
        assert_eq!(cap as u64, (raised - fd_reserve(2)) / 2);
        assert_eq!(connection_cap(3, 2), 3);
    }
}
