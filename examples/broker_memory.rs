//! Resident memory of an `lmx start` broker process: idle, with many idle connections, with many
//! held keys, and after those are released.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/broker_memory [--lmx target/release/lmx] [--conns 10000] [--keys 100000]
//! ```
//!
//! Starts its own broker on a free loopback port and stops it at the end. Each idle connection
//! sends one `ping` (so the broker has sniffed it as NDJSON and set it up fully) and then stays
//! silent. The held keys are taken by 20 connections (the broker allows 10,000 requests per
//! connection), `ttl:null`, then released with pipelined unlocks. Prints one line per stage and
//! a final JSON line. Needs `ulimit -n` above `--conns` + 100.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY_CONNS: usize = 20;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The RSS once it has stopped moving (the broker finishes reading closes asynchronously).
fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `lines` on `s` (pipelined) and reads as many reply lines.
fn exchange(s: &TcpStream, lines: &[String]) {
    let mut w = std::io::BufWriter::with_capacity(64 << 10, s);
    let mut r = BufReader::new(s);
    let mut buf = String::new();
    // Write in batches so neither side's socket buffer fills while the other is not reading.
    for chunk in lines.chunks(500) {
        for l in chunk {
            w.write_all(l.as_bytes()).unwrap();
        }
        w.flush().unwrap();
        for _ in chunk {
            buf.clear();
            r.read_line(&mut buf).unwrap();
            assert!(!buf.contains("\"error\""), "broker said {buf}");
        }
    }
}

/// Starts `lmx start` on a free loopback port and waits until it accepts connections.
fn start(lmx: &std::path::Path) -> (Broker, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(lmx)
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", lmx.display()));
    let broker = Broker(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "broker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, port)
}

fn main() {
    let conns: usize = arg("--conns").map_or(10_000, |v| v.parse().expect("--conns"));
    let keys: usize = arg("--keys").map_or(100_000, |v| v.parse().expect("--keys"));
    let lmx = arg("--lmx").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("lmx")
    });
    let (broker, port) = start(&lmx);
    let pid = broker.0.id();
    let ping = |i: usize| format!("{{\"type\":\"ping\",\"uuid\":\"p{i}\"}}\n");
    {
        let s = connect(port);
        exchange(&s, &[ping(0)]);
    }
    let base = settled_rss(pid);
    println!("broker pid {pid}: idle RSS {base} KiB");

    let idle: Vec<TcpStream> = (0..conns)
        .map(|i| {
            let s = connect(port);
            exchange(&s, &[ping(i)]);
            s
        })
        .collect();
    let with_conns = settled_rss(pid);
    let per_conn = (with_conns.saturating_sub(base)) as f64 * 1024.0 / conns as f64;
    println!("{conns} idle connections: RSS {with_conns} KiB, {per_conn:.0} bytes per connection");
    drop(idle);
    let after_conns = settled_rss(pid);
    println!("after closing them: RSS {after_conns} KiB");

    drop(broker);

    // A fresh broker for the keys, so that memory kept from the connections does not hide them.
    let (broker, port) = start(&lmx);
    let pid = broker.0.id();
    {
        let s = connect(port);
        exchange(&s, &[ping(0)]);
    }
    let base2 = settled_rss(pid);
    println!("fresh broker pid {pid}: idle RSS {base2} KiB");
    let holders: Vec<TcpStream> = (0..KEY_CONNS).map(|_| connect(port)).collect();
    on_each_key(&holders, keys, |k| {
        format!(
            "{{\"type\":\"lock\",\"uuid\":\"{:032x}\",\"key\":\"key-{k:07}\",\"ttl\":null}}\n",
            k as u128 + 1
        )
    });
    let with_keys = settled_rss(pid);
    let per_key = (with_keys.saturating_sub(base2)) as f64 * 1024.0 / keys as f64;
    println!("{keys} held keys: RSS {with_keys} KiB, {per_key:.0} bytes per key");
    on_each_key(&holders, keys, |k| {
        format!(
            "{{\"type\":\"unlock\",\"uuid\":\"u{k}\",\"key\":\"key-{k:07}\",\"_uuid\":\"{:032x}\"}}\n",
            k as u128 + 1
        )
    });
    let after_unlock = settled_rss(pid);
    println!("after unlocking them all: RSS {after_unlock} KiB");
    drop(holders);
    let after_close = settled_rss(pid);
    println!("after closing those connections too: RSS {after_close} KiB");
    println!(
        "{{\"idle_kib\":{base},\"keys_idle_kib\":{base2},\"conns\":{conns},\"with_conns_kib\":{with_conns},\"bytes_per_conn\":{per_conn:.0},\"after_conns_kib\":{after_conns},\"keys\":{keys},\"with_keys_kib\":{with_keys},\"bytes_per_key\":{per_key:.0},\"after_unlock_kib\":{after_unlock},\"after_close_kib\":{after_close}}}"
    );
    drop(broker);
}

/// Sends one request per key, the keys split evenly over the connections, each connection on
/// its own thread, and waits for every reply.
fn on_each_key(holders: &[TcpStream], keys: usize, line: impl Fn(usize) -> String + Sync) {
    let per = keys.div_ceil(holders.len());
    let line = &line;
    std::thread::scope(|s| {
        for (c, conn) in holders.iter().enumerate() {
            s.spawn(move || {
                let lines: Vec<String> = (c * per..((c + 1) * per).min(keys)).map(line).collect();
                exchange(conn, &lines);
            });
        }
    });
}
