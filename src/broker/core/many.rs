//! `acquire-many` and `release-many`: all-or-nothing groups of keys.

use std::time::Instant;

use smallvec::SmallVec;

use super::{Core, Reject, ttl_of, wait_of};
use crate::proto::encode::ManyOutcome as WireMany;
use crate::proto::{self, Reply};
use crate::table::{ConnId, ManyOutcome, ManyRequest};

impl Core {
    pub(super) fn acquire_many(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        r: &proto::AcquireMany<'_>,
    ) {
        let keep_default = self.conn_at(slot).is_some_and(|c| c.keep_default);
        let req = ManyRequest {
            conn: cid,
            keys: &r.keys,
            id: r.uuid,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        match self.table.lock_many(now, &req) {
            Ok(out) => self.send_many(slot, r.uuid, &out, r.wait_timeout.unwrap_or(0)),
            Err(e) => {
                self.reject(Reject::from(&e));
                self.send_error(slot, "acquire-many", Some(r.uuid), None, &e.to_string());
            }
        }
    }

    pub(super) fn release_many(&mut self, slot: usize, now: Instant, uuid: &str, lock_id: &str) {
        let res = self.table.release_many(now, lock_id);
        match &res {
            Ok(_) => self.counters.unlocks += 1,
            Err(e) => self.reject(Reject::from(e)),
        }
        let err = res.as_ref().err().map(ToString::to_string);
        self.send(
            slot,
            &Reply::ReleaseMany {
                uuid,
                lock_id,
                released: res.is_ok(),
                error: err.as_deref(),
            },
        );
    }

    pub(super) fn send_many(
        &mut self,
        slot: usize,
        uuid: &str,
        out: &ManyOutcome,
        timeout_ms: u64,
    ) {
        let tokens: SmallVec<[(&str, u64); 8]>;
        let outcome = match out {
            ManyOutcome::Granted(t) => {
                tokens = t.iter().map(|(k, v)| (&**k, *v)).collect();
                WireMany::Granted {
                    fencing_tokens: (&tokens[..]).into(),
                }
            }
            ManyOutcome::Queued => WireMany::Queued,
            ManyOutcome::Busy => WireMany::Refused {
                contended_key: None,
            },
            ManyOutcome::TimedOut => WireMany::TimedOut {
                waited_ms: timeout_ms,
            },
        };
        self.send(
            slot,
            &Reply::AcquireMany {
                uuid,
                lock_id: uuid,
                outcome,
            },
        );
    }
}
