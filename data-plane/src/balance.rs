//! Endpoint choice: power of two choices over a peak-EWMA cost, among the
//! endpoints whose circuit breaker lets them in ([`crate::breaker`]; no
//! other app dependencies).
//!
//! The cost of an endpoint is `(in-flight + 1) × latency estimate`, as in
//! tower's `PeakEwma` balancer. The estimate jumps up at once when a sample
//! is higher than it, and otherwise moves toward the samples with a time
//! constant; while no sample arrives it decays toward zero, so that an
//! endpoint that was slow once is tried again later. [`pick`] draws two
//! distinct candidates at random and keeps the cheaper one, which avoids the
//! herd behaviour of always taking the single cheapest endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use crate::breaker::Breaker;

/// Latency estimate of an endpoint that has no sample yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(500);

/// Time constant of the moving average.
pub const DECAY: Duration = Duration::from_secs(10);

/// Peak-sensitive exponentially weighted moving average of a latency.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// Current estimate, in nanoseconds.
    estimate_ns: f64,
    /// When `estimate_ns` was last updated.
    updated: Instant,
    /// Time constant, in nanoseconds.
    tau_ns: f64,
}

impl PeakEwma {
    /// A new average starting at `initial`.
    pub fn new(initial: Duration, tau: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: nanos(initial),
            updated: now,
            tau_ns: nanos(tau).max(1.0),
        }
    }

    /// Adds a sample taken at `now`.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        self.update(nanos(sample), now);
    }

    /// The estimate at `now`, in nanoseconds (decayed toward zero since the
    /// last sample).
    pub fn estimate(&mut self, now: Instant) -> f64 {
        self.update(0.0, now)
    }

    fn update(&mut self, sample_ns: f64, now: Instant) -> f64 {
        if sample_ns > self.estimate_ns {
            self.estimate_ns = sample_ns;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.updated));
            let decay = (-elapsed / self.tau_ns).exp();
            self.estimate_ns = self.estimate_ns * decay + sample_ns * (1.0 - decay);
        }
        self.updated = self.updated.max(now);
        self.estimate_ns
    }
}

/// Load of one endpoint: requests in flight, a latency estimate and its
/// circuit breaker.
#[derive(Debug)]
pub struct Load {
    /// Requests in flight to the endpoint.
    inflight: AtomicU64,
    /// Latency estimate.
    latency: Mutex<PeakEwma>,
    /// Out of rotation after failures.
    pub breaker: Breaker,
}

impl Load {
    /// A new, idle endpoint load.
    pub fn new(now: Instant) -> Self {
        Self {
            inflight: AtomicU64::new(0),
            latency: Mutex::new(PeakEwma::new(DEFAULT_RTT, DECAY, now)),
            breaker: Breaker::default(),
        }
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// One more request in flight.
    pub fn start(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// One request less in flight.
    pub fn end(&self) {
        // Never below zero, even if `end` is called once too often.
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Adds a latency sample.
    pub fn observe(&self, latency: Duration, now: Instant) {
        self.latency.lock().observe(latency, now);
    }

    /// `(in-flight + 1) × latency estimate` at `now`.
    pub fn cost(&self, now: Instant) -> f64 {
        let estimate = self.latency.lock().estimate(now);
        (self.inflight() as f64 + 1.0) * estimate
    }
}

/// Power of two choices: the index of the cheaper of two distinct random
/// items, `None` if `items` is empty.
pub fn pick<T, R: Rng + ?Sized>(
    items: &[T],
    mut cost: impl FnMut(&T) -> f64,
    rng: &mut R,
) -> Option<usize> {
    match items.len() {
        0 => None,
        1 => Some(0),
        len => {
            let a = rng.random_range(0..len);
            let mut b = rng.random_range(0..len - 1);
            if b >= a {
                b += 1;
            }
            Some(if cost(&items[b]) < cost(&items[a]) {
                b
            } else {
                a
            })
        }
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(10 * MS, Duration::from_secs(10), t0);
        ewma.observe(100 * MS, t0);
        assert_eq!(
            ewma.estimate(t0),
            nanos(100 * MS),
            "a higher sample is taken at once"
        );
        // A lower sample one time constant later moves about 63% of the way.
        let t1 = t0 + Duration::from_secs(10);
        ewma.observe(10 * MS, t1);
        let est = ewma.estimate(t1) / 1e6;
        assert!((35.0..45.0).contains(&est), "estimate {est} ms");
        // Without samples it decays toward zero.
        let est_later = ewma.estimate(t1 + Duration::from_secs(60)) / 1e6;
        assert!(est_later < 1.0, "estimate {est_later} ms");
    }

    #[test]
    fn one_candidate_is_always_chosen() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            assert_eq!(pick(&[5.0], |c| *c, &mut rng), Some(0));
        }
        assert_eq!(pick(&[] as &[f64], |c| *c, &mut rng), None);
    }

    #[test]
    fn two_candidates_the_cheaper_always_wins() {
        let mut rng = StdRng::seed_from_u64(1);
        let costs = [100.0, 1.0];
        assert!((0..1000).all(|_| pick(&costs, |c| *c, &mut rng) == Some(1)));
    }

    #[test]
    fn expensive_endpoint_is_chosen_rarely() {
        let now = Instant::now();
        let fast = Load::new(now);
        let slow = Load::new(now);
        fast.observe(20 * MS, now);
        slow.observe(2000 * MS, now);
        for _ in 0..5 {
            slow.start();
        }
        let loads = [&fast, &slow];
        let mut rng = StdRng::seed_from_u64(42);
        let mut slow_picks = 0;
        for _ in 0..10_000 {
            let i = pick(&loads, |l| l.cost(now), &mut rng).unwrap();
            if std::ptr::eq(loads[i], &slow) {
                slow_picks += 1;
            }
        }
        // With two endpoints both are always drawn: the slow, busy one
        // loses every time.
        assert_eq!(slow_picks, 0);
    }

    #[test]
    fn inflight_spreads_equal_endpoints() {
        let now = Instant::now();
        let loads: Vec<Load> = (0..3).map(|_| Load::new(now)).collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let i = pick(&loads, |l| l.cost(now), &mut rng).unwrap();
            loads[i].start();
        }
        for load in &loads {
            let n = load.inflight();
            assert!((80..=120).contains(&n), "in flight {n}");
        }
        let before = loads[0].inflight();
        loads[0].end();
        assert_eq!(loads[0].inflight(), before - 1);
    }

    #[test]
    fn end_never_goes_below_zero() {
        let load = Load::new(Instant::now());
        load.end();
        assert_eq!(load.inflight(), 0);
    }
}
