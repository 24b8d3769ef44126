//! When the reactor polls without sleeping after a busy turn, and for how long.
//!
//! Why spin at all: the next request of a client in a lock/unlock loop usually arrives within
//! microseconds of our reply, and catching it awake saves the broker a sleep and a wake-up
//! (on a VM an idle vCPU's wake-up costs tens of microseconds, more than the lock decision).
//!
//! Why adapt: a spin only pays when the client that must answer can run meanwhile. With more
//! runnable threads than cores (64 clients on 2 cores, or other processes' builds) the spinning
//! broker takes the very core that client needs, the spin runs to its end, and the broker then
//! sleeps anyway: it paid the budget for nothing and delayed the answer it waited for. So the
//! spinner keeps the outcomes of its last spins and spins only while at least half of them
//! found work; below that it stops, and probes again after a number of busy turns that doubles
//! with every failed probe (1 to [`MAX_SKIP`]), so a workload where spinning loses pays for one
//! spin in hundreds of turns. Its budget follows what winning spins needed: four times their
//! moving average, within [`MIN_BUDGET`] and the configured maximum, so a win that comes after
//! 3 µs does not keep a 30 µs budget for the spins that lose. No clock or I/O here: the reactor
//! measures and reports each spin (see `Broker::spin`).

use std::time::Duration;

/// The smallest budget a spin gets (below this a poll's own cost dominates).
const MIN_BUDGET: Duration = Duration::from_micros(4);
/// The most busy turns between two probes while spinning does not pay.
const MAX_SKIP: u32 = 1024;
/// How many recent spins the win rate is taken over.
const WINDOW: u32 = 8;

/// The adaptive spin state of one reactor.
#[derive(Debug)]
pub(super) struct Spinner {
    max: Duration,
    /// Outcomes of the last [`WINDOW`] spins, newest in bit 0 (1: it found work).
    history: u8,
    /// Moving average (1/8 weight) of how long winning spins took, in nanoseconds.
    win_ns: u64,
    /// Busy turns still to pass before the next probe, while spinning does not pay.
    skip: u32,
    /// The pause after the next failed probe.
    backoff: u32,
    /// Spins made and spins that found work, for `/metrics`-style inspection and tests.
    pub(super) spins: u64,
    pub(super) wins: u64,
    /// Time spent spinning, wins and losses, in nanoseconds.
    pub(super) spun_ns: u64,
}

impl Spinner {
    /// A spinner with budget at most `max` (zero: never spin). It starts out assuming spins
    /// pay, with the whole budget.
    pub(super) fn new(max: Duration) -> Spinner {
        Spinner {
            max,
            history: u8::MAX,
            win_ns: max.as_nanos() as u64 / 4,
            skip: 0,
            backoff: 1,
            spins: 0,
            wins: 0,
            spun_ns: 0,
        }
    }

    fn paying(&self) -> bool {
        self.history.count_ones() * 2 >= WINDOW
    }

    /// After a busy turn: how long to spin now, or `None` to sleep in the poll at once.
    pub(super) fn budget(&mut self) -> Option<Duration> {
        if self.max.is_zero() {
            return None;
        }
        // While spins do not pay, wait out the pause; the spin after it is a probe whose
        // outcome decides whether spinning resumes.
        if !self.paying() && self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let b = Duration::from_nanos(self.win_ns.saturating_mul(4));
        Some(b.clamp(MIN_BUDGET.min(self.max), self.max))
    }

    /// What the spin just made did: `Some(t)` it found work after `t`, `None` it ran out
    /// after `spent`.
    pub(super) fn record(&mut self, won: Option<Duration>, spent: Duration) {
        let probing = !self.paying();
        self.spins += 1;
        self.spun_ns += spent.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.history = (self.history << 1) | u8::from(won.is_some());
        match won {
            Some(t) => {
                self.wins += 1;
                let t = t.as_nanos().min(u128::from(u64::MAX)) as u64;
                self.win_ns = self.win_ns - self.win_ns / 8 + t / 8;
                if probing {
                    // One win is not a trend: resume at exactly half (the oldest outcomes
                    // wins), so one more loss stops it again.
                    self.history = 0b1110_0001;
                }
                self.backoff = 1;
                self.skip = 0;
            }
            None if probing || !self.paying() => {
                self.skip = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_SKIP);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(30);

    #[test]
    fn zero_never_spins() {
        let mut s = Spinner::new(Duration::ZERO);
        assert_eq!(s.budget(), None);
    }

    #[test]
    fn spins_while_it_wins_and_the_budget_follows_the_wins() {
        let mut s = Spinner::new(MAX);
        assert_eq!(s.budget(), Some(MAX));
        for _ in 0..64 {
            assert!(s.budget().is_some());
            s.record(Some(Duration::from_micros(2)), Duration::ZERO);
        }
        let b = s.budget().expect("spins");
        assert!(b >= MIN_BUDGET && b < Duration::from_micros(10), "{b:?}");
    }

    #[test]
    fn losing_stops_it_and_probes_back_off() {
        let mut s = Spinner::new(MAX);
        let mut spun = 0;
        for _ in 0..2000 {
            if s.budget().is_some() {
                spun += 1;
                s.record(None, MAX);
            }
        }
        // 4 losses to fall under half of the window, then probes after 1, 2, 4, ... turns.
        assert!(spun < 20, "spun {spun} times in 2000 losing turns");
        assert_eq!(s.wins, 0);
    }

    #[test]
    fn a_winning_probe_resumes_and_one_loss_stops_again() {
        let mut s = Spinner::new(MAX);
        for _ in 0..8 {
            s.budget();
            s.record(None, MAX);
        }
        while s.budget().is_none() {}
        s.record(Some(Duration::from_micros(5)), Duration::ZERO);
        assert!(s.paying());
        assert_eq!(s.budget().map(|b| b > Duration::ZERO), Some(true));
        s.record(None, MAX);
        assert!(!s.paying());
        assert_eq!(s.budget(), None, "paused again after the loss");
        // Mixed outcomes at one in two keep it spinning.
        let mut s = Spinner::new(MAX);
        for i in 0..100 {
            assert!(s.budget().is_some(), "turn {i}");
            s.record((i % 2 == 0).then_some(Duration::from_micros(3)), MAX);
        }
    }
}
