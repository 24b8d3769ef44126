//! Acknowledgements of grants pushed to Node clients.
//!
//! The 0.2.x client gives up on a try-lock locally and never tells the broker, so a grant
//! pushed to it later would be held by nobody (a "ghost"). Such a grant is never released while
//! the client may still read it and believe it holds the key: only its TTL, the connection's
//! close, a `lock-received-rejected`, or the answer to an ack probe end it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::RandomState;
use hashbrown::HashMap;

use super::Core;
use crate::proto::Reply;
use crate::proto::encode::LockOutcome as WireLock;
use crate::table::{ConnId, Name};

/// A pushed grant that a Node client has not acknowledged yet (see `Core::acks`).
pub(super) struct PendingAck {
    pub conn: ConnId,
    pub key: Name,
    /// When it was pushed: tells this grant's timers from those of an earlier grant that had
    /// the same id.
    pub pushed: Instant,
}

/// Prefix of the uuid of an ack probe (see [`Core::send_probe`]); the rest is the grant's id.
pub(super) const PROBE_PREFIX: &str = "lmx-ack-probe:";

/// How long a pushed grant may go unacknowledged before it is probed. A client that is
/// running acknowledges within a millisecond; the probe makes the 0.2.25 client log a warning,
/// so it is sent only to clients that are late.
pub(super) const PROBE_DELAY: Duration = Duration::from_millis(200);

impl Core {
    /// Runs the acknowledgement timers that are due: ack probes, and the opt-in release of
    /// unacknowledged pushes (`ack_timeout`, which can break mutual exclusion for a client
    /// whose event loop is stalled: it may still read the grant and believe it holds the key).
    pub(super) fn ack_timers(&mut self, now: Instant) {
        while let Some(id) = due(&mut self.probe_order, now, PROBE_DELAY, &self.acks) {
            self.send_probe(&id);
        }
        if let Some(t) = self.ack_timeout {
            while let Some(id) = due(&mut self.expiry_order, now, t, &self.acks) {
                let Some(a) = self.acks.remove(&id) else {
                    continue;
                };
                if self.give_back(now, a.conn, &a.key, &id) {
                    tracing::warn!(
                        "grant {id} of key {:?} was not acknowledged within {} ms: released \
                         (--ack-timeout)",
                        a.key,
                        t.as_millis()
                    );
                }
            }
        }
        self.poll_store(now);
    }

    /// Asks a Node client whether it took a pushed grant it has not acknowledged: the probe is
    /// a grant for a request the client never made, which the 0.2.x client answers with
    /// `lock-received-rejected` and nothing else. The client reads its socket in order and
    /// acknowledges an accepted grant from the same handler, before it reads the next line;
    /// so a probe answered while the grant is still unacknowledged proves that the client read
    /// the grant and dropped it (a try-lock it gave up on). A client whose event loop is
    /// stalled answers nothing until it has read, and acknowledged, the grant first.
    fn send_probe(&mut self, id: &Name) {
        let Some(a) = self.acks.get(id) else {
            return;
        };
        let Some(slot) = self.slot_of(a.conn) else {
            return;
        };
        let (uuid, key) = (format!("{PROBE_PREFIX}{id}"), a.key.clone());
        self.send(
            slot,
            &Reply::Lock {
                uuid: &uuid,
                key: &key,
                outcome: WireLock::Granted {
                    fencing_token: None,
                },
                lock_request_count: 0,
                readers_count: 0,
            },
        );
    }

    /// The client answered the probe of grant `id` with `lock-received-rejected`: if it has not
    /// acknowledged the grant by now, it read it and dropped it, so the grant is released.
    pub(super) fn probe_answered(&mut self, now: Instant, cid: ConnId, id: &str) {
        // Acknowledged meanwhile, or not this connection's: nothing to do.
        if self.acks.get(id).is_some_and(|a| a.conn == cid)
            && let Some(a) = self.acks.remove(id)
            && self.give_back(now, cid, &a.key, id)
        {
            tracing::warn!(
                "grant {id} of key {:?}: the client read it and did not take it: released",
                a.key
            );
        }
    }

    /// The earliest acknowledgement timer.
    pub(super) fn next_ack_deadline(&self) -> Option<Instant> {
        let probe = self.probe_order.front().map(|(t, _)| *t);
        let expiry = self.expiry_order.front().map(|(t, _)| *t);
        probe.into_iter().chain(expiry).min()
    }
}

/// Pops the next timer of `order` that is due at `now` and still belongs to a pending grant
/// (pushed exactly `delay` before it: a later push of the same id has timers of its own).
fn due(
    order: &mut VecDeque<(Instant, Name)>,
    now: Instant,
    delay: Duration,
    acks: &HashMap<Name, PendingAck, RandomState>,
) -> Option<Name> {
    while order.front().is_some_and(|(at, _)| *at <= now) {
        let (at, id) = order.pop_front()?;
        if acks.get(&id).is_some_and(|a| a.pushed + delay == at) {
            return Some(id);
        }
    }
    None
}
