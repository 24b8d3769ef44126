//! Lock events in the broker's log, so that "who took my lock?" has an answer after the fact:
//!
//! - at `info`: a forced unlock (who forced, whose lock), a TTL expiry, a lock released because
//!   its connection closed, an admin act refused;
//! - at `debug`: every grant and every release.
//!
//! Keys, lock ids, client names and peers come from the network: they are logged as `Debug`
//! fields (`key="a\u{1b}b"`), quoted with control characters escaped, so a log line can be
//! neither forged nor turned into terminal escapes. Nothing here runs unless its level is on.

use tracing::{Level, debug, enabled, info};

use super::identity::Identity;
use super::{Core, Reject};
use crate::table::ConnId;

/// `name (peer)`, or what is known of it.
fn describe(name: Option<&str>, peer: Option<&str>, pid: Option<u64>) -> String {
    let mut s = name.unwrap_or("(unnamed)").to_string();
    match (peer, pid) {
        (Some(p), _) => s.push_str(&format!(" ({p})")),
        (None, Some(pid)) => s.push_str(&format!(" (pid {pid})")),
        (None, None) => {}
    }
    s
}

impl Core {
    /// Who is behind `conn`, for a log line (also after it closed, if its locks were kept).
    fn who_text(&self, conn: ConnId) -> String {
        let w = self.who(conn);
        if w.name.is_none() && w.peer.is_none() {
            return format!("connection {}", conn.0);
        }
        describe(w.name.as_deref(), w.peer.as_deref(), w.pid)
    }

    /// A holder's lock was released by someone else's forced unlock.
    pub(super) fn log_forced(&self, key: &str, id: &str, holder: ConnId, by: ConnId) {
        if enabled!(Level::INFO) {
            info!(
                key,
                id,
                holder = self.who_text(holder),
                by = self.who_text(by),
                "lock force-released"
            );
        }
    }

    /// A holder's TTL ran out.
    pub(super) fn log_expired(&self, key: &str, id: &str, holder: ConnId) {
        if enabled!(Level::INFO) {
            info!(
                key,
                id,
                holder = self.who_text(holder),
                "lock expired (TTL)"
            );
        }
    }

    /// Connection `conn` (whose identity the caller took out of its state) is closing: the
    /// locks its close releases. Asks the table only when `info` is on.
    pub(super) fn log_close_releases(&self, conn: ConnId, ident: Option<&Identity>) {
        if !enabled!(Level::INFO) {
            return;
        }
        let Some(table) = self.store.table() else {
            return;
        };
        let holds = table.releasable_holds(conn);
        if holds.is_empty() {
            return;
        }
        let holder = ident.map_or_else(
            || format!("connection {}", conn.0),
            |i| describe(i.name.as_deref(), i.peer.as_deref(), i.pid),
        );
        for (key, id) in holds {
            info!(
                key = &*key,
                id = &*id,
                holder,
                "lock released: its connection closed"
            );
        }
    }

    /// An admin act refused by `--restrict-admin`: counted, and logged with who tried.
    pub(super) fn refuse_admin(&mut self, conn: ConnId, act: &str, key: &str) {
        self.reject(Reject::Forbidden);
        if enabled!(Level::INFO) {
            info!(
                key,
                by = self.who_text(conn),
                "{act} refused: an admin act (Unix socket or auth token needed)"
            );
        }
    }

    /// A lock was granted (`debug`).
    pub(super) fn log_granted(&self, key: &str, id: &str, conn: ConnId, token: u64) {
        if enabled!(Level::DEBUG) {
            debug!(key, id, token, holder = self.who_text(conn), "lock granted");
        }
    }

    /// A lock was released by an unlock (`debug`).
    pub(super) fn log_unlocked(&self, key: &str, id: Option<&str>, by: Option<ConnId>) {
        if enabled!(Level::DEBUG) {
            let by = by.map_or_else(String::new, |c| self.who_text(c));
            debug!(key, id, by, "lock released");
        }
    }
}
