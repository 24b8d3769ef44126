//! Batched etcd work: the steps of requests that reach the store's thread within one turn share
//! one Txn.
//!
//! Why: every Txn is a gRPC call, a Raft entry and an apply on every member, while one
//! request's step is a few small ops, so a busy store made etcd's Txn rate its own ceiling. A
//! lock's put-if-absent-and-read ([`Step::Acquire`]), an owner-checked delete ([`Step::Delete`]:
//! an unlock, a refused try-lock, a time-out) and a waiter's confirming read ([`Step::Confirm`])
//! each become one nested Txn inside one outer Txn. Each step keeps its own compare, so one
//! step's failed condition (its key already exists, the key to delete is gone) leaves the
//! others alone, and each caller gets the answer it would have had alone.
//!
//! Rules that keep each request's meaning:
//! - **One put per lock key per Txn.** A Txn is one revision, and a request's create revision
//!   orders it and is its fencing token: two requests of one key in one Txn would tie, so the
//!   second waits for the next Txn. Requests of different keys sharing a revision is harmless:
//!   order and tokens only ever compare requests of one key.
//! - **One write per etcd key per Txn** (etcd refuses a Txn that writes a key twice).
//! - **Deletes first, then puts-and-reads, then confirming reads.** etcd judges every compare
//!   before any op runs, then runs the ops in order: reads placed after the deletes see them,
//!   so the revision a reader gets (the Txn's) is never at or above a delete it did not see,
//!   and the shared watch's "deletes above the revision I read" stays exact (`watch.rs`).
//! - **Within etcd's op limit.** etcd counts a Txn's ops per level (`--max-txn-ops`, default
//!   128): the outer level has one op per step and a step at most two of its own. When etcd
//!   answers "too many operations" the store halves its limit and sends the steps again.
//! - **A failed batch.** When etcd refused the whole Txn for something a single step may cause
//!   (a revoked lease, a request too large, a duplicate key), nothing was applied: each step
//!   is sent again alone and gets its own answer. Any other failure (a time-out, a lost
//!   connection: it may have been applied) is every step's error, as it would have been alone,
//!   and each caller handles it as before (a put that may have landed is deleted by lease).
//!
//! When: the first step of a turn wakes the flusher, which yields once so that every task made
//! ready in the same turn adds its step, then sends. At most [`IN_FLIGHT`] Txns are under way:
//! steps that arrive meanwhile wait for one to come back and then go together (group commit),
//! so a lone client pays nothing and a busy store sends ever fewer, larger Txns. A caller
//! waits at most `op_timeout` in all, queue included; a step whose caller gave up before it
//! was sent is dropped.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::{Notify, oneshot};

use super::calls::Etcd;
use crate::store::StoreError;

/// Most batched Txns under way at once.
const IN_FLIGHT: usize = 2;
/// etcd's default `--max-txn-ops`.
const DEFAULT_LIMIT: usize = 128;
/// Most bytes of keys and values in one batched Txn (etcd refuses requests above its
/// `--max-request-bytes`, 1.5 MiB by default). A step alone is always sent.
const MAX_BYTES: usize = 512 * 1024;

/// Which key a delete may remove: ours by revision, or (when the put's answer was lost) ours by
/// lease. Both make sure a request of another broker with the same id is never touched.
#[derive(Clone, Copy, Debug)]
pub(super) enum Guard {
    Rev(i64),
    Lease(i64),
}

/// One request's etcd step.
#[derive(Clone, Debug)]
pub(super) enum Step {
    /// Put request key `me` with `value` on `lease` if it does not exist, then read every
    /// request of its lock key (`dir`).
    Acquire {
        me: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        dir: Vec<u8>,
    },
    /// Delete request key `me` if it is still ours (by revision or by lease).
    Delete { me: Vec<u8>, guard: Guard },
    /// If `me` still exists with create revision `rev`, read the requests of `dir` older than
    /// it.
    Confirm { me: Vec<u8>, rev: i64, dir: Vec<u8> },
}

/// What etcd answered to one step.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The step's compare held (its put, delete or read was made).
    pub(super) succeeded: bool,
    /// What its read returned (empty for a delete, or when the compare failed).
    pub(super) kvs: Vec<KeyValue>,
    /// etcd's revision after the Txn that carried it.
    pub(super) revision: i64,
}

impl Step {
    /// The order within a Txn: deletes, then puts-and-reads, then confirming reads.
    fn rank(&self) -> u8 {
        match self {
            Step::Delete { .. } => 0,
            Step::Acquire { .. } => 1,
            Step::Confirm { .. } => 2,
        }
    }

    /// Ops of the step's own level (etcd's per-level count).
    fn width(&self) -> usize {
        match self {
            Step::Acquire { .. } => 2,
            _ => 1,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Step::Acquire { me, value, dir, .. } => 2 * me.len() + value.len() + dir.len(),
            Step::Delete { me, .. } => 2 * me.len(),
            Step::Confirm { me, dir, .. } => me.len() + dir.len(),
        }
    }

    /// The etcd key it writes, if any.
    fn written(&self) -> Option<&[u8]> {
        match self {
            Step::Acquire { me, .. } | Step::Delete { me, .. } => Some(me),
            Step::Confirm { .. } => None,
        }
    }

    fn txn(&self) -> Txn {
        match self {
            Step::Acquire {
                me,
                value,
                lease,
                dir,
            } => Txn::new()
                .when([Compare::create_revision(me.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        me.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(*lease)),
                    ),
                    TxnOp::get(dir.clone(), Some(GetOptions::new().with_prefix())),
                ]),
            Step::Delete { me, guard } => {
                let cmp = match *guard {
                    Guard::Rev(r) => Compare::create_revision(me.clone(), CompareOp::Equal, r),
                    Guard::Lease(l) => Compare::lease(me.clone(), CompareOp::Equal, l),
                };
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::delete(me.clone(), None)])
            }
            Step::Confirm { me, rev, dir } => Txn::new()
                .when([Compare::create_revision(me.clone(), CompareOp::Equal, *rev)])
                .and_then([TxnOp::get(
                    dir.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_max_create_revision(rev - 1),
                    ),
                )]),
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

struct Job {
    step: Step,
    reply: Reply,
}

/// The steps waiting for a Txn. Shared by the store's tasks; only the store's thread touches
/// it.
pub(super) struct Batcher {
    /// How long a caller waits for its step's answer, queue included (the op deadline).
    timeout: Duration,
    st: RefCell<Queue>,
    wake: Notify,
}

struct Queue {
    jobs: VecDeque<Job>,
    in_flight: usize,
    /// Most ops per level of one Txn, as this cluster takes them.
    limit: usize,
}

impl Batcher {
    pub(super) fn new(timeout: Duration) -> Self {
        Batcher {
            timeout,
            st: RefCell::new(Queue {
                jobs: VecDeque::new(),
                in_flight: 0,
                limit: DEFAULT_LIMIT,
            }),
            wake: Notify::new(),
        }
    }

    fn push(&self, job: Job) {
        self.st.borrow_mut().jobs.push_back(job);
        self.wake.notify_one();
    }

    /// The next batch to send, in arrival order within the rules (the module docs), unless
    /// [`IN_FLIGHT`] batches are under way or nothing waits. Steps left out stay queued in
    /// order.
    fn take(&self) -> Option<Vec<Job>> {
        let mut q = self.st.borrow_mut();
        if q.in_flight >= IN_FLIGHT {
            return None;
        }
        let limit = q.limit;
        let mut batch: Vec<Job> = Vec::new();
        let mut left = VecDeque::new();
        let (mut width, mut bytes) = (0, 0);
        let mut dirs: HashSet<Vec<u8>> = HashSet::new();
        let mut writes: HashSet<Vec<u8>> = HashSet::new();
        while let Some(job) = q.jobs.pop_front() {
            if job.reply.is_closed() {
                continue; // its caller gave up (timed out, or its task was aborted)
            }
            let s = &job.step;
            let w = width.max(s.width());
            if !batch.is_empty() && (batch.len() + 1 + w > limit || bytes + s.bytes() > MAX_BYTES) {
                left.push_back(job);
                break;
            }
            let clash = s.written().is_some_and(|k| writes.contains(k))
                || matches!(s, Step::Acquire { dir, .. } if dirs.contains(dir));
            if clash {
                left.push_back(job);
                continue;
            }
            if let Some(k) = s.written() {
                writes.insert(k.to_vec());
            }
            if let Step::Acquire { dir, .. } = s {
                dirs.insert(dir.clone());
            }
            width = w;
            bytes += s.bytes();
            batch.push(job);
        }
        left.append(&mut q.jobs);
        q.jobs = left;
        if batch.is_empty() {
            return None;
        }
        q.in_flight += 1;
        batch.sort_by_key(|j| j.step.rank());
        Some(batch)
    }

    /// A batch came back.
    fn done(&self) {
        let mut q = self.st.borrow_mut();
        q.in_flight -= 1;
        if !q.jobs.is_empty() {
            self.wake.notify_one();
        }
    }

    /// etcd said a batch of `n` steps had too many ops: halve what we send, and queue the
    /// steps again at the front.
    fn shrink(&self, jobs: Vec<Job>) {
        let mut q = self.st.borrow_mut();
        q.limit = ((jobs.len() + 2) / 2).max(4).min(q.limit);
        tracing::warn!(
            limit = q.limit,
            "etcd refused a Txn of {} steps (too many operations); sending at most this many ops per Txn from now on",
            jobs.len()
        );
        for job in jobs.into_iter().rev() {
            q.jobs.push_front(job);
        }
    }
}

/// Runs one step in the next Txn the store sends, and returns etcd's answer to it.
pub(super) async fn run(b: &Batcher, step: Step) -> Result<Outcome, StoreError> {
    let (reply, answer) = oneshot::channel();
    b.push(Job { step, reply });
    let t = b.timeout;
    match tokio::time::timeout(t, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(StoreError::Stopped),
        Err(_) => Err(StoreError::Timeout(t)),
    }
}

/// Sends the queued steps as they come, for the store's whole life.
pub(super) async fn flusher(b: Rc<Batcher>, etcd: Etcd) {
    loop {
        b.wake.notified().await;
        // Let every task made ready in this turn add its step first.
        tokio::task::yield_now().await;
        while let Some(jobs) = b.take() {
            tokio::task::spawn_local(send(b.clone(), etcd.clone(), jobs));
        }
    }
}

async fn send(b: Rc<Batcher>, etcd: Etcd, jobs: Vec<Job>) {
    let steps: Vec<&Step> = jobs.iter().map(|j| &j.step).collect();
    let res = exec(&etcd, &steps).await;
    match res {
        Ok(outs) => {
            for (job, out) in jobs.into_iter().zip(outs) {
                let _ = job.reply.send(out);
            }
        }
        Err(e) if jobs.len() > 1 && refused(&e, TOO_MANY_OPS) => b.shrink(jobs),
        Err(e) if jobs.len() > 1 && WHOLE_TXN_REFUSALS.iter().any(|m| refused(&e, m)) => {
            // Nothing was applied: each step alone, so only the one at fault fails.
            for job in jobs {
                let etcd = etcd.clone();
                tokio::task::spawn_local(async move {
                    let out = exec(&etcd, &[&job.step]).await.and_then(|mut v| {
                        v.pop()
                            .unwrap_or(Err(StoreError::Etcd("empty Txn answer".into())))
                    });
                    let _ = job.reply.send(out);
                });
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
    b.done();
}

/// etcd's texts for a Txn it refused before applying any of it.
const TOO_MANY_OPS: &str = "too many operations in txn request";
const WHOLE_TXN_REFUSALS: [&str; 3] = [
    "requested lease not found",
    "request is too large",
    "duplicate key given in txn request",
];

fn refused(e: &StoreError, text: &str) -> bool {
    matches!(e, StoreError::Etcd(m) if m.contains(text))
}

/// One Txn for `steps`: a single step is sent as it is, several as nested Txns. Each step's
/// answer, in order.
async fn exec(
    etcd: &Etcd,
    steps: &[&Step],
) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    // `Etcd::txn` sends a Txn again to a live member when it surely did not run (a dead
    // member still picked, an election under way), within the op deadline.
    if let [one] = steps {
        let r = etcd.txn(one.txn()).await?;
        let revision = r.header().map_or(0, |h| h.revision());
        return Ok(vec![Ok(outcome(r.succeeded(), r.op_responses(), revision))]);
    }
    let ops: Vec<TxnOp> = steps.iter().map(|s| TxnOp::txn(s.txn())).collect();
    let r = etcd.txn(Txn::new().and_then(ops)).await?;
    let revision = r.header().map_or(0, |h| h.revision());
    let mut answers = r.op_responses().into_iter();
    Ok(steps
        .iter()
        .map(|_| match answers.next() {
            Some(TxnOpResponse::Txn(t)) => Ok(outcome(t.succeeded(), t.op_responses(), revision)),
            _ => Err(StoreError::Etcd(
                "etcd's answer to a batched Txn lacks a step".into(),
            )),
        })
        .collect())
}

fn outcome(succeeded: bool, ops: Vec<TxnOpResponse>, revision: i64) -> Outcome {
    let kvs = ops
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .unwrap_or_default();
    Outcome {
        succeeded,
        kvs,
        revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(step: Step) -> (Job, oneshot::Receiver<Result<Outcome, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        (Job { step, reply }, rx)
    }

    fn acquire(key: &str, id: &str) -> Step {
        Step::Acquire {
            me: format!("p/{key}/{id}").into_bytes(),
            value: b"{}".to_vec(),
            lease: 1,
            dir: format!("p/{key}/").into_bytes(),
        }
    }

    fn delete(key: &str, id: &str) -> Step {
        Step::Delete {
            me: format!("p/{key}/{id}").into_bytes(),
            guard: Guard::Rev(3),
        }
    }

    fn keys(b: &[Job]) -> Vec<String> {
        b.iter()
            .map(|j| match &j.step {
                Step::Acquire { me, .. } | Step::Delete { me, .. } | Step::Confirm { me, .. } => {
                    String::from_utf8_lossy(me).into_owned()
                }
            })
            .collect()
    }

    #[test]
    fn one_put_per_lock_key_and_deletes_first() {
        let b = Batcher::new(Duration::from_secs(1));
        let mut rxs = Vec::new();
        for s in [
            acquire("a", "1"),
            acquire("a", "2"),
            acquire("b", "1"),
            delete("c", "9"),
            Step::Confirm {
                me: b"p/a/0".to_vec(),
                rev: 5,
                dir: b"p/a/".to_vec(),
            },
            delete("b", "1"),
        ] {
            let (j, rx) = job(s);
            rxs.push(rx);
            b.push(j);
        }
        let first = b.take().expect("a batch");
        assert_eq!(keys(&first), ["p/c/9", "p/a/1", "p/b/1", "p/a/0"]);
        let second = b.take().expect("a second batch");
        assert_eq!(keys(&second), ["p/b/1", "p/a/2"]);
        assert!(b.take().is_none(), "two under way");
        b.done();
        assert!(b.take().is_none(), "nothing left");
    }

    #[test]
    fn a_batch_stays_within_the_op_limit_and_gone_callers_are_dropped() {
        let b = Batcher::new(Duration::from_secs(1));
        b.st.borrow_mut().limit = 8;
        let mut rxs = Vec::new();
        for i in 0..10 {
            let (j, rx) = job(acquire(&format!("k{i}"), "1"));
            b.push(j);
            rxs.push(rx);
        }
        // Steps 0..5 fit (6 outer ops + 2 of a step's own = 8); step 6 gave up meanwhile.
        drop(rxs.remove(6));
        let first = b.take().expect("batch");
        assert_eq!(first.len(), 6);
        let second = b.take().expect("batch");
        assert_eq!(keys(&second), ["p/k7/1", "p/k8/1", "p/k9/1"]);
    }
}
