use std::io;

/// Everything a client call can fail with.
///
/// Callers mostly decide between "retry later" ([`Error::Busy`], [`Error::WaitTimedOut`],
/// [`Error::BrokerSilent`], [`Error::ConnectionLost`]), "my critical section was not protected"
/// ([`Error::LockLost`]) and "bug or misuse" (the rest); the `is_*` helpers group them.
///
/// ```
/// use live_mutex::client::Error;
/// let e = Error::Rejected("max mismatch".into());
/// assert_eq!(e.to_string(), "rejected by the broker: max mismatch");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A try-lock (`try_only`) found the key held: nothing was queued.
    #[error("busy: the key is held")]
    Busy,
    /// The lock was not granted within the wait time-out (`LockOptions::timeout`); the request
    /// was withdrawn from the queue.
    #[error("timed out waiting for the lock")]
    WaitTimedOut,
    /// The broker did not answer within the request time-out (or, for a lock with a wait
    /// time-out, well after the broker should have answered): the request was withdrawn.
    #[error("the broker did not answer in time")]
    BrokerSilent,
    /// The lock had already expired, been forced, or its connection dropped: whatever ran under
    /// it may have overlapped with another holder.
    #[error("lock lost (expired, forced, or its connection dropped)")]
    LockLost,
    /// The connection to the broker broke while the request was in flight; the next call
    /// reconnects.
    #[error("connection to the broker lost")]
    ConnectionLost,
    /// Unlock of a lock that this id does not hold.
    #[error("lock not held")]
    NotHeld,
    /// The broker refused the request; the text is the broker's `error` field.
    #[error("rejected by the broker: {0}")]
    Rejected(String),
    /// The broker sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad URL or option, caught before anything was sent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No broker answered and none could be spawned ([`crate::connect_or_spawn`]): the text
    /// says why (no `lmx` binary, a remote address, an unsafe runtime directory, a daemon that
    /// never came up).
    #[error("cannot spawn a broker: {0}")]
    Spawn(String),
    /// A `serial`/`parallel` take that cannot proceed: a `serial` nested inside a `parallel` of
    /// the same key by the same test (it would wait for itself), or a `timeout` that ran out
    /// (the text names the holder).
    #[error("{0}")]
    Serial(String),
    /// Connecting or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// A wait that ran out: [`Error::WaitTimedOut`] or [`Error::BrokerSilent`].
    ///
    /// ```
    /// assert!(live_mutex::Error::WaitTimedOut.is_timeout());
    /// assert!(!live_mutex::Error::Busy.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::WaitTimedOut | Error::BrokerSilent)
    }
    /// A try-lock found the key held ([`Error::Busy`]).
    ///
    /// ```
    /// assert!(live_mutex::Error::Busy.is_busy());
    /// ```
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy)
    }
    /// The lock is gone ([`Error::LockLost`]): whatever ran under it may have overlapped.
    ///
    /// ```
    /// assert!(live_mutex::Error::LockLost.is_lost());
    /// ```
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::LockLost)
    }
    /// The connection failed ([`Error::ConnectionLost`] or [`Error::Io`]); the next call
    /// reconnects.
    ///
    /// ```
    /// assert!(live_mutex::Error::ConnectionLost.is_connection());
    /// ```
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost | Error::Io(_))
    }
}

/// Shorthand used throughout the client.
///
/// ```
/// fn take(c: &live_mutex::Client) -> live_mutex::client::Result<u64> {
///     Ok(c.lock("k")?.fencing_token().unwrap_or(0))
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
