//! A blocking client for live-mutex brokers (this crate's, or the npm live-mutex 0.2.x one).
//!
//! One [`Client`] holds one connection that any number of threads share: requests are
//! pipelined and matched to replies by id, so a thread waiting for a contended key never holds
//! up another thread's unlock. When the connection drops, every waiting call fails with
//! [`Error::ConnectionLost`], every guard reports [`LockGuard::is_lost`], and the next call
//! reconnects; nothing is ever re-acquired behind your back.
//!
//! ```
//! # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
//! # let url = format!("tcp://{}", broker.local_addr().unwrap());
//! let client = live_mutex::Client::connect(&url)?;
//! {
//!     let _guard = client.lock("deploy")?;
//!     // ... only one process anywhere runs this at a time ...
//! } // released here
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod error;
mod guard;
mod url;

pub use conn::BrokerKind;
pub use error::{Error, Result};
pub use guard::{LockGuard, ManyGuard};

use crate::broker::BrokerHandle;
use conn::{Conn, err_text, new_id};
use guard::{Unlocked, call, ttl_json, unlocked};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Endpoint;

/// How long the client waits beyond a broker-side wait time-out before it gives up on its own:
/// the broker decides, this only guards against a broker that never answers.
const SLACK: Duration = Duration::from_secs(1);

/// How long a lock may be held, and how it shares its key: the protocol's own types.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// use live_mutex::{LockOptions, Mode};
/// let r1 = client.lock_with("cfg", &LockOptions::new().mode(Mode::Read))?;
/// let r2 = client.lock_with("cfg", &LockOptions::new().mode(Mode::Read))?; // shared
/// # drop((r1, r2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use crate::proto::{Mode, Ttl};

/// Options for [`Client::lock_with`]. Build with the methods, or with struct syntax and
/// `..Default::default()`.
///
/// ```
/// use live_mutex::{LockOptions, Mode};
/// use std::time::Duration;
/// let o = LockOptions::new().ttl(Duration::from_secs(30)).timeout(Duration::from_secs(5)).mode(Mode::Read);
/// assert_eq!(o.wait_timeout, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    /// Lifetime of the lock once granted.
    pub ttl: Ttl,
    /// Longest wait in the queue (`None`: wait until granted). Decided by the broker.
    pub wait_timeout: Option<Duration>,
    /// Do not queue: fail at once if the key is busy.
    pub try_only: bool,
    /// Semaphore size: up to this many holders of the key at once.
    pub max: Option<u32>,
    /// Exclusive, read or write.
    pub mode: Mode,
    /// Keep the lock when this connection closes (until its TTL or an explicit release).
    pub keep_after_disconnect: bool,
}

impl LockOptions {
    /// Defaults: broker TTL, wait forever, exclusive, released when the connection drops.
    ///
    /// ```
    /// assert!(!live_mutex::LockOptions::new().try_only);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`ttl`](Self::ttl).
    ///
    /// ```
    /// use live_mutex::{LockOptions, Ttl};
    /// assert_eq!(LockOptions::new().ttl(Ttl::Never).ttl, Ttl::Never);
    /// ```
    pub fn ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.ttl = ttl.into();
        self
    }
    /// Sets [`wait_timeout`](Self::wait_timeout).
    ///
    /// ```
    /// let o = live_mutex::LockOptions::new().timeout(std::time::Duration::from_millis(10));
    /// assert!(o.wait_timeout.is_some());
    /// ```
    pub fn timeout(mut self, t: Duration) -> Self {
        self.wait_timeout = Some(t);
        self
    }
    /// Sets [`try_only`](Self::try_only).
    ///
    /// ```
    /// assert!(live_mutex::LockOptions::new().try_only().try_only);
    /// ```
    pub fn try_only(mut self) -> Self {
        self.try_only = true;
        self
    }
    /// Sets [`max`](Self::max).
    ///
    /// ```
    /// assert_eq!(live_mutex::LockOptions::new().max(3).max, Some(3));
    /// ```
    pub fn max(mut self, n: u32) -> Self {
        self.max = Some(n);
        self
    }
    /// Sets [`mode`](Self::mode).
    ///
    /// ```
    /// use live_mutex::{LockOptions, Mode};
    /// assert_eq!(LockOptions::new().mode(Mode::Read).mode, Mode::Read);
    /// ```
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
    /// Sets [`keep_after_disconnect`](Self::keep_after_disconnect).
    ///
    /// ```
    /// assert!(live_mutex::LockOptions::new().keep_after_disconnect().keep_after_disconnect);
    /// ```
    pub fn keep_after_disconnect(mut self) -> Self {
        self.keep_after_disconnect = true;
        self
    }
}

/// A lock holder as reported by [`Client::info`].
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let g = client.lock_with("k", &live_mutex::LockOptions::new().ttl(std::time::Duration::from_secs(9)))?;
/// let h = &client.info("k")?.holders[0];
/// assert_eq!((h.id.as_str(), h.fencing_token, h.mode.as_str()), (g.id(), g.fencing_token(), "exclusive"));
/// assert!(h.ttl_remaining.unwrap() <= std::time::Duration::from_secs(9));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Lock id.
    pub id: String,
    /// Fencing token of the grant.
    pub fencing_token: Option<u64>,
    /// `exclusive`, `read` or `write`.
    pub mode: String,
    /// Time left before expiry; `None` if it never expires.
    pub ttl_remaining: Option<Duration>,
}

/// The state of one key, from [`Client::info`].
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let info = client.info("nobody-holds-this")?;
/// assert!(!info.is_locked && info.holders.is_empty() && info.waiters == 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockInfo {
    /// The key asked about.
    pub key: String,
    /// Whether anyone holds it.
    pub is_locked: bool,
    /// Current holders.
    pub holders: Vec<Holder>,
    /// Requests waiting in the queue.
    pub waiters: u64,
    /// Read holders.
    pub readers: u64,
    /// Semaphore size, if the broker reports it.
    pub max: Option<u64>,
}

/// Broker-wide counters, from [`Client::stats`].
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let s = client.stats()?;
/// assert!(s.connections >= 1);
/// assert!(s.raw.is_object());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Keys with holders or waiters.
    pub keys: u64,
    /// Held locks.
    pub holders: u64,
    /// Queued requests.
    pub waiters: u64,
    /// Open connections.
    pub connections: u64,
    /// Grants since start.
    pub grants: u64,
    /// The broker's whole `stats` object, including fields this version does not know.
    pub raw: Value,
}

/// Answer to [`Client::ping`].
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let p = client.ping()?;
/// assert_eq!(p.broker, live_mutex::BrokerKind::Rust);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// Round-trip time.
    pub rtt: Duration,
    /// Which broker answered.
    pub broker: BrokerKind,
    /// The broker's wall clock (Unix ms), if it says.
    pub server_time_ms: Option<u64>,
}

/// Builds a [`Client`] with non-default time-outs or token.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// use std::time::Duration;
/// let client = live_mutex::Client::builder(&url).connect_timeout(Duration::from_millis(500)).connect()?;
/// client.ping()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl ClientBuilder {
    /// Sets the auth token (wins over the URL's and `LMX_AUTH_TOKEN`).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").token("s3cret");
    /// # drop(b);
    /// ```
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = Some(t.into());
        self
    }
    /// Longest time to establish a connection, including the broker handshake (default 3 s).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").connect_timeout(std::time::Duration::from_secs(1));
    /// assert!(b.connect().is_err());
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Longest wait for the reply to a request other than a lock wait (default 10 s).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").request_timeout(std::time::Duration::from_secs(2));
    /// # drop(b);
    /// ```
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
    /// Connects now, so a wrong address fails here rather than at the first lock.
    ///
    /// ```
    /// assert!(live_mutex::Client::builder("bogus").connect().is_err());
    /// ```
    pub fn connect(self) -> Result<Client> {
        let (endpoint, url_token) = url::parse(&self.url)?;
        let token = self.token.or(url_token).or_else(|| {
            std::env::var("LMX_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        let inner = Inner {
            endpoint,
            token,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            slot: Mutex::new(Slot {
                conn: None,
                failures: 0,
                last_fail: None,
            }),
        };
        let client = Client {
            inner: Arc::new(inner),
        };
        client.conn()?;
        Ok(client)
    }
}

struct Slot {
    conn: Option<Arc<Conn>>,
    failures: u32,
    last_fail: Option<Instant>,
}

struct Inner {
    endpoint: Endpoint,
    token: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    slot: Mutex<Slot>,
}

/// A handle on a broker connection; clone it freely (clones share the connection).
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// let client = live_mutex::Client::connect(&url)?;
/// let c2 = client.clone();
/// let t = std::thread::spawn(move || c2.lock("shared").map(|g| g.fencing_token()));
/// let mine = client.lock("shared")?;
/// drop(mine);
/// t.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

impl Client {
    /// Connects to `tcp://host:port`, `ws://host:port[/path]` or `unix:///path`. A token may
    /// ride in the URL (`?token=T`, `T@host` or `user:T@host`) or in `LMX_AUTH_TOKEN`.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// let addr = broker.local_addr().unwrap();
    /// let tcp = live_mutex::Client::connect(&format!("tcp://{addr}"))?;
    /// let ws = live_mutex::Client::connect(&format!("ws://{addr}"))?;
    /// let g = tcp.lock("k")?;
    /// assert!(ws.try_lock("k")?.is_none());
    /// # drop(g);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(url: &str) -> Result<Client> {
        Self::builder(url).connect()
    }

    /// Starts a [`ClientBuilder`] for `url`.
    ///
    /// ```
    /// let b = live_mutex::Client::builder("unix:///run/lmx.sock");
    /// # drop(b);
    /// ```
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_string(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Connects to [`url_from_env`].
    ///
    /// ```no_run
    /// // LMX_URL=unix:///run/lmx.sock, or live_mutex_host / live_mutex_port as with npm
    /// let client = live_mutex::Client::from_env()?;
    /// # Ok::<(), live_mutex::Error>(())
    /// ```
    pub fn from_env() -> Result<Client> {
        Self::connect(&url_from_env())
    }

    /// Which broker this client is talking to (detected at connect).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// assert_eq!(client.broker_kind()?, live_mutex::BrokerKind::Rust);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broker_kind(&self) -> Result<BrokerKind> {
        Ok(self.conn()?.kind())
    }

    /// The live connection, reconnecting if the last one died. Reconnects after a failed
    /// attempt are spaced out (50 ms doubling to 2 s, jittered) so a down broker is not
    /// hammered by every caller.
    fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.conn.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        slot.conn = None;
        if let Some(t) = slot.last_fail {
            let backoff =
                Duration::from_millis(50 << slot.failures.min(6)).min(Duration::from_secs(2));
            let jittered = backoff.mul_f64(0.75 + fastrand::f64() / 2.0);
            std::thread::sleep((t + jittered).saturating_duration_since(Instant::now()));
        }
        let i = &self.inner;
        match Conn::open(&i.endpoint, i.token.as_deref(), i.connect_timeout) {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = Slot {
                    conn: Some(c.clone()),
                    failures: 0,
                    last_fail: None,
                };
                Ok(c)
            }
            Err(e) => {
                slot.failures += 1;
                slot.last_fail = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn call(&self, msg: impl FnOnce(&str) -> Value) -> Result<Value> {
        call(&*self.conn()?, self.inner.request_timeout, msg)
    }

    /// Blocks until `key` is granted, with the broker's default TTL.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// # drop(g);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock(&self, key: &str) -> Result<LockGuard> {
        self.lock_with(key, &LockOptions::default())
    }

    /// Takes `key` without waiting: `None` if it is busy.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.try_lock("k")?.expect("free");
    /// assert!(client.try_lock("k")?.is_none());
    /// # drop(g);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_lock(&self, key: &str) -> Result<Option<LockGuard>> {
        self.acquire(
            key,
            &LockOptions {
                try_only: true,
                ..Default::default()
            },
        )
    }

    /// Takes `key` with options; [`Error::TimedOut`] if it was not granted within
    /// `wait_timeout` (or at once, with `try_only`).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// use live_mutex::{Error, LockOptions};
    /// use std::time::Duration;
    /// let _held = client.lock("k")?;
    /// let r = client.lock_with("k", &LockOptions::new().timeout(Duration::from_millis(50)));
    /// assert!(matches!(r, Err(Error::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_with(&self, key: &str, opts: &LockOptions) -> Result<LockGuard> {
        self.acquire(key, opts)?.ok_or(Error::TimedOut)
    }

    fn acquire(&self, key: &str, o: &LockOptions) -> Result<Option<LockGuard>> {
        let conn = self.conn()?;
        let node = conn.kind() == BrokerKind::Node;
        let (id, uuid) = new_id();
        let mut m = Map::new();
        m.insert("type".into(), "lock".into());
        m.insert("uuid".into(), uuid.clone().into());
        m.insert("key".into(), key.into());
        match o.ttl {
            Ttl::BrokerDefault => {}
            Ttl::Never => _ = m.insert("ttl".into(), Value::Null),
            Ttl::After(d) => _ = m.insert("ttl".into(), ttl_json(Some(d))),
        }
        m.insert("max".into(), o.max.map_or(Value::Null, Value::from));
        m.insert("keepLocksAfterDeath".into(), o.keep_after_disconnect.into());
        m.insert("retryCount".into(), 0.into());
        if o.try_only {
            m.insert("wait".into(), false.into());
        }
        if let Some(t) = o.wait_timeout {
            m.insert("waitTimeout".into(), (t.as_millis() as u64).into());
        }
        if o.mode != Mode::Exclusive {
            let mode = if o.mode == Mode::Read {
                "read"
            } else {
                "write"
            };
            m.insert("mode".into(), mode.into());
        }
        let msg = Value::Object(m);
        let p = conn.request(id, &msg)?;
        // The npm broker knows no wait time-out: there the client's own timer is the deadline.
        let limit = o.wait_timeout.map(|t| if node { t } else { t + SLACK });
        let deadline = limit.map(|l| Instant::now() + l);
        let cancel = || conn.send(&json!({"type":"lock-client-timeout","uuid":uuid,"key":key}));
        loop {
            let v = match p.recv(deadline) {
                Err(Error::TimedOut) => {
                    cancel()?;
                    return Ok(None);
                }
                r => r?,
            };
            if v.get("timedOut").and_then(Value::as_bool) == Some(true) {
                return Ok(None);
            }
            match v.get("acquired").and_then(Value::as_bool) {
                Some(true) => {
                    let expires = match o.ttl {
                        Ttl::After(d) => Some(Instant::now() + d),
                        _ => None,
                    };
                    return Ok(Some(LockGuard {
                        conn: conn.clone(),
                        key: key.to_string(),
                        id: uuid,
                        token: v.get("fencingToken").and_then(Value::as_u64),
                        expires,
                        lost: false,
                        done: false,
                        timeout: self.inner.request_timeout,
                        hooks: Mutex::new(Vec::new()),
                    }));
                }
                _ if v.get("error").is_some() => {
                    return Err(Error::Rejected(err_text(&v).unwrap_or_default()));
                }
                Some(false)
                    if o.try_only && v.get("queued").and_then(Value::as_bool) != Some(true) =>
                {
                    if node {
                        cancel()?;
                    }
                    return Ok(None);
                }
                Some(false) => {}
                None if v.get("reelection").and_then(Value::as_bool) == Some(true) => {
                    conn.send(&msg)?
                }
                None => return Err(Error::Protocol(format!("bad lock reply: {v}"))),
            }
        }
    }

    /// Takes all of `keys` at once (all-or-nothing, no deadlock between overlapping sets).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock_many(&["src", "dst"])?;
    /// assert!(client.try_lock("dst")?.is_none());
    /// # drop(g);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_many<S: AsRef<str>>(&self, keys: &[S]) -> Result<ManyGuard> {
        self.lock_many_with(keys, &LockOptions::default())
    }

    /// [`lock_many`](Self::lock_many) with options (`ttl`, `wait_timeout`, `try_only`,
    /// `keep_after_disconnect`; `max` and `mode` do not apply).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let _a = client.lock("a")?;
    /// let r = client.lock_many_with(&["a", "b"], &live_mutex::LockOptions::new().try_only());
    /// assert!(matches!(r, Err(live_mutex::Error::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_many_with<S: AsRef<str>>(&self, keys: &[S], o: &LockOptions) -> Result<ManyGuard> {
        let conn = self.conn()?;
        let (id, uuid) = new_id();
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let mut msg = json!({"type":"acquire-many","uuid":uuid,"keys":keys,"keepLocksAfterDeath":o.keep_after_disconnect});
        match o.ttl {
            Ttl::BrokerDefault => {}
            Ttl::Never => msg["ttl"] = Value::Null,
            Ttl::After(d) => msg["ttl"] = ttl_json(Some(d)),
        }
        if o.try_only {
            msg["wait"] = false.into();
        }
        if let Some(t) = o.wait_timeout {
            msg["waitTimeout"] = (t.as_millis() as u64).into();
        }
        let p = conn.request(id, &msg)?;
        let deadline = o.wait_timeout.map(|t| Instant::now() + t + SLACK);
        loop {
            let v = match p.recv(deadline) {
                Err(Error::TimedOut) => {
                    // The broker cancels a group by its id; `key` only satisfies the decoder.
                    conn.send(
                        &json!({"type":"lock-client-timeout","uuid":uuid,"key":keys.first()}),
                    )?;
                    return Err(Error::TimedOut);
                }
                r => r?,
            };
            if v.get("timedOut").and_then(Value::as_bool) == Some(true) {
                return Err(Error::TimedOut);
            }
            match v.get("acquired").and_then(Value::as_bool) {
                Some(true) => {
                    let tokens = v.get("fencingTokens").and_then(Value::as_object).map(|m| {
                        m.iter()
                            .filter_map(|(k, t)| Some((k.clone(), t.as_u64()?)))
                            .collect()
                    });
                    return Ok(ManyGuard {
                        conn: conn.clone(),
                        id: uuid,
                        tokens: tokens.unwrap_or_default(),
                        done: false,
                        timeout: self.inner.request_timeout,
                    });
                }
                _ if v.get("error").is_some() => {
                    return Err(Error::Rejected(err_text(&v).unwrap_or_default()));
                }
                Some(false)
                    if o.try_only && v.get("queued").and_then(Value::as_bool) != Some(true) =>
                {
                    return Err(Error::TimedOut);
                }
                Some(false) => {}
                None => return Err(Error::Protocol(format!("bad acquire-many reply: {v}"))),
            }
        }
    }

    /// Releases the lock `id` on `key`, e.g. one taken by `lmx acquire`. [`Error::NotHeld`] if
    /// `id` does not hold it (never did, or the lock expired, was forced or released: the
    /// broker does not tell these apart once the holder is gone).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let id = client.lock("k")?.detach();
    /// assert!(matches!(client.unlock("k", "0123"), Err(live_mutex::Error::NotHeld)));
    /// client.unlock("k", &id)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unlock(&self, key: &str, id: &str) -> Result<()> {
        let v =
            self.call(|u| json!({"type":"unlock","uuid":u,"key":key,"_uuid":id,"force":false}))?;
        match unlocked(&v)? {
            Unlocked::Yes => Ok(()),
            Unlocked::Lost | Unlocked::NotHeld => Err(Error::NotHeld),
        }
    }

    /// Releases every holder of `key`, whoever they are: an administrator's tool for a stuck
    /// lock, never part of normal operation.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// client.force_unlock("k")?;
    /// assert!(matches!(g.unlock(), Err(live_mutex::Error::LockLost)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn force_unlock(&self, key: &str) -> Result<()> {
        let v = self.call(|u| json!({"type":"unlock","uuid":u,"key":key,"force":true}))?;
        match unlocked(&v)? {
            Unlocked::NotHeld => Err(err_text(&v).map_or(Error::NotHeld, Error::Rejected)),
            _ => Ok(()),
        }
    }

    /// Keys the broker currently knows (held or waited for).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let _g = client.lock("listed")?;
    /// assert!(client.ls()?.contains(&"listed".to_string()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ls(&self) -> Result<Vec<String>> {
        let v = self.call(|u| json!({"type":"ls","uuid":u}))?;
        let list = v
            .get("ls_result")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(&v, "ls"))?;
        Ok(list
            .iter()
            .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_string))
            .collect())
    }

    /// Holders and queue of `key`.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// let info = client.info("k")?;
    /// assert!(info.is_locked);
    /// assert_eq!(info.holders[0].id, g.id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn info(&self, key: &str) -> Result<LockInfo> {
        let v = self.call(|u| json!({"type":"lock-info-request","uuid":u,"key":key}))?;
        if v.get("lockInfo").is_none() {
            return Err(bad(&v, "lock-info"));
        }
        let n = |f: &str| v.get(f).and_then(Value::as_u64);
        let holders = v.get("holders").and_then(Value::as_array).map(|hs| {
            hs.iter()
                .map(|h| Holder {
                    id: h
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    fencing_token: h.get("fencingToken").and_then(Value::as_u64),
                    mode: h
                        .get("mode")
                        .and_then(Value::as_str)
                        .unwrap_or("exclusive")
                        .to_string(),
                    ttl_remaining: h
                        .get("ttlRemaining")
                        .and_then(Value::as_u64)
                        .map(Duration::from_millis),
                })
                .collect()
        });
        Ok(LockInfo {
            key: key.to_string(),
            is_locked: v.get("isLocked").and_then(Value::as_bool).unwrap_or(false),
            holders: holders.unwrap_or_default(),
            waiters: n("lockRequestCount").unwrap_or(0),
            readers: n("readersCount").unwrap_or(0),
            max: n("max"),
        })
    }

    /// Broker-wide counters.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let _g = client.lock("k")?;
    /// assert!(client.stats()?.holders >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        let v = self.call(|u| json!({"type":"system-stats-request","uuid":u}))?;
        let raw = v
            .get("stats")
            .filter(|s| s.is_object())
            .cloned()
            .ok_or_else(|| bad(&v, "stats"))?;
        let n = |f: &str| raw.get(f).and_then(Value::as_u64).unwrap_or(0);
        Ok(Stats {
            keys: n("keys"),
            holders: n("holders"),
            waiters: n("waiters"),
            connections: n("connections"),
            grants: n("grants"),
            raw: raw.clone(),
        })
    }

    /// One round trip to the broker. The npm broker does not know `ping` and answers with an
    /// error, which still measures the round trip.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let pong = client.ping()?;
    /// assert!(pong.rtt < std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ping(&self) -> Result<Pong> {
        let conn = self.conn()?;
        let t = Instant::now();
        let v = call(
            &conn,
            self.inner.request_timeout,
            |u| json!({"type":"ping","uuid":u}),
        )?;
        let rtt = t.elapsed();
        match conn.kind() {
            BrokerKind::Rust if v.get("type").and_then(Value::as_str) != Some("pong") => {
                Err(bad(&v, "ping"))
            }
            broker => Ok(Pong {
                rtt,
                broker,
                server_time_ms: v.get("serverTimestamp").and_then(Value::as_u64),
            }),
        }
    }
}

/// Connects to the broker at `addr`, first starting one on a thread of this process if nothing
/// answers there, so a test suite's processes need no separate broker. When several processes
/// race, binding the port decides: one hosts the broker, the others connect to it. Keep the
/// returned handle alive while others may need the broker; shut it down with
/// [`BrokerHandle::shutdown`](crate::broker::BrokerHandle::shutdown).
///
/// ```
/// # let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
/// let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
/// let (client, hosted) = live_mutex::connect_or_launch(addr)?;
/// assert!(hosted.is_some(), "nobody was listening, so this process hosts the broker");
/// let (_again, none) = live_mutex::connect_or_launch(addr)?;
/// assert!(none.is_none());
/// client.lock("k")?.unlock()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_or_launch(addr: SocketAddr) -> Result<(Client, Option<BrokerHandle>)> {
    let hosted = crate::broker::ensure_broker(addr)?;
    Ok((Client::connect(&format!("tcp://{addr}"))?, hosted))
}

fn bad(v: &Value, what: &str) -> Error {
    err_text(v).map_or_else(
        || Error::Protocol(format!("bad {what} reply: {v}")),
        Error::Rejected,
    )
}

/// The broker URL from the environment: `LMX_URL`, else `tcp://$live_mutex_host:$live_mutex_port`
/// (the npm variables), each defaulting to `127.0.0.1` and `6970`.
///
/// ```
/// let url = live_mutex::client::url_from_env();
/// assert!(url.contains("://"));
/// ```
pub fn url_from_env() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("LMX_URL").unwrap_or_else(|| {
        let host = var("live_mutex_host").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("live_mutex_port").unwrap_or_else(|| url::DEFAULT_PORT.to_string());
        format!(
            "tcp://{}",
            url::host_port(&host, port.parse().unwrap_or(url::DEFAULT_PORT))
        )
    })
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Client>();
    f::<LockGuard>();
    f::<ManyGuard>();
}
