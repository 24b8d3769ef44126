//! The tokio driver of the client (feature `tokio`): one task per connection drives the
//! session (`conn.rs`) over tokio's sockets (`transport.rs`); its guards are in `guard.rs`.
//! Public as [`crate::async_client`], whose docs say what it promises.

mod conn;
mod guard;
mod transport;

pub use guard::{AsyncLockGuard, AsyncManyGuard};

use crate::client::backoff::Slot;
use crate::client::builder::Builder;
use crate::client::calls;
use crate::client::held::{Held, LockCore, ManyCore};
use crate::client::requests::{self, new_uuid};
use crate::client::url::Target;
use crate::client::{BrokerKind, Error, LockInfo, LockOptions, Result, SLACK, Stats};
use crate::proto::Request;
use crate::proto::session::Answer;
use conn::{Conn, with_timeout};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Builds an [`AsyncClient`] with non-default time-outs, token or TLS files (the setters are
/// [`Builder`]'s).
pub type AsyncClientBuilder = Builder<AsyncClient>;

impl AsyncClientBuilder {
    /// Connects now, so a wrong address fails here rather than at the first lock.
    pub async fn connect(self) -> Result<AsyncClient> {
        let target = self.settings.resolve()?;
        let client = AsyncClient {
            inner: Arc::new(Inner {
                slot: Mutex::new(Slot::new(target.endpoints.len(), target.random)),
                target,
            }),
        };
        client.conn().await?;
        Ok(client)
    }
}

struct Inner {
    target: Target,
    slot: Mutex<Slot<Conn>>,
}

/// A handle on a broker connection; clone it freely (clones share the connection, and any
/// number of tasks may wait on it at once). When the connection drops, waiting calls fail with
/// [`Error::ConnectionLost`], guards report `is_lost`, and the next call reconnects.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("endpoints", &self.inner.target.endpoints)
            .finish()
    }
}

impl AsyncClient {
    /// Connects to `tcp://host:port`, `ws://host:port[/path]` or `unix:///path` (a token as
    /// for [`Client::connect`](crate::Client::connect)).
    pub async fn connect(url: &str) -> Result<AsyncClient> {
        Self::builder(url).connect().await
    }

    /// Starts an [`AsyncClientBuilder`] for `url`.
    pub fn builder(url: &str) -> AsyncClientBuilder {
        AsyncClientBuilder::new(url)
    }

    /// Which broker this client is talking to.
    pub async fn broker_kind(&self) -> Result<BrokerKind> {
        Ok(self.conn().await?.kind())
    }

    /// The broker of the live connection, as a URL without its token (`None` while
    /// disconnected); see [`Client::endpoint`](crate::Client::endpoint).
    pub async fn endpoint(&self) -> Option<String> {
        let t = &self.inner.target;
        let mut slot = self.inner.slot.lock().await;
        let (_, at) = slot.live(t.endpoints.len(), |c| c.is_dead())?;
        Some(t.endpoints[at].to_string())
    }

    /// The live connection, reconnecting if the last one died: to the brokers of the list in
    /// turn, starting after the one that died; reconnects after every broker failed are
    /// spaced out (50 ms doubling to 2 s, jittered) with an async sleep.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let t = &self.inner.target;
        let mut slot = self.inner.slot.lock().await;
        if let Some((c, _)) = slot.live(t.endpoints.len(), |c| c.is_dead()) {
            return Ok(c);
        }
        if let Some(at) = slot.next_attempt() {
            tokio::time::sleep_until(at.into()).await;
        }
        let mut failed = Error::ConnectionLost;
        for i in slot.order(t.endpoints.len()) {
            match Conn::open(t, &t.endpoints[i]).await {
                Ok(c) => return slot.connected(Ok((c, i))),
                Err(e) => failed = e,
            }
        }
        slot.connected(Err(failed))
    }

    async fn call(&self, req: &Request<'_>) -> Result<Answer> {
        let timeout = self.inner.target.request_timeout;
        self.conn().await?.call(timeout, req).await
    }

    /// Waits until `key` is granted, with the broker's default TTL.
    pub async fn lock(&self, key: &str) -> Result<AsyncLockGuard> {
        self.lock_with(key, &LockOptions::default()).await
    }

    /// Takes `key` without waiting: `None` if it is busy.
    pub async fn try_lock(&self, key: &str) -> Result<Option<AsyncLockGuard>> {
        let o = LockOptions::new().try_only();
        match self.lock_with(key, &o).await {
            Err(Error::Busy) => Ok(None),
            r => r.map(Some),
        }
    }

    /// Takes `key` with options: [`Error::WaitTimedOut`], [`Error::Busy`] (with `try_only`),
    /// [`Error::Config`] for a TTL under 1 ms; with `keep_alive`, a task renews the lock every
    /// TTL/3 while the guard lives (until `max_hold`, if set).
    pub async fn lock_with(&self, key: &str, o: &LockOptions) -> Result<AsyncLockGuard> {
        o.check()?;
        let conn = self.conn().await?;
        let (limit, limit_is_wait) = calls::lock_limit(conn.kind(), o);
        let p = conn.request(&requests::lock(o, &new_uuid(), key), Some(key))?;
        let id = p.uuid();
        let token = calls::locked(await_grant(p, limit, limit_is_wait).await?, o)?;
        let held = Held::new(key, id, token, o.ttl, self.inner.target.request_timeout);
        let core = LockCore::new(conn, held);
        let keep_alive = o
            .keep_alive_plan(Instant::now())
            .map(|plan| guard::keep_alive(core.conn.clone(), core.held.clone(), plan));
        Ok(AsyncLockGuard { core, keep_alive })
    }

    /// Takes all of `keys` at once (all-or-nothing).
    pub async fn lock_many<S: AsRef<str>>(&self, keys: &[S]) -> Result<AsyncManyGuard> {
        self.lock_many_with(keys, &LockOptions::default()).await
    }

    /// [`lock_many`](Self::lock_many) with options (`ttl`, `wait_timeout`, `try_only`,
    /// `keep_after_disconnect`).
    pub async fn lock_many_with<S: AsRef<str>>(
        &self,
        keys: &[S],
        o: &LockOptions,
    ) -> Result<AsyncManyGuard> {
        o.check()?;
        let conn = self.conn().await?;
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let p = conn.request(&requests::many(o, &new_uuid(), &keys), None)?;
        let id = p.uuid();
        let answer = await_grant(p, o.wait_timeout.map(|t| t + SLACK), false).await?;
        Ok(AsyncManyGuard {
            core: ManyCore {
                tokens: calls::many_locked(answer, o)?,
                conn,
                id,
                timeout: self.inner.target.request_timeout,
                done: false,
            },
        })
    }

    /// Holders and queue of `key`.
    pub async fn info(&self, key: &str) -> Result<LockInfo> {
        let uuid = new_uuid();
        calls::info(
            key,
            self.call(&Request::LockInfo { uuid: &uuid, key }).await?,
        )
    }

    /// Broker-wide counters.
    pub async fn stats(&self) -> Result<Stats> {
        calls::stats(
            self.call(&Request::SystemStats { uuid: &new_uuid() })
                .await?,
        )
    }

    /// One round trip (the npm broker answers its unknown `ping` with an error: also a trip).
    pub async fn ping(&self) -> Result<Duration> {
        let t = Instant::now();
        match self.call(&Request::Ping { uuid: &new_uuid() }).await {
            Ok(_) => Ok(t.elapsed()),
            Err(e) => Err(e),
        }
    }

    /// Pipelined releases on the current connection whose answer said the lock had already
    /// gone (see [`Client::lost_releases`](crate::Client::lost_releases)).
    pub async fn lost_releases(&self) -> Result<u64> {
        Ok(self.conn().await?.lost_releases())
    }
}

/// Waits for a lock's or acquire-many's answer, at most `limit`: past it the request is given
/// up (cancelled at the broker) and the result is "not granted" when the limit is the wait
/// time-out itself (`limit_is_wait`), else [`Error::BrokerSilent`].
async fn await_grant(
    p: conn::Pending,
    limit: Option<Duration>,
    limit_is_wait: bool,
) -> Result<Answer> {
    let Some(limit) = limit else {
        let mut p = p;
        return p.recv().await;
    };
    match with_timeout(limit, p).await {
        Err(Error::BrokerSilent) if limit_is_wait => Ok(Answer::NotGranted),
        r => r,
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<AsyncClient>();
    f::<AsyncLockGuard>();
    f::<AsyncManyGuard>();
}
