//! Unlocks and the read-only questions (`keys`, `info`, `stats`), answered from etcd.
//!
//! Why from etcd and not from this store's memory: another broker may hold or wait for any key,
//! so only etcd knows. [`rules::holders_and_waiters`] tells holders from waiters with the same
//! rule every broker uses to grant.

use std::collections::BTreeMap;
use std::rc::Rc;

use etcd_client::{GetOptions, Txn, TxnOp};

use super::request::{Guard, delete_key, delete_once, entries};
use super::rules::{self, Entry, Mode};
use super::worker::Shared;
use crate::store::{HolderView, KeyView, Op, StoreError, StoreEvent, WaiterView};
use crate::table::{ConnId, Name, Stats, TableError};

/// Releases `id`'s hold on `key` (or, forced, every holder) for `conn`, answering with `tag`.
pub fn unlock(
    sh: &Rc<Shared>,
    (conn, tag): (ConnId, u64),
    key: Name,
    id: Option<Name>,
    force: bool,
) {
    let sh = sh.clone();
    let answer = move |sh: &Shared, res: Result<(), StoreError>, key: Name, id: Option<Name>| {
        sh.emit(match res {
            Ok(()) => StoreEvent::Unlocked {
                tag,
                key,
                id,
                queue_len: 0,
            },
            Err(error) => StoreEvent::Failed {
                conn,
                op: Op::Unlock,
                tag,
                id,
                key: Some(key),
                error,
            },
        })
    };
    if !force && id.is_none() {
        return answer(&sh, Err(TableError::IdRequired.into()), key, id);
    }
    // A request of this store: decided here, without a read.
    if let Some(i) = id.as_ref().filter(|_| !force) {
        let k = (key.clone(), i.clone());
        let mut st = sh.st.borrow_mut();
        if let Some(r) = st.reqs.get(&k) {
            if !r.held {
                drop(st);
                return answer(&sh, Err(TableError::StillWaiting.into()), key, id);
            }
            let r = st.reqs.remove(&k).expect("just found");
            drop(st);
            if let Some(t) = &r.task {
                t.abort();
            }
            tokio::task::spawn_local(async move {
                let me = sh.cfg.request_key(&key, &k.1);
                let res = match delete_once(&sh, &me, Guard::Rev(r.rev)).await {
                    Ok(true) => Ok(()),
                    // Its key was already gone: the lock was lost (the holder task had not
                    // yet seen the delete), so it is not reported as released.
                    Ok(false) => Err(TableError::NotHeld.into()),
                    Err(error) => {
                        // It is no longer ours to report on; its key still goes.
                        tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(r.rev)));
                        Err(error)
                    }
                };
                answer(&sh, res, key, id);
            });
            return;
        }
    }
    tokio::task::spawn_local(async move {
        let res = remote_unlock(&sh, &key, id.as_deref(), force).await;
        answer(&sh, res, key, id);
    });
}

/// Unlock of a request made elsewhere (or a forced unlock): read the key, judge, delete.
async fn remote_unlock(
    sh: &Shared,
    key: &str,
    id: Option<&str>,
    force: bool,
) -> Result<(), StoreError> {
    let all = read_key(sh, key).await?;
    let (holders, waiters) = rules::holders_and_waiters(&all);
    // A forced unlock that names an id needs that id to hold the key, as in the table: a
    // stale id must not evict the current holder.
    if force && id.is_none_or(|id| holders.iter().any(|h| h.id == id)) {
        if holders.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = holders
            .iter()
            .map(|h| TxnOp::delete(h.raw.clone(), None))
            .collect();
        sh.txn(Txn::new().and_then(ops)).await?;
        return Ok(());
    }
    let id = id.unwrap_or_default();
    if all.iter().any(|e| e.id == id && e.group) {
        return Err(StoreError::Rule(TableError::GroupMember));
    }
    if let Some(h) = holders.iter().find(|e| e.id == id) {
        return match delete_once(sh, &h.raw, Guard::Rev(h.rev)).await? {
            true => Ok(()),
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

pub fn keys(sh: &Rc<Shared>, tag: u64) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let keys = read_all(&sh)
            .await
            .map(|m| m.0.into_keys().map(Name::from).collect());
        sh.emit(StoreEvent::Keys { tag, keys });
    });
}

pub fn info(sh: &Rc<Shared>, tag: u64, key: Name) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let info = read_key(&sh, &key).await.map(|all| key_view(&sh, &all));
        sh.emit(StoreEvent::Info { tag, info });
    });
}

pub fn stats(sh: &Rc<Shared>, tag: u64) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let stats = read_all(&sh).await.map(|(by_key, _)| {
            let mut s = Stats {
                keys: by_key.len(),
                ..Stats::default()
            };
            for all in by_key.values() {
                let (h, w) = rules::holders_and_waiters(all);
                s.holders += h.len();
                s.waiters += w.len();
            }
            let st = sh.st.borrow();
            s.connections = st.sessions.len();
            s.groups = st.groups.len();
            s.grants = st.grants;
            s.expiries = st.expiries;
            s.wait_timeouts = st.wait_timeouts;
            s
        });
        sh.emit(StoreEvent::Stats { tag, stats });
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

/// One key's requests as the store layer shows them: those of this store carry their
/// connection, so `lock-info` can say who.
fn key_view(sh: &Shared, all: &[Entry]) -> Option<KeyView> {
    if all.is_empty() {
        return None;
    }
    let (holders, waiters) = rules::holders_and_waiters(all);
    let mut sorted: Vec<&Entry> = all.iter().collect();
    sorted.sort_by_key(|e| e.rev);
    let mine = |e: &Entry| (e.owner == sh.owner).then_some(ConnId(e.conn));
    Some(KeyView {
        max: rules::resolve_max(0, &sorted),
        readers: holders.iter().filter(|h| h.mode == Mode::Read).count(),
        holders: holders
            .iter()
            .map(|h| HolderView {
                id: h.id.as_str().into(),
                conn: mine(h),
                mode: h.mode,
                token: h.rev.unsigned_abs(),
                ttl_remaining: None,
                since: None,
            })
            .collect(),
        waiters: waiters
            .iter()
            .map(|w| WaiterView {
                id: w.id.as_str().into(),
                conn: mine(w),
                mode: w.mode,
                since: None,
            })
            .collect(),
    })
}
