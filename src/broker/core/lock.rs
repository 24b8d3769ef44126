//! Single-key locks: `lock`, `lock-received`, `lock-received-rejected`, `unlock`, `extend`,
//! and the table's events turned into pushed replies.

use std::time::Instant;

use super::acks::{PROBE_DELAY, PROBE_PREFIX, PendingAck};
use super::{Core, Reject, ms, table_mode, ttl_of, wait_of};
use crate::proto::encode::LockOutcome as WireLock;
use crate::proto::{self, Reply};
use crate::table::{self, ConnId, Event, LockOutcome, ManyOutcome, TableError};

impl Core {
    pub(super) fn lock(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        r: &proto::LockRequest<'_>,
    ) {
        let keep_default = self.conn_at(slot).is_some_and(|c| c.keep_default);
        let req = table::LockRequest {
            conn: cid,
            key: r.key,
            id: r.uuid,
            mode: table_mode(r.mode),
            max: r.max,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            // The Node client puts its constructor option on `version` only (see `keep_default`).
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        // A Node client re-sends a lock (same uuid) when its own timer fires. If the lock was
        // granted meanwhile, the grant is already on its way; a second `acquired:true` would
        // reach a request the client has settled and make it reject (release) the lock.
        let retried_holder = r.retry_count > 0
            && self
                .table
                .info(now, r.key)
                .is_some_and(|i| i.holders.iter().any(|h| &*h.id == r.uuid));
        let (outcome, lrc, readers) = match self.table.lock(now, &req) {
            Err(e) => {
                self.reject(Reject::from(&e));
                return self.send_error(slot, "lock", Some(r.uuid), Some(r.key), &e.to_string());
            }
            Ok(LockOutcome::TimedOut) => {
                return self.send(
                    slot,
                    &Reply::LockTimedOut {
                        uuid: r.uuid,
                        key: r.key,
                        waited_ms: 0,
                    },
                );
            }
            Ok(LockOutcome::Granted(_)) if retried_holder => (WireLock::Queued, 0, 0),
            Ok(LockOutcome::Granted(g)) => (
                WireLock::Granted {
                    fencing_token: Some(g.token),
                },
                g.queue_len,
                g.readers,
            ),
            Ok(LockOutcome::Queued { queue_len, readers }) => {
                (WireLock::Queued, queue_len, readers)
            }
            Ok(LockOutcome::Busy { queue_len, readers }) => {
                self.reject(Reject::Busy);
                (WireLock::Refused, queue_len, readers)
            }
        };
        self.send(
            slot,
            &Reply::Lock {
                uuid: r.uuid,
                key: r.key,
                outcome,
                lock_request_count: lrc as u64,
                readers_count: readers as u64,
            },
        );
    }

    /// `lock-received`: the Node client took a pushed grant.
    pub(super) fn lock_received(&mut self, cid: ConnId, uuid: &str) {
        if self.acks.get(uuid).is_some_and(|a| a.conn == cid) {
            self.acks.remove(uuid);
        }
    }

    /// `lock-received-rejected` (and `lock-client-timeout`): the client gives a grant back, or
    /// answers an ack probe.
    pub(super) fn cancel(&mut self, now: Instant, cid: ConnId, uuid: &str, key: &str) {
        match uuid.strip_prefix(PROBE_PREFIX) {
            Some(id) => self.probe_answered(now, cid, id),
            None => {
                self.acks.remove(uuid);
                self.table.cancel(now, cid, key, uuid);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn unlock(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: Option<&str>,
        force: bool,
    ) {
        let admin = self.conn_at(slot).is_some_and(|c| c.admin);
        let parked = lock_id.is_some_and(|id| self.parked.get(id) == Some(&cid));
        // Err(None): refused before the table was asked.
        let res = if force && !admin {
            Err(None)
        } else if parked {
            lock_id.map(|id| self.parked.remove(id));
            Ok(1)
        } else {
            self.table.unlock(now, key, lock_id, force).map_err(Some)
        };
        if let Some(id) = lock_id
            && !self.acks.is_empty()
        {
            self.acks.remove(id);
        }
        let (lrc, _) = self.table.counts(key);
        let lost = matches!(res, Err(Some(TableError::NotHeld)));
        match &res {
            Ok(_) => self.counters.unlocks += 1,
            Err(None) => self.reject(Reject::Forbidden),
            Err(Some(e)) => self.reject(Reject::from(e)),
        }
        let err = match &res {
            Ok(_) => None,
            Err(None) => Some(
                "force unlock is an admin act: use the Unix socket or authenticate".to_string(),
            ),
            Err(Some(e)) => Some(e.to_string()),
        };
        self.send(
            slot,
            &Reply::Unlock {
                uuid,
                key,
                unlocked: err.is_none(),
                lock_request_count: lrc as u64,
                lost,
                error: err.as_deref(),
                warning: None,
            },
        );
    }

    pub(super) fn extend(
        &mut self,
        slot: usize,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: &str,
        ttl: proto::Ttl,
    ) {
        let res = self.table.extend(now, key, lock_id, ttl_of(ttl));
        let err = res.as_ref().err().map(ToString::to_string);
        if let Err(e) = &res {
            self.reject(Reject::from(e));
        }
        self.send(
            slot,
            &Reply::Extend {
                uuid,
                key,
                extended: res.is_ok(),
                error: err.as_deref(),
            },
        );
    }

    /// Turns the table's events into pushed replies; a grant for a connection that is gone is
    /// released at once.
    pub(super) fn route_events(&mut self, now: Instant) {
        while let Some(ev) = self.table.poll_event() {
            match ev {
                Event::Granted {
                    conn,
                    id,
                    key,
                    grant,
                } => {
                    let Some(slot) = self.slot_of(conn) else {
                        self.table.cancel(now, conn, &key, &id);
                        continue;
                    };
                    if self.conn_at(slot).is_some_and(|c| c.node_client) {
                        self.probe_order.push_back((now + PROBE_DELAY, id.clone()));
                        if let Some(t) = self.ack_timeout {
                            self.expiry_order.push_back((now + t, id.clone()));
                        }
                        self.acks.insert(
                            id.clone(),
                            PendingAck {
                                conn,
                                key: key.clone(),
                                pushed: now,
                            },
                        );
                    }
                    self.send(
                        slot,
                        &Reply::Lock {
                            uuid: &id,
                            key: &key,
                            outcome: WireLock::Granted {
                                fencing_token: Some(grant.token),
                            },
                            lock_request_count: grant.queue_len as u64,
                            readers_count: grant.readers as u64,
                        },
                    );
                }
                Event::ManyGranted { conn, id, tokens } => {
                    let Some(slot) = self.slot_of(conn) else {
                        self.table.release_many(now, &id).ok();
                        continue;
                    };
                    self.send_many(slot, &id, &ManyOutcome::Granted(tokens), 0);
                }
                Event::TimedOut {
                    conn,
                    id,
                    key,
                    waited,
                } => {
                    let Some(slot) = self.slot_of(conn) else {
                        continue;
                    };
                    match key {
                        Some(key) => self.send(
                            slot,
                            &Reply::LockTimedOut {
                                uuid: &id,
                                key: &key,
                                waited_ms: ms(waited),
                            },
                        ),
                        None => self.send_many(slot, &id, &ManyOutcome::TimedOut, ms(waited)),
                    }
                }
                Event::Expired { id, .. } => {
                    self.acks.remove(&id);
                }
            }
        }
    }
}
