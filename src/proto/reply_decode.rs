//! Reply decoding, the client's side of [`Reply`]: the same simd-json tape pass as request
//! decoding, every string borrowed from the line.
//!
//! Leniency follows what the two brokers send: the npm 0.2.x broker leaves out `fencingToken`,
//! `queued`, `max` and `holders`, sends `lockRequestCount:null`, and answers a request it does
//! not know with a type-less `error`. A field that is missing reads as its default; a field of
//! the wrong type is an error, so a garbled reply is never taken for a grant.

use std::borrow::Cow;
use std::time::Duration;

use simd_json::{Buffers, Node, StaticNode, Tape};
use smallvec::SmallVec;

use super::decode::{Kind, as_str, json_error, kind_name, present, span, uint, wrong};
use super::reply::{WaiterInfo, Who};
use super::{DecodeError, HolderInfo, LockOutcome, ManyOutcome, Mode, Reply, RwOp, Stats};

/// Reusable reply decoder: keeps simd-json's scratch buffers and tape between messages.
pub struct ReplyDecoder {
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Default for ReplyDecoder {
    fn default() -> Self {
        ReplyDecoder {
            buffers: Buffers::new(512),
            tape: Tape(Vec::new()),
        }
    }
}

impl ReplyDecoder {
    /// Decodes one reply in place; `buf` is clobbered (simd-json unescapes into it).
    pub fn decode<'a>(&mut self, buf: &'a mut [u8]) -> Result<Reply<'a>, DecodeError> {
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let res = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => decode_tape(&tape.0),
            Err(e) => Err(json_error(&e).into()),
        };
        self.tape = tape.reset();
        res
    }
}

/// One-off reply decode; a client should hold a [`ReplyDecoder`] instead.
///
/// ```
/// use live_mutex::proto::{LockOutcome, Reply, decode_reply};
/// let mut line = br#"{"type":"lock","uuid":"u","key":"k","acquired":true,"fencingToken":7}"#.to_vec();
/// let Reply::Lock { outcome, .. } = decode_reply(&mut line)? else { panic!() };
/// assert_eq!(outcome, LockOutcome::Granted { fencing_token: Some(7) });
/// # Ok::<(), live_mutex::proto::DecodeError>(())
/// ```
pub fn decode_reply(buf: &mut [u8]) -> Result<Reply<'_>, DecodeError> {
    ReplyDecoder::default().decode(buf)
}

/// The top-level fields of one object: name and tape index of the value. Duplicate names: the
/// last wins, as with `JSON.parse`.
struct Obj<'t, 'a> {
    tape: &'t [Node<'a>],
    fields: SmallVec<[(&'a str, usize); 16]>,
}

impl<'t, 'a> Obj<'t, 'a> {
    fn at(tape: &'t [Node<'a>], i: usize) -> Result<Self, Kind> {
        let len = match tape.get(i) {
            Some(&Node::Object { len, .. }) => len,
            Some(other) => return Err(Kind::NotAnObject(kind_name(other))),
            None => return Err(Kind::InvalidJson("empty input".into())),
        };
        let mut fields = SmallVec::new();
        let mut j = i + 1;
        for _ in 0..len {
            let (Some(&Node::String(name)), Some(v)) = (tape.get(j), tape.get(j + 1)) else {
                return Err(Kind::InvalidJson("malformed object".into()));
            };
            fields.push((name, j + 1));
            j += 1 + span(v);
        }
        Ok(Obj { tape, fields })
    }
    fn index(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|&(_, i)| i)
    }
    fn get(&self, name: &str) -> Option<Node<'a>> {
        self.index(name).and_then(|i| self.tape.get(i).copied())
    }
    fn opt_str(&self, name: &'static str) -> Result<Option<&'a str>, Kind> {
        match present(self.get(name)) {
            None => Ok(None),
            Some(Node::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong(name, "a string", &other)),
        }
    }
    fn str(&self, name: &'static str) -> Result<&'a str, Kind> {
        self.opt_str(name)?.ok_or(Kind::MissingField(name))
    }
    fn opt_bool(&self, name: &'static str) -> Result<Option<bool>, Kind> {
        match present(self.get(name)) {
            None => Ok(None),
            Some(Node::Static(StaticNode::Bool(b))) => Ok(Some(b)),
            Some(other) => Err(wrong(name, "a boolean", &other)),
        }
    }
    fn flag(&self, name: &'static str) -> Result<bool, Kind> {
        Ok(self.opt_bool(name)? == Some(true))
    }
    fn opt_u64(&self, name: &'static str) -> Result<Option<u64>, Kind> {
        present(self.get(name))
            .map(|n| uint(name, n, u64::MAX))
            .transpose()
    }
    fn u64(&self, name: &'static str) -> Result<u64, Kind> {
        Ok(self.opt_u64(name)?.unwrap_or(0))
    }
    /// The `error` text. The npm broker has been seen to send non-strings here; those keep a
    /// fixed text, since a reply with any `error` is a failure whatever its shape.
    fn error(&self) -> Option<&'a str> {
        match present(self.get("error"))? {
            Node::String(s) => Some(s),
            _ => Some("the broker reported an error that is not a string"),
        }
    }
    /// The elements of the array `name` (`None` if absent or null).
    fn array(&self, name: &'static str) -> Result<Option<Vec<usize>>, Kind> {
        let Some(i) = self.index(name) else {
            return Ok(None);
        };
        let len = match self.tape.get(i) {
            Some(Node::Static(StaticNode::Null)) => return Ok(None),
            Some(&Node::Array { len, .. }) => len,
            Some(other) => return Err(wrong(name, "an array", other)),
            None => return Err(Kind::InvalidJson("malformed array".into())),
        };
        let mut out = Vec::with_capacity(len.min(1024));
        let mut j = i + 1;
        for _ in 0..len {
            let n = self
                .tape
                .get(j)
                .ok_or_else(|| Kind::InvalidJson("malformed array".into()))?;
            out.push(j);
            j += span(n);
        }
        Ok(Some(out))
    }
}

fn decode_tape<'a>(tape: &[Node<'a>]) -> Result<Reply<'a>, DecodeError> {
    let o = Obj::at(tape, 0).map_err(DecodeError::from)?;
    reply(&o).map_err(|kind| DecodeError {
        kind,
        uuid: as_str(o.get("uuid")).map(Into::into),
        key: as_str(o.get("key")).map(Into::into),
        ty: as_str(o.get("type")).map(Into::into),
    })
}

/// The broker's wait time-out text, `lock request timed out after N ms`, read back.
fn waited_ms(error: Option<&str>) -> u64 {
    error
        .and_then(|e| e.strip_prefix("lock request timed out after "))
        .and_then(|e| e.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn reply<'a>(o: &Obj<'_, 'a>) -> Result<Reply<'a>, Kind> {
    let error = o.error();
    let ty = match present(o.get("type")) {
        Some(Node::String(s)) => s,
        Some(other) => return Err(wrong("type", "a string", &other)),
        // The npm broker answers an unknown request type with a type-less error.
        None if error.is_some() => "error",
        None if o.get("inspectResult").is_some() => "inspect",
        None => return Err(Kind::MissingType),
    };
    let fail = |ty: Option<&'a str>| -> Result<Reply<'a>, Kind> {
        Ok(Reply::Error {
            ty,
            uuid: o.opt_str("uuid")?,
            key: o.opt_str("key")?,
            error: error.unwrap_or_default(),
        })
    };
    Ok(match ty {
        "lock" => {
            let (uuid, key) = (o.str("uuid")?, o.str("key")?);
            if o.flag("timedOut")? {
                return Ok(Reply::LockTimedOut {
                    uuid,
                    key,
                    waited_ms: waited_ms(error),
                });
            }
            let outcome = match o.opt_bool("acquired")? {
                Some(true) => LockOutcome::Granted {
                    fencing_token: o.opt_u64("fencingToken")?,
                },
                _ if error.is_some() => return fail(Some(ty)),
                Some(false) => match o.opt_bool("queued")? {
                    Some(true) => LockOutcome::Queued,
                    Some(false) => LockOutcome::Refused,
                    None => LockOutcome::NotGranted,
                },
                None if o.flag("reelection")? => {
                    return Ok(Reply::Reelection {
                        uuid,
                        key,
                        lock_request_count: o.u64("lockRequestCount")?,
                    });
                }
                None => return Err(Kind::MissingField("acquired")),
            };
            Reply::Lock {
                uuid,
                key,
                outcome,
                lock_request_count: o.u64("lockRequestCount")?,
                readers_count: o.u64("readersCount")?,
            }
        }
        "unlock" => match o.opt_bool("unlocked")? {
            Some(unlocked) => Reply::Unlock {
                uuid: o.str("uuid")?,
                key: o.str("key")?,
                unlocked,
                lock_request_count: o.u64("lockRequestCount")?,
                lost: o.flag("lost")?,
                error,
                warning: o.opt_str("warning")?,
            },
            None if error.is_some() => return fail(Some(ty)),
            None => return Err(Kind::MissingField("unlocked")),
        },
        "extend" => match o.opt_bool("extended")? {
            Some(extended) => Reply::Extend {
                uuid: o.str("uuid")?,
                key: o.str("key")?,
                extended,
                error,
            },
            None if error.is_some() => return fail(Some(ty)),
            None => return Err(Kind::MissingField("extended")),
        },
        "acquire-many" => {
            let (uuid, lock_id) = (o.str("uuid")?, o.opt_str("lockUuid")?);
            let outcome = if o.flag("timedOut")? {
                ManyOutcome::TimedOut {
                    waited_ms: waited_ms(error),
                }
            } else if o.opt_bool("acquired")? == Some(true) {
                ManyOutcome::Granted {
                    fencing_tokens: Cow::Owned(fencing_tokens(o)?),
                }
            } else if error.is_some() {
                return fail(Some(ty));
            } else if o.opt_bool("queued")? == Some(true) {
                ManyOutcome::Queued
            } else {
                ManyOutcome::Refused {
                    contended_key: o.opt_str("contendedKey")?,
                }
            };
            Reply::AcquireMany {
                uuid,
                lock_id: lock_id.unwrap_or(uuid),
                outcome,
            }
        }
        "release-many" => match o.opt_bool("released")? {
            Some(released) => Reply::ReleaseMany {
                uuid: o.str("uuid")?,
                lock_id: o.str("lockUuid")?,
                released,
                error,
            },
            None if error.is_some() => return fail(Some(ty)),
            None => return Err(Kind::MissingField("released")),
        },
        _ if error.is_some() && ty != "auth" => return fail(Some(ty).filter(|t| *t != "error")),
        "ls" => {
            let items = o
                .array("ls_result")?
                .ok_or(Kind::MissingField("ls_result"))?;
            let keys = items
                .into_iter()
                .map(|i| match o.tape.get(i) {
                    Some(&Node::String(k)) => Ok(k),
                    other => Err(Kind::WrongType {
                        field: "ls_result",
                        expected: "an array of strings",
                        got: other.map_or("nothing", kind_name),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Reply::Ls {
                uuid: o.str("uuid")?,
                keys: Cow::Owned(keys),
                next: o.opt_str("next")?,
            }
        }
        "lock-info-response" => {
            let holders = match o.array("holders")? {
                None => Vec::new(),
                Some(items) => items
                    .into_iter()
                    .map(|i| holder(o.tape, i))
                    .collect::<Result<_, _>>()?,
            };
            let waiters = match o.array("waiters")? {
                None => Vec::new(),
                Some(items) => items
                    .into_iter()
                    .map(|i| waiter(o.tape, i))
                    .collect::<Result<_, _>>()?,
            };
            Reply::LockInfo {
                uuid: o.str("uuid")?,
                key: o.str("key")?,
                is_locked: o.flag("isLocked")?,
                lock_request_count: o.u64("lockRequestCount")?,
                readers_count: o.u64("readersCount")?,
                max: o
                    .opt_u64("max")?
                    .map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
                holders: Cow::Owned(holders),
                waiters: Cow::Owned(waiters),
                truncated: o.flag("truncated")?,
            }
        }
        "pong" => Reply::Pong {
            uuid: o.str("uuid")?,
            server_timestamp_ms: o.u64("serverTimestamp")?,
            version: o.opt_str("version")?,
        },
        "system-stats-response" => {
            let i = o.index("stats").ok_or(Kind::MissingField("stats"))?;
            let s = Obj::at(o.tape, i).map_err(|_| Kind::MissingField("stats"))?;
            Reply::SystemStats {
                uuid: o.str("uuid")?,
                stats: Stats {
                    keys: s.u64("keys")?,
                    holders: s.u64("holders")?,
                    waiters: s.u64("waiters")?,
                    connections: s.u64("connections")?,
                    grants: s.u64("grants")?,
                    pid: s.opt_u64("pid")?,
                    uptime_ms: s.opt_u64("uptimeMs")?,
                },
            }
        }
        "auth" => Reply::Auth {
            uuid: o.opt_str("uuid")?,
            authenticated: o.flag("authenticated")?,
            error,
        },
        "version-mismatch" => {
            let i = o.index("versions").ok_or(Kind::MissingField("versions"))?;
            let v = Obj::at(o.tape, i).map_err(|_| Kind::MissingField("versions"))?;
            Reply::VersionMismatch {
                client_version: v.str("clientVersion")?,
            }
        }
        "broadcast-result" => Reply::BroadcastResult {
            uuid: o.str("uuid")?,
            key: o.str("key")?,
        },
        "inspect" => Reply::Inspect {
            uuid: o.opt_str("uuid")?,
            result: o.u64("inspectResult")?,
        },
        other => match RwOp::ALL.into_iter().find(|op| op.reply_type() == other) {
            Some(op) => Reply::Rw {
                op,
                uuid: o.str("uuid")?,
                key: o.str("key")?,
                readers_count: o.u64("readersCount")?,
            },
            None => return Err(Kind::UnknownType(other.into())),
        },
    })
}

fn fencing_tokens<'a>(o: &Obj<'_, 'a>) -> Result<Vec<(&'a str, u64)>, Kind> {
    let Some(i) = o.index("fencingTokens") else {
        return Ok(Vec::new());
    };
    if matches!(o.tape.get(i), Some(Node::Static(StaticNode::Null))) {
        return Ok(Vec::new());
    }
    let t = Obj::at(o.tape, i).map_err(|_| Kind::WrongType {
        field: "fencingTokens",
        expected: "an object",
        got: o.tape.get(i).map_or("nothing", kind_name),
    })?;
    t.fields
        .iter()
        .map(|&(k, j)| match t.tape.get(j) {
            Some(&n) => Ok((k, uint("fencingTokens", n, u64::MAX)?)),
            None => Err(Kind::InvalidJson("malformed object".into())),
        })
        .collect()
}

fn holder<'a>(tape: &[Node<'a>], i: usize) -> Result<HolderInfo<'a>, Kind> {
    let h = Obj::at(tape, i).map_err(|_| Kind::WrongType {
        field: "holders",
        expected: "an array of objects",
        got: tape.get(i).map_or("nothing", kind_name),
    })?;
    Ok(HolderInfo {
        id: Cow::Borrowed(h.opt_str("id")?.unwrap_or_default()),
        fencing_token: h.opt_u64("fencingToken")?,
        mode: mode(&h)?,
        ttl_remaining: h.opt_u64("ttlRemaining")?.map(Duration::from_millis),
        held_since_ms: h.opt_u64("heldSince")?,
        who: who(&h)?,
    })
}

fn waiter<'a>(tape: &[Node<'a>], i: usize) -> Result<WaiterInfo<'a>, Kind> {
    let w = Obj::at(tape, i).map_err(|_| Kind::WrongType {
        field: "waiters",
        expected: "an array of objects",
        got: tape.get(i).map_or("nothing", kind_name),
    })?;
    Ok(WaiterInfo {
        id: Cow::Borrowed(w.opt_str("id")?.unwrap_or_default()),
        mode: mode(&w)?,
        waiting_since_ms: w.opt_u64("waitingSince")?,
        who: who(&w)?,
    })
}

fn mode(o: &Obj<'_, '_>) -> Result<Mode, Kind> {
    Ok(match o.opt_str("mode")? {
        None | Some("exclusive") => Mode::Exclusive,
        Some("read") => Mode::Read,
        Some("write") => Mode::Write,
        Some(m) => {
            return Err(Kind::Invalid {
                field: "mode",
                reason: format!("must be \"exclusive\", \"read\" or \"write\", got {m:?}"),
            });
        }
    })
}

fn who<'a>(o: &Obj<'_, 'a>) -> Result<Who<'a>, Kind> {
    Ok(Who {
        peer: o.opt_str("peer")?.map(Cow::Borrowed),
        name: o.opt_str("name")?.map(Cow::Borrowed),
        pid: o.opt_u64("pid")?,
    })
}

impl<'a> Reply<'a> {
    /// The request id this reply answers (`None` for `version-mismatch` and id-less errors).
    pub fn uuid(&self) -> Option<&'a str> {
        match self {
            Reply::Lock { uuid, .. }
            | Reply::LockTimedOut { uuid, .. }
            | Reply::Reelection { uuid, .. }
            | Reply::Unlock { uuid, .. }
            | Reply::Extend { uuid, .. }
            | Reply::AcquireMany { uuid, .. }
            | Reply::ReleaseMany { uuid, .. }
            | Reply::Ls { uuid, .. }
            | Reply::LockInfo { uuid, .. }
            | Reply::Pong { uuid, .. }
            | Reply::SystemStats { uuid, .. }
            | Reply::Rw { uuid, .. }
            | Reply::BroadcastResult { uuid, .. } => Some(uuid),
            Reply::Auth { uuid, .. } | Reply::Inspect { uuid, .. } | Reply::Error { uuid, .. } => {
                *uuid
            }
            Reply::VersionMismatch { .. } => None,
        }
    }

    /// The `error` text of a failed request, if this reply carries one.
    pub fn error(&self) -> Option<&'a str> {
        match self {
            Reply::Unlock { error, .. }
            | Reply::Extend { error, .. }
            | Reply::ReleaseMany { error, .. }
            | Reply::Auth { error, .. } => *error,
            Reply::Error { error, .. } => Some(error),
            _ => None,
        }
    }
}
