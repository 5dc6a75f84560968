//! What bounds the reading of a request body besides its size: the time
//! between two of its chunks, the byte budget of its connection (shared by
//! the HTTP/2 streams of one connection, so that many stalled streams cannot
//! each hold a body of the largest size), and the proxy's drain, during
//! which a body that stalls is given only [`DRAIN_PATIENCE`].
//!
//! The listener puts a [`BodyLimits`] in the extensions of every request;
//! [`crate::proxy::request::read_body`] applies it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Longest wait for the next chunk of a request body once the proxy drains:
/// a client that stalls then does not hold the shutdown for the whole grace
/// period.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(1);

/// The limits of one request body; see the module documentation.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// Longest wait between two chunks.
    pub timeout: Duration,
    /// The connection's budget.
    pub budget: BodyBudget,
    /// Cancelled when the proxy starts draining.
    pub drain: CancellationToken,
}

/// Request body bytes held for one connection, against a limit; cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    inner: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    /// Most bytes held at once.
    limit: usize,
    /// Bytes held now.
    used: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Budget {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// Most bytes held at once.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty reservation on this budget.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: Some(self.clone()),
            bytes: 0,
        }
    }
}

/// Bytes of one body counted against a [`BodyBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    /// `None`: not counted anywhere.
    budget: Option<BodyBudget>,
    /// Bytes counted.
    bytes: usize,
}

impl Reservation {
    /// A reservation on no budget (always grows).
    pub fn unlimited() -> Self {
        Self {
            budget: None,
            bytes: 0,
        }
    }

    /// Counts `n` more bytes; returns false, counting nothing, when the
    /// budget cannot hold them.
    pub fn grow(&mut self, n: usize) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let budget = &budget.inner;
        let grown = budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|total| *total <= budget.limit)
            });
        if grown.is_ok() {
            self.bytes += n;
        }
        grown.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.inner.used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow(60));
        assert!(!b.grow(41), "60 + 41 is over 100");
        assert!(b.grow(40));
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(Reservation::unlimited().grow(usize::MAX));
    }
}
