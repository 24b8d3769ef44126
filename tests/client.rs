mod common;

use common::{broker, scratch, stop};
use live_mutex::{BrokerKind, Client, Error, LockOptions, Mode, Ttl};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn guard_drop_releases() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    assert_eq!(c.broker_kind().unwrap(), BrokerKind::Rust);
    let g = c.lock("k").unwrap();
    let other = Client::connect(&url).unwrap();
    assert!(other.try_lock("k").unwrap().is_none());
    drop(g);
    // The unlock is pipelined ahead of this request on the same connection.
    let g2 = c.try_lock("k").unwrap().expect("released by drop");
    assert!(g2.fencing_token().is_some());
    g2.unlock().unwrap();
    assert!(other.try_lock("k").unwrap().is_some());
    stop(b);
}

#[test]
fn two_threads_on_one_client_contend() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let inside = Arc::new(AtomicU32::new(0));
    let mut last = 0u64;
    let tokens: Vec<Vec<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (c, inside) = (c.clone(), inside.clone());
                s.spawn(move || {
                    (0..200)
                        .map(|_| {
                            let g = c.lock("shared").unwrap();
                            assert_eq!(
                                inside.fetch_add(1, Ordering::SeqCst),
                                0,
                                "two holders at once"
                            );
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            g.fencing_token().unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = tokens.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 400, "fencing tokens are unique");
    for t in all {
        assert!(t > last);
        last = t;
    }
    stop(b);
}

/// Threads sharing one connection take turns reading it: whoever holds the read half routes the
/// others' replies and hands it on when its own reply arrives. A hand-off that went missing
/// would leave a waiter parked for its 1 s safety timeout; 16 threads x 25 contended cycles on
/// one key must run far faster than that.
#[test]
fn threads_sharing_a_connection_hand_the_reader_on() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let inside = AtomicU32::new(0);
    let t = Instant::now();
    let slowest = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (c, inside) = (&c, &inside);
                s.spawn(move || {
                    let mut slowest = Duration::ZERO;
                    for n in 0..25 {
                        let t = Instant::now();
                        // Every other call is a plain request/reply, so readers also come and go
                        // between grants.
                        if (i + n) % 2 == 0 {
                            c.ping().unwrap();
                        }
                        let g = c.lock("handoff").unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        g.unlock().unwrap();
                        slowest = slowest.max(t.elapsed());
                    }
                    slowest
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    });
    assert!(
        slowest < Duration::from_millis(900),
        "a waiter stalled for {slowest:?} (total {:?})",
        t.elapsed()
    );
    stop(b);
}

/// With nobody waiting, the background reader still notices that the broker went away.
#[test]
fn idle_guard_learns_of_a_dead_connection() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let g = c.lock("idle").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    g.on_lost(move || _ = tx.send(()));
    std::thread::sleep(Duration::from_millis(100));
    stop(b);
    rx.recv_timeout(Duration::from_secs(3))
        .expect("on_lost ran without any call on the client");
    assert!(g.is_lost());
}

#[test]
fn thousand_locks_in_flight_on_one_client() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    // One key held so that all 1,000 requests queue up behind it, in flight at once.
    let blocker = c.lock("hot").unwrap();
    let start = Arc::new(Barrier::new(1001));
    let done = Arc::new(AtomicU32::new(0));
    let hs: Vec<_> = (0..1000)
        .map(|i| {
            let (c, start, done) = (c.clone(), start.clone(), done.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    start.wait();
                    let key = if i % 2 == 0 {
                        "hot".to_string()
                    } else {
                        format!("cold{i}")
                    };
                    let g = c.lock(&key).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                    g.unlock().unwrap();
                })
                .unwrap()
        })
        .collect();
    start.wait();
    let t = Instant::now();
    while done.load(Ordering::SeqCst) < 500 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        done.load(Ordering::SeqCst),
        500,
        "the cold keys are not held up by the hot one"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.info("hot").unwrap().waiters, 500);
    blocker.unlock().unwrap();
    for h in hs {
        h.join().unwrap();
    }
    eprintln!("1000 locks in flight: done in {:?}", t.elapsed());
    assert_eq!(c.stats().unwrap().holders, 0);
    stop(b);
}

#[test]
fn try_lock_and_timeouts() {
    let (b, url) = broker();
    let (c1, c2) = (
        Client::connect(&url).unwrap(),
        Client::connect(&url).unwrap(),
    );
    let g = c1.try_lock("t").unwrap().unwrap();
    assert!(c2.try_lock("t").unwrap().is_none());
    let t = Instant::now();
    let r = c2.lock_with("t", &LockOptions::new().timeout(Duration::from_millis(100)));
    let waited = t.elapsed();
    assert!(matches!(r, Err(Error::WaitTimedOut)), "{r:?}");
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(900),
        "{waited:?}"
    );
    // Neither the refused try-lock nor the timed-out wait left a ghost in the queue.
    assert_eq!(c1.info("t").unwrap().waiters, 0);
    drop(g);
    assert!(c2.try_lock("t").unwrap().is_some());
    stop(b);
}

#[test]
fn ttl_expiry_extend_and_unlock_by_id() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let g = c
        .lock_with("e", &LockOptions::new().ttl(Duration::from_millis(150)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(80));
    g.extend(Some(Duration::from_millis(150))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!g.is_lost(), "extended");
    std::thread::sleep(Duration::from_millis(150));
    assert!(g.is_lost());
    assert!(matches!(g.extend(None), Err(Error::LockLost)));
    assert!(matches!(g.unlock(), Err(Error::LockLost)));

    let id = c
        .lock_with("x", &LockOptions::new().ttl(Ttl::Never))
        .unwrap()
        .detach();
    assert!(matches!(
        c.unlock("x", "00000000000000000000000000000000"),
        Err(Error::NotHeld)
    ));
    c.unlock("x", &id).unwrap();
    let g = c.lock("x").unwrap();
    c.force_unlock("x").unwrap();
    assert!(matches!(g.unlock(), Err(Error::LockLost)));
    stop(b);
}

#[test]
fn read_write_semaphore_and_many() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let read = LockOptions::new().mode(Mode::Read);
    let r1 = c.lock_with("rw", &read).unwrap();
    let r2 = c.lock_with("rw", &read).unwrap();
    let w = LockOptions::new().mode(Mode::Write).try_only();
    assert!(matches!(c.lock_with("rw", &w), Err(Error::Busy)));
    drop((r1, r2));
    c.lock_with("rw", &w).unwrap().unlock().unwrap();

    let sem = LockOptions::new().max(2);
    let s1 = c.lock_with("sem", &sem).unwrap();
    let s2 = c.lock_with("sem", &sem).unwrap();
    assert!(matches!(
        c.lock_with("sem", &sem.clone().try_only()),
        Err(Error::Busy)
    ));
    drop((s1, s2));

    let many = c.lock_many(&["m1", "m2"]).unwrap();
    assert_eq!(many.fencing_tokens().len(), 2);
    assert!(c.try_lock("m2").unwrap().is_none());
    let mut ls = c.ls().unwrap();
    ls.sort();
    assert!(
        ls.contains(&"m1".to_string()) && ls.contains(&"m2".to_string()),
        "{ls:?}"
    );
    many.unlock().unwrap();
    assert!(c.try_lock("m2").unwrap().is_some());
    assert!(c.ping().unwrap().server_time_ms.is_some());
    stop(b);
}

#[test]
fn unix_socket_and_websocket() {
    let dir = scratch("uds");
    let sock = dir.join("b.sock");
    let h = live_mutex::broker::Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .uds(&sock)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let uds = Client::connect(&format!("unix://{}", sock.display())).unwrap();
    let ws = Client::connect(&format!("ws://{}", h.local_addr().unwrap())).unwrap();
    let g = uds.lock("k").unwrap();
    assert!(ws.try_lock("k").unwrap().is_none());
    let c2 = ws.clone();
    let waiter = std::thread::spawn(move || c2.lock("k").map(|g| g.fencing_token()));
    std::thread::sleep(Duration::from_millis(30));
    let t = g.fencing_token();
    g.unlock().unwrap();
    assert!(waiter.join().unwrap().unwrap() > t);
    stop(h);
    drop(dir);
}

#[test]
fn broker_restart_loses_locks_fails_waiters_and_reconnects() {
    let (b, url) = broker();
    let addr = b.local_addr().unwrap();
    let c = Client::connect(&url).unwrap();
    let g = c.lock("k").unwrap();
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || c2.lock("k").map(|_| ()));
    std::thread::sleep(Duration::from_millis(50));
    let lost = Arc::new(AtomicU32::new(0));
    let l2 = lost.clone();
    g.on_lost(move || _ = l2.fetch_add(1, Ordering::SeqCst));
    stop(b);
    assert!(matches!(waiter.join().unwrap(), Err(Error::ConnectionLost)));
    assert!(g.is_lost());
    assert_eq!(lost.load(Ordering::SeqCst), 1);
    assert!(matches!(g.unlock(), Err(Error::LockLost)));
    // Down: the call fails rather than hanging or pretending.
    assert!(c.lock("k").is_err());
    let b2 = live_mutex::broker::Broker::builder()
        .tcp(addr)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let t = Instant::now();
    let g = loop {
        match c.lock("k") {
            Ok(g) => break g,
            Err(e) if t.elapsed() < Duration::from_secs(5) => eprintln!("reconnecting: {e}"),
            Err(e) => panic!("no reconnect: {e}"),
        }
    };
    assert!(!g.is_lost());
    g.unlock().unwrap();
    stop(b2);
}

const CHILD_ENV: &str = "LMX_TEST_COUNTER_CHILD";

/// Runs only when re-invoked by `api_counter_from_8_processes`.
#[test]
fn counter_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, file) = spec.split_once('|').unwrap();
    let c = Client::connect(url).unwrap();
    for _ in 0..50 {
        let g = c.lock("ctr").unwrap();
        let n: u64 = std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
        std::fs::write(file, format!("{}\n", n + 1)).unwrap();
        g.unlock().unwrap();
    }
}

#[test]
fn api_counter_from_8_processes() {
    let (b, url) = broker();
    let dir = scratch("apictr");
    let file = dir.join("n");
    std::fs::write(&file, "0\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let t = Instant::now();
    let kids: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "counter_child", "--test-threads=1", "--quiet"])
                .env(CHILD_ENV, format!("{url}|{}", file.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let n = std::fs::read_to_string(&file).unwrap();
    eprintln!("8 processes x 50 via the API: {n:?} in {:?}", t.elapsed());
    assert_eq!(n.trim(), "400");
    stop(b);
    drop(dir);
}

#[test]
fn auth_token() {
    let h = live_mutex::broker::Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .auth_token(Some("s3cret".into()))
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = h.local_addr().unwrap();
    let r = Client::connect(&format!("tcp://{addr}"));
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    let r = Client::connect(&format!("tcp://{addr}?token=wrong"));
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    let r = Client::connect(&format!("ws://wrong@{addr}"));
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    for url in [
        format!("tcp://{addr}?token=s3cret"),
        format!("ws://s3cret@{addr}"),
    ] {
        let c = Client::connect(&url).unwrap();
        c.lock("k").unwrap().unlock().unwrap();
    }
    let c = Client::builder(&format!("tcp://{addr}"))
        .token("s3cret")
        .connect()
        .unwrap();
    assert_eq!(c.broker_kind().unwrap(), BrokerKind::Rust);
    stop(h);
}

/// A list of brokers (issue 25): the first that answers is used; when its connection drops,
/// the guards report lost and the next call goes to the next live broker, not back to the
/// dead one. (Two in-memory brokers: separate locks; tests/etcd_broker.rs has the shared-store
/// failover.)
#[test]
fn a_list_of_brokers_moves_on_when_the_connection_drops() {
    let (a, url_a) = broker();
    let (b, url_b) = broker();
    let c = Client::connect(&format!("tcp://127.0.0.1:1,{url_a},{url_b}")).expect("connect");
    assert_eq!(
        c.endpoint().as_deref(),
        Some(url_a.as_str()),
        "1 refused: A"
    );
    let g = c.lock("k").expect("lock on A");
    stop(a);
    let t = Instant::now();
    while !g.is_lost() {
        assert!(t.elapsed() < Duration::from_secs(5), "the guard is told");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.endpoint(), None, "no live connection");
    let g2 = c.lock("k").expect("the next call connects to B");
    assert_eq!(c.endpoint().as_deref(), Some(url_b.as_str()));
    g2.unlock().expect("unlock on B");
    assert!(matches!(
        g.unlock(),
        Err(Error::LockLost | Error::ConnectionLost)
    ));
    stop(b);
}
