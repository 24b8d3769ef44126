//! The read/write protocol of the npm 0.2.x `RWLockWritePrefClient`: a reader count and a
//! writer flag per key, kept by the broker, changed by the client while it holds the plain mutex
//! on the same key. New clients use `lock` with `mode: "read" | "write"` instead.
//!
//! Two fixes over 0.2.25: a writer waits for *every* reader (0.2.25 let one in beside a reader),
//! and counts belong to connections, so a reader that dies does not block writers forever.

use std::collections::VecDeque;

use ahash::RandomState;
use hashbrown::HashMap;

use crate::proto::RwOp;
use crate::table::{ConnId, Name, TableError};

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
    /// A limit of the lock path, which applies here too: entries per connection, or keys.
    Refused(TableError),
}

/// Deferred RW requests one key may hold; beyond it requests are refused, never queued.
const MAX_DEFERRED: usize = 10_000;

/// The read/write state of every key, and what each connection has in it.
#[derive(Debug)]
pub(crate) struct LegacyRw {
    keys: HashMap<Name, KeyRw, RandomState>,
    /// Per connection, its entries on each key (a reader count, the writer flag, deferred
    /// requests): what its close must undo, found without looking at other keys.
    conns: HashMap<ConnId, ConnRw, RandomState>,
    /// The lock path's limits: entries of one connection (`max_requests_per_conn`), and keys
    /// (`max_keys`).
    max_per_conn: usize,
    max_keys: usize,
    /// Mutex holds of clients set aside while their RW request waits (see `Core::rw`), by
    /// lock id; their later unlock is answered as done.
    parked: HashMap<Name, ConnId, RandomState>,
    /// Keys a close looked at (for the tests of its cost).
    #[cfg(test)]
    pub(super) visits: usize,
}

#[derive(Debug, Default)]
struct ConnRw {
    keys: HashMap<Name, u32, RandomState>,
    entries: usize,
}

/// Counts the entries of each connection; see `LegacyRw::conns`.
fn add(conns: &mut HashMap<ConnId, ConnRw, RandomState>, conn: ConnId, key: &str) {
    let c = conns.entry(conn).or_default();
    *c.keys.entry_ref(key).or_default() += 1;
    c.entries += 1;
}

fn sub(conns: &mut HashMap<ConnId, ConnRw, RandomState>, conn: ConnId, key: &str) {
    let Some(c) = conns.get_mut(&conn) else {
        return;
    };
    if let Some(n) = c.keys.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            c.keys.remove(key);
        }
        c.entries -= 1;
    }
    if c.entries == 0 {
        conns.remove(&conn);
    }
}

/// A reader of `key` more for `conn`: a new entry only if it had none.
fn add_reader(
    conns: &mut HashMap<ConnId, ConnRw, RandomState>,
    k: &mut KeyRw,
    conn: ConnId,
    key: &str,
) {
    let n = k.readers.entry(conn).or_default();
    if *n == 0 {
        add(conns, conn, key);
    }
    *n += 1;
}

/// A deferred request that may proceed now: send it `broadcast-result`.
pub(crate) type Woken = (ConnId, Name, Name);

impl LegacyRw {
    pub(super) fn new(max_per_conn: usize, max_keys: usize) -> Self {
        LegacyRw {
            keys: HashMap::default(),
            conns: HashMap::default(),
            max_per_conn,
            max_keys,
            parked: HashMap::default(),
            #[cfg(test)]
            visits: 0,
        }
    }

    /// Would `op` of `conn` add an entry, and is there room for it?
    fn room(&self, conn: ConnId, key: &str, op: RwOp) -> Result<(), TableError> {
        let k = self.keys.get(key);
        let reader = k.is_some_and(|k| k.readers.contains_key(&conn));
        let adds = match op {
            RwOp::IncrementReaders => !reader,
            RwOp::RegisterWriteFlagCheck | RwOp::RegisterWriteFlagAndReadersCheck => true,
            RwOp::DecrementReaders | RwOp::SetWriteFlagFalseAndBroadcast => false,
        };
        if !adds {
            return Ok(());
        }
        if k.is_none() && self.keys.len() >= self.max_keys {
            return Err(TableError::TooManyKeys(self.max_keys));
        }
        if self.conns.get(&conn).map_or(0, |c| c.entries) >= self.max_per_conn {
            return Err(TableError::TooManyRequests(self.max_per_conn));
        }
        Ok(())
    }

    pub(super) fn apply(
        &mut self,
        conn: ConnId,
        key: &str,
        uuid: &str,
        op: RwOp,
        woken: &mut Vec<Woken>,
    ) -> RwAnswer {
        if let Err(e) = self.room(conn, key, op) {
            return RwAnswer::Refused(e);
        }
        let conns = &mut self.conns;
        let k = self.keys.entry_ref(key).or_default();
        let answer = match op {
            RwOp::IncrementReaders => {
                add_reader(conns, k, conn, key);
                RwAnswer::Now {
                    readers: k.reader_count(),
                }
            }
            RwOp::DecrementReaders => {
                if let Some(n) = k.readers.get_mut(&conn) {
                    *n -= 1;
                    if *n == 0 {
                        k.readers.remove(&conn);
                        sub(conns, conn, key);
                    }
                }
                wake(key, k, conns, woken);
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
                    add(conns, conn, key);
                    RwAnswer::Deferred
                } else {
                    add_reader(conns, k, conn, key);
                    RwAnswer::Now {
                        readers: k.reader_count(),
                    }
                }
            }
            RwOp::RegisterWriteFlagAndReadersCheck => {
                if k.writer.is_some() || k.reader_count() > 0 || !k.deferred.is_empty() {
                    k.deferred.push_back((conn, uuid.into(), true));
                    add(conns, conn, key);
                    RwAnswer::Deferred
                } else {
                    k.writer = Some(conn);
                    add(conns, conn, key);
                    RwAnswer::Now { readers: 0 }
                }
            }
            RwOp::SetWriteFlagFalseAndBroadcast => {
                if let Some(w) = k.writer.take() {
                    sub(conns, w, key);
                }
                wake(key, k, conns, woken);
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

    /// The mutex hold `id` of `conn` was released while its RW request waits.
    pub(super) fn park(&mut self, id: Name, conn: ConnId) {
        self.parked.insert(id, conn);
    }

    /// Takes `id` out of the parked holds if it is one of `conn`'s: true when it was.
    pub(super) fn unpark(&mut self, conn: ConnId, id: &str) -> bool {
        if self.parked.get(id) != Some(&conn) {
            return false;
        }
        self.parked.remove(id);
        true
    }

    /// Forgets a dead connection's readers, writer flag and deferred requests, looking only
    /// at the keys it has entries on.
    pub(super) fn disconnect(&mut self, conn: ConnId, woken: &mut Vec<Woken>) {
        let Some(mine) = self.conns.remove(&conn) else {
            return;
        };
        #[cfg(test)]
        {
            self.visits += mine.keys.len();
        }
        for key in mine.keys.keys() {
            let Some(k) = self.keys.get_mut(key) else {
                continue;
            };
            k.readers.remove(&conn);
            if k.writer == Some(conn) {
                k.writer = None;
            }
            k.deferred.retain(|(c, _, _)| *c != conn);
            wake(key, k, &mut self.conns, woken);
            if k.idle() {
                self.keys.remove(key);
            }
        }
    }
}

/// Lets deferred requests in, in order, while they fit (write-preferring: a waiting writer
/// stops later readers).
fn wake(
    key: &str,
    k: &mut KeyRw,
    conns: &mut HashMap<ConnId, ConnRw, RandomState>,
    woken: &mut Vec<Woken>,
) {
    while let Some((conn, _, writer)) = k.deferred.front() {
        let fits = k.writer.is_none() && (!writer || k.reader_count() == 0);
        if !fits {
            break;
        }
        let (conn, writer) = (*conn, *writer);
        let Some((_, uuid, _)) = k.deferred.pop_front() else {
            break;
        };
        sub(conns, conn, key);
        if writer {
            k.writer = Some(conn);
            add(conns, conn, key);
        } else {
            add_reader(conns, k, conn, key);
        }
        woken.push((conn, uuid, key.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_waits_for_every_reader_and_readers_wait_for_writer() {
        let (a, b, w) = (ConnId(1), ConnId(2), ConnId(3));
        let mut rw = LegacyRw::new(10_000, 1_000_000);
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
        let mut rw = LegacyRw::new(10_000, 1_000_000);
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
