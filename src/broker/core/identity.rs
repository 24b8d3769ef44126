//! Who is behind each connection: its peer (set by the transport: an address, or a Unix
//! socket peer's pid and uid), the name and pid it gave (`hello`, or the Node client's
//! `version`), and when it connected. `lock-info` and `watch` show them beside each holder and
//! waiter, which is what "who holds my lock, and since when?" needs.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Core, ms};
use crate::proto::Who;
use crate::table::ConnId;
use std::borrow::Cow;

/// A connection's identity, kept in its `ConnState`.
#[derive(Debug, Default)]
pub(super) struct Identity {
    pub peer: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub pid: Option<u64>,
}

impl Core {
    /// The transport tells who the peer is (`127.0.0.1:5000`, `pid 42 uid 1000`).
    pub(crate) fn set_peer(&mut self, id: ConnId, peer: String) {
        if let Some(c) = self.state_mut(id) {
            c.ident.peer = Some(peer.into());
        }
    }

    /// The peer as set by [`set_peer`](Self::set_peer), for logs.
    pub(crate) fn peer(&self, id: ConnId) -> Option<&str> {
        self.state(id).and_then(|c| c.ident.peer.as_deref())
    }

    /// The name the client gave, for logs.
    pub(crate) fn client_name(&self, id: ConnId) -> Option<&str> {
        self.state(id).and_then(|c| c.ident.name.as_deref())
    }

    /// `hello`: names the connection. A later `hello` replaces the name.
    pub(super) fn hello(&mut self, slot: usize, name: &str, pid: Option<u64>) {
        if let Some(c) = self.conn_at(slot) {
            c.ident.name = Some(name.into());
            if pid.is_some() {
                c.ident.pid = pid;
            }
        }
    }

    /// Who holds or waits through connection `id`, also after it closed if its locks were
    /// kept (its peer then reads `... (disconnected)`).
    /// Lock id `id` of a request made on `owner`, as `viewer` may see it: under
    /// `restrict_admin` an id is a capability (whoever knows it may unlock or extend the lock),
    /// so it is shown only to the connection that made the request and to admins; to anyone
    /// else it is empty (sent as `null`).
    pub(super) fn shown_id<'s>(
        &self,
        viewer: ConnId,
        owner: Option<ConnId>,
        id: &'s str,
    ) -> &'s str {
        let admin = self.state(viewer).is_some_and(|c| c.admin);
        if admin || owner == Some(viewer) {
            id
        } else {
            ""
        }
    }

    pub(super) fn who(&self, id: ConnId) -> Who<'_> {
        let ident = match self.state(id) {
            Some(c) => &c.ident,
            None => match self.departed.get(&id) {
                Some(i) => i,
                None => return Who::default(),
            },
        };
        Who {
            peer: ident.peer.as_deref().map(Cow::Borrowed),
            name: ident.name.as_deref().map(Cow::Borrowed),
            pid: ident.pid,
        }
    }

    /// Keeps the identity of a closed connection whose locks outlive it; forgets those whose
    /// locks are all gone, every time the list doubles (so the cost stays amortised O(1)).
    pub(super) fn depart(&mut self, id: ConnId, mut ident: Identity) {
        if !self.store.table().is_some_and(|t| t.knows_conn(id)) {
            return;
        }
        let peer = ident.peer.as_deref().unwrap_or("?");
        ident.peer = Some(format!("{peer} (disconnected)").into());
        self.departed.insert(id, ident);
        if self.departed.len() >= self.prune_departed_at {
            let store = &self.store;
            self.departed
                .retain(|c, _| store.table().is_some_and(|t| t.knows_conn(*c)));
            self.prune_departed_at = (self.departed.len() * 2).max(64);
        }
    }
}

/// Unix milliseconds of `then`, an instant before `now`, by the wall clock read as `wall`
/// at `now`. The core never reads a clock of its own.
pub(super) fn wall_ms(wall: SystemTime, now: Instant, then: Instant) -> u64 {
    let wall_now = wall.duration_since(UNIX_EPOCH).map_or(0, ms);
    wall_now.saturating_sub(ms(now.saturating_duration_since(then)))
}
