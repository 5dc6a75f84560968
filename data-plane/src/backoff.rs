//! Jittered exponential backoff for reconnect loops (no app dependencies).

use std::time::Duration;

use rand::Rng;

/// First reconnect delay.
pub const MIN_DELAY: Duration = Duration::from_millis(100);

/// Longest reconnect delay.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Exponential backoff with "equal jitter": each delay is drawn between half
/// and all of the current step, and the step doubles up to a ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Smallest step.
    min: Duration,
    /// Largest step.
    max: Duration,
    /// Step of the next delay.
    step: Duration,
    /// Delays handed out since the last reset.
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(MIN_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    /// A backoff from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
            failures: 0,
        }
    }

    /// The delay to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=step - half)
    }

    /// Back to the smallest step, after a success.
    pub fn reset(&mut self) {
        self.step = self.min;
        self.failures = 0;
    }

    /// Whether a failure now deserves a warning rather than a debug line:
    /// the first one after a success, then one in ten.
    pub fn should_warn(&self) -> bool {
        self.failures.checked_rem(10) == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_ceiling_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!((MIN_DELAY / 2..=MIN_DELAY).contains(&first), "{first:?}");
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays.last().unwrap() >= &(MAX_DELAY / 2));
        backoff.reset();
        assert!(backoff.next_delay() <= MIN_DELAY);
    }
}
