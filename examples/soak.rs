//! Load for `scripts/soak.sh`: a mix of everything the fault tests do, against a broker that
//! runs in another process, for a given number of seconds. Prints counts at the end; exits
//! non-zero if mutual exclusion was ever seen broken.
//!
//! `cargo run --release --example soak -- 127.0.0.1:PORT SECONDS`

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use live_mutex::{Client, LockOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: soak ADDR SECONDS");
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let url = format!("tcp://{addr}");
    let cycles = Arc::new(AtomicU64::new(0));
    let overlaps = Arc::new(AtomicU64::new(0));
    let inside: Arc<Vec<AtomicBool>> = Arc::new((0..8).map(|_| AtomicBool::new(false)).collect());
    let mut threads = Vec::new();
    // Lockers: exclusive locks with TTLs, try-locks and wait time-outs on 8 keys.
    for w in 0..8u64 {
        let (url, cycles, overlaps, inside) = (
            url.clone(),
            cycles.clone(),
            overlaps.clone(),
            inside.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(w);
            let mut client = None;
            while Instant::now() < deadline {
                let c = match &client {
                    Some(c) => c,
                    None => match Client::connect(&url) {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let k = rng.usize(0..8);
                let opts = match rng.u8(0..3) {
                    0 => LockOptions::new().ttl(Duration::from_millis(2000)),
                    1 => LockOptions::new().try_only(),
                    _ => LockOptions::new().timeout(Duration::from_millis(rng.u64(1..50))),
                };
                if let Ok(g) = c.lock_with(&format!("soak{k}"), &opts) {
                    if inside[k].swap(true, Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_micros(rng.u64(0..300)));
                    inside[k].store(false, Ordering::SeqCst);
                    drop(g);
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Churn, garbage, hogs and killed holders.
    let churns = Arc::new(AtomicU64::new(0));
    {
        let churns = churns.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(99);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let Ok(mut s) = TcpStream::connect(addr) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let garbage: Vec<u8> = (0..rng.usize(1..200)).map(|_| rng.u8(..)).collect();
                let _ = match n % 4 {
                    0 => s.write_all(b"{\"type\":\"ping\",\"uuid\":\"c\"}\n"),
                    1 => s.write_all(&[garbage.as_slice(), b"\n"].concat()),
                    2 => s.write_all(b"{\"type\":\"lock\",\"uuid\":\"x\",\"key\":7}\n"),
                    _ => s.write_all(b"null\n[1]\n{\"type\":\"frobnicate\"}\n"),
                };
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).ok();
                churns.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(2000) {
                    hog(addr);
                }
                if n.is_multiple_of(500) {
                    killed_holder(addr);
                }
            }
        }));
    }
    for t in threads {
        t.join().ok();
    }
    let (c, o, ch) = (
        cycles.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst),
        churns.load(Ordering::SeqCst),
    );
    println!("soak: {c} lock cycles, {ch} churn connections, {o} overlaps");
    if o > 0 {
        std::process::exit(1);
    }
}

/// Pipelines pings for a second without reading a reply.
fn hog(addr: SocketAddr) {
    if let Ok(mut s) = TcpStream::connect(addr) {
        s.set_write_timeout(Some(Duration::from_secs(1))).ok();
        let burst = b"{\"type\":\"ping\",\"uuid\":\"hog\"}\n".repeat(1000);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(1) && s.write_all(&burst).is_ok() {}
    }
}

/// A separate process takes a lock, then dies by SIGKILL.
fn killed_holder(addr: SocketAddr) {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf '%s\\n' '{{\"type\":\"lock\",\"uuid\":\"h\",\"key\":\"soak0\",\"ttl\":null}}' >&3; sleep 5",
        addr.ip(),
        addr.port()
    );
    if let Ok(mut child) = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
    {
        std::thread::sleep(Duration::from_millis(200));
        child.kill().ok();
        child.wait().ok();
    }
}
