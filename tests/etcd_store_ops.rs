//! The etcd lock store's cancel, extend and acquire-many, with two stores ("brokers") on one
//! 3-member etcd cluster on loopback (the recipe's core is in tests/etcd_store.rs; the cluster
//! comes the same way, see tests/common/etcd.rs).
#![cfg(feature = "etcd")]

mod common;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::etcd::*;
use live_mutex::internal::store::{
    ConnId, KeyView, ManyRequest, Name, Op, StoreError, StoreEvent, StoreOp, TableError, Ttl, Wait,
};

/// Acquire-many of `keys` as group `id` (no TTL, waits forever unless `f` says otherwise).
fn many(n: &Node, conn: u64, keys: &[&str], id: &str, f: impl FnOnce(&mut ManyRequest<'_>)) {
    let mut req = ManyRequest {
        conn: ConnId(conn),
        keys,
        id,
        ttl: Ttl::Never,
        wait: Wait::Forever,
        keep_after_disconnect: false,
    };
    f(&mut req);
    n.submit(StoreOp::LockMany(req));
}

/// Releases group `id` for `conn`; the answer comes back with tag `conn`.
fn release_many(n: &Node, conn: u64, id: &str) {
    n.submit(StoreOp::ReleaseMany {
        conn: ConnId(conn),
        tag: conn,
        id,
    });
}

fn released(conn: u64) -> impl FnMut(&StoreEvent) -> bool {
    move |e| matches!(e, StoreEvent::ManyReleased { tag } if *tag == conn)
}

fn cancel(n: &Node, conn: u64, key: &str, id: &str) {
    n.submit(StoreOp::Cancel {
        conn: ConnId(conn),
        key,
        id,
    });
}

/// Extends `id`'s hold on `key`; returns the tag its answer comes back with.
fn extend(n: &Node, key: &str, id: &str, ttl: Ttl) -> u64 {
    let tag = fastrand::u64(..);
    n.submit(StoreOp::Extend {
        conn: ConnId(9),
        tag,
        key,
        id,
        ttl,
    });
    tag
}

fn extended(tag: u64) -> impl FnMut(&StoreEvent) -> bool {
    move |e| matches!(e, StoreEvent::Extended { tag: t } if *t == tag)
}

fn error_is(op: Op, error: StoreError) -> impl FnMut(&StoreEvent) -> bool {
    move |e| matches!(e, StoreEvent::Failed { op: o, error: x, .. } if *o == op && *x == error)
}

/// etcd's record of `key`, as `info` reads it.
fn info(n: &mut Node, wake: &Receiver<()>, key: &str) -> Option<KeyView> {
    let tag = fastrand::u64(..);
    n.submit(StoreOp::Info { tag, key });
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
            i.holders.into_iter().map(|h| h.id.to_string()).collect(),
            i.waiters.into_iter().map(|w| w.id.to_string()).collect(),
        )
    })
}

fn all_keys(n: &mut Node, wake: &Receiver<()>) -> Vec<String> {
    let tag = fastrand::u64(..);
    n.submit(StoreOp::Keys {
        tag,
        after: None,
        budget: usize::MAX,
    });
    match n.expect(
        wake,
        "keys",
        T,
        |e| matches!(e, StoreEvent::Keys { tag: t, .. } if *t == tag),
    ) {
        StoreEvent::Keys { keys: Ok(k), .. } => k.keys.iter().map(|k| k.1.to_string()).collect(),
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
    let tag = extend(&n[0], "k", "h", Ttl::After(Duration::from_millis(3000)));
    n[0].expect(&wake, "extended", T, extended(tag));
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
        error_is(Op::Extend, StoreError::Rule(TableError::NotHeld)),
    );
    extend(&n[0], "k", "nobody", Ttl::Default);
    n[0].expect(
        &wake,
        "unknown: not held",
        T,
        error_is(Op::Extend, StoreError::Rule(TableError::NotHeld)),
    );
    n[0].lock(2, "k", "w3", |_| {});
    n[0].expect(&wake, "w3 queued", T, queued("w3"));
    extend(&n[0], "k", "w3", Ttl::Default);
    n[0].expect(
        &wake,
        "still waiting",
        T,
        error_is(Op::Extend, StoreError::Rule(TableError::StillWaiting)),
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
    let tag = extend(&n[1], "k", "w", Ttl::After(Duration::from_millis(200)));
    n[1].expect(&wake, "w extended", T, extended(tag));
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
    let tag = extend(&n[0], "m2", "g", Ttl::Never);
    n[0].expect(&wake, "g extended", T, extended(tag));
    quiet(&mut n[0], &wake, Duration::from_millis(1000), |e| {
        matches!(e, StoreEvent::Expired { .. })
    });
    assert_eq!(who(&mut n[1], &wake, "m1").0, ["g"]);
}

fn many_granted<'a>(id: &'a str) -> impl FnMut(&StoreEvent) -> bool + 'a {
    move |e| matches!(e, StoreEvent::ManyGranted { id: i, .. } if i == id)
}

fn tokens(e: &StoreEvent) -> Vec<(Name, u64)> {
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
    let mut held: HashMap<Name, (usize, u64)> = HashMap::new();
    let mut last: HashMap<Name, u64> = HashMap::new();
    let mut due: Vec<(Instant, usize, u64, Vec<Name>)> = Vec::new();
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
                release_many(&nodes[n], c, &id);
            }
        }
        for (n, node) in nodes.iter().enumerate() {
            while let Some(ev) = node.store.poll_event() {
                let (c, got) = match ev {
                    StoreEvent::Granted {
                        conn, key, grant, ..
                    } => (conn.0, vec![(key, grant.token)]),
                    StoreEvent::ManyGranted { conn, tokens, .. } => {
                        groups += 1;
                        (conn.0, tokens)
                    }
                    // Both tags are the connection (`Node::unlock`, `release_many`).
                    StoreEvent::Unlocked { tag, .. } | StoreEvent::ManyReleased { tag } => {
                        asked.insert((n, tag), ask(n, tag));
                        continue;
                    }
                    StoreEvent::Failed { conn, .. } | StoreEvent::Lost { conn, .. } => {
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
        error_is(Op::Unlock, StoreError::Rule(TableError::GroupMember)),
    );
    release_many(&n[0], 1, "g");
    n[0].expect(&wake, "released", T, released(1));
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
        error_is(Op::Extend, StoreError::Rule(TableError::StillWaiting)),
    );
    release_many(&n[1], 1, "g2");
    n[1].expect(
        &wake,
        "g2 still waiting, remotely",
        T,
        error_is(Op::ReleaseMany, StoreError::Rule(TableError::StillWaiting)),
    );
    n[1].unlock(1, "y", "s");
    n[0].expect(&wake, "g2 granted", T, many_granted("g2"));
    assert_eq!(
        who(&mut n[1], &wake, "z"),
        (names(&["g2"]), names(&["late"]))
    );
    n[1].submit(StoreOp::Stats { tag: 5 });
    let st = n[1].expect(&wake, "stats", T, |e| matches!(e, StoreEvent::Stats { .. }));
    let StoreEvent::Stats { stats: Ok(st), .. } = st else {
        panic!("{st:?}")
    };
    // y and z: g2 holds both (a holder of each), late waits on z.
    assert_eq!((st.keys, st.holders, st.waiters), (2, 2, 1), "{st:?}");
    release_many(&n[0], 7, "g2");
    n[0].expect(&wake, "g2 released", T, released(7));
    n[1].expect(&wake, "late granted", T, granted("late"));
    release_many(&n[0], 1, "g2");
    n[0].expect(
        &wake,
        "twice",
        T,
        error_is(Op::ReleaseMany, StoreError::Rule(TableError::NotHeld)),
    );
    // The group id is the credential on any broker; its own broker reports the group lost.
    many(&n[0], 4, &["r1", "r2"], "g4", |_| {});
    n[0].expect(&wake, "g4 granted", T, many_granted("g4"));
    release_many(&n[1], 4, "g4");
    n[1].expect(&wake, "g4 released remotely", T, released(4));
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
        tag: 0,
        key: "u",
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
        |e| matches!(e, StoreEvent::TimedOut { id, key: None, .. } if id == "u"),
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
        error_is(
            Op::LockMany,
            StoreError::Rule(TableError::BadKeyCount { got: 0, max: 64 }),
        ),
    );
    let lots: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let lots: Vec<&str> = lots.iter().map(String::as_str).collect();
    many(&n[1], 1, &lots, "lots", |_| {});
    n[1].expect(
        &wake,
        "too many",
        T,
        error_is(
            Op::LockMany,
            StoreError::Rule(TableError::BadKeyCount { got: 65, max: 64 }),
        ),
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

/// Issue 20, item 7: a forced unlock that names an id holding nothing (here on another broker)
/// is refused and the holder keeps the key; naming the holder, or no id, releases it.
#[test]
fn a_forced_unlock_naming_a_stale_id_is_refused() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("forcestale");
    let mut n = [cl.store(&p, SESSION, &tx), cl.store(&p, SESSION, &tx)];
    n[0].lock(1, "k", "h", |_| {});
    n[0].expect(&wake, "h granted", T, granted("h"));
    let force = |id: Option<&'static str>| StoreOp::Unlock {
        conn: ConnId(2),
        tag: 0,
        key: "k",
        id,
        force: true,
    };
    n[1].submit(force(Some("stale")));
    n[1].expect(
        &wake,
        "refused",
        T,
        error_is(Op::Unlock, StoreError::Rule(TableError::NotHeld)),
    );
    assert_eq!(all_keys(&mut n[1], &wake), ["k"]);
    n[1].submit(force(Some("h")));
    n[1].expect(&wake, "released", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
    n[0].expect(
        &wake,
        "h lost",
        T,
        |e| matches!(e, StoreEvent::Lost { id, .. } if id == "h"),
    );
    n[1].submit(force(None));
    n[1].expect(&wake, "nothing to release", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
}
