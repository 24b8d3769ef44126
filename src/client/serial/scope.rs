//! The attribute on an `async fn` (feature `tokio`): keys awaited on the caller's runtime, so
//! that a current-thread runtime keeps running its other tasks while the test waits.
//!
//! The outermost attributed `async fn` opens a *scope* (a tokio task-local): the owner of
//! everything taken while it is polled, and one [`AsyncClient`] connection for its takes. A
//! test's runtime ends with the test, so the connection cannot be the process's shared one
//! (whose tasks would die with the first test's runtime): each scope has its own.

use super::held::{self, Backing, Owner, SerialGuard};
use super::wait::{Take, holders, notice_after};
use super::{Attr, attr_failed};
use crate::client::async_client::{AsyncClient, AsyncLockGuard};
use crate::client::{Error, Result, spawn_target, spawn_url_from_env};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

struct Scope {
    owner: Owner,
    client: tokio::sync::OnceCell<AsyncClient>,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// The owner of the scope being polled on this thread, if any.
pub(crate) fn current_owner() -> Option<Owner> {
    SCOPE.try_with(|s| s.owner).ok()
}

/// Runs `body` holding `attr`'s keys, taken inside the current scope (or a new one) without
/// blocking the runtime. Outside a tokio runtime it falls back to the blocking take.
pub(crate) async fn run<F: Future>(attr: Attr, body: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_err() {
        let _g = super::__serial_attr(attr);
        return body.await;
    }
    if let Ok(scope) = SCOPE.try_with(Arc::clone) {
        let _g = take(&scope, attr)
            .await
            .unwrap_or_else(|e| attr_failed(attr, e));
        return body.await;
    }
    let scope = Arc::new(Scope {
        owner: held::new_owner(),
        client: tokio::sync::OnceCell::new(),
    });
    SCOPE
        .scope(scope.clone(), async move {
            let _g = take(&scope, attr)
                .await
                .unwrap_or_else(|e| attr_failed(attr, e));
            body.await
        })
        .await
}

/// The scope's connection, made on first use; a local broker is started (off the runtime's
/// threads) if none answers.
async fn client(scope: &Scope, hint: Option<&'static str>) -> Result<AsyncClient> {
    let c = scope
        .client
        .get_or_try_init(|| async {
            let url = spawn_url_from_env()?;
            match AsyncClient::connect(&url).await {
                Err(Error::Io(_) | Error::ConnectionLost) if spawn_target(&url).is_ok() => {
                    tokio::task::spawn_blocking(move || super::process_client(hint))
                        .await
                        .map_err(|e| Error::Spawn(format!("starting a broker: {e}")))??;
                    AsyncClient::connect(&url).await
                }
                r => r,
            }
        })
        .await?;
    Ok(c.clone())
}

async fn take(scope: &Scope, attr: Attr) -> Result<SerialGuard> {
    let (mut guard, missing) = held::begin(scope.owner, attr.keys, attr.shared)?;
    if missing.is_empty() {
        return Ok(guard);
    }
    let client = client(scope, attr.lmx_hint).await?;
    let deadline = attr.timeout().map(|t| (Instant::now() + t, t));
    for key in missing {
        let t = Take {
            key: &key,
            shared: attr.shared,
            deadline,
            test: attr.test,
        };
        let g = take_one(&client, &t).await?;
        guard.add(key, attr.shared, Backing::Async(g));
    }
    Ok(guard)
}

/// [`wait::take`](super::wait::take), awaited.
async fn take_one(client: &AsyncClient, t: &Take<'_>) -> Result<AsyncLockGuard> {
    match client.lock_with(t.key, &t.try_options()).await {
        Err(Error::Busy) => {}
        r => return r,
    }
    let started = Instant::now();
    let opts = t.wait_options();
    let lock = client.lock_with(t.key, &opts);
    tokio::pin!(lock);
    let r = tokio::select! {
        r = &mut lock => r,
        _ = tokio::time::sleep(notice_after()) => {
            let by = holders(client.info(t.key).await);
            eprintln!("{}", t.notice(started, &by));
            lock.await
        }
    };
    if t.ran_out(&r) {
        return Err(t.timed_out(&holders(client.info(t.key).await)));
    }
    r
}
