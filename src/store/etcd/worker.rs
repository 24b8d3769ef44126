//! The store's thread: a current-thread tokio runtime that owns the etcd client.
//!
//! Why one thread with a `LocalSet`: all state lives in one `RefCell` that only this thread
//! touches, so tasks need no locks, and aborting a task (an unlock, a disconnect) can never
//! catch it half-way through a state change: it only stops at an `.await`. Ops arrive on a
//! tokio unbounded channel (its `send` never blocks the reactor); events leave on a std channel
//! followed by a call of the wake hook.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse, Txn, TxnResponse};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::{AbortHandle, LocalSet};

use super::EtcdConfig;
use super::batch::Batcher;
use super::request::Guard;
use super::session::Session;
use super::watch::{self, Hub};
use crate::store::{OwnedOp, StoreError, StoreEvent};
use crate::table::{ConnId, Name, Ttl};

pub enum Cmd {
    Op(OwnedOp),
    Shutdown,
}

/// A request this store made, waiting or held.
pub struct Req {
    /// Tells a request apart from a later one with the same key and id.
    pub seq: u64,
    pub conn: ConnId,
    /// Its key's create revision, once put.
    pub rev: i64,
    pub held: bool,
    pub keep: bool,
    pub task: Option<AbortHandle>,
    /// While held: restarts its TTL timer (an extend); `None` = no timer.
    pub deadline: Option<Deadline>,
}

/// The holder task's TTL deadline, which an extend replaces.
pub type Deadline = tokio::sync::watch::Sender<Option<tokio::time::Instant>>;

#[derive(Default)]
pub struct State {
    /// By (lock key, lock id).
    pub reqs: HashMap<(Name, Name), Req>,
    /// Acquire-many groups, by lock id.
    pub groups: HashMap<Name, super::many::Group>,
    pub sessions: HashMap<ConnId, Rc<Session>>,
    pub keep: Option<Rc<Session>>,
    pub next_seq: u64,
    pub grants: u64,
    pub expiries: u64,
    pub wait_timeouts: u64,
}

/// What every task of the store shares.
pub struct Shared {
    pub cfg: EtcdConfig,
    pub owner: String,
    pub client: Client,
    /// The shared delete watch every request task listens to.
    pub hub: Rc<Hub>,
    /// Steps of requests waiting to share the next Txn (`batch.rs`).
    pub batch: Batcher,
    events: mpsc::Sender<StoreEvent>,
    wake: Box<dyn Fn() + Send + Sync>,
    pub st: RefCell<State>,
}

impl Shared {
    pub fn emit(&self, ev: StoreEvent) {
        if self.events.send(ev).is_ok() {
            (self.wake)();
        }
    }

    /// Runs an etcd call under the store's deadline, mapping every failure to a [`StoreError`].
    pub async fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        within(self.cfg.op_timeout, fut).await
    }

    /// A Txn, sent again to a live member when it surely did not run (see [`unsent`]) until
    /// the op deadline: after a member dies the client's channel still picks it for a while,
    /// and an election answers "no leader"; neither is a reason to fail a request while a
    /// quorum is alive. A Txn that may have run is never sent twice: its compare would then
    /// judge its own first effect.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.retrying(unsent, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// A read, sent again on any failure of a member until the op deadline (it changes
    /// nothing, so it cannot run twice).
    pub async fn get(
        &self,
        key: Vec<u8>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        self.retrying(unavailable, || {
            let (mut kv, key, opts) = (self.client.kv_client(), key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
        .await
    }

    /// Runs the call `make` makes until it succeeds, fails in a way `again` does not accept,
    /// or the op deadline (one for all attempts) passes.
    pub async fn retrying<T, F, M>(
        &self,
        again: fn(&etcd_client::Error) -> bool,
        mut make: M,
    ) -> Result<T, StoreError>
    where
        M: FnMut() -> F,
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let t = self.cfg.op_timeout;
        let deadline = tokio::time::Instant::now() + t;
        let mut pause = Duration::from_millis(10);
        loop {
            match tokio::time::timeout_at(deadline, make()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if again(&e) && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Ok(Err(e)) => return Err(StoreError::Etcd(e.to_string())),
                Err(_) => return Err(StoreError::Timeout(t)),
            }
        }
    }

    /// How long a hold with `ttl` lasts: `None` = until released.
    pub fn ttl(&self, ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Default => self.cfg.default_ttl,
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }

    /// Forgets request (`key`, `id`) if it is still the one numbered `seq`.
    pub fn forget(&self, key: &Name, id: &Name, seq: u64) -> Option<Req> {
        let mut st = self.st.borrow_mut();
        let k = (key.clone(), id.clone());
        if st.reqs.get(&k).is_some_and(|r| r.seq == seq) {
            st.reqs.remove(&k)
        } else {
            None
        }
    }
}

/// gRPC's code for "unavailable" (`tonic::Code::Unavailable`): the member could not be
/// reached, has no leader, lost it, or timed out.
const UNAVAILABLE: i32 = 14;

/// A call that surely did not run: no connection to the member could be made (tonic's
/// channel still picks a dead member for a while), or the member refused it for want of a
/// leader (`require_leader`: refused before anything is proposed).
pub fn unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == UNAVAILABLE => {
            s.message().starts_with("tcp connect error") || s.message().contains("no leader")
        }
        _ => false,
    }
}

/// Any failure of a member or of the way to it (for reads, which may run twice).
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == UNAVAILABLE,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs an etcd call under deadline `t`, mapping every failure to a [`StoreError`].
async fn within<T, F>(t: Duration, fut: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Etcd(e.to_string())),
        Err(_) => Err(StoreError::Timeout(t)),
    }
}

/// Starts the thread; returns once etcd answered or the first check failed.
#[allow(clippy::type_complexity)]
pub fn spawn(
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
    tokio::task::spawn_local(watch::run(sh.clone()));
    tokio::task::spawn_local(super::batch::flusher(sh.clone()));
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
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.op_timeout)
        .with_timeout(cfg.op_timeout)
        .with_keep_alive(cfg.op_timeout, cfg.op_timeout)
        .with_require_leader(true);
    if let Some((user, password)) = &cfg.user {
        // etcd's simple tokens expire (5 min by default): fetch a new one when told so.
        opts = opts.with_user(user, password).with_auto_token_refresh(true);
    }
    let tls = cfg.tls || cfg.ca.is_some() || cfg.cert_key.is_some();
    if tls {
        opts = super::tls::options(opts, &cfg)?;
    }
    let scheme = if tls { "https" } else { "http" };
    let eps: Vec<String> = cfg
        .endpoints
        .iter()
        .map(|e| format!("{scheme}://{e}"))
        .collect();
    let client = within(cfg.op_timeout, Client::connect(eps, Some(opts))).await?;
    // The connection is lazy: one read proves a member answers. Its revision is where the
    // shared watch starts.
    let root = cfg.root();
    let mut kv = client.kv_client();
    let count = Some(GetOptions::new().with_prefix().with_count_only());
    let r = within(cfg.op_timeout, kv.get(root.clone(), count)).await?;
    let from = r.header().map_or(0, |h| h.revision());
    Ok(Shared {
        owner: format!("{:016x}", fastrand::u64(..)),
        hub: Rc::new(Hub::new(root, from)),
        batch: Batcher::default(),
        cfg,
        client,
        events,
        wake,
        st: RefCell::new(State::default()),
    })
}

fn dispatch(sh: &Rc<Shared>, op: OwnedOp) {
    match op {
        OwnedOp::Lock(spec) => super::request::start(sh, spec),
        OwnedOp::Unlock {
            conn,
            tag,
            key,
            id,
            force,
        } => super::query::unlock(sh, (conn, tag), key, id, force),
        OwnedOp::Cancel { conn, key, id } => super::extend::cancel(sh, conn, key, id),
        OwnedOp::Extend {
            conn,
            tag,
            key,
            id,
            ttl,
        } => super::extend::extend(sh, (conn, tag), key, id, ttl),
        OwnedOp::LockMany(spec) => super::many::start(sh, spec),
        OwnedOp::ReleaseMany { conn, tag, id } => super::many::release(sh, (conn, tag), id),
        OwnedOp::Disconnect { conn } => disconnect(sh, conn),
        OwnedOp::Keys { tag } => super::query::keys(sh, tag),
        OwnedOp::Info { tag, key } => super::query::info(sh, tag, key),
        OwnedOp::Stats { tag } => super::query::stats(sh, tag),
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
        tokio::task::spawn_local(super::request::delete_key(sh.clone(), me, guard));
    }
    if let Some(s) = session {
        s.close(sh);
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
        .map(|s| tokio::task::spawn_local(s.clone().revoke(sh.clone())))
        .collect();
    for r in revokes {
        let _ = r.await;
    }
}

/// Waits for the first of two futures (a two-armed `select!` without tokio's macros).
pub async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(x));
        }
        Poll::Pending
    })
    .await
}

pub enum Either<A, B> {
    Left(A),
    Right(B),
}
