//! etcd calls as the store makes them: each under the store's deadline, every failure a
//! [`StoreError`], and sent again to a live member when it surely did not run.
//!
//! The bottom floor of the store's thread with the key layout (`config.rs`): it knows etcd and
//! the deadline, nothing of requests or their state.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse, Txn, TxnResponse};

use super::config::EtcdConfig;
use crate::store::StoreError;

/// The etcd client and the store's deadline for each call (`EtcdConfig::op_timeout`). Clones
/// share the client's channel.
#[derive(Clone)]
pub(super) struct Etcd {
    pub(super) client: Client,
    timeout: Duration,
}

impl Etcd {
    /// Connects to `cfg`'s endpoints (lazily: the first call proves a member answers).
    pub(super) async fn connect(cfg: &EtcdConfig) -> Result<Etcd, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.op_timeout)
            .with_timeout(cfg.op_timeout)
            .with_keep_alive(cfg.op_timeout, cfg.op_timeout)
            .with_require_leader(true);
        if let Some((user, password)) = &cfg.user {
            // etcd's simple tokens expire (5 min by default): fetch a new one when told so.
            opts = opts.with_user(user, password).with_auto_token_refresh(true);
        }
        let tls = cfg.tls || cfg.ca.is_some() || cfg.cert_key.is_some();
        if tls {
            opts = super::tls::options(opts, cfg)?;
        }
        let scheme = if tls { "https" } else { "http" };
        let eps: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let client = within(cfg.op_timeout, Client::connect(eps, Some(opts))).await?;
        Ok(Etcd {
            client,
            timeout: cfg.op_timeout,
        })
    }

    /// Runs an etcd call under the store's deadline, mapping every failure to a [`StoreError`].
    pub(super) async fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        within(self.timeout, fut).await
    }

    /// A Txn, sent again to a live member when it surely did not run (see [`unsent`]) until
    /// the op deadline: after a member dies the client's channel still picks it for a while,
    /// and an election answers "no leader"; neither is a reason to fail a request while a
    /// quorum is alive. A Txn that may have run is never sent twice: its compare would then
    /// judge its own first effect.
    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.retrying(unsent, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// A read, sent again on any failure of a member until the op deadline (it changes
    /// nothing, so it cannot run twice).
    pub(super) async fn get(
        &self,
        key: Vec<u8>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        self.retrying(unavailable, || {
            let (mut kv, key, opts) = (self.client.kv_client(), key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
        .await
    }

    /// Runs the call `make` makes until it succeeds, fails in a way `again` does not accept,
    /// or the op deadline (one for all attempts) passes.
    pub(super) async fn retrying<T, F, M>(
        &self,
        again: fn(&etcd_client::Error) -> bool,
        mut make: M,
    ) -> Result<T, StoreError>
    where
        M: FnMut() -> F,
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let t = self.timeout;
        let deadline = tokio::time::Instant::now() + t;
        let mut pause = Duration::from_millis(10);
        loop {
            match tokio::time::timeout_at(deadline, make()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if again(&e) && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Ok(Err(e)) => return Err(StoreError::Etcd(e.to_string())),
                Err(_) => return Err(StoreError::Timeout(t)),
            }
        }
    }
}

/// gRPC's code for "unavailable" (`tonic::Code::Unavailable`): the member could not be
/// reached, has no leader, lost it, or timed out.
const UNAVAILABLE: i32 = 14;

/// A call that surely did not run: no connection to the member could be made (tonic's
/// channel still picks a dead member for a while), or the member refused it for want of a
/// leader (`require_leader`: refused before anything is proposed).
pub(super) fn unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == UNAVAILABLE => {
            s.message().starts_with("tcp connect error") || s.message().contains("no leader")
        }
        _ => false,
    }
}

/// Any failure of a member or of the way to it (for reads, which may run twice).
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == UNAVAILABLE,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs an etcd call under deadline `t`, mapping every failure to a [`StoreError`].
async fn within<T, F>(t: Duration, fut: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Etcd(e.to_string())),
        Err(_) => Err(StoreError::Timeout(t)),
    }
}
