//! Connection flood: 2,000 connections open at once, then 20,000 connect/disconnect cycles.
//! The broker keeps answering, and its descriptors and memory return near the baseline.
//! (One test in this binary: the RSS and descriptor counts it reads are this test's alone.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TestBroker, Transport, rss_kib, wait_until};
use serde_json::json;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn connection_flood_and_churn() {
    let b = TestBroker::start();
    let mut probe = b.connect(Transport::Tcp);
    let mut ping = |i: usize| {
        probe.send(json!({"type":"ping","uuid":format!("p{i}")}));
        assert_eq!(probe.recv()["uuid"], format!("p{i}"));
    };
    ping(0);
    let (fd0, rss0) = (fds(), rss_kib());
    let t0 = Instant::now();
    let mut open = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut s = TcpStream::connect(b.addr).unwrap();
        // Every connection holds a lock, so each one's death must be handled.
        s.write_all(
            json!({"type":"lock","uuid":format!("c{i}"),"key":format!("k{i}")})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        s.write_all(b"\n").unwrap();
        open.push(s);
    }
    for s in &mut open {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(&*s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"acquired\":true"), "{line}");
    }
    ping(1);
    eprintln!("2,000 connections locked in {:?}", t0.elapsed());
    let (fd_peak, rss_peak) = (fds(), rss_kib());
    eprintln!("2,000 open: fds {fd0} -> {fd_peak}, RSS {rss0} -> {rss_peak} KiB");
    drop(open);
    let t0 = Instant::now();
    for i in 0..20_000 {
        // Each short-lived client says one thing and waits for the answer, so the broker has
        // seen it before it goes (a bare connect+close storm only measures the SYN backlog).
        let mut s = TcpStream::connect(b.addr).unwrap();
        s.write_all(b"{\"type\":\"ping\",\"uuid\":\"c\"}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("pong"));
        drop(s);
        if i % 5000 == 0 {
            ping(2 + i);
        }
    }
    ping(99_999);
    eprintln!("20,000 connect/disconnect cycles: {:?}", t0.elapsed());
    assert!(
        wait_until(|| fds() <= fd0 + 8),
        "descriptors back near the baseline: {fd0} -> {}",
        fds()
    );
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"system-stats-request","uuid":"s"}));
    let stats = c.recv();
    assert_eq!(
        stats["stats"]["keys"], 0,
        "all 2,000 locks released: {stats}"
    );
    let rss1 = rss_kib();
    eprintln!("after: fds {}, RSS {rss1} KiB", fds());
    assert!(rss1 < rss0 + 32 * 1024, "RSS {rss0} -> {rss1} KiB");
}
