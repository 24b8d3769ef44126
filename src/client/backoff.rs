//! The reconnect slot both clients keep: the live connection, and how long to wait before the
//! next attempt after a failed one (50 ms doubling to 2 s, jittered by ±25 %), so that a broker
//! that is down is not hammered by every caller at once. Only the waiting differs between the
//! blocking client (a thread sleep) and the async one (a timer).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client's connection, if it has one, and its record of failed connects.
pub(crate) struct Slot<C> {
    pub conn: Option<Arc<C>>,
    failures: u32,
    last_fail: Option<Instant>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            conn: None,
            failures: 0,
            last_fail: None,
        }
    }
}

impl<C> Slot<C> {
    /// When the next connect may start (`None`: at once, nothing failed since the last success).
    pub fn next_attempt(&self) -> Option<Instant> {
        let t = self.last_fail?;
        let backoff = Duration::from_millis(50 << self.failures.min(6)).min(Duration::from_secs(2));
        Some(t + backoff.mul_f64(0.75 + fastrand::f64() / 2.0))
    }

    /// Records a connect: the new connection, or one more failure.
    pub fn connected<E>(&mut self, r: Result<C, E>) -> Result<Arc<C>, E> {
        match r {
            Ok(c) => {
                let c = Arc::new(c);
                *self = Slot {
                    conn: Some(c.clone()),
                    ..Slot::default()
                };
                Ok(c)
            }
            Err(e) => {
                self.failures += 1;
                self.last_fail = Some(Instant::now());
                Err(e)
            }
        }
    }
}
