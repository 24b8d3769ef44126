//! Encoding, both directions: [`Reply::encode`] (the broker's side) and [`Request::encode`]
//! (the client's side). One JSON object per call, appended to the caller's buffer with no
//! trailing newline (NDJSON adds `\n`, WebSocket sends the object as one text frame).
//!
//! Field names are written as literals and numbers with `itoa`, so a lock or unlock reply costs
//! one pass over the echoed strings and no allocation beyond the buffer's own growth. Every
//! reply starts with `type` and echoes `uuid` / `key`; `error` appears only on failure because
//! the Node client treats any `error` field as a failed request.

pub use super::reply::{HolderInfo, LockOutcome, ManyOutcome, Reply, Stats, WaiterInfo, Who};
use super::{AcquireMany, CancelReason, LockRequest, Mode, Request, Ttl};
use super::{DecodeError, PROTOCOL_VERSION, RwOp};
use std::time::Duration;

/// Whole milliseconds, as every duration travels.
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Request<'_> {
    /// Appends this request as one JSON object, as the client sends it. Optional fields at
    /// their default are left out, except the ones the npm broker expects on every `lock`
    /// (`max`, `keepLocksAfterDeath`, `retryCount`); decoding the bytes gives `self` back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Obj::new(out);
        if let Request::Inspect { uuid, command } = self {
            w.str("inspectCommand", command).opt_str("uuid", *uuid);
            w.finish();
            return;
        }
        w.str("type", self.ty());
        match self {
            Request::Version {
                value,
                keep_locks_after_death,
                pid,
            } => {
                w.str("value", value)
                    .bool("keepLocksAfterDeath", *keep_locks_after_death)
                    .opt_u64("pid", *pid);
            }
            Request::Hello { name, pid } => {
                w.str("name", name).opt_u64("pid", *pid);
            }
            Request::Watch { uuid, interval_ms } => {
                w.str("uuid", uuid).opt_u64("intervalMs", *interval_ms);
            }
            Request::VersionMismatchConfirmed | Request::Inspect { .. } => {}
            Request::Lock(LockRequest {
                uuid,
                key,
                ttl,
                max,
                try_lock,
                wait_timeout,
                mode,
                keep_locks_after_death,
                retry_count,
            }) => {
                w.str("uuid", uuid).str("key", key).ttl(*ttl);
                match max {
                    Some(m) => w.u64("max", u64::from(*m)),
                    None => w.null("max"),
                };
                w.bool("keepLocksAfterDeath", *keep_locks_after_death)
                    .u64("retryCount", u64::from(*retry_count));
                w.wait(*try_lock, *wait_timeout);
                if *mode != Mode::Exclusive {
                    w.str("mode", mode.as_str());
                }
            }
            Request::LockReceived { uuid, key }
            | Request::Cancel { uuid, key, .. }
            | Request::LockInfo { uuid, key }
            | Request::Rw { uuid, key, .. } => {
                w.str("uuid", uuid).str("key", key);
            }
            Request::Unlock {
                uuid,
                key,
                lock_id,
                force,
            } => {
                w.str("uuid", uuid)
                    .str("key", key)
                    .opt_str("_uuid", *lock_id)
                    .bool("force", *force);
            }
            Request::Extend {
                uuid,
                key,
                lock_id,
                ttl,
            } => {
                w.str("uuid", uuid)
                    .str("key", key)
                    .str("_uuid", lock_id)
                    .ttl(*ttl);
            }
            Request::AcquireMany(AcquireMany {
                uuid,
                keys,
                ttl,
                try_lock,
                wait_timeout,
                keep_locks_after_death,
            }) => {
                w.str("uuid", uuid).field("keys");
                write_list(w.out, keys.iter(), |o, k| write_str(o, k));
                w.bool("keepLocksAfterDeath", *keep_locks_after_death)
                    .ttl(*ttl)
                    .wait(*try_lock, *wait_timeout);
            }
            Request::ReleaseMany { uuid, lock_id } => {
                w.str("uuid", uuid).str("lockUuid", lock_id);
            }
            Request::Ls { uuid, after } => {
                w.str("uuid", uuid).opt_str("after", *after);
            }
            Request::Ping { uuid } | Request::SystemStats { uuid } => {
                w.str("uuid", uuid);
            }
            Request::Auth { uuid, token } => {
                w.opt_str("uuid", *uuid).str("token", token);
            }
        }
        w.finish();
    }
}

impl CancelReason {
    /// The request `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Rejected => "lock-received-rejected",
            CancelReason::ClientTimeout => "lock-client-timeout",
            CancelReason::ClientError => "lock-client-error",
        }
    }
}

impl Reply<'_> {
    /// Appends this reply as one JSON object.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Obj::new(out);
        match self {
            Reply::Lock {
                uuid,
                key,
                outcome,
                lock_request_count,
                readers_count,
            } => {
                w.head("lock", uuid, key)
                    .bool("acquired", matches!(outcome, LockOutcome::Granted { .. }));
                w.u64("lockRequestCount", *lock_request_count)
                    .u64("readersCount", *readers_count);
                match outcome {
                    LockOutcome::Granted { fencing_token } => {
                        w.opt_u64("fencingToken", *fencing_token)
                    }
                    LockOutcome::Queued => w.bool("queued", true),
                    LockOutcome::Refused => w.bool("queued", false),
                    LockOutcome::NotGranted => &mut w,
                };
            }
            Reply::LockTimedOut {
                uuid,
                key,
                waited_ms,
            } => {
                w.head("lock", uuid, key)
                    .bool("acquired", false)
                    .bool("timedOut", true);
                w.timeout_error(*waited_ms);
            }
            Reply::Reelection {
                uuid,
                key,
                lock_request_count,
            } => {
                w.head("lock", uuid, key)
                    .u64("lockRequestCount", *lock_request_count)
                    .bool("reelection", true);
            }
            Reply::Unlock {
                uuid,
                key,
                unlocked,
                lock_request_count,
                lost,
                error,
                warning,
            } => {
                w.head("unlock", uuid, key)
                    .bool("unlocked", *unlocked)
                    .u64("lockRequestCount", *lock_request_count);
                if *lost {
                    w.bool("lost", true);
                }
                w.opt_str("error", *error).opt_str("warning", *warning);
            }
            Reply::Extend {
                uuid,
                key,
                extended,
                error,
            } => {
                w.head("extend", uuid, key)
                    .bool("extended", *extended)
                    .opt_str("error", *error);
            }
            Reply::AcquireMany {
                uuid,
                lock_id,
                outcome,
            } => {
                w.str("type", "acquire-many").str("uuid", uuid);
                w.bool("acquired", matches!(outcome, ManyOutcome::Granted { .. }))
                    .str("lockUuid", lock_id);
                match outcome {
                    ManyOutcome::Granted { fencing_tokens } => {
                        w.field("fencingTokens");
                        let mut t = Obj::new(w.out);
                        for &(k, tok) in fencing_tokens.iter() {
                            t.sep();
                            write_str(t.out, k);
                            t.out.push(b':');
                            t.out
                                .extend_from_slice(itoa::Buffer::new().format(tok).as_bytes());
                        }
                        t.finish();
                    }
                    ManyOutcome::Queued => {
                        w.bool("queued", true);
                    }
                    ManyOutcome::Refused { contended_key } => {
                        w.bool("queued", false)
                            .opt_str("contendedKey", *contended_key);
                    }
                    ManyOutcome::TimedOut { waited_ms } => {
                        w.bool("timedOut", true).timeout_error(*waited_ms);
                    }
                }
            }
            Reply::ReleaseMany {
                uuid,
                lock_id,
                released,
                error,
            } => {
                w.str("type", "release-many")
                    .str("uuid", uuid)
                    .str("lockUuid", lock_id);
                w.bool("released", *released).opt_str("error", *error);
            }
            Reply::Ls { uuid, keys, next } => {
                w.str("type", "ls").str("uuid", uuid).field("ls_result");
                write_list(w.out, keys.iter(), |o, k| write_str(o, k));
                w.opt_str("next", *next);
            }
            Reply::LockInfo {
                uuid,
                key,
                is_locked,
                lock_request_count,
                readers_count,
                max,
                holders,
                waiters,
                truncated,
            } => {
                w.str("type", "lock-info-response")
                    .str("uuid", uuid)
                    .str("key", key)
                    .bool("lockInfo", true);
                w.bool("isLocked", *is_locked).field("lockholderUUIDs");
                write_list(w.out, holders.iter(), |o, h| write_lock_id(o, &h.id));
                w.u64("lockRequestCount", *lock_request_count)
                    .u64("readersCount", *readers_count);
                w.opt_u64("max", max.map(u64::from)).field("holders");
                write_list(w.out, holders.iter(), |o, h| {
                    let mut ho = Obj::new(o);
                    ho.lock_id("id", &h.id)
                        .opt_u64("fencingToken", h.fencing_token)
                        .str("mode", h.mode.as_str());
                    match h.ttl_remaining {
                        Some(d) => ho.u64("ttlRemaining", ms(d)),
                        None => ho.null("ttlRemaining"),
                    };
                    ho.opt_u64("heldSince", h.held_since_ms).who(&h.who);
                    ho.finish();
                });
                if *truncated {
                    w.bool("truncated", true);
                }
                w.field("waiters");
                write_list(w.out, waiters.iter(), |o, x| {
                    let mut wo = Obj::new(o);
                    wo.lock_id("id", &x.id)
                        .str("mode", x.mode.as_str())
                        .opt_u64("waitingSince", x.waiting_since_ms)
                        .who(&x.who);
                    wo.finish();
                });
            }
            Reply::Pong {
                uuid,
                server_timestamp_ms,
                version,
            } => {
                w.str("type", "pong")
                    .str("uuid", uuid)
                    .bool("ping", true)
                    .u64("serverTimestamp", *server_timestamp_ms)
                    .opt_str("version", *version);
            }
            Reply::SystemStats { uuid, stats } => {
                w.str("type", "system-stats-response")
                    .str("uuid", uuid)
                    .field("stats");
                let mut s = Obj::new(w.out);
                s.u64("keys", stats.keys)
                    .u64("holders", stats.holders)
                    .u64("waiters", stats.waiters);
                s.u64("connections", stats.connections)
                    .u64("grants", stats.grants)
                    .opt_u64("pid", stats.pid)
                    .opt_u64("uptimeMs", stats.uptime_ms)
                    .finish();
            }
            Reply::Auth {
                uuid,
                authenticated,
                error,
            } => {
                w.str("type", "auth")
                    .opt_str("uuid", *uuid)
                    .bool("authenticated", *authenticated);
                w.opt_str("error", *error);
            }
            Reply::VersionMismatch { client_version } => {
                w.str("type", "version-mismatch").field("versions");
                let mut v = Obj::new(w.out);
                v.str("clientVersion", client_version)
                    .str("brokerVersion", PROTOCOL_VERSION)
                    .finish();
            }
            Reply::Rw {
                op,
                uuid,
                key,
                readers_count,
            } => {
                w.head(op.reply_type(), uuid, key);
                if matches!(
                    op,
                    RwOp::RegisterWriteFlagCheck | RwOp::RegisterWriteFlagAndReadersCheck
                ) {
                    w.bool("writerFlag", false)
                        .u64("readersCount", *readers_count);
                }
            }
            Reply::BroadcastResult { uuid, key } => {
                w.head("broadcast-result", uuid, key);
            }
            Reply::Inspect { uuid, result } => {
                w.str("type", "inspect")
                    .opt_str("uuid", *uuid)
                    .u64("inspectResult", *result);
            }
            Reply::Error {
                ty,
                uuid,
                key,
                error,
            } => {
                w.str("type", ty.unwrap_or("error"))
                    .opt_str("uuid", *uuid)
                    .opt_str("key", *key);
                if let Some(flag) = ty.and_then(failure_flag) {
                    w.bool(flag, false);
                }
                w.str("error", error);
            }
        }
        w.finish();
    }
}

/// The success flag the Node client reads for this request type.
fn failure_flag(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "lock" | "acquire-many" => "acquired",
        "unlock" => "unlocked",
        "extend" => "extended",
        "release-many" => "released",
        "auth" => "authenticated",
        _ => return None,
    })
}

/// The error reply for a message that failed to decode, echoing what could be read of it.
pub fn decode_error(e: &DecodeError, out: &mut Vec<u8>) {
    let msg = e.kind.to_string();
    let reply = Reply::Error {
        ty: e.ty.as_deref(),
        uuid: e.uuid.as_deref(),
        key: e.key.as_deref(),
        error: &msg,
    };
    reply.encode(out);
}

/// Object writer; field names are trusted literals, values are escaped.
pub(crate) struct Obj<'o> {
    pub(crate) out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Obj<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }
    fn sep(&mut self) {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
    }
    pub(crate) fn field(&mut self, name: &'static str) -> &mut Self {
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self
    }
    pub(crate) fn str(&mut self, name: &'static str, v: &str) -> &mut Self {
        self.field(name);
        write_str(self.out, v);
        self
    }
    pub(crate) fn opt_str(&mut self, name: &'static str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            self.str(name, v);
        }
        self
    }
    pub(crate) fn u64(&mut self, name: &'static str, v: u64) -> &mut Self {
        self.field(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }
    pub(crate) fn opt_u64(&mut self, name: &'static str, v: Option<u64>) -> &mut Self {
        if let Some(v) = v {
            self.u64(name, v);
        }
        self
    }
    pub(crate) fn bool(&mut self, name: &'static str, v: bool) -> &mut Self {
        self.field(name);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        self
    }
    /// A lock id of `lock-info` or `watch`: `null` when hidden (empty, see
    /// [`HolderInfo::id`]).
    pub(crate) fn lock_id(&mut self, name: &'static str, v: &str) -> &mut Self {
        self.field(name);
        write_lock_id(self.out, v);
        self
    }
    pub(crate) fn null(&mut self, name: &'static str) -> &mut Self {
        self.field(name);
        self.out.extend_from_slice(b"null");
        self
    }
    /// `ttl`: left out for the broker's default, `null` for never.
    /// A connection's identity fields; absent ones are left out.
    pub(crate) fn who(&mut self, who: &Who<'_>) -> &mut Self {
        self.opt_str("peer", who.peer.as_deref())
            .opt_str("name", who.name.as_deref())
            .opt_u64("pid", who.pid)
    }
    fn ttl(&mut self, ttl: Ttl) -> &mut Self {
        match ttl {
            Ttl::BrokerDefault => self,
            Ttl::Never => self.null("ttl"),
            Ttl::After(d) => self.u64("ttl", ms(d)),
        }
    }
    /// `wait:false` for a try-lock, and the broker-side wait time-out if any.
    fn wait(&mut self, try_lock: bool, wait_timeout: Option<u64>) -> &mut Self {
        if try_lock {
            self.bool("wait", false);
        }
        self.opt_u64("waitTimeout", wait_timeout)
    }
    fn head(&mut self, ty: &'static str, uuid: &str, key: &str) -> &mut Self {
        self.str("type", ty).str("uuid", uuid).str("key", key)
    }
    fn timeout_error(&mut self, ms: u64) -> &mut Self {
        self.field("error");
        self.out
            .extend_from_slice(b"\"lock request timed out after ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
        self.out.extend_from_slice(b" ms\"");
        self
    }
    pub(crate) fn finish(&mut self) {
        self.out.push(b'}');
    }
}

pub(crate) fn write_list<T>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = T>,
    mut each: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

/// A lock id as `lock-info` and `watch` show it: a string, or `null` when the broker hides it
/// (an empty id; see [`HolderInfo::id`]).
pub(crate) fn write_lock_id(out: &mut Vec<u8>, id: &str) {
    if id.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, id);
    }
}

/// Writes `s` as a JSON string: `"` and `\` backslash-escaped, control characters below 0x20
/// as `\u00XX`, everything else (all of UTF-8) verbatim.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}
