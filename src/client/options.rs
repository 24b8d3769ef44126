//! What a caller may ask of a lock ([`LockOptions`]); `requests.rs` turns them into the
//! protocol's requests.

use super::error::{Error, Result};
use super::{Mode, Ttl};
use crate::proto::MAX_TTL_MS;
use std::time::{Duration, Instant};

/// What a keep-alive does: renew to `ttl` every TTL/3, while the time is before `until`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Renewals {
    pub ttl: Duration,
    pub until: Option<Instant>,
}

impl Renewals {
    /// Whether a renewal due now is still made.
    pub(crate) fn due(&self) -> bool {
        self.until.is_none_or(|u| Instant::now() < u)
    }
}

/// Options for [`Client::lock_with`](super::Client::lock_with). Build with the methods, or with struct syntax and
/// `..Default::default()`.
///
/// ```
/// use live_mutex::{LockOptions, Mode};
/// use std::time::Duration;
/// let o = LockOptions::new().ttl(Duration::from_secs(30)).timeout(Duration::from_secs(5)).mode(Mode::Read);
/// assert_eq!(o.wait_timeout, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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
    /// Renew the lock every TTL/3 in the background for as long as the guard lives, so a
    /// short TTL only bounds how long a crashed holder keeps the key. Needs a
    /// [`Ttl::After`]; ignored otherwise.
    pub keep_alive: bool,
    /// With [`keep_alive`](Self::keep_alive): stop renewing this long after the grant. A
    /// holder stuck in an endless loop then loses the key when the TTL runs out (at most
    /// `max_hold` + TTL after the grant), and its guard reports
    /// [`is_lost`](super::LockGuard::is_lost) from then on. `None`: renew for as long as
    /// the guard lives.
    pub max_hold: Option<Duration>,
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

impl LockOptions {
    /// Sets [`keep_alive`](Self::keep_alive).
    ///
    /// ```
    /// assert!(live_mutex::LockOptions::new().keep_alive().keep_alive);
    /// ```
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }

    /// Sets [`max_hold`](Self::max_hold) (and [`keep_alive`](Self::keep_alive), which it
    /// bounds).
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = live_mutex::LockOptions::new().max_hold(Duration::from_secs(60));
    /// assert!(o.keep_alive && o.max_hold == Some(Duration::from_secs(60)));
    /// ```
    pub fn max_hold(mut self, d: Duration) -> Self {
        self.keep_alive = true;
        self.max_hold = Some(d);
        self
    }

    /// Refuses what the wire cannot say: a TTL under 1 ms (it would go out as `0`, which the
    /// protocol reads as "the broker's default") or above [`MAX_TTL_MS`].
    pub(crate) fn check(&self) -> Result<()> {
        check_ttl(self.ttl)
    }

    /// The TTL to keep renewing, and until when (from a grant at `granted`), when keep-alive
    /// applies.
    pub(crate) fn keep_alive_plan(&self, granted: Instant) -> Option<Renewals> {
        match self.ttl {
            Ttl::After(ttl) if self.keep_alive => Some(Renewals {
                ttl,
                until: self.max_hold.and_then(|m| granted.checked_add(m)),
            }),
            _ => None,
        }
    }

    /// The broker-side wait time-out, in whole milliseconds.
    pub(crate) fn wait_ms(&self) -> Option<u64> {
        self.wait_timeout
            .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64)
    }
}

/// See [`LockOptions::check`]; also applied to `extend`.
pub(crate) fn check_ttl(ttl: Ttl) -> Result<()> {
    match ttl {
        Ttl::After(d) if d < Duration::from_millis(1) => Err(Error::Config(format!(
            "ttl {d:?} is under 1 ms: use a TTL of at least 1 ms, or Ttl::Never for no expiry"
        ))),
        Ttl::After(d) if d.as_millis() > u128::from(MAX_TTL_MS) => Err(Error::Config(format!(
            "ttl {d:?} is over the protocol's limit of {MAX_TTL_MS} ms: use Ttl::Never"
        ))),
        _ => Ok(()),
    }
}
