//! Connection set-up time, plain TCP against TLS, side by side in one run: `Client::connect`
//! (TCP connect, the TLS handshake for `tls://`, the broker handshake: a ping) and dropping
//! the client, against an in-process broker serving both on one port. The certificates are
//! made here (rcgen): a CA and a leaf for 127.0.0.1.

#![cfg_attr(not(target_os = "linux"), allow(unused_imports))]

use criterion::{Criterion, criterion_group, criterion_main};
use live_mutex::Client;
use live_mutex::broker::Broker;
#[cfg(target_os = "linux")]
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// rcgen, which makes the certificates, is a dev-dependency on Linux only (see Cargo.toml).
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the connect bench runs on Linux only: its certificates come from rcgen");
}

#[cfg(target_os = "linux")]
fn connect(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lmx-bench-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    let (ca_pem, cert, key_pem) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).expect("write");
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&key_pem, key.serialize_pem()).expect("write");
    let broker = Broker::builder()
        .tcp("127.0.0.1:0".parse().expect("addr"))
        .tls(&cert, &key_pem)
        .bind()
        .expect("bind")
        .spawn()
        .expect("spawn");
    let addr = broker.local_addr().expect("addr");
    let mut g = c.benchmark_group("connect");
    g.bench_function("tcp", |b| {
        b.iter(|| Client::connect(&format!("tcp://{addr}")).expect("connect"));
    });
    g.bench_function("tls", |b| {
        b.iter(|| {
            Client::builder(&format!("tls://{addr}"))
                .tls_ca(&ca_pem)
                .connect()
                .expect("connect")
        });
    });
    g.finish();
    broker.shutdown();
    let _ = broker.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = connect
}
#[cfg(target_os = "linux")]
criterion_main!(benches);
