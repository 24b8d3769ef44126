//! The lock table alone: what one lock decision costs without any I/O.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use live_mutex::internal::table::{Config, ConnId, LockRequest, Table};

fn uncontended(c: &mut Criterion) {
    let mut t = Table::new(Config::default());
    let now = Instant::now();
    let id = "8650931b-4909-4955-9c19-ce805365af0e";
    c.bench_function("table/uncontended lock+unlock", |b| {
        b.iter(|| {
            let r = LockRequest::new(ConnId(1), black_box("foo"), id);
            black_box(t.lock(now, &r).ok());
            black_box(t.unlock(now, "foo", Some(id), false).ok());
        })
    });
}

fn handoff(c: &mut Criterion) {
    // 64 connections queue on one key; each iteration the holder unlocks, the head of the queue
    // is granted, and the old holder queues again at the back.
    let mut t = Table::new(Config::default());
    let now = Instant::now();
    let ids: Vec<String> = (0..65).map(|i| format!("id-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        t.lock(now, &LockRequest::new(ConnId(i as u64), "k", id))
            .ok();
    }
    let mut holder = 0usize;
    c.bench_function("table/handoff through 64 waiters", |b| {
        b.iter(|| {
            t.unlock(now, "k", Some(&ids[holder]), false).ok();
            while let Some(e) = t.poll_event() {
                black_box(e);
            }
            t.lock(
                now,
                &LockRequest::new(ConnId(holder as u64), "k", &ids[holder]),
            )
            .ok();
            holder = (holder + 1) % ids.len();
        })
    });
}

fn disconnect(c: &mut Criterion) {
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    let now = Instant::now();
    c.bench_function("table/disconnect holding 1000 locks", |b| {
        b.iter_batched_ref(
            || {
                let mut t = Table::new(Config::default());
                for k in &keys {
                    t.lock(now, &LockRequest::new(ConnId(1), k, "id")).ok();
                }
                t
            },
            |t| t.disconnect(now, ConnId(1)),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, uncontended, handoff, disconnect);
criterion_main!(benches);
