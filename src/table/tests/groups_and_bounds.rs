//! acquire-many groups, and the bounds on memory and timers under churn.

use super::*;

#[test]
fn acquire_many_is_all_or_nothing() {
    let mut s = Sim::new();
    granted(s.lock(B, "b", "hb"));
    let keys = ["c", "a", "b"];
    let m = ManyRequest {
        conn: A,
        keys: &keys,
        id: "m",
        ttl: Ttl::Never,
        wait: Wait::No,
        keep_after_disconnect: false,
    };
    assert_eq!(s.t.lock_many(s.now, &m), Ok(ManyOutcome::Busy));
    assert!(s.t.info(s.now, "a").is_none(), "try-lock took nothing");
    let m = ManyRequest {
        wait: Wait::Forever,
        ..m
    };
    assert_eq!(s.t.lock_many(s.now, &m), Ok(ManyOutcome::Queued));
    s.t.check_invariants().unwrap();
    s.unlock("b", "hb").unwrap();
    let ev = s.events();
    match &ev[..] {
        [Event::ManyGranted { id, tokens, .. }] => {
            assert_eq!(&**id, "m");
            let keys: Vec<&str> = tokens.iter().map(|(k, _)| &**k).collect();
            assert_eq!(keys, ["a", "b", "c"]);
        }
        other => panic!("{other:?}"),
    }
    // Single unlock of a member is refused; release-many frees all.
    assert_eq!(s.unlock("a", "m"), Err(TableError::GroupMember));
    assert_eq!(s.t.release_many(s.now, "m"), Ok(3));
    assert!(s.t.is_empty());
}

#[test]
fn acquire_many_times_out_and_releases_what_it_took() {
    let mut s = Sim::new();
    granted(s.lock(B, "b", "hb"));
    let keys = ["a", "b"];
    let m = ManyRequest {
        conn: A,
        keys: &keys,
        id: "m",
        ttl: Ttl::Never,
        wait: Wait::Until(s.now + ms(50)),
        keep_after_disconnect: false,
    };
    assert_eq!(s.t.lock_many(s.now, &m), Ok(ManyOutcome::Queued));
    assert_eq!(s.holders("a"), ["m"]);
    s.lock(C, "a", "ca");
    s.advance(ms(50));
    let ev = s.events();
    assert!(
        matches!(&ev[0], Event::TimedOut { key: None, .. }),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1], Event::Granted { id, .. } if &**id == "ca"),
        "{ev:?}"
    );
    s.unlock("b", "hb").unwrap();
    assert!(s.events().is_empty());
}

#[test]
fn crossing_acquire_many_do_not_deadlock() {
    let mut s = Sim::new();
    granted(s.lock(C, "x", "hx"));
    let k1 = ["x", "y"];
    let k2 = ["y", "x"];
    for (conn, keys, id) in [(A, &k1, "m1"), (B, &k2, "m2")] {
        let m = ManyRequest {
            conn,
            keys,
            id,
            ttl: Ttl::Never,
            wait: Wait::Forever,
            keep_after_disconnect: false,
        };
        assert_eq!(s.t.lock_many(s.now, &m), Ok(ManyOutcome::Queued));
    }
    s.unlock("x", "hx").unwrap();
    let ev = s.events();
    assert!(
        matches!(&ev[..], [Event::ManyGranted { id, .. }] if &**id == "m1"),
        "{ev:?}"
    );
    s.t.release_many(s.now, "m1").unwrap();
    let ev = s.events();
    assert!(
        matches!(&ev[..], [Event::ManyGranted { id, .. }] if &**id == "m2"),
        "{ev:?}"
    );
}

#[test]
fn acquire_many_member_expiry_releases_the_group_and_disconnect_drops_it() {
    let mut s = Sim::new();
    let keys = ["a", "b"];
    let m = ManyRequest {
        conn: A,
        keys: &keys,
        id: "m",
        ttl: Ttl::After(ms(10)),
        wait: Wait::Forever,
        keep_after_disconnect: false,
    };
    assert!(matches!(
        s.t.lock_many(s.now, &m),
        Ok(ManyOutcome::Granted(_))
    ));
    s.advance(ms(10));
    assert!(s.t.is_empty());
    assert_eq!(s.t.release_many(s.now, "m"), Err(TableError::NotHeld));
    let m = ManyRequest {
        ttl: Ttl::Never,
        ..m
    };
    assert!(matches!(
        s.t.lock_many(s.now, &m),
        Ok(ManyOutcome::Granted(_))
    ));
    s.lock(B, "b", "wb");
    s.t.disconnect(s.now, A);
    assert_eq!(s.granted(), ["wb"]);
}

#[test]
fn a_million_distinct_keys_leave_the_maps_empty() {
    let mut t = Table::new(Config::default());
    let now = Instant::now();
    let mut key = String::new();
    for i in 0..1_000_000u32 {
        key.clear();
        key.push_str("key-");
        key.push_str(&i.to_string());
        let r = LockRequest::new(A, &key, "id");
        t.lock(now, &r).unwrap();
        t.unlock(now, &key, Some("id"), false).unwrap();
    }
    assert!(t.is_empty());
    assert_eq!(t.stats().keys, 0);
    t.disconnect(now, A);
    assert_eq!(t.stats().connections, 0);
}

#[test]
fn timer_heap_stays_bounded_under_churn() {
    let mut t = Table::new(Config::default());
    let now = Instant::now();
    // A live hold with a long TTL, and many short-lived locks whose 5 s deadlines go stale.
    let mut r = LockRequest::new(B, "held", "h");
    r.ttl = Ttl::After(Duration::from_secs(3600));
    t.lock(now, &r).unwrap();
    for _ in 0..100_000 {
        let r = LockRequest::new(A, "k", "id");
        t.lock(now, &r).unwrap();
        t.unlock(now, "k", Some("id"), false).unwrap();
    }
    assert!(t.timers.heap_len() < 1000, "heap {}", t.timers.heap_len());
}

#[test]
fn the_key_cap_refuses_new_keys_only() {
    let mut s = Sim::with(Config {
        max_keys: 2,
        ..Config::default()
    });
    granted(s.lock(A, "k1", "a"));
    granted(s.lock(A, "k2", "b"));
    let r = s.req(B, "k3", "c");
    assert_eq!(s.t.lock(s.now, &r), Err(TableError::TooManyKeys(2)));
    assert!(is_queued(s.lock(B, "k1", "d")), "existing keys still work");
}

#[test]
fn a_dead_connection_is_forgotten_with_its_last_kept_lock() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.keep_after_disconnect = true;
    r.ttl = Ttl::After(ms(100));
    granted(s.lock_req(r));
    s.t.disconnect(s.now, A);
    assert_eq!(s.t.stats().connections, 1, "kept for its lock");
    s.advance(ms(100));
    assert_eq!(s.t.stats().connections, 0);
    assert!(s.t.is_empty());
}

#[test]
fn a_deadline_re_armed_to_the_same_instant_counts_once() {
    use super::timers::{Timer, TimerKind, Timers};
    let mut tm = Timers::default();
    let t = Timer {
        at: Instant::now(),
        kind: TimerKind::Expiry,
        rid: 1,
        slot: 0,
    };
    for _ in 0..100 {
        tm.arm(t);
        tm.flush();
        tm.disarm(1); // stale in the heap, but identical to the live one below
    }
    tm.arm(t);
    tm.flush();
    tm.maybe_compact(|x| *x == t);
    assert_eq!(tm.live(), 1);
    assert_eq!(tm.heap_len(), 1);
}

#[test]
fn an_id_used_by_a_plain_lock_and_an_acquire_many_keeps_them_apart() {
    // A misbehaving client reuses one id; on a semaphore key both can hold at once. Releasing
    // the group must release the group's hold, not leave it behind.
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "same");
    r.max = Some(2);
    granted(s.lock_req(r));
    let keys = ["j", "k"];
    let m = ManyRequest {
        conn: B,
        keys: &keys,
        id: "same",
        ttl: Ttl::Never,
        wait: Wait::Forever,
        keep_after_disconnect: false,
    };
    assert!(matches!(
        s.t.lock_many(s.now, &m),
        Ok(ManyOutcome::Granted(_))
    ));
    s.t.check_invariants().unwrap();
    assert_eq!(s.t.release_many(s.now, "same"), Ok(2));
    s.t.check_invariants().unwrap();
    assert_eq!(s.holders("k"), ["same"], "only the plain lock is left");
    assert_eq!(s.unlock("k", "same"), Ok(1));
    assert!(s.t.is_empty());
}

/// Issue 20, item 13: waiters are capped across the whole table, not only per key and per
/// connection, whose product would allow 10^8 with the defaults.
#[test]
fn waiters_are_capped_across_the_table() {
    assert_eq!(Config::default().max_waiters, 100_000);
    let mut s = Sim::with(Config {
        max_waiters: 2_500,
        max_waiters_per_key: 1_000,
        max_requests_per_conn: 1_000,
        ..Config::default()
    });
    let cap = 2_500;
    let mut queued = 0;
    let mut refused = None;
    'outer: for c in 0..3u64 {
        let key = format!("k{c}");
        granted(s.lock(ConnId(1000), &key, &format!("h{c}")));
        for i in 0..1_000 {
            let id = format!("w{c}-{i}");
            let r = s.req(ConnId(c), &key, &id);
            match s.t.lock(s.now, &r) {
                Ok(o) => {
                    assert!(is_queued(o));
                    queued += 1;
                }
                Err(e) => {
                    refused = Some(e);
                    break 'outer;
                }
            }
        }
    }
    let e = refused.expect("a request past the broker-wide cap is refused");
    assert_eq!(queued, cap);
    assert!(e.to_string().contains("across the broker"), "{e}");
    s.t.check_invariants().unwrap();
    // A try-lock is still answered, and a waiter that leaves makes room.
    let mut r = s.req(ConnId(20), "k0", "try");
    r.wait = Wait::No;
    assert!(matches!(s.t.lock(s.now, &r), Ok(LockOutcome::Busy { .. })));
    s.t.disconnect(s.now, ConnId(0));
    let r = s.req(ConnId(20), "k0", "fits");
    assert!(is_queued(s.t.lock(s.now, &r).expect("room again")));
    s.t.check_invariants().unwrap();
}

#[test]
fn an_acquire_many_that_would_wait_is_held_to_the_waiter_cap() {
    let mut s = Sim::with(Config {
        max_waiters: 1,
        ..Config::default()
    });
    granted(s.lock(A, "a", "ha"));
    assert!(is_queued(s.lock(B, "a", "wb")));
    let keys = ["a", "b"];
    let m = ManyRequest {
        conn: C,
        keys: &keys,
        id: "m",
        ttl: Ttl::Never,
        wait: Wait::Forever,
        keep_after_disconnect: false,
    };
    assert_eq!(s.t.lock_many(s.now, &m), Err(TableError::TooManyWaiters(1)));
    s.unlock("a", "ha").unwrap();
    assert_eq!(s.t.lock_many(s.now, &m), Ok(ManyOutcome::Queued));
    s.t.check_invariants().unwrap();
}
