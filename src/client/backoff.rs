//! The reconnect slot both clients keep: the live connection, and how long to wait before the
//! next attempt after a failed one (50 ms doubling to 2 s, jittered by ±25 %), so that a broker
//! that is down is not hammered by every caller at once. Only the waiting differs between the
//! blocking client (a thread sleep) and the async one (a timer).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client's connection, if it has one, and its record of failed connects.
///
/// With a list of brokers, `at` is the index of the live connection's broker; when that
/// connection dies, the next connect starts with the broker after it and goes round the list,
/// so a client leaves a dead broker at once (and comes back to it last).
pub(crate) struct Slot<C> {
    pub conn: Option<Arc<C>>,
    failures: u32,
    last_fail: Option<Instant>,
    at: usize,
}

impl<C> Slot<C> {
    /// Starts at the first of `n` brokers, or at a random one (to spread clients).
    pub(crate) fn new(n: usize, random: bool) -> Self {
        Slot {
            conn: None,
            failures: 0,
            last_fail: None,
            at: if random {
                fastrand::usize(..n.max(1))
            } else {
                0
            },
        }
    }

    /// The live connection and the index of its broker; a dead one is dropped, and the next
    /// connect starts after its broker.
    pub(crate) fn live(
        &mut self,
        n: usize,
        is_dead: impl Fn(&C) -> bool,
    ) -> Option<(Arc<C>, usize)> {
        match &self.conn {
            Some(c) if !is_dead(c) => Some((c.clone(), self.at)),
            Some(_) => {
                self.conn = None;
                self.at = (self.at + 1) % n.max(1);
                None
            }
            None => None,
        }
    }

    /// The order in which to try `n` brokers.
    pub(crate) fn order(&self, n: usize) -> impl Iterator<Item = usize> + use<C> {
        let at = self.at;
        (0..n).map(move |i| (at + i) % n)
    }

    /// When the next connect may start (`None`: at once, nothing failed since the last success).
    pub(crate) fn next_attempt(&self) -> Option<Instant> {
        let t = self.last_fail?;
        let backoff = Duration::from_millis(50 << self.failures.min(6)).min(Duration::from_secs(2));
        Some(t + backoff.mul_f64(0.75 + fastrand::f64() / 2.0))
    }

    /// Records a connect: the new connection and its broker's index, or one more failure
    /// (of every broker in the list).
    pub(crate) fn connected<E>(&mut self, r: Result<(C, usize), E>) -> Result<Arc<C>, E> {
        match r {
            Ok((c, at)) => {
                let c = Arc::new(c);
                *self = Slot {
                    conn: Some(c.clone()),
                    failures: 0,
                    last_fail: None,
                    at,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead connection's broker goes last: the next connect starts with the one after it.
    #[test]
    fn a_dead_brokers_successor_is_tried_first() {
        let mut s: Slot<bool> = Slot::new(3, false);
        assert_eq!(s.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        let _ = s.connected::<()>(Ok((false, 1)));
        assert_eq!(s.live(3, |dead| *dead).map(|(_, at)| at), Some(1));
        let _ = s.connected::<()>(Ok((true, 2)));
        assert!(s.live(3, |dead| *dead).is_none(), "dead: dropped");
        assert_eq!(s.order(3).collect::<Vec<_>>(), [0, 1, 2], "after 2 comes 0");
        let _ = s.connected::<()>(Err(()));
        assert!(s.next_attempt().is_some(), "all failed: back off");
        let r: Slot<bool> = Slot::new(5, true);
        assert!(r.order(5).all(|i| i < 5));
    }
}
