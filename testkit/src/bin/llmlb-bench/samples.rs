//! Latency samples and their percentiles, and number formatting.
//!
//! Every sample is kept (a few hundred thousand at most per run), so
//! percentiles are exact rather than bucketed.

use std::time::Duration;

/// Latencies in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    /// Adds one latency.
    pub fn push(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.sorted = false;
    }

    /// Adds all of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.ns.extend(other.ns);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), nearest rank; zero when empty.
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.sort();
        if self.ns.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        Duration::from_nanos(self.ns[rank - 1])
    }

    /// Median.
    pub fn p50(&mut self) -> Duration {
        self.quantile(0.50)
    }

    /// 99th percentile.
    pub fn p99(&mut self) -> Duration {
        self.quantile(0.99)
    }

    /// Samples at or above `d`.
    pub fn count_at_least(&self, d: Duration) -> usize {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ns.iter().filter(|v| **v >= ns).count()
    }

    /// Largest sample.
    pub fn max(&mut self) -> Duration {
        self.quantile(1.0)
    }
}

/// Milliseconds with a precision that suits the value: `0.153 ms`, `12.4 ms`.
pub fn ms(d: Duration) -> String {
    ms_f(d.as_secs_f64() * 1000.0)
}

/// Like [`ms`] for a value already in milliseconds (may be negative).
pub fn ms_f(v: f64) -> String {
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.3} ms")
    } else if a < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Microseconds, e.g. `14.2 µs`.
pub fn us(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e6;
    if v < 100.0 {
        format!("{v:.1} µs")
    } else {
        format!("{v:.0} µs")
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

/// A rate with thousands separators, no decimals.
pub fn rate(v: f64) -> String {
    count(v.round().max(0.0) as u64)
}

/// Mebibytes from KiB, one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A ratio such as `×1.42`; `n/a` when the base is zero.
pub fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 && v.is_finite() {
        format!("×{:.2}", v / base)
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_millis(i));
        }
        assert_eq!(s.p50(), Duration::from_millis(50));
        assert_eq!(s.p99(), Duration::from_millis(99));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(Samples::default().p99(), Duration::ZERO);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(ms(Duration::from_micros(153)), "0.153 ms");
        assert_eq!(ratio(3.0, 2.0), "×1.50");
    }
}
