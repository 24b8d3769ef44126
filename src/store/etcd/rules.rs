//! Who holds a key, decided from etcd's records alone.
//!
//! Every request is a key `PREFIX/<key>/<id>` whose create revision orders it: etcd hands out
//! revisions that only rise, so "older" is the same on every broker. A request is granted when
//! no conflicting older request exists, whether that one holds or still waits: that is strict
//! FIFO with no barging, the same rule as the in-memory table (`src/table/queue.rs`):
//! - exclusive with `max` N: fewer than N older requests, all of them exclusive;
//! - read: every older request is a read;
//! - write: no older request at all.
//!
//! A member of an acquire-many is an exclusive request that names no `max`; it counts as
//! holding only once its whole group holds ([`holders_and_waiters`]).
//!
//! Because a request's grant depends only on the requests older than it, anyone who reads the
//! key's range can tell who holds it (for `info`, `stats` and a forced unlock) without asking
//! the broker that made the request. This file does no I/O.

use serde_json::json;

pub(super) use crate::table::Mode;

/// A mode's name in a request key's value (`Mode::as_str`) read back.
fn parse_mode(s: &str) -> Option<Mode> {
    Some(match s {
        "exclusive" => Mode::Exclusive,
        "read" => Mode::Read,
        "write" => Mode::Write,
        _ => return None,
    })
}

/// What a request key's value records: enough for any broker to judge it and to show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) mode: Mode,
    /// 0: the request named none and takes the key's (see [`granted`]).
    pub(super) max: u32,
    /// The store instance that made the request (one per broker process).
    pub(super) owner: String,
    /// The connection on that broker.
    pub(super) conn: u64,
    /// A member of an acquire-many (see [`holders_and_waiters`]).
    pub(super) group: bool,
    /// For a group member: the whole group holds (written when it is granted).
    pub(super) held: bool,
}

impl Record {
    /// A single request's record (not a group member).
    pub(super) fn single(mode: Mode, max: u32, owner: &str, conn: u64) -> Record {
        Record {
            mode,
            max,
            owner: owner.to_owned(),
            conn,
            group: false,
            held: false,
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = json!({"mode": self.mode.as_str(), "max": self.max, "owner": self.owner, "conn": self.conn});
        if self.group {
            v["group"] = json!(true);
            v["held"] = json!(self.held);
        }
        v.to_string().into_bytes()
    }

    /// `None` for a value this code did not write: such a key is treated as an exclusive
    /// request of capacity 1, so a stranger's key under the prefix can only make us wait.
    pub(super) fn decode(bytes: &[u8]) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        Some(Record {
            mode: parse_mode(v.get("mode")?.as_str()?)?,
            max: u32::try_from(v.get("max")?.as_u64()?).ok()?,
            owner: v.get("owner")?.as_str()?.to_owned(),
            conn: v.get("conn")?.as_u64()?,
            group: v.get("group").and_then(|g| g.as_bool()).unwrap_or(false),
            held: v.get("held").and_then(|g| g.as_bool()).unwrap_or(false),
        })
    }
}

/// One request key of a lock key, as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// The etcd key.
    pub(super) raw: Vec<u8>,
    /// The request (lock) id, decoded from the etcd key.
    pub(super) id: String,
    pub(super) rev: i64,
    pub(super) mode: Mode,
    pub(super) max: u32,
    pub(super) owner: String,
    pub(super) conn: u64,
    pub(super) group: bool,
    pub(super) held: bool,
}

impl Entry {
    pub(super) fn new(raw: Vec<u8>, id: String, rev: i64, value: &[u8]) -> Entry {
        let r = Record::decode(value).unwrap_or(Record::single(Mode::Exclusive, 1, "", 0));
        Entry {
            raw,
            id,
            rev,
            mode: r.mode,
            max: r.max,
            owner: r.owner,
            conn: r.conn,
            group: r.group,
            held: r.held,
        }
    }
}

/// The capacity a request works with: its own, or when it named none (0) the one declared by
/// the oldest older exclusive request that names one, else 1. Every broker computes the same.
pub(super) fn resolve_max(max: u32, older: &[&Entry]) -> u32 {
    if max > 0 {
        return max;
    }
    older
        .iter()
        .filter(|e| e.mode == Mode::Exclusive && e.max > 0)
        .min_by_key(|e| e.rev)
        .map_or(1, |e| e.max)
}

/// Whether a request with `mode`/`max` is granted given the requests `older` than it.
pub(super) fn granted(mode: Mode, max: u32, older: &[&Entry]) -> bool {
    let max = resolve_max(max, older);
    match mode {
        Mode::Write => older.is_empty(),
        Mode::Read => older.iter().all(|e| e.mode == Mode::Read),
        Mode::Exclusive => {
            older.len() < max as usize && older.iter().all(|e| e.mode == Mode::Exclusive)
        }
    }
}

/// The older request whose deletion may grant us, when one such key exists: for a mutex, a
/// write or a read, the newest conflicting older request (the classic etcd recipe: waiters
/// form a chain, each woken by one delete). `None` for a semaphore with room for more than
/// one: any older delete may grant it, so it watches them all.
pub(super) fn predecessor<'a>(mode: Mode, max: u32, older: &[&'a Entry]) -> Option<&'a Entry> {
    let max = resolve_max(max, older);
    match mode {
        Mode::Write => older.iter().max_by_key(|e| e.rev).copied(),
        Mode::Read => older
            .iter()
            .filter(|e| e.mode != Mode::Read)
            .max_by_key(|e| e.rev)
            .copied(),
        Mode::Exclusive => {
            // A non-exclusive older request blocks until it is gone, whatever the count.
            if let Some(e) = older
                .iter()
                .filter(|e| e.mode != Mode::Exclusive)
                .max_by_key(|e| e.rev)
            {
                return Some(e);
            }
            if max == 1 {
                older.iter().max_by_key(|e| e.rev).copied()
            } else {
                None
            }
        }
    }
}

/// Splits all requests of one key (any order) into holders and waiters, both oldest first.
///
/// A member of an acquire-many counts as a holder only once its group wrote `held` into it:
/// its turn on this key may have come while the group still waits for another key, and then it
/// holds nothing (a forced unlock must leave it queued). Either way it is older than every
/// later request of the key, so it blocks them ([`granted`] counts waiters too): a single lock
/// on any broker waits for the group.
pub(super) fn holders_and_waiters(all: &[Entry]) -> (Vec<&Entry>, Vec<&Entry>) {
    let mut sorted: Vec<&Entry> = all.iter().collect();
    sorted.sort_by_key(|e| e.rev);
    let mut holders = Vec::new();
    let mut waiters = Vec::new();
    for (i, e) in sorted.iter().enumerate() {
        if granted(e.mode, e.max, &sorted[..i]) && (!e.group || e.held) {
            holders.push(*e);
        } else {
            waiters.push(*e);
        }
    }
    (holders, waiters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rev: i64, mode: Mode, max: u32) -> Entry {
        Entry {
            raw: Vec::new(),
            id: format!("r{rev}"),
            rev,
            mode,
            max,
            owner: "o".into(),
            conn: 1,
            group: false,
            held: false,
        }
    }

    #[test]
    fn mutex_is_fifo() {
        let all = [
            e(3, Mode::Exclusive, 1),
            e(5, Mode::Exclusive, 1),
            e(9, Mode::Exclusive, 1),
        ];
        let (h, w) = holders_and_waiters(&all);
        assert_eq!(h.iter().map(|e| e.rev).collect::<Vec<_>>(), [3]);
        assert_eq!(w.iter().map(|e| e.rev).collect::<Vec<_>>(), [5, 9]);
        let older: Vec<&Entry> = all[..2].iter().collect();
        assert_eq!(
            predecessor(Mode::Exclusive, 1, &older).map(|e| e.rev),
            Some(5)
        );
    }

    #[test]
    fn semaphore_counts_older_requests() {
        let all = [
            e(1, Mode::Exclusive, 2),
            e(2, Mode::Exclusive, 2),
            e(3, Mode::Exclusive, 2),
        ];
        let (h, w) = holders_and_waiters(&all);
        assert_eq!((h.len(), w.len()), (2, 1));
        let older: Vec<&Entry> = all[..2].iter().collect();
        assert!(predecessor(Mode::Exclusive, 2, &older).is_none());
    }

    #[test]
    fn readers_share_until_a_writer_queues() {
        let all = [
            e(1, Mode::Read, 1),
            e(2, Mode::Read, 1),
            e(3, Mode::Write, 1),
            e(4, Mode::Read, 1),
        ];
        let (h, w) = holders_and_waiters(&all);
        assert_eq!(h.iter().map(|e| e.rev).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(w.iter().map(|e| e.rev).collect::<Vec<_>>(), [3, 4]);
        let older: Vec<&Entry> = all[..3].iter().collect();
        assert_eq!(predecessor(Mode::Read, 1, &older).map(|e| e.rev), Some(3));
    }

    #[test]
    fn unnamed_max_takes_the_oldest_declared() {
        let all = [
            e(1, Mode::Exclusive, 3),
            e(2, Mode::Exclusive, 0),
            e(3, Mode::Exclusive, 0),
        ];
        let (h, w) = holders_and_waiters(&all);
        assert_eq!((h.len(), w.len()), (3, 0));
        let lone = [e(1, Mode::Exclusive, 0), e(2, Mode::Exclusive, 0)];
        assert_eq!(holders_and_waiters(&lone).0.len(), 1);
    }

    #[test]
    fn strangers_values_count_as_exclusive() {
        let x = Entry::new(Vec::new(), "x".into(), 1, b"not json");
        assert_eq!((x.mode, x.max), (Mode::Exclusive, 1));
        let r = Record::single(Mode::Write, 3, "b1", 9);
        assert_eq!(Record::decode(&r.encode()), Some(r));
        let g = Record {
            group: true,
            held: true,
            ..Record::single(Mode::Exclusive, 0, "b1", 9)
        };
        assert_eq!(Record::decode(&g.encode()), Some(g));
    }

    #[test]
    fn a_group_member_holds_only_once_its_group_does() {
        let mut g = e(2, Mode::Exclusive, 0);
        g.group = true;
        let all = [g.clone(), e(4, Mode::Exclusive, 0)];
        let (h, w) = holders_and_waiters(&all);
        assert!(h.is_empty());
        assert_eq!(w.iter().map(|e| e.rev).collect::<Vec<_>>(), [2, 4]);
        g.held = true;
        let all = [g, e(4, Mode::Exclusive, 0)];
        let (h, w) = holders_and_waiters(&all);
        assert_eq!(h.iter().map(|e| e.rev).collect::<Vec<_>>(), [2]);
        assert_eq!(w.iter().map(|e| e.rev).collect::<Vec<_>>(), [4]);
    }
}
