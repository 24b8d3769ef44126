//! The read-only questions (`keys`, `counts`, `info`, `stats`, `snapshot`), answered from etcd.
//!
//! Why from etcd and not from this store's memory: another broker may hold or wait for any key,
//! so only etcd knows. [`rules::holders_and_waiters`] tells holders from waiters with the same
//! rule every broker uses to grant.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use etcd_client::GetOptions;

use super::rules::{self, Entry, Mode};
use super::shared::{Shared, entries};
use crate::store::{HolderView, KeyPage, KeyView, Snapshot, StoreError, StoreEvent, WaiterView};
use crate::table::{ConnId, Name, Stats};

pub(super) async fn read_key(sh: &Shared, key: &str) -> Result<Vec<Entry>, StoreError> {
    let r = sh
        .etcd
        .get(sh.cfg.key_dir(key), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(entries(sh, r.kvs()))
}

/// A page of `ls`: the keys of every broker after the key `after`, in key order, until their
/// names reach `budget` bytes (the cursor of each is the key itself).
pub(super) fn keys(sh: &Rc<Shared>, tag: u64, after: Option<Name>, budget: usize) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let keys = read_all(&sh).await.map(|(by_key, _)| {
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let (mut page, mut used) = (KeyPage::default(), 0);
            for key in by_key
                .range::<str, _>((from, Bound::Unbounded))
                .map(|e| e.0)
            {
                if !page.keys.is_empty() && used >= budget {
                    page.more = true;
                    break;
                }
                used += key.len();
                page.keys.push((key.clone(), Name::from(key.as_str())));
            }
            page
        });
        sh.emit(StoreEvent::Keys { tag, keys });
    });
}

/// The waiters and read-mode holders of one key, of every broker (0s when etcd could not be
/// read: they only inform a reply).
pub(super) fn counts(sh: &Rc<Shared>, tag: u64, key: Name) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let (queue_len, readers) = read_key(&sh, &key).await.map_or((0, 0), |all| {
            let (holders, waiters) = rules::holders_and_waiters(&all);
            let readers = holders.iter().filter(|h| h.mode == Mode::Read).count();
            (waiters.len(), readers)
        });
        sh.emit(StoreEvent::Counts {
            tag,
            queue_len,
            readers,
        });
    });
}

pub(super) fn info(sh: &Rc<Shared>, tag: u64, key: Name) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let info = read_key(&sh, &key).await.map(|all| key_view(&sh, &all));
        sh.emit(StoreEvent::Info { tag, info });
    });
}

pub(super) fn stats(sh: &Rc<Shared>, tag: u64) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let stats = read_all(&sh).await.map(|(by_key, _)| totals(&sh, &by_key));
        sh.emit(StoreEvent::Stats { tag, stats });
    });
}

/// The totals and the first `max_keys` keys, from one read of the whole prefix.
pub(super) fn snapshot(sh: &Rc<Shared>, tag: u64, max_keys: usize) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let snapshot = read_all(&sh).await.map(|(by_key, _)| Snapshot {
            stats: totals(&sh, &by_key),
            keys: by_key
                .iter()
                .take(max_keys)
                .filter_map(|(k, all)| Some((Name::from(k.as_str()), key_view(&sh, all)?)))
                .collect(),
        });
        sh.emit(StoreEvent::Snapshot { tag, snapshot });
    });
}

/// etcd's totals over every broker's requests, and this store's own counters.
fn totals(sh: &Shared, by_key: &BTreeMap<String, Vec<Entry>>) -> Stats {
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
}

/// Every request under the prefix, by lock key, and etcd's revision.
pub(super) async fn read_all(
    sh: &Shared,
) -> Result<(BTreeMap<String, Vec<Entry>>, u64), StoreError> {
    let r = sh
        .etcd
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
