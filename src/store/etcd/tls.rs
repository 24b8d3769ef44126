//! TLS from the store to etcd (`etcds://`, `--etcd-ca`, `--etcd-cert`, `--etcd-key`): tonic's
//! rustls client (ring), trusting the given CA or else the system's roots. Needs the `tls`
//! feature; without it a TLS setting is an error, never a silent plain-text connection.

use etcd_client::ConnectOptions;

use super::config::EtcdConfig;
use crate::store::StoreError;

#[cfg(feature = "tls")]
pub(super) fn options(
    opts: ConnectOptions,
    cfg: &EtcdConfig,
) -> Result<ConnectOptions, StoreError> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Etcd(format!("{}: {e}", p.display())))
    };
    let mut tls = TlsOptions::new();
    tls = match &cfg.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = &cfg.cert_key {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(opts.with_tls(tls))
}

#[cfg(not(feature = "tls"))]
pub(super) fn options(_: ConnectOptions, _: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    Err(StoreError::BadUrl(
        "TLS to etcd needs live-mutex built with the `tls` feature".into(),
    ))
}
