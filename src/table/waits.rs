//! How long granted requests waited: a fixed-bucket histogram, filled at each grant (an
//! immediate grant waited zero). Fixed buckets keep it `Copy` and its cost one comparison
//! loop, and they are exactly what a Prometheus histogram exposes.

use std::time::Duration;

/// Upper bounds of the buckets, in seconds; a last, unbounded bucket (`+Inf`) follows.
pub const WAIT_BUCKETS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// Counts of grants per wait bucket (not cumulative), and the sum of all waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    /// `counts[i]` waits were at most `WAIT_BUCKETS[i]` (and above the previous bound); the
    /// last entry counts the waits above every bound.
    pub counts: [u64; WAIT_BUCKETS.len() + 1],
    /// The sum of all waits, in microseconds (saturating).
    pub sum_micros: u64,
}

impl WaitHistogram {
    /// Counts one grant that waited `waited`.
    pub fn record(&mut self, waited: Duration) {
        let s = waited.as_secs_f64();
        let i = WAIT_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_micros = self
            .sum_micros
            .saturating_add(waited.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Grants counted, across all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}
