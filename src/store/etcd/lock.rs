//! One lock request, from its put-if-absent to its release: the extended etcd Mutex recipe.
//!
//! Each request is one task on the store's thread. It puts its key and reads the key's other
//! requests in one Txn; if older conflicting requests exist it listens for deletes under the key
//! (from the revision it read, so none is missed: the store's one shared watch, `watch.rs`)
//! and, when its turn seems to have come, checks again in etcd, in one Txn, that its own key
//! still exists and nothing older conflicts: only then does it report a grant. While it holds,
//! it listens for its own key's delete, so a deletion by anyone else (a forced unlock, an
//! unlock by id on another broker, an expired lease) becomes [`StoreEvent::Lost`] at once, and
//! it runs its TTL timer. Its etcd steps (the put-and-read, the confirming read, the delete)
//! share Txns with other requests' steps of the same turn (`batch.rs`); each keeps its own
//! compare and its own answer.

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use super::batch::{self, Guard, Step};
use super::delete::{delete_key, delete_once};
use super::rules::{self, Entry, Record};
use super::session;
use super::shared::{Either, Holder, Req, Shared, entries, race};
use super::watch::Note;
use crate::store::{Op, OwnedLock, StoreError, StoreEvent};
use crate::table::{ConnId, Grant, Mode, Name, TableError, Wait};

/// Pause before retrying a failed check.
const RETRY: Duration = Duration::from_millis(200);

/// A grant as the store reports it: etcd knows no queue length or readers at that moment.
pub(super) fn granted(conn: ConnId, id: Name, key: Name, token: u64) -> StoreEvent {
    let grant = Grant {
        token,
        queue_len: 0,
        readers: 0,
    };
    StoreEvent::Granted {
        conn,
        id,
        key,
        grant,
    }
}

/// The failure of lock request `spec`: nothing is held for it.
fn failed(spec: &OwnedLock, error: StoreError) -> StoreEvent {
    StoreEvent::Failed {
        conn: spec.conn,
        op: Op::Lock,
        tag: 0,
        id: Some(spec.id.clone()),
        key: Some(spec.key.clone()),
        error,
    }
}

/// Registers the request and starts its task; answers a repeat of a known request at once.
pub(super) fn start(sh: &Rc<Shared>, spec: OwnedLock) {
    let fail = |error| sh.emit(failed(&spec, error));
    if spec.max == Some(0) {
        return fail(StoreError::Rule(TableError::InvalidMax));
    }
    let k = (spec.key.clone(), spec.id.clone());
    let seq = {
        let mut st = sh.st.borrow_mut();
        if let Some(r) = st.reqs.get(&k) {
            // The Node client re-sends a lock with the same uuid when its own timer fires:
            // answer with the request's current state instead of queueing it twice.
            let ev = if r.conn != spec.conn {
                None
            } else if r.held {
                let token = r.rev.unsigned_abs();
                Some(granted(spec.conn, spec.id.clone(), spec.key.clone(), token))
            } else {
                Some(StoreEvent::Queued {
                    conn: spec.conn,
                    id: spec.id.clone(),
                    key: spec.key.clone(),
                    queue_len: 0,
                    readers: 0,
                })
            };
            drop(st);
            return match ev {
                Some(ev) => sh.emit(ev),
                None => fail(StoreError::Rule(TableError::DuplicateId)),
            };
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        st.reqs.insert(
            k.clone(),
            Req {
                seq,
                conn: spec.conn,
                rev: 0,
                held: false,
                keep: spec.keep_after_disconnect,
                task: None,
                deadline: None,
            },
        );
        seq
    };
    let task = tokio::task::spawn_local(run(sh.clone(), spec, seq));
    if let Some(r) = sh.st.borrow_mut().reqs.get_mut(&k)
        && r.seq == seq
    {
        r.task = Some(task.abort_handle());
    }
}

async fn run(sh: Rc<Shared>, spec: OwnedLock, seq: u64) {
    if let Err(error) = acquire(&sh, &spec, seq).await
        && sh.forget(&spec.key, &spec.id, seq).is_some()
    {
        sh.emit(failed(&spec, error));
    }
}

async fn acquire(sh: &Rc<Shared>, spec: &OwnedLock, seq: u64) -> Result<(), StoreError> {
    let started = Instant::now();
    let holder = if spec.keep_after_disconnect {
        Holder::Keep
    } else {
        Holder::Conn(spec.conn)
    };
    let lease = session::lease(sh, holder).await?;
    let me = sh.cfg.request_key(&spec.key, &spec.id);
    let dir = sh.cfg.key_dir(&spec.key);
    let record = Record::single(spec.mode, spec.max.unwrap_or(0), &sh.owner, spec.conn.0);
    let step = Step::Acquire {
        me: me.clone(),
        value: record.encode(),
        lease,
        dir: dir.clone(),
    };
    let out = match batch::run(&sh.batch, step).await {
        Ok(r) => r,
        Err(e) => {
            // The put may have landed: remove it if it is ours (on our lease).
            tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Lease(lease)));
            return Err(e);
        }
    };
    if !out.succeeded {
        return Err(StoreError::Rule(TableError::DuplicateId));
    }
    let seen = out.revision;
    let mut all = entries(sh, &out.kvs);
    let Some(rev) = all.iter().find(|e| e.raw == me).map(|e| e.rev) else {
        return Err(StoreError::Vanished);
    };
    match sh
        .st
        .borrow_mut()
        .reqs
        .get_mut(&(spec.key.clone(), spec.id.clone()))
    {
        Some(r) if r.seq == seq => r.rev = rev,
        _ => {
            // Cancelled while its put was under way: the key is deleted here, not by the
            // cancel, which could not know whether the put had landed.
            tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(rev)));
            return Ok(());
        }
    }
    all.retain(|e| e.rev < rev);
    let older = all;
    let refs: Vec<&Entry> = older.iter().collect();
    if let Some(m) = spec.max
        && spec.mode == Mode::Exclusive
    {
        let current = rules::resolve_max(0, &refs);
        if refs.iter().any(|e| e.max > 0) && current != m {
            tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(rev)));
            return Err(StoreError::Rule(TableError::MaxMismatch {
                current,
                requested: m,
            }));
        }
    }
    if !rules::granted(spec.mode, record.max, &refs) {
        let ahead = older.len();
        let expired = match spec.wait {
            Wait::No => Some(false),
            Wait::Until(t) => (Instant::from_std(t) <= Instant::now()).then_some(true),
            Wait::Forever => None,
        };
        if let Some(timed_out) = expired {
            // Deleted before the answer, so no ghost of it delays the next request.
            if delete_once(sh, &me, Guard::Rev(rev)).await.is_err() {
                tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(rev)));
            }
            if sh.forget(&spec.key, &spec.id, seq).is_some() {
                if timed_out {
                    sh.st.borrow_mut().wait_timeouts += 1;
                    sh.emit(wait_ended(spec, started));
                } else {
                    sh.emit(StoreEvent::Busy {
                        conn: spec.conn,
                        id: spec.id.clone(),
                        key: spec.key.clone(),
                        queue_len: ahead,
                        readers: 0,
                    });
                }
            }
            return Ok(());
        }
        sh.emit(StoreEvent::Queued {
            conn: spec.conn,
            id: spec.id.clone(),
            key: spec.key.clone(),
            queue_len: ahead,
            readers: 0,
        });
        let max = spec.max.unwrap_or(0);
        let turn = wait_turn(sh, (spec.mode, max), &dir, &me, rev, older, seen);
        let outcome = match spec.wait {
            Wait::Until(t) => race(sleep_until(Instant::from_std(t)), turn).await,
            _ => Either::Right(turn.await),
        };
        let confirmed = match outcome {
            Either::Right(r) => r?,
            Either::Left(()) => {
                tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(rev)));
                if sh.forget(&spec.key, &spec.id, seq).is_some() {
                    sh.st.borrow_mut().wait_timeouts += 1;
                    sh.emit(wait_ended(spec, started));
                }
                return Ok(());
            }
        };
        hold(sh, spec, seq, &dir, me, rev, confirmed).await;
        return Ok(());
    }
    hold(sh, spec, seq, &dir, me, rev, seen).await;
    Ok(())
}

/// The answer to a request that reached its wait deadline.
fn wait_ended(spec: &OwnedLock, started: Instant) -> StoreEvent {
    StoreEvent::TimedOut {
        conn: spec.conn,
        id: spec.id.clone(),
        key: Some(spec.key.clone()),
        waited: started.elapsed(),
    }
}

/// Waits until the turn of a request (of `mode`, naming `max` or 0) has come and etcd confirms
/// it, returning the revision at which it did. `Err` only when its own key is gone: every
/// other failure is retried (a failing etcd ends the session, and this task with it).
pub(super) async fn wait_turn(
    sh: &Rc<Shared>,
    (mode, max): (Mode, u32),
    dir: &[u8],
    me: &[u8],
    rev: i64,
    mut older: Vec<Entry>,
    seen: i64,
) -> Result<i64, StoreError> {
    let mut deletes = sh.hub.register(dir, None, seen);
    loop {
        let checked = match deletes.next().await {
            Note::Deleted(key, _) => {
                if key == me {
                    return Err(StoreError::Vanished);
                }
                let pred = {
                    let refs: Vec<&Entry> = older.iter().collect();
                    rules::predecessor(mode, max, &refs).map(|e| e.raw.clone())
                };
                let before = older.len();
                older.retain(|e| e.raw != key);
                let relevant = older.len() < before && pred.is_none_or(|p| p == key);
                let refs: Vec<&Entry> = older.iter().collect();
                if !relevant || !rules::granted(mode, max, &refs) {
                    continue;
                }
                recheck(sh, dir, me, rev).await.ok()
            }
            // Deletes may have been missed (the watch was compacted past us).
            Note::Reread => None,
        };
        let (fresh, at) = match checked {
            Some(Some(found)) => found,
            Some(None) => return Err(StoreError::Vanished),
            // etcd failing over, or deletes missed: read afresh, then listen from there.
            None => loop {
                sleep(RETRY).await;
                match recheck(sh, dir, me, rev).await {
                    Ok(Some((fresh, at))) => {
                        deletes.reset(at);
                        break (fresh, at);
                    }
                    Ok(None) => return Err(StoreError::Vanished),
                    Err(_) => continue,
                }
            },
        };
        older = fresh;
        let refs: Vec<&Entry> = older.iter().collect();
        if rules::granted(mode, max, &refs) {
            return Ok(at);
        }
    }
}

/// In one Txn (shared with other requests' steps, `batch.rs`): our key still exists with our
/// revision, and the requests older than it. `Ok(None)` when our key is gone.
async fn recheck(
    sh: &Shared,
    dir: &[u8],
    me: &[u8],
    rev: i64,
) -> Result<Option<(Vec<Entry>, i64)>, StoreError> {
    let step = Step::Confirm {
        me: me.to_vec(),
        rev,
        dir: dir.to_vec(),
    };
    let out = batch::run(&sh.batch, step).await?;
    if !out.succeeded {
        return Ok(None);
    }
    let mut older = entries(sh, &out.kvs);
    older.retain(|e| e.rev < rev);
    Ok(Some((older, out.revision)))
}

/// Reports the grant, then holds until the TTL ends (the key is deleted: `Expired`) or the key
/// is deleted by someone else (`Lost`). An unlock, a cancel or a disconnect aborts this task
/// first; an extend replaces its deadline.
async fn hold(
    sh: &Rc<Shared>,
    spec: &OwnedLock,
    seq: u64,
    dir: &[u8],
    me: Vec<u8>,
    rev: i64,
    seen: i64,
) {
    let ttl = sh.ttl(spec.ttl);
    let (deadline, timer) = tokio::sync::watch::channel(ttl.map(|d| Instant::now() + d));
    {
        let mut st = sh.st.borrow_mut();
        match st.reqs.get_mut(&(spec.key.clone(), spec.id.clone())) {
            Some(r) if r.seq == seq => {
                r.held = true;
                r.deadline = Some(deadline);
            }
            _ => return,
        }
        st.grants += 1;
    }
    sh.emit(granted(
        spec.conn,
        spec.id.clone(),
        spec.key.clone(),
        rev.unsigned_abs(),
    ));
    let gone = watch_gone(sh, dir, &me, rev, seen);
    let expired = hold_until(timer, gone).await;
    if expired {
        tokio::task::spawn_local(delete_key(sh.clone(), me, Guard::Rev(rev)));
    }
    if sh.forget(&spec.key, &spec.id, seq).is_none() {
        return;
    }
    let (conn, id, key) = (spec.conn, spec.id.clone(), spec.key.clone());
    sh.emit(if expired {
        sh.st.borrow_mut().expiries += 1;
        StoreEvent::Expired { conn, id, key }
    } else {
        StoreEvent::Lost {
            conn,
            id,
            key,
            reason: "its key was deleted in etcd: a forced unlock, an unlock by id on another \
                     broker, or its lease expired"
                .to_owned(),
        }
    });
}

/// Returns once our key (revision `rev`, known to exist at revision `seen`) no longer exists.
pub(super) async fn watch_gone(sh: &Shared, dir: &[u8], me: &[u8], rev: i64, seen: i64) {
    let mut deletes = sh.hub.register(dir, Some(me), seen);
    // Only deletes of our own key above `seen` come: our key existed then, so it is gone.
    while deletes.next().await == Note::Reread {
        // Deletes may have been missed: look at the key itself, then listen from there.
        loop {
            match sh.etcd.get(me.to_vec(), None).await {
                Ok(r) => {
                    if !r.kvs().iter().any(|k| k.create_revision() == rev) {
                        return;
                    }
                    deletes.reset(r.header().map_or(seen, |h| h.revision()));
                    break;
                }
                Err(_) => sleep(RETRY).await,
            }
        }
    }
}

/// Holds until the deadline in `timer` passes (`true`: expired) or `gone` ends (`false`). An
/// extend replaces the deadline while it runs.
pub(super) async fn hold_until<G: Future<Output = ()>>(
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
