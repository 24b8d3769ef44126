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

use std::time::{Duration, Instant};

use live_mutex::Client;
use live_mutex::broker::Broker;
use live_mutex::store::etcd::EtcdConfig;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
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

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoints: Vec<String> = eps.split(',').map(str::to_owned).collect();
    let mut etcd = rt.block_on(etcd_client::Client::connect(&endpoints, None))?;
    let lease = rt.block_on(etcd.lease_grant(60, None))?.id();
    let direct_key = format!("{prefix}-direct");

    let (mut via_broker, mut direct) = (Vec::new(), Vec::new());
    let (mut t_broker, mut t_direct) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t0 = Instant::now();
        for _ in 0..cycles {
            let s = Instant::now();
            client.lock("bench")?.unlock()?;
            via_broker.push(s.elapsed());
        }
        t_broker += t0.elapsed();
        let t0 = Instant::now();
        rt.block_on(async {
            for _ in 0..cycles {
                let s = Instant::now();
                let opts = etcd_client::LockOptions::new().with_lease(lease);
                let r = etcd.lock(direct_key.clone(), Some(opts)).await?;
                etcd.unlock(r.key().to_vec()).await?;
                direct.push(s.elapsed());
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        t_direct += t0.elapsed();
    }
    let _ = rt.block_on(etcd.lease_revoke(lease));
    drop(client);
    handle.shutdown();
    handle.join()?;

    let n = (rounds * cycles) as f64;
    let row = |name: &str, v: &mut Vec<Duration>, t: Duration| {
        let (p50, p99) = (pct(v, 0.50), pct(v, 0.99));
        println!(
            "{name:<28} p50 {:>8.3} ms  p99 {:>8.3} ms  {:>7.0} lock+unlock/s",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            n / t.as_secs_f64()
        );
        p50
    };
    println!(
        "{rounds} rounds x {cycles} lock+unlock, one client, one key, 3-member etcd on loopback"
    );
    let b = row("etcd-backed broker (lmx)", &mut via_broker, t_broker);
    let d = row("direct etcd Lock/Unlock", &mut direct, t_direct);
    println!(
        "p50 ratio broker/direct: {:.2} (target <= 1.5)",
        b.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}
