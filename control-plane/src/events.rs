//! Change notifications: who must look again after a change.

use std::sync::Arc;

use tokio::sync::watch;

/// Epoch counters that move on every change; subscribers wake on a move.
#[derive(Clone, Debug)]
pub struct Events {
    /// Moves when what proxies route on changes (endpoints, status, models, keys).
    routing: Arc<watch::Sender<u64>>,
    /// Moves when any dashboard figure changes.
    dashboard: Arc<watch::Sender<u64>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            routing: Arc::new(watch::channel(0).0),
            dashboard: Arc::new(watch::channel(0).0),
        }
    }
}

impl Events {
    /// The routing table (and so the dashboard) changed.
    pub fn routing_changed(&self) {
        self.routing.send_modify(|v| *v += 1);
        self.dashboard_changed();
    }

    /// A dashboard figure changed.
    pub fn dashboard_changed(&self) {
        self.dashboard.send_modify(|v| *v += 1);
    }

    /// Wakes on routing changes.
    pub fn subscribe_routing(&self) -> watch::Receiver<u64> {
        self.routing.subscribe()
    }

    /// Wakes on dashboard changes.
    pub fn subscribe_dashboard(&self) -> watch::Receiver<u64> {
        self.dashboard.subscribe()
    }
}
