//! Extend and cancel: what a client does to a request it already made.
//!
//! Why an extend asks etcd before it answers: a hold whose key someone else just deleted (a
//! forced unlock, an expired lease) is no longer a hold even if its task has not yet seen the
//! delete. So the new deadline takes effect, and `Extended` is reported, only after a Txn has
//! confirmed that the request key still exists with its create revision. The deadline is still
//! counted from when the op arrived.
//!
//! Why an extend of another broker's holder is refused ([`StoreError::OtherBroker`]): a TTL is
//! a timer of the store that granted it (etcd leases count whole seconds, too coarse for lock
//! TTLs), so only that broker can restart it. Its client reaches it through that broker.
//!
//! Why a cancel of a request whose put is still under way does not delete its key itself: it
//! cannot know whether the put has landed, or will land after its delete. It forgets the
//! request instead, and the request's task, once its put answers, sees it was forgotten and
//! deletes its own key (request.rs, many.rs).

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;

use etcd_client::{Compare, CompareOp, Txn};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::request::{Guard, delete_key};
use super::rules;
use super::worker::{Deadline, Either, Shared, race};
use crate::store::{Op, StoreError, StoreEvent};
use crate::table::{ConnId, Name, TableError, Ttl};

/// Holds until the deadline in `timer` passes (`true`: expired) or `gone` ends (`false`). An
/// extend replaces the deadline while it runs.
pub async fn hold_until<G: Future<Output = ()>>(
    mut timer: watch::Receiver<Option<Instant>>,
    gone: G,
) -> bool {
    let mut gone = pin!(gone);
    let mut open = true;
    loop {
        let at = *timer.borrow_and_update();
        let expiry = async move {
            match at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let changed = async {
            if open {
                timer.changed().await.is_ok()
            } else {
                std::future::pending().await
            }
        };
        let r = race(expiry, race(changed, gone.as_mut())).await;
        match r {
            Either::Left(()) => return true,
            // A new deadline; or its sender is gone (the request was forgotten), so the
            // deadline can no longer change.
            Either::Right(Either::Left(ok)) => open = ok,
            Either::Right(Either::Right(())) => return false,
        }
    }
}

/// `Ok(true)` when every key of `members` still exists with create revision `rev`.
pub async fn confirm(sh: &Shared, members: &[Vec<u8>], rev: i64) -> Result<bool, StoreError> {
    let txn = Txn::new().when(
        members
            .iter()
            .map(|m| Compare::create_revision(m.clone(), CompareOp::Equal, rev))
            .collect::<Vec<_>>(),
    );
    Ok(sh.txn(txn).await?.succeeded())
}

/// Restarts holder `id`'s TTL on `key` for `conn`, answering with `tag`.
pub fn extend(sh: &Rc<Shared>, (conn, tag): (ConnId, u64), key: Name, id: Name, ttl: Ttl) {
    let at = sh.ttl(ttl).map(|d| Instant::now() + d);
    let k = (key.clone(), id.clone());
    let local = sh.st.borrow().reqs.get(&k).map(|r| (r.seq, r.held, r.rev));
    let sh = sh.clone();
    let fail = move |sh: &Shared, error| {
        sh.emit(StoreEvent::Failed {
            conn,
            op: Op::Extend,
            tag,
            id: Some(k.1.clone()),
            key: Some(k.0.clone()),
            error,
        })
    };
    match local {
        Some((_, false, _)) => fail(&sh, StoreError::Rule(TableError::StillWaiting)),
        Some((seq, true, rev)) => {
            tokio::task::spawn_local(async move {
                let me = sh.cfg.request_key(&key, &id);
                let res = confirm(&sh, &[me], rev).await;
                let deadline = |sh: &Shared| {
                    let st = sh.st.borrow();
                    let r = st.reqs.get(&(key.clone(), id.clone()))?;
                    (r.seq == seq).then(|| r.deadline.clone())?
                };
                finish(&sh, res, deadline(&sh), at, tag, fail);
            });
        }
        None => {
            let group = {
                let st = sh.st.borrow();
                st.groups
                    .get(&id)
                    .filter(|g| g.keys.contains(&key))
                    .map(|g| (g.seq, g.held, g.rev, g.keys.clone()))
            };
            match group {
                Some((_, false, _, _)) => fail(&sh, StoreError::Rule(TableError::StillWaiting)),
                Some((seq, true, rev, keys)) => {
                    tokio::task::spawn_local(async move {
                        let members: Vec<Vec<u8>> =
                            keys.iter().map(|k| sh.cfg.request_key(k, &id)).collect();
                        let res = confirm(&sh, &members, rev).await;
                        let deadline = |sh: &Shared| {
                            let st = sh.st.borrow();
                            let g = st.groups.get(&id)?;
                            (g.seq == seq).then(|| g.deadline.clone())?
                        };
                        finish(&sh, res, deadline(&sh), at, tag, fail);
                    });
                }
                None => {
                    tokio::task::spawn_local(async move {
                        let error = match super::query::read_key(&sh, &key).await {
                            Err(e) => e,
                            Ok(all) => {
                                let (holders, waiters) = rules::holders_and_waiters(&all);
                                if let Some(h) = holders.iter().find(|h| h.id == *id) {
                                    StoreError::OtherBroker(h.owner.clone())
                                } else if waiters.iter().any(|w| w.id == *id) {
                                    StoreError::Rule(TableError::StillWaiting)
                                } else {
                                    StoreError::Rule(TableError::NotHeld)
                                }
                            }
                        };
                        fail(&sh, error);
                    });
                }
            }
        }
    }
}

/// Applies a confirmed extend to the hold's timer and answers.
fn finish(
    sh: &Shared,
    confirmed: Result<bool, StoreError>,
    deadline: Option<Deadline>,
    at: Option<Instant>,
    tag: u64,
    fail: impl Fn(&Shared, StoreError),
) {
    match (confirmed, deadline) {
        (Ok(true), Some(d)) => {
            d.send_replace(at);
            sh.emit(StoreEvent::Extended { tag });
        }
        // Gone from etcd, or its hold ended (expired, released) while etcd answered.
        (Ok(_), _) => fail(sh, StoreError::Rule(TableError::NotHeld)),
        (Err(e), _) => fail(sh, e),
    }
}

pub fn cancel(sh: &Rc<Shared>, conn: ConnId, key: Name, id: Name) {
    let k = (key, id);
    let r = {
        let mut st = sh.st.borrow_mut();
        match st.reqs.get(&k) {
            Some(r) if r.conn == conn => st.reqs.remove(&k),
            _ => None,
        }
    };
    let Some(r) = r else {
        return super::many::cancel(sh, conn, &k.1);
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
