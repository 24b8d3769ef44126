//! An in-memory pair of clients and a broker core with simulated time, after quinn-proto's
//! `tests/util.rs`: no sockets, no threads, no sleeping.
//!
//! A client made by [`Pair::session`] drives a real [`Session`], as the Rust clients do:
//! requests go in by [`Pair::request`], what the broker sends goes through the session, its
//! answers come out of [`Pair::answer`], and whatever the session sends on its own (the npm
//! broker's acks and hand-backs, cancels) reaches the core. A client made by
//! [`Pair::connect`] speaks raw JSON lines ([`Pair::send`], [`Pair::send_raw`],
//! [`Pair::recv`]): for the wire's quirks (the npm client's message shapes, retries, ids that
//! are not of the Rust clients' form, legacy read/write) and for hostile input.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::super::{Config, ConnKind, Core, Event};
use crate::proto::session::{self, Answer, BrokerKind, LockInfo, RequestId, Session};
use crate::proto::{Limits, LockRequest, Mode, Request, Ttl};
use crate::table::{self, ConnId};

/// One client and what the broker sent it.
pub(super) struct TestClient {
    pub conn: ConnId,
    /// A session client's session: every line the broker sends it goes there.
    session: Option<Session>,
    /// A raw client's lines, one JSON value each, in order.
    pub inbox: VecDeque<Value>,
    /// A session client's events not yet taken.
    events: VecDeque<session::Event>,
    /// The broker closed it (or the test did).
    pub closed: bool,
    /// The core asked to close it once its output is out.
    close_after_flush: bool,
}

/// The broker core and its clients, and the simulated clock they share.
pub(super) struct Pair {
    pub core: Core,
    pub clients: Vec<TestClient>,
    epoch: Instant,
    /// Current time; only [`Pair::advance`] moves it.
    pub time: Instant,
}

/// A handle on one client of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Client(usize);

fn fixed_wall_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The broker's defaults, as `BrokerBuilder` gives them (no default TTL).
pub(super) fn config() -> Config {
    Config {
        table: table::Config {
            token_seed: 1000,
            default_ttl: None,
            ..table::Config::default()
        },
        limits: Limits::default(),
        ack_timeout: None,
        auth_token: None,
        restrict_admin: false,
        wall_clock: fixed_wall_clock,
        reply_budget: 256 * 1024,
        started: Instant::now(),
        pid: 4242,
    }
}

/// A fresh request id in its wire form, as the Rust clients make them.
pub(super) fn uuid() -> String {
    RequestId::random().to_string()
}

/// A `lock` of `key` that never expires and waits until granted: what a Rust client's
/// `lock_with(key, LockOptions::new().ttl(Ttl::Never))` sends. Tests change its fields.
pub(super) fn lock_of<'a>(uuid: &'a str, key: &'a str) -> LockRequest<'a> {
    LockRequest {
        uuid,
        key,
        ttl: Ttl::Never,
        max: None,
        try_lock: false,
        wait_timeout: None,
        mode: Mode::Exclusive,
        keep_locks_after_death: false,
        retry_count: 0,
    }
}

impl Pair {
    pub(super) fn new(cfg: Config) -> Self {
        let epoch = Instant::now();
        Pair {
            core: Core::new(cfg),
            clients: Vec::new(),
            epoch,
            time: epoch,
        }
    }

    /// Opens a TCP connection that speaks raw JSON.
    pub(super) fn connect(&mut self) -> Client {
        self.connect_kind(ConnKind::Tcp)
    }

    pub(super) fn connect_kind(&mut self, kind: ConnKind) -> Client {
        self.open(kind, None)
    }

    /// Opens a TCP connection driven by a [`Session`] that believes it talks to `broker`
    /// ([`BrokerKind::Node`]: it acks every grant, as it would the npm broker).
    pub(super) fn session(&mut self, broker: BrokerKind) -> Client {
        self.session_kind(ConnKind::Tcp, broker)
    }

    pub(super) fn session_kind(&mut self, kind: ConnKind, broker: BrokerKind) -> Client {
        let mut s = Session::new();
        s.set_broker(broker);
        self.open(kind, Some(s))
    }

    fn open(&mut self, kind: ConnKind, session: Option<Session>) -> Client {
        let idx = self.clients.len();
        // A generation above the index, as the reactor makes them.
        let conn = ConnId(((idx as u64 + 1) << 32) | idx as u64);
        self.core.open(conn, kind, self.time);
        self.clients.push(TestClient {
            conn,
            session,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
            close_after_flush: false,
        });
        Client(idx)
    }

    /// How long since the pair was made.
    pub(super) fn elapsed(&self) -> Duration {
        self.time - self.epoch
    }

    /// Sends one message (serialized as one line) and delivers everything that results.
    pub(super) fn send(&mut self, c: Client, msg: Value) {
        let bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
        self.send_bytes(c, bytes);
    }

    /// Sends raw bytes as one message.
    pub(super) fn send_raw(&mut self, c: Client, raw: &str) {
        self.send_bytes(c, raw.as_bytes().to_vec());
    }

    fn send_bytes(&mut self, c: Client, mut bytes: Vec<u8>) {
        let conn = self.clients[c.0].conn;
        assert!(!self.clients[c.0].closed, "send on a closed connection");
        self.core.handle_message(conn, &mut bytes, self.time);
        self.drive();
    }

    /// Session client `c` sends `req`, whose `uuid` is a fresh [`uuid`]; returns its id.
    pub(super) fn request(&mut self, c: Client, req: &Request<'_>) -> RequestId {
        let id = self
            .session_of(c)
            .request(req)
            .expect("a request with an id of the Rust clients' form");
        self.drive();
        id
    }

    /// Session client `c` locks `key` ([`lock_of`], changed by `f`); returns the lock's id.
    pub(super) fn lock_with(
        &mut self,
        c: Client,
        key: &str,
        f: impl FnOnce(&mut LockRequest<'_>),
    ) -> RequestId {
        let uuid = uuid();
        let mut r = lock_of(&uuid, key);
        f(&mut r);
        self.request(c, &Request::Lock(r))
    }

    /// Session client `c` locks `key` with no expiry; returns the lock's id.
    pub(super) fn lock(&mut self, c: Client, key: &str) -> RequestId {
        self.lock_with(c, key, |_| {})
    }

    /// Session client `c` unlocks lock `lock` (a lock id of any form) of `key` and waits for
    /// the answer.
    pub(super) fn unlock(&mut self, c: Client, key: &str, lock: impl ToString) -> Answer {
        let (uuid, lock) = (uuid(), lock.to_string());
        let req = Request::Unlock {
            uuid: &uuid,
            key,
            lock_id: Some(&lock),
            force: false,
        };
        let id = self.request(c, &req);
        self.answer(c, id)
    }

    /// `lock-info` of `key`, asked by session client `c`.
    pub(super) fn info(&mut self, c: Client, key: &str) -> LockInfo {
        let uuid = uuid();
        let id = self.request(c, &Request::LockInfo { uuid: &uuid, key });
        match self.answer(c, id) {
            Answer::Info(i) => i,
            a => panic!("lock-info answered {a:?}"),
        }
    }

    /// The ids holding `key`, asked by session client `c`.
    pub(super) fn holders(&mut self, c: Client, key: &str) -> Vec<String> {
        let info = self.info(c, key);
        info.holders
            .into_iter()
            .map(|h| h.id.into_owned())
            .collect()
    }

    /// The answer session client `c` got for request `id`; panics if it has none (yet).
    pub(super) fn answer(&mut self, c: Client, id: RequestId) -> Answer {
        self.take_events(c);
        let events = &mut self.clients[c.0].events;
        let at = events.iter().position(|e| {
            matches!(e, session::Event::Answer { id: i, .. } | session::Event::Lost { id: i } if *i == id)
        });
        match at.and_then(|i| events.remove(i)) {
            Some(session::Event::Answer { answer, .. }) => answer,
            Some(e) => panic!("request {id} ended with {e:?}"),
            None => {
                let others = format!("{events:?}");
                panic!(
                    "client {} has no answer for {id} at {:?}; it has {others}",
                    c.0,
                    self.elapsed()
                )
            }
        }
    }

    /// Whether session client `c` still waits for request `id`.
    pub(super) fn waits(&mut self, c: Client, id: RequestId) -> bool {
        self.take_events(c);
        !self.clients[c.0].events.iter().any(|e| {
            matches!(e, session::Event::Answer { id: i, .. } | session::Event::Lost { id: i } if *i == id)
        })
    }

    /// Session client `c` stops waiting for `id`, as a driver whose deadline passed does.
    pub(super) fn give_up(&mut self, c: Client, id: RequestId) {
        self.session_of(c).give_up(id);
        self.drive();
    }

    fn session_of(&mut self, c: Client) -> &mut Session {
        let cl = &mut self.clients[c.0];
        assert!(!cl.closed, "request on a closed connection");
        cl.session.as_mut().expect("a session client")
    }

    fn take_events(&mut self, c: Client) {
        let cl = &mut self.clients[c.0];
        if let Some(s) = cl.session.as_mut() {
            while let Some(e) = s.poll_event() {
                cl.events.push_back(e);
            }
        }
    }

    /// The next message the broker sent raw client `c`; panics if there is none.
    pub(super) fn recv(&mut self, c: Client) -> Value {
        match self.clients[c.0].inbox.pop_front() {
            Some(v) => v,
            None => panic!("client {} has no message at {:?}", c.0, self.elapsed()),
        }
    }

    /// Asserts that `c` has received nothing more (a session client: no answer, and no line
    /// its session took for an answer).
    pub(super) fn expect_silence(&mut self, c: Client) {
        self.take_events(c);
        let cl = &self.clients[c.0];
        assert!(cl.inbox.is_empty(), "client {} got {:?}", c.0, cl.inbox);
        assert!(cl.events.is_empty(), "client {} got {:?}", c.0, cl.events);
    }

    pub(super) fn closed(&self, c: Client) -> bool {
        self.clients[c.0].closed
    }

    /// The client goes away (its socket closed).
    pub(super) fn disconnect(&mut self, c: Client) {
        let conn = self.clients[c.0].conn;
        self.close_conn(conn);
        self.drive();
    }

    /// Moves the clock forward by `d`, running every timer that falls due on the way, at its
    /// own instant, as the reactor would wake for it.
    pub(super) fn advance(&mut self, d: Duration) {
        let until = self.time + d;
        while let Some(t) = self.core.poll_timeout()
            && t <= until
        {
            self.time = self.time.max(t);
            self.core.handle_timeout(self.time);
            self.drive();
        }
        self.time = until;
        self.core.handle_timeout(self.time);
        self.drive();
    }

    /// Delivers the core's output and the sessions' requests and carries out the core's close
    /// requests, until nothing is left: the reactor's end of turn (and the clients' drivers),
    /// with a transport that never blocks.
    pub(super) fn drive(&mut self) {
        loop {
            let mut progress = self.transmit_sessions();
            while let Some(ev) = self.core.poll_event() {
                progress = true;
                match ev {
                    Event::Close(conn) => self.close_conn(conn),
                    Event::CloseAfterFlush(conn) => {
                        if let Some(cl) = self.clients.iter_mut().find(|c| c.conn == conn) {
                            cl.close_after_flush = true;
                        }
                    }
                }
            }
            while let Some(conn) = self.core.poll_transmit() {
                progress = true;
                let out = self.core.output(conn).to_vec();
                self.core.consume(conn, out.len());
                let cl = self
                    .clients
                    .iter_mut()
                    .find(|c| c.conn == conn)
                    .expect("output for a known client");
                assert!(!cl.closed, "output for a closed connection");
                assert!(out.ends_with(b"\n"), "output is whole lines");
                for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let v = serde_json::from_slice(line).expect("every line is one JSON value");
                    match cl.session.as_mut() {
                        Some(s) => s.handle_line(&mut line.to_vec()),
                        None => cl.inbox.push_back(v),
                    }
                }
            }
            let flushed: Vec<ConnId> = self
                .clients
                .iter()
                .filter(|c| c.close_after_flush && !c.closed)
                .map(|c| c.conn)
                .collect();
            for conn in flushed {
                progress = true;
                self.close_conn(conn);
            }
            if !progress {
                return;
            }
        }
    }

    /// Hands what each session has to send to the core, one message per line; `true` if
    /// anything was sent.
    fn transmit_sessions(&mut self) -> bool {
        let mut sent = false;
        for cl in &mut self.clients {
            let Some(s) = cl.session.as_mut().filter(|s| s.wants_transmit()) else {
                continue;
            };
            let mut out = Vec::new();
            s.transmit(&mut out);
            if cl.closed {
                continue;
            }
            sent = true;
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                self.core
                    .handle_message(cl.conn, &mut line.to_vec(), self.time);
            }
        }
        sent
    }

    fn close_conn(&mut self, conn: ConnId) {
        if let Some(cl) = self.clients.iter_mut().find(|c| c.conn == conn)
            && !std::mem::replace(&mut cl.closed, true)
        {
            if let Some(s) = cl.session.as_mut() {
                s.connection_lost();
            }
            self.core.close(conn, self.time);
        }
    }
}
