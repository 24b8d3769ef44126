//! Drives one [`Session`] over one blocking transport, shared by any number of threads: the
//! session decides what to send and what each reply means; this file only moves bytes, routes
//! each answer to the thread that waits for it, and keeps time.
//!
//! Reading is leader/follower: a thread waiting for an answer takes the read half itself if
//! nobody else holds it, reads until its own answer arrives and routes every other one to its
//! waiter's channel; then it hands the read half on (nudges another waiter). So a thread alone
//! on its connection reads its replies straight off the socket, with no thread hop per reply.
//! A background thread reads only while nobody waits (to notice a dropped connection and run
//! the guards' `on_lost` hooks, and so the session can answer grants nobody waits for); it
//! steps aside as soon as a caller waits.

use super::transport::{Reader, Stream, Writer, connect};
use crate::client::calls;
use crate::client::error::{Error, Result};
use crate::client::requests::{self, new_uuid};
use crate::client::url::{Endpoint, Target};
use crate::proto::Request;
use crate::proto::session::{Answer, BrokerKind, Event, RequestId, Session};
use ahash::RandomState;
use hashbrown::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A caller holding the read half wakes this often to check its deadline.
const CALLER_READ_TIMEOUT: Duration = Duration::from_millis(50);
/// The background reader takes the read half only after nobody has waited for this long...
const BG_IDLE: Duration = Duration::from_millis(20);
/// ...and then wakes this often to step aside for a caller (who otherwise gets its reply
/// through it, one thread hop later).
const BG_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// A waiter that is not reading re-checks whether the read half became free at least this often
/// (only a safety net: whoever releases the read half nudges a waiter).
const FOLLOWER_PARK: Duration = Duration::from_secs(1);

type LostHook = Box<dyn FnOnce() + Send>;

/// What a waiter's channel carries: its answer, or `None`, a nudge ("the read half may be
/// free, try to take it").
type Msg = Option<Answer>;

struct State {
    dead: bool,
    session: Session,
    waiters: HashMap<RequestId, Sender<Msg>, RandomState>,
    on_lost: Vec<(u64, LostHook)>,
    next_hook: u64,
    /// Requests whose caller is inside [`Pending::recv`] right now.
    waiting: Vec<RequestId>,
    /// When the last caller left [`Pending::recv`].
    last_wait: Instant,
}

impl State {
    /// Hands every answer the session has to its waiter.
    fn route(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            if let Event::Answer { id, answer } = ev
                && let Some(tx) = self.waiters.get(&id)
            {
                let _ = tx.send(Some(answer));
            }
        }
    }
}

/// The write half and the bytes being written.
struct WriteSide {
    writer: Writer,
    buf: Vec<u8>,
}

/// The read half and what a time-out left of a partial message.
struct ReadSide {
    reader: Reader,
    buf: Vec<u8>,
    timeout: Option<Duration>,
}

enum ReadOutcome {
    Message,
    TimedOut,
    Closed,
}

struct Shared {
    write: Mutex<WriteSide>,
    state: Mutex<State>,
    read: Mutex<ReadSide>,
    dead: AtomicBool,
    closer: Stream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken invariant worth refusing service for.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Runs `f` on the state, then writes whatever the session has to send, in one pass:
    /// one lock of the state per request. Lock order: write side, then state.
    fn send_with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut w = lock(&self.write);
        let t = {
            let mut st = lock(&self.state);
            if st.dead {
                return Err(Error::ConnectionLost);
            }
            let t = f(&mut st)?;
            st.session.transmit(&mut w.buf);
            t
        };
        if w.buf.is_empty() {
            return Ok(t);
        }
        let WriteSide { writer, buf } = &mut *w;
        let r = writer.send(buf);
        buf.clear();
        drop(w);
        match r {
            Ok(()) => Ok(t),
            Err(_) => {
                self.fail();
                Err(Error::ConnectionLost)
            }
        }
    }

    /// Writes whatever the session has to send.
    fn flush(&self) -> Result<()> {
        self.send_with(|_| Ok(()))
    }

    /// Marks the connection dead: every waiter sees its channel close, every guard sees
    /// `is_lost`, and the socket is shut so the reader thread ends.
    fn fail(&self) {
        let mut st = lock(&self.state);
        if st.dead {
            return;
        }
        st.dead = true;
        self.dead.store(true, Ordering::Release);
        st.session.connection_lost();
        while st.session.poll_event().is_some() {}
        st.waiters.clear();
        let hooks = std::mem::take(&mut st.on_lost);
        drop(st);
        self.closer.shutdown();
        hooks.into_iter().for_each(|(_, h)| h());
    }

    /// Reads one message (or a time-out) with the read half and hands it to the session.
    fn read_one(&self, rs: &mut ReadSide, timeout: Duration) -> ReadOutcome {
        if rs.timeout != Some(timeout) {
            if self.closer.set_read_timeout(Some(timeout)).is_err() {
                return ReadOutcome::Closed;
            }
            rs.timeout = Some(timeout);
        }
        match rs.reader.next(&mut rs.buf) {
            Ok(true) => {
                let send = {
                    let mut st = lock(&self.state);
                    st.session.handle_line(&mut rs.buf);
                    st.route();
                    st.session.wants_transmit()
                };
                rs.buf.clear();
                // Acks and hand-backs the session produced.
                if send {
                    let _ = self.flush();
                }
                ReadOutcome::Message
            }
            Ok(false) => ReadOutcome::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                ReadOutcome::TimedOut
            }
            Err(_) => ReadOutcome::Closed,
        }
    }

    /// Called by a thread that no longer holds the read half: if another caller waits and the
    /// read half is free, nudge that caller so it takes over.
    fn hand_off(&self, st: &State) {
        if let Some(id) = st.waiting.first()
            && let Ok(free) = self.read.try_lock()
        {
            drop(free);
            if let Some(tx) = st.waiters.get(id) {
                let _ = tx.send(None);
            }
        }
    }
}

/// A live connection. Dropping the last handle (client and guards) closes the socket, which
/// makes the broker release whatever it still holds for us.
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.fail();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("dead", &self.is_dead())
            .finish()
    }
}

/// An in-flight request: its answer arrives on `rx`. Dropping it unanswered gives the request
/// up (a lock is cancelled at the broker).
pub(crate) struct Pending {
    id: RequestId,
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    /// What a grant that races the give-up is released with: a lock's key (`None` for an
    /// acquire-many, released by id, and for other requests, which hold nothing).
    key: Option<String>,
}

impl Pending {
    /// Waits for the answer until `deadline`: [`Error::BrokerSilent`] after it, and
    /// [`Error::ConnectionLost`] if the connection drops first.
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Answer> {
        lock(&self.shared.state).waiting.push(self.id);
        let r = self.wait(deadline);
        let mut st = lock(&self.shared.state);
        if let Some(i) = st.waiting.iter().position(|&w| w == self.id) {
            st.waiting.swap_remove(i);
        }
        st.last_wait = Instant::now();
        self.shared.hand_off(&st);
        r
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Answer> {
        let sh = &self.shared;
        loop {
            match self.rx.try_recv() {
                Ok(Some(a)) => return Ok(a),
                Ok(None) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Err(Error::ConnectionLost),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Error::BrokerSilent);
            }
            if let Ok(mut rs) = sh.read.try_lock() {
                // Our answer may have been routed to us just before the read half came free.
                match self.rx.try_recv() {
                    Ok(Some(a)) => return Ok(a),
                    Ok(None) | Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => return Err(Error::ConnectionLost),
                }
                if sh.dead.load(Ordering::Acquire) {
                    return Err(Error::ConnectionLost);
                }
                let t = left.map_or(CALLER_READ_TIMEOUT, |l| l.min(CALLER_READ_TIMEOUT));
                // SO_RCVTIMEO has microsecond resolution; zero would mean "no time-out".
                let t = t.max(Duration::from_millis(1));
                if let ReadOutcome::Closed = sh.read_one(&mut rs, t) {
                    drop(rs);
                    sh.fail();
                }
            } else {
                let park = left.map_or(FOLLOWER_PARK, |l| l.min(FOLLOWER_PARK));
                match self.rx.recv_timeout(park) {
                    Ok(Some(a)) => return Ok(a),
                    Ok(None) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(Error::ConnectionLost),
                }
            }
        }
    }

    /// The request's id as sent (`uuid`): a lock's id.
    pub(crate) fn uuid(&self) -> String {
        self.id.to_string()
    }

    /// Gives the request up now and sends what that takes (a lock's cancel).
    pub(crate) fn give_up(self) -> Result<()> {
        self.forget();
        self.shared.flush()
    }

    /// Drops the waiter and tells the session; `true` if that left bytes to send. A grant
    /// that a reader routed to this request after its wait ended (so the session no longer
    /// had it pending and sent no cancel) is released at once, not left held until its TTL.
    fn forget(&self) -> bool {
        let mut st = lock(&self.shared.state);
        st.waiters.remove(&self.id);
        st.session.give_up(self.id);
        // `None`s are only nudges to a parked waiter.
        while let Ok(msg) = self.rx.try_recv() {
            if let Some(answer) = msg {
                requests::hand_back(&mut st.session, self.id, self.key.as_deref(), &answer);
            }
        }
        st.session.wants_transmit()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.forget() {
            let _ = self.shared.flush();
        }
    }
}

impl Conn {
    pub(crate) fn open(t: &Target, ep: &Endpoint) -> Result<Conn> {
        let (token, timeout) = (t.token.as_deref(), t.connect_timeout);
        let (reader, writer, closer) = connect(ep, t)?;
        let shared = Arc::new(Shared {
            write: Mutex::new(WriteSide {
                writer,
                buf: Vec::with_capacity(4096),
            }),
            state: Mutex::new(State {
                dead: false,
                session: Session::new(),
                waiters: HashMap::default(),
                on_lost: Vec::new(),
                next_hook: 0,
                waiting: Vec::new(),
                last_wait: Instant::now(),
            }),
            read: Mutex::new(ReadSide {
                reader,
                buf: Vec::with_capacity(4096),
                timeout: None,
            }),
            dead: AtomicBool::new(false),
            closer,
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("lmx-client-reader".into())
            .spawn(move || background_reader(sh))?;
        let conn = Conn { shared };
        // Over WebSocket the token also rides in the upgrade request; the message is what our
        // broker checks on every transport.
        let auth = match token {
            Some(token) => Some(conn.request(&Request::Auth {
                uuid: Some(&new_uuid()),
                token,
            })?),
            None => None,
        };
        let ping = conn.request(&Request::Ping { uuid: &new_uuid() })?;
        let reply = ping.recv(Some(Instant::now() + timeout));
        let auth = auth.and_then(|a| a.rx.try_recv().ok().flatten());
        // A broker that refused our client certificate says so with an alert after the
        // handshake: its words beat "connection lost".
        let kind =
            calls::handshake(reply, auth).map_err(|e| conn.shared.closer.failure().unwrap_or(e))?;
        conn.shared.send_with(|st| {
            calls::greet(&mut st.session, kind);
            Ok(())
        })?;
        Ok(conn)
    }

    /// Sends `req` (its `uuid` from [`new_uuid`]) and returns its [`Pending`] answer. The
    /// session registers the request before its bytes leave, so no reply can overtake it.
    pub(crate) fn request(&self, req: &Request<'_>) -> Result<Pending> {
        self.request_after(None, req)
    }

    /// [`request`](Self::request), with a pipelined `release` (see [`release`](Self::release))
    /// queued just ahead of it: both leave in the same write.
    pub(crate) fn request_after(
        &self,
        release: Option<&Request<'_>>,
        req: &Request<'_>,
    ) -> Result<Pending> {
        let (tx, rx) = mpsc::channel();
        let id = self.shared.send_with(|st| {
            if let Some(release) = release {
                st.session.release(release);
            }
            let id = calls::request_id(&mut st.session, req)?;
            st.waiters.insert(id, tx);
            Ok(id)
        })?;
        let key = match req {
            Request::Lock(l) => Some(l.key.to_owned()),
            _ => None,
        };
        Ok(Pending {
            id,
            rx,
            shared: self.shared.clone(),
            key,
        })
    }

    /// Sends a request and waits for its answer, bounded by `timeout`.
    pub(crate) fn call(&self, timeout: Duration, req: &Request<'_>) -> Result<Answer> {
        self.request(req)?.recv(Some(Instant::now() + timeout))
    }

    /// A pipelined release (a guard's on drop): written at once, its reply not waited for
    /// (the session consumes it and counts a lost one).
    pub(crate) fn release(&self, req: &Request<'_>) -> Result<()> {
        self.shared.send_with(|st| {
            st.session.release(req);
            Ok(())
        })
    }

    /// See [`Session::lost_releases`].
    pub(crate) fn lost_releases(&self) -> u64 {
        lock(&self.shared.state).session.lost_releases()
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    pub(crate) fn kind(&self) -> BrokerKind {
        lock(&self.shared.state).session.broker()
    }

    /// Runs `f` once when the connection dies (at once if it already has); the id returned
    /// lets a guard that is released first withdraw it.
    pub(crate) fn on_lost(&self, f: LostHook) -> Option<u64> {
        let mut st = lock(&self.shared.state);
        if st.dead {
            drop(st);
            f();
            return None;
        }
        st.next_hook += 1;
        let id = st.next_hook;
        st.on_lost.push((id, f));
        Some(id)
    }

    pub(crate) fn forget_hooks(&self, ids: &[u64]) {
        if !ids.is_empty() {
            lock(&self.shared.state)
                .on_lost
                .retain(|(id, _)| !ids.contains(id));
        }
    }
}

/// Reads while no caller waits, so that a dropped connection is noticed (guards report
/// `is_lost`, `on_lost` hooks run) and grants nobody waits for are answered; steps aside when a
/// caller starts waiting.
fn background_reader(shared: Arc<Shared>) {
    loop {
        loop {
            let st = lock(&shared.state);
            if st.dead {
                return;
            }
            let quiet = st.last_wait.elapsed();
            if st.waiting.is_empty() && quiet >= BG_IDLE {
                break;
            }
            drop(st);
            std::thread::sleep(BG_IDLE.saturating_sub(quiet).max(Duration::from_millis(1)));
        }
        let mut rs = lock(&shared.read);
        loop {
            if let ReadOutcome::Closed = shared.read_one(&mut rs, BG_READ_TIMEOUT) {
                drop(rs);
                shared.fail();
                return;
            }
            if !lock(&shared.state).waiting.is_empty() {
                break;
            }
        }
        drop(rs);
        let st = lock(&shared.state);
        shared.hand_off(&st);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::{Conn, new_uuid};
    use crate::client::url::Settings;
    use crate::client::{LockOptions, requests};
    use crate::proto::{Request, decode};

    /// A grant that another caller's read routes to a request after its own wait ended (the
    /// session no longer has it pending, so giving it up sends no cancel) is released, not left
    /// held by the connection until its TTL.
    ///
    /// The peer is a script of our broker's replies on a socket of its own (the client's tests
    /// link no broker): it queues the lock, pushes its grant just ahead of the answer to the
    /// next `ping`, and reports the lock id of every `unlock` it receives.
    #[test]
    fn a_grant_routed_to_a_request_given_up_is_released() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        let (unlock_tx, unlock_rx) = mpsc::channel::<String>();
        let peer = std::thread::spawn(move || {
            let (sock, _) = listener.accept().expect("accept");
            let mut w = sock.try_clone().expect("clone");
            let mut r = BufReader::new(sock);
            let (mut line, mut queued) = (String::new(), None::<String>);
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let mut bytes = std::mem::take(&mut line).into_bytes();
                let reply = match decode(&mut bytes).expect("the client sends requests") {
                    Request::Ping { uuid } => {
                        let grant = queued.take().map(|u| format!(
                            r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":true,"lockRequestCount":0,"readersCount":0,"fencingToken":1}}"#
                        ) + "\n");
                        format!(
                            r#"{}{{"type":"pong","uuid":"{uuid}","ping":true,"serverTimestamp":1}}"#,
                            grant.unwrap_or_default()
                        )
                    }
                    Request::Lock(l) => {
                        queued = Some(l.uuid.to_string());
                        format!(
                            r#"{{"type":"lock","uuid":"{}","key":"k","acquired":false,"lockRequestCount":1,"readersCount":0,"queued":true}}"#,
                            l.uuid
                        )
                    }
                    Request::Unlock { uuid, lock_id, .. } => {
                        let _ = unlock_tx.send(lock_id.unwrap_or_default().to_string());
                        format!(
                            r#"{{"type":"unlock","uuid":"{uuid}","key":"k","unlocked":true,"lockRequestCount":0}}"#
                        )
                    }
                    _ => continue,
                };
                w.write_all(format!("{reply}\n").as_bytes()).expect("reply");
            }
        });
        let target = Settings::new(&url).resolve().expect("target");
        let conn = Conn::open(&target, &target.endpoints[0]).expect("open");
        let opts = LockOptions::default().ttl(Duration::from_secs(60));
        let id = new_uuid();
        let waiting = conn
            .request(&requests::lock(&opts, &id, "k"))
            .expect("request");
        // Queued; the ping's reader reads the grant (sent before the pong) and routes it into
        // the request's channel.
        let uuid = new_uuid();
        conn.call(Duration::from_secs(5), &Request::Ping { uuid: &uuid })
            .expect("ping");
        // The caller gave up (its wait ended) without taking the answer.
        drop(waiting);
        let released = unlock_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the grant was kept by a request nobody waits for");
        assert_eq!(released, id);
        drop(conn);
        peer.join().expect("peer");
    }
}
