//! A held lock as both clients keep it: the core the blocking and the async guards wrap. What
//! a guard knows (key, lock id, fencing token, when its lease runs out, whether it is known
//! lost), the `extend` that renews it and the release sent when it is dropped are written
//! once here; each guard adds only how it waits (an `unlock` that blocks or one that awaits)
//! and what renews it in the background (a thread or a task).

use super::calls::refusal;
use super::error::{Error, Result};
use super::requests::{self, new_uuid};
use crate::proto::session::Answer;
use crate::proto::{Request, Ttl};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a held lock needs of its connection, whichever driver runs it.
pub(crate) trait Link {
    /// The connection has ended: whatever it held is gone with it.
    fn is_dead(&self) -> bool;
    /// Queues a release whose answer nobody waits for (a guard's drop).
    fn release_later(&self, req: &Request<'_>);
}

/// One granted lock: its key and id, its fencing token, and its lease. Shared (in an `Arc`)
/// by its guard and, with keep-alive, the thread or task that renews it.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) token: Option<u64>,
    /// How long to wait for the answer to an `unlock` or `extend`.
    pub(crate) timeout: Duration,
    lost: AtomicBool,
    expires: Mutex<Option<Instant>>,
}

impl Held {
    /// A grant of `key` to request `id` that has just arrived: its TTL counts from now (never
    /// too early).
    pub(crate) fn new(
        key: &str,
        id: String,
        token: Option<u64>,
        ttl: Ttl,
        timeout: Duration,
    ) -> Held {
        let expires = match ttl {
            Ttl::After(d) => Some(Instant::now() + d),
            _ => None,
        };
        Held {
            key: key.to_string(),
            id,
            token,
            timeout,
            lost: AtomicBool::new(false),
            expires: Mutex::new(expires),
        }
    }

    fn expires(&self) -> Option<Instant> {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lost by an answer (not merely by the clock).
    pub(crate) fn was_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Lost by an answer, or its TTL has run out by this process's clock.
    pub(crate) fn is_lost(&self) -> bool {
        self.was_lost() || self.expires().is_some_and(|e| Instant::now() >= e)
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// The `unlock` that releases it.
    pub(crate) fn unlock_request<'a>(&'a self, uuid: &'a str) -> Request<'a> {
        requests::unlock(uuid, &self.key, &self.id)
    }

    /// The `extend` that sets it to `ttl` from now (`None`: no expiry). Fails without a
    /// request if the TTL cannot be said on the wire, or if the lock is already lost or its
    /// connection dead (then it is marked lost, so its guard reports it).
    pub(crate) fn extend_request<'a>(
        &'a self,
        uuid: &'a str,
        ttl: Option<Duration>,
        conn_dead: bool,
    ) -> Result<Request<'a>> {
        let extend = requests::extend(uuid, &self.key, &self.id, ttl)?;
        if self.is_lost() || conn_dead {
            self.mark_lost();
            return Err(Error::LockLost);
        }
        Ok(extend)
    }

    /// The broker's answer to an `extend` to `ttl` sent at `sent`: the new expiry counts from
    /// when the request left (the broker's clock started no earlier), or the lock is lost.
    pub(crate) fn extended(&self, sent: Instant, ttl: Option<Duration>, a: Answer) -> Result<()> {
        match a {
            Answer::Extended(true) => {
                *self.expires.lock().unwrap_or_else(|e| e.into_inner()) = ttl.map(|t| sent + t);
                Ok(())
            }
            Answer::Extended(false) => {
                self.mark_lost();
                Err(Error::LockLost)
            }
            a => Err(refusal(a)),
        }
    }
}

/// How often a keep-alive renews a lock of `ttl`: a third of it.
pub(crate) fn renew_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// The core of a lock guard: the lock and its connection. Dropped while still in charge, it
/// releases the lock without waiting (the unlock is pipelined).
#[derive(Debug)]
pub(crate) struct LockCore<C: Link> {
    pub(crate) conn: Arc<C>,
    pub(crate) held: Arc<Held>,
    /// Released, detached, or handed to a following request: nothing to send on drop.
    pub(crate) done: bool,
}

impl<C: Link> LockCore<C> {
    pub(crate) fn new(conn: Arc<C>, held: Held) -> Self {
        LockCore {
            conn,
            held: Arc::new(held),
            done: false,
        }
    }

    /// Whether the lock is known to be gone: by an answer, by its TTL, or with its connection.
    pub(crate) fn is_lost(&self) -> bool {
        self.held.is_lost() || self.conn.is_dead()
    }

    /// Stops being in charge of the lock. `true` if it is already known gone, so an `unlock`
    /// can only answer [`Error::LockLost`] and need not be sent.
    pub(crate) fn finish(&mut self) -> bool {
        self.done = true;
        self.held.was_lost() || self.conn.is_dead()
    }
}

impl<C: Link> Drop for LockCore<C> {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_dead() {
            self.conn
                .release_later(&self.held.unlock_request(&new_uuid()));
        }
    }
}

/// The core of an acquire-many guard: the keys' tokens and the connection. Dropped while
/// still in charge, it releases every key without waiting.
#[derive(Debug)]
pub(crate) struct ManyCore<C: Link> {
    pub(crate) conn: Arc<C>,
    pub(crate) id: String,
    pub(crate) tokens: HashMap<String, u64>,
    pub(crate) timeout: Duration,
    pub(crate) done: bool,
}

impl<C: Link> ManyCore<C> {
    /// The `release-many` that releases every key.
    pub(crate) fn release_request<'a>(&'a self, uuid: &'a str) -> Request<'a> {
        requests::release_many(uuid, &self.id)
    }
}

impl<C: Link> Drop for ManyCore<C> {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_dead() {
            self.conn.release_later(&self.release_request(&new_uuid()));
        }
    }
}
