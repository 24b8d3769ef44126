//! The etcd lock store with two stores ("brokers") on one 3-member etcd cluster on loopback.
//!
//! The cluster comes from `LMX_ETCD_ENDPOINTS` (as `.ci/etcd.sh start` writes it); without it
//! each test starts its own with `.ci/etcd.sh` and stops it. Tests skip, saying so, only when
//! etcd is not installed and `LMX_REQUIRE_ETCD` is unset. The leader-kill test always starts a
//! cluster of its own, since it kills a member.
#![cfg(feature = "etcd")]

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::etcd::*;
use live_mutex::internal::etcd::EtcdStore;
use live_mutex::internal::store::{
    ConnId, LockRequest, Op, StoreError, StoreEvent, StoreOp, TableError, Ttl, Wait,
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
        |e| matches!(e, StoreEvent::Busy { id, queue_len: 1, .. } if id == "m2"),
    );
    n[1].submit(StoreOp::Info { tag: 7, key: "mx" });
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
    // Held through the other broker: no connection of this one.
    assert_eq!(info.holders[0].conn, None, "{info:?}");
    assert!(info.waiters.is_empty(), "the try-lock left a key: {info:?}");
    // Asked of the broker it was taken through: its connection there.
    n[0].submit(StoreOp::Info { tag: 8, key: "mx" });
    let mine = n[0].expect(&wake, "info", T, |e| {
        matches!(e, StoreEvent::Info { tag: 8, .. })
    });
    let StoreEvent::Info {
        info: Ok(Some(mine)),
        ..
    } = mine
    else {
        panic!("info: {mine:?}")
    };
    assert_eq!(mine.holders[0].conn, Some(ConnId(1)), "{mine:?}");
    // Semaphore max 2: one holder on each broker, a third is refused or queued.
    let max2 = |s: &mut LockRequest<'_>| s.max = Some(2);
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
        |e| matches!(e, StoreEvent::Busy { id, queue_len: 2, .. } if id == "s3"),
    );
    n[0].lock(3, "sem", "s4", max2);
    n[0].expect(
        &wake,
        "s4 queued",
        T,
        |e| matches!(e, StoreEvent::Queued { id, queue_len: 2, .. } if id == "s4"),
    );
    n[0].lock(4, "sem", "bad", |s| s.max = Some(3));
    n[0].expect(&wake, "max mismatch", T, |e| {
        matches!(
            e,
            StoreEvent::Failed {
                op: Op::Lock,
                error: StoreError::Rule(TableError::MaxMismatch {
                    current: 2,
                    requested: 3
                }),
                ..
            }
        )
    });
    n[1].unlock(1, "sem", "s2");
    n[0].expect(&wake, "s4 granted", T, granted("s4"));
    n[0].submit(StoreOp::Stats { tag: 9 });
    let st = n[0].expect(&wake, "stats", T, |e| matches!(e, StoreEvent::Stats { .. }));
    let StoreEvent::Stats { stats: Ok(st), .. } = st else {
        panic!("{st:?}")
    };
    assert_eq!((st.keys, st.holders, st.waiters), (2, 3, 0), "{st:?}");
    println!("try-lock and semaphore max:2 across 2 brokers: {st:?}");
}

/// The store's one-read view for `watch`, `lmx top` and the status page lists every broker's
/// locks: a holder through the other broker (no connection here), a waiter and a holder of
/// this one (their connections), and totals over both.
#[test]
fn a_snapshot_lists_the_locks_of_every_broker() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("snap");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "a", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[1].lock(2, "a", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    n[1].lock(3, "b", "x", |_| {});
    n[1].expect(&wake, "x granted", T, granted("x"));
    let snap = |n: &mut Node, tag, max_keys| {
        n.submit(StoreOp::Snapshot { tag, max_keys });
        match n.expect(
            &wake,
            "snapshot",
            T,
            |e| matches!(e, StoreEvent::Snapshot { tag: t, .. } if *t == tag),
        ) {
            StoreEvent::Snapshot {
                snapshot: Ok(s), ..
            } => s,
            other => panic!("{other:?}"),
        }
    };
    let all = snap(&mut n[1], 1, 10);
    let st = all.stats;
    assert_eq!((st.keys, st.holders, st.waiters), (2, 2, 1), "{st:?}");
    let shown: Vec<_> = all
        .keys
        .iter()
        .map(|(k, v)| {
            let h: Vec<_> = v
                .holders
                .iter()
                .map(|h| (h.id.to_string(), h.conn))
                .collect();
            let w: Vec<_> = v
                .waiters
                .iter()
                .map(|w| (w.id.to_string(), w.conn))
                .collect();
            (k.to_string(), h, w)
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "a".to_owned(),
                vec![("h".to_owned(), None)],
                vec![("w".to_owned(), Some(ConnId(2)))]
            ),
            (
                "b".to_owned(),
                vec![("x".to_owned(), Some(ConnId(3)))],
                vec![]
            ),
        ]
    );
    // Listing fewer keys counts them all.
    let one = snap(&mut n[0], 2, 1);
    assert_eq!((one.keys.len(), one.stats.keys), (1, 2));
    assert_eq!(one.keys[0].1.holders[0].conn, Some(ConnId(1)), "{one:?}");
    println!("snapshot through broker B: {shown:?}");
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
            StoreEvent::Failed {
                op: Op::Unlock,
                error: StoreError::Rule(TableError::NotHeld),
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
    let mut cfg = common::etcd::config(eps, prefix, common::etcd::Secure::from_env().as_ref());
    cfg.session_ttl = Duration::from_secs(ttl.parse().expect("ttl"));
    let (tx, wake) = channel::<()>();
    let store = EtcdStore::start(
        cfg,
        Box::new(move || {
            let _ = tx.send(());
        }),
    )
    .expect("store");
    let mut req = LockRequest::new(ConnId(1), "k", "child");
    req.ttl = Ttl::Never;
    store.submit(StoreOp::Lock(req)).expect("submit");
    loop {
        let _ = wake.recv_timeout(Duration::from_millis(100));
        while let Some(ev) = store.poll_event() {
            if let StoreEvent::Granted { grant, .. } = ev {
                println!("GRANTED {}", grant.token);
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
        tag: 1,
        key: "other",
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
        |e| matches!(e, StoreEvent::Failed { op: Op::Lock, id: Some(i), .. } if i == "n"),
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
            StoreEvent::Failed {
                op: Op::Unlock,
                error: StoreError::Rule(TableError::StillWaiting),
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
        |e| matches!(e, StoreEvent::Unlocked { id: Some(i), .. } if i == "kept"),
    );
    n[1].expect(&wake, "w2 granted", T, granted("w2"));
    n[0].expect(
        &wake,
        "kept lost on its broker",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "kept"),
    );
}

/// The store's one shared watch routes each delete to the right task: a holder whose key
/// another broker force-deletes is told `Lost` (not on a timer: nothing else would tell it), a
/// waiter behind it on the other broker is granted, a waiter whose own key a stranger deletes
/// gets `Vanished`, and the other keys' holders on the same watch hear nothing.
#[test]
fn shared_watch_routes_forced_unlocks_and_stranger_deletes() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("watch");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "f", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    n[0].lock(2, "g", "other", |_| {});
    n[0].expect(&wake, "other granted", T, granted("other"));
    n[1].lock(1, "f", "w", |_| {});
    n[1].expect(&wake, "w queued", T, queued("w"));
    let t0 = Instant::now();
    n[1].submit(StoreOp::Unlock {
        conn: ConnId(1),
        tag: 0,
        key: "f",
        id: None,
        force: true,
    });
    n[1].expect(&wake, "forced unlock", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
    n[0].expect(
        &wake,
        "h lost",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "h"),
    );
    let lost_after = t0.elapsed();
    n[1].expect(&wake, "w granted", T, granted("w"));
    // A waiter whose own key a stranger deletes is dropped, never granted.
    n[0].lock(3, "f", "w2", |_| {});
    n[0].expect(&wake, "w2 queued", T, queued("w2"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = cl.raw_client().await;
        let r = c.delete(format!("{p}/f/w2"), None).await.expect("delete");
        assert_eq!(r.deleted(), 1);
    });
    n[0].expect(&wake, "w2 vanished", T, |e| {
        matches!(
            e,
            StoreEvent::Failed {
                id: Some(i),
                error: StoreError::Vanished,
                ..
            } if i == "w2"
        )
    });
    n[1].unlock(1, "f", "w");
    n[1].expect(&wake, "w unlocked", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
    // The holder of the other key is untouched, and still releases normally.
    n[0].unlock(2, "g", "other");
    n[0].expect(&wake, "other unlocked", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
    for node in &n {
        assert!(
            !node.backlog.iter().any(|e| matches!(
                e,
                StoreEvent::Lost { .. } | StoreEvent::Granted { .. } | StoreEvent::Failed { .. }
            )),
            "stray events: {:?}",
            node.backlog
        );
    }
    println!("forced unlock on broker B: holder on broker A told Lost after {lost_after:?}");
}
