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

use super::identity::{Identities, Identity};
use crate::table::{ConnId, Name};

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

/// Who is behind `conn`, for a log line (also after it closed, if its locks were kept).
fn who_text(idents: &Identities, conn: ConnId) -> String {
    let w = idents.who(conn);
    if w.name.is_none() && w.peer.is_none() {
        return format!("connection {}", conn.0);
    }
    describe(w.name.as_deref(), w.peer.as_deref(), w.pid)
}

/// A holder's lock was released by someone else's forced unlock.
pub(super) fn forced(idents: &Identities, key: &str, id: &str, holder: ConnId, by: ConnId) {
    if enabled!(Level::INFO) {
        info!(
            key,
            id,
            holder = who_text(idents, holder),
            by = who_text(idents, by),
            "lock force-released"
        );
    }
}

/// A holder's TTL ran out.
pub(super) fn expired(idents: &Identities, key: &str, id: &str, holder: ConnId) {
    if enabled!(Level::INFO) {
        info!(
            key,
            id,
            holder = who_text(idents, holder),
            "lock expired (TTL)"
        );
    }
}

/// Connection `conn` (whose identity the caller took out) is closing: the locks its close
/// releases, as `holds` lists them (the store, when it can tell). Asks only when `info` is on.
pub(super) fn close_releases(
    conn: ConnId,
    ident: Option<&Identity>,
    holds: impl FnOnce() -> Vec<(Name, Name)>,
) {
    if !enabled!(Level::INFO) {
        return;
    }
    let holds = holds();
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

/// An admin act refused by `--restrict-admin`, with who tried.
pub(super) fn admin_refused(idents: &Identities, conn: ConnId, act: &str, key: &str) {
    if enabled!(Level::INFO) {
        info!(
            key,
            by = who_text(idents, conn),
            "{act} refused: an admin act (Unix socket or auth token needed)"
        );
    }
}

/// A lock was granted (`debug`).
pub(super) fn granted(idents: &Identities, key: &str, id: &str, conn: ConnId, token: u64) {
    if enabled!(Level::DEBUG) {
        debug!(
            key,
            id,
            token,
            holder = who_text(idents, conn),
            "lock granted"
        );
    }
}

/// A lock was released by an unlock (`debug`).
pub(super) fn unlocked(idents: &Identities, key: &str, id: Option<&str>, by: Option<ConnId>) {
    if enabled!(Level::DEBUG) {
        let by = by.map_or_else(String::new, |c| who_text(idents, c));
        debug!(key, id, by, "lock released");
    }
}
