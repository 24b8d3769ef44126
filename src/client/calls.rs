//! The I/O-free half of the calls both clients make, the blocking [`Client`](super::Client)
//! and the async one: the handshake's verdict and what each answer means to the caller (the
//! requests are built in `requests.rs`). The two clients differ only in how they wait.

use super::error::{Error, Result};
use super::{LockInfo, LockOptions, SLACK, Stats};
use crate::proto::Request;
use crate::proto::session::{Answer, BrokerKind, RequestId, Session, Unlocked};
use std::collections::HashMap;
use std::time::Duration;

/// Queues `req` in the session: its id, for matching the answer to its waiter.
pub(crate) fn request_id(session: &mut Session, req: &Request<'_>) -> Result<RequestId> {
    session
        .request(req)
        .ok_or_else(|| Error::Protocol("request without an id".into()))
}

/// Which broker the handshake found, from the answer to its `ping` and (if one came) to its
/// `auth`. Our broker answers `pong`, and echoes the type in errors ("authenticate first");
/// the npm broker answers a type it does not know with a type-less "Malformed data" error.
pub(crate) fn handshake(ping: Result<Answer>, auth: Option<Answer>) -> Result<BrokerKind> {
    let auth_err = auth.and_then(|a| match a {
        Answer::Rejected(e) | Answer::Unknown(e) => Some(e),
        _ => None,
    });
    match ping {
        Ok(Answer::Pong { .. }) => {
            auth_err.map_or(Ok(BrokerKind::Rust), |e| Err(Error::Rejected(e)))
        }
        Ok(Answer::Rejected(e)) => Err(Error::Rejected(auth_err.unwrap_or(e))),
        Ok(Answer::Unknown(_)) => Ok(BrokerKind::Node),
        Ok(a) => Err(Error::Protocol(format!("unexpected answer to ping: {a:?}"))),
        Err(e) => Err(auth_err.map_or(e, Error::Rejected)),
    }
}

/// Tells the session what the handshake found: the npm broker's quirks apply; or, to our
/// broker, the connection's name, so `lmx info` shows who holds a lock (no reply comes).
pub(crate) fn greet(session: &mut Session, kind: BrokerKind) {
    match kind {
        BrokerKind::Node => session.set_broker(kind),
        BrokerKind::Rust => session.notify(&Request::Hello {
            name: &client_name(),
            pid: Some(u64::from(std::process::id())),
        }),
    }
}

/// The name a connection gives the broker: `LMX_CLIENT_NAME` if set, else the program's file
/// name and pid (`cargo-test[4242]`), as `lmx info` shows it.
pub(crate) fn client_name() -> String {
    let name = match std::env::var("LMX_CLIENT_NAME") {
        Ok(n) if !n.is_empty() => n,
        _ => {
            let prog = std::env::args_os()
                .next()
                .map(std::path::PathBuf::from)
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "rust".into());
            format!("{prog}[{}]", std::process::id())
        }
    };
    // Within the broker's limit, cut on a character boundary.
    let mut end = name.len().min(crate::proto::MAX_CLIENT_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// How long to wait for a lock's answer, and whether running out of that time means "not
/// granted": the npm broker knows no wait time-out, so there the client's own timer is the
/// deadline; ours decides, and the slack only guards against a broker that never answers.
pub(crate) fn lock_limit(kind: BrokerKind, o: &LockOptions) -> (Option<Duration>, bool) {
    match kind {
        BrokerKind::Node => (o.wait_timeout, true),
        BrokerKind::Rust => (o.wait_timeout.map(|t| t + SLACK), false),
    }
}

/// A `lock`'s answer: the grant's fencing token.
pub(crate) fn locked(a: Answer, o: &LockOptions) -> Result<Option<u64>> {
    match a {
        Answer::Locked { fencing_token } => Ok(fencing_token),
        Answer::NotGranted => Err(not_granted(o)),
        a => Err(refusal(a)),
    }
}

/// An `acquire-many`'s answer: the fencing token of each key.
pub(crate) fn many_locked(a: Answer, o: &LockOptions) -> Result<HashMap<String, u64>> {
    match a {
        Answer::ManyLocked(tokens) => Ok(tokens.into_iter().collect()),
        Answer::NotGranted => Err(not_granted(o)),
        a => Err(refusal(a)),
    }
}

/// The error for a lock that was answered "not granted".
fn not_granted(o: &LockOptions) -> Error {
    if o.try_only {
        Error::Busy
    } else {
        Error::WaitTimedOut
    }
}

/// A guard's `unlock` or `release-many`, answered: [`Error::LockLost`] if the lock had already
/// gone, and if the connection went while releasing (the lock is gone with it).
pub(crate) fn released(r: Result<Answer>) -> Result<()> {
    match r {
        Ok(Answer::Unlocked(Unlocked::Yes) | Answer::Released(true)) => Ok(()),
        Ok(Answer::Unlocked(_) | Answer::Released(false)) | Err(Error::ConnectionLost) => {
            Err(Error::LockLost)
        }
        Ok(a) => Err(refusal(a)),
        Err(e) => Err(e),
    }
}

/// A `lock-info-request`'s answer, for `key`.
pub(crate) fn info(key: &str, a: Answer) -> Result<LockInfo> {
    match a {
        Answer::Info(info) => Ok(LockInfo {
            key: key.to_string(),
            ..info
        }),
        a => Err(refusal(a)),
    }
}

/// A `system-stats-request`'s answer.
pub(crate) fn stats(a: Answer) -> Result<Stats> {
    match a {
        Answer::Stats(s) => Ok(s),
        a => Err(refusal(a)),
    }
}

/// The error for an answer that is not the one asked for.
pub(crate) fn refusal(a: Answer) -> Error {
    match a {
        Answer::Rejected(e) | Answer::Unknown(e) => Error::Rejected(e),
        Answer::Unexpected(e) => Error::Protocol(e),
        a => Error::Protocol(format!("unexpected answer: {a:?}")),
    }
}
