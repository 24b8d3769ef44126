//! What a connection's close costs the other clients (issue 20, items 3 and 4), measured on
//! two broker binaries side by side in one run, each started fresh per scenario:
//!
//! ```sh
//! cargo run --release --example close_cost -- before=/path/to/old/lmx after=target/release/lmx
//! ```
//!
//! - **held**: 10 connections hold 100,000 locks (10,000 each); then, 2,000 times, a client
//!   connects, takes a lock, and closes, and right after its close a steady client sends a
//!   `ping`: the p50 of that ping, with and without the 100,000 locks held.
//! - **rw**: `increment-readers` for 300,000 distinct keys (0.2.x read/write protocol), from
//!   one connection (a broker that caps a connection refuses the rest: the count accepted is
//!   printed) or from 30 (10,000 each, within the cap); then, for 3 s, idle clients come and go
//!   (connect, ping, close) while a steady client pings: the p50 of one open+ping+close, and
//!   of the steady client's ping.
//!
//! Figures are medians of what this machine did in this run; compare the columns, not runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let w = TcpStream::connect(addr).expect("connect");
        w.set_nodelay(true).ok();
        let r = BufReader::with_capacity(1 << 20, w.try_clone().expect("clone"));
        Conn {
            w,
            r,
            line: String::new(),
        }
    }
    fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).expect("write");
    }
    fn recv(&mut self) -> &str {
        self.line.clear();
        let n = self.r.read_line(&mut self.line).expect("read");
        assert!(n > 0, "the broker closed the connection");
        &self.line
    }
    /// Round trip of one ping.
    fn ping(&mut self) -> Duration {
        let t0 = Instant::now();
        self.send("{\"type\":\"ping\",\"uuid\":\"p\"}\n");
        self.recv();
        t0.elapsed()
    }
}

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn start(bin: &str) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(bin)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{bin} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// Sends `lines` in writes of 500 and reads their replies; returns how many did not fail.
/// (Small batches: a broker before issue 20's fix could cut off a bigger pipeline.)
fn pipeline(c: &mut Conn, lines: &[String]) -> usize {
    let mut ok = 0;
    for batch in lines.chunks(500) {
        c.send(&batch.concat());
        for _ in batch {
            if !c.recv().contains("\"error\"") {
                ok += 1;
            }
        }
    }
    ok
}

/// Ping p50 right after each of `n` lock-then-close clients.
fn ping_after_closes(addr: SocketAddr, steady: &mut Conn, n: usize) -> f64 {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Conn::open(addr);
        c.send(&format!(
            "{{\"type\":\"lock\",\"uuid\":\"c{i}\",\"key\":\"churn{i}\",\"ttl\":null}}\n"
        ));
        c.recv();
        drop(c);
        lat.push(steady.ping());
    }
    p50(lat)
}

fn held(bin: &str) -> (f64, f64) {
    let b = Broker::start(bin);
    let mut steady = Conn::open(b.addr);
    for _ in 0..200 {
        steady.ping();
    }
    let quiet = ping_after_closes(b.addr, &mut steady, 2000);
    let mut holders: Vec<Conn> = (0..10).map(|_| Conn::open(b.addr)).collect();
    for (h, c) in holders.iter_mut().enumerate() {
        let lines: Vec<String> = (0..10_000)
            .map(|i| format!("{{\"type\":\"lock\",\"uuid\":\"h{h}-{i}\",\"key\":\"k{h}-{i}\",\"ttl\":null}}\n"))
            .collect();
        let ok = pipeline(c, &lines);
        assert_eq!(ok, 10_000, "locks held by holder {h}");
    }
    let loaded = ping_after_closes(b.addr, &mut steady, 2000);
    (quiet, loaded)
}

/// `conns` connections share 300,000 `increment-readers` of distinct keys; then idle clients
/// come and go.
fn rw(bin: &str, conns: usize) -> (usize, f64, f64) {
    let b = Broker::start(bin);
    let mut hogs: Vec<Conn> = (0..conns).map(|_| Conn::open(b.addr)).collect();
    let per = 300_000 / conns;
    let mut accepted = 0;
    for (h, hog) in hogs.iter_mut().enumerate() {
        let lines: Vec<String> = (0..per)
            .map(|i| {
                format!(
                    "{{\"type\":\"increment-readers\",\"uuid\":\"r{i}\",\"key\":\"rw{h}-{i}\"}}\n"
                )
            })
            .collect();
        accepted += pipeline(hog, &lines);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let addr = b.addr;
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let mut c = Conn::open(addr);
                c.ping();
                drop(c);
                lat.push(t0.elapsed());
            }
            lat
        })
    };
    let mut steady = Conn::open(b.addr);
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        lat.push(steady.ping());
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = churn.join().expect("churn");
    (accepted, p50(cycles), p50(lat))
}

fn main() {
    let brokers: Vec<(String, String)> = std::env::args()
        .skip(1)
        .map(|a| match a.split_once('=') {
            Some((name, bin)) => (name.to_string(), bin.to_string()),
            None => (a.clone(), a),
        })
        .collect();
    assert!(
        !brokers.is_empty(),
        "usage: close_cost NAME=PATH-TO-LMX ..."
    );
    println!("held: ping p50 (ms) right after a lock-then-close client, 2,000 samples");
    println!(
        "{:>10} {:>16} {:>26}",
        "broker", "no locks held", "100,000 held by 10 conns"
    );
    for (name, bin) in &brokers {
        let (quiet, loaded) = held(bin);
        println!("{name:>10} {quiet:>16.3} {loaded:>26.3}");
    }
    println!();
    println!("rw: 300,000 increment-readers (distinct keys) on 1 connection, or on 30 (10,000");
    println!("each), then idle clients come and go for 3 s; p50s in ms");
    println!(
        "{:>10} {:>6} {:>10} {:>22} {:>16}",
        "broker", "conns", "accepted", "open+ping+close p50", "steady ping p50"
    );
    for conns in [1, 30] {
        for (name, bin) in &brokers {
            let (accepted, cycle, steady) = rw(bin, conns);
            println!("{name:>10} {conns:>6} {accepted:>10} {cycle:>22.3} {steady:>16.3}");
        }
    }
}
