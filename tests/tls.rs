//! TLS on the broker's TCP port and in the clients (feature `tls`), with certificates the
//! tests make themselves (tests/common/certs.rs): NDJSON and WebSocket inside TLS, client
//! certificates in place of the token, each bad certificate named in its error, a ClientHello
//! to a plain broker closed cleanly, and the certificate reloaded on SIGHUP under a held lock.
//! (Plain TCP refused from beyond loopback under `--require-tls` needs a second address:
//! tests/tls_netns.rs.)

#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::certs::{Ca, Leaf};
use common::{TempDir, TestBroker, scratch};
use live_mutex::broker::{Broker, BrokerBuilder};
use live_mutex::{Client, Error};

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate.
struct Pki {
    dir: TempDir,
    ca: Ca,
    server: Leaf,
    client: Leaf,
}

fn pki(tag: &str) -> Pki {
    let dir = scratch(tag);
    let ca = Ca::new(&dir, "main");
    let server = ca.server("server", &["localhost", "127.0.0.1"]);
    let client = ca.client("alice");
    Pki {
        dir,
        ca,
        server,
        client,
    }
}

fn tls_broker(p: &Pki, f: impl FnOnce(BrokerBuilder) -> BrokerBuilder) -> TestBroker {
    TestBroker::with(|b| f(b.tls(&p.server.cert, &p.server.key)))
}

fn tls_client(url: &str, ca: &Path) -> live_mutex::client::Result<Client> {
    Client::builder(url)
        .tls_ca(ca)
        .connect_timeout(Duration::from_secs(5))
        .connect()
}

fn tls_error(r: live_mutex::client::Result<Client>) -> String {
    match r {
        Err(Error::Tls(msg)) => msg,
        Err(e) => panic!("expected a TLS error, got {e:?}"),
        Ok(_) => panic!("expected a TLS error, got a connection"),
    }
}

#[test]
fn ndjson_over_tls_beside_plain_loopback() {
    let p = pki("tls-ndjson");
    let b = tls_broker(&p, |b| b);
    let port = b.addr.port();
    let url = format!("tls://localhost:{port}");
    let c = tls_client(&url, &p.ca.pem).expect("TLS connect");
    assert_eq!(c.endpoint().as_deref(), Some(url.as_str()));
    let g = c.lock("k").expect("lock over TLS");
    // The same port still serves plain NDJSON on loopback, and sees the TLS client's lock.
    let plain = Client::connect(&format!("tcp://127.0.0.1:{port}")).expect("plain");
    assert!(plain.try_lock("k").expect("try").is_none());
    // A reply far larger than a TLS record and the socket buffer: `ls` of 1,500 long keys.
    let long = "x".repeat(200);
    let held: Vec<_> = (0..1500)
        .map(|i| c.lock(&format!("{long}{i}")).expect("lock"))
        .collect();
    let keys = c.ls().expect("ls over TLS");
    assert_eq!(keys.len(), 1501, "every key listed");
    drop(held);
    g.unlock().expect("unlock over TLS");
    assert!(plain.try_lock("k").expect("try").is_some());
}

#[test]
fn websocket_inside_tls() {
    let p = pki("tls-wss");
    let b = tls_broker(&p, |b| b);
    let port = b.addr.port();
    let url = format!("wss://127.0.0.1:{port}/");
    let c = tls_client(&url, &p.ca.pem).expect("wss connect");
    assert_eq!(c.endpoint().as_deref(), Some(url.as_str()));
    let g = c.lock("k").expect("lock over wss");
    let other = tls_client(&format!("tls://127.0.0.1:{port}"), &p.ca.pem).expect("tls");
    assert!(other.try_lock("k").expect("try").is_none());
    drop(g);
    assert!(other.try_lock("k").expect("try").is_some());
}

#[cfg(feature = "tokio")]
#[test]
fn async_client_over_tls_and_wss() {
    let p = pki("tls-async");
    let b = tls_broker(&p, |b| b);
    let port = b.addr.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let connect = |url: String| {
            live_mutex::AsyncClient::builder(&url)
                .tls_ca(&p.ca.pem)
                .connect()
        };
        let a = connect(format!("tls://localhost:{port}"))
            .await
            .expect("tls");
        let w = connect(format!("wss://localhost:{port}/"))
            .await
            .expect("wss");
        assert_eq!(
            w.endpoint().await.as_deref(),
            Some(format!("wss://localhost:{port}/").as_str())
        );
        let g = a.lock("k").await.expect("lock over tls");
        assert!(w.try_lock("k").await.expect("try over wss").is_none());
        g.unlock().await.expect("unlock");
        let g = w.lock("k").await.expect("lock over wss");
        assert!(a.try_lock("k").await.expect("try").is_none());
        g.unlock().await.expect("unlock");
        // A bad certificate is named by the async client too.
        let e = live_mutex::AsyncClient::builder(&format!("tls://localhost:{port}"))
            .connect()
            .await;
        match e {
            Err(Error::Tls(msg)) => assert!(msg.contains("unknown CA"), "{msg}"),
            Err(e) => panic!("expected a TLS error, got {e:?}"),
            Ok(_) => panic!("connected without trusting the CA"),
        }
    });
}

/// A verified client certificate stands in for the auth token, admin rights included.
#[test]
fn client_certificate_authenticates_and_may_force_under_restrict_admin() {
    let p = pki("tls-mtls");
    let b = tls_broker(&p, |b| {
        b.tls_client_ca(Some(p.ca.pem.clone()))
            .auth_token(Some("sekret".into()))
            .restrict_admin(true)
    });
    let port = b.addr.port();
    let holder = Client::builder(&format!("tcp://127.0.0.1:{port}"))
        .token("sekret")
        .connect()
        .expect("holder with the token");
    let mut g = Some(holder.lock("k").expect("lock"));
    // TLS alone is not authentication: no certificate, no token, no service.
    match tls_client(&format!("tls://127.0.0.1:{port}"), &p.ca.pem) {
        Err(Error::Rejected(msg)) => println!("no certificate, no token: {msg}"),
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("served without a token or a certificate"),
    }
    for url in [
        format!("tls://127.0.0.1:{port}"),
        format!("wss://127.0.0.1:{port}/"),
    ] {
        let admin = Client::builder(&url)
            .tls_ca(&p.ca.pem)
            .tls_client_cert(&p.client.cert, &p.client.key)
            .connect()
            .unwrap_or_else(|e| panic!("{url} with a client certificate: {e}"));
        admin.ping().expect("served");
        if url.starts_with("tls") {
            admin
                .force_unlock("k")
                .expect("force with a client certificate");
            assert!(admin.try_lock("k").expect("try").is_some(), "k was freed");
            let late = g.take().expect("held").unlock();
            assert!(matches!(late, Err(Error::LockLost)), "{late:?}");
        }
    }
}

/// `GET /metrics` over TLS with a client certificate, no token: the status line.
fn metrics_with_a_client_certificate(port: u16, p: &Pki) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&p.ca.pem).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&p.client.cert)
        .expect("cert")
        .map(|c| c.expect("client cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&p.client.key).expect("key");
    // ring, as the broker and the clients use (deprecated in rustls 0.23.48 for lacking
    // post-quantum key exchange; see src/pem.rs).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("conn");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let mut reply = Vec::new();
    // The broker closes after the reply; a TLS peer that skips close_notify is fine here.
    let _ = tls.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply.lines().next().unwrap_or("").to_string()
}

/// A verified client certificate stands in for the token on `/metrics` too; plain HTTP
/// without the token is still refused.
#[test]
fn client_certificate_reads_metrics_without_the_token() {
    let p = pki("tls-metrics");
    let b = tls_broker(&p, |b| {
        b.tls_client_ca(Some(p.ca.pem.clone()))
            .auth_token(Some("sekret".into()))
    });
    let port = b.addr.port();
    let status = metrics_with_a_client_certificate(port, &p);
    println!("/metrics over TLS with a client certificate: {status}");
    assert!(status.contains(" 200 "), "{status}");
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    let _ = plain.read_to_string(&mut reply);
    println!(
        "/metrics in plain text without the token: {}",
        reply.lines().next().unwrap_or("")
    );
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
}

#[test]
fn each_bad_certificate_is_named() {
    let p = pki("tls-bad");
    let other_ca = Ca::new(&p.dir, "other");
    let cases: [(&str, Leaf, &Path, &str); 3] = [
        (
            "wrong name",
            p.ca.server("elsewhere", &["elsewhere.example"]),
            &p.ca.pem,
            "wrong name",
        ),
        (
            "unknown CA",
            p.ca.server("srv2", &["127.0.0.1"]),
            &other_ca.pem,
            "unknown CA",
        ),
        (
            "expired",
            p.ca.expired_server("old", &["127.0.0.1"]),
            &p.ca.pem,
            "expired",
        ),
    ];
    for (what, leaf, trust, expect) in cases {
        let b = TestBroker::with(|b| b.tls(&leaf.cert, &leaf.key));
        let msg = tls_error(tls_client(
            &format!("tls://127.0.0.1:{}", b.addr.port()),
            trust,
        ));
        println!("{what}: {msg}");
        assert!(msg.contains(expect), "{what}: {msg}");
    }
    // The broker refuses a client certificate its client CA did not sign.
    let b = tls_broker(&p, |b| b.tls_client_ca(Some(p.ca.pem.clone())));
    let stranger = other_ca.client("mallory");
    let r = Client::builder(&format!("tls://127.0.0.1:{}", b.addr.port()))
        .tls_ca(&p.ca.pem)
        .tls_client_cert(&stranger.cert, &stranger.key)
        .connect();
    let msg = tls_error(r);
    println!("client certificate of an unknown CA: {msg}");
    assert!(msg.contains("refused our client certificate"), "{msg}");
}

#[test]
fn a_client_hello_to_a_plain_broker_is_closed_cleanly() {
    let p = pki("tls-plain");
    let b = TestBroker::start();
    let port = b.addr.port();
    let msg = tls_error(tls_client(&format!("tls://127.0.0.1:{port}"), &p.ca.pem));
    println!("tls:// to a plain broker: {msg}");
    assert!(msg.contains("does it serve TLS"), "{msg}");
    // Raw: the start of a ClientHello record is answered with a FIN (a read of 0 bytes), not
    // a reset, and no bytes.
    let mut s = TcpStream::connect(b.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ])
    .expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).expect("a clean close, not a reset"), 0);
    // Everyone else is served as before.
    let c = Client::connect(&format!("tcp://127.0.0.1:{port}")).expect("plain");
    c.lock("k").expect("lock").unlock().expect("unlock");
}

#[test]
fn require_tls_needs_a_certificate() {
    let r = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .require_tls(true)
        .bind();
    assert!(
        r.is_err(),
        "require_tls without a certificate must not bind"
    );
}

#[test]
fn sighup_reloads_the_certificate_while_a_connection_holds_a_lock() {
    let p = pki("tls-reload");
    let cert = p.dir.join("live.pem");
    let key = p.dir.join("live-key.pem");
    std::fs::copy(&p.server.cert, &cert).unwrap();
    std::fs::copy(&p.server.key, &key).unwrap();
    let (lmx, addr) = common::lmx_listening(
        Command::new(common::LMX)
            .args(["start", "--host", "127.0.0.1", "--port", "0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key),
    );
    let url = format!("tls://{addr}");
    let holder = tls_client(&url, &p.ca.pem).expect("connect");
    let g = holder.lock("k").expect("lock");
    // A new CA's certificate replaces the files; SIGHUP.
    let ca2 = Ca::new(&p.dir, "next");
    let next = ca2.server("next", &["127.0.0.1"]);
    std::fs::copy(&next.cert, &cert).unwrap();
    std::fs::copy(&next.key, &key).unwrap();
    let pid = lmx.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // New connections see the new certificate (the old CA no longer verifies it)...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        match tls_client(&url, &ca2.pem) {
            Ok(c) => break c,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "never reloaded: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let msg = tls_error(tls_client(&url, &p.ca.pem));
    assert!(msg.contains("unknown CA"), "{msg}");
    // ...while the old connection and its lock live on.
    assert!(
        fresh.try_lock("k").expect("try").is_none(),
        "the lock survived"
    );
    assert!(!g.is_lost());
    holder.ping().expect("the old connection still answers");
    g.unlock().expect("unlock through the old connection");
    assert!(fresh.try_lock("k").expect("try").is_some());
}
