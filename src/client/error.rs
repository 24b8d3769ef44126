use std::io;

/// Everything a client call can fail with.
///
/// The variants are coarse on purpose: callers decide between "retry later"
/// ([`Error::TimedOut`], [`Error::ConnectionLost`]), "my critical section was not protected"
/// ([`Error::LockLost`]) and "bug or misuse" (the rest).
///
/// ```
/// use live_mutex::client::Error;
/// let e = Error::Rejected("max mismatch".into());
/// assert_eq!(e.to_string(), "rejected by the broker: max mismatch");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock was not granted in time (broker-side wait timeout, client safety timer, or a
    /// try-lock that found the key busy), or a request got no reply within the request timeout.
    #[error("timed out")]
    TimedOut,
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
    /// Connecting or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Shorthand used throughout the client.
///
/// ```
/// fn take(c: &live_mutex::Client) -> live_mutex::client::Result<u64> {
///     Ok(c.lock("k")?.fencing_token().unwrap_or(0))
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
