//! PEM files for TLS (feature `tls`), shared by the broker (its certificate, key and client
//! CA) and the clients (`LMX_TLS_CA`, `LMX_TLS_CERT`, `LMX_TLS_KEY`). Every error names the
//! file, so a wrong path or a key in the certificate's place is found from the message alone.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider (ring), named explicitly so that no process-wide default is
/// needed, whatever else the program links. rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange, in favour of aws-lc-rs, which needs cmake and a C toolchain
/// of its own; ring's classical X25519/P-256 groups are what this project chose.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first); none is an error.
pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE in this PEM file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificates of a PEM file as trust anchors.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}
