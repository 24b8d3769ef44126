//! The guards: a held lock (or several) tied to its connection, released when dropped.

use super::driver::Conn;
use crate::client::calls::released;
use crate::client::error::{Error, Result};
use crate::client::held::{Held, Link, LockCore, ManyCore, renew_period};
use crate::client::options::Renewals;
use crate::client::requests::new_uuid;
use crate::proto::Request;
use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `extend` of `held` to `ttl` from now, recorded in it.
fn renew(conn: &Conn, held: &Held, ttl: Option<Duration>) -> Result<()> {
    let uuid = new_uuid();
    let extend = held.extend_request(&uuid, ttl, conn.is_dead())?;
    let sent = Instant::now();
    held.extended(sent, ttl, conn.call(held.timeout, &extend)?)
}

/// The keep-alive thread of one guard: renews every [`renew_period`] until the guard drops
/// (its sender goes away), the lock is lost, or `plan.until` has passed (`max_hold`: the
/// lock then ends with its TTL, and the lease says so).
pub(crate) fn keep_alive(conn: Arc<Conn>, held: Arc<Held>, plan: Renewals) -> mpsc::Sender<()> {
    let ttl = plan.ttl;
    let (stop, stopped) = mpsc::channel::<()>();
    let every = renew_period(ttl);
    let mine = held.clone();
    let spawned = std::thread::Builder::new()
        .name("lmx-keep-alive".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if !plan.due() {
                    return;
                }
                match renew(&conn, &held, Some(ttl)) {
                    Ok(()) => {}
                    // A slow answer: try again next period; the lease clock says when it is gone.
                    Err(Error::BrokerSilent) => {}
                    Err(_) => return,
                }
            }
        });
    if spawned.is_err() {
        // No thread, no renewal: say so rather than let the TTL run out unnoticed.
        mine.mark_lost();
    }
    stop
}

impl Link for Conn {
    fn is_dead(&self) -> bool {
        Conn::is_dead(self)
    }
    fn release_later(&self, req: &Request<'_>) {
        let _ = self.release(req);
    }
}

/// A held lock. Dropping it releases the lock without waiting (the unlock is pipelined ahead
/// of whatever the connection sends next); [`LockGuard::unlock`] releases it and tells you
/// whether the lock was still yours.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// let client = live_mutex::Client::connect(&url)?;
/// let guard = client.lock("report.csv")?;
/// assert_eq!(guard.key(), "report.csv");
/// assert!(guard.fencing_token().is_some());
/// guard.unlock()?; // or just drop it
/// # broker.shutdown(); broker.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    pub(crate) core: LockCore<Conn>,
    pub(crate) hooks: Mutex<Vec<u64>>,
    /// Dropping it stops the keep-alive thread, if any.
    pub(crate) keep_alive: Option<mpsc::Sender<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.core.held;
        f.debug_struct("LockGuard")
            .field("key", &h.key)
            .field("id", &h.id)
            .field("token", &h.token)
            .finish()
    }
}

impl LockGuard {
    /// The locked key.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// assert_eq!(client.lock("k")?.key(), "k");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key(&self) -> &str {
        &self.core.held.key
    }

    /// The lock id (the uuid of the lock request), which `unlock`/`lmx release --id` take.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// assert_eq!(g.id().len(), 32);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> &str {
        &self.core.held.id
    }

    /// A number strictly greater than that of every earlier grant of the broker. Pass it to the
    /// storage you protect so it can refuse writes from a holder whose lock has since been lost.
    /// `None` against the npm broker, which has no fencing tokens.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let a = client.lock("k")?.fencing_token();
    /// let b = client.lock("k")?.fencing_token();
    /// assert!(b > a);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.core.held.token
    }

    /// Whether the lock is known to be gone: its connection dropped, an `extend` found it
    /// expired, or its TTL has run out by this process's clock (measured from when the grant
    /// arrived, so never too early).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// assert!(!g.is_lost());
    /// broker.shutdown();
    /// broker.join()?;
    /// // The client's reader notices the close soon after; give it time on a busy machine.
    /// let t0 = std::time::Instant::now();
    /// while !g.is_lost() && t0.elapsed() < std::time::Duration::from_secs(10) {
    ///     std::thread::sleep(std::time::Duration::from_millis(10));
    /// }
    /// assert!(g.is_lost());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_lost(&self) -> bool {
        self.core.is_lost()
    }

    /// Calls `f` once, from the thread that notices (a reader of the connection), when the connection carrying this
    /// lock drops while the guard still holds it (at once if it already has). TTL expiry is
    /// not reported here: a holder with a TTL learns of it through [`extend`](Self::extend).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock("k")?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// g.on_lost(move || { let _ = tx.send(()); });
    /// broker.shutdown();
    /// rx.recv()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_lost(&self, f: impl FnOnce() + Send + 'static) {
        if let Some(id) = self.core.conn.on_lost(Box::new(f)) {
            self.hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id);
        }
    }

    /// Stops being in charge of the lock (see [`LockCore::finish`]).
    pub(crate) fn finish(&mut self) -> bool {
        self.keep_alive = None;
        self.core.conn.forget_hooks(&std::mem::take(
            self.hooks.get_mut().unwrap_or_else(|e| e.into_inner()),
        ));
        self.core.finish()
    }

    /// Releases the lock and waits for the broker's answer. [`Error::LockLost`] means the lock
    /// had already gone (expired, forced, or its connection dropped) before this call.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// use live_mutex::{Error, LockOptions};
    /// use std::time::Duration;
    /// let g = client.lock_with("k", &LockOptions::new().ttl(Duration::from_millis(50)))?;
    /// std::thread::sleep(Duration::from_millis(200));
    /// assert!(matches!(g.unlock(), Err(Error::LockLost)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unlock(mut self) -> Result<()> {
        if self.finish() {
            return Err(Error::LockLost);
        }
        let (conn, held) = (&self.core.conn, &self.core.held);
        released(conn.call(held.timeout, &held.unlock_request(&new_uuid())))
    }

    /// Sets the lock's remaining lifetime to `ttl` from now (`None`: never expires). Fails with
    /// [`Error::LockLost`] if the lock had already expired; after that the guard reports
    /// [`is_lost`](Self::is_lost). Takes `&self`, so a renewal thread can share the guard
    /// (or let [`LockOptions::keep_alive`](crate::client::LockOptions::keep_alive) do it).
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// use std::time::Duration;
    /// let g = client.lock_with("k", &live_mutex::LockOptions::new().ttl(Duration::from_secs(1)))?;
    /// std::thread::scope(|s| s.spawn(|| g.extend(Some(Duration::from_secs(30)))).join().unwrap())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        renew(&self.core.conn, &self.core.held, ttl)
    }

    /// Stops managing the lock and returns its id: the lock stays held after the guard is gone,
    /// until its TTL, an unlock by id, or (unless it was taken with `keep_after_disconnect`)
    /// the connection closing. `lmx acquire` is built on this.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let id = client.lock("k")?.detach();
    /// assert!(client.try_lock("k")?.is_none());
    /// client.unlock("k", &id)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(mut self) -> String {
        self.finish();
        self.core.held.id.clone()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.core.done {
            // Its unlock is sent by the core; the hooks and the keep-alive go first.
            self.keep_alive = None;
            self.core.conn.forget_hooks(&std::mem::take(
                self.hooks.get_mut().unwrap_or_else(|e| e.into_inner()),
            ));
        }
    }
}

/// Several keys held together, taken all-or-nothing by one `acquire-many` request (so two
/// callers locking overlapping sets cannot deadlock). Dropping it releases all of them.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let both = client.lock_many(&["a", "b"])?;
/// assert_eq!(both.fencing_tokens().len(), 2);
/// both.unlock()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping the guard releases the locks at once"]
#[derive(Debug)]
pub struct ManyGuard {
    pub(crate) core: ManyCore<Conn>,
}

impl ManyGuard {
    /// The id of the combined lock.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// assert_eq!(client.lock_many(&["a"])?.id().len(), 32);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The fencing token of each key.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// let g = client.lock_many(&["a", "b"])?;
    /// assert!(g.fencing_tokens()["a"] > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fencing_tokens(&self) -> &HashMap<String, u64> {
        &self.core.tokens
    }

    /// Whether the connection carrying these locks has dropped.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// assert!(!client.lock_many(&["a"])?.is_lost());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_lost(&self) -> bool {
        self.core.conn.is_dead()
    }

    /// Releases every key and waits for the answer; [`Error::LockLost`] if they had gone.
    ///
    /// ```
    /// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    /// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
    /// client.lock_many(&["a", "b"])?.unlock()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unlock(mut self) -> Result<()> {
        let c = &mut self.core;
        c.done = true;
        if c.conn.is_dead() {
            return Err(Error::LockLost);
        }
        released(c.conn.call(c.timeout, &c.release_request(&new_uuid())))
    }
}
