//! Unlocks and the read-only questions (`keys`, `info`, `stats`), answered from etcd.
//!
//! Why from etcd and not from this store's memory: another broker may hold or wait for any key,
//! so only etcd knows. [`rules::holders_and_waiters`] tells holders from waiters with the same
//! rule every broker uses to grant.

use std::collections::BTreeMap;
use std::rc::Rc;

use etcd_client::{GetOptions, Txn, TxnOp};

use super::TableError;
use super::request::{Guard, delete_key, delete_once, entries};
use super::rules::{self, Entry, Mode};
use super::worker::Shared;
use super::{ConnId, HolderInfo, KeyInfo, Op, Stats, StoreError, StoreEvent};

pub fn unlock(sh: &Rc<Shared>, conn: ConnId, key: String, id: Option<String>, force: bool) {
    let sh = sh.clone();
    if !force && id.is_none() {
        return sh.emit(StoreEvent::Error {
            conn,
            op: Op::Unlock,
            id,
            key,
            error: StoreError::Rule(TableError::IdRequired),
        });
    }
    // A request of this store: decided here, without a read.
    if let Some(i) = id.as_ref().filter(|_| !force) {
        let k = (key.clone(), i.clone());
        let mut st = sh.st.borrow_mut();
        if let Some(r) = st.reqs.get(&k) {
            if !r.held {
                drop(st);
                return sh.emit(StoreEvent::Error {
                    conn,
                    op: Op::Unlock,
                    id,
                    key,
                    error: StoreError::Rule(TableError::StillWaiting),
                });
            }
            let r = st.reqs.remove(&k).expect("just found");
            drop(st);
            if let Some(t) = &r.task {
                t.abort();
            }
            tokio::task::spawn_local(async move {
                let me = sh.cfg.request_key(&key, k.1.as_str());
                let res = delete_once(&sh, &me, Guard::Rev(r.rev)).await;
                let ev = match res {
                    Ok(true) => StoreEvent::Unlocked {
                        conn,
                        key,
                        id,
                        released: 1,
                    },
                    // Its key was already gone: the lock was lost (the holder task had not
                    // yet seen the delete), so it is not reported as released.
                    Ok(false) => StoreEvent::Error {
                        conn,
                        op: Op::Unlock,
                        id,
                        key,
                        error: StoreError::Rule(TableError::NotHeld),
                    },
                    Err(error) => {
                        // It is no longer ours to report on; its key still goes.
                        tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(r.rev)));
                        StoreEvent::Error {
                            conn,
                            op: Op::Unlock,
                            id,
                            key,
                            error,
                        }
                    }
                };
                sh.emit(ev);
            });
            return;
        }
    }
    tokio::task::spawn_local(async move {
        let res = remote_unlock(&sh, &key, id.as_deref(), force).await;
        sh.emit(match res {
            Ok(released) => StoreEvent::Unlocked {
                conn,
                key,
                id,
                released,
            },
            Err(error) => StoreEvent::Error {
                conn,
                op: Op::Unlock,
                id,
                key,
                error,
            },
        });
    });
}

/// Unlock of a request made elsewhere (or a forced unlock): read the key, judge, delete.
async fn remote_unlock(
    sh: &Shared,
    key: &str,
    id: Option<&str>,
    force: bool,
) -> Result<usize, StoreError> {
    let all = read_key(sh, key).await?;
    let (holders, waiters) = rules::holders_and_waiters(&all);
    // A forced unlock that names an id needs that id to hold the key, as in the table: a
    // stale id must not evict the current holder.
    if force && id.is_none_or(|id| holders.iter().any(|h| h.id == id)) {
        if holders.is_empty() {
            return Ok(0);
        }
        let ops: Vec<TxnOp> = holders
            .iter()
            .map(|h| TxnOp::delete(h.raw.clone(), None))
            .collect();
        sh.txn(Txn::new().and_then(ops)).await?;
        return Ok(holders.len());
    }
    let id = id.unwrap_or_default();
    if all.iter().any(|e| e.id == id && e.group) {
        return Err(StoreError::Rule(TableError::GroupMember));
    }
    if let Some(h) = holders.iter().find(|e| e.id == id) {
        return match delete_once(sh, &h.raw, Guard::Rev(h.rev)).await? {
            true => Ok(1),
            false => Err(StoreError::Rule(TableError::NotHeld)),
        };
    }
    Err(if waiters.iter().any(|e| e.id == id) {
        StoreError::Rule(TableError::StillWaiting)
    } else {
        StoreError::Rule(TableError::NotHeld)
    })
}

pub async fn read_key(sh: &Shared, key: &str) -> Result<Vec<Entry>, StoreError> {
    let r = sh
        .get(sh.cfg.key_dir(key), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(entries(sh, r.kvs()))
}

pub fn keys(sh: &Rc<Shared>, conn: ConnId, tag: u64) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let keys = read_all(&sh).await.map(|m| m.0.into_keys().collect());
        sh.emit(StoreEvent::Keys { conn, tag, keys });
    });
}

pub fn info(sh: &Rc<Shared>, conn: ConnId, tag: u64, key: String) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let info = read_key(&sh, &key).await.map(|all| key_info(key, &all));
        sh.emit(StoreEvent::Info { conn, tag, info });
    });
}

pub fn stats(sh: &Rc<Shared>, conn: ConnId, tag: u64) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let stats = read_all(&sh).await.map(|(by_key, revision)| {
            let mut s = Stats {
                keys: by_key.len(),
                revision,
                ..Stats::default()
            };
            for all in by_key.values() {
                let (h, w) = rules::holders_and_waiters(all);
                s.holders += h.len();
                s.waiters += w.len();
            }
            let st = sh.st.borrow();
            s.sessions = st.sessions.len();
            s.grants = st.grants;
            s.expiries = st.expiries;
            s.wait_timeouts = st.wait_timeouts;
            s
        });
        sh.emit(StoreEvent::Stats { conn, tag, stats });
    });
}

/// Every request under the prefix, by lock key, and etcd's revision.
pub async fn read_all(sh: &Shared) -> Result<(BTreeMap<String, Vec<Entry>>, u64), StoreError> {
    let r = sh
        .get(sh.cfg.root(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut by_key: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries(sh, r.kvs()) {
        if let Some((k, _)) = sh.cfg.parse_request_key(&e.raw) {
            by_key.entry(k).or_default().push(e);
        }
    }
    let rev = r.header().map_or(0, |h| h.revision().unsigned_abs());
    Ok((by_key, rev))
}

fn key_info(key: String, all: &[Entry]) -> Option<KeyInfo> {
    if all.is_empty() {
        return None;
    }
    let (holders, waiters) = rules::holders_and_waiters(all);
    let mut sorted: Vec<&Entry> = all.iter().collect();
    sorted.sort_by_key(|e| e.rev);
    Some(KeyInfo {
        key,
        max: rules::resolve_max(0, &sorted),
        readers: holders.iter().filter(|h| h.mode == Mode::Read).count(),
        holders: holders
            .iter()
            .map(|h| HolderInfo {
                id: h.id.clone(),
                owner: h.owner.clone(),
                conn: h.conn,
                mode: h.mode,
                token: h.rev.unsigned_abs(),
            })
            .collect(),
        queue: waiters
            .iter()
            .map(|w| HolderInfo {
                id: w.id.clone(),
                owner: w.owner.clone(),
                conn: w.conn,
                mode: w.mode,
                token: w.rev.unsigned_abs(),
            })
            .collect(),
    })
}
