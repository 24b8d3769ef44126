//! The read/write protocol of the npm 0.2.x `RWLockWritePrefClient`: a reader count and a
//! writer flag per key, kept by the broker, changed by the client while it holds the plain mutex
//! on the same key. New clients use `lock` with `mode: "read" | "write"` instead.
//!
//! Two fixes over 0.2.25: a writer waits for *every* reader (0.2.25 let one in beside a reader),
//! and counts belong to connections, so a reader that dies does not block writers forever.

use std::collections::VecDeque;

use ahash::RandomState;
use hashbrown::HashMap;

use std::time::Instant;

use super::Core;
use crate::proto::{Reply, RwOp};
use crate::table::{Cancelled, ConnId, Name};

#[derive(Default, Debug)]
struct KeyRw {
    readers: HashMap<ConnId, u64, RandomState>,
    writer: Option<ConnId>,
    /// Entry requests that could not proceed yet, in arrival order: (conn, uuid, is_writer).
    deferred: VecDeque<(ConnId, Name, bool)>,
}

impl KeyRw {
    fn reader_count(&self) -> u64 {
        self.readers.values().sum()
    }
    fn idle(&self) -> bool {
        self.readers.is_empty() && self.writer.is_none() && self.deferred.is_empty()
    }
}

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RwAnswer {
    /// Reply with the op's success type now.
    Now { readers: u64 },
    /// Deferred: a `broadcast-result` follows when the condition clears.
    Deferred,
    /// Too many requests already wait on this key.
    Full,
}

/// Deferred RW requests one key may hold; beyond it requests are refused, never queued.
const MAX_DEFERRED: usize = 10_000;

#[derive(Default, Debug)]
pub(crate) struct LegacyRw {
    keys: HashMap<Name, KeyRw, RandomState>,
}

/// A deferred request that may proceed now: send it `broadcast-result`.
pub(crate) type Woken = (ConnId, Name, Name);

impl LegacyRw {
    pub fn apply(
        &mut self,
        conn: ConnId,
        key: &str,
        uuid: &str,
        op: RwOp,
        woken: &mut Vec<Woken>,
    ) -> RwAnswer {
        let k = self.keys.entry_ref(key).or_default();
        let answer = match op {
            RwOp::IncrementReaders => {
                *k.readers.entry(conn).or_default() += 1;
                RwAnswer::Now {
                    readers: k.reader_count(),
                }
            }
            RwOp::DecrementReaders => {
                if let Some(n) = k.readers.get_mut(&conn) {
                    *n -= 1;
                    if *n == 0 {
                        k.readers.remove(&conn);
                    }
                }
                wake(key, k, woken);
                RwAnswer::Now {
                    readers: k.reader_count(),
                }
            }
            RwOp::RegisterWriteFlagCheck | RwOp::RegisterWriteFlagAndReadersCheck
                if k.deferred.len() >= MAX_DEFERRED =>
            {
                RwAnswer::Full
            }
            RwOp::RegisterWriteFlagCheck => {
                if k.writer.is_some() || !k.deferred.is_empty() {
                    k.deferred.push_back((conn, uuid.into(), false));
                    RwAnswer::Deferred
                } else {
                    *k.readers.entry(conn).or_default() += 1;
                    RwAnswer::Now {
                        readers: k.reader_count(),
                    }
                }
            }
            RwOp::RegisterWriteFlagAndReadersCheck => {
                if k.writer.is_some() || k.reader_count() > 0 || !k.deferred.is_empty() {
                    k.deferred.push_back((conn, uuid.into(), true));
                    RwAnswer::Deferred
                } else {
                    k.writer = Some(conn);
                    RwAnswer::Now { readers: 0 }
                }
            }
            RwOp::SetWriteFlagFalseAndBroadcast => {
                k.writer = None;
                wake(key, k, woken);
                RwAnswer::Now {
                    readers: k.reader_count(),
                }
            }
        };
        if k.idle() {
            self.keys.remove(key);
        }
        answer
    }

    /// Forgets a dead connection's readers, writer flag and deferred requests.
    pub fn disconnect(&mut self, conn: ConnId, woken: &mut Vec<Woken>) {
        self.keys.retain(|key, k| {
            k.readers.remove(&conn);
            if k.writer == Some(conn) {
                k.writer = None;
            }
            k.deferred.retain(|(c, _, _)| *c != conn);
            wake(key, k, woken);
            !k.idle()
        });
    }
}

/// Lets deferred requests in, in order, while they fit (write-preferring: a waiting writer
/// stops later readers).
fn wake(key: &str, k: &mut KeyRw, woken: &mut Vec<Woken>) {
    while let Some((conn, _, writer)) = k.deferred.front() {
        let fits = k.writer.is_none() && (!writer || k.reader_count() == 0);
        if !fits {
            break;
        }
        let (conn, uuid, writer) = (*conn, k.deferred[0].1.clone(), *writer);
        k.deferred.pop_front();
        if writer {
            k.writer = Some(conn);
        } else {
            *k.readers.entry(conn).or_default() += 1;
        }
        woken.push((conn, uuid, key.into()));
    }
}

impl Core {
    /// A legacy RW message. The Node RW client sends it while holding the mutex on `key` and
    /// waits for the answer before unlocking; when the answer must wait (a writer for readers,
    /// a reader for the writer), the party that would clear the way needs that same mutex. So
    /// the waiting client's mutex hold is released now ("parked") and its later unlock is
    /// answered as done: no deadlock until TTL, as 0.2.25 had.
    pub(super) fn rw(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        op: RwOp,
        uuid: &str,
        key: &str,
    ) {
        if self.store.table().is_none() {
            // It parks the connection's table holds while it waits: a local table's business.
            return self.send_error(
                slot,
                op.as_str(),
                Some(uuid),
                Some(key),
                "the 0.2.x read/write protocol is not supported by this lock store",
            );
        }
        let mut woken = std::mem::take(&mut self.woken);
        match self.rw.apply(cid, key, uuid, op, &mut woken) {
            RwAnswer::Now { readers } => self.send(
                slot,
                &Reply::Rw {
                    op,
                    uuid,
                    key,
                    readers_count: readers,
                },
            ),
            RwAnswer::Full => self.send_error(
                slot,
                op.as_str(),
                Some(uuid),
                Some(key),
                "too many read/write requests already wait for this key",
            ),
            RwAnswer::Deferred => {
                let held: Option<Name> = self
                    .store
                    .table()
                    .and_then(|t| t.info(now, key))
                    .and_then(|i| {
                        i.holders
                            .iter()
                            .find(|h| h.conn == cid)
                            .map(|h| h.id.clone())
                    });
                if let Some(id) = held
                    && self
                        .store
                        .table_mut()
                        .is_some_and(|t| t.cancel(now, cid, key, &id) == Cancelled::Released)
                {
                    self.parked.insert(id, cid);
                }
            }
        }
        self.broadcast(&mut woken);
        self.woken = woken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_waits_for_every_reader_and_readers_wait_for_writer() {
        let (a, b, w) = (ConnId(1), ConnId(2), ConnId(3));
        let mut rw = LegacyRw::default();
        let mut woken = Vec::new();
        let entry = RwOp::RegisterWriteFlagCheck;
        assert_eq!(
            rw.apply(a, "k", "r1", entry, &mut woken),
            RwAnswer::Now { readers: 1 }
        );
        assert_eq!(
            rw.apply(b, "k", "r2", entry, &mut woken),
            RwAnswer::Now { readers: 2 }
        );
        let wentry = RwOp::RegisterWriteFlagAndReadersCheck;
        assert_eq!(
            rw.apply(w, "k", "w1", wentry, &mut woken),
            RwAnswer::Deferred
        );
        // A reader arriving behind the waiting writer waits too.
        assert_eq!(
            rw.apply(a, "k", "r3", entry, &mut woken),
            RwAnswer::Deferred
        );
        rw.apply(a, "k", "x", RwOp::DecrementReaders, &mut woken);
        assert!(woken.is_empty(), "one reader is still in");
        rw.apply(b, "k", "y", RwOp::DecrementReaders, &mut woken);
        assert_eq!(woken, vec![(w, Name::from("w1"), Name::from("k"))]);
        woken.clear();
        rw.apply(w, "k", "z", RwOp::SetWriteFlagFalseAndBroadcast, &mut woken);
        assert_eq!(woken, vec![(a, Name::from("r3"), Name::from("k"))]);
    }

    #[test]
    fn a_dead_reader_does_not_block_writers() {
        let mut rw = LegacyRw::default();
        let mut woken = Vec::new();
        rw.apply(
            ConnId(1),
            "k",
            "r",
            RwOp::RegisterWriteFlagCheck,
            &mut woken,
        );
        let w = RwOp::RegisterWriteFlagAndReadersCheck;
        assert_eq!(
            rw.apply(ConnId(2), "k", "w", w, &mut woken),
            RwAnswer::Deferred
        );
        rw.disconnect(ConnId(1), &mut woken);
        assert_eq!(woken, vec![(ConnId(2), Name::from("w"), Name::from("k"))]);
    }
}
