//! Unlock and cancel: how a request of this store, or of any broker, is ended by its client.
//!
//! An unlock names the lock id, the credential, from any connection and any broker; a request
//! of this store is decided from its own record, without a read, and any other (or a forced
//! unlock) from etcd's records of the key ([`rules::holders_and_waiters`]). A cancel (the
//! client gave its request up) ends only a request of its own connection and is never
//! answered.
//!
//! Why a cancel of a request whose put is still under way does not delete its key itself: it
//! cannot know whether the put has landed, or will land after its delete. It forgets the
//! request instead, and the request's task, once its put answers, sees it was forgotten and
//! deletes its own key (`lock.rs`, `many.rs`).

use std::rc::Rc;

use etcd_client::{Txn, TxnOp};

use super::batch::Guard;
use super::delete::{delete_key, delete_once};
use super::many;
use super::query::read_key;
use super::rules;
use super::shared::Shared;
use crate::store::{Op, StoreError, StoreEvent};
use crate::table::{ConnId, Name, TableError};

/// Releases `id`'s hold on `key` (or, forced, every holder) for `conn`, answering with `tag`.
pub(super) fn unlock(
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
        sh.etcd.txn(Txn::new().and_then(ops)).await?;
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

pub(super) fn cancel(sh: &Rc<Shared>, conn: ConnId, key: Name, id: Name) {
    let k = (key, id);
    let r = {
        let mut st = sh.st.borrow_mut();
        match st.reqs.get(&k) {
            Some(r) if r.conn == conn => st.reqs.remove(&k),
            _ => None,
        }
    };
    let Some(r) = r else {
        return many::cancel(sh, conn, &k.1);
    };
    if r.rev > 0 {
        if let Some(t) = &r.task {
            t.abort();
        }
        let me = sh.cfg.request_key(&k.0, &k.1);
        tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(r.rev)));
    }
    // Else its put is under way: its task deletes the key once the put answers.
}
