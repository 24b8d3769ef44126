//! Wire-format costs per message: decoding the real 0.2.25 lock/unlock captures (copy into a
//! scratch buffer included, as the broker must for WebSocket frames), encoding the replies, and
//! framing a burst of NDJSON lines.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use live_mutex::proto::encode::LockOutcome;
use live_mutex::proto::ndjson::LineFramer;
use live_mutex::proto::{Decoder, Reply, decode};

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut b = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    b.pop(); // the framer strips the '\n'
    b
}

fn decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for name in [
        "c2b-2-lock.json",
        "c2b-4-lock-received.json",
        "c2b-5-unlock.json",
    ] {
        let line = capture(name);
        let mut scratch = Vec::with_capacity(line.len());
        let mut d = Decoder::default();
        g.throughput(Throughput::Bytes(line.len() as u64));
        g.bench_function(name.trim_end_matches(".json"), |b| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(black_box(&line));
                black_box(d.decode(&mut scratch).is_ok())
            })
        });
    }
    let line = capture("c2b-2-lock.json");
    let mut scratch = Vec::with_capacity(line.len());
    g.bench_function("lock, fresh Decoder per call", |b| {
        b.iter(|| {
            scratch.clear();
            scratch.extend_from_slice(black_box(&line));
            black_box(decode(&mut scratch).is_ok())
        })
    });
    g.bench_function("lock, simd_json::to_borrowed_value only", |b| {
        b.iter(|| {
            scratch.clear();
            scratch.extend_from_slice(black_box(&line));
            black_box(simd_json::to_borrowed_value(&mut scratch).is_ok())
        })
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut out = Vec::with_capacity(256);
    let uuid = "8650931b-4909-4955-9c19-ce805365af0e";
    let granted = Reply::Lock {
        uuid,
        key: "foo",
        outcome: LockOutcome::Granted {
            fencing_token: Some(1_764_000_000_000_000),
        },
        lock_request_count: 0,
        readers_count: 0,
    };
    g.bench_function("lock granted", |b| {
        b.iter(|| {
            out.clear();
            black_box(&granted).encode(&mut out);
            black_box(out.len())
        })
    });
    let unlocked = Reply::Unlock {
        uuid: "abd1661b-c6cc-4090-aa77-600b136f8902",
        key: "foo",
        unlocked: true,
        lock_request_count: 0,
        lost: false,
        error: None,
        warning: None,
    };
    g.bench_function("unlock ok", |b| {
        b.iter(|| {
            out.clear();
            black_box(&unlocked).encode(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let mut burst = Vec::new();
    for name in [
        "c2b-2-lock.json",
        "c2b-4-lock-received.json",
        "c2b-5-unlock.json",
    ] {
        for _ in 0..32 {
            burst.extend_from_slice(&capture(name));
            burst.push(b'\n');
        }
    }
    let mut g = c.benchmark_group("ndjson");
    g.throughput(Throughput::Bytes(burst.len() as u64));
    let mut f = LineFramer::default();
    g.bench_function("96 lines in one read", |b| {
        b.iter(|| {
            f.extend(black_box(&burst));
            let mut n = 0;
            while let Ok(Some(line)) = f.next_line() {
                n += line.len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, decoding, encoding, framing);
criterion_main!(benches);
