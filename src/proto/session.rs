//! The client's side of one broker connection as a state machine, with no sockets and no
//! clock (quinn-proto / rustls style): requests go in ([`Session::request`]), bytes to send
//! come out ([`Session::transmit`]); lines received go in ([`Session::handle_line`]) and
//! answers come out ([`Session::poll_event`]). Whoever drives it owns the I/O and the time:
//! the blocking client today, an async one tomorrow, a test with no I/O at all.
//!
//! The session owns what is protocol rather than transport:
//! - the pending requests by id, and what kind of answer each one waits for;
//! - the multi-message lock exchange: `acquired:false` then a pushed grant, a `reelection`
//!   push (the lock is sent again), a broker-side wait time-out;
//! - the npm 0.2.x broker's quirks ([`BrokerKind::Node`]): every grant is acked with
//!   `lock-received` (else that broker re-elects after 4.5 s), a grant for a request nobody
//!   waits for any more is handed back with an `unlock`, and a try-lock, which that broker
//!   cannot do, is emulated by cancelling a lock that was not granted at once.
//!
//! ```
//! use live_mutex::proto::session::{Answer, Event, RequestId, Session};
//! use live_mutex::proto::Request;
//! let mut s = Session::new();
//! let id = RequestId::random();
//! let uuid = id.to_string();
//! s.request(&Request::Ping { uuid: &uuid });
//! let mut out = Vec::new();
//! s.transmit(&mut out);
//! assert!(out.ends_with(b"\n"));
//! let mut line = format!(r#"{{"type":"pong","uuid":"{uuid}","serverTimestamp":5}}"#).into_bytes();
//! s.handle_line(&mut line);
//! assert_eq!(s.poll_event(), Some(Event::Answer { id, answer: Answer::Pong { server_time_ms: Some(5), version: None } }));
//! ```

use std::collections::VecDeque;
use std::fmt;

use ahash::RandomState;
use hashbrown::HashMap;

use super::{
    CancelReason, HolderInfo, LockOutcome, ManyOutcome, Reply, ReplyDecoder, Request, Stats,
    WaiterInfo,
};

/// Which broker is on the other end, detected once per connection with a `ping`.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// assert_eq!(client.broker_kind()?, live_mutex::BrokerKind::Rust);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
// The brokers of this protocol; a caller names each (`lmx bench` prints which), and a third
// would be a change every caller should see.
#[allow(clippy::exhaustive_enums)]
pub enum BrokerKind {
    /// This crate's broker: broker-side try-lock and wait timeouts, `ping`, `extend`, fencing
    /// tokens.
    #[default]
    Rust,
    /// The npm live-mutex 0.2.x broker: needs `lock-received` acks, no `ping`, no `extend`.
    Node,
}

/// A request id: 128 random bits, sent as 32 lowercase hex digits (the `uuid` field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestId(u128);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        RequestId(fastrand::u128(..))
    }
    /// Reads an id back from its wire form; `None` for anything this client did not make.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(s, 16).ok().map(RequestId))
            .flatten()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The state of one key, from `lock-info-request` ([`crate::Client::info`]).
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let info = client.info("nobody-holds-this")?;
/// assert!(!info.is_locked && info.holders.is_empty() && info.waiters == 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LockInfo {
    /// The key asked about.
    pub key: String,
    /// Whether anyone holds it.
    pub is_locked: bool,
    /// Current holders.
    pub holders: Vec<HolderInfo<'static>>,
    /// Requests waiting in the queue.
    pub waiters: u64,
    /// Read holders.
    pub readers: u64,
    /// Semaphore size, if the broker reports it.
    pub max: Option<u64>,
    /// The queue in order, with who waits and since when (empty from the npm broker).
    pub queue: Vec<WaiterInfo<'static>>,
    /// `holders` or `queue` lists only the first of them (the broker keeps every reply within
    /// its output cap); `waiters` and `readers` are still exact.
    pub truncated: bool,
}

/// What an `unlock` found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unlocked {
    /// Released.
    Yes,
    /// The lock had already gone (expired or forced): the npm broker says `unlocked:true` with
    /// a warning, this broker `lost:true`.
    Lost,
    /// This id held nothing; the broker's `error` text, if any.
    NotHeld(Option<String>),
}

/// The final answer to one request, owned so a driver can hand it to another thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// `lock` granted.
    Locked {
        /// The grant's fencing token; `None` from the npm broker, which has none.
        fencing_token: Option<u64>,
    },
    /// `lock` or `acquire-many` not granted: a try-lock found the key busy, or the broker's
    /// wait time-out passed.
    NotGranted,
    /// `acquire-many` granted: each key with its fencing token.
    ManyLocked(Vec<(String, u64)>),
    /// `unlock`: what it found.
    Unlocked(Unlocked),
    /// `extend`: `false` once the lock is lost.
    Extended(bool),
    /// `release-many`: `false` once the locks are gone.
    Released(bool),
    /// `ls`: one page of the keys that have holders or waiters, and the cursor of the next
    /// page (`None`: this was the last).
    Keys(Vec<String>, Option<String>),
    /// `lock-info-request`: who holds and waits on the key.
    Info(LockInfo),
    /// `system-stats-request`: the broker's counters.
    Stats(Stats),
    /// `ping`: the broker's clock (Unix ms) and version (`None` from a broker that does not
    /// say: the npm one, or ours before 0.1.1).
    Pong {
        /// `serverTimestamp`.
        server_time_ms: Option<u64>,
        /// `version`.
        version: Option<String>,
    },
    /// `auth` accepted.
    Authenticated,
    /// The broker refused the request; its `error` text.
    Rejected(String),
    /// The broker does not know this request type (the npm broker's type-less error).
    Unknown(String),
    /// A reply that does not fit the request.
    Unexpected(String),
}

/// What happened, for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Request `id` is finished.
    Answer {
        /// The request's id.
        id: RequestId,
        /// Its answer.
        answer: Answer,
    },
    /// The connection ended with request `id` unanswered.
    Lost {
        /// The request's id.
        id: RequestId,
    },
}

/// What a pending request waits for.
#[derive(Debug)]
enum Wants {
    /// `resend` is the request itself, sent again on a `reelection` push.
    Lock {
        key: String,
        try_only: bool,
        resend: Vec<u8>,
    },
    Many {
        first_key: String,
        try_only: bool,
    },
    Unlock,
    /// A pipelined release (`unlock` or `release-many` that nobody waits for): its answer is
    /// consumed here and only counted if it says the lock had already gone.
    Release,
    Extend,
    ReleaseMany,
    Ls,
    Info,
    Stats,
    Ping,
    Auth,
    /// Anything else: the first reply, unread.
    Other,
}

/// See the module docs.
#[derive(Default)]
pub struct Session {
    broker: BrokerKind,
    pending: HashMap<RequestId, Wants, RandomState>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    decoder: ReplyDecoder,
    lost_releases: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("broker", &self.broker)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Session {
    /// A session with nothing pending, assuming a [`BrokerKind::Rust`] broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The broker on the other end (as the driver detected it; [`BrokerKind::Rust`] until told).
    pub fn broker(&self) -> BrokerKind {
        self.broker
    }

    /// Tells the session which broker it talks to (the npm broker's replies differ).
    pub fn set_broker(&mut self, kind: BrokerKind) {
        self.broker = kind;
    }

    /// Queues `req` to be sent and waits for its answer. Returns `None` (and sends nothing)
    /// for a request without a `uuid` of this client's form, which no reply could match.
    pub fn request(&mut self, req: &Request<'_>) -> Option<RequestId> {
        let id = RequestId::parse(req.uuid()?)?;
        let start = self.out.len();
        self.push(req);
        let wants = match req {
            Request::Lock(r) => Wants::Lock {
                key: r.key.to_string(),
                try_only: r.try_lock,
                resend: self.out[start..].to_vec(),
            },
            Request::AcquireMany(r) => Wants::Many {
                first_key: r.keys.first().map_or_else(String::new, |k| k.to_string()),
                try_only: r.try_lock,
            },
            Request::Unlock { .. } => Wants::Unlock,
            Request::Extend { .. } => Wants::Extend,
            Request::ReleaseMany { .. } => Wants::ReleaseMany,
            Request::Ls { .. } => Wants::Ls,
            Request::LockInfo { .. } => Wants::Info,
            Request::SystemStats { .. } => Wants::Stats,
            Request::Ping { .. } => Wants::Ping,
            Request::Auth { .. } => Wants::Auth,
            _ => Wants::Other,
        };
        self.pending.insert(id, wants);
        Some(id)
    }

    /// Queues `req` to be sent; nobody waits for its reply (acks, hand-backs, cancels).
    pub fn notify(&mut self, req: &Request<'_>) {
        self.push(req);
    }

    /// Queues a pipelined release (a guard's `unlock` or `release-many` on drop): nobody waits
    /// for its reply, which this session still consumes by id, so it can never be taken for
    /// another request's, and counts in [`lost_releases`](Self::lost_releases) if it says the
    /// lock had already gone. Other requests are sent as [`notify`](Self::notify) does.
    pub fn release(&mut self, req: &Request<'_>) {
        match (req, req.uuid().and_then(RequestId::parse)) {
            (Request::Unlock { .. } | Request::ReleaseMany { .. }, Some(id)) => {
                self.push(req);
                self.pending.insert(id, Wants::Release);
            }
            _ => self.push(req),
        }
    }

    /// Pipelined releases whose answer said the lock had already gone (expired, forced, or
    /// never held): the critical section that ended with it may have overlapped another.
    pub fn lost_releases(&self) -> u64 {
        self.lost_releases
    }

    fn push(&mut self, req: &Request<'_>) {
        req.encode(&mut self.out);
        self.out.push(b'\n');
    }

    /// The caller stopped waiting for `id` (its own deadline passed). A lock or acquire-many
    /// is cancelled at the broker; a grant that still arrives for it is handed back.
    pub fn give_up(&mut self, id: RequestId) {
        let uuid = id.to_string();
        match self.pending.remove(&id) {
            Some(Wants::Lock { key, .. }) => self.cancel(&uuid, &key),
            Some(Wants::Many { first_key, .. }) => self.cancel(&uuid, &first_key),
            _ => {}
        }
    }

    /// Requests still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The connection is gone: every pending request ends with [`Event::Lost`].
    pub fn connection_lost(&mut self) {
        for (id, wants) in self.pending.drain() {
            if !matches!(wants, Wants::Release) {
                self.events.push_back(Event::Lost { id });
            }
        }
    }

    /// Moves the bytes to send (NDJSON: one request per line, each ending in `\n`) to the end
    /// of `into`. Over WebSocket, send each line as one text frame.
    pub fn transmit(&mut self, into: &mut Vec<u8>) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.out);
        } else {
            into.append(&mut self.out);
        }
    }

    /// True when [`transmit`](Self::transmit) has bytes to hand out.
    pub fn wants_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next answer, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// One message received (a line without its `\n`, or a WebSocket text frame); `line` is
    /// clobbered. A message that does not parse is skipped, as the npm client does, unless it
    /// names a pending request, which then ends with [`Answer::Unexpected`].
    pub fn handle_line(&mut self, line: &mut [u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let mut decoder = std::mem::take(&mut self.decoder);
        match decoder.decode(line) {
            Ok(reply) => self.handle_reply(reply),
            Err(e) => {
                if let Some(id) = e.uuid.as_deref().and_then(RequestId::parse)
                    && self.pending.remove(&id).is_some()
                {
                    let answer = Answer::Unexpected(format!("bad reply: {e}"));
                    self.events.push_back(Event::Answer { id, answer });
                }
            }
        }
        self.decoder = decoder;
    }

    fn handle_reply(&mut self, reply: Reply<'_>) {
        let Some(uuid) = reply.uuid() else { return };
        let Some(id) = RequestId::parse(uuid) else {
            return;
        };
        let node = self.broker == BrokerKind::Node;
        if let Reply::Lock {
            key,
            outcome: LockOutcome::Granted { .. },
            ..
        } = reply
            && node
        {
            self.notify(&Request::LockReceived { uuid, key });
            if !self.pending.contains_key(&id) {
                // The waiter gave up and the npm broker granted anyway: hand the lock back.
                let unlock_id = RequestId::random().to_string();
                self.notify(&Request::Unlock {
                    uuid: &unlock_id,
                    key,
                    lock_id: Some(uuid),
                    force: false,
                });
                return;
            }
        }
        let Some(wants) = self.pending.get(&id) else {
            return;
        };
        let answer = match wants {
            Wants::Lock {
                try_only, resend, ..
            } => match lock_answer(&reply, *try_only) {
                Step::Done(a) => a,
                Step::Wait => return,
                Step::Resend => {
                    self.out.extend_from_slice(resend);
                    return;
                }
            },
            Wants::Many { try_only, .. } => match many_answer(&reply, *try_only) {
                Some(a) => a,
                None => return,
            },
            Wants::Release => {
                self.pending.remove(&id);
                if !matches!(
                    other_answer(&reply, &Wants::Unlock),
                    Answer::Unlocked(Unlocked::Yes)
                ) && !matches!(
                    other_answer(&reply, &Wants::ReleaseMany),
                    Answer::Released(true)
                ) {
                    self.lost_releases += 1;
                }
                return;
            }
            other => other_answer(&reply, other),
        };
        if let Some(Wants::Lock {
            key,
            try_only: true,
            ..
        }) = self.pending.remove(&id)
            && answer == Answer::NotGranted
            && node
        {
            // The npm broker queued the try-lock anyway: withdraw it.
            self.cancel(uuid, &key);
        }
        self.events.push_back(Event::Answer { id, answer });
    }

    fn cancel(&mut self, uuid: &str, key: &str) {
        self.notify(&Request::Cancel {
            uuid,
            key,
            reason: CancelReason::ClientTimeout,
        });
    }
}

enum Step {
    Done(Answer),
    Wait,
    Resend,
}

fn unexpected(what: &str, reply: &Reply<'_>) -> Answer {
    let mut bytes = Vec::new();
    reply.encode(&mut bytes);
    Answer::Unexpected(format!(
        "bad {what} reply: {}",
        String::from_utf8_lossy(&bytes)
    ))
}

/// A failure any request can get: the broker's error text.
fn failure(reply: &Reply<'_>) -> Option<Answer> {
    match reply {
        Reply::Error {
            ty: None, error, ..
        } => Some(Answer::Unknown(error.to_string())),
        Reply::Error { error, .. } => Some(Answer::Rejected(error.to_string())),
        _ => None,
    }
}

fn lock_answer(reply: &Reply<'_>, try_only: bool) -> Step {
    Step::Done(match reply {
        Reply::LockTimedOut { .. } => Answer::NotGranted,
        Reply::Lock {
            outcome: LockOutcome::Granted { fencing_token },
            ..
        } => Answer::Locked {
            fencing_token: *fencing_token,
        },
        Reply::Lock {
            outcome: LockOutcome::Queued,
            ..
        } => return Step::Wait,
        Reply::Lock { .. } if try_only => Answer::NotGranted,
        Reply::Lock { .. } => return Step::Wait,
        Reply::Reelection { .. } => return Step::Resend,
        Reply::Error { error, .. } => Answer::Rejected(error.to_string()),
        other => unexpected("lock", other),
    })
}

fn many_answer(reply: &Reply<'_>, try_only: bool) -> Option<Answer> {
    Some(match reply {
        Reply::AcquireMany { outcome, .. } => match outcome {
            ManyOutcome::TimedOut { .. } => Answer::NotGranted,
            ManyOutcome::Granted { fencing_tokens } => Answer::ManyLocked(
                fencing_tokens
                    .iter()
                    .map(|&(k, t)| (k.to_string(), t))
                    .collect(),
            ),
            ManyOutcome::Queued => return None,
            ManyOutcome::Refused { .. } if try_only => Answer::NotGranted,
            ManyOutcome::Refused { .. } => return None,
        },
        Reply::Error { error, .. } => Answer::Rejected(error.to_string()),
        other => unexpected("acquire-many", other),
    })
}

fn other_answer(reply: &Reply<'_>, wants: &Wants) -> Answer {
    match (wants, reply) {
        (
            Wants::Unlock,
            Reply::Unlock {
                unlocked,
                lost,
                error,
                warning,
                ..
            },
        ) => Answer::Unlocked(match (unlocked, lost, warning) {
            (true, _, Some(_)) | (false, true, _) => Unlocked::Lost,
            (true, _, None) => Unlocked::Yes,
            (false, false, _) => Unlocked::NotHeld(error.map(str::to_string)),
        }),
        (Wants::Extend, Reply::Extend { extended, .. }) => Answer::Extended(*extended),
        (Wants::ReleaseMany, Reply::ReleaseMany { released, .. }) => Answer::Released(*released),
        (Wants::Ls, Reply::Ls { keys, next, .. }) => Answer::Keys(
            keys.iter().map(|k| k.to_string()).collect(),
            next.map(str::to_string),
        ),
        (
            Wants::Info,
            Reply::LockInfo {
                key,
                is_locked,
                lock_request_count,
                readers_count,
                max,
                holders,
                waiters,
                truncated,
                ..
            },
        ) => Answer::Info(LockInfo {
            truncated: *truncated,
            key: key.to_string(),
            is_locked: *is_locked,
            holders: holders
                .iter()
                .cloned()
                .map(HolderInfo::into_owned)
                .collect(),
            waiters: *lock_request_count,
            readers: *readers_count,
            max: max.map(u64::from),
            queue: waiters
                .iter()
                .cloned()
                .map(WaiterInfo::into_owned)
                .collect(),
        }),
        (Wants::Stats, Reply::SystemStats { stats, .. }) => Answer::Stats(*stats),
        (
            Wants::Ping,
            Reply::Pong {
                server_timestamp_ms,
                version,
                ..
            },
        ) => Answer::Pong {
            server_time_ms: Some(*server_timestamp_ms),
            version: version.map(str::to_string),
        },
        (Wants::Auth, Reply::Auth { error: Some(e), .. }) => Answer::Rejected(e.to_string()),
        (
            Wants::Auth,
            Reply::Auth {
                authenticated: true,
                ..
            },
        ) => Answer::Authenticated,
        (_, r) => failure(r).unwrap_or_else(|| unexpected(wants.name(), r)),
    }
}

impl Wants {
    fn name(&self) -> &'static str {
        match self {
            Wants::Lock { .. } => "lock",
            Wants::Many { .. } => "acquire-many",
            Wants::Unlock | Wants::Release => "unlock",
            Wants::Extend => "extend",
            Wants::ReleaseMany => "release-many",
            Wants::Ls => "ls",
            Wants::Info => "lock-info",
            Wants::Stats => "stats",
            Wants::Ping => "ping",
            Wants::Auth => "auth",
            Wants::Other => "reply",
        }
    }
}

#[cfg(test)]
mod tests;
