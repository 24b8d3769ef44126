//! Who is behind each connection: its peer (set by the transport: an address, or a Unix
//! socket peer's pid and uid), the name and pid it gave (`hello`, or the Node client's
//! `version`), and when it connected. `lock-info` and `watch` show them beside each holder and
//! waiter, which is what "who holds my lock, and since when?" needs.
//!
//! [`Identities`] keeps them for open connections, by slot like the core's connection states,
//! and for closed connections whose locks outlive them, until those locks are gone.

use std::borrow::Cow;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ahash::RandomState;
use hashbrown::HashMap;

use super::{conn_slot, ms, slot_entry};
use crate::proto::Who;
use crate::table::ConnId;

/// A connection's identity.
#[derive(Debug, Default)]
pub(super) struct Identity {
    pub peer: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub pid: Option<u64>,
}

/// An open connection's identity, and when it opened.
struct Live {
    id: ConnId,
    ident: Identity,
    opened: Instant,
}

/// The identities of open connections, and of closed ones whose locks were kept.
pub(super) struct Identities {
    /// By the low 32 bits of the `ConnId`, as `Core::conns`.
    live: Vec<Option<Live>>,
    /// Entries of `live` that are set.
    open: usize,
    /// Identities of closed connections whose locks outlive them (kept after disconnect), so
    /// `lmx info` still says who took them; pruned as those locks go.
    departed: HashMap<ConnId, Identity, RandomState>,
    prune_departed_at: usize,
}

impl Identities {
    pub(super) fn new() -> Self {
        Identities {
            live: Vec::new(),
            open: 0,
            departed: HashMap::default(),
            prune_departed_at: 64,
        }
    }

    /// Connection `id` opened at `now`, nothing known of it yet.
    pub(super) fn open(&mut self, id: ConnId, now: Instant) {
        let live = Live {
            id,
            ident: Identity::default(),
            opened: now,
        };
        if slot_entry(&mut self.live, id).replace(live).is_none() {
            self.open += 1;
        }
    }

    /// Connection `id` closed: its identity, taken out (see [`depart`](Self::depart)).
    pub(super) fn close(&mut self, id: ConnId) -> Option<Identity> {
        self.get(id)?;
        let live = self.live.get_mut(conn_slot(id))?.take()?;
        self.open -= 1;
        // The last connection is gone: give back what a flood of them made the list grow to.
        if self.open == 0 && self.live.capacity() > 1024 {
            self.live = Vec::new();
        }
        Some(live.ident)
    }

    fn get(&self, id: ConnId) -> Option<&Identity> {
        let live = self.live.get(conn_slot(id))?.as_ref()?;
        (live.id == id).then_some(&live.ident)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Identity> {
        let live = self.live.get_mut(conn_slot(id))?.as_mut()?;
        (live.id == id).then_some(&mut live.ident)
    }

    /// The transport tells who the peer is (`127.0.0.1:5000`, `pid 42 uid 1000`).
    pub(super) fn set_peer(&mut self, id: ConnId, peer: String) {
        if let Some(i) = self.get_mut(id) {
            i.peer = Some(peer.into());
        }
    }

    pub(super) fn peer(&self, id: ConnId) -> Option<&str> {
        self.get(id).and_then(|i| i.peer.as_deref())
    }

    pub(super) fn name(&self, id: ConnId) -> Option<&str> {
        self.get(id).and_then(|i| i.name.as_deref())
    }

    /// `hello` (a name, maybe a pid), or `version` (maybe a pid): a later one replaces the
    /// name, and the pid when it gives one.
    pub(super) fn introduce(&mut self, id: ConnId, name: Option<&str>, pid: Option<u64>) {
        if let Some(i) = self.get_mut(id) {
            if let Some(name) = name {
                i.name = Some(name.into());
            }
            if pid.is_some() {
                i.pid = pid;
            }
        }
    }

    /// Who holds or waits through connection `id`, also after it closed if its locks were
    /// kept (its peer then reads `... (disconnected)`).
    pub(super) fn who(&self, id: ConnId) -> Who<'_> {
        let Some(ident) = self.get(id).or_else(|| self.departed.get(&id)) else {
            return Who::default();
        };
        Who {
            peer: ident.peer.as_deref().map(Cow::Borrowed),
            name: ident.name.as_deref().map(Cow::Borrowed),
            pid: ident.pid,
        }
    }

    /// The open connections, in slot order, with when each opened.
    pub(super) fn open_since(&self) -> impl Iterator<Item = (ConnId, Instant)> + '_ {
        self.live.iter().flatten().map(|l| (l.id, l.opened))
    }

    /// Keeps the identity of a closed connection whose locks outlive it (`holds` says which
    /// connections still have locks); forgets those whose locks are all gone, every time the
    /// list doubles (so the cost stays amortised O(1)).
    pub(super) fn depart(
        &mut self,
        id: ConnId,
        mut ident: Identity,
        holds: impl Fn(ConnId) -> bool,
    ) {
        if !holds(id) {
            return;
        }
        let peer = ident.peer.as_deref().unwrap_or("?");
        ident.peer = Some(format!("{peer} (disconnected)").into());
        self.departed.insert(id, ident);
        if self.departed.len() >= self.prune_departed_at {
            self.departed.retain(|c, _| holds(*c));
            self.prune_departed_at = (self.departed.len() * 2).max(64);
        }
    }
}

/// The connection a listing is for: lock ids are shown to it as its rights allow.
#[derive(Clone, Copy)]
pub(super) struct Viewer {
    pub id: ConnId,
    pub admin: bool,
}

impl Viewer {
    /// Lock id `id` of a request made on `owner`, as this viewer may see it: under
    /// `restrict_admin` an id is a capability (whoever knows it may unlock or extend the
    /// lock), so it is shown only to the connection that made the request and to admins; to
    /// anyone else it is empty (sent as `null`).
    pub(super) fn shown(self, owner: Option<ConnId>, id: &str) -> &str {
        if self.admin || owner == Some(self.id) {
            id
        } else {
            ""
        }
    }
}

/// Unix milliseconds of `then`, an instant before `now`, by the wall clock read as `wall`
/// at `now`. The core never reads a clock of its own.
pub(super) fn wall_ms(wall: SystemTime, now: Instant, then: Instant) -> u64 {
    let wall_now = wall.duration_since(UNIX_EPOCH).map_or(0, ms);
    wall_now.saturating_sub(ms(now.saturating_duration_since(then)))
}
