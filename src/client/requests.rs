//! Every request the clients build from more than an id, in one place: the `lock` and
//! `acquire-many` a caller's [`LockOptions`] ask for, the releases a guard sends (or a grant
//! that came after its caller stopped waiting), the `extend` that renews a lock, and an
//! administrator's forced `unlock`. (`ping`, `ls`, `lock-info` and the like are the protocol's
//! enum with an id and nothing to decide.)

use super::error::Result;
use super::options::{LockOptions, check_ttl};
use crate::proto::session::{Answer, RequestId, Session};
use crate::proto::{AcquireMany, LockRequest, Request, Ttl};
use std::time::Duration;

/// A fresh request id in its wire form.
pub(crate) fn new_uuid() -> String {
    RequestId::random().to_string()
}

/// The `lock` of `key` that `o` asks for.
pub(crate) fn lock<'a>(o: &LockOptions, uuid: &'a str, key: &'a str) -> Request<'a> {
    Request::Lock(LockRequest {
        uuid,
        key,
        ttl: o.ttl,
        max: o.max,
        try_lock: o.try_only,
        wait_timeout: o.wait_ms(),
        mode: o.mode,
        keep_locks_after_death: o.keep_after_disconnect,
        retry_count: 0,
    })
}

/// The `acquire-many` of `keys` that `o` asks for (`max` and `mode` do not apply).
pub(crate) fn many<'a>(o: &LockOptions, uuid: &'a str, keys: &[&'a str]) -> Request<'a> {
    Request::AcquireMany(AcquireMany {
        uuid,
        keys: keys.iter().copied().collect(),
        ttl: o.ttl,
        try_lock: o.try_only,
        wait_timeout: o.wait_ms(),
        keep_locks_after_death: o.keep_after_disconnect,
    })
}

/// The `unlock` that releases lock `id` on `key`.
pub(crate) fn unlock<'a>(uuid: &'a str, key: &'a str, id: &'a str) -> Request<'a> {
    Request::Unlock {
        uuid,
        key,
        lock_id: Some(id),
        force: false,
    }
}

/// The forced `unlock` that releases every holder of `key`.
pub(crate) fn force_unlock<'a>(uuid: &'a str, key: &'a str) -> Request<'a> {
    Request::Unlock {
        uuid,
        key,
        lock_id: None,
        force: true,
    }
}

/// The `release-many` that releases the keys of acquire-many `id`.
pub(crate) fn release_many<'a>(uuid: &'a str, id: &'a str) -> Request<'a> {
    Request::ReleaseMany { uuid, lock_id: id }
}

/// The `extend` that sets lock `id` on `key` to `ttl` from now (`None`: no expiry); an error
/// for a TTL the wire cannot say.
pub(crate) fn extend<'a>(
    uuid: &'a str,
    key: &'a str,
    id: &'a str,
    ttl: Option<Duration>,
) -> Result<Request<'a>> {
    let ttl = ttl.map_or(Ttl::Never, Ttl::After);
    check_ttl(ttl)?;
    Ok(Request::Extend {
        uuid,
        key,
        lock_id: id,
        ttl,
    })
}

/// A grant that reached request `id` after its caller stopped waiting (the session no longer
/// had it pending, so it sent no cancel): released at once, pipelined, not left held until
/// its TTL. `key` is a lock's key, `None` for an acquire-many (other requests are never
/// answered with a grant).
pub(crate) fn hand_back(session: &mut Session, id: RequestId, key: Option<&str>, answer: &Answer) {
    let uuid = id.to_string();
    match (answer, key) {
        (Answer::Locked { .. }, Some(key)) => session.release(&unlock(&new_uuid(), key, &uuid)),
        (Answer::ManyLocked(_), None) => session.release(&release_many(&new_uuid(), &uuid)),
        _ => {}
    }
}
