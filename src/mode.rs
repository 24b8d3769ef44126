//! How a lock shares its key: one of the few words every layer shares (the wire format, the
//! lock table, the etcd store, both clients), so it lives in a leaf that imports nothing and
//! that each of them imports. The table knows no wire format; the protocol knows no table.

/// How a lock shares its key (extension; plain `exclusive` is what every 0.2.x client gets).
///
/// ```
/// use live_mutex::Mode;
/// assert_eq!(Mode::default().as_str(), "exclusive");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Up to the key's `max` holders (a mutex when `max` is 1, a semaphore otherwise).
    #[default]
    Exclusive,
    /// Shares with other readers only.
    Read,
    /// Alone on the key, whatever its `max`.
    Write,
}

impl Mode {
    /// Its name, as the protocol and `lmx` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }
}
