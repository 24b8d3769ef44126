//! Unit tests of the lock rules, one rule or race per test, in simulated time.

use super::*;
use std::time::Instant;

mod groups_and_bounds;

const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);
const C: ConnId = ConnId(3);
const D: ConnId = ConnId(4);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Sim {
    t: Table,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with(Config::default())
    }
    fn with(cfg: Config) -> Self {
        Sim {
            t: Table::new(cfg),
            now: Instant::now(),
        }
    }
    fn req<'a>(&self, conn: ConnId, key: &'a str, id: &'a str) -> LockRequest<'a> {
        let mut r = LockRequest::new(conn, key, id);
        r.ttl = Ttl::Never;
        r
    }
    fn lock(&mut self, conn: ConnId, key: &str, id: &str) -> LockOutcome {
        let r = self.req(conn, key, id);
        self.lock_req(r)
    }
    fn lock_req(&mut self, r: LockRequest<'_>) -> LockOutcome {
        let out = self.t.lock(self.now, &r).expect("lock accepted");
        self.t.check_invariants().expect("invariants");
        out
    }
    fn unlock(&mut self, key: &str, id: &str) -> Result<usize, TableError> {
        let r = self.t.unlock(self.now, key, Some(id), false);
        self.t.check_invariants().expect("invariants");
        r
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.t.handle_timeout(self.now);
        self.t.check_invariants().expect("invariants");
    }
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.t.poll_event()).collect()
    }
    /// Ids granted by the drained events, in order.
    fn granted(&mut self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Granted { id, .. } => Some(id.to_string()),
                _ => None,
            })
            .collect()
    }
    fn holders(&self, key: &str) -> Vec<String> {
        let mut h: Vec<String> = self
            .t
            .info(self.now, key)
            .map(|i| i.holders.iter().map(|h| h.id.to_string()).collect())
            .unwrap_or_default();
        h.sort();
        h
    }
}

fn granted(o: LockOutcome) -> u64 {
    match o {
        LockOutcome::Granted(g) => g.token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn is_queued(o: LockOutcome) -> bool {
    matches!(o, LockOutcome::Queued { .. })
}

#[test]
fn uncontended_lock_unlock_leaves_nothing() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a1"));
    assert_eq!(s.unlock("k", "a1"), Ok(1));
    assert!(s.t.is_empty());
    assert_eq!(s.t.poll_timeout(), None);
}

#[test]
fn fifo_grants_in_arrival_order() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    assert!(is_queued(s.lock(B, "k", "b")));
    assert!(is_queued(s.lock(C, "k", "c")));
    assert!(is_queued(s.lock(D, "k", "d")));
    s.unlock("k", "a").unwrap();
    assert_eq!(s.granted(), ["b"]);
    s.unlock("k", "b").unwrap();
    assert_eq!(s.granted(), ["c"]);
    s.unlock("k", "c").unwrap();
    assert_eq!(s.granted(), ["d"]);
    s.unlock("k", "d").unwrap();
    assert!(s.t.is_empty());
}

#[test]
fn no_barging_past_waiters() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.max = Some(2);
    granted(s.lock_req(r));
    let mut w = s.req(B, "k", "w");
    w.mode = Mode::Write;
    assert!(is_queued(s.lock_req(w)));
    // A slot is free (max 2) but a writer waits: a new exclusive request queues behind it.
    assert!(is_queued(s.lock(C, "k", "c")));
}

#[test]
fn semaphore_max_two() {
    let mut s = Sim::new();
    for (c, id) in [(A, "a"), (B, "b"), (C, "c")] {
        let mut r = s.req(c, "k", id);
        r.max = Some(2);
        let out = s.lock_req(r);
        assert_eq!(is_queued(out), id == "c", "{id}: {out:?}");
    }
    assert_eq!(s.holders("k"), ["a", "b"]);
    s.unlock("k", "a").unwrap();
    assert_eq!(s.granted(), ["c"]);
}

#[test]
fn max_mismatch_is_refused_without_changing_capacity() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.max = Some(2);
    granted(s.lock_req(r));
    let mut r = s.req(B, "k", "b");
    r.max = Some(5);
    assert_eq!(
        s.t.lock(s.now, &r),
        Err(TableError::MaxMismatch {
            current: 2,
            requested: 5
        })
    );
    // `max: null` (None) adopts the key's capacity.
    granted(s.lock(B, "k", "b"));
    assert!(is_queued(s.lock(C, "k", "c")));
    let mut r = s.req(C, "k", "z");
    r.max = Some(0);
    assert_eq!(s.t.lock(s.now, &r), Err(TableError::InvalidMax));
}

#[test]
fn readers_share_and_writer_is_alone() {
    let mut s = Sim::new();
    let read = |s: &Sim, c, id| {
        let mut r = s.req(c, "k", id);
        r.mode = Mode::Read;
        r
    };
    granted(s.lock_req(read(&s, A, "r1")));
    granted(s.lock_req(read(&s, B, "r2")));
    let mut w = s.req(C, "k", "w");
    w.mode = Mode::Write;
    assert!(is_queued(s.lock_req(w)));
    // A reader arriving behind a waiting writer waits too (no writer starvation).
    assert!(is_queued(s.lock_req(read(&s, D, "r3"))));
    s.unlock("k", "r1").unwrap();
    assert!(s.granted().is_empty());
    s.unlock("k", "r2").unwrap();
    assert_eq!(s.granted(), ["w"]);
    s.unlock("k", "w").unwrap();
    assert_eq!(s.granted(), ["r3"]);
}

#[test]
fn readers_at_the_head_are_granted_together() {
    let mut s = Sim::new();
    let mut w = s.req(A, "k", "w");
    w.mode = Mode::Write;
    granted(s.lock_req(w));
    for (c, id) in [(B, "r1"), (C, "r2"), (D, "r3")] {
        let mut r = s.req(c, "k", id);
        r.mode = Mode::Read;
        assert!(is_queued(s.lock_req(r)));
    }
    let mut w2 = s.req(A, "k", "w2");
    w2.mode = Mode::Write;
    assert!(is_queued(s.lock_req(w2)));
    s.unlock("k", "w").unwrap();
    assert_eq!(s.granted(), ["r1", "r2", "r3"]);
}

#[test]
fn writer_behind_a_stream_of_readers_gets_in() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "r0");
    r.mode = Mode::Read;
    granted(s.lock_req(r));
    let mut w = s.req(B, "k", "w");
    w.mode = Mode::Write;
    assert!(is_queued(s.lock_req(w)));
    // Readers keep arriving; none overtakes the writer.
    for i in 1..50 {
        let id = format!("r{i}");
        let mut r = s.req(C, "k", &id);
        r.mode = Mode::Read;
        assert!(is_queued(s.lock_req(r)));
    }
    s.unlock("k", "r0").unwrap();
    assert_eq!(s.granted(), ["w"]);
}

#[test]
fn tokens_rise_strictly_and_start_at_the_seed() {
    let mut s = Sim::with(Config {
        token_seed: 1_000_000,
        ..Config::default()
    });
    let mut last = 0;
    for i in 0..100 {
        let id = format!("i{i}");
        let key = format!("k{}", i % 7);
        let t = granted(s.lock(A, &key, &id));
        assert!(t > last && t >= 1_000_000);
        last = t;
        s.unlock(&key, &id).unwrap();
    }
}

#[test]
fn tokens_never_go_back_after_an_idle_key_is_pruned() {
    let mut s = Sim::new();
    let t1 = granted(s.lock(A, "k", "a"));
    s.unlock("k", "a").unwrap();
    assert!(s.t.is_empty());
    let t2 = granted(s.lock(A, "k", "b"));
    assert!(t2 > t1);
}

#[test]
fn wrong_id_fails_and_changes_nothing() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    assert!(is_queued(s.lock(B, "k", "b")));
    assert_eq!(s.unlock("k", "nope"), Err(TableError::NotHeld));
    assert_eq!(s.unlock("k", "b"), Err(TableError::StillWaiting));
    assert_eq!(
        s.t.unlock(s.now, "k", None, false),
        Err(TableError::IdRequired)
    );
    assert_eq!(s.holders("k"), ["a"]);
    assert!(s.granted().is_empty());
}

#[test]
fn force_releases_every_holder_and_grants_as_many_as_fit() {
    let mut s = Sim::new();
    for (c, id) in [(A, "a"), (B, "b"), (C, "c"), (D, "d"), (A, "e")] {
        let mut r = s.req(c, "k", id);
        r.max = Some(2);
        s.lock_req(r);
    }
    assert_eq!(s.t.unlock(s.now, "k", None, true), Ok(2));
    // Upstream promoted one waiter per release event; we fill the capacity.
    assert_eq!(s.granted(), ["c", "d"]);
    // The forced holders learn they lost the lock when they unlock late.
    assert_eq!(s.unlock("k", "a"), Err(TableError::NotHeld));
    assert_eq!(s.holders("k"), ["c", "d"]);
}

#[test]
fn ttl_expiry_grants_the_next_waiter_and_late_unlock_is_lost() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.ttl = Ttl::After(ms(300));
    let ta = granted(s.lock_req(r));
    assert!(is_queued(s.lock(B, "k", "b")));
    assert!(is_queued(s.lock(C, "k", "c")));
    assert_eq!(s.t.poll_timeout(), Some(s.now + ms(300)));
    s.advance(ms(299));
    assert!(s.events().is_empty());
    s.advance(ms(1));
    let ev = s.events();
    assert!(matches!(&ev[0], Event::Expired { id, .. } if &**id == "a"));
    let tb = match &ev[1] {
        Event::Granted { id, grant, .. } if &**id == "b" => grant.token,
        e => panic!("{e:?}"),
    };
    assert!(tb > ta);
    // A's late unlock must not disturb B nor promote C (0.2.25 bug §3.3.3).
    assert_eq!(s.unlock("k", "a"), Err(TableError::NotHeld));
    assert_eq!(s.holders("k"), ["b"]);
    assert!(s.events().is_empty());
}

#[test]
fn ttl_expiry_racing_unlock_at_the_same_instant() {
    // The unlock arrives at exactly the expiry instant: the expiry has fired first, so the
    // unlock reports the loss, and the waiter is granted exactly once.
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.ttl = Ttl::After(ms(100));
    granted(s.lock_req(r));
    assert!(is_queued(s.lock(B, "k", "b")));
    s.now += ms(100);
    assert_eq!(s.unlock("k", "a"), Err(TableError::NotHeld));
    assert_eq!(s.granted(), ["b"]);
    // One tick earlier the unlock wins and the expiry never fires.
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.ttl = Ttl::After(ms(100));
    granted(s.lock_req(r));
    assert!(is_queued(s.lock(B, "k", "b")));
    s.now += ms(99);
    assert_eq!(s.unlock("k", "a"), Ok(1));
    assert_eq!(s.granted(), ["b"]);
    s.advance(ms(10));
    assert!(s.events().is_empty());
}

#[test]
fn default_ttl_applies_and_never_means_never() {
    let mut s = Sim::with(Config {
        default_ttl: Some(ms(50)),
        ..Config::default()
    });
    let r = LockRequest::new(A, "k", "a");
    granted(s.lock_req(r));
    let mut r = LockRequest::new(B, "j", "b");
    r.ttl = Ttl::Never;
    granted(s.lock_req(r));
    s.advance(ms(50));
    assert!(s.holders("k").is_empty());
    s.advance(Duration::from_secs(3600));
    assert_eq!(s.holders("j"), ["b"]);
}

#[test]
fn extend_pushes_expiry_and_fails_once_lost() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.ttl = Ttl::After(ms(100));
    granted(s.lock_req(r));
    s.advance(ms(80));
    assert_eq!(
        s.t.extend(s.now, "k", "a", Ttl::After(ms(100))),
        Ok(Some(s.now + ms(100)))
    );
    s.advance(ms(80));
    assert_eq!(s.holders("k"), ["a"]);
    s.advance(ms(20));
    assert!(s.holders("k").is_empty());
    assert_eq!(
        s.t.extend(s.now, "k", "a", Ttl::After(ms(100))),
        Err(TableError::NotHeld)
    );
}

#[test]
fn try_lock_is_never_queued() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    let mut r = s.req(B, "k", "b");
    r.wait = Wait::No;
    assert_eq!(
        s.lock_req(r),
        LockOutcome::Busy {
            queue_len: 0,
            readers: 0
        }
    );
    s.unlock("k", "a").unwrap();
    assert!(s.events().is_empty(), "no ghost grant");
    assert!(s.t.is_empty());
    let mut r = s.req(B, "free", "b");
    r.wait = Wait::No;
    granted(s.lock_req(r));
}

#[test]
fn wait_deadline_times_out_exactly_once() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    let mut r = s.req(B, "k", "b");
    r.wait = Wait::Until(s.now + ms(100));
    assert!(is_queued(s.lock_req(r)));
    s.advance(ms(100));
    let ev = s.events();
    assert_eq!(ev.len(), 1);
    assert!(matches!(&ev[0], Event::TimedOut { id, key: Some(_), .. } if &**id == "b"));
    s.unlock("k", "a").unwrap();
    assert!(s.events().is_empty());
    assert!(s.t.is_empty());
}

#[test]
fn wait_deadline_racing_grant_at_the_same_instant() {
    // The holder's TTL ends at the instant the waiter's patience does: the waiter times out
    // (wait deadlines fire first), and is not also granted.
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.ttl = Ttl::After(ms(100));
    granted(s.lock_req(r));
    let mut r = s.req(B, "k", "b");
    r.wait = Wait::Until(s.now + ms(100));
    assert!(is_queued(s.lock_req(r)));
    s.lock(C, "k", "c");
    s.advance(ms(100));
    let ev = s.events();
    assert!(
        matches!(&ev[0], Event::TimedOut { id, .. } if &**id == "b"),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1], Event::Expired { id, .. } if &**id == "a"),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[2], Event::Granted { id, .. } if &**id == "c"),
        "{ev:?}"
    );
    assert_eq!(ev.len(), 3);
    // An unlock one tick before the deadline grants instead; the deadline then never fires.
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    let mut r = s.req(B, "k", "b");
    r.wait = Wait::Until(s.now + ms(100));
    s.lock_req(r);
    s.now += ms(99);
    s.unlock("k", "a").unwrap();
    assert_eq!(s.granted(), ["b"]);
    s.advance(ms(5));
    assert!(s.events().is_empty());
    assert_eq!(s.holders("k"), ["b"]);
}

#[test]
fn passed_deadline_on_a_busy_key_times_out_at_once() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    let mut r = s.req(B, "k", "b");
    r.wait = Wait::Until(s.now);
    assert_eq!(s.lock_req(r), LockOutcome::TimedOut);
}

#[test]
fn cancel_dequeues_or_releases() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    assert!(is_queued(s.lock(B, "k", "b")));
    assert!(is_queued(s.lock(C, "k", "c")));
    // Only the request's own connection may cancel it.
    assert_eq!(s.t.cancel(s.now, A, "k", "b"), Cancelled::NotFound);
    assert_eq!(s.t.cancel(s.now, B, "k", "b"), Cancelled::Dequeued);
    s.unlock("k", "a").unwrap();
    assert_eq!(s.granted(), ["c"]);
    // Cancel racing the grant: the grant already happened, so cancel releases it at once.
    assert_eq!(s.t.cancel(s.now, C, "k", "c"), Cancelled::Released);
    assert!(s.t.is_empty());
}

#[test]
fn cancel_of_a_granted_waiter_passes_the_lock_on() {
    let mut s = Sim::new();
    granted(s.lock(A, "k", "a"));
    s.lock(B, "k", "b");
    s.lock(C, "k", "c");
    s.unlock("k", "a").unwrap();
    assert_eq!(s.granted(), ["b"]);
    // B's client had already given up: lock-received-rejected.
    assert_eq!(s.t.cancel(s.now, B, "k", "b"), Cancelled::Released);
    assert_eq!(s.granted(), ["c"]);
}

#[test]
fn retry_with_the_same_uuid_is_idempotent() {
    let mut s = Sim::new();
    let ta = granted(s.lock(A, "k", "a"));
    assert_eq!(granted(s.lock(A, "k", "a")), ta);
    assert!(is_queued(s.lock(B, "k", "b")));
    assert!(is_queued(s.lock(B, "k", "b")));
    assert_eq!(s.t.info(s.now, "k").map(|i| i.waiters), Some(1));
    // The same id from another connection is not a retry.
    let r = s.req(C, "k", "b");
    assert_eq!(s.t.lock(s.now, &r), Err(TableError::DuplicateId));
}

#[test]
fn disconnect_releases_exactly_that_connections_holds_on_several_keys() {
    let mut s = Sim::new();
    granted(s.lock(A, "k1", "a1"));
    granted(s.lock(A, "k2", "a2"));
    granted(s.lock(B, "k3", "b3"));
    s.lock(B, "k1", "b1");
    s.lock(C, "k2", "c2");
    s.lock(A, "k3", "a3"); // A also waits on k3
    s.lock(C, "k3", "c3");
    // An unrelated connection closing changes nothing.
    s.t.disconnect(s.now, D);
    assert!(s.events().is_empty());
    s.t.disconnect(s.now, A);
    s.t.check_invariants().unwrap();
    let mut g = s.granted();
    g.sort();
    assert_eq!(g, ["b1", "c2"]);
    assert_eq!(s.holders("k3"), ["b3"]);
    s.unlock("k3", "b3").unwrap();
    assert_eq!(s.granted(), ["c3"], "A's waiter was dropped");
}

#[test]
fn keep_after_disconnect_survives_until_ttl_or_unlock() {
    let mut s = Sim::new();
    let mut r = s.req(A, "k", "a");
    r.keep_after_disconnect = true;
    r.ttl = Ttl::After(ms(500));
    granted(s.lock_req(r));
    s.lock(B, "k", "b");
    s.t.disconnect(s.now, A);
    assert_eq!(s.holders("k"), ["a"]);
    assert!(s.events().is_empty());
    s.advance(ms(500));
    assert_eq!(s.holders("k"), ["b"]);
    // Unlock by id from another connection works for a kept lock.
    let mut r = s.req(C, "j", "kept");
    r.keep_after_disconnect = true;
    granted(s.lock_req(r));
    s.t.disconnect(s.now, C);
    assert_eq!(s.unlock("j", "kept"), Ok(1));
}

#[test]
fn limits_are_errors_not_grants() {
    let mut s = Sim::with(Config {
        max_key_len: 8,
        max_waiters_per_key: 2,
        max_requests_per_conn: 3,
        ..Config::default()
    });
    let r = s.req(A, "123456789", "x");
    assert_eq!(
        s.t.lock(s.now, &r),
        Err(TableError::KeyTooLong { len: 9, max: 8 })
    );
    granted(s.lock(A, "k", "a"));
    s.lock(B, "k", "b");
    s.lock(C, "k", "c");
    let r = s.req(D, "k", "d");
    assert_eq!(s.t.lock(s.now, &r), Err(TableError::QueueFull(2)));
    granted(s.lock(A, "k2", "a2"));
    granted(s.lock(A, "k3", "a3"));
    let r = s.req(A, "k4", "a4");
    assert_eq!(s.t.lock(s.now, &r), Err(TableError::TooManyRequests(3)));
    assert!(s.t.info(s.now, "k4").is_none());
}
