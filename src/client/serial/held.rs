//! What each test of this process holds, so that a test never waits for itself.
//!
//! Every test of a process shares one broker connection, and the broker queues a second request
//! for a key behind the first even from the same connection. So a nested take (a test holding
//! `db` calls a helper that takes `db`) must be answered here, from what the same test already
//! holds, without asking the broker.
//!
//! **Which test is asking.** A test is its *owner*: inside an async scope opened by the
//! attribute on an `async fn` (feature `tokio`), that scope, for every await and every blocking
//! call made while it is being polled; otherwise the calling thread (`cargo test` runs each
//! test on a thread of its own, `cargo nextest run` in a process of its own). Threads and
//! tasks a test starts are owners of their own: they wait for the test's keys like any other
//! test would (as with `serial_test`, whose locks are reentrant per thread).
//!
//! A key is counted per (key, owner): nested takes raise the count, and the broker lock goes
//! when the outermost take's guard drops. A `parallel` (shared) take nested in a `serial` one
//! of the same key proceeds (the exclusive hold covers it); a `serial` nested in a `parallel`
//! cannot (it would have to wait for itself) and is refused at once.

use super::super::{Error, LockGuard, Result};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A test, as far as reentrancy goes: see the module docs.
pub(crate) type Owner = u64;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A fresh owner, for a thread or an async scope.
pub(crate) fn new_owner() -> Owner {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static THREAD_OWNER: Owner = new_owner();
}

/// The owner of the calling code: its async scope if it runs inside one, else its thread.
pub(crate) fn current_owner() -> Owner {
    #[cfg(feature = "tokio")]
    if let Some(o) = super::scope::current_owner() {
        return o;
    }
    THREAD_OWNER.with(|o| *o)
}

/// A broker lock that backs one (key, owner) entry.
pub(crate) enum Backing {
    Blocking(#[allow(dead_code)] LockGuard),
    #[cfg(feature = "tokio")]
    Async(#[allow(dead_code)] crate::client::async_client::AsyncLockGuard),
}

struct Entry {
    key: String,
    owner: Owner,
    shared: bool,
    count: usize,
    backing: Backing,
}

static HELD: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys held (counted) by one take of one owner; dropping it gives them back, and a key's
/// broker lock is released when its last take is given back.
///
/// ```no_run
/// let g = live_mutex::serial("db")?;
/// let again = live_mutex::serial("db")?; // the same test: proceeds at once
/// assert_eq!(again.keys(), ["db"]);
/// # drop((g, again));
/// # Ok::<(), live_mutex::Error>(())
/// ```
#[must_use = "dropping the guard gives the keys back at once"]
pub struct SerialGuard {
    owner: Owner,
    keys: Vec<String>,
}

impl std::fmt::Debug for SerialGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialGuard")
            .field("keys", &self.keys)
            .finish()
    }
}

impl SerialGuard {
    /// The keys this take holds.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
}

impl Drop for SerialGuard {
    fn drop(&mut self) {
        let mut released = Vec::new();
        {
            let mut held = held();
            for k in &self.keys {
                if let Some(i) = held
                    .iter()
                    .position(|e| e.owner == self.owner && &e.key == k)
                {
                    held[i].count -= 1;
                    if held[i].count == 0 {
                        released.push(held.swap_remove(i).backing);
                    }
                }
            }
        }
        // Unlocks go out here, outside the table's mutex.
        drop(released);
    }
}

/// A take in progress: the keys `owner` already holds are counted at once; the others are
/// returned (sorted, deduplicated) for the caller to request from the broker in that order
/// (the order acquire-many uses, so that no two takes wait on each other in a cycle) and
/// [`add`](Self::add) as they are granted. Dropping it part-way gives back what it has.
pub(crate) fn begin(
    owner: Owner,
    keys: &[&str],
    shared: bool,
) -> Result<(SerialGuard, Vec<String>)> {
    let mut keys: Vec<&str> = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let mut held = held();
    for k in &keys {
        if !shared
            && held
                .iter()
                .any(|e| e.owner == owner && e.key == *k && e.shared)
        {
            return Err(Error::Serial(format!(
                "serial({k:?}) inside parallel({k:?}) of the same test would wait for itself: \
                 take the key as serial in the outer scope, or do not nest"
            )));
        }
    }
    let mut guard = SerialGuard {
        owner,
        keys: Vec::new(),
    };
    let mut missing = Vec::new();
    for k in keys {
        match held.iter_mut().find(|e| e.owner == owner && e.key == k) {
            Some(e) => {
                e.count += 1;
                guard.keys.push(k.to_string());
            }
            None => missing.push(k.to_string()),
        }
    }
    Ok((guard, missing))
}

impl SerialGuard {
    /// Records `key`, now granted by the broker through `backing`, as held by this take.
    pub(crate) fn add(&mut self, key: String, shared: bool, backing: Backing) {
        held().push(Entry {
            key: key.clone(),
            owner: self.owner,
            shared,
            count: 1,
            backing,
        });
        self.keys.push(key);
    }
}
