//! Acquire-many on etcd: a group of keys held all together or not at all.
//!
//! The recipe: every key's request `PREFIX/<key>/<id>` is put, each if absent, in ONE Txn that
//! also reads every key's other requests. One Txn is one revision, so all members share one
//! create revision `R`, which is also the group's fencing token on every key. Each member is an
//! exclusive request that names no `max` (so it takes the key's own, like an exclusive lock),
//! and the group holds when, on every key, [`rules::granted`] says its member's turn has come.
//! Until then it waits, on every blocked key at once, for the older requests in its way to go
//! (`lock::wait_turn`, the same watch-and-recheck as a single lock).
//!
//! Why this never deadlocks: a request only ever waits for requests older than itself (lower
//! create revisions), single locks and groups alike, and etcd's revisions are one total order
//! over every key and every broker. A cycle of waits would need a request older than itself.
//! The oldest request of all has nothing older in its way on any key, so it is granted, and
//! so on: every request is granted in the end (if every holder releases). This replaces the
//! in-memory table's "take keys in sorted order": there a group takes its keys one by one, here
//! it enqueues on all of them in one atomic step.
//!
//! Why its members say `held`: a member's turn on one key may come while the group still
//! waits for another key, and then it holds nothing. Once every key's turn has come, one more
//! Txn checks that every member still exists with revision `R` and rewrites their values with
//! `held` (the same lease): only then is the grant reported. Any broker's `info`, `stats` and
//! forced unlock ([`rules::holders_and_waiters`]) then see the members as holders, and not
//! before. Either way a member is older than every later request of its key, so a single lock
//! on any broker waits for the group. An unlock by id of a member is refused
//! ([`TableError::GroupMember`]): only release-many (or a cancel) releases a group, whole.
//!
//! While it holds, one TTL timer (restarted by an extend) covers the group, and a watch on
//! each member turns a delete by anyone else into [`StoreEvent::Lost`]; either way every other
//! member is deleted too. A try-lock group that cannot be granted at once deletes every member
//! before it answers `ManyBusy`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::batch::Guard;
use super::delete::{delete_all, delete_key, delete_members};
use super::lock::{hold_until, wait_turn, watch_gone};
use super::query::read_all;
use super::rules::{self, Entry, Record};
use super::session;
use super::shared::{Either, Group, Holder, Shared, entries, race, unchanged};
use crate::store::{Op, OwnedMany, StoreError, StoreEvent};
use crate::table::{ConnId, Mode, Name, TableError, Wait};

/// Most keys in one acquire-many, as the in-memory table's default: 64 member puts and 64
/// range reads fill etcd's default `--max-txn-ops` (128) of the one Txn that records them.
pub(super) const MAX_KEYS_PER_MANY: usize = 64;

/// Forgets group `id` if it is still the one numbered `seq`.
fn forget(sh: &Shared, id: &Name, seq: u64) -> Option<Group> {
    let mut st = sh.st.borrow_mut();
    if st.groups.get(id).is_some_and(|g| g.seq == seq) {
        st.groups.remove(id)
    } else {
        None
    }
}

/// The failure of acquire-many `spec` (keys sorted): nothing is held for it.
fn failed(spec: &OwnedMany, keys: &[Name], error: StoreError) -> StoreEvent {
    StoreEvent::Failed {
        conn: spec.conn,
        op: Op::LockMany,
        tag: 0,
        id: Some(spec.id.clone()),
        key: keys.first().cloned(),
        error,
    }
}

/// Registers the group and starts its task; answers a repeat of a known group at once.
pub(super) fn start(sh: &Rc<Shared>, spec: OwnedMany) {
    let mut keys = spec.keys.clone();
    keys.sort_unstable();
    keys.dedup();
    let fail = |error| sh.emit(failed(&spec, &keys, error));
    if keys.is_empty() || keys.len() > MAX_KEYS_PER_MANY {
        return fail(StoreError::Rule(TableError::BadKeyCount {
            got: keys.len(),
            max: MAX_KEYS_PER_MANY,
        }));
    }
    let seq = {
        let mut st = sh.st.borrow_mut();
        if let Some(g) = st.groups.get(&spec.id) {
            // A repeat of the same request: answer with its state instead of taking it twice.
            let (conn, id) = (spec.conn, spec.id.clone());
            let ev = if g.conn != spec.conn || g.keys != keys {
                None
            } else if g.held {
                Some(StoreEvent::ManyGranted {
                    conn,
                    id,
                    tokens: g.tokens(),
                })
            } else {
                Some(StoreEvent::ManyQueued { conn, id })
            };
            drop(st);
            return match ev {
                Some(ev) => sh.emit(ev),
                None => fail(StoreError::Rule(TableError::DuplicateId)),
            };
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        st.groups.insert(
            spec.id.clone(),
            Group {
                seq,
                conn: spec.conn,
                keys: keys.clone(),
                rev: 0,
                held: false,
                keep: spec.keep_after_disconnect,
                task: None,
                deadline: None,
            },
        );
        seq
    };
    let id = spec.id.clone();
    let task = tokio::task::spawn_local(run(sh.clone(), spec, keys, seq));
    if let Some(g) = sh.st.borrow_mut().groups.get_mut(&id)
        && g.seq == seq
    {
        g.task = Some(task.abort_handle());
    }
}

async fn run(sh: Rc<Shared>, spec: OwnedMany, keys: Vec<Name>, seq: u64) {
    if let Err(error) = acquire(&sh, &spec, &keys, seq).await
        && forget(&sh, &spec.id, seq).is_some()
    {
        sh.emit(failed(&spec, &keys, error));
    }
}

async fn acquire(
    sh: &Rc<Shared>,
    spec: &OwnedMany,
    keys: &[Name],
    seq: u64,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let holder = if spec.keep_after_disconnect {
        Holder::Keep
    } else {
        Holder::Conn(spec.conn)
    };
    let lease = session::lease(sh, holder).await?;
    let members: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| sh.cfg.request_key(k, &spec.id))
        .collect();
    let dirs: Vec<Vec<u8>> = keys.iter().map(|k| sh.cfg.key_dir(k)).collect();
    let value = Record {
        group: true,
        ..Record::single(Mode::Exclusive, 0, &sh.owner, spec.conn.0)
    }
    .encode();
    let puts = members.iter().map(|m| {
        TxnOp::put(
            m.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    });
    let reads = dirs
        .iter()
        .map(|d| TxnOp::get(d.clone(), Some(GetOptions::new().with_prefix())));
    let txn = Txn::new()
        .when(
            members
                .iter()
                .map(|m| Compare::create_revision(m.clone(), CompareOp::Equal, 0))
                .collect::<Vec<_>>(),
        )
        .and_then(puts.chain(reads).collect::<Vec<_>>());
    let resp = match sh.etcd.txn(txn).await {
        Ok(r) => r,
        Err(e) => {
            // The puts may have landed: remove those on our lease.
            for m in members {
                tokio::task::spawn_local(delete_key(sh.clone(), m, Guard::Lease(lease)));
            }
            return Err(e);
        }
    };
    if !resp.succeeded() {
        return Err(StoreError::Rule(TableError::DuplicateId));
    }
    let seen = resp.header().map_or(0, |h| h.revision());
    let mut by_key: Vec<Vec<Entry>> = Vec::with_capacity(keys.len());
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(g) = op {
            by_key.push(entries(sh, g.kvs()));
        }
    }
    let rev = by_key
        .first()
        .and_then(|all| all.iter().find(|e| e.raw == members[0]))
        .map(|e| e.rev);
    let Some(rev) = rev.filter(|_| by_key.len() == keys.len()) else {
        return Err(StoreError::Vanished);
    };
    match sh.st.borrow_mut().groups.get_mut(&spec.id) {
        Some(g) if g.seq == seq => g.rev = rev,
        _ => {
            // Cancelled or released while its puts were under way.
            tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
            return Ok(());
        }
    }
    for all in &mut by_key {
        all.retain(|e| e.rev < rev);
    }
    let blocked: Vec<usize> = (0..keys.len())
        .filter(|&i| {
            let refs: Vec<&Entry> = by_key[i].iter().collect();
            !rules::granted(Mode::Exclusive, 0, &refs)
        })
        .collect();
    if !blocked.is_empty() {
        let (conn, id) = (spec.conn, spec.id.clone());
        let expired = match spec.wait {
            Wait::No => Some(false),
            Wait::Until(t) => (Instant::from_std(t) <= Instant::now()).then_some(true),
            Wait::Forever => None,
        };
        if let Some(timed_out) = expired {
            // Deleted before the answer, so no ghost of it delays the next request.
            let _ = delete_members(sh.clone(), members, rev).await;
            if forget(sh, &spec.id, seq).is_some() {
                sh.emit(if timed_out {
                    sh.st.borrow_mut().wait_timeouts += 1;
                    StoreEvent::TimedOut {
                        conn,
                        id,
                        key: None,
                        waited: started.elapsed(),
                    }
                } else {
                    StoreEvent::ManyBusy { conn, id }
                });
            }
            return Ok(());
        }
        sh.emit(StoreEvent::ManyQueued {
            conn,
            id: id.clone(),
        });
        // Every blocked key at once: a turn that has come stays (only older requests stand in
        // its way, and they only go), so once each has come they have all come.
        let waits: Vec<Turn<'_>> = blocked
            .iter()
            .map(|&i| {
                let older = std::mem::take(&mut by_key[i]);
                let (dir, me) = (&dirs[i], &members[i]);
                Box::pin(async move {
                    // A member takes the key exclusively within the key's own `max`.
                    wait_turn(sh, (Mode::Exclusive, 0), dir, me, rev, older, seen)
                        .await
                        .map(|_| ())
                }) as Turn<'_>
            })
            .collect();
        let turns = all_turns(waits);
        let outcome = match spec.wait {
            Wait::Until(t) => race(sleep_until(Instant::from_std(t)), turns).await,
            _ => Either::Right(turns.await),
        };
        match outcome {
            Either::Right(Ok(())) => {}
            Either::Right(Err(e)) => {
                tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
                return Err(e);
            }
            Either::Left(()) => {
                tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
                if forget(sh, &spec.id, seq).is_some() {
                    sh.st.borrow_mut().wait_timeouts += 1;
                    sh.emit(StoreEvent::TimedOut {
                        conn,
                        id,
                        key: None,
                        waited: started.elapsed(),
                    });
                }
                return Ok(());
            }
        }
    }
    hold(sh, spec, keys, members, (lease, seq, rev)).await
}

/// Confirms and marks the grant, reports it, then holds until the TTL ends (`Expired`) or a
/// member is deleted by someone else (`Lost`); either way every member goes. A release, a
/// cancel or a disconnect aborts this task first.
async fn hold(
    sh: &Rc<Shared>,
    spec: &OwnedMany,
    keys: &[Name],
    members: Vec<Vec<u8>>,
    (lease, seq, rev): (i64, u64, i64),
) -> Result<(), StoreError> {
    let value = Record {
        group: true,
        held: true,
        ..Record::single(Mode::Exclusive, 0, &sh.owner, spec.conn.0)
    }
    .encode();
    let txn = Txn::new().when(unchanged(&members, rev)).and_then(
        members
            .iter()
            .map(|m| {
                TxnOp::put(
                    m.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect::<Vec<_>>(),
    );
    // The revision at which every member was confirmed: the shared watch reports deletes
    // after it.
    let marked = sh.etcd.txn(txn).await.and_then(|r| {
        r.succeeded()
            .then(|| r.header().map_or(rev, |h| h.revision()))
            .ok_or(StoreError::Vanished)
    });
    let seen = match marked {
        Ok(at) => at,
        Err(e) => {
            tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
            return Err(e);
        }
    };
    let ttl = sh.ttl(spec.ttl);
    let (deadline, timer) = watch::channel(ttl.map(|d| Instant::now() + d));
    let tokens = {
        let mut st = sh.st.borrow_mut();
        let tokens = match st.groups.get_mut(&spec.id) {
            Some(g) if g.seq == seq => {
                g.held = true;
                g.deadline = Some(deadline);
                g.tokens()
            }
            _ => Vec::new(),
        };
        if !tokens.is_empty() {
            st.grants += 1;
        }
        tokens
    };
    if tokens.is_empty() {
        tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
        return Ok(());
    }
    sh.emit(StoreEvent::ManyGranted {
        conn: spec.conn,
        id: spec.id.clone(),
        tokens,
    });
    let which = Cell::new(0);
    let gone = async { which.set(first_gone(sh, keys, &members, rev, seen).await) };
    let expired = hold_until(timer, gone).await;
    tokio::task::spawn_local(delete_members(sh.clone(), members, rev));
    let Some(g) = forget(sh, &spec.id, seq) else {
        return Ok(());
    };
    let (conn, id) = (g.conn, spec.id.clone());
    sh.emit(if expired {
        sh.st.borrow_mut().expiries += 1;
        StoreEvent::Expired {
            conn,
            id,
            key: keys[0].clone(),
        }
    } else {
        StoreEvent::Lost {
            conn,
            id,
            key: keys[which.get()].clone(),
            reason: "a key of this acquire-many was deleted in etcd (a forced unlock, or its \
                     lease expired); its other keys were released"
                .to_owned(),
        }
    });
    Ok(())
}

/// One key's wait for its turn.
type Turn<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + 'a>>;

/// Waits for every turn; the first error ends the wait.
async fn all_turns(mut waits: Vec<Turn<'_>>) -> Result<(), StoreError> {
    std::future::poll_fn(|cx| {
        let mut failed = None;
        waits.retain_mut(|w| match w.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(e)) => {
                failed.get_or_insert(e);
                false
            }
            Poll::Pending => true,
        });
        match failed {
            Some(e) => Poll::Ready(Err(e)),
            None if waits.is_empty() => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    })
    .await
}

/// Returns the index of the first member (of `keys`, all existing at revision `seen`) that no
/// longer exists.
async fn first_gone(sh: &Shared, keys: &[Name], members: &[Vec<u8>], rev: i64, seen: i64) -> usize {
    let dirs: Vec<Vec<u8>> = keys.iter().map(|k| sh.cfg.key_dir(k)).collect();
    let mut watches: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = members
        .iter()
        .zip(&dirs)
        .map(|(m, d)| {
            Box::pin(watch_gone(sh, d, m, rev, seen)) as Pin<Box<dyn Future<Output = ()> + '_>>
        })
        .collect();
    std::future::poll_fn(|cx| {
        for (i, w) in watches.iter_mut().enumerate() {
            if w.as_mut().poll(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
    .await
}

/// Stops a group this store forgot (released, cancelled) and deletes its members. When its
/// puts are still under way its task deletes them once they answer (it finds itself gone).
fn stop(sh: &Rc<Shared>, id: &str, g: &Group) {
    if g.rev == 0 {
        return;
    }
    if let Some(t) = &g.task {
        t.abort();
    }
    tokio::task::spawn_local(delete_members(sh.clone(), g.members(sh, id), g.rev));
}

/// Releases acquire-many `id` for `conn`, answering with `tag`.
pub(super) fn release(sh: &Rc<Shared>, (conn, tag): (ConnId, u64), id: Name) {
    let g = sh.st.borrow_mut().groups.remove(&id);
    let sh = sh.clone();
    let fail = move |sh: &Shared, id: Name, key: Option<Name>, error| {
        sh.emit(StoreEvent::Failed {
            conn,
            op: Op::ReleaseMany,
            tag,
            id: Some(id),
            key,
            error,
        })
    };
    let Some(g) = g else {
        // Not one of ours: maybe another broker's (a client back through another broker).
        tokio::task::spawn_local(async move {
            match remote_release(&sh, &id).await {
                Ok(()) => sh.emit(StoreEvent::ManyReleased { tag }),
                Err((key, e)) => fail(&sh, id, key, e),
            }
        });
        return;
    };
    let key = g.keys.first().cloned();
    if !g.held {
        // Abandoned while it waits, as the in-memory table does, and told so.
        stop(&sh, &id, &g);
        return fail(&sh, id, key, StoreError::Rule(TableError::StillWaiting));
    }
    if let Some(t) = &g.task {
        t.abort();
    }
    tokio::task::spawn_local(async move {
        let members = g.members(&sh, &id);
        match delete_members(sh.clone(), members, g.rev).await {
            Ok(true) => sh.emit(StoreEvent::ManyReleased { tag }),
            // A member had already gone: the group was lost (its task had not yet seen it).
            Ok(false) => fail(&sh, id, key, StoreError::Rule(TableError::NotHeld)),
            Err(e) => fail(&sh, id, key, e),
        }
    });
}

/// Release-many of a group this store did not make: found by reading every key under the
/// prefix (the id alone does not say which keys it holds), released when every member is held,
/// in one Txn that checks they are all still there. Its own broker sees its members go and
/// reports the group lost, as for an unlock by id from another broker. A group that still
/// waits is left to its own broker ([`TableError::StillWaiting`]). The error comes with the
/// group's first key, when one was found.
async fn remote_release(sh: &Shared, id: &str) -> Result<(), (Option<Name>, StoreError)> {
    let (by_key, _) = read_all(sh).await.map_err(|e| (None, e))?;
    let mut first = None;
    let mut revs = Vec::new();
    let mut members = Vec::new();
    let mut held = true;
    for (key, all) in &by_key {
        let (holders, _) = rules::holders_and_waiters(all);
        for e in all.iter().filter(|e| e.id == id && e.group) {
            first.get_or_insert_with(|| Name::from(key.as_str()));
            revs.push(e.rev);
            members.push(e.raw.clone());
            held &= holders.iter().any(|h| h.raw == e.raw);
        }
    }
    let key = first;
    revs.dedup();
    let rev = match revs[..] {
        [] => return Err((key, StoreError::Rule(TableError::NotHeld))),
        [rev] => rev,
        // Two groups with one id (made on two brokers): the id does not say which.
        _ => return Err((key, StoreError::Rule(TableError::DuplicateId))),
    };
    if !held {
        return Err((key, StoreError::Rule(TableError::StillWaiting)));
    }
    let txn = delete_all(&members, rev);
    match sh.etcd.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(()),
        Ok(_) => Err((key, StoreError::Rule(TableError::NotHeld))),
        Err(e) => Err((key, e)),
    }
}

/// A cancel naming group `id` of connection `conn`: the group goes, with no event.
pub(super) fn cancel(sh: &Rc<Shared>, conn: ConnId, id: &Name) {
    let g = {
        let mut st = sh.st.borrow_mut();
        match st.groups.get(id) {
            Some(g) if g.conn == conn => st.groups.remove(id),
            _ => None,
        }
    };
    if let Some(g) = g {
        stop(sh, id, &g);
    }
}
