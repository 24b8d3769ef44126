//! The state of one key: who holds it, who waits for it, and the grant decision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::{ConnId, Mode, Name};

/// A granted lock.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub id: Name,
    pub rid: u64,
    pub conn: ConnId,
    pub mode: Mode,
    pub token: u64,
    pub expires: Option<Instant>,
    /// When it was granted, for inspection (`held since`).
    pub since: Instant,
    pub keep: bool,
    /// Member of an acquire-many group (whose lock id is `id`).
    pub group: bool,
}

/// A queued request.
#[derive(Debug, Clone)]
pub(crate) struct Waiter {
    pub id: Name,
    pub rid: u64,
    pub conn: ConnId,
    pub mode: Mode,
    pub ttl: Option<Duration>,
    /// Wait deadline of a plain request; a group's deadline lives on the group.
    pub deadline: Option<Instant>,
    /// When it was queued, to tell a timed-out client how long it waited.
    pub since: Instant,
    pub keep: bool,
    pub group: bool,
}

#[derive(Debug)]
pub(crate) struct KeyState {
    pub key: Name,
    /// The key's hash in the table's index, kept so forgetting the key needs no rehash.
    pub hash: u64,
    /// Semaphore capacity for exclusive holders, fixed while the key is in use.
    pub max: u32,
    pub holders: SmallVec<[Holder; 1]>,
    pub queue: VecDeque<Waiter>,
}

impl KeyState {
    pub(super) fn new(key: Name, hash: u64, max: u32) -> Self {
        KeyState {
            key,
            hash,
            max,
            holders: SmallVec::new(),
            queue: VecDeque::new(),
        }
    }

    /// Can a request of `mode` be granted beside the current holders? Readers share with
    /// readers; a writer needs the key to itself; exclusive holders share up to `max`.
    pub(super) fn compatible(&self, mode: Mode) -> bool {
        match mode {
            Mode::Read => self.holders.iter().all(|h| h.mode == Mode::Read),
            Mode::Write => self.holders.is_empty(),
            Mode::Exclusive => {
                self.holders.len() < self.max as usize
                    && self.holders.iter().all(|h| h.mode == Mode::Exclusive)
            }
        }
    }

    /// A new request may be granted at once only if nobody queues before it (strict FIFO: no
    /// barging past waiters, which also keeps a waiting writer from being starved by readers).
    pub(super) fn grantable_now(&self, mode: Mode) -> bool {
        self.queue.is_empty() && self.compatible(mode)
    }

    pub(super) fn readers(&self) -> usize {
        self.holders.iter().filter(|h| h.mode == Mode::Read).count()
    }

    pub(super) fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }

    pub(super) fn holder_index(&self, id: &str) -> Option<usize> {
        self.holders.iter().position(|h| &*h.id == id)
    }

    pub(super) fn waiter_index(&self, id: &str) -> Option<usize> {
        self.queue.iter().position(|w| &*w.id == id)
    }

    /// The holder `id` of a plain request (`group: false`) or of an acquire-many (`true`):
    /// a misbehaving client may reuse one id for both, and each must find its own.
    pub(super) fn holder_of(&self, id: &str, group: bool) -> Option<usize> {
        self.holders
            .iter()
            .position(|h| h.group == group && &*h.id == id)
    }

    pub(super) fn waiter_of(&self, id: &str, group: bool) -> Option<usize> {
        self.queue
            .iter()
            .position(|w| w.group == group && &*w.id == id)
    }
}
