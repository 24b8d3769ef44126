//! Reply encoding: one JSON object per call, appended to the caller's buffer with no trailing
//! newline (NDJSON adds `\n`, WebSocket sends the object as one text frame).
//!
//! Field names are written as literals and numbers with `itoa`, so a lock or unlock reply costs
//! one pass over the echoed strings and no allocation beyond the buffer's own growth. Every
//! reply starts with `type` and echoes `uuid` / `key`; `error` appears only on failure because
//! the Node client treats any `error` field as a failed request.

use super::{DecodeError, Mode, PROTOCOL_VERSION, RwOp};

/// Immediate answer to a `lock` (or the later push with the same `uuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    Granted {
        fencing_token: u64,
    },
    /// Enqueued: a push with `acquired:true` follows (or a timeout).
    Queued,
    /// `wait:false` and not grantable now: never queued.
    Refused,
}

/// Answer to an `acquire-many`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManyOutcome<'a> {
    Granted {
        fencing_tokens: &'a [(&'a str, u64)],
    },
    Queued,
    Refused {
        contended_key: Option<&'a str>,
    },
    TimedOut {
        waited_ms: u64,
    },
}

/// One holder in a `lock-info-response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderInfo<'a> {
    pub id: &'a str,
    pub fencing_token: u64,
    pub mode: Mode,
    /// `None`: holds without expiry.
    pub ttl_remaining: Option<u64>,
}

/// Broker-wide counters for `system-stats-response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub keys: u64,
    pub holders: u64,
    pub waiters: u64,
    pub connections: u64,
    pub grants: u64,
}

/// Every reply shape the broker sends (docs/protocol.md shows each on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    Lock {
        uuid: &'a str,
        key: &'a str,
        outcome: LockOutcome,
        lock_request_count: u64,
        readers_count: u64,
    },
    /// Pushed when a broker-side `waitTimeout` expires.
    LockTimedOut {
        uuid: &'a str,
        key: &'a str,
        waited_ms: u64,
    },
    /// 0.2.x re-election push: the waiter was dequeued and must re-send its `lock`.
    Reelection {
        uuid: &'a str,
        key: &'a str,
        lock_request_count: u64,
    },
    /// `lost`: the lock had already expired or been forced away (then `unlocked` is false).
    Unlock {
        uuid: &'a str,
        key: &'a str,
        unlocked: bool,
        lock_request_count: u64,
        lost: bool,
        error: Option<&'a str>,
        warning: Option<&'a str>,
    },
    Extend {
        uuid: &'a str,
        key: &'a str,
        extended: bool,
        error: Option<&'a str>,
    },
    /// `lock_id` is the `uuid` of the `acquire-many`.
    AcquireMany {
        uuid: &'a str,
        lock_id: &'a str,
        outcome: ManyOutcome<'a>,
    },
    ReleaseMany {
        uuid: &'a str,
        lock_id: &'a str,
        released: bool,
        error: Option<&'a str>,
    },
    Ls {
        uuid: &'a str,
        keys: &'a [&'a str],
    },
    LockInfo {
        uuid: &'a str,
        key: &'a str,
        lock_request_count: u64,
        readers_count: u64,
        max: u32,
        holders: &'a [HolderInfo<'a>],
    },
    Pong {
        uuid: &'a str,
        server_timestamp_ms: u64,
    },
    SystemStats {
        uuid: &'a str,
        stats: Stats,
    },
    Auth {
        uuid: Option<&'a str>,
        authenticated: bool,
        error: Option<&'a str>,
    },
    VersionMismatch {
        client_version: &'a str,
    },
    /// Legacy RW success; `readers_count` is sent only by the two `register-*` replies.
    Rw {
        op: RwOp,
        uuid: &'a str,
        key: &'a str,
        readers_count: u64,
    },
    /// Legacy RW: a deferred `register-*` request may now proceed.
    BroadcastResult {
        uuid: &'a str,
        key: &'a str,
    },
    Inspect {
        uuid: Option<&'a str>,
        result: u64,
    },
    /// A failed request. `ty` echoes the request type (`"error"` when unknown); for types whose
    /// success flag the Node client checks, the flag is sent as `false` too.
    Error {
        ty: Option<&'a str>,
        uuid: Option<&'a str>,
        key: Option<&'a str>,
        error: &'a str,
    },
}

impl Reply<'_> {
    /// Appends this reply as one JSON object.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Obj::new(out);
        match *self {
            Reply::Lock {
                uuid,
                key,
                outcome,
                lock_request_count,
                readers_count,
            } => {
                w.head("lock", uuid, key)
                    .bool("acquired", matches!(outcome, LockOutcome::Granted { .. }));
                w.u64("lockRequestCount", lock_request_count)
                    .u64("readersCount", readers_count);
                match outcome {
                    LockOutcome::Granted { fencing_token } => w.u64("fencingToken", fencing_token),
                    LockOutcome::Queued => w.bool("queued", true),
                    LockOutcome::Refused => w.bool("queued", false),
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
                w.timeout_error(waited_ms);
            }
            Reply::Reelection {
                uuid,
                key,
                lock_request_count,
            } => {
                w.head("lock", uuid, key)
                    .u64("lockRequestCount", lock_request_count)
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
                    .bool("unlocked", unlocked)
                    .u64("lockRequestCount", lock_request_count);
                if lost {
                    w.bool("lost", true);
                }
                w.opt_str("error", error).opt_str("warning", warning);
            }
            Reply::Extend {
                uuid,
                key,
                extended,
                error,
            } => {
                w.head("extend", uuid, key)
                    .bool("extended", extended)
                    .opt_str("error", error);
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
                        for &(k, tok) in fencing_tokens {
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
                            .opt_str("contendedKey", contended_key);
                    }
                    ManyOutcome::TimedOut { waited_ms } => {
                        w.bool("timedOut", true).timeout_error(waited_ms);
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
                w.bool("released", released).opt_str("error", error);
            }
            Reply::Ls { uuid, keys } => {
                w.str("type", "ls").str("uuid", uuid).field("ls_result");
                write_list(w.out, keys.iter(), |o, k| write_str(o, k));
            }
            Reply::LockInfo {
                uuid,
                key,
                lock_request_count,
                readers_count,
                max,
                holders,
            } => {
                w.str("type", "lock-info-response")
                    .str("uuid", uuid)
                    .str("key", key)
                    .bool("lockInfo", true);
                w.bool("isLocked", !holders.is_empty())
                    .field("lockholderUUIDs");
                write_list(w.out, holders.iter(), |o, h| write_str(o, h.id));
                w.u64("lockRequestCount", lock_request_count)
                    .u64("readersCount", readers_count);
                w.u64("max", max.into()).field("holders");
                write_list(w.out, holders.iter(), |o, h| {
                    let mut ho = Obj::new(o);
                    ho.str("id", h.id)
                        .u64("fencingToken", h.fencing_token)
                        .str("mode", h.mode.as_str());
                    match h.ttl_remaining {
                        Some(ms) => ho.u64("ttlRemaining", ms),
                        None => ho.null("ttlRemaining"),
                    };
                    ho.finish();
                });
            }
            Reply::Pong {
                uuid,
                server_timestamp_ms,
            } => {
                w.str("type", "pong")
                    .str("uuid", uuid)
                    .bool("ping", true)
                    .u64("serverTimestamp", server_timestamp_ms);
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
                    .finish();
            }
            Reply::Auth {
                uuid,
                authenticated,
                error,
            } => {
                w.str("type", "auth")
                    .opt_str("uuid", uuid)
                    .bool("authenticated", authenticated);
                w.opt_str("error", error);
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
                        .u64("readersCount", readers_count);
                }
            }
            Reply::BroadcastResult { uuid, key } => {
                w.head("broadcast-result", uuid, key);
            }
            Reply::Inspect { uuid, result } => {
                w.str("type", "inspect")
                    .opt_str("uuid", uuid)
                    .u64("inspectResult", result);
            }
            Reply::Error {
                ty,
                uuid,
                key,
                error,
            } => {
                w.str("type", ty.unwrap_or("error"))
                    .opt_str("uuid", uuid)
                    .opt_str("key", key);
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
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Obj<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }
    fn sep(&mut self) {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
    }
    fn field(&mut self, name: &'static str) -> &mut Self {
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self
    }
    fn str(&mut self, name: &'static str, v: &str) -> &mut Self {
        self.field(name);
        write_str(self.out, v);
        self
    }
    fn opt_str(&mut self, name: &'static str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            self.str(name, v);
        }
        self
    }
    fn u64(&mut self, name: &'static str, v: u64) -> &mut Self {
        self.field(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }
    fn bool(&mut self, name: &'static str, v: bool) -> &mut Self {
        self.field(name);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        self
    }
    fn null(&mut self, name: &'static str) -> &mut Self {
        self.field(name);
        self.out.extend_from_slice(b"null");
        self
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
    fn finish(&mut self) {
        self.out.push(b'}');
    }
}

fn write_list<T>(
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
