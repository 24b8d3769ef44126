//! The store's thread, on top of every other floor: a current-thread tokio runtime that owns
//! the etcd client, takes the ops and hands each to its request kind.
//!
//! Why one thread with a `LocalSet`: all state lives in one `RefCell` that only this thread
//! touches (`shared.rs`). Ops arrive on a tokio unbounded channel (its `send` never blocks the
//! reactor); events leave on a std channel followed by a call of the wake hook.

use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use etcd_client::GetOptions;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::LocalSet;

use super::batch::{self, Guard};
use super::calls::Etcd;
use super::config::EtcdConfig;
use super::shared::{Session, Shared};
use super::watch::{self, Hub};
use super::{delete, extend, lock, many, query, release, session};
use crate::store::{OwnedOp, StoreError, StoreEvent};
use crate::table::ConnId;

pub(super) enum Cmd {
    Op(OwnedOp),
    Shutdown,
}

/// Starts the thread; returns once etcd answered or the first check failed.
#[allow(clippy::type_complexity)]
pub(super) fn spawn(
    cfg: EtcdConfig,
    wake: Box<dyn Fn() + Send + Sync>,
) -> Result<
    (
        UnboundedSender<Cmd>,
        mpsc::Receiver<StoreEvent>,
        JoinHandle<()>,
        String,
    ),
    StoreError,
> {
    let (op_tx, op_rx) = unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, StoreError>>();
    let thread = std::thread::Builder::new()
        .name("lmx-etcd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                // The I/O driver comes from tonic's own tokio features.
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StoreError::Etcd(format!("runtime: {e}"))));
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, run(cfg, wake, ev_tx, op_rx, ready_tx));
        })
        .map_err(|e| StoreError::Etcd(format!("cannot start the etcd thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(owner)) => Ok((op_tx, ev_rx, thread, owner)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(StoreError::Stopped)
        }
    }
}

async fn run(
    cfg: EtcdConfig,
    wake: Box<dyn Fn() + Send + Sync>,
    events: mpsc::Sender<StoreEvent>,
    mut ops: UnboundedReceiver<Cmd>,
    ready: mpsc::Sender<Result<String, StoreError>>,
) {
    let sh = match connect(cfg, wake, events).await {
        Ok(sh) => Rc::new(sh),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tokio::task::spawn_local(watch::run(sh.etcd.clone(), sh.hub.clone()));
    tokio::task::spawn_local(batch::flusher(sh.batch.clone(), sh.etcd.clone()));
    let _ = ready.send(Ok(sh.owner.clone()));
    while let Some(cmd) = ops.recv().await {
        match cmd {
            Cmd::Op(op) => dispatch(&sh, op),
            Cmd::Shutdown => break,
        }
    }
    shutdown(&sh).await;
}

async fn connect(
    cfg: EtcdConfig,
    wake: Box<dyn Fn() + Send + Sync>,
    events: mpsc::Sender<StoreEvent>,
) -> Result<Shared, StoreError> {
    let etcd = Etcd::connect(&cfg).await?;
    // The connection is lazy: one read proves a member answers. Its revision is where the
    // shared watch starts.
    let root = cfg.root();
    let mut kv = etcd.client.kv_client();
    let count = Some(GetOptions::new().with_prefix().with_count_only());
    let r = etcd.call(kv.get(root.clone(), count)).await?;
    let from = r.header().map_or(0, |h| h.revision());
    let hub = Rc::new(Hub::new(root, from));
    Ok(Shared::new(cfg, etcd, hub, events, wake))
}

fn dispatch(sh: &Rc<Shared>, op: OwnedOp) {
    match op {
        OwnedOp::Lock(spec) => lock::start(sh, spec),
        OwnedOp::Unlock {
            conn,
            tag,
            key,
            id,
            force,
        } => release::unlock(sh, (conn, tag), key, id, force),
        OwnedOp::Cancel { conn, key, id } => release::cancel(sh, conn, key, id),
        OwnedOp::Extend {
            conn,
            tag,
            key,
            id,
            ttl,
        } => extend::extend(sh, (conn, tag), key, id, ttl),
        OwnedOp::LockMany(spec) => many::start(sh, spec),
        OwnedOp::ReleaseMany { conn, tag, id } => many::release(sh, (conn, tag), id),
        OwnedOp::Disconnect { conn } => disconnect(sh, conn),
        OwnedOp::Keys { tag, after, budget } => query::keys(sh, tag, after, budget),
        OwnedOp::Counts { tag, key } => query::counts(sh, tag, key),
        OwnedOp::Info { tag, key } => query::info(sh, tag, key),
        OwnedOp::Stats { tag } => query::stats(sh, tag),
        OwnedOp::Snapshot { tag, max_keys } => query::snapshot(sh, tag, max_keys),
    }
}

/// Drops the connection's waiters and holds, single and acquire-many (keep-after-death holds
/// stay), and revokes its
/// lease, which deletes its keys in etcd in one step.
fn disconnect(sh: &Rc<Shared>, conn: ConnId) {
    let mut orphans = Vec::new();
    let session = {
        let mut st = sh.st.borrow_mut();
        let keep_lease = st.keep.as_ref().and_then(|s| s.lease_id());
        st.reqs.retain(|(key, id), r| {
            if r.conn != conn || (r.keep && r.held) {
                return true;
            }
            if let Some(t) = &r.task {
                t.abort();
            }
            if r.keep {
                // A waiter on the store's lease: its key goes by hand (by lease when its put
                // may have landed unseen).
                let guard = match (r.rev, keep_lease) {
                    (rev, _) if rev > 0 => Some(Guard::Rev(rev)),
                    (_, Some(l)) => Some(Guard::Lease(l)),
                    _ => None,
                };
                if let Some(g) = guard {
                    orphans.push((key.clone(), id.clone(), g));
                }
            }
            false
        });
        st.groups.retain(|id, g| {
            if g.conn != conn || (g.keep && g.held) {
                return true;
            }
            if let Some(t) = &g.task {
                t.abort();
            }
            if g.keep {
                let guard = match (g.rev, keep_lease) {
                    (rev, _) if rev > 0 => Some(Guard::Rev(rev)),
                    (_, Some(l)) => Some(Guard::Lease(l)),
                    _ => None,
                };
                if let Some(guard) = guard {
                    orphans.extend(g.keys.iter().map(|k| (k.clone(), id.clone(), guard)));
                }
            }
            false
        });
        st.sessions.remove(&conn)
    };
    for (key, id, guard) in orphans {
        let me = sh.cfg.request_key(&key, &id);
        tokio::task::spawn_local(delete::delete_key(sh.clone(), me, guard));
    }
    if let Some(s) = session {
        session::close(sh, s);
    }
}

/// Stops every session and revokes every lease, all at once, within one `op_timeout`.
async fn shutdown(sh: &Rc<Shared>) {
    let sessions: Vec<Rc<Session>> = {
        let mut st = sh.st.borrow_mut();
        for r in st.reqs.values() {
            if let Some(t) = &r.task {
                t.abort();
            }
        }
        st.reqs.clear();
        for g in st.groups.values() {
            if let Some(t) = &g.task {
                t.abort();
            }
        }
        st.groups.clear();
        let mut v: Vec<_> = st.sessions.drain().map(|(_, s)| s).collect();
        v.extend(st.keep.take());
        v
    };
    let revokes: Vec<_> = sessions
        .iter()
        .map(|s| tokio::task::spawn_local(session::revoke(sh.clone(), s.clone())))
        .collect();
    for r in revokes {
        let _ = r.await;
    }
}
