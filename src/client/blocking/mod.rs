//! The blocking client: one connection that any number of threads share, driven by
//! `driver.rs` over the sockets of `transport.rs`; its guards are in `guard.rs`.

mod driver;
mod guard;
mod transport;
mod watch;

pub use guard::{LockGuard, ManyGuard};
pub use watch::Watch;

use super::backoff::Slot;
use super::builder::ClientBuilder;
use super::calls::{self, refusal};
use super::held::{Held, LockCore, ManyCore};
use super::requests::{self, new_uuid};
use super::url::Target;
use super::{BrokerKind, Error, LockInfo, LockOptions, Result, SLACK, Stats, url_from_env};
use crate::proto::Request;
use crate::proto::session::{Answer, Unlocked};
use driver::{Conn, Pending};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answer to [`Client::ping`].
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let p = client.ping()?;
/// assert_eq!(p.broker, live_mutex::BrokerKind::Rust);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pong {
    /// Round-trip time.
    pub rtt: Duration,
    /// Which broker answered.
    pub broker: BrokerKind,
    /// The broker's wall clock (Unix ms), if it says.
    pub server_time_ms: Option<u64>,
    /// The broker's version (`0.1.0`), if it says (the npm broker does not).
    pub version: Option<String>,
}

impl ClientBuilder {
    /// Connects now, so a wrong address fails here rather than at the first lock.
    ///
    /// ```
    /// assert!(live_mutex::Client::builder("bogus").connect().is_err());
    /// ```
    pub fn connect(self) -> Result<Client> {
        let target = self.settings.resolve()?;
        let inner = Inner {
            slot: Mutex::new(Slot::new(target.endpoints.len(), target.random)),
            target,
        };
        let client = Client {
            inner: Arc::new(inner),
        };
        client.conn()?;
        Ok(client)
    }
}

struct Inner {
    target: Target,
    slot: Mutex<Slot<Conn>>,
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
            .field("endpoints", &self.inner.target.endpoints)
            .finish()
    }
}

impl Client {
    /// Connects to `tcp://host:port`, `ws://host:port[/path]` or `unix:///path`, or inside TLS
    /// to `tls://host:port` or `wss://host:port[/path]` (feature `tls`; trusting `LMX_TLS_CA`
    /// or the system's roots, presenting `LMX_TLS_CERT`/`LMX_TLS_KEY` if set). A token may
    /// ride in the URL (`?token=T`, `T@host` or `user:T@host`) or in `LMX_AUTH_TOKEN`.
    ///
    /// A comma-separated list (`tls://a:6970,tls://b:6970`) names brokers that serve the same
    /// locks (`--store etcd://`): the client connects to the first that answers and, when that
    /// connection drops, the next call goes to the next live one. Guards of the dropped
    /// connection report lost as always; nothing is re-acquired. See [`Client::endpoint`].
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
        ClientBuilder::new(url)
    }

    /// Connects to [`url_from_env`] (`LMX_URL`, else the npm variables, else
    /// `tcp://127.0.0.1:6970`). It never starts a broker; [`connect_or_spawn`](super::connect_or_spawn) with
    /// [`spawn_url_from_env`](super::spawn_url_from_env) does, defaulting to the per-user socket instead.
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

    /// The broker of the live connection, as a URL without its token (`None` while
    /// disconnected: the next call reconnects).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let addr = broker.local_addr().unwrap();
    /// let client = live_mutex::Client::connect(&format!("tcp://127.0.0.1:1,tcp://{addr}"))?;
    /// assert_eq!(client.endpoint(), Some(format!("tcp://{addr}")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn endpoint(&self) -> Option<String> {
        let t = &self.inner.target;
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (_, at) = slot.live(t.endpoints.len(), |c| c.is_dead())?;
        Some(t.endpoints[at].to_string())
    }

    /// The live connection, reconnecting if the last one died: to the brokers of the list in
    /// turn, starting after the one that died. Reconnects after every broker failed are
    /// spaced out (50 ms doubling to 2 s, jittered) so a down broker is not hammered by every
    /// caller.
    fn conn(&self) -> Result<Arc<Conn>> {
        let t = &self.inner.target;
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, _)) = slot.live(t.endpoints.len(), |c| c.is_dead()) {
            return Ok(c);
        }
        if let Some(at) = slot.next_attempt() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let mut failed = Error::ConnectionLost;
        for i in slot.order(t.endpoints.len()) {
            match Conn::open(t, &t.endpoints[i]) {
                Ok(c) => return slot.connected(Ok((c, i))),
                Err(e) => failed = e,
            }
        }
        slot.connected(Err(failed))
    }

    fn call(&self, req: &Request<'_>) -> Result<Answer> {
        self.conn()?.call(self.inner.target.request_timeout, req)
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
        match self.lock_with(key, &LockOptions::new().try_only()) {
            Err(Error::Busy) => Ok(None),
            r => r.map(Some),
        }
    }

    /// Takes `key` with options: [`Error::WaitTimedOut`] if it was not granted within
    /// `wait_timeout`, [`Error::Busy`] if `try_only` found it held, [`Error::Config`] for a TTL
    /// under 1 ms.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// use live_mutex::{Error, LockOptions};
    /// use std::time::Duration;
    /// let _held = client.lock("k")?;
    /// let r = client.lock_with("k", &LockOptions::new().timeout(Duration::from_millis(50)));
    /// assert!(matches!(r, Err(Error::WaitTimedOut)));
    /// let r = client.lock_with("k", &LockOptions::new().try_only());
    /// assert!(r.unwrap_err().is_busy());
    /// let r = client.lock_with("j", &LockOptions::new().ttl(Duration::ZERO));
    /// assert!(matches!(r, Err(Error::Config(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_with(&self, key: &str, opts: &LockOptions) -> Result<LockGuard> {
        self.acquire_after(None, key, opts)
    }

    /// Pipelined releases (guards dropped without [`LockGuard::unlock`]) whose answer said the
    /// lock had already gone, on the current connection. The unlock is written without
    /// waiting, so this is where such a loss shows up; `unlock()` reports it to the caller.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// drop(client.lock("k")?);
    /// client.ping()?; // the unlock's answer has arrived by now
    /// assert_eq!(client.lost_releases()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lost_releases(&self) -> Result<u64> {
        Ok(self.conn()?.lost_releases())
    }

    /// Releases `prev` and takes `key`, with the unlock and the lock in ONE write: the
    /// release is not delayed at all (it leaves with the request that follows it, at once), and
    /// a cycle of lock → work → lock costs one write instead of two. Same answers as
    /// [`lock_with`](Self::lock_with); `prev` is released whatever happens (a plain drop if it
    /// belongs to an older connection).
    ///
    /// A dropped guard cannot know whether a request follows, so a plain drop writes its unlock
    /// on its own at once; this is the way to say that one does.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// use live_mutex::LockOptions;
    /// let mut g = client.lock("k")?;
    /// for _ in 0..3 {
    ///     // ... work under the lock ...
    ///     g = client.lock_after(g, "k", &LockOptions::new())?;
    /// }
    /// # drop(g);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_after(&self, prev: LockGuard, key: &str, opts: &LockOptions) -> Result<LockGuard> {
        self.acquire_after(Some(prev), key, opts)
    }

    fn acquire_after(
        &self,
        prev: Option<LockGuard>,
        key: &str,
        o: &LockOptions,
    ) -> Result<LockGuard> {
        o.check()?;
        let conn = self.conn()?;
        let (limit, limit_is_wait) = calls::lock_limit(conn.kind(), o);
        let uuid = new_uuid();
        let req = requests::lock(o, &uuid, key);
        let p = match prev {
            // Still ours and on this connection: its unlock rides in the lock's write.
            Some(mut g) if !g.core.done && Arc::ptr_eq(&g.core.conn, &conn) => {
                g.finish();
                let unlock_uuid = new_uuid();
                let release = g.core.held.unlock_request(&unlock_uuid);
                conn.request_after(Some(&release), &req)?
            }
            other => {
                drop(other);
                conn.request(&req)?
            }
        };
        let id = p.uuid();
        let token = calls::locked(await_grant(p, limit, limit_is_wait)?, o)?;
        let held = Held::new(key, id, token, o.ttl, self.inner.target.request_timeout);
        let core = LockCore::new(conn, held);
        let keep_alive = o
            .keep_alive_plan(Instant::now())
            .map(|plan| guard::keep_alive(core.conn.clone(), core.held.clone(), plan));
        Ok(LockGuard {
            core,
            hooks: Mutex::new(Vec::new()),
            keep_alive,
        })
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
    /// assert!(matches!(r, Err(live_mutex::Error::Busy)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_many_with<S: AsRef<str>>(&self, keys: &[S], o: &LockOptions) -> Result<ManyGuard> {
        o.check()?;
        let conn = self.conn()?;
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let p = conn.request(&requests::many(o, &new_uuid(), &keys))?;
        let id = p.uuid();
        let answer = await_grant(p, o.wait_timeout.map(|t| t + SLACK), false)?;
        Ok(ManyGuard {
            core: ManyCore {
                tokens: calls::many_locked(answer, o)?,
                conn,
                id,
                timeout: self.inner.target.request_timeout,
                done: false,
            },
        })
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
        match self.call(&requests::unlock(&new_uuid(), key, id))? {
            Answer::Unlocked(Unlocked::Yes) => Ok(()),
            Answer::Unlocked(_) => Err(Error::NotHeld),
            a => Err(refusal(a)),
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
        match self.call(&requests::force_unlock(&new_uuid(), key))? {
            Answer::Unlocked(Unlocked::NotHeld(e)) => {
                Err(e.map_or(Error::NotHeld, Error::Rejected))
            }
            Answer::Unlocked(_) => Ok(()),
            a => Err(refusal(a)),
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
    ///
    /// A long list comes in pages (each within the broker's output cap), all fetched here: a
    /// key held throughout is listed once; one taken or released meanwhile may be missing.
    pub fn ls(&self) -> Result<Vec<String>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let uuid = new_uuid();
            let answer = {
                let req = Request::Ls {
                    uuid: &uuid,
                    after: after.as_deref(),
                };
                self.call(&req)?
            };
            let (keys, next) = match answer {
                Answer::Keys(keys, next) => (keys, next),
                a => return Err(refusal(a)),
            };
            all.extend(keys);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
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
        let uuid = new_uuid();
        calls::info(key, self.call(&Request::LockInfo { uuid: &uuid, key })?)
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
        calls::stats(self.call(&Request::SystemStats { uuid: &new_uuid() })?)
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
        let answer = conn.call(
            self.inner.target.request_timeout,
            &Request::Ping { uuid: &new_uuid() },
        )?;
        let rtt = t.elapsed();
        match (conn.kind(), answer) {
            (
                broker,
                Answer::Pong {
                    server_time_ms,
                    version,
                },
            ) => Ok(Pong {
                rtt,
                broker,
                server_time_ms,
                version,
            }),
            // The npm broker knows no `ping`; its error still measures the round trip.
            (BrokerKind::Node, _) => Ok(Pong {
                rtt,
                broker: BrokerKind::Node,
                server_time_ms: None,
                version: None,
            }),
            (BrokerKind::Rust, a) => Err(refusal(a)),
        }
    }
}

/// Waits for a lock's or acquire-many's answer until `limit` from now; past it the request is
/// given up (a lock is cancelled at the broker) and the answer is "not granted" when the limit
/// is the wait time-out itself (`limit_is_wait`), else [`Error::BrokerSilent`].
fn await_grant(p: Pending, limit: Option<Duration>, limit_is_wait: bool) -> Result<Answer> {
    match p.recv(limit.map(|l| Instant::now() + l)) {
        Err(Error::BrokerSilent) => {
            p.give_up()?;
            if limit_is_wait {
                Ok(Answer::NotGranted)
            } else {
                Err(Error::BrokerSilent)
            }
        }
        r => r,
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Client>();
    f::<LockGuard>();
    f::<ManyGuard>();
}
