//! Extend: a holder's TTL restarted from now, from any connection that names its lock id.
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
//! The hold's task (`lock.rs`, `many.rs`) waits on its deadline through a watch channel
//! (`lock::hold_until`); an extend replaces the deadline there.

use std::rc::Rc;

use etcd_client::Txn;
use tokio::time::Instant;

use super::query::read_key;
use super::rules;
use super::shared::{Deadline, Shared, unchanged};
use crate::store::{Op, StoreError, StoreEvent};
use crate::table::{ConnId, Name, TableError, Ttl};

/// `Ok(true)` when every key of `members` still exists with create revision `rev`.
pub(super) async fn confirm(
    sh: &Shared,
    members: &[Vec<u8>],
    rev: i64,
) -> Result<bool, StoreError> {
    let txn = Txn::new().when(unchanged(members, rev));
    Ok(sh.etcd.txn(txn).await?.succeeded())
}

/// Restarts holder `id`'s TTL on `key` for `conn`, answering with `tag`.
pub(super) fn extend(sh: &Rc<Shared>, (conn, tag): (ConnId, u64), key: Name, id: Name, ttl: Ttl) {
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
                        let error = match read_key(&sh, &key).await {
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
