//! One etcd watch per store, on the whole prefix, shared by every request task.
//!
//! Why shared: a watch stream per grant (and per waiter), opened at the grant and cancelled at
//! the unlock, cost an extra exchange with etcd on every lock+unlock, competing with the next
//! cycle's Txn. Here one task keeps one watch on `PREFIX/` (deletes only) and hands each delete
//! to the tasks that registered an [`Interest`] in it: a holder in its own key (a delete by
//! anyone else is `Lost`), a waiter in its key's directory (its predecessor may be gone).
//!
//! No delete is missed: a task registers with the revision `seen` it last read etcd at, and
//! must learn of every delete with a higher revision. Deletes the hub dispatched before the
//! registration are replayed from a bounded ring of recent deletes; when the ring no longer
//! reaches back to `seen` (or the task's own queue overflowed, or the watch's next revision
//! was compacted) the task gets [`Note::Reread`] and reads etcd afresh. When the watch breaks it
//! reopens from the revision after the last delete it dispatched. While it is down, holders stay
//! protected by their session's lease-loss logic (`session.rs`). Memory is bounded: the ring by
//! entries and bytes, each task's queue by entries.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchFilterType, WatchOptions};
use tokio::sync::Notify;
use tokio::time::sleep;

use super::calls::Etcd;

/// Recent deletes kept for tasks that register behind the watch: at most this many...
const RING_ENTRIES: usize = 4096;
/// ...and at most this many bytes of keys.
const RING_BYTES: usize = 1 << 20;
/// Deletes queued for one task before it is told to read etcd afresh instead.
const QUEUE_MAX: usize = 1024;
/// Pause before reopening a broken watch.
const RETRY: Duration = Duration::from_millis(200);

/// What a task learns from the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Note {
    /// This key was deleted at this revision (above the task's `seen`).
    Deleted(Vec<u8>, i64),
    /// Deletes may have been missed: read etcd again, then [`Interest::reset`].
    Reread,
}

/// Where the hub routes deletes. Shared by the store's tasks; only its thread touches it.
pub(super) struct Hub {
    st: RefCell<HubState>,
}

struct HubState {
    root: Vec<u8>,
    /// Every delete at or below this revision has been dispatched.
    dispatched: i64,
    /// The ring holds every dispatched delete above this revision.
    floor: i64,
    ring: VecDeque<(Vec<u8>, i64)>,
    ring_bytes: usize,
    subs: HashMap<u64, Sub>,
    /// Registrations by key directory (`PREFIX/enc(key)/`).
    by_dir: HashMap<Vec<u8>, Vec<u64>>,
    next_id: u64,
}

struct Sub {
    dir: Vec<u8>,
    /// Only this key (a holder's own), else every key of `dir`.
    key: Option<Vec<u8>>,
    seen: i64,
    queue: VecDeque<(Vec<u8>, i64)>,
    reread: bool,
    notify: Rc<Notify>,
}

impl Sub {
    fn push(&mut self, key: &[u8], rev: i64) {
        if rev <= self.seen || self.reread || self.key.as_deref().is_some_and(|k| k != key) {
            return;
        }
        if self.queue.len() >= QUEUE_MAX {
            self.queue.clear();
            self.reread = true;
        } else {
            self.queue.push_back((key.to_vec(), rev));
        }
        self.notify.notify_one();
    }
}

impl Hub {
    /// A hub whose watch starts after revision `from` (read when the store started).
    pub(super) fn new(root: Vec<u8>, from: i64) -> Hub {
        Hub {
            st: RefCell::new(HubState {
                root,
                dispatched: from,
                floor: from,
                ring: VecDeque::new(),
                ring_bytes: 0,
                subs: HashMap::new(),
                by_dir: HashMap::new(),
                next_id: 0,
            }),
        }
    }

    /// Registers interest in deletes under `dir` (only of `key` when given) above revision
    /// `seen`, the revision at which the caller last read etcd.
    pub(super) fn register(self: &Rc<Self>, dir: &[u8], key: Option<&[u8]>, seen: i64) -> Interest {
        let notify = Rc::new(Notify::new());
        let mut st = self.st.borrow_mut();
        st.next_id += 1;
        let id = st.next_id;
        st.insert(
            id,
            dir.to_vec(),
            key.map(<[u8]>::to_vec),
            seen,
            notify.clone(),
        );
        Interest {
            hub: self.clone(),
            id,
            notify,
        }
    }

    /// The revision after which the watch must resume.
    fn dispatched(&self) -> i64 {
        self.st.borrow().dispatched
    }

    /// Routes one delete seen by the watch.
    fn deliver(&self, key: &[u8], rev: i64) {
        self.st.borrow_mut().deliver(key, rev);
    }

    /// The watch cannot resume where it stopped (compacted): it restarts after `rev`, and every
    /// registered task reads etcd again.
    fn reset(&self, rev: i64) {
        let mut st = self.st.borrow_mut();
        st.dispatched = rev;
        st.floor = rev;
        st.ring.clear();
        st.ring_bytes = 0;
        for s in st.subs.values_mut() {
            s.queue.clear();
            s.reread = true;
            s.notify.notify_one();
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        let st = self.st.borrow();
        debug_assert_eq!(
            st.subs.len(),
            st.by_dir.values().map(Vec::len).sum::<usize>()
        );
        st.subs.len()
    }
}

impl HubState {
    fn insert(
        &mut self,
        id: u64,
        dir: Vec<u8>,
        key: Option<Vec<u8>>,
        seen: i64,
        notify: Rc<Notify>,
    ) {
        let mut sub = Sub {
            dir,
            key,
            seen,
            queue: VecDeque::new(),
            reread: false,
            notify,
        };
        if seen < self.dispatched {
            if seen >= self.floor {
                // Replay what it missed (only deletes above `seen` that it cares about).
                for (k, r) in &self.ring {
                    if k.starts_with(&sub.dir) {
                        sub.push(k, *r);
                    }
                }
            } else {
                sub.reread = true;
                sub.notify.notify_one();
            }
        }
        self.by_dir.entry(sub.dir.clone()).or_default().push(id);
        self.subs.insert(id, sub);
    }

    fn remove(&mut self, id: u64) -> Option<Sub> {
        let sub = self.subs.remove(&id)?;
        if let Some(ids) = self.by_dir.get_mut(&sub.dir) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_dir.remove(&sub.dir);
            }
        }
        Some(sub)
    }

    fn deliver(&mut self, key: &[u8], rev: i64) {
        self.ring_bytes += key.len();
        self.ring.push_back((key.to_vec(), rev));
        while self.ring.len() > RING_ENTRIES || self.ring_bytes > RING_BYTES {
            let Some((k, r)) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= k.len();
            self.floor = self.floor.max(r);
        }
        self.dispatched = self.dispatched.max(rev);
        let Some(dir) = dir_of(&self.root, key) else {
            return;
        };
        let Some(ids) = self.by_dir.get(dir) else {
            return;
        };
        for id in ids {
            if let Some(s) = self.subs.get_mut(id) {
                s.push(key, rev);
            }
        }
    }
}

/// The directory `PREFIX/<first segment>/` of a key under `root`: a key is under a request
/// directory `PREFIX/enc(key)/` exactly when this is it (`enc` escapes `/`).
fn dir_of<'a>(root: &[u8], key: &'a [u8]) -> Option<&'a [u8]> {
    let rest = key.strip_prefix(root)?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    Some(&key[..root.len() + slash + 1])
}

/// A task's registration; dropping it (the task ended or was aborted) unregisters it.
pub(super) struct Interest {
    hub: Rc<Hub>,
    id: u64,
    notify: Rc<Notify>,
}

impl Interest {
    /// The next delete above `seen`, or [`Note::Reread`].
    pub(super) async fn next(&self) -> Note {
        loop {
            if let Some(n) = self.take() {
                return n;
            }
            self.notify.notified().await;
        }
    }

    fn take(&self) -> Option<Note> {
        let mut st = self.hub.st.borrow_mut();
        let s = st.subs.get_mut(&self.id)?;
        if s.reread {
            s.reread = false;
            s.queue.clear();
            return Some(Note::Reread);
        }
        s.queue.pop_front().map(|(k, r)| Note::Deleted(k, r))
    }

    /// The task read etcd again at revision `seen`: deletes at or below it no longer matter.
    pub(super) fn reset(&mut self, seen: i64) {
        let mut st = self.hub.st.borrow_mut();
        if let Some(s) = st.remove(self.id) {
            st.insert(self.id, s.dir, s.key, seen, s.notify);
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Ok(mut st) = self.hub.st.try_borrow_mut() {
            st.remove(self.id);
        }
    }
}

/// The hub's watch: deletes under the prefix, from the revision after the last one dispatched,
/// reopened whenever it breaks. Runs for the store's life.
pub(super) async fn run(etcd: Etcd, hub: Rc<Hub>) {
    let root = hub.st.borrow().root.clone();
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(hub.dispatched() + 1)
            .with_filters([WatchFilterType::NoPut]);
        let mut wc = etcd.client.watch_client();
        let mut compacted = false;
        if let Ok(mut stream) = etcd.call(wc.watch(root.clone(), Some(opts))).await {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    compacted = true;
                }
                if resp.canceled() {
                    break;
                }
                for ev in resp.events() {
                    if ev.event_type() == EventType::Delete
                        && let Some(kv) = ev.kv()
                    {
                        hub.deliver(kv.key(), kv.mod_revision());
                    }
                }
            }
        }
        sleep(RETRY).await;
        while compacted {
            // Restart from now; every task re-reads what it may have missed.
            let count = Some(GetOptions::new().with_prefix().with_count_only());
            match etcd.get(root.clone(), count).await {
                Ok(r) => {
                    hub.reset(r.header().map_or(0, |h| h.revision()));
                    compacted = false;
                }
                Err(_) => sleep(RETRY).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &[u8] = b"p/";

    fn hub(from: i64) -> Rc<Hub> {
        Rc::new(Hub::new(ROOT.to_vec(), from))
    }

    fn del(k: &str, r: i64) -> Note {
        Note::Deleted(k.as_bytes().to_vec(), r)
    }

    #[test]
    fn routes_by_dir_and_key_above_seen() {
        let h = hub(10);
        let waiter = h.register(b"p/a/", None, 10);
        let holder = h.register(b"p/a/", Some(b"p/a/1"), 12);
        let other = h.register(b"p/b/", None, 10);
        h.deliver(b"p/a/0", 11);
        h.deliver(b"p/a/1", 13);
        h.deliver(b"p/ab/0", 14);
        assert_eq!(waiter.take(), Some(del("p/a/0", 11)));
        assert_eq!(waiter.take(), Some(del("p/a/1", 13)));
        assert_eq!(waiter.take(), None);
        assert_eq!(holder.take(), Some(del("p/a/1", 13)));
        assert_eq!(holder.take(), None);
        assert_eq!(other.take(), None);
    }

    #[test]
    fn late_registration_replays_from_the_ring() {
        let h = hub(0);
        h.deliver(b"p/a/0", 5);
        h.deliver(b"p/b/0", 6);
        h.deliver(b"p/a/1", 7);
        let late = h.register(b"p/a/", None, 5);
        assert_eq!(late.take(), Some(del("p/a/1", 7)));
        assert_eq!(late.take(), None);
        let holder = h.register(b"p/a/", Some(b"p/a/0"), 4);
        assert_eq!(holder.take(), Some(del("p/a/0", 5)));
    }

    #[test]
    fn registration_behind_the_ring_must_reread() {
        let h = hub(0);
        for i in 0..RING_ENTRIES as i64 + 10 {
            h.deliver(format!("p/x/{i}").as_bytes(), i + 1);
        }
        let mut late = h.register(b"p/a/", None, 3);
        assert_eq!(late.take(), Some(Note::Reread));
        assert_eq!(late.take(), None);
        // Re-read at the current revision: nothing more to replay, new deletes arrive.
        late.reset(RING_ENTRIES as i64 + 10);
        h.deliver(b"p/a/9", RING_ENTRIES as i64 + 11);
        assert_eq!(late.take(), Some(del("p/a/9", RING_ENTRIES as i64 + 11)));
        // Just inside the ring's reach: replayed, not re-read.
        let floor = h.st.borrow().floor;
        let inside = h.register(b"p/a/", None, floor);
        assert_eq!(inside.take(), Some(del("p/a/9", RING_ENTRIES as i64 + 11)));
        // Too much to replay for one queue: re-read instead.
        assert_eq!(h.register(b"p/x/", None, floor).take(), Some(Note::Reread));
    }

    #[test]
    fn ring_is_bounded_by_bytes() {
        let h = hub(0);
        let big = vec![b'k'; 300 * 1024];
        for r in 1..=10 {
            let mut k = b"p/a/".to_vec();
            k.extend_from_slice(&big);
            h.deliver(&k, r);
        }
        let st = h.st.borrow();
        assert!(
            st.ring_bytes <= RING_BYTES && st.ring.len() == 3,
            "{}",
            st.ring.len()
        );
        assert_eq!(st.floor, 7);
    }

    #[test]
    fn a_full_queue_turns_into_a_reread() {
        let h = hub(0);
        let w = h.register(b"p/a/", None, 0);
        for r in 1..=QUEUE_MAX as i64 + 1 {
            h.deliver(b"p/a/x", r);
        }
        assert_eq!(w.take(), Some(Note::Reread));
        assert_eq!(w.take(), None);
    }

    #[test]
    fn compaction_makes_everyone_reread() {
        let h = hub(0);
        let a = h.register(b"p/a/", None, 0);
        let b = h.register(b"p/b/", Some(b"p/b/1"), 0);
        h.deliver(b"p/a/0", 1);
        h.reset(50);
        assert_eq!(a.take(), Some(Note::Reread));
        assert_eq!(b.take(), Some(Note::Reread));
        assert_eq!(a.take(), None);
        let late = h.register(b"p/a/", None, 40);
        assert_eq!(late.take(), Some(Note::Reread));
        assert_eq!(h.dispatched(), 50);
    }

    #[test]
    fn dropping_an_interest_unregisters_it() {
        let h = hub(0);
        let a = h.register(b"p/a/", None, 0);
        let b = h.register(b"p/a/", Some(b"p/a/1"), 0);
        assert_eq!(h.registered(), 2);
        drop(a);
        assert_eq!(h.registered(), 1);
        drop(b);
        assert_eq!(h.registered(), 0);
        assert!(h.st.borrow().by_dir.is_empty());
    }

    #[test]
    fn next_waits_for_a_delete() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let h = hub(0);
            let w = h.register(b"p/a/", None, 0);
            let h2 = h.clone();
            tokio::task::spawn_local(async move {
                tokio::task::yield_now().await;
                h2.deliver(b"p/a/0", 3);
            });
            assert_eq!(w.next().await, del("p/a/0", 3));
        });
    }

    #[test]
    fn dir_of_takes_the_first_segment() {
        assert_eq!(dir_of(ROOT, b"p/a/1"), Some(&b"p/a/"[..]));
        assert_eq!(dir_of(ROOT, b"p/a/b/c"), Some(&b"p/a/"[..]));
        assert_eq!(dir_of(ROOT, b"p/a"), None);
        assert_eq!(dir_of(ROOT, b"q/a/1"), None);
    }
}
