//! `lmx bench`: C clients, each on its own connection, doing lock → hold → unlock cycles on K
//! keys; reports throughput, lock-wait latency, fairness, and checks mutual exclusion.

use super::out::{safe, say, tell};
use super::{EXIT_FAIL, EXIT_USAGE, report};
use clap::Args;
use hdrhistogram::Histogram;
use live_mutex::{BrokerKind, Client, Error, LockOptions, Ttl};
use serde_json::json;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Client threads, each with its own connection
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    /// Keys the cycles are spread over (client i starts on key i mod K and moves on by one key
    /// per cycle, so with K = 1 every client contends for the same key)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    keys: u32,
    /// Lock+unlock cycles in total, split evenly over the clients
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
    /// Hold each lock this long before unlocking, busy-waiting (50us, 2ms; a plain number is
    /// microseconds)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = super::duration::us)]
    hold_us: Duration,
    /// TTL of each lock (a plain number is ms) [default: the npm client's 7050 ms]
    #[arg(long, value_name = "DURATION", default_value = "7050", value_parser = super::duration::ms)]
    ttl: Duration,
    /// Key name prefix (keys are PREFIX-0 .. PREFIX-(K-1))
    #[arg(long, default_value = "lmx-bench")]
    prefix: String,
    /// Release with `unlock()` and wait for its answer, instead of dropping the guard (the
    /// default: the unlock is written without waiting, ahead of the next lock)
    #[arg(long)]
    wait_unlock: bool,
    /// Release by dropping the guard (its unlock written at once, in a write of its own)
    /// instead of carrying it in the next lock's write with `Client::lock_after` (the
    /// default). The async client always coalesces what is queued.
    #[arg(long, conflicts_with = "wait_unlock")]
    drop_release: bool,
    /// Use the async client (tokio, one current-thread runtime, one task and one connection
    /// per client) instead of a thread per client
    #[cfg(feature = "tokio")]
    #[arg(long = "async")]
    use_async: bool,
}

/// What the workers share: the keys, the overlap detector and the progress counters.
pub(super) struct Common<'a> {
    pub keys: &'a [String],
    pub inside: &'a [AtomicU32],
    pub overlaps: &'a AtomicU64,
    pub done: &'a [AtomicU64],
    pub total_done: &'a AtomicU64,
    pub first_finished: &'a AtomicBool,
    pub fairness_snapshot: &'a Mutex<Option<Vec<u64>>>,
    pub opts: &'a LockOptions,
    pub hold: Duration,
    pub wait_unlock: bool,
    pub drop_release: bool,
}

impl Common<'_> {
    /// The critical section of key `k`: counts an overlap if someone else is in, and holds
    /// for `hold`.
    pub fn critical_section(&self, k: usize) {
        if self.inside[k].fetch_add(1, Ordering::AcqRel) != 0 {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        if !self.hold.is_zero() {
            let until = Instant::now() + self.hold;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        self.inside[k].fetch_sub(1, Ordering::AcqRel);
    }
    pub fn cycle_done(&self, i: usize) {
        self.done[i].fetch_add(1, Ordering::Relaxed);
        self.total_done.fetch_add(1, Ordering::Relaxed);
    }
    /// The first client to finish its share fixes the fairness snapshot.
    pub fn finished(&self) {
        if !self.first_finished.swap(true, Ordering::AcqRel) {
            let snap = self
                .done
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .collect();
            *self.fairness_snapshot.lock().unwrap() = Some(snap);
        }
    }
}

/// The quota of client `i` out of `c`.
pub(super) fn quota(ops: u64, c: usize, i: usize) -> u64 {
    ops / c as u64 + u64::from((i as u64) < ops % c as u64)
}

/// What one client saw.
pub(super) struct Outcome {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn new() -> Self {
        Outcome {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            errors: 0,
            first_error: None,
        }
    }
    pub fn fail(&mut self, what: &str, e: &Error) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {e}"));
    }
    /// A lock asked for at `t`: its wait recorded, or its failure.
    pub fn locked<G>(&mut self, r: Result<G, Error>, t: Instant) -> Result<G, Error> {
        match &r {
            Ok(_) => self
                .hist
                .saturating_record((t.elapsed().as_nanos() as u64).max(1)),
            Err(e) => self.fail("lock", e),
        }
        r
    }
    /// Pipelined releases whose answer said the lock was lost count as errors.
    pub fn lost_releases(&mut self, n: u64) {
        if n > 0 {
            self.errors += n;
            self.first_error
                .get_or_insert_with(|| "a pipelined unlock found its lock lost".into());
        }
    }
}

pub(crate) fn bench(url: &str, spawn: bool, as_json: bool, a: BenchArgs) -> i32 {
    let c = a.clients as usize;
    if spawn {
        // Start the broker if none answers; each client then connects on its own.
        if let Err(e) = super::connect(url, true) {
            return report(url, "connect", &e);
        }
    }
    if a.ops < a.clients as u64 {
        tell!("lmx bench: --ops must be at least --clients");
        return EXIT_USAGE;
    }
    let keys: Vec<String> = (0..a.keys).map(|k| format!("{}-{k}", a.prefix)).collect();
    let inside: Vec<AtomicU32> = (0..a.keys).map(|_| AtomicU32::new(0)).collect();
    let overlaps = AtomicU64::new(0);
    let done: Vec<AtomicU64> = (0..c).map(|_| AtomicU64::new(0)).collect();
    let total_done = AtomicU64::new(0);
    let first_finished = AtomicBool::new(false);
    let fairness_snapshot: Mutex<Option<Vec<u64>>> = Mutex::new(None);
    let opts = LockOptions::new().ttl(Ttl::After(a.ttl));
    let common = Common {
        keys: &keys,
        inside: &inside,
        overlaps: &overlaps,
        done: &done,
        total_done: &total_done,
        first_finished: &first_finished,
        fairness_snapshot: &fairness_snapshot,
        opts: &opts,
        hold: a.hold_us,
        wait_unlock: a.wait_unlock,
        drop_release: a.drop_release,
    };
    let show_progress = !as_json && std::io::stderr().is_terminal();
    #[cfg(feature = "tokio")]
    let run = if a.use_async {
        super::bench_async::run(url, c, a.ops, &common, show_progress)
    } else {
        run_threads(url, c, a.ops, &common, show_progress)
    };
    #[cfg(not(feature = "tokio"))]
    let run = run_threads(url, c, a.ops, &common, show_progress);
    let (kind, elapsed, outcomes) = match run {
        Ok(r) => r,
        Err(e) => return report(url, "connect", &e),
    };

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    let mut errors = 0;
    let mut first_error = None;
    for o in outcomes {
        hist.add(&o.hist).expect("same bounds");
        errors += o.errors;
        first_error = first_error.or(o.first_error);
    }
    let cycles = hist.len();
    let snap = fairness_snapshot.into_inner().unwrap().unwrap_or_default();
    let snap_sum: u64 = snap.iter().sum();
    let fairness = if snap_sum == 0 {
        1.0
    } else {
        *snap.iter().min().unwrap_or(&0) as f64 / (snap_sum as f64 / c as f64)
    };
    let overlaps = overlaps.into_inner();
    let client = if cfg!(feature = "tokio") && a.async_flag() {
        "async"
    } else {
        "blocking"
    };
    let ops_per_s = cycles as f64 / elapsed.as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let broker = match kind {
        BrokerKind::Rust => "live-mutex (Rust)",
        BrokerKind::Node => "npm live-mutex 0.2.x (Node)",
    };
    if as_json {
        let v = json!({
            "url": url,
            "broker": match kind { BrokerKind::Rust => "rust", BrokerKind::Node => "node" },
            "clients": a.clients,
            "keys": a.keys,
            "ops": a.ops,
            "hold_us": a.hold_us.as_micros() as u64,
            "client": client,
            "release": if a.wait_unlock {
                "wait"
            } else if a.drop_release {
                "drop"
            } else {
                "pipelined"
            },
            "cycles": cycles,
            "elapsed_s": round(elapsed.as_secs_f64(), 4),
            "ops_per_s": round(ops_per_s, 1),
            "lock_wait_us": {
                "mean": round(hist.mean() / 1e3, 1),
                "p50": us(0.5),
                "p99": us(0.99),
                "p999": us(0.999),
                "max": hist.max() as f64 / 1e3,
            },
            "fairness": round(fairness, 4),
            "overlaps": overlaps,
            "errors": errors,
            "first_error": first_error,
        });
        say!("{v}");
    } else {
        say!(
            "{broker} at {url}: {} clients, {} keys, {cycles} cycles in {:.3} s",
            a.clients,
            a.keys,
            elapsed.as_secs_f64()
        );
        say!("  throughput   {ops_per_s:.0} lock+unlock cycles/s");
        say!(
            "  lock wait    p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
            us(0.5),
            us(0.99),
            us(0.999),
            hist.max() as f64 / 1e3
        );
        say!(
            "  fairness     {fairness:.3} (least share of any client when the first finished, 1 = equal)"
        );
        say!("  overlaps     {overlaps} (two holders of one key at once; must be 0)");
        if errors > 0 {
            say!(
                "  errors       {errors} (first: {})",
                safe(first_error.as_deref().unwrap_or("?"))
            );
        }
    }
    if overlaps > 0 || errors > 0 {
        if !as_json {
            tell!("lmx bench: FAILED ({overlaps} overlaps, {errors} errors)");
        }
        return EXIT_FAIL;
    }
    0
}

impl BenchArgs {
    fn async_flag(&self) -> bool {
        #[cfg(feature = "tokio")]
        return self.use_async;
        #[cfg(not(feature = "tokio"))]
        false
    }
}

/// A progress bar on stderr until `stop`.
pub(super) fn progress(total: u64, total_done: &AtomicU64, stop: &AtomicBool) {
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} cycles, {per_sec}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    while !stop.load(Ordering::Acquire) {
        pb.set_position(total_done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    pb.finish_and_clear();
}

type Run = (BrokerKind, Duration, Vec<Outcome>);

/// One thread and one blocking [`Client`] per client.
fn run_threads(
    url: &str,
    c: usize,
    ops: u64,
    common: &Common<'_>,
    show_progress: bool,
) -> Result<Run, Error> {
    // Connect everything first: connection set-up is not part of the measurement.
    let clients = (0..c)
        .map(|_| Client::connect(url))
        .collect::<Result<Vec<_>, _>>()?;
    let kind = clients[0].broker_kind()?;
    let start_line = Barrier::new(c + 1);
    let stop_progress = AtomicBool::new(false);
    let (elapsed, outcomes) = std::thread::scope(|s| {
        let workers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let quota = quota(ops, c, i);
                let start_line = &start_line;
                std::thread::Builder::new()
                    .name(format!("lmx-bench-{i}"))
                    .spawn_scoped(s, move || {
                        let mut o = Outcome::new();
                        // Pipelined release: the last guard's unlock rides in the next lock's
                        // write (`Client::lock_after`).
                        let mut prev = None;
                        start_line.wait();
                        for n in 0..quota {
                            let k = (i + n as usize) % common.keys.len();
                            let t = Instant::now();
                            let key = &common.keys[k];
                            let got = match prev.take() {
                                Some(g) => client.lock_after(g, key, common.opts),
                                None => client.lock_with(key, common.opts),
                            };
                            let g = match o.locked(got, t) {
                                Ok(g) => g,
                                Err(e) if e.is_connection() => break,
                                Err(_) => continue,
                            };
                            common.critical_section(k);
                            if common.wait_unlock {
                                if let Err(e) = g.unlock() {
                                    o.fail("unlock", &e);
                                }
                            } else if common.drop_release {
                                drop(g);
                            } else {
                                prev = Some(g);
                            }
                            common.cycle_done(i);
                        }
                        drop(prev);
                        common.finished();
                        o
                    })
                    .expect("spawn bench thread")
            })
            .collect();
        let progress = show_progress.then(|| {
            let stop = &stop_progress;
            s.spawn(move || progress(ops, common.total_done, stop))
        });
        start_line.wait();
        let t0 = Instant::now();
        let outcomes: Vec<Outcome> = workers
            .into_iter()
            .map(|w| w.join().expect("bench thread panicked"))
            .collect();
        let elapsed = t0.elapsed();
        stop_progress.store(true, Ordering::Release);
        if let Some(p) = progress {
            p.join().ok();
        }
        (elapsed, outcomes)
    });
    let mut outcomes = outcomes;
    for cl in &clients {
        if let Ok(n) = cl.ping().and_then(|_| cl.lost_releases()) {
            outcomes[0].lost_releases(n);
        }
    }
    // All connections stay open until every client is done: the npm broker releases every lock
    // on the broker when any client disconnects.
    drop(clients);
    Ok((kind, elapsed, outcomes))
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
