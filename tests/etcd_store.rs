//! The etcd lock store with two stores ("brokers") on one 3-member etcd cluster on loopback.
//!
//! The cluster comes from `LMX_ETCD_ENDPOINTS` (as `.ci/etcd.sh start` writes it); without it
//! each test starts its own with `.ci/etcd.sh` and stops it. Tests skip, saying so, only when
//! etcd is not installed and `LMX_REQUIRE_ETCD` is unset. The leader-kill test always starts a
//! cluster of its own, since it kills a member.
#![cfg(feature = "etcd")]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::etcd::*;
use live_mutex::store::etcd::{
    ConnId, EtcdConfig, EtcdStore, KeyInfo, LockSpec, ManySpec, Op, StoreError, StoreEvent,
    StoreOp, Ttl, Wait,
};

#[test]
fn contention_across_two_brokers_never_overlaps() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("contend");
    let mut nodes = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    let t0 = Instant::now();
    let r = contend(&mut nodes, &wake, "hot", 3, 120, (0, Box::new(|| {})));
    println!(
        "contention: 2 brokers x 3 clients, {} grants in {:?}: {} overlaps, {} falling tokens, {} errors",
        r.grants,
        t0.elapsed(),
        r.overlaps,
        r.falling_tokens,
        r.errors
    );
    assert_eq!(
        (r.overlaps, r.falling_tokens, r.errors, r.lost),
        (0, 0, 0, 0)
    );
}

#[test]
fn fifo_and_rising_tokens_across_brokers() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("fifo");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "q", "a1", |_| {});
    let mut last = token(&n[0].expect(&wake, "a1 granted", T, granted("a1")));
    // Queue b1, a2, b2, a3 in this order: each is recorded before the next is sent.
    let order = [(1, 1, "b1"), (0, 2, "a2"), (1, 2, "b2"), (0, 3, "a3")];
    for &(node, conn, id) in &order {
        n[node].lock(conn, "q", id, |_| {});
        n[node].expect(&wake, "queued", T, queued(id));
    }
    let mut holder = (0, 1, "a1");
    for &(node, conn, id) in &order {
        n[holder.0].unlock(holder.1, "q", holder.2);
        let t = token(&n[node].expect(&wake, id, T, granted(id)));
        assert!(t > last, "tokens must rise: {t} after {last}");
        last = t;
        no_stray_grant(&mut n);
        holder = (node, conn, id);
    }
    println!(
        "fifo: a1 then b1 a2 b2 a3 granted in queue order across 2 brokers; last token {last}"
    );
}

#[test]
fn try_lock_and_semaphore_across_brokers() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("sem");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    // Try-lock on a held mutex: refused at once, and its key is gone from etcd.
    n[0].lock(1, "mx", "m1", |_| {});
    n[0].expect(&wake, "m1 granted", T, granted("m1"));
    n[1].lock(1, "mx", "m2", |s| s.wait = Wait::No);
    n[1].expect(
        &wake,
        "busy",
        T,
        |e| matches!(e, StoreEvent::Busy { id, ahead: 1, .. } if id == "m2"),
    );
    n[1].submit(StoreOp::Info {
        conn: ConnId(1),
        tag: 7,
        key: "mx".into(),
    });
    let info = n[1].expect(&wake, "info", T, |e| {
        matches!(e, StoreEvent::Info { tag: 7, .. })
    });
    let StoreEvent::Info {
        info: Ok(Some(info)),
        ..
    } = info
    else {
        panic!("info: {info:?}")
    };
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].owner, n[0].store.owner());
    assert!(info.queue.is_empty(), "the try-lock left a key: {info:?}");
    // Semaphore max 2: one holder on each broker, a third is refused or queued.
    let max2 = |s: &mut LockSpec| s.max = Some(2);
    n[0].lock(1, "sem", "s1", max2);
    n[0].expect(&wake, "s1", T, granted("s1"));
    n[1].lock(1, "sem", "s2", max2);
    n[1].expect(&wake, "s2", T, granted("s2"));
    n[0].lock(2, "sem", "s3", |s| {
        s.max = Some(2);
        s.wait = Wait::No;
    });
    n[0].expect(
        &wake,
        "s3 busy",
        T,
        |e| matches!(e, StoreEvent::Busy { id, ahead: 2, .. } if id == "s3"),
    );
    n[0].lock(3, "sem", "s4", max2);
    n[0].expect(
        &wake,
        "s4 queued",
        T,
        |e| matches!(e, StoreEvent::Queued { id, ahead: 2, .. } if id == "s4"),
    );
    n[0].lock(4, "sem", "bad", |s| s.max = Some(3));
    n[0].expect(&wake, "max mismatch", T, |e| {
        matches!(
            e,
            StoreEvent::Error {
                op: Op::Lock,
                error: live_mutex::store::etcd::StoreError::MaxMismatch {
                    current: 2,
                    requested: 3
                },
                ..
            }
        )
    });
    n[1].unlock(1, "sem", "s2");
    n[0].expect(&wake, "s4 granted", T, granted("s4"));
    n[0].submit(StoreOp::Stats {
        conn: ConnId(1),
        tag: 9,
    });
    let st = n[0].expect(&wake, "stats", T, |e| matches!(e, StoreEvent::Stats { .. }));
    let StoreEvent::Stats { stats: Ok(st), .. } = st else {
        panic!("{st:?}")
    };
    assert_eq!((st.keys, st.holders, st.waiters), (2, 3, 0), "{st:?}");
    println!("try-lock and semaphore max:2 across 2 brokers: {st:?}");
}

#[test]
fn disconnect_frees_the_key_for_the_other_broker() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("disc");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[1].lock(1, "k", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    let t0 = Instant::now();
    n[0].submit(StoreOp::Disconnect { conn: ConnId(1) });
    n[1].expect(&wake, "w granted", T, granted("w"));
    let took = t0.elapsed();
    println!("disconnect on broker A -> waiter on broker B granted after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn ttl_expiry_and_wait_timeout() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("ttl");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |s| {
        s.ttl = Ttl::After(Duration::from_millis(800))
    });
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[1].lock(1, "k", "impatient", |s| {
        s.wait = Wait::Until(std::time::Instant::now() + Duration::from_millis(200))
    });
    n[1].expect(
        &wake,
        "timed out",
        T,
        |e| matches!(e, StoreEvent::TimedOut { id, .. } if id == "impatient"),
    );
    n[1].lock(1, "k", "patient", |_| {});
    n[0].expect(
        &wake,
        "h expired",
        T,
        |e| matches!(e, StoreEvent::Expired { id, .. } if id == "h"),
    );
    n[1].expect(&wake, "patient granted", T, granted("patient"));
    // The expired holder's unlock is refused: it no longer holds the key.
    n[0].unlock(1, "k", "h");
    n[0].expect(&wake, "not held", T, |e| {
        matches!(
            e,
            StoreEvent::Error {
                op: Op::Unlock,
                error: live_mutex::store::etcd::StoreError::NotHeld,
                ..
            }
        )
    });
}

/// Run by `kill_9_of_a_broker_releases_within_session_ttl` in a child process: a broker that
/// holds one lock until it is killed.
#[test]
#[ignore = "the child process of kill_9_of_a_broker_releases_within_session_ttl"]
fn holder_child() {
    let Ok(arg) = std::env::var("LMX_ETCD_HOLD") else {
        return;
    };
    let [eps, prefix, ttl]: [&str; 3] =
        arg.split('|').collect::<Vec<_>>().try_into().expect("args");
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{eps}/{prefix}")).expect("url");
    cfg.session_ttl = Duration::from_secs(ttl.parse().expect("ttl"));
    let (tx, wake) = channel::<()>();
    let store = EtcdStore::start(
        cfg,
        Box::new(move || {
            let _ = tx.send(());
        }),
    )
    .expect("store");
    let mut spec = LockSpec::new(ConnId(1), "k", "child");
    spec.ttl = Ttl::Never;
    store.submit(StoreOp::Lock(spec)).expect("submit");
    loop {
        let _ = wake.recv_timeout(Duration::from_millis(100));
        while let Some(ev) = store.poll_event() {
            if let StoreEvent::Granted { token, .. } = ev {
                println!("GRANTED {token}");
            }
        }
    }
}

#[test]
fn kill_9_of_a_broker_releases_within_session_ttl() {
    use std::io::BufRead;
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let ttl = 3u64;
    let (tx, wake) = channel();
    let p = prefix("kill");
    let mut b = cl.store(&p, SESSION, &tx);
    // A holder on the surviving broker, which must be unaffected.
    b.lock(2, "other", "keeps", |_| {});
    b.expect(&wake, "keeps granted", T, granted("keeps"));
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["holder_child", "--exact", "--ignored", "--nocapture"])
        .env("LMX_ETCD_HOLD", format!("{}|{p}|{ttl}", cl.endpoints))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child broker");
    let (ltx, lines) = channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = ltx.send(l);
        }
    });
    let end = Instant::now() + T;
    loop {
        let l = lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("the child broker reports its grant");
        if l.starts_with("GRANTED ") {
            break;
        }
    }
    b.lock(1, "k", "waiter", |_| {});
    b.expect(&wake, "waiter queued", T, queued("waiter"));
    let t0 = Instant::now();
    child.kill().expect("SIGKILL the child broker");
    let _ = child.wait();
    let bound = Duration::from_secs(ttl + 5);
    b.expect(&wake, "waiter granted", bound, granted("waiter"));
    let took = t0.elapsed();
    println!("kill -9 of a broker holding a lock (session TTL {ttl} s): released after {took:?}");
    assert!(took < bound);
    // The other broker's own holder never heard a thing, and etcd still records it.
    assert!(
        !b.backlog
            .iter()
            .any(|e| matches!(e, StoreEvent::Lost { .. } | StoreEvent::Expired { .. })),
        "{:?}",
        b.backlog
    );
    b.submit(StoreOp::Info {
        conn: ConnId(2),
        tag: 1,
        key: "other".into(),
    });
    let info = b.expect(&wake, "info", T, |e| matches!(e, StoreEvent::Info { .. }));
    let StoreEvent::Info {
        info: Ok(Some(info)),
        ..
    } = info
    else {
        panic!("{info:?}")
    };
    assert_eq!(
        info.holders
            .iter()
            .map(|h| h.id.as_str())
            .collect::<Vec<_>>(),
        ["keeps"]
    );
}

#[test]
fn etcd_leader_kill_both_brokers_serve_again() {
    let Some(cl) = Cluster::get(true) else { return };
    let (tx, wake) = channel();
    let p = prefix("leader");
    let mut nodes = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    let leader = cl.leader();
    let pid = cl.pids[leader];
    let killed = std::rc::Rc::new(std::cell::Cell::new(None));
    let k2 = killed.clone();
    let kill = Box::new(move || {
        // SAFETY: kill(2) on a pid this test's cluster started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        k2.set(Some(Instant::now()));
    });
    let r = contend(&mut nodes, &wake, "hot", 2, 120, (40, kill));
    println!(
        "etcd leader (member {leader}, pid {pid}) killed after 40 grants: {} grants, {} overlaps, \
         {} falling tokens, {} errors, {} lost, longest gap without a grant {:?}",
        r.grants, r.overlaps, r.falling_tokens, r.errors, r.lost, r.max_gap
    );
    assert!(killed.get().is_some());
    assert_eq!((r.overlaps, r.falling_tokens), (0, 0));
    assert!(r.max_gap < Duration::from_secs(10), "{r:?}");
    assert!(
        r.after.iter().all(|&g| g > 0),
        "both brokers must serve again: {r:?}"
    );
}

#[test]
fn etcd_unreachable_means_errors_and_lost_never_a_grant() {
    let Some(cl) = Cluster::get(true) else { return };
    let (tx, wake) = channel();
    let p = prefix("down");
    let ttl = Duration::from_secs(3);
    let mut a = cl.store(&p, ttl, &tx);
    a.lock(1, "held", "h", |_| {});
    a.expect(&wake, "h granted", T, granted("h"));
    let signal = |sig| {
        for &pid in &cl.pids {
            // SAFETY: kill(2) on pids this test's cluster started.
            unsafe { libc::kill(pid, sig) };
        }
    };
    signal(libc::SIGSTOP);
    let t0 = Instant::now();
    a.lock(2, "new", "n", |_| {});
    let lost = a.expect(
        &wake,
        "h lost",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "h"),
    );
    let lost_after = t0.elapsed();
    let err = a.expect(
        &wake,
        "n refused",
        T,
        |e| matches!(e, StoreEvent::Error { op: Op::Lock, id: Some(i), .. } if i == "n"),
    );
    let err_after = t0.elapsed();
    signal(libc::SIGCONT);
    assert!(
        lost_after < ttl,
        "Lost must come before the lease can expire: {lost_after:?}"
    );
    assert!(
        !a.backlog
            .iter()
            .any(|e| matches!(e, StoreEvent::Granted { .. })),
        "{:?}",
        a.backlog
    );
    // Once etcd is back, the store serves again.
    a.lock(3, "after", "x", |_| {});
    a.expect(&wake, "x granted", T, granted("x"));
    println!(
        "etcd stopped: holder told Lost after {lost_after:?} (session TTL {ttl:?}); a new request \
         refused after {err_after:?}: {err:?}; {lost:?}"
    );
}

#[test]
fn keep_after_death_survives_the_connection_and_unlocks_by_id_from_the_other_broker() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("keep");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "kept", |s| s.keep_after_disconnect = true);
    n[0].expect(&wake, "kept granted", T, granted("kept"));
    n[0].submit(StoreOp::Disconnect { conn: ConnId(1) });
    // Still held after its connection is gone: a waiter on the other broker times out.
    n[1].lock(1, "k", "w1", |s| {
        s.wait = Wait::Until(std::time::Instant::now() + Duration::from_millis(1500))
    });
    n[1].expect(
        &wake,
        "w1 timed out",
        T,
        |e| matches!(e, StoreEvent::TimedOut { id, .. } if id == "w1"),
    );
    // Waiting is not holding: an unlock of a waiter's id is refused.
    n[1].lock(2, "k", "w2", |_| {});
    n[1].expect(&wake, "w2 queued", T, queued("w2"));
    n[0].unlock(9, "k", "w2");
    n[0].expect(&wake, "still waiting", T, |e| {
        matches!(
            e,
            StoreEvent::Error {
                op: Op::Unlock,
                error: live_mutex::store::etcd::StoreError::StillWaiting,
                ..
            }
        )
    });
    // The lock id is the credential, on any broker.
    n[1].unlock(3, "k", "kept");
    n[1].expect(
        &wake,
        "kept unlocked",
        T,
        |e| matches!(e, StoreEvent::Unlocked { id: Some(i), released: 1, .. } if i == "kept"),
    );
    n[1].expect(&wake, "w2 granted", T, granted("w2"));
    n[0].expect(
        &wake,
        "kept lost on its broker",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "kept"),
    );
}

/// Acquire-many of `keys` as group `id` (no TTL, waits forever unless `f` says otherwise).
fn many(n: &Node, conn: u64, keys: &[&str], id: &str, f: impl FnOnce(&mut ManySpec)) {
    let mut spec = ManySpec {
        conn: ConnId(conn),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        id: id.into(),
        ttl: Ttl::Never,
        wait: Wait::Forever,
        keep_after_disconnect: false,
    };
    f(&mut spec);
    n.submit(StoreOp::LockMany(spec));
}

fn cancel(n: &Node, conn: u64, key: &str, id: &str) {
    n.submit(StoreOp::Cancel {
        conn: ConnId(conn),
        key: key.into(),
        id: id.into(),
    });
}

fn extend(n: &Node, key: &str, id: &str, ttl: Ttl) {
    n.submit(StoreOp::Extend {
        conn: ConnId(9),
        key: key.into(),
        id: id.into(),
        ttl,
    });
}

fn error_is(op: Op, error: StoreError) -> impl FnMut(&StoreEvent) -> bool {
    move |e| matches!(e, StoreEvent::Error { op: o, error: x, .. } if *o == op && *x == error)
}

/// etcd's record of `key`, as `info` reads it.
fn info(n: &mut Node, wake: &Receiver<()>, key: &str) -> Option<KeyInfo> {
    let tag = fastrand::u64(..);
    n.submit(StoreOp::Info {
        conn: ConnId(1),
        tag,
        key: key.into(),
    });
    match n.expect(
        wake,
        "info",
        T,
        |e| matches!(e, StoreEvent::Info { tag: t, .. } if *t == tag),
    ) {
        StoreEvent::Info { info: Ok(i), .. } => i,
        other => panic!("{other:?}"),
    }
}

/// Holder ids and waiter ids of `key` in etcd.
fn who(n: &mut Node, wake: &Receiver<()>, key: &str) -> (Vec<String>, Vec<String>) {
    info(n, wake, key).map_or_else(Default::default, |i| {
        (
            i.holders.into_iter().map(|h| h.id).collect(),
            i.queue.into_iter().map(|w| w.id).collect(),
        )
    })
}

fn all_keys(n: &mut Node, wake: &Receiver<()>) -> Vec<String> {
    let tag = fastrand::u64(..);
    n.submit(StoreOp::Keys {
        conn: ConnId(1),
        tag,
    });
    match n.expect(
        wake,
        "keys",
        T,
        |e| matches!(e, StoreEvent::Keys { tag: t, .. } if *t == tag),
    ) {
        StoreEvent::Keys { keys: Ok(k), .. } => k,
        other => panic!("{other:?}"),
    }
}

/// Fails if an event `f` accepts arrives on `n` within `d` (or is in its backlog).
fn quiet(n: &mut Node, wake: &Receiver<()>, d: Duration, mut f: impl FnMut(&StoreEvent) -> bool) {
    let end = Instant::now() + d;
    loop {
        while let Some(ev) = n.store.poll_event() {
            n.backlog.push_back(ev);
        }
        assert!(!n.backlog.iter().any(&mut f), "{:?}", n.backlog);
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = wake.recv_timeout(left.min(Duration::from_millis(50)));
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn cancel_of_a_waiter_frees_the_next_one_and_deletes_its_key() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("cancelw");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[1].lock(1, "k", "w1", |_| {});
    n[1].expect(&wake, "w1 queued", T, queued("w1"));
    n[1].lock(2, "k", "w2", |_| {});
    n[1].expect(&wake, "w2 queued", T, queued("w2"));
    // Only the connection that made the request may cancel it.
    cancel(&n[1], 2, "k", "w1");
    assert_eq!(
        who(&mut n[1], &wake, "k"),
        (names(&["h"]), names(&["w1", "w2"]))
    );
    cancel(&n[1], 1, "k", "w1");
    let end = Instant::now() + T;
    while who(&mut n[1], &wake, "k").1 != ["w2"] {
        assert!(Instant::now() < end, "w1's key is still in etcd");
        std::thread::sleep(Duration::from_millis(20));
    }
    n[0].unlock(1, "k", "h");
    n[1].expect(&wake, "w2 granted", T, granted("w2"));
    // A cancel is never answered, and the cancelled request says nothing more.
    quiet(&mut n[1], &wake, Duration::from_millis(300), |e| {
        format!("{e:?}").contains("\"w1\"")
    });
    println!("cancel of a waiter: its key left etcd, the next waiter was granted, no event");
}

#[test]
fn cancel_of_a_holder_hands_over() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("cancelh");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[1].lock(1, "k", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    cancel(&n[0], 1, "k", "h");
    n[1].expect(&wake, "w granted", T, granted("w"));
    quiet(&mut n[0], &wake, Duration::from_millis(300), |_| true);
    // A group is cancelled whole through any of its keys.
    many(&n[0], 2, &["g1", "g2"], "g", |_| {});
    n[0].expect(&wake, "g granted", T, |e| {
        matches!(e, StoreEvent::ManyGranted { .. })
    });
    n[1].lock(2, "g2", "after", |_| {});
    n[1].expect(&wake, "after queued", T, queued("after"));
    cancel(&n[0], 2, "g1", "g");
    n[1].expect(&wake, "after granted", T, granted("after"));
    assert_eq!(all_keys(&mut n[0], &wake), names(&["g2", "k"]));
    quiet(&mut n[0], &wake, Duration::from_millis(300), |_| true);
}

#[test]
fn extend_keeps_a_holder_past_its_ttl() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("extend");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |s| {
        s.ttl = Ttl::After(Duration::from_millis(1500))
    });
    n[0].expect(&wake, "h granted", T, granted("h"));
    let t0 = Instant::now();
    n[1].lock(1, "k", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    std::thread::sleep(Duration::from_millis(300).saturating_sub(t0.elapsed()));
    extend(&n[0], "k", "h", Ttl::After(Duration::from_millis(3000)));
    n[0].expect(
        &wake,
        "extended",
        T,
        |e| matches!(e, StoreEvent::Extended { id, .. } if id == "h"),
    );
    // Past its first TTL, still held.
    quiet(
        &mut n[1],
        &wake,
        Duration::from_millis(1900).saturating_sub(t0.elapsed()),
        |e| matches!(e, StoreEvent::Granted { .. }),
    );
    assert!(
        !n[0]
            .backlog
            .iter()
            .any(|e| matches!(e, StoreEvent::Expired { .. }))
    );
    n[0].expect(
        &wake,
        "h expired",
        T,
        |e| matches!(e, StoreEvent::Expired { id, .. } if id == "h"),
    );
    n[1].expect(&wake, "w granted", T, granted("w"));
    println!(
        "extend at 300 ms by 3 s: the 1.5 s holder expired after {:?}",
        t0.elapsed()
    );
    extend(&n[0], "k", "h", Ttl::Default);
    n[0].expect(
        &wake,
        "expired: not held",
        T,
        error_is(Op::Extend, StoreError::NotHeld),
    );
    extend(&n[0], "k", "nobody", Ttl::Default);
    n[0].expect(
        &wake,
        "unknown: not held",
        T,
        error_is(Op::Extend, StoreError::NotHeld),
    );
    n[0].lock(2, "k", "w3", |_| {});
    n[0].expect(&wake, "w3 queued", T, queued("w3"));
    extend(&n[0], "k", "w3", Ttl::Default);
    n[0].expect(
        &wake,
        "still waiting",
        T,
        error_is(Op::Extend, StoreError::StillWaiting),
    );
    // w is held through the other broker, whose timer only it can restart.
    let other = n[1].store.owner().to_owned();
    extend(&n[0], "k", "w", Ttl::Never);
    n[0].expect(
        &wake,
        "other broker",
        T,
        error_is(Op::Extend, StoreError::OtherBroker(other)),
    );
    // An extend can shorten too: w goes, w3 follows.
    extend(&n[1], "k", "w", Ttl::After(Duration::from_millis(200)));
    n[1].expect(&wake, "w extended", T, |e| {
        matches!(e, StoreEvent::Extended { .. })
    });
    n[1].expect(
        &wake,
        "w expired",
        T,
        |e| matches!(e, StoreEvent::Expired { id, .. } if id == "w"),
    );
    n[0].expect(&wake, "w3 granted", T, granted("w3"));
    // A group is extended through any of its keys; a keep-after-death one too.
    many(&n[0], 3, &["m1", "m2"], "g", |s| {
        s.ttl = Ttl::After(Duration::from_millis(500));
        s.keep_after_disconnect = true;
    });
    n[0].expect(&wake, "g granted", T, |e| {
        matches!(e, StoreEvent::ManyGranted { .. })
    });
    n[0].submit(StoreOp::Disconnect { conn: ConnId(3) });
    extend(&n[0], "m2", "g", Ttl::Never);
    n[0].expect(
        &wake,
        "g extended",
        T,
        |e| matches!(e, StoreEvent::Extended { id, .. } if id == "g"),
    );
    quiet(&mut n[0], &wake, Duration::from_millis(1000), |e| {
        matches!(e, StoreEvent::Expired { .. })
    });
    assert_eq!(who(&mut n[1], &wake, "m1").0, ["g"]);
}

fn many_granted<'a>(id: &'a str) -> impl FnMut(&StoreEvent) -> bool + 'a {
    move |e| matches!(e, StoreEvent::ManyGranted { id: i, .. } if i == id)
}

fn tokens(e: &StoreEvent) -> Vec<(String, u64)> {
    match e {
        StoreEvent::ManyGranted { tokens, .. } => tokens.clone(),
        other => panic!("not a group grant: {other:?}"),
    }
}

#[test]
fn groups_with_keys_in_opposite_orders_never_deadlock_nor_overlap() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("many");
    let nodes = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    // Per client: the keys it takes, in the order it names them (a single lock when one).
    let sets: [&[&str]; 4] = [&["a", "b", "c"], &["c", "b", "a"], &["b", "a"], &["c"]];
    let mut next = 0u64;
    let mut ask = |n: usize, c: u64| {
        next += 1;
        let id = format!("r{next}");
        let keys = sets[c as usize];
        if keys.len() == 1 {
            nodes[n].lock(c, keys[0], &id, |_| {});
        } else {
            many(&nodes[n], c, keys, &id, |_| {});
        }
        id
    };
    let mut asked: HashMap<(usize, u64), String> = HashMap::new();
    for n in 0..2 {
        for c in 0..4 {
            asked.insert((n, c), ask(n, c));
        }
    }
    // Who holds each key, as the clients see it: set at a grant, cleared before the release
    // is sent. A grant of a key someone still holds is an overlap.
    let mut held: HashMap<String, (usize, u64)> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut due: Vec<(Instant, usize, u64, Vec<String>)> = Vec::new();
    let (mut grants, mut groups, mut overlaps, mut falling, mut errors) = (0, 0, 0, 0, 0);
    let start = Instant::now();
    while grants < 80 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "stalled (a deadlock?) after {grants} grants; held {held:?}"
        );
        let _ = wake.recv_timeout(Duration::from_millis(2));
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|d| d.0 <= now);
        due = later;
        for (_, n, c, keys) in ready {
            for k in &keys {
                held.remove(k);
            }
            let id = asked[&(n, c)].clone();
            if keys.len() == 1 {
                nodes[n].unlock(c, &keys[0], &id);
            } else {
                nodes[n].submit(StoreOp::ReleaseMany {
                    conn: ConnId(c),
                    id,
                });
            }
        }
        for (n, node) in nodes.iter().enumerate() {
            while let Some(ev) = node.store.poll_event() {
                let (c, got) = match ev {
                    StoreEvent::Granted {
                        conn, key, token, ..
                    } => (conn.0, vec![(key, token)]),
                    StoreEvent::ManyGranted { conn, tokens, .. } => {
                        groups += 1;
                        (conn.0, tokens)
                    }
                    StoreEvent::Unlocked { conn, .. } | StoreEvent::ManyReleased { conn, .. } => {
                        asked.insert((n, conn.0), ask(n, conn.0));
                        continue;
                    }
                    StoreEvent::Error { conn, .. } | StoreEvent::Lost { conn, .. } => {
                        println!("unexpected: {ev:?}");
                        errors += 1;
                        asked.insert((n, conn.0), ask(n, conn.0));
                        continue;
                    }
                    _ => continue,
                };
                grants += 1;
                for (k, t) in &got {
                    if held.insert(k.clone(), (n, c)).is_some() {
                        overlaps += 1;
                    }
                    if last.insert(k.clone(), *t).is_some_and(|l| l >= *t) {
                        falling += 1;
                    }
                }
                let keys = got.into_iter().map(|(k, _)| k).collect();
                due.push((Instant::now() + Duration::from_millis(5), n, c, keys));
            }
        }
    }
    println!(
        "acquire-many across 2 brokers, keys in opposite orders plus single locks: {grants} grants \
         ({groups} of groups) in {:?}: {overlaps} overlaps, {falling} falling tokens, {errors} errors",
        start.elapsed()
    );
    assert_eq!((overlaps, falling, errors), (0, 0, 0));
    assert!(groups > 20, "{groups}");
}

#[test]
fn a_single_lock_waits_for_a_group_and_release_many_hands_over() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("manyone");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    many(&n[0], 1, &["y", "x"], "g", |_| {});
    let t = tokens(&n[0].expect(&wake, "g granted", T, many_granted("g")));
    assert_eq!(
        t.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(t[0].1, t[1].1, "members share one create revision");
    n[1].lock(1, "y", "s", |_| {});
    n[1].expect(&wake, "s queued", T, queued("s"));
    assert_eq!(who(&mut n[1], &wake, "y"), (names(&["g"]), names(&["s"])));
    // One key of a group cannot be unlocked alone.
    n[1].unlock(1, "y", "g");
    n[1].expect(
        &wake,
        "group member",
        T,
        error_is(Op::Unlock, StoreError::GroupMember),
    );
    n[0].submit(StoreOp::ReleaseMany {
        conn: ConnId(1),
        id: "g".into(),
    });
    n[0].expect(
        &wake,
        "released",
        T,
        |e| matches!(e, StoreEvent::ManyReleased { id, .. } if id == "g"),
    );
    let s = token(&n[1].expect(&wake, "s granted", T, granted("s")));
    assert!(s > t[0].1);
    // A group waits for an older single lock, and shows as a waiter on every key until it
    // holds them all; a later single lock waits for it.
    many(&n[0], 1, &["y", "z"], "g2", |_| {});
    n[0].expect(
        &wake,
        "g2 queued",
        T,
        |e| matches!(e, StoreEvent::ManyQueued { id, .. } if id == "g2"),
    );
    n[1].lock(2, "z", "late", |_| {});
    n[1].expect(&wake, "late queued", T, queued("late"));
    assert_eq!(who(&mut n[1], &wake, "z"), (vec![], names(&["g2", "late"])));
    // Waiting is not holding: neither extended nor released from afar (left to its broker).
    extend(&n[0], "y", "g2", Ttl::Never);
    n[0].expect(
        &wake,
        "g2 still waiting",
        T,
        error_is(Op::Extend, StoreError::StillWaiting),
    );
    n[1].submit(StoreOp::ReleaseMany {
        conn: ConnId(1),
        id: "g2".into(),
    });
    n[1].expect(
        &wake,
        "g2 still waiting, remotely",
        T,
        error_is(Op::ReleaseMany, StoreError::StillWaiting),
    );
    n[1].unlock(1, "y", "s");
    n[0].expect(&wake, "g2 granted", T, many_granted("g2"));
    assert_eq!(
        who(&mut n[1], &wake, "z"),
        (names(&["g2"]), names(&["late"]))
    );
    n[1].submit(StoreOp::Stats {
        conn: ConnId(1),
        tag: 5,
    });
    let st = n[1].expect(&wake, "stats", T, |e| matches!(e, StoreEvent::Stats { .. }));
    let StoreEvent::Stats { stats: Ok(st), .. } = st else {
        panic!("{st:?}")
    };
    // y and z: g2 holds both (a holder of each), late waits on z.
    assert_eq!((st.keys, st.holders, st.waiters), (2, 2, 1), "{st:?}");
    n[0].submit(StoreOp::ReleaseMany {
        conn: ConnId(7),
        id: "g2".into(),
    });
    n[0].expect(&wake, "g2 released", T, |e| {
        matches!(e, StoreEvent::ManyReleased { .. })
    });
    n[1].expect(&wake, "late granted", T, granted("late"));
    n[0].submit(StoreOp::ReleaseMany {
        conn: ConnId(1),
        id: "g2".into(),
    });
    n[0].expect(
        &wake,
        "twice",
        T,
        error_is(Op::ReleaseMany, StoreError::NotHeld),
    );
    // The group id is the credential on any broker; its own broker reports the group lost.
    many(&n[0], 4, &["r1", "r2"], "g4", |_| {});
    n[0].expect(&wake, "g4 granted", T, many_granted("g4"));
    n[1].submit(StoreOp::ReleaseMany {
        conn: ConnId(4),
        id: "g4".into(),
    });
    n[1].expect(
        &wake,
        "g4 released remotely",
        T,
        |e| matches!(e, StoreEvent::ManyReleased { id, .. } if id == "g4"),
    );
    n[0].expect(
        &wake,
        "g4 lost on its broker",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "g4"),
    );
    assert!(
        !all_keys(&mut n[1], &wake)
            .iter()
            .any(|k| k.starts_with('r'))
    );
    // A forced unlock of one member: the group is lost, and its other keys go too.
    many(&n[0], 3, &["u", "v"], "g3", |_| {});
    n[0].expect(&wake, "g3 granted", T, many_granted("g3"));
    n[1].submit(StoreOp::Unlock {
        conn: ConnId(3),
        key: "u".into(),
        id: None,
        force: true,
    });
    n[0].expect(
        &wake,
        "g3 lost",
        T,
        |e| matches!(e, StoreEvent::Lost { id, key, .. } if id == "g3" && key == "u"),
    );
    let end = Instant::now() + T;
    while all_keys(&mut n[1], &wake).contains(&"v".to_owned()) {
        assert!(Instant::now() < end, "v outlived its group");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn try_lock_group_is_refused_with_no_key_left_behind() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("manybusy");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "b", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    many(&n[1], 1, &["a", "b", "c"], "t", |s| s.wait = Wait::No);
    n[1].expect(
        &wake,
        "busy",
        T,
        |e| matches!(e, StoreEvent::ManyBusy { id, .. } if id == "t"),
    );
    assert_eq!(all_keys(&mut n[1], &wake), ["b"]);
    // A deadline that passes while it waits: it times out, and its keys go too.
    many(&n[1], 1, &["a", "b"], "u", |s| {
        s.wait = Wait::Until(std::time::Instant::now() + Duration::from_millis(300))
    });
    n[1].expect(
        &wake,
        "timed out",
        T,
        |e| matches!(e, StoreEvent::ManyTimedOut { id, .. } if id == "u"),
    );
    let end = Instant::now() + T;
    while all_keys(&mut n[1], &wake) != ["b"] {
        assert!(Instant::now() < end, "a timed-out group left a key");
        std::thread::sleep(Duration::from_millis(20));
    }
    many(&n[1], 1, &[], "none", |_| {});
    n[1].expect(
        &wake,
        "no keys",
        T,
        error_is(Op::LockMany, StoreError::BadKeyCount { got: 0, max: 64 }),
    );
    let lots: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let lots: Vec<&str> = lots.iter().map(String::as_str).collect();
    many(&n[1], 1, &lots, "lots", |_| {});
    n[1].expect(
        &wake,
        "too many",
        T,
        error_is(Op::LockMany, StoreError::BadKeyCount { got: 65, max: 64 }),
    );
    // Duplicates count once; 64 distinct keys fit in one Txn.
    many(&n[1], 1, &["d", "d", "e"], "dup", |_| {});
    let t = tokens(&n[1].expect(&wake, "dup granted", T, many_granted("dup")));
    assert_eq!(t.len(), 2);
    many(&n[1], 2, &lots[..64], "full", |_| {});
    let t = tokens(&n[1].expect(&wake, "64 keys granted", T, many_granted("full")));
    assert_eq!(t.len(), 64);
}

#[test]
fn disconnect_releases_the_group() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("manydisc");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    many(&n[0], 1, &["p", "q"], "g", |_| {});
    n[0].expect(&wake, "g granted", T, many_granted("g"));
    n[1].lock(1, "q", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    // A waiting group of the same connection goes too.
    many(&n[0], 1, &["q", "r"], "g2", |_| {});
    n[0].expect(&wake, "g2 queued", T, |e| {
        matches!(e, StoreEvent::ManyQueued { .. })
    });
    let t0 = Instant::now();
    n[0].submit(StoreOp::Disconnect { conn: ConnId(1) });
    n[1].expect(&wake, "w granted", T, granted("w"));
    println!(
        "disconnect of a group's connection -> waiter on the other broker granted after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(all_keys(&mut n[1], &wake), ["q"]);
    quiet(&mut n[0], &wake, Duration::from_millis(300), |_| true);
    // A group's TTL ends for all its keys at once, and a waiter on the other broker follows.
    many(&n[0], 2, &["e2", "e1"], "ge", |s| {
        s.ttl = Ttl::After(Duration::from_millis(300))
    });
    n[0].expect(&wake, "ge granted", T, many_granted("ge"));
    n[1].lock(2, "e2", "next", |_| {});
    n[1].expect(&wake, "next queued", T, queued("next"));
    n[0].expect(
        &wake,
        "ge expired",
        T,
        |e| matches!(e, StoreEvent::Expired { id, key, .. } if id == "ge" && key == "e1"),
    );
    n[1].expect(&wake, "next granted", T, granted("next"));
    let end = Instant::now() + T;
    while all_keys(&mut n[1], &wake) != ["e2", "q"] {
        assert!(Instant::now() < end, "an expired group left a key");
        std::thread::sleep(Duration::from_millis(20));
    }
}
