//! Per-endpoint circuit breaker (no app dependencies).
//!
//! An answer that fails through the endpoint's fault (5xx, 429, a connect
//! error, a timeout, a body cut short) takes the endpoint out of rotation
//! for a cool-down: the server's `Retry-After` when it sent one, otherwise
//! [`BASE_COOLDOWN`] doubled with each consecutive failure; either way at
//! most [`MAX_COOLDOWN`]. When the cool-down is over the endpoint is
//! half-open: one request may try it, and the others keep away until that
//! trial ends; a success closes the breaker, a failure opens it again for
//! longer. A client's own error (a 4xx other than 429) is neither.
//!
//! Without it, a server that answers an error at once looks like the
//! fastest endpoint to a latency-based balancer and draws all the traffic
//! (the "black hole" of fast 503s).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Cool-down after a first failure.
pub const BASE_COOLDOWN: Duration = Duration::from_secs(1);

/// Longest cool-down, whatever `Retry-After` says.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// How an attempt on the endpoint ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered well.
    Success,
    /// The endpoint failed; the server may have said when to come back.
    Failure {
        /// `Retry-After`, if the server sent one.
        retry_after: Option<Duration>,
    },
    /// Nothing learnt about the endpoint: the client's own 4xx, or the
    /// client went away.
    Neutral,
}

/// The breaker of one endpoint.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consecutive failures.
    failures: u32,
    /// Out of rotation until then.
    open_until: Option<Instant>,
    /// Half-open and a trial request is on its way.
    trial: bool,
    /// Times the breaker opened.
    opened: u64,
}

impl Breaker {
    /// Whether the endpoint should be kept out of a pick at `now`: cooling
    /// down, or half-open with its one trial already on its way.
    pub fn excluded(&self, now: Instant) -> bool {
        let state = self.state.lock();
        match state.open_until {
            None => false,
            Some(until) => now < until || state.trial,
        }
    }

    /// Seconds of cool-down left at `now` (0 when in rotation).
    pub fn cooldown_left(&self, now: Instant) -> Duration {
        let state = self.state.lock();
        state
            .open_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Times the breaker opened so far.
    pub fn opened(&self) -> u64 {
        self.state.lock().opened
    }

    /// A request was sent to the endpoint at `now`: if it is half-open, this
    /// is its trial.
    pub fn attempt(&self, now: Instant) {
        let mut state = self.state.lock();
        if state.open_until.is_some_and(|until| now >= until) {
            state.trial = true;
        }
    }

    /// An attempt ended at `now` with `outcome`.
    pub fn record(&self, outcome: Outcome, now: Instant) {
        let mut state = self.state.lock();
        state.trial = false;
        match outcome {
            Outcome::Success => {
                state.failures = 0;
                state.open_until = None;
            }
            Outcome::Failure { retry_after } => {
                state.failures = state.failures.saturating_add(1);
                let backoff = BASE_COOLDOWN.saturating_mul(1 << (state.failures - 1).min(16));
                let cooldown = retry_after.unwrap_or(backoff).min(MAX_COOLDOWN);
                let until = now + cooldown;
                // Another attempt may have opened it for longer already.
                if state.open_until.is_none_or(|open| open < until) {
                    state.open_until = Some(until);
                }
                state.opened += 1;
            }
            Outcome::Neutral => {}
        }
    }
}

/// The `Retry-After` of an answer, in seconds (the HTTP-date form is not
/// sent by inference servers and is ignored).
pub fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn failure() -> Outcome {
        Outcome::Failure { retry_after: None }
    }

    #[test]
    fn a_failure_cools_down_then_one_trial_goes_through() {
        let t0 = Instant::now();
        let breaker = Breaker::default();
        assert!(!breaker.excluded(t0));
        breaker.record(failure(), t0);
        assert!(breaker.excluded(t0 + S / 2));
        // Half-open: one trial, the others keep away until it ends.
        let t1 = t0 + S;
        assert!(!breaker.excluded(t1));
        breaker.attempt(t1);
        assert!(breaker.excluded(t1));
        breaker.record(Outcome::Success, t1);
        assert!(!breaker.excluded(t1));
        assert_eq!(breaker.cooldown_left(t1), Duration::ZERO);
    }

    #[test]
    fn consecutive_failures_double_the_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let breaker = Breaker::default();
        let mut expected = S;
        for _ in 0..10 {
            breaker.record(failure(), t0);
            assert_eq!(breaker.cooldown_left(t0), expected.min(MAX_COOLDOWN));
            expected *= 2;
        }
        assert_eq!(breaker.opened(), 10);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let t0 = Instant::now();
        let breaker = Breaker::default();
        breaker.record(
            Outcome::Failure {
                retry_after: Some(7 * S),
            },
            t0,
        );
        assert_eq!(breaker.cooldown_left(t0), 7 * S);
        let capped = Breaker::default();
        capped.record(
            Outcome::Failure {
                retry_after: Some(3600 * S),
            },
            t0,
        );
        assert_eq!(capped.cooldown_left(t0), MAX_COOLDOWN);
    }

    #[test]
    fn neutral_outcomes_change_nothing_but_end_a_trial() {
        let t0 = Instant::now();
        let breaker = Breaker::default();
        breaker.record(Outcome::Neutral, t0);
        assert!(!breaker.excluded(t0));
        breaker.record(failure(), t0);
        breaker.attempt(t0 + S);
        breaker.record(Outcome::Neutral, t0 + S);
        assert!(!breaker.excluded(t0 + S), "the next request may try");
    }

    #[test]
    fn retry_after_header_in_seconds() {
        let value = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(retry_after(Some(&value("7"))), Some(7 * S));
        assert_eq!(retry_after(Some(&value(" 0 "))), Some(Duration::ZERO));
        assert_eq!(
            retry_after(Some(&value("Wed, 21 Oct 2015 07:28:00 GMT"))),
            None
        );
        assert_eq!(retry_after(None), None);
    }
}
