//! Brokers backed by the etcd store (`BrokerBuilder::etcd`, `lmx start --store etcd://...`):
//! two brokers on one 3-member loopback etcd cluster, clients on both.
//!
//! The cluster comes from `LMX_ETCD_ENDPOINTS` (as `.ci/etcd.sh start` writes it), else each
//! test starts its own with `.ci/etcd.sh` (see tests/common/etcd.rs). Tests skip, saying so,
//! only when etcd is not installed and `LMX_REQUIRE_ETCD` is unset.
#![cfg(feature = "etcd")]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Killed;
use common::etcd::{Cluster, prefix};
use live_mutex::broker::{Broker, BrokerHandle};
use live_mutex::client::LockOptions;
use live_mutex::internal::etcd::EtcdConfig;
use live_mutex::{Client, Error};

const T: Duration = Duration::from_secs(10);

fn etcd_cfg(cl: &Cluster, p: &str, session_ttl: Duration) -> EtcdConfig {
    let mut cfg = cl.config(p);
    cfg.session_ttl = session_ttl;
    cfg
}

/// An embedded broker on the cluster under prefix `p`, on a TCP port the npm client accepts.
fn broker(cl: &Cluster, p: &str) -> (BrokerHandle, String) {
    for _ in 0..64 {
        let b = Broker::builder()
            .tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
            .etcd(etcd_cfg(cl, p, Duration::from_secs(10)))
            .bind()
            .expect("an etcd-backed broker binds");
        let port = b.local_addr().expect("tcp").port();
        if (1025..=49151).contains(&port) {
            return (b.spawn().expect("spawn"), format!("tcp://127.0.0.1:{port}"));
        }
    }
    panic!("no TCP port in 1025..=49151");
}

fn stop(h: BrokerHandle) {
    h.shutdown();
    h.join().expect("broker ended cleanly");
}

fn client(url: &str) -> Client {
    Client::builder(url)
        .request_timeout(Duration::from_secs(30))
        .connect()
        .expect("connect")
}

/// Waits until etcd records `n` waiters on `key`.
fn wait_waiters(c: &Client, key: &str, n: u64) {
    let end = Instant::now() + T;
    while c.info(key).expect("info").waiters != n {
        assert!(Instant::now() < end, "never {n} waiters on {key}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn contention_across_two_brokers_never_overlaps() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bcontend");
    let brokers = [broker(&cl, &p), broker(&cl, &p)];
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(Mutex::new(0u64));
    let falling = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for i in 0..6 {
        let url = brokers[i % 2].1.clone();
        let (inside, overlaps, last_token, falling, grants) = (
            inside.clone(),
            overlaps.clone(),
            last_token.clone(),
            falling.clone(),
            grants.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let c = client(&url);
            for _ in 0..20 {
                let g = c.lock("hot").expect("lock");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                {
                    let tok = g.fencing_token().expect("token");
                    let mut last = last_token.lock().unwrap_or_else(|e| e.into_inner());
                    if tok <= *last {
                        falling.fetch_add(1, Ordering::SeqCst);
                    }
                    *last = tok;
                }
                std::thread::sleep(Duration::from_millis(1));
                inside.fetch_sub(1, Ordering::SeqCst);
                grants.fetch_add(1, Ordering::SeqCst);
                g.unlock().expect("unlock");
            }
        }));
    }
    for t in threads {
        t.join().expect("client thread");
    }
    println!(
        "2 etcd-backed brokers x 3 clients: {} grants in {:?}, {} overlaps, {} falling tokens",
        grants.load(Ordering::SeqCst),
        t0.elapsed(),
        overlaps.load(Ordering::SeqCst),
        falling.load(Ordering::SeqCst)
    );
    assert_eq!(grants.load(Ordering::SeqCst), 120);
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(falling.load(Ordering::SeqCst), 0);
    for (h, _) in brokers {
        stop(h);
    }
}

#[test]
fn fifo_and_rising_tokens_across_brokers() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bfifo");
    let b = [broker(&cl, &p), broker(&cl, &p)];
    let watcher = client(&b[0].1);
    let first = client(&b[0].1).lock("q").expect("first");
    let mut last = first.fencing_token().expect("token");
    let (tx, order) = channel();
    let mut threads = Vec::new();
    // Waiters alternate between the brokers; each is recorded in etcd before the next asks.
    for i in 0..4u64 {
        let url = b[(i % 2) as usize].1.clone();
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let c = client(&url);
            let g = c.lock("q").expect("waiter");
            tx.send((i, g.fencing_token().expect("token")))
                .expect("send");
            std::thread::sleep(Duration::from_millis(20));
            g.unlock().expect("unlock");
        }));
        wait_waiters(&watcher, "q", i + 1);
    }
    first.unlock().expect("unlock first");
    for want in 0..4u64 {
        let (i, tok) = order.recv_timeout(T).expect("a grant");
        assert_eq!(i, want, "grants in request order across brokers");
        assert!(tok > last, "token {tok} after {last}");
        last = tok;
    }
    for t in threads {
        t.join().expect("waiter thread");
    }
    for (h, _) in b {
        stop(h);
    }
}

#[test]
fn try_lock_and_semaphore_across_brokers() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("btry");
    let b = [broker(&cl, &p), broker(&cl, &p)];
    let (c0, c1) = (client(&b[0].1), client(&b[1].1));
    let g = c0.lock("t").expect("lock");
    assert!(
        c1.try_lock("t").expect("try").is_none(),
        "busy on the other broker"
    );
    g.unlock().expect("unlock");
    let g = c1.try_lock("t").expect("try").expect("free now");
    g.unlock().expect("unlock");

    let sem = LockOptions::new().max(2);
    let s1 = c0.lock_with("sem", &sem).expect("first of 2");
    let s2 = c1.lock_with("sem", &sem).expect("second of 2");
    let try_sem = LockOptions::new().max(2).try_only();
    let third = c1.lock_with("sem", &try_sem);
    assert!(
        matches!(third, Err(Error::Busy)),
        "a third holder of max:2 is refused: {third:?}"
    );
    s1.unlock().expect("unlock");
    let s3 = c1.lock_with("sem", &try_sem).expect("a slot is free again");
    assert_eq!(c0.info("sem").expect("info").holders.len(), 2);
    s2.unlock().expect("unlock");
    s3.unlock().expect("unlock");
    for (h, _) in b {
        stop(h);
    }
}

#[test]
fn disconnect_frees_the_key_for_a_waiter_on_the_other_broker() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bdisc");
    let b = [broker(&cl, &p), broker(&cl, &p)];
    let holder = client(&b[0].1);
    let g = holder.lock("d").expect("lock");
    let url = b[1].1.clone();
    let (tx, got) = channel();
    let t = std::thread::spawn(move || {
        let c = client(&url);
        let g = c.lock("d").expect("waiter");
        tx.send(Instant::now()).expect("send");
        g.unlock().expect("unlock");
    });
    wait_waiters(&client(&b[1].1), "d", 1);
    let t0 = Instant::now();
    let _ = g.detach(); // no unlock: only the connection's close frees it
    drop(holder);
    let at = got.recv_timeout(T).expect("the waiter is granted");
    let took = at.duration_since(t0);
    println!("disconnect on broker A -> grant on broker B after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    t.join().expect("waiter");
    for (h, _) in b {
        stop(h);
    }
}

/// `lmx start --store etcd://... --session-ttl S` on a port of its own; returns it and its URL.
fn lmx_broker(cl: &Cluster, p: &str, ttl: u64) -> (Killed, String) {
    let mut cmd = Command::new(common::LMX);
    cmd.args(["start", "--host", "127.0.0.1", "--port", "0"]);
    cl.lmx_store(&mut cmd, p);
    cmd.args(["--session-ttl", &ttl.to_string()]);
    let (child, addr) = common::lmx_listening(&mut cmd);
    (child, format!("tcp://{addr}"))
}

#[test]
fn kill_9_of_a_broker_process_releases_its_locks_within_session_ttl() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let ttl = 3u64;
    let p = prefix("bkill");
    let (mut child, url) = lmx_broker(&cl, &p, ttl);
    let (h, other) = broker(&cl, &p);
    let keeper = client(&other);
    let keeps = keeper
        .lock("other")
        .expect("holder on the surviving broker");
    let victim = client(&url);
    let held = victim.lock("k").expect("holder on the doomed broker");
    let token_before = held.fencing_token().expect("token");
    let (tx, got) = channel();
    let t = std::thread::spawn(move || {
        let c = client(&other);
        let g = c.lock("k").expect("waiter");
        tx.send((Instant::now(), g.fencing_token())).expect("send");
        g.unlock().expect("unlock");
    });
    wait_waiters(&keeper, "k", 1);
    let t0 = Instant::now();
    child.0.kill().expect("SIGKILL lmx");
    let _ = child.0.wait();
    let bound = Duration::from_secs(ttl + 5);
    let (at, tok) = got.recv_timeout(bound).expect("released within TTL + 5 s");
    let took = at.duration_since(t0);
    println!("kill -9 of an lmx --store broker (session TTL {ttl} s): released after {took:?}");
    assert!(took < bound);
    assert!(tok.expect("token") > token_before);
    t.join().expect("waiter");
    // The surviving broker's holder is unaffected.
    assert!(!keeps.is_lost());
    let info = keeper.info("other").expect("info");
    assert_eq!(info.holders.len(), 1);
    assert_eq!(&*info.holders[0].id, keeps.id());
    keeps.unlock().expect("unlock");
    drop(victim);
    stop(h);
}

#[test]
fn etcd_leader_kill_both_brokers_serve_again_without_overlap() {
    let Some(cl) = Cluster::get(true) else { return };
    let p = prefix("bleader");
    let b = [broker(&cl, &p), broker(&cl, &p)];
    let leader = cl.leader();
    // (enter, exit, broker, lost) of every critical section.
    type Section = (Instant, Instant, usize, bool);
    let sections: Arc<Mutex<Vec<Section>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(14);
    let mut threads = Vec::new();
    for i in 0..4 {
        let (url, sections) = (b[i % 2].1.clone(), sections.clone());
        threads.push(std::thread::spawn(move || {
            let c = client(&url);
            while Instant::now() < stop_at {
                let Ok(g) = c.lock("hot") else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let enter = Instant::now();
                std::thread::sleep(Duration::from_millis(2));
                let exit = Instant::now();
                let lost = g.is_lost();
                let _ = g.unlock();
                sections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((enter, exit, i % 2, lost));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    // SAFETY: kill(2) on a pid this test's private cluster started.
    unsafe { libc::kill(cl.pids[leader], libc::SIGKILL) };
    for t in threads {
        t.join().expect("client");
    }
    let mut s = sections.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s.sort_by_key(|x| x.0);
    let overlaps = s
        .windows(2)
        .filter(|w| !w[0].3 && !w[1].3 && w[1].0 < w[0].1)
        .count();
    let first_after = |br: usize| {
        s.iter()
            .find(|x| x.2 == br && x.0 > killed)
            .map(|x| x.0.duration_since(killed))
    };
    let (a, bb) = (first_after(0), first_after(1));
    println!(
        "etcd leader (member {leader}) killed: {} sections, {} overlaps, {} lost, first grant after \
         the kill: broker A {a:?}, broker B {bb:?}",
        s.len(),
        overlaps,
        s.iter().filter(|x| x.3).count()
    );
    assert_eq!(overlaps, 0);
    for d in [a, bb] {
        assert!(
            d.is_some_and(|d| d < Duration::from_secs(10)),
            "{a:?} {bb:?}"
        );
    }
    for (h, _) in b {
        stop(h);
    }
}

/// Issue 20, item 11: after the leader is killed and a new one elected (the first lock cycle
/// after the kill succeeds), 8 clients (4 per broker) contending for one key get no error
/// reply: a request that meets a dead member or an election is retried on a live member
/// within its deadline, never answered with an error while a quorum is alive.
#[test]
fn etcd_after_a_leader_kill_requests_are_retried_not_failed() {
    let Some(cl) = Cluster::get(true) else { return };
    let p = prefix("bretry");
    let b = [broker(&cl, &p), broker(&cl, &p)];
    // Each broker has served a request, so each has connections to every member.
    for (_, url) in &b {
        client(url)
            .lock("warm")
            .expect("warm-up")
            .unlock()
            .expect("unlock");
    }
    let leader = cl.leader();
    // SAFETY: kill(2) on a pid this test's private cluster started.
    unsafe { libc::kill(cl.pids[leader], libc::SIGKILL) };
    let killed = Instant::now();
    let first = client(&b[0].1);
    let end = killed + Duration::from_secs(30);
    loop {
        if let Ok(g) = first.lock("hot") {
            g.unlock().expect("unlock");
            break;
        }
        assert!(
            Instant::now() < end,
            "no lock cycle within 30 s of the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "first lock cycle {:?} after the leader kill",
        killed.elapsed()
    );
    let errors = Arc::new(Mutex::new(Vec::new()));
    let cycles = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (url, errors, cycles) = (b[i % 2].1.clone(), errors.clone(), cycles.clone());
            std::thread::spawn(move || {
                let c = client(&url);
                for _ in 0..100 {
                    match c.lock("hot").and_then(|g| g.unlock()) {
                        Ok(()) => {
                            cycles.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "after the leader kill: {} lock cycles, {} errors {:?}",
        cycles.load(Ordering::Relaxed),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(errors.is_empty());
    for (h, _) in b {
        stop(h);
    }
}

#[test]
fn keep_alive_extend_and_lock_info_through_etcd() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bextend");
    let (b1, u1) = broker(&cl, &p);
    let (b2, u2) = broker(&cl, &p);
    let (c1, c2) = (client(&u1), client(&u2));
    // A 2 s TTL renewed by the guard (extend, every TTL/3) outlives its TTL several times.
    let opts = LockOptions::default()
        .ttl(Duration::from_secs(2))
        .keep_alive();
    let g = c1.lock_with("x", &opts).expect("lock");
    std::thread::sleep(Duration::from_secs(5));
    assert!(!g.is_lost(), "the keep-alive guard was lost");
    let busy = c2.lock_with("x", &LockOptions::default().try_only());
    assert!(
        busy.is_err(),
        "x is still held, seen from the other broker: {busy:?}"
    );
    // lock-info: etcd's holders; this broker says who its own holder is, the other cannot.
    let mine = c1.info("x").expect("info");
    assert!(mine.is_locked && mine.holders.len() == 1, "{mine:?}");
    assert_eq!(mine.holders[0].fencing_token, g.fencing_token());
    assert_eq!(mine.holders[0].who.pid, Some(u64::from(std::process::id())));
    let theirs = c2.info("x").expect("info");
    assert_eq!(theirs.holders[0].fencing_token, g.fencing_token());
    assert_eq!(theirs.holders[0].who.pid, None);
    g.unlock().expect("unlock");
    // Extending a lock whose TTL ended is refused.
    let short = LockOptions::default().ttl(Duration::from_millis(300));
    let g = c1.lock_with("y", &short).expect("lock");
    std::thread::sleep(Duration::from_secs(1));
    let r = g.extend(Some(Duration::from_secs(5)));
    assert!(r.is_err(), "extend of an expired lock: {r:?}");
    drop((c1, c2));
    stop(b1);
    stop(b2);
    let out = Command::new(common::LMX)
        .args(["start", "--port", "0", "--store", "http://nope"])
        .output()
        .expect("lmx");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store"), "{err}");
}

#[test]
fn acquire_many_across_two_brokers() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix("bmany");
    let (b1, u1) = broker(&cl, &p);
    let (b2, u2) = broker(&cl, &p);
    let (c1, c2) = (client(&u1), Arc::new(client(&u2)));
    let g = c1.lock_many(&["a", "b"]).expect("group on broker 1");
    let tokens = g.fencing_tokens().clone();
    assert_eq!(tokens.len(), 2);
    // A group on the other broker that shares "b" waits; a single lock of "a" is refused.
    let busy = c2.lock_with("a", &LockOptions::default().try_only());
    assert!(busy.is_err(), "a is a member of a held group: {busy:?}");
    let (tx, rx) = channel();
    let c = c2.clone();
    let t = std::thread::spawn(move || {
        let g2 = c.lock_many(&["c", "b"]).expect("group on broker 2");
        tx.send(g2.fencing_tokens().clone()).expect("send");
        g2.unlock().expect("release");
    });
    wait_waiters(&c2, "b", 1);
    assert!(
        rx.try_recv().is_err(),
        "granted while the first group held b"
    );
    g.unlock().expect("release-many");
    let later = rx.recv_timeout(T).expect("the second group is granted");
    assert!(
        later["b"] > tokens["b"],
        "tokens rise: {later:?} after {tokens:?}"
    );
    t.join().expect("thread");
    drop((c1, c2));
    stop(b1);
    stop(b2);
}

// ---- the npm live-mutex 0.2.25 client against an etcd-backed broker ----

/// The npm client installed by tests/node_interop.rs (`$LMX_NODE_CACHE`, else
/// `~/.cache/live-mutex-tests/node-0.2.25`). `None` (skipped, said so) when absent, unless
/// `LMX_REQUIRE_NODE=1`.
fn node_modules() -> Option<PathBuf> {
    let dir = std::env::var_os("LMX_NODE_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/live-mutex-tests/node-0.2.25")
        });
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_node && dir.join(".lmx-install-complete").is_file() {
        return Some(dir.join("node_modules"));
    }
    assert!(
        std::env::var("LMX_REQUIRE_NODE").as_deref() != Ok("1"),
        "LMX_REQUIRE_NODE=1 but node or the npm client cache is missing (run the node_interop tests first, they install it)"
    );
    eprintln!("SKIPPED: node or live-mutex@0.2.25 (installed by tests/node_interop.rs) missing");
    None
}

fn npm_scenario(script: &str) {
    let Some(nm) = node_modules() else { return };
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let p = prefix(&format!("npm-{script}"));
    let (h, url) = broker(&cl, &p);
    let port = url.rsplit(':').next().expect("port").to_owned();
    let tmp = std::env::temp_dir().join(format!("lmx-etcd-npm-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let mut child = Killed(
        Command::new("node")
            .arg(dir.join(format!("{script}.js")))
            .env("NODE_PATH", &nm)
            .env("LMX_TMPDIR", &tmp)
            .env("LMX_HOST", "127.0.0.1")
            .env("LMX_PORT", &port)
            .env_remove("LMX_UDS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node"),
    );
    let mut so = child.0.stdout.take().expect("stdout");
    let mut se = child.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    stop(h);
    let _ = std::fs::remove_dir_all(&tmp);
    let summary = format!("npm scenario {script} against an etcd-backed broker\n{out}\n{err}");
    assert!(status.is_some_and(|s| s.success()), "FAILED: {summary}");
    println!("{summary}");
}

#[test]
fn npm_client_basic() {
    npm_scenario("api_basic");
}

#[test]
fn npm_client_contention() {
    npm_scenario("contention");
}

#[test]
fn npm_client_semaphore() {
    npm_scenario("semaphore");
}

/// Failover with a list of brokers (issue 25): a client holds `k` through broker A, named
/// first in its URL list; another waits on B. kill -9 of A: the holder's guard reports lost,
/// the waiter is granted within A's session TTL, and the first client's next calls go through
/// B. Every grant is checked against the others (never two inside at once).
#[test]
fn a_client_with_a_list_of_brokers_fails_over_after_kill_9() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let ttl = 3u64;
    let p = prefix("bfailover");
    let (mut a, url_a) = lmx_broker(&cl, &p, ttl);
    let (hb, url_b) = broker(&cl, &p);
    // Who is inside `k` now: each client enters on its grant and leaves on unlock, or, for
    // the killed broker's holder, when its guard reports the loss.
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let enter = {
        let (inside, overlaps) = (inside.clone(), overlaps.clone());
        move || {
            if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let list = format!("{url_a},{url_b}");
    let c1 = client(&list);
    assert_eq!(
        c1.endpoint().as_deref(),
        Some(url_a.as_str()),
        "the first that answers"
    );
    let g1 = c1.lock("k").expect("lock through A");
    enter();
    let (tx, got) = channel();
    let waiter = {
        let (url_b, enter, inside) = (url_b.clone(), enter.clone(), inside.clone());
        std::thread::spawn(move || {
            let c2 = client(&url_b);
            let g = c2.lock("k").expect("waiter through B");
            enter();
            tx.send(Instant::now()).expect("send");
            std::thread::sleep(Duration::from_millis(50));
            inside.fetch_sub(1, Ordering::SeqCst);
            g.unlock().expect("unlock");
        })
    };
    let watcher = client(&url_b);
    wait_waiters(&watcher, "k", 1);
    let t0 = Instant::now();
    a.0.kill().expect("SIGKILL broker A");
    let _ = a.0.wait();
    while !g1.is_lost() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the holder is told its lock is lost"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let told = t0.elapsed();
    inside.fetch_sub(1, Ordering::SeqCst);
    let bound = Duration::from_secs(ttl + 5);
    let at = got
        .recv_timeout(bound)
        .expect("the waiter is granted within the session TTL");
    waiter.join().expect("waiter");
    // The first client's next call connects to the next live broker in its list: B.
    let g = c1.lock("k").expect("the next lock goes through B");
    enter();
    assert_eq!(c1.endpoint().as_deref(), Some(url_b.as_str()));
    inside.fetch_sub(1, Ordering::SeqCst);
    g.unlock().expect("unlock through B");
    println!(
        "kill -9 of broker A: holder told after {told:?}, waiter on B granted after {:?}, \
         the list's next lock on {url_b}; overlaps {}",
        at.duration_since(t0),
        overlaps.load(Ordering::SeqCst)
    );
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert!(matches!(
        g1.unlock(),
        Err(Error::LockLost | Error::ConnectionLost)
    ));
    drop((c1, watcher));
    stop(hb);
}
