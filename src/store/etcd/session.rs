//! Sessions: one etcd lease per client connection, and one for keep-after-death locks.
//!
//! Why a lease per connection: revoking it when the connection closes deletes all of that
//! connection's request keys in one step, and if the broker dies etcd deletes them one TTL
//! later by itself. The lease is granted on the connection's first lock (connections that
//! never lock cost etcd nothing) and renewed every TTL/3.
//!
//! Loss: a renewal is judged by when it was *sent*, since etcd may have refreshed the lease
//! any time after that. When no renewal has succeeded for 4/5 of the TTL since the last good
//! one was sent, the lease may expire before we hear from etcd again: every request on it is
//! dropped, holders get `Lost` and waiters an error,
//! before etcd can hand their keys to anyone else. The next request of the connection gets a
//! fresh lease.

use std::rc::Rc;
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::time::Instant;

use super::calls::unsent;
use super::shared::{Holder, Session, Shared};
use crate::store::{Op, StoreError, StoreEvent};

/// The lease of `holder`, granted (and its renewal started) on first use.
pub(super) async fn lease(sh: &Rc<Shared>, holder: Holder) -> Result<i64, StoreError> {
    let s = {
        let mut st = sh.st.borrow_mut();
        match holder {
            Holder::Keep => st.keep.get_or_insert_with(|| Session::new(holder)).clone(),
            Holder::Conn(c) => st
                .sessions
                .entry(c)
                .or_insert_with(|| Session::new(holder))
                .clone(),
        }
    };
    let id = s
        .lease
        .get_or_try_init(|| async {
            let ttl = sh.cfg.session_ttl_secs();
            let grant = || {
                let mut lc = sh.etcd.client.lease_client();
                async move { lc.grant(ttl, None).await }
            };
            let r = sh.etcd.retrying(unsent, grant).await?;
            Ok::<i64, StoreError>(r.id())
        })
        .await?;
    let keeper = s.keeper.take();
    if keeper.is_none() {
        let task = tokio::task::spawn_local(keep_alive(sh.clone(), s.clone(), *id));
        s.keeper.set(Some(task.abort_handle()));
    } else {
        s.keeper.set(keeper);
    }
    Ok(*id)
}

/// Stops renewing and revokes the lease in the background (the connection closed).
pub(super) fn close(sh: &Rc<Shared>, s: Rc<Session>) {
    tokio::task::spawn_local(revoke(sh.clone(), s));
}

/// Stops renewing and revokes the lease; etcd deletes every key on it.
pub(super) async fn revoke(sh: Rc<Shared>, s: Rc<Session>) {
    if let Some(k) = s.keeper.take() {
        k.abort();
    }
    if let Some(id) = s.lease_id() {
        let mut lc = sh.etcd.client.lease_client();
        // If etcd is unreachable the lease ends by itself one TTL later.
        let _ = sh.etcd.call(lc.revoke(id)).await;
    }
}

async fn keep_alive(sh: Rc<Shared>, s: Rc<Session>, lease: i64) {
    let ttl = sh.cfg.session_ttl.max(Duration::from_secs(2));
    let period = ttl / 3;
    let lost_after = ttl * 4 / 5;
    let mut last_ok = Instant::now();
    let mut next = last_ok + period;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let reason = loop {
        tokio::time::sleep_until(next.min(last_ok + lost_after)).await;
        if Instant::now() >= last_ok + lost_after {
            break "no renewal succeeded for 4/5 of the session TTL".to_owned();
        }
        let sent = Instant::now();
        let attempt = async {
            if stream.is_none() {
                // Opening the stream sends the first renewal and reads its answer.
                let mut lc = sh.etcd.client.lease_client();
                let (k, st) = lc.keep_alive(lease).await?;
                stream = Some((k, st));
                return Ok::<i64, etcd_client::Error>(1);
            }
            let Some((k, st)) = stream.as_mut() else {
                return Ok(1);
            };
            k.keep_alive().await?;
            match st.message().await? {
                Some(r) => Ok(r.ttl()),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keepalive stream ended".into(),
                )),
            }
        };
        match tokio::time::timeout(period, attempt).await {
            Ok(Ok(ttl_left)) if ttl_left > 0 => {
                last_ok = sent;
                next = sent + period;
            }
            Ok(Ok(_)) => break "etcd says the lease has expired".to_owned(),
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                break "etcd says the lease has expired".to_owned();
            }
            Ok(Err(_)) | Err(_) => {
                stream = None;
                next = Instant::now() + period.min(Duration::from_millis(500));
            }
        }
    };
    session_lost(&sh, &s, &reason);
}

/// Drops every request on the session's lease and tells their clients.
fn session_lost(sh: &Rc<Shared>, s: &Rc<Session>, reason: &str) {
    let mut gone = Vec::new();
    let mut groups = Vec::new();
    {
        let mut st = sh.st.borrow_mut();
        match s.holder {
            Holder::Keep => {
                if st.keep.as_ref().is_some_and(|k| Rc::ptr_eq(k, s)) {
                    st.keep = None;
                }
            }
            Holder::Conn(c) => {
                if st.sessions.get(&c).is_some_and(|k| Rc::ptr_eq(k, s)) {
                    st.sessions.remove(&c);
                }
            }
        }
        st.reqs.retain(|(key, id), r| {
            let on_it = match s.holder {
                Holder::Keep => r.keep,
                Holder::Conn(c) => r.conn == c && !r.keep,
            };
            if on_it {
                if let Some(t) = &r.task {
                    t.abort();
                }
                gone.push((r.conn, key.clone(), id.clone(), r.held));
            }
            !on_it
        });
        st.groups.retain(|id, g| {
            let on_it = match s.holder {
                Holder::Keep => g.keep,
                Holder::Conn(c) => g.conn == c && !g.keep,
            };
            if on_it {
                if let Some(t) = &g.task {
                    t.abort();
                }
                groups.push((g.conn, g.keys[0].clone(), id.clone(), g.held));
            }
            !on_it
        });
    }
    let dropped = groups
        .into_iter()
        .map(|g| (Op::LockMany, g))
        .chain(gone.into_iter().map(|g| (Op::Lock, g)));
    for (op, (conn, key, id, held)) in dropped {
        sh.emit(if held {
            StoreEvent::Lost {
                conn,
                id,
                key,
                reason: format!("the connection's etcd lease may have expired: {reason}"),
            }
        } else {
            StoreEvent::Failed {
                conn,
                op,
                tag: 0,
                id: Some(id),
                key: Some(key),
                error: StoreError::SessionLost(reason.to_owned()),
            }
        });
    }
    // If etcd comes back before the TTL ends, stop the old keys from outliving the news.
    let sh2 = sh.clone();
    let s2 = s.clone();
    tokio::task::spawn_local(revoke(sh2, s2));
}
