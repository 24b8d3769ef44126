//! Batched etcd work (`src/store/etcd/batch.rs`): requests that reach the store together share
//! one Txn, and each keeps its own rules and its own answer.
//!
//! The cluster comes from `LMX_ETCD_ENDPOINTS` (as `.ci/etcd.sh start` writes it), else each
//! test starts its own; see tests/etcd_store.rs.
#![cfg(feature = "etcd")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::channel;

use common::etcd::*;
use live_mutex::internal::store::{Op, StoreError, StoreEvent, StoreOp, TableError, Wait};

/// Txn calls the cluster has started, summed over its members (etcd's own counter, read from
/// each member's plain-HTTP `/metrics`).
fn txns(metrics: &str) -> u64 {
    metrics
        .split(',')
        .map(|ep| {
            let mut s = TcpStream::connect(ep).expect("member");
            write!(s, "GET /metrics HTTP/1.0\r\nHost: {ep}\r\n\r\n").expect("ask");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("metrics");
            body.lines()
                .filter(|l| {
                    l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Txn\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

#[test]
fn one_txn_carries_a_burst_and_its_failing_requests_fail_alone() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("batch");
    let mut a = cl.store(&p, SESSION, &tx);
    let mut b = cl.store(&p, SESSION, &tx);
    // The other broker holds "held", and request id "dup" of key "dup".
    b.lock(1, "held", "h1", |_| {});
    let held = token(&b.expect(&wake, "h1 granted", T, granted("h1")));
    b.lock(1, "dup", "dup", |_| {});
    let dup = token(&b.expect(&wake, "dup granted", T, granted("dup")));

    let before = txns(&cl.metrics);
    // A burst from one new connection: its requests all wait for the connection's lease, then
    // reach etcd together. Five free keys, a try-lock of the held key (it must be refused by
    // the grant rule), and a request whose etcd key exists (its put-if-absent must fail).
    let free: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for (i, k) in free.iter().enumerate() {
        a.lock(7, k, &format!("f{i}"), |s| s.wait = Wait::No);
    }
    a.lock(7, "held", "t1", |s| s.wait = Wait::No);
    a.lock(7, "dup", "dup", |s| s.wait = Wait::No);

    let tokens: Vec<u64> = (0..5)
        .map(|i| {
            let id = format!("f{i}");
            token(&a.expect(&wake, "a free key granted", T, granted(&id)))
        })
        .collect();
    let busy = a.expect(
        &wake,
        "the try-lock refused",
        T,
        |e| matches!(e, StoreEvent::Busy { id, .. } if id == "t1"),
    );
    let dup_err = a.expect(
        &wake,
        "the duplicate refused",
        T,
        |e| matches!(e, StoreEvent::Failed { id: Some(id), .. } if id == "dup"),
    );
    let after = txns(&cl.metrics);
    println!(
        "burst of 7: grants with tokens {tokens:?}; {busy:?}; {dup_err:?}; etcd counted {} Txns (the held key's other holders: h1 token {held}, dup token {dup})",
        after - before
    );
    assert!(
        matches!(busy, StoreEvent::Busy { queue_len: 1, .. }),
        "{busy:?}"
    );
    assert!(
        matches!(
            dup_err,
            StoreEvent::Failed {
                op: Op::Lock,
                error: StoreError::Rule(TableError::DuplicateId),
                ..
            }
        ),
        "{dup_err:?}"
    );
    // One Txn put them all: one create revision, so one token, above every earlier one.
    assert!(
        tokens.iter().all(|&t| t == tokens[0] && t > dup),
        "{tokens:?}"
    );
    // That Txn, and the refused try-lock's delete of its own key.
    assert_eq!(after - before, 2, "Txns for the burst");

    // The other broker's holds are untouched, and the key of the refused try-lock is gone.
    a.submit(StoreOp::Info {
        tag: 1,
        key: "held",
    });
    let info = a.expect(&wake, "info", T, |e| matches!(e, StoreEvent::Info { .. }));
    let StoreEvent::Info {
        info: Ok(Some(info)),
        ..
    } = info
    else {
        panic!("{info:?}");
    };
    assert_eq!(
        (
            info.holders.len(),
            info.holders[0].token,
            info.waiters.len()
        ),
        (1, held, 0)
    );
    b.unlock(1, "dup", "dup");
    b.expect(&wake, "dup released", T, |e| {
        matches!(e, StoreEvent::Unlocked { .. })
    });
}

#[test]
fn releases_sent_together_share_txns_and_each_is_answered() {
    let Some(cl) = Cluster::get(false) else {
        return;
    };
    let (tx, wake) = channel();
    let p = prefix("batchdel");
    let mut a = cl.store(&p, SESSION, &tx);
    for i in 0..6 {
        a.lock(3, &format!("r{i}"), &format!("r{i}"), |_| {});
        a.expect(&wake, "granted", T, granted(&format!("r{i}")));
    }
    let before = txns(&cl.metrics);
    for i in 0..6 {
        a.unlock(3, &format!("r{i}"), &format!("r{i}"));
    }
    let mut released = 0;
    let mut refused = 0;
    while released + refused < 6 {
        match a.expect(&wake, "an answer", T, |e| {
            matches!(e, StoreEvent::Unlocked { .. } | StoreEvent::Failed { .. })
        }) {
            StoreEvent::Unlocked { .. } => released += 1,
            StoreEvent::Failed { .. } => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    let after = txns(&cl.metrics);
    println!(
        "6 unlocks: {released} released, {refused} refused, {} Txns",
        after - before
    );
    assert_eq!((released, refused), (6, 0));
    // Alone they take 6. At most two Txns are under way at once, so at worst the first two
    // deletes went alone (the store's thread woke between them) and the other four together.
    assert!(
        after - before <= 3,
        "6 deletes sent together took {} Txns",
        after - before
    );
}
