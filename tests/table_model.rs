//! Model-based property test of the lock table: random operations from several connections on a
//! few keys, run against the table and against a naive reference model; after every step the
//! replies, the events and the visible state must agree, and the invariants must hold.
//!
//! Cases: 2,000 by default; set `LMX_PROPTEST_CASES` for more.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use live_mutex::internal::table::{
    Cancelled, Config, ConnId, Event, Grant, LockOutcome, LockRequest, Mode, Table, TableError,
    Ttl, Wait,
};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const DEFAULT_TTL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
enum Op {
    Lock {
        conn: u64,
        key: usize,
        reuse: Option<usize>,
        mode: Mode,
        max: Option<u32>,
        ttl: Ttl,
        wait_ms: Option<Option<u64>>,
        keep: bool,
    },
    Unlock {
        key: usize,
        pick: usize,
    },
    Force {
        key: usize,
    },
    Extend {
        key: usize,
        pick: usize,
        ttl: Ttl,
    },
    Cancel {
        conn: u64,
        key: usize,
        pick: usize,
    },
    Disconnect {
        conn: u64,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        4 => Just(Mode::Exclusive),
        2 => Just(Mode::Read),
        1 => Just(Mode::Write)
    ];
    let max = prop_oneof![6 => Just(None), 1 => (1u32..4).prop_map(Some)];
    let ttl = prop_oneof![
        Just(Ttl::Default),
        Just(Ttl::Never),
        (1u64..400).prop_map(|m| Ttl::After(Duration::from_millis(m)))
    ];
    let wait = prop_oneof![
        3 => Just(Some(None)),
        1 => Just(None),
        2 => (0u64..300).prop_map(|m| Some(Some(m)))
    ];
    prop_oneof![
        8 => (0u64..4, 0..KEYS.len(), prop::option::weighted(0.1, 0usize..64), mode, max, ttl.clone(), wait, any::<bool>())
            .prop_map(|(conn, key, reuse, mode, max, ttl, wait_ms, keep)| Op::Lock { conn, key, reuse, mode, max, ttl, wait_ms, keep }),
        5 => (0..KEYS.len(), 0usize..64).prop_map(|(key, pick)| Op::Unlock { key, pick }),
        1 => (0..KEYS.len()).prop_map(|key| Op::Force { key }),
        1 => (0..KEYS.len(), 0usize..64, ttl).prop_map(|(key, pick, ttl)| Op::Extend { key, pick, ttl }),
        2 => (0u64..4, 0..KEYS.len(), 0usize..64).prop_map(|(conn, key, pick)| Op::Cancel { conn, key, pick }),
        1 => (0u64..4).prop_map(|conn| Op::Disconnect { conn }),
        3 => (0u64..250).prop_map(|ms| Op::Advance { ms }),
    ]
}

// ---- the reference model: vectors and linear scans, no cleverness ----------------------------

#[derive(Clone, Debug)]
struct MHolder {
    id: String,
    conn: ConnId,
    mode: Mode,
    token: u64,
    expires: Option<Instant>,
    keep: bool,
    seq: u64,
}

#[derive(Clone, Debug)]
struct MWaiter {
    id: String,
    conn: ConnId,
    mode: Mode,
    ttl: Option<Duration>,
    deadline: Option<Instant>,
    since: Instant,
    keep: bool,
    seq: u64,
}

#[derive(Clone, Debug, Default)]
struct MKey {
    max: u32,
    holders: Vec<MHolder>,
    queue: VecDeque<MWaiter>,
}

impl MKey {
    fn fits(&self, mode: Mode) -> bool {
        match mode {
            Mode::Read => self.holders.iter().all(|h| h.mode == Mode::Read),
            Mode::Write => self.holders.is_empty(),
            Mode::Exclusive => {
                self.holders.len() < self.max as usize
                    && self.holders.iter().all(|h| h.mode == Mode::Exclusive)
            }
            other => panic!("the model knows no mode {other:?}"),
        }
    }
    fn readers(&self) -> usize {
        self.holders.iter().filter(|h| h.mode == Mode::Read).count()
    }
}

struct Model {
    keys: Vec<Option<MKey>>,
    token: u64,
    seq: u64,
    events: Vec<Event>,
}

impl Model {
    fn resolve(ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Default => Some(DEFAULT_TTL),
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }

    fn grant(&mut self, k: usize, at: Instant, w: MWaiter) -> Grant {
        let token = self.token;
        self.token += 1;
        self.seq += 1;
        let key = self.keys[k].as_mut().unwrap();
        key.holders.push(MHolder {
            id: w.id,
            conn: w.conn,
            mode: w.mode,
            token,
            expires: w.ttl.map(|d| at + d),
            keep: w.keep,
            seq: self.seq,
        });
        Grant {
            token,
            queue_len: key.queue.len(),
            readers: key.readers(),
        }
    }

    fn settle(&mut self, k: usize, at: Instant) {
        while let Some(key) = self.keys[k].as_mut() {
            match key.queue.front() {
                Some(w) if key.fits(w.mode) => {
                    let w = key.queue.pop_front().unwrap();
                    let (conn, id) = (w.conn, w.id.clone());
                    let grant = self.grant(k, at, w);
                    self.events.push(Event::Granted {
                        conn,
                        id: id.into(),
                        key: KEYS[k].into(),
                        grant,
                    });
                }
                _ => break,
            }
        }
        if self.keys[k]
            .as_ref()
            .is_some_and(|key| key.holders.is_empty() && key.queue.is_empty())
        {
            self.keys[k] = None;
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        loop {
            // (at, kind: 0 wait / 1 expiry, seq, key)
            let mut next: Option<(Instant, u8, u64, usize)> = None;
            for (k, key) in self.keys.iter().enumerate() {
                let Some(key) = key else { continue };
                let waits = key
                    .queue
                    .iter()
                    .filter_map(|w| w.deadline.map(|d| (d, 0, w.seq)));
                let exps = key
                    .holders
                    .iter()
                    .filter_map(|h| h.expires.map(|e| (e, 1, h.seq)));
                for (at, kind, seq) in waits.chain(exps) {
                    if at <= now && next.is_none_or(|n| (at, kind, seq) < (n.0, n.1, n.2)) {
                        next = Some((at, kind, seq, k));
                    }
                }
            }
            let Some((at, kind, seq, k)) = next else {
                break;
            };
            let key = self.keys[k].as_mut().unwrap();
            if kind == 0 {
                let i = key.queue.iter().position(|w| w.seq == seq).unwrap();
                let w = key.queue.remove(i).unwrap();
                self.events.push(Event::TimedOut {
                    conn: w.conn,
                    id: w.id.into(),
                    key: Some(KEYS[k].into()),
                    waited: at - w.since,
                });
            } else {
                let i = key.holders.iter().position(|h| h.seq == seq).unwrap();
                let h = key.holders.remove(i);
                self.events.push(Event::Expired {
                    conn: h.conn,
                    id: h.id.into(),
                    key: KEYS[k].into(),
                });
            }
            self.settle(k, at);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lock(
        &mut self,
        now: Instant,
        conn: ConnId,
        k: usize,
        id: &str,
        mode: Mode,
        max: Option<u32>,
        ttl: Ttl,
        wait: Wait,
        keep: bool,
    ) -> Result<LockOutcome, TableError> {
        self.handle_timeout(now);
        if let Some(key) = &self.keys[k] {
            if let Some(h) = key.holders.iter().find(|h| h.id == id) {
                if h.conn != conn {
                    return Err(TableError::DuplicateId);
                }
                return Ok(LockOutcome::Granted(Grant {
                    token: h.token,
                    queue_len: key.queue.len(),
                    readers: key.readers(),
                }));
            }
            if let Some(w) = key.queue.iter().find(|w| w.id == id) {
                if w.conn != conn {
                    return Err(TableError::DuplicateId);
                }
                return Ok(LockOutcome::Queued {
                    queue_len: key.queue.len(),
                    readers: key.readers(),
                });
            }
            if let Some(m) = max.filter(|&m| m != key.max) {
                return Err(TableError::MaxMismatch {
                    current: key.max,
                    requested: m,
                });
            }
        }
        let key = self.keys[k].get_or_insert_with(|| MKey {
            max: max.unwrap_or(1),
            ..MKey::default()
        });
        let w = MWaiter {
            id: id.to_string(),
            conn,
            mode,
            ttl: Self::resolve(ttl),
            deadline: None,
            since: now,
            keep,
            seq: 0,
        };
        if key.queue.is_empty() && key.fits(mode) {
            return Ok(LockOutcome::Granted(self.grant(k, now, w)));
        }
        let (queue_len, readers) = (key.queue.len(), key.readers());
        let deadline = match wait {
            Wait::No => return Ok(LockOutcome::Busy { queue_len, readers }),
            Wait::Until(t) if t <= now => return Ok(LockOutcome::TimedOut),
            Wait::Until(t) => Some(t),
            Wait::Forever => None,
        };
        self.seq += 1;
        key.queue.push_back(MWaiter {
            deadline,
            seq: self.seq,
            ..w
        });
        Ok(LockOutcome::Queued {
            queue_len: queue_len + 1,
            readers,
        })
    }

    fn unlock(&mut self, now: Instant, k: usize, id: Option<&str>) -> Result<usize, TableError> {
        self.handle_timeout(now);
        let Some(key) = self.keys[k].as_mut() else {
            return if id.is_none() {
                Ok(0)
            } else {
                Err(TableError::NotHeld)
            };
        };
        let n = match id {
            None => std::mem::take(&mut key.holders).len(),
            Some(id) => match key.holders.iter().position(|h| h.id == id) {
                Some(i) => {
                    key.holders.remove(i);
                    1
                }
                None if key.queue.iter().any(|w| w.id == id) => {
                    return Err(TableError::StillWaiting);
                }
                None => return Err(TableError::NotHeld),
            },
        };
        self.settle(k, now);
        Ok(n)
    }

    fn extend(
        &mut self,
        now: Instant,
        k: usize,
        id: &str,
        ttl: Ttl,
    ) -> Result<Option<Instant>, TableError> {
        self.handle_timeout(now);
        let h = self.keys[k]
            .as_mut()
            .and_then(|key| key.holders.iter_mut().find(|h| h.id == id))
            .ok_or(TableError::NotHeld)?;
        h.expires = Self::resolve(ttl).map(|d| now + d);
        Ok(h.expires)
    }

    fn cancel(&mut self, now: Instant, conn: ConnId, k: usize, id: &str) -> Cancelled {
        self.handle_timeout(now);
        let Some(key) = self.keys[k].as_mut() else {
            return Cancelled::NotFound;
        };
        let out = if let Some(i) = key
            .holders
            .iter()
            .position(|h| h.id == id && h.conn == conn)
        {
            key.holders.remove(i);
            Cancelled::Released
        } else if let Some(i) = key.queue.iter().position(|w| w.id == id && w.conn == conn) {
            key.queue.remove(i);
            Cancelled::Dequeued
        } else {
            return Cancelled::NotFound;
        };
        self.settle(k, now);
        out
    }

    fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.handle_timeout(now);
        for k in 0..KEYS.len() {
            let Some(key) = self.keys[k].as_mut() else {
                continue;
            };
            key.holders.retain(|h| h.conn != conn || h.keep);
            key.queue.retain(|w| w.conn != conn);
            self.settle(k, now);
        }
    }
}

/// Events of one step, grouped by key (per-key order kept: that is the FIFO order); the order
/// across keys of one step is not specified.
fn by_key(mut ev: Vec<Event>) -> Vec<Event> {
    let key = |e: &Event| match e {
        Event::Granted { key, .. } | Event::Expired { key, .. } => key.to_string(),
        Event::TimedOut { key, .. } => key.as_deref().unwrap_or("").to_string(),
        Event::ManyGranted { .. } => String::new(),
    };
    ev.sort_by_key(key);
    ev
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let mut now = t0;
    let mut cfg = Config::default();
    cfg.default_ttl = Some(DEFAULT_TTL);
    cfg.token_seed = 7;
    let mut table = Table::new(cfg);
    let mut model = Model {
        keys: vec![None, None, None],
        token: 7,
        seq: 0,
        events: Vec::new(),
    };
    let mut ids: Vec<(String, ConnId)> = Vec::new();
    let mut last_token = 0;
    let pick = |ids: &[(String, ConnId)], p: usize| -> String {
        if ids.is_empty() || p >= ids.len() + 4 {
            "bogus".to_string()
        } else {
            ids[p % ids.len()].0.clone()
        }
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Lock {
                conn,
                key,
                reuse,
                mode,
                max,
                ttl,
                wait_ms,
                keep,
            } => {
                let conn = ConnId(conn);
                let id = match reuse {
                    Some(p) if !ids.is_empty() => ids[p % ids.len()].0.clone(),
                    _ => format!("id{step}"),
                };
                ids.push((id.clone(), conn));
                let wait = match wait_ms {
                    None => Wait::No,
                    Some(None) => Wait::Forever,
                    Some(Some(ms)) => Wait::Until(now + Duration::from_millis(ms)),
                };
                let req = LockRequest {
                    conn,
                    key: KEYS[key],
                    id: &id,
                    mode,
                    max,
                    ttl,
                    wait,
                    keep_after_disconnect: keep,
                };
                let got = table.lock(now, &req);
                let want = model.lock(now, conn, key, &id, mode, max, ttl, wait, keep);
                prop_assert_eq!(got, want, "step {} lock", step);
            }
            Op::Unlock { key, pick: p } => {
                let id = pick(&ids, p);
                prop_assert_eq!(
                    table.unlock(now, KEYS[key], Some(&id), false),
                    model.unlock(now, key, Some(&id)),
                    "step {} unlock",
                    step
                );
            }
            Op::Force { key } => {
                prop_assert_eq!(
                    table.unlock(now, KEYS[key], None, true),
                    model.unlock(now, key, None),
                    "step {} force",
                    step
                );
            }
            Op::Extend { key, pick: p, ttl } => {
                let id = pick(&ids, p);
                prop_assert_eq!(
                    table.extend(now, KEYS[key], &id, ttl),
                    model.extend(now, key, &id, ttl),
                    "step {} extend",
                    step
                );
            }
            Op::Cancel { conn, key, pick: p } => {
                let id = pick(&ids, p);
                prop_assert_eq!(
                    table.cancel(now, ConnId(conn), KEYS[key], &id),
                    model.cancel(now, ConnId(conn), key, &id),
                    "step {} cancel",
                    step
                );
            }
            Op::Disconnect { conn } => {
                table.disconnect(now, ConnId(conn));
                model.disconnect(now, ConnId(conn));
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(ms);
                table.handle_timeout(now);
                model.handle_timeout(now);
            }
        }
        let got: Vec<Event> = std::iter::from_fn(|| table.poll_event()).collect();
        for e in &got {
            if let Event::Granted { grant, .. } = e {
                prop_assert!(grant.token > last_token, "tokens must rise");
                last_token = grant.token;
            }
        }
        prop_assert_eq!(
            by_key(got),
            by_key(std::mem::take(&mut model.events)),
            "step {} events",
            step
        );
        if let Err(e) = table.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step}: {e}")));
        }
        for (k, name) in KEYS.iter().enumerate() {
            let info = table.info(now, name);
            match (&model.keys[k], info) {
                (None, None) => {}
                (Some(mk), Some(info)) => {
                    let mut want: Vec<(String, u64, Mode)> = mk
                        .holders
                        .iter()
                        .map(|h| (h.id.clone(), h.token, h.mode))
                        .collect();
                    let mut have: Vec<(String, u64, Mode)> = info
                        .holders
                        .iter()
                        .map(|h| (h.id.to_string(), h.token, h.mode))
                        .collect();
                    want.sort_by_key(|h| h.1);
                    have.sort_by_key(|h| h.1);
                    prop_assert_eq!(have, want, "step {} holders of {}", step, name);
                    let wq: Vec<&str> = mk.queue.iter().map(|w| w.id.as_str()).collect();
                    let hq: Vec<&str> = info.queue.iter().map(|q| &*q.id).collect();
                    prop_assert_eq!(hq, wq, "step {} queue of {}", step, name);
                    prop_assert_eq!(info.max, mk.max);
                    // Mutual exclusion, stated directly.
                    let excl = info
                        .holders
                        .iter()
                        .filter(|h| h.mode == Mode::Exclusive)
                        .count();
                    prop_assert!(excl <= info.max as usize);
                    if info.holders.iter().any(|h| h.mode != Mode::Read) {
                        prop_assert!(
                            info.holders.iter().all(|h| h.mode != Mode::Read),
                            "reader beside a writer"
                        );
                    }
                }
                (m, i) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: key {name}: model {m:?} table {i:?}"
                    )));
                }
            }
        }
    }
    // Everyone leaves: nothing may remain but keys held with keep-after-disconnect.
    for c in 0..4 {
        table.disconnect(now, ConnId(c));
        model.disconnect(now, ConnId(c));
    }
    now += Duration::from_secs(3600);
    table.handle_timeout(now);
    model.handle_timeout(now);
    let kept_forever = model.keys.iter().flatten().count();
    if kept_forever == 0 {
        prop_assert!(table.is_empty(), "state left behind: {:?}", table.stats());
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("LMX_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 4000, ..ProptestConfig::default() })]
    #[test]
    fn table_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
