//! Back-pressure of one connection, as a small state machine with no I/O: whether its requests
//! are read, given how much of its output is still unsent.
//!
//! The rule (DESIGN §3.9): a reader that never reads is cut off, and its locks released; a
//! reader that reads is never cut off. So reading pauses while the backlog is above the soft
//! cap, and resumes as soon as it drains to the cap or below, **whichever write drained it**
//! (the flush at the end of a loop turn as much as one on a WRITABLE event). Resuming means
//! reading at once: readiness is edge-triggered, and the requests that wait in the socket
//! already raised their edge while the connection was paused, so no new event will come for
//! them. A connection is cut off when its backlog passes the hard cap, or when it stays paused
//! for the stall time-out without the peer taking a single byte.

use std::time::{Duration, Instant};

/// The limits one connection's output is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    /// Backlog above which its requests are no longer read.
    pub soft: usize,
    /// Backlog above which it is cut off.
    pub hard: usize,
    /// How long it may stay paused without taking any output before it is cut off.
    pub stall: Duration,
}

/// Whether a connection's requests are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Reading,
    /// Its output is backed up past the soft cap. `progress`: when the pause began, or when
    /// the peer last took some of its output since.
    Paused {
        progress: Instant,
    },
}

/// What the caller must do after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// The pause is over: read the connection now, without waiting for an event.
    Resume,
    /// Past the hard cap: close it.
    CutOff,
}

impl Flow {
    pub(super) fn is_paused(&self) -> bool {
        matches!(self, Flow::Paused { .. })
    }

    /// Before handling one more request: may it be read, with `backlog` bytes unsent? Pauses
    /// when the backlog is above the soft cap.
    pub(super) fn may_read(&mut self, backlog: usize, caps: &Caps, now: Instant) -> bool {
        if backlog > caps.soft {
            if !self.is_paused() {
                *self = Flow::Paused { progress: now };
            }
            return false;
        }
        *self = Flow::Reading;
        true
    }

    /// After a write that sent `sent` bytes and left `backlog` unsent.
    pub(super) fn after_write(
        &mut self,
        backlog: usize,
        sent: usize,
        caps: &Caps,
        now: Instant,
    ) -> Verdict {
        if backlog > caps.hard {
            return Verdict::CutOff;
        }
        match *self {
            Flow::Paused { .. } if backlog <= caps.soft => {
                *self = Flow::Reading;
                Verdict::Resume
            }
            Flow::Paused { .. } if sent > 0 => {
                *self = Flow::Paused { progress: now };
                Verdict::Keep
            }
            Flow::Reading if backlog > caps.soft => {
                *self = Flow::Paused { progress: now };
                Verdict::Keep
            }
            _ => Verdict::Keep,
        }
    }

    /// Paused for longer than the stall time-out without any progress: cut it off.
    pub(super) fn stalled_out(&self, caps: &Caps, now: Instant) -> bool {
        matches!(*self, Flow::Paused { progress } if now.duration_since(progress) > caps.stall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        soft: 100,
        hard: 1000,
        stall: Duration::from_secs(5),
    };

    #[test]
    fn a_turn_that_queues_past_the_soft_cap_and_flushes_it_all_resumes_reading() {
        // The case of issue 20: reading paused mid-turn, then the turn's flush sent everything.
        let t0 = Instant::now();
        let mut f = Flow::Reading;
        assert!(f.may_read(50, &CAPS, t0));
        assert!(!f.may_read(300, &CAPS, t0));
        assert!(f.is_paused());
        assert_eq!(f.after_write(0, 300, &CAPS, t0), Verdict::Resume);
        assert_eq!(f, Flow::Reading);
        assert!(!f.stalled_out(&CAPS, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_partial_drain_to_the_soft_cap_resumes_too() {
        let t0 = Instant::now();
        let mut f = Flow::Paused { progress: t0 };
        assert_eq!(f.after_write(100, 200, &CAPS, t0), Verdict::Resume);
    }

    #[test]
    fn a_reader_that_takes_output_is_never_stalled_out() {
        let t0 = Instant::now();
        let mut f = Flow::Reading;
        assert!(!f.may_read(900, &CAPS, t0));
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(4);
            assert_eq!(f.after_write(900, 1, &CAPS, now), Verdict::Keep);
            assert!(!f.stalled_out(&CAPS, now + Duration::from_secs(4)));
        }
    }

    #[test]
    fn a_reader_that_never_reads_is_stalled_out_and_one_past_the_hard_cap_is_cut_off() {
        let t0 = Instant::now();
        let mut f = Flow::Reading;
        // A write that leaves the backlog above the soft cap pauses reading.
        assert_eq!(f.after_write(500, 10, &CAPS, t0), Verdict::Keep);
        assert!(f.is_paused());
        assert_eq!(
            f.after_write(500, 0, &CAPS, t0 + Duration::from_secs(3)),
            Verdict::Keep
        );
        assert!(!f.stalled_out(&CAPS, t0 + Duration::from_secs(5)));
        assert!(f.stalled_out(&CAPS, t0 + Duration::from_secs(6)));
        assert_eq!(f.after_write(1001, 0, &CAPS, t0), Verdict::CutOff);
    }

    #[test]
    fn reading_below_the_soft_cap_never_pauses() {
        let t0 = Instant::now();
        let mut f = Flow::Reading;
        assert!(f.may_read(100, &CAPS, t0));
        assert_eq!(f.after_write(100, 0, &CAPS, t0), Verdict::Keep);
        assert_eq!(f, Flow::Reading);
    }
}
