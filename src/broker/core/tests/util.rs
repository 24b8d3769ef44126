//! An in-memory pair of client(s) and broker core with simulated time, after quinn-proto's
//! `tests/util.rs`: no sockets, no threads, no sleeping. The clients speak raw JSON lines for
//! now; a sans-IO client session can take their place later.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::super::{Config, ConnKind, Core, Event};
use crate::proto::Limits;
use crate::table::{self, ConnId};

/// One client: what the broker sent it, one JSON value per line, in order.
pub(super) struct TestClient {
    pub conn: ConnId,
    pub inbox: VecDeque<Value>,
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

impl Pair {
    pub fn new(cfg: Config) -> Self {
        let epoch = Instant::now();
        Pair {
            core: Core::new(cfg),
            clients: Vec::new(),
            epoch,
            time: epoch,
        }
    }

    /// Opens a TCP connection.
    pub fn connect(&mut self) -> Client {
        self.connect_kind(ConnKind::Tcp)
    }

    pub fn connect_kind(&mut self, kind: ConnKind) -> Client {
        let idx = self.clients.len();
        // A generation above the index, as the reactor makes them.
        let conn = ConnId(((idx as u64 + 1) << 32) | idx as u64);
        self.core.open(conn, kind, self.time);
        self.clients.push(TestClient {
            conn,
            inbox: VecDeque::new(),
            closed: false,
            close_after_flush: false,
        });
        Client(idx)
    }

    /// How long since the pair was made.
    pub fn elapsed(&self) -> Duration {
        self.time - self.epoch
    }

    /// Sends one message (serialized as one line) and delivers everything that results.
    pub fn send(&mut self, c: Client, msg: Value) {
        let conn = self.clients[c.0].conn;
        assert!(!self.clients[c.0].closed, "send on a closed connection");
        let mut bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
        self.core.handle_message(conn, &mut bytes, self.time);
        self.drive();
    }

    /// Sends raw bytes as one message.
    pub fn send_raw(&mut self, c: Client, raw: &str) {
        let conn = self.clients[c.0].conn;
        let mut bytes = raw.as_bytes().to_vec();
        self.core.handle_message(conn, &mut bytes, self.time);
        self.drive();
    }

    /// The next message the broker sent `c`; panics if there is none.
    pub fn recv(&mut self, c: Client) -> Value {
        match self.clients[c.0].inbox.pop_front() {
            Some(v) => v,
            None => panic!("client {} has no message at {:?}", c.0, self.elapsed()),
        }
    }

    /// Asserts that `c` has received nothing more.
    pub fn expect_silence(&mut self, c: Client) {
        let inbox = &self.clients[c.0].inbox;
        assert!(inbox.is_empty(), "client {} got {inbox:?}", c.0);
    }

    pub fn closed(&self, c: Client) -> bool {
        self.clients[c.0].closed
    }

    /// The client goes away (its socket closed).
    pub fn disconnect(&mut self, c: Client) {
        let cl = &mut self.clients[c.0];
        if !std::mem::replace(&mut cl.closed, true) {
            self.core.close(cl.conn, self.time);
        }
        self.drive();
    }

    /// Moves the clock forward by `d`, running every timer that falls due on the way, at its
    /// own instant, as the reactor would wake for it.
    pub fn advance(&mut self, d: Duration) {
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

    /// Delivers the core's output and carries out its close requests, until nothing is left:
    /// the reactor's end of turn, with a transport that never blocks.
    pub fn drive(&mut self) {
        loop {
            let mut progress = false;
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
                    cl.inbox.push_back(v);
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

    fn close_conn(&mut self, conn: ConnId) {
        if let Some(cl) = self.clients.iter_mut().find(|c| c.conn == conn)
            && !std::mem::replace(&mut cl.closed, true)
        {
            self.core.close(conn, self.time);
        }
    }
}
