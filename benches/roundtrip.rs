//! One client doing lock+unlock cycles against an embedded broker, over each transport, beside
//! a trivial echo server measured in the same run: a cycle is two request/reply round trips,
//! so "2 × echo" is the floor that the kernel and the wake-ups set.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use live_mutex::broker::Broker;

const LOCK: &[u8] = b"{\"type\":\"lock\",\"uuid\":\"8650931b-4909-4955-9c19-ce805365af0e\",\"key\":\"foo\",\"ttl\":7050,\"max\":null}\n";
const UNLOCK: &[u8] = b"{\"type\":\"unlock\",\"uuid\":\"abd1661b-c6cc-4090-aa77-600b136f8902\",\"key\":\"foo\",\"_uuid\":\"8650931b-4909-4955-9c19-ce805365af0e\"}\n";

fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            s.set_nodelay(true).ok();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = Vec::new();
                while r
                    .read_until(b'\n', &mut line)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    if w.write_all(&line).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

fn cycle<S: Read + Write>(r: &mut BufReader<S>, line: &mut Vec<u8>) {
    r.get_mut().write_all(LOCK).unwrap();
    line.clear();
    r.read_until(b'\n', line).unwrap();
    r.get_mut().write_all(UNLOCK).unwrap();
    line.clear();
    r.read_until(b'\n', line).unwrap();
}

fn roundtrip(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lmx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("b.sock");
    let broker = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .uds(&uds)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = broker.local_addr().unwrap();
    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(4));

    let echo = echo_server();
    let s = TcpStream::connect(echo).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    g.bench_function("echo: 2 round trips (tcp)", |b| {
        b.iter(|| cycle(&mut r, &mut line))
    });

    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s);
    g.bench_function("lock+unlock: tcp ndjson", |b| {
        b.iter(|| cycle(&mut r, &mut line))
    });

    let s = UnixStream::connect(&uds).unwrap();
    let mut r = BufReader::new(s);
    g.bench_function("lock+unlock: unix ndjson", |b| {
        b.iter(|| cycle(&mut r, &mut line))
    });

    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), s).unwrap();
    let (lock, unlock) = (
        String::from_utf8_lossy(&LOCK[..LOCK.len() - 1]).into_owned(),
        String::from_utf8_lossy(&UNLOCK[..UNLOCK.len() - 1]).into_owned(),
    );
    g.bench_function("lock+unlock: websocket", |b| {
        b.iter(|| {
            ws.send(tungstenite::Message::text(lock.clone())).unwrap();
            ws.read().unwrap();
            ws.send(tungstenite::Message::text(unlock.clone())).unwrap();
            ws.read().unwrap();
        })
    });
    g.finish();
    broker.shutdown();
    broker.join().ok();
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
