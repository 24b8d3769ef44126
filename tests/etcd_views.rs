//! What an etcd-backed broker shows of the cluster's locks (issue 23, step 2): `watch`,
//! `lmx top --once --json` and `GET /metrics` of broker B list and count a lock taken through
//! broker A, because they ask the store (etcd), not a table of B's own.
//!
//! The cluster comes from `LMX_ETCD_ENDPOINTS` (as `.ci/etcd.sh start` writes it), else the
//! test starts its own (see tests/common/etcd.rs).
#![cfg(feature = "etcd")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::etcd::{Cluster, prefix};
use common::{lmx_at, output_text};
use live_mutex::Client;
use live_mutex::broker::{Broker, BrokerHandle};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn broker(cl: &Cluster, p: &str) -> (BrokerHandle, SocketAddr) {
    let h = Broker::builder()
        .tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
        .etcd(cl.config(p))
        .bind()
        .expect("an etcd-backed broker binds")
        .spawn()
        .expect("spawn");
    let addr = h.local_addr().expect("tcp");
    (h, addr)
}

/// The first `watch` snapshot of the broker at `addr`.
fn watch(addr: SocketAddr) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(b"{\"type\":\"watch\",\"uuid\":\"w1\"}\n")
        .expect("send watch");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("a snapshot");
    serde_json::from_str(&line).expect("one JSON line")
}

/// `GET /metrics` of the broker at `addr`: the body.
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or(out)
}

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The keys of a snapshot, each with its number of holders.
fn listed(snap: &Value) -> Vec<(String, usize)> {
    snap["keys"]
        .as_array()
        .map(|ks| {
            ks.iter()
                .map(|k| {
                    let key = k["key"].as_str().unwrap_or("").to_owned();
                    (key, k["holders"].as_array().map_or(0, Vec::len))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_other_brokers_watch_top_and_metrics_show_a_lock_held_through_this_one() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bviews");
    let (a, a_addr) = broker(&cl, &p);
    let (b, b_addr) = broker(&cl, &p);
    let c = Client::builder(&format!("tcp://{a_addr}"))
        .request_timeout(Duration::from_secs(30))
        .connect()
        .expect("connect to A");
    let g = c.lock("held-on-a").expect("lock through A");

    // An etcd broker's gauges are its latest read of etcd: a scrape asks for a fresh read when
    // they are a second old (or missing, as here: nothing read B's locks yet), and says how
    // old they are.
    let end = Instant::now() + T;
    let mut body = metrics(b_addr);
    while (sample(&body, "lmx_keys"), sample(&body, "lmx_holders")) != (Some(1.0), Some(1.0)) {
        assert!(
            Instant::now() < end,
            "B's /metrics never counted the lock:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
        body = metrics(b_addr);
    }

    assert!(
        sample(&body, "lmx_store_reading_age_seconds").is_some_and(|a| a < 10.0),
        "{body}"
    );

    let snap = watch(b_addr);
    assert_eq!(
        listed(&snap),
        [("held-on-a".to_owned(), 1)],
        "B's watch: {snap}"
    );
    assert_eq!(
        (
            snap["stats"]["keys"].as_u64(),
            snap["stats"]["holders"].as_u64()
        ),
        (Some(1), Some(1)),
        "B's watch: {snap}"
    );

    let out = lmx_at(&format!("tcp://{b_addr}"), &["--json", "top", "--once"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let top: Value = serde_json::from_slice(&out.stdout).expect("lmx top --json: one object");
    assert_eq!(
        listed(&top),
        [("held-on-a".to_owned(), 1)],
        "lmx top on B: {top}"
    );

    g.unlock().expect("unlock");
    let end = Instant::now() + T;
    while !listed(&watch(b_addr)).is_empty() {
        assert!(
            Instant::now() < end,
            "B's watch still lists the released lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    for h in [a, b] {
        h.shutdown();
        h.join().expect("broker ended cleanly");
    }
}
