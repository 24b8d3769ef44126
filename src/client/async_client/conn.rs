//! Drives one [`Session`] over one async transport. One task per connection reads replies,
//! handing each answer to its waiter's oneshot channel, and writes what nobody else did.
//!
//! Writes: a request (`lock`, `ping`, ...) is written by the task that makes it, at once, with
//! a non-blocking `try_write` under the state lock (NDJSON; over WebSocket the connection task
//! writes), together with everything queued before it: so a guard's unlock dropped just before
//! the next lock leaves in the same write as that lock, with no hop to the connection task.
//! A pipelined release (a dropped guard) only queues and wakes the connection task, which
//! writes it as soon as it runs (the next time the executor gets control: no timer) unless a
//! request has carried it first. Bytes the socket did not take wait in the state for the
//! connection task, which writes them when the socket is writable again.
//!
//! Callers never await while holding the state's mutex: it only guards the session and the
//! waiters for a few instructions, so taking it from an executor thread is not blocking.

use super::transport::{self, Io, RawWriter};
use crate::client::calls;
use crate::client::requests::{self, new_uuid};
use crate::client::url::{Endpoint, Target};
use crate::client::{Error, Result};
use crate::proto::Request;
use crate::proto::session::{Answer, BrokerKind, Event, RequestId, Session};
use ahash::RandomState;
use hashbrown::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

struct State {
    dead: bool,
    session: Session,
    waiters: HashMap<RequestId, oneshot::Sender<Answer>, RandomState>,
    /// NDJSON bytes taken from the session that the socket has not taken yet.
    out: Vec<u8>,
}

impl State {
    fn route(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            let id = match ev {
                Event::Answer { id, answer } => {
                    if let Some(tx) = self.waiters.remove(&id) {
                        let _ = tx.send(answer);
                    }
                    continue;
                }
                Event::Lost { id } => id,
            };
            self.waiters.remove(&id);
        }
    }
}

pub(super) struct Shared {
    state: Mutex<State>,
    /// Wakes the connection task: bytes to write, or every handle is gone.
    wake: Notify,
    dead: AtomicBool,
    closing: AtomicBool,
    /// The write half of an NDJSON connection (`None` over WebSocket).
    raw: Option<RawWriter>,
    /// The TLS error that ended the connection (an alert from the broker), for `open`.
    failure: Mutex<Option<Error>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Runs `f` on the state; then, if `write` and the connection has a [`RawWriter`], writes
    /// what the session has to send right here, else wakes the task if there is any.
    fn with<T>(&self, write: bool, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut st = lock(&self.state);
        if st.dead {
            return Err(Error::ConnectionLost);
        }
        let t = f(&mut st)?;
        let wake = match &self.raw {
            // A write error is the connection task's to find (it fails the connection).
            Some(w) if write => !matches!(write_now(w, &mut st), Ok(true)),
            _ => st.session.wants_transmit(),
        };
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        Ok(t)
    }

    fn fail(&self) {
        let mut st = lock(&self.state);
        st.dead = true;
        self.dead.store(true, Ordering::Release);
        st.session.connection_lost();
        st.route();
        st.waiters.clear();
    }
}

/// Writes what the session has queued (after what an earlier write left) without waiting:
/// `Ok(true)` when nothing is left. Called with the state locked, so writes never interleave.
fn write_now(w: &RawWriter, st: &mut State) -> io::Result<bool> {
    st.session.transmit(&mut st.out);
    while !st.out.is_empty() {
        match w.try_write(&st.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                st.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The connection task: see the module docs. Ends when the socket does or when every handle
/// is gone (after writing what was queued, such as the last guard's unlock).
async fn run(shared: Arc<Shared>, mut io: Io) {
    let mut out = Vec::with_capacity(4096);
    let mut inbuf = Vec::with_capacity(4096);
    loop {
        // Whether bytes wait for the socket to become writable.
        let mut blocked = false;
        if let Some(w) = &shared.raw {
            match write_now(w, &mut lock(&shared.state)) {
                Ok(done) => blocked = !done,
                Err(_) => break,
            }
        } else {
            lock(&shared.state).session.transmit(&mut out);
            if !out.is_empty() {
                if io.send(&out).await.is_err() {
                    break;
                }
                out.clear();
                continue;
            }
        }
        if !blocked && shared.closing.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            biased;
            r = async {
                match &shared.raw {
                    Some(w) => w.writable().await,
                    None => Ok(()),
                }
            }, if blocked => {
                if r.is_err() {
                    break;
                }
            }
            () = shared.wake.notified() => {}
            r = io.recv(&mut inbuf) => match r {
                Ok(true) => {
                    let mut st = lock(&shared.state);
                    st.session.handle_line(&mut inbuf);
                    st.route();
                    drop(st);
                    inbuf.clear();
                }
                Ok(false) => break,
                Err(e) => {
                    #[cfg(feature = "tls")]
                    if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                        *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(crate::client::tls::failure("the broker", &e));
                    }
                    let _ = e;
                    break;
                }
            },
        }
    }
    shared.fail();
}

/// A live connection; dropping the last handle ends its task, which closes the socket (the
/// broker then releases whatever this connection still held).
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// An in-flight request. Dropping it before its answer was taken gives the request up: a lock
/// is cancelled at the broker, and a grant that was already routed to it is released at once.
pub(crate) struct Pending {
    id: RequestId,
    rx: oneshot::Receiver<Answer>,
    shared: Arc<Shared>,
    /// The key of a lock request (`None` for acquire-many), for releasing a raced grant.
    key: Option<String>,
    taken: bool,
}

impl Pending {
    /// The request's id as sent (`uuid`): a lock's id.
    pub(crate) fn uuid(&self) -> String {
        self.id.to_string()
    }

    /// Waits for the answer; [`Error::ConnectionLost`] if the connection ends first.
    /// Cancel safe: dropping this future leaves the answer in the channel, where dropping
    /// the `Pending` finds it.
    pub(crate) async fn recv(&mut self) -> Result<Answer> {
        let r = (&mut self.rx).await;
        self.taken = true;
        r.map_err(|_| Error::ConnectionLost)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let _ = self.shared.with(false, |st| {
            st.waiters.remove(&self.id);
            // Still pending: the session cancels it at the broker (and hands back a grant that
            // still arrives). Answered but not taken: the answer is in the channel.
            st.session.give_up(self.id);
            if let Ok(answer) = self.rx.try_recv() {
                requests::hand_back(&mut st.session, self.id, self.key.as_deref(), &answer);
            }
            Ok(())
        });
    }
}

impl Conn {
    /// Connects, starts the connection task, authenticates and detects the broker.
    pub(crate) async fn open(t: &Target, ep: &Endpoint) -> Result<Conn> {
        let (token, timeout) = (t.token.as_deref(), t.connect_timeout);
        let (io, raw) = transport::connect(ep, t).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                dead: false,
                session: Session::new(),
                waiters: HashMap::default(),
                out: Vec::with_capacity(4096),
            }),
            raw,
            failure: Mutex::new(None),
            wake: Notify::new(),
            dead: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(run(shared.clone(), io));
        let conn = Conn { shared };
        let auth = match token {
            Some(token) => Some(conn.request(
                &Request::Auth {
                    uuid: Some(&new_uuid()),
                    token,
                },
                None,
            )?),
            None => None,
        };
        let ping = conn.request(&Request::Ping { uuid: &new_uuid() }, None)?;
        let reply = with_timeout(timeout, ping).await;
        let auth = auth.and_then(|mut a| a.rx.try_recv().ok());
        // A broker that refused our client certificate says so with an alert after the
        // handshake: its words beat "connection lost".
        let kind = calls::handshake(reply, auth).map_err(|e| {
            let failure = conn
                .shared
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            failure.unwrap_or(e)
        })?;
        conn.shared.with(false, |st| {
            calls::greet(&mut st.session, kind);
            Ok(())
        })?;
        Ok(conn)
    }

    /// Queues `req` (its `uuid` from `new_uuid`) and returns its [`Pending`] answer; `key` is
    /// the key of a lock request.
    pub(crate) fn request(&self, req: &Request<'_>, key: Option<&str>) -> Result<Pending> {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.with(true, |st| {
            let id = calls::request_id(&mut st.session, req)?;
            st.waiters.insert(id, tx);
            Ok(id)
        })?;
        Ok(Pending {
            id,
            rx,
            shared: self.shared.clone(),
            key: key.map(str::to_string),
            taken: false,
        })
    }

    /// Sends a request and waits for its answer, bounded by `timeout`.
    pub(crate) async fn call(&self, timeout: Duration, req: &Request<'_>) -> Result<Answer> {
        with_timeout(timeout, self.request(req, None)?).await
    }

    /// A pipelined release: queued at once, its reply consumed (and a lost one counted) by
    /// the session.
    pub(crate) fn release(&self, req: &Request<'_>) {
        let _ = self.shared.with(false, |st| {
            st.session.release(req);
            Ok(())
        });
    }

    pub(crate) fn lost_releases(&self) -> u64 {
        lock(&self.shared.state).session.lost_releases()
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    pub(crate) fn kind(&self) -> BrokerKind {
        lock(&self.shared.state).session.broker()
    }
}

/// Waits for `p` at most `limit`: [`Error::BrokerSilent`] after it (the request is given up).
pub(crate) async fn with_timeout(limit: Duration, mut p: Pending) -> Result<Answer> {
    match tokio::time::timeout(limit, p.recv()).await {
        Ok(r) => r,
        Err(_) => Err(Error::BrokerSilent),
    }
}
