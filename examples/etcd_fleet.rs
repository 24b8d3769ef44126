//! A fleet through etcd: C concurrent clients doing lock+unlock cycles through one or two
//! etcd-backed brokers, against etcd-client's own v3lock `Lock`/`Unlock` with C concurrent
//! callers, on the same cluster, interleaved cell by cell in one run. Used for BENCHMARKS.md.
//!
//! ```text
//! .ci/etcd.sh start /tmp/etcd.env && set -a && . /tmp/etcd.env && set +a
//! cargo run --release --features etcd --example etcd_fleet -- [ROUNDS] [SECONDS_PER_CELL]
//! .ci/etcd.sh stop /tmp/etcd.env
//! ```
//!
//! Cells: C = 1, 8 and 64 clients, on C keys (client i on key i: no contention) and on 1 key
//! (all contend), each through 1 broker, through 2 brokers (client i on broker i mod 2; both
//! brokers share the prefix, so they contend in etcd) and directly on etcd. Every round runs
//! every cell once, the three sides of a workload next to each other in a rotating order; the
//! table gives medians over the rounds. Per cell: lock+unlock cycles per second, the p50 and
//! p99 of one cycle (the lock's grant and the unlock's answer both awaited, on both sides),
//! and etcd's own count of calls started (`grpc_server_started_total` summed over the
//! members' `/metrics`): Txn calls per cycle, and all unary calls per cycle (for the direct
//! side these are its `Lock` and `Unlock` calls; the Txns etcd makes inside them are not
//! gRPC calls and are not counted). Broker clients are blocking Rust clients over TCP, one
//! thread and one connection each; direct callers are tasks on a 2-thread tokio runtime, one
//! lease each (v3lock keys are per lease). Every side counts overlaps with a holder counter
//! per key checked inside the critical section.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use live_mutex::Client;
use live_mutex::broker::{Broker, BrokerHandle};
use live_mutex::internal::etcd::EtcdConfig;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Brokers(usize),
    Direct,
}

impl Side {
    fn name(self) -> String {
        match self {
            Side::Brokers(1) => "lmx, 1 broker".into(),
            Side::Brokers(n) => format!("lmx, {n} brokers"),
            Side::Direct => "etcd Lock/Unlock".into(),
        }
    }
}

/// What one cell measured.
#[derive(Default)]
struct Cell {
    cycles: u64,
    secs: f64,
    lat: Vec<Duration>,
    txns: u64,
    calls: u64,
    overlaps: u64,
}

/// Txn calls and all unary calls started, summed over the members.
fn etcd_calls(endpoints: &[String]) -> Res<(u64, u64)> {
    use std::io::{Read, Write};
    let (mut txn, mut all) = (0.0, 0.0);
    for ep in endpoints {
        let mut s = std::net::TcpStream::connect(ep)?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {ep}\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        for l in body.lines() {
            if !l.starts_with("grpc_server_started_total{") || !l.contains("grpc_type=\"unary\"") {
                continue;
            }
            let v: f64 = l.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
            all += v;
            if l.contains("grpc_method=\"Txn\"") {
                txn += v;
            }
        }
    }
    Ok((txn as u64, all as u64))
}

/// CPU time (user + system, in clock ticks) of a process, from `/proc/PID/stat`; 0 where there
/// is no `/proc`.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<u64> = after.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU ticks of this process and of the etcd members (`LMX_ETCD_PIDS`, as `.ci/etcd.sh`
/// writes it).
fn cpu(etcd_pids: &[String]) -> (u64, u64) {
    (
        cpu_ticks("self"),
        etcd_pids.iter().map(|p| cpu_ticks(p)).sum(),
    )
}

fn holders(n: usize) -> Arc<Vec<AtomicU32>> {
    Arc::new((0..n).map(|_| AtomicU32::new(0)).collect())
}

/// The critical section: alone on the key, or an overlap.
fn inside(h: &AtomicU32) -> u64 {
    let overlap = h.fetch_add(1, Ordering::SeqCst) > 0;
    h.fetch_sub(1, Ordering::SeqCst);
    u64::from(overlap)
}

fn through_brokers(urls: &[String], c: usize, k: usize, tag: &str, secs: f64) -> Res<Cell> {
    let hold = holders(k);
    let clients: Vec<Client> = (0..c)
        .map(|i| Client::connect(&urls[i % urls.len()]))
        .collect::<Result<_, _>>()?;
    // Warm up: each connection's first lock also grants its etcd lease.
    for (i, cl) in clients.iter().enumerate() {
        cl.lock(&format!("{tag}-{}", i % k))?.unlock()?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, cl)| {
            let hold = hold.clone();
            let key = format!("{tag}-{}", i % k);
            std::thread::spawn(move || -> Res<(Vec<Duration>, u64)> {
                let (mut lat, mut overlaps) = (Vec::new(), 0);
                while Instant::now() < end {
                    let s = Instant::now();
                    let g = cl.lock(&key)?;
                    overlaps += inside(&hold[i % k]);
                    g.unlock()?;
                    lat.push(s.elapsed());
                }
                Ok((lat, overlaps))
            })
        })
        .collect();
    let mut cell = Cell::default();
    for t in threads {
        let (lat, o) = t.join().map_err(|_| "client thread panicked")??;
        cell.lat.extend(lat);
        cell.overlaps += o;
    }
    cell.secs = start.elapsed().as_secs_f64();
    cell.cycles = cell.lat.len() as u64;
    Ok(cell)
}

fn direct(
    rt: &tokio::runtime::Runtime,
    etcd: &etcd_client::Client,
    c: usize,
    k: usize,
    tag: &str,
    secs: f64,
) -> Res<Cell> {
    let hold = holders(k);
    rt.block_on(async {
        let mut leases = Vec::new();
        for _ in 0..c {
            leases.push(etcd.clone().lease_grant(60, None).await?.id());
        }
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = leases
            .iter()
            .enumerate()
            .map(|(i, &lease)| {
                let mut etcd = etcd.clone();
                let hold = hold.clone();
                let key = format!("{tag}-{}", i % k);
                tokio::spawn(async move {
                    let (mut lat, mut overlaps) = (Vec::new(), 0);
                    while Instant::now() < end {
                        let s = Instant::now();
                        let opts = etcd_client::LockOptions::new().with_lease(lease);
                        let r = etcd.lock(key.clone(), Some(opts)).await?;
                        overlaps += inside(&hold[i % k]);
                        etcd.unlock(r.key().to_vec()).await?;
                        lat.push(s.elapsed());
                    }
                    Ok::<_, etcd_client::Error>((lat, overlaps))
                })
            })
            .collect();
        let mut cell = Cell::default();
        for t in tasks {
            let (lat, o) = t.await??;
            cell.lat.extend(lat);
            cell.overlaps += o;
        }
        cell.secs = start.elapsed().as_secs_f64();
        cell.cycles = cell.lat.len() as u64;
        for l in leases {
            let _ = etcd.clone().lease_revoke(l).await;
        }
        Ok(cell)
    })
}

/// One cell's figures: cycles/s, p50 ms, p99 ms, Txn calls per cycle, unary calls per cycle,
/// CPU µs per cycle of this process and of the etcd members.
type Row = (f64, f64, f64, f64, f64, f64, f64);

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn broker(eps: &str, prefix: &str) -> Res<(String, BrokerHandle)> {
    let cfg = EtcdConfig::from_url(&format!("etcd://{eps}/{prefix}"))?;
    let b = Broker::builder()
        .tcp("127.0.0.1:0".parse()?)
        .etcd(cfg)
        .bind()?;
    let url = format!("tcp://{}", b.local_addr().ok_or("no tcp address")?);
    Ok((url, b.spawn()?))
}

fn main() -> Res<()> {
    let eps = std::env::var("LMX_ETCD_ENDPOINTS")
        .map_err(|_| "set LMX_ETCD_ENDPOINTS (see .ci/etcd.sh start)")?;
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let secs: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2.0);
    let prefix = format!("lmxfleet-{:08x}", fastrand::u32(..));
    let endpoints: Vec<String> = eps.split(',').map(str::to_owned).collect();
    let etcd_pids: Vec<String> = std::env::var("LMX_ETCD_PIDS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    // Linux's USER_HZ: /proc counts CPU time in 1/100 s.
    let hz = 100.0;

    let (url_a, ha) = broker(&eps, &prefix)?;
    let (url_b, hb) = broker(&eps, &prefix)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let etcd = rt.block_on(etcd_client::Client::connect(&endpoints, None))?;

    // (clients, keys) workloads; C = 1 has one shape only.
    let loads = [(1, 1), (8, 8), (8, 1), (64, 64), (64, 1)];
    let sides = [Side::Brokers(1), Side::Brokers(2), Side::Direct];
    // results[load][side] = one entry per round: (cycles/s, p50 ms, p99 ms, txn/cycle,
    // calls/cycle, CPU µs per cycle of this process, of the etcd members)
    let mut results = vec![vec![Vec::new(); sides.len()]; loads.len()];
    let mut overlaps = 0;
    println!(
        "{rounds} rounds, {secs} s per cell, 3-member etcd at {eps}; load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for round in 0..rounds {
        for (li, &(c, k)) in loads.iter().enumerate() {
            for j in 0..sides.len() {
                let si = (j + round + li) % sides.len();
                let side = sides[si];
                let tag = format!("r{round}-c{c}-k{k}-{si}");
                let before = etcd_calls(&endpoints)?;
                let cpu0 = cpu(&etcd_pids);
                let mut cell = match side {
                    Side::Brokers(1) => {
                        through_brokers(std::slice::from_ref(&url_a), c, k, &tag, secs)?
                    }
                    Side::Brokers(_) => {
                        through_brokers(&[url_a.clone(), url_b.clone()], c, k, &tag, secs)?
                    }
                    Side::Direct => direct(&rt, &etcd, c, k, &tag, secs)?,
                };
                let after = etcd_calls(&endpoints)?;
                let cpu1 = cpu(&etcd_pids);
                (cell.txns, cell.calls) = (after.0 - before.0, after.1 - before.1);
                overlaps += cell.overlaps;
                let n = cell.cycles.max(1) as f64;
                let row = (
                    cell.cycles as f64 / cell.secs,
                    pct(&mut cell.lat, 0.5).as_secs_f64() * 1e3,
                    pct(&mut cell.lat, 0.99).as_secs_f64() * 1e3,
                    cell.txns as f64 / n,
                    cell.calls as f64 / n,
                    (cpu1.0 - cpu0.0) as f64 / hz * 1e6 / n,
                    (cpu1.1 - cpu0.1) as f64 / hz * 1e6 / n,
                );
                println!(
                    "round {round} C={c:<2} K={k:<2} {:<18} {:>8.0} cycles/s  p50 {:>7.3} ms  p99 {:>8.3} ms  Txn/cycle {:.3}  calls/cycle {:.3}  CPU us/cycle here {:.0} etcd {:.0}  overlaps {}",
                    side.name(),
                    row.0,
                    row.1,
                    row.2,
                    row.3,
                    row.4,
                    row.5,
                    row.6,
                    cell.overlaps
                );
                results[li][si].push(row);
            }
        }
    }
    println!(
        "\nMedians of {rounds} rounds (load average at the end: {}); overlaps in all cells: {overlaps}\n",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| clients | keys | side | cycles/s | p50 ms | p99 ms | Txn per cycle | etcd calls per cycle | CPU µs per cycle: benchmark process / etcd members | cycles/s vs direct | p50 vs direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (li, &(c, k)) in loads.iter().enumerate() {
        let med = |si: usize, f: fn(&Row) -> f64| median(results[li][si].iter().map(f).collect());
        let direct_tput = med(2, |r| r.0);
        let direct_p50 = med(2, |r| r.1);
        for (si, side) in sides.iter().enumerate() {
            println!(
                "| {c} | {k} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} / {:.0} | {:.2}x | {:.2}x |",
                side.name(),
                med(si, |r| r.0),
                med(si, |r| r.1),
                med(si, |r| r.2),
                med(si, |r| r.3),
                med(si, |r| r.4),
                med(si, |r| r.5),
                med(si, |r| r.6),
                med(si, |r| r.0) / direct_tput,
                med(si, |r| r.1) / direct_p50,
            );
        }
    }
    ha.shutdown();
    hb.shutdown();
    ha.join()?;
    hb.join()?;
    Ok(())
}
