//! Acknowledgements of grants pushed to Node clients.
//!
//! The 0.2.x client gives up on a try-lock locally and never tells the broker, so a grant
//! pushed to it later would be held by nobody (a "ghost"). Such a grant is never released while
//! the client may still read it and believe it holds the key: only its TTL, the connection's
//! close, a `lock-received-rejected`, or the answer to an ack probe end it.
//!
//! [`Acks`] keeps the pushed grants not yet acknowledged and their timers; the core asks it
//! which probes are due and which grants the opt-in `ack_timeout` gives back, and sends or
//! releases them itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::RandomState;
use hashbrown::HashMap;

use crate::table::{ConnId, Name};

/// A pushed grant that a Node client has not acknowledged yet.
struct PendingAck {
    conn: ConnId,
    key: Name,
    /// When it was pushed: tells this grant's timers from those of an earlier grant that had
    /// the same id.
    pushed: Instant,
}

/// Prefix of the uuid of an ack probe (see `Core::send_probe`); the rest is the grant's id.
pub(super) const PROBE_PREFIX: &str = "lmx-ack-probe:";

/// How long a pushed grant may go unacknowledged before it is probed. A client that is
/// running acknowledges within a millisecond; the probe makes the 0.2.25 client log a warning,
/// so it is sent only to clients that are late.
const PROBE_DELAY: Duration = Duration::from_millis(200);

/// A grant whose timer is due: its connection, key and id.
pub(super) type Due = (ConnId, Name, Name);

/// Pushed grants to Node clients not yet acknowledged with `lock-received`, by lock id, and
/// their timers.
pub(super) struct Acks {
    pending: HashMap<Name, PendingAck, RandomState>,
    /// Grants to probe, in push order (all share `PROBE_DELAY`).
    probe_order: VecDeque<(Instant, Name)>,
    /// Grants to give back unacknowledged (`ack_timeout`), in push order.
    expiry_order: VecDeque<(Instant, Name)>,
    /// Opt-in (`--ack-timeout`): releasing an unacknowledged push can break mutual exclusion
    /// for a client whose event loop is stalled (it may still read the grant and believe it
    /// holds the key).
    timeout: Option<Duration>,
}

impl Acks {
    pub(super) fn new(timeout: Option<Duration>) -> Self {
        Acks {
            pending: HashMap::default(),
            probe_order: VecDeque::new(),
            expiry_order: VecDeque::new(),
            timeout,
        }
    }

    /// Grant `id` of `key` was pushed to the Node client on `conn` at `now`: watched until it
    /// is acknowledged.
    pub(super) fn pushed(&mut self, now: Instant, conn: ConnId, key: &Name, id: &Name) {
        self.probe_order.push_back((now + PROBE_DELAY, id.clone()));
        if let Some(t) = self.timeout {
            self.expiry_order.push_back((now + t, id.clone()));
        }
        let ack = PendingAck {
            conn,
            key: key.clone(),
            pushed: now,
        };
        self.pending.insert(id.clone(), ack);
    }

    /// Grant `id` of `conn` is settled (acknowledged, its connection closed, its probe
    /// answered): no longer watched. Its key, when it was `conn`'s and still pending.
    pub(super) fn settle(&mut self, conn: ConnId, id: &str) -> Option<Name> {
        if self.pending.get(id)?.conn != conn {
            return None;
        }
        self.pending.remove(id).map(|a| a.key)
    }

    /// Grant `id` ended (released, expired, lost, given back), whoever had it.
    pub(super) fn forget(&mut self, id: &str) {
        self.pending.remove(id);
    }

    /// The next grant due to be probed at `now` (it stays pending).
    pub(super) fn next_probe(&mut self, now: Instant) -> Option<Due> {
        let id = due(&mut self.probe_order, now, PROBE_DELAY, &self.pending)?;
        let a = self.pending.get(&id)?;
        Some((a.conn, a.key.clone(), id))
    }

    /// The next grant left unacknowledged for `ack_timeout` at `now`, no longer pending.
    pub(super) fn next_expired(&mut self, now: Instant) -> Option<Due> {
        let t = self.timeout?;
        let id = due(&mut self.expiry_order, now, t, &self.pending)?;
        let a = self.pending.remove(&id)?;
        Some((a.conn, a.key, id))
    }

    /// The opt-in time after which an unacknowledged push is released, for the log.
    pub(super) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The earliest acknowledgement timer.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let probe = self.probe_order.front().map(|(t, _)| *t);
        let expiry = self.expiry_order.front().map(|(t, _)| *t);
        probe.into_iter().chain(expiry).min()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Pops the next timer of `order` that is due at `now` and still belongs to a pending grant
/// (pushed exactly `delay` before it: a later push of the same id has timers of its own).
fn due(
    order: &mut VecDeque<(Instant, Name)>,
    now: Instant,
    delay: Duration,
    pending: &HashMap<Name, PendingAck, RandomState>,
) -> Option<Name> {
    while order.front().is_some_and(|(at, _)| *at <= now) {
        let (at, id) = order.pop_front()?;
        if pending.get(&id).is_some_and(|a| a.pushed + delay == at) {
            return Some(id);
        }
    }
    None
}
