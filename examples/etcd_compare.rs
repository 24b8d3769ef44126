//! Lock+unlock through an etcd-backed broker against direct etcd locking (etcd-client's v3lock
//! `Lock`/`Unlock` RPCs), on the same cluster, in one run, interleaved in rounds so that both
//! see the same machine noise. Used for BENCHMARKS.md.
//!
//! ```text
//! .ci/etcd.sh start /tmp/etcd.env && set -a && . /tmp/etcd.env && set +a
//! cargo run --release --features etcd --example etcd_compare -- [ROUNDS] [CYCLES_PER_ROUND]
//! .ci/etcd.sh stop /tmp/etcd.env
//! ```
//!
//! Each side: one client, one key, uncontended, `CYCLES_PER_ROUND` lock+unlock pairs per round;
//! the broker side uses the blocking Rust client over TCP, the direct side one etcd lease (as
//! the v3lock recipe wants) and `Lock` then `Unlock` on one tokio runtime.
//!
//! Two more rows say where the broker's time goes: the etcd store driven directly (its thread
//! and its etcd work, without the client, TCP and the reactor), and the store's two etcd calls
//! made by hand (the put-if-absent-and-read Txn, then the owner-checked delete Txn) on the
//! direct side's runtime: the floor for any broker that uses this recipe.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use live_mutex::Client;
use live_mutex::broker::Broker;
use live_mutex::internal::etcd::{EtcdConfig, EtcdStore};
use live_mutex::internal::store::{ConnId, LockRequest, StoreEvent, StoreOp};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// An [`EtcdStore`] driven from this thread: submit an op, sleep until its wake hook fires.
struct Driven {
    store: EtcdStore,
    woken: Arc<(Mutex<bool>, Condvar)>,
}

impl Driven {
    fn start(cfg: EtcdConfig) -> Result<Driven, Box<dyn std::error::Error>> {
        let woken = Arc::new((Mutex::new(false), Condvar::new()));
        let w = woken.clone();
        let store = EtcdStore::start(
            cfg,
            Box::new(move || {
                *w.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                w.1.notify_one();
            }),
        )?;
        Ok(Driven { store, woken })
    }

    fn ask(&self, op: StoreOp<'_>) -> Result<StoreEvent, Box<dyn std::error::Error>> {
        self.store.submit(op)?;
        loop {
            if let Some(ev) = self.store.poll_event() {
                return Ok(ev);
            }
            let mut g = self.woken.0.lock().unwrap_or_else(|e| e.into_inner());
            while !*g {
                g = self.woken.1.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            *g = false;
        }
    }

    fn cycle(&self, id: &str) -> Result<(), Box<dyn std::error::Error>> {
        let ev = self.ask(StoreOp::Lock(LockRequest::new(ConnId(1), "bench", id)))?;
        if !matches!(ev, StoreEvent::Granted { .. }) {
            return Err(format!("store: {ev:?}").into());
        }
        let ev = self.ask(StoreOp::Unlock {
            conn: ConnId(1),
            tag: 0,
            key: "bench",
            id: Some(id),
            force: false,
        })?;
        if !matches!(ev, StoreEvent::Unlocked { .. }) {
            return Err(format!("store: {ev:?}").into());
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let eps = std::env::var("LMX_ETCD_ENDPOINTS")
        .map_err(|_| "set LMX_ETCD_ENDPOINTS (see .ci/etcd.sh start)")?;
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rounds = args.next().transpose()?.unwrap_or(5);
    let cycles = args.next().transpose()?.unwrap_or(200);
    let prefix = format!("lmxbench-{:08x}", fastrand::u32(..));

    let cfg = EtcdConfig::from_url(&format!("etcd://{eps}/{prefix}"))?;
    let broker = Broker::builder()
        .tcp("127.0.0.1:0".parse()?)
        .etcd(cfg)
        .bind()?;
    let url = format!("tcp://{}", broker.local_addr().ok_or("no tcp address")?);
    let handle = broker.spawn()?;
    let client = Client::connect(&url)?;
    let store = Driven::start(EtcdConfig::from_url(&format!(
        "etcd://{eps}/{prefix}-store"
    ))?)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoints: Vec<String> = eps.split(',').map(str::to_owned).collect();
    let mut etcd = rt.block_on(etcd_client::Client::connect(&endpoints, None))?;
    let lease = rt.block_on(etcd.lease_grant(60, None))?.id();
    let direct_key = format!("{prefix}-direct");
    let raw_dir = format!("{prefix}-raw/bench/");

    let mut lat: [Vec<Duration>; 4] = Default::default();
    let mut took = [Duration::ZERO; 4];
    for round in 0..rounds {
        let t0 = Instant::now();
        for _ in 0..cycles {
            let s = Instant::now();
            client.lock("bench")?.unlock()?;
            lat[0].push(s.elapsed());
        }
        took[0] += t0.elapsed();
        let t0 = Instant::now();
        rt.block_on(async {
            for _ in 0..cycles {
                let s = Instant::now();
                let opts = etcd_client::LockOptions::new().with_lease(lease);
                let r = etcd.lock(direct_key.clone(), Some(opts)).await?;
                etcd.unlock(r.key().to_vec()).await?;
                lat[1].push(s.elapsed());
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        took[1] += t0.elapsed();
        let t0 = Instant::now();
        for i in 0..cycles {
            let s = Instant::now();
            store.cycle(&format!("{round}-{i}"))?;
            lat[2].push(s.elapsed());
        }
        took[2] += t0.elapsed();
        let t0 = Instant::now();
        rt.block_on(async {
            for i in 0..cycles {
                let s = Instant::now();
                let me = format!("{raw_dir}{round}-{i}");
                let put = Txn::new()
                    .when([Compare::create_revision(me.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(me.clone(), "{}", Some(PutOptions::new().with_lease(lease))),
                        TxnOp::get(raw_dir.clone(), Some(GetOptions::new().with_prefix())),
                    ]);
                let rev = etcd.txn(put).await?.header().map_or(0, |h| h.revision());
                let del = Txn::new()
                    .when([Compare::create_revision(me.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::delete(me, None)]);
                etcd.txn(del).await?;
                lat[3].push(s.elapsed());
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        took[3] += t0.elapsed();
    }
    let _ = rt.block_on(etcd.lease_revoke(lease));
    drop(store);
    drop(client);
    handle.shutdown();
    handle.join()?;

    let n = (rounds * cycles) as f64;
    let names = [
        "etcd-backed broker (lmx)",
        "direct etcd Lock/Unlock",
        "etcd store alone",
        "the store's 2 Txns by hand",
    ];
    println!(
        "{rounds} rounds x {cycles} lock+unlock, one client, one key, 3-member etcd on loopback"
    );
    let mut p50 = [0.0; 4];
    for (i, name) in names.iter().enumerate() {
        let (a, b) = (pct(&mut lat[i], 0.50), pct(&mut lat[i], 0.99));
        p50[i] = a.as_secs_f64();
        println!(
            "{name:<28} p50 {:>8.3} ms  p99 {:>8.3} ms  {:>7.0} lock+unlock/s",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            n / took[i].as_secs_f64()
        );
    }
    println!(
        "p50 ratio broker/direct: {:.2} (target <= 1.5); store alone/direct {:.2}; 2 Txns/direct {:.2}",
        p50[0] / p50[1],
        p50[2] / p50[1],
        p50[3] / p50[1]
    );
    Ok(())
}
