//! Owner-checked deletes of request keys: the one way this store removes a key it put.
//!
//! Each delete names the key's create revision (or, when a put's answer was lost, its lease),
//! so a later request of another broker with the same key and id is never touched. A delete
//! that fails is retried for one session TTL; past that its lease has ended anyway.

use std::rc::Rc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use tokio::time::{Instant, sleep};

use super::batch::{self, Guard, Step};
use super::shared::{Shared, unchanged};
use crate::store::StoreError;

/// Pause before retrying a failed delete.
const RETRY: Duration = Duration::from_millis(200);

/// Deletes a request key once. `Ok(false)` when it was already gone (or not ours).
pub(super) async fn delete_once(sh: &Shared, me: &[u8], guard: Guard) -> Result<bool, StoreError> {
    let step = Step::Delete {
        me: me.to_vec(),
        guard,
    };
    Ok(batch::run(&sh.batch, step).await?.succeeded)
}

/// Deletes a request key, retrying for one session TTL; past that its lease has ended anyway
/// (or, for a keep-after-death request, the key waits for its store's lease).
pub(super) async fn delete_key(sh: Rc<Shared>, me: Vec<u8>, guard: Guard) {
    let until = Instant::now() + sh.cfg.session_ttl;
    while delete_once(&sh, &me, guard).await.is_err() && Instant::now() < until {
        sleep(RETRY).await;
    }
}

/// One Txn that deletes every member if all still exist with create revision `rev`.
pub(super) fn delete_all(members: &[Vec<u8>], rev: i64) -> Txn {
    Txn::new().when(unchanged(members, rev)).and_then(
        members
            .iter()
            .map(|m| TxnOp::delete(m.clone(), None))
            .collect::<Vec<_>>(),
    )
}

/// Deletes every member: in one Txn when all are still there (`Ok(true)`); else those left,
/// each on its own and retried in the background (`Ok(false)`: some had already gone; `Err`:
/// etcd failed).
pub(super) async fn delete_members(
    sh: Rc<Shared>,
    members: Vec<Vec<u8>>,
    rev: i64,
) -> Result<bool, StoreError> {
    let txn = delete_all(&members, rev);
    let res = sh.etcd.txn(txn).await.map(|r| r.succeeded());
    if res != Ok(true) {
        for m in members {
            tokio::task::spawn_local(delete_key(sh.clone(), m, Guard::Rev(rev)));
        }
    }
    res
}
