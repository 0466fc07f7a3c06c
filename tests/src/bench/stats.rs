//! Latency samples and number formatting.

use std::time::Duration;

/// A set of latency samples.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Nearest-rank percentile (`p` in 0..=100); zero when empty.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    pub fn mean(&self) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }

    /// `n=.. p50=.. p99=.. max=..` in milliseconds.
    pub fn summary(&self) -> String {
        format!(
            "n={:<5} p50 {:>8}  p99 {:>8}  max {:>8}  mean {:>8}",
            self.len(),
            ms(self.pct(50.0)),
            ms(self.pct(99.0)),
            ms(self.max()),
            ms(self.mean())
        )
    }

    /// How many samples exceed `limit`.
    pub fn above(&self, limit: Duration) -> usize {
        self.sorted.iter().filter(|d| **d > limit).count()
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes in the most readable unit.
pub fn bytes(b: u64) -> String {
    if b < 10 * 1024 {
        format!("{b} B")
    } else if b < 10 * 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        mib(b)
    }
}

pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.pct(50.0), Duration::from_millis(50));
        assert_eq!(s.pct(99.0), Duration::from_millis(99));
        assert_eq!(s.pct(100.0), Duration::from_millis(100));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(Samples::default().pct(50.0), Duration::ZERO);
        assert_eq!(s.above(Duration::from_millis(90)), 10);
    }
}
