//! N short-lived processes take turns on one key, four ways, in one run: through a broker
//! spawned by `connect_or_spawn` with `lmx start --daemon` (`lmx`), through one it starts from
//! the workers' own executable when no `lmx` is found (`zero-install`), through `serial_test`'s
//! `file_serial` (an `flock` on a file in `$TMPDIR`), and through a lock-file poller
//! (`O_CREAT|O_EXCL`, retry every 1 ms). Reports time per handoff and fairness.
//!
//! `cargo build --release --bin lmx && cargo run --release --example serial_handoff -- [N] [HOLD_US] [ROUNDS]`
//! (`LMX_BIN` names the lmx binary; by default the one next to this example's target dir).
//!
//! Each worker records when it asked, got and gave back the lock (wall clock, shared by all
//! processes). Handoff: from one holder's release to the next grant, counted only when the next
//! process was already waiting. Fairness: the share of pairs of processes served in the
//! opposite order from the one they asked in (0 = first come first served, 0.5 = random), and
//! the longest wait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "lmx-handoff-bench";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

static HELD: Mutex<(u128, u128)> = Mutex::new((0, 0));

fn hold() -> Duration {
    Duration::from_micros(std::env::var("HB_HOLD_US").unwrap().parse().unwrap())
}

/// The critical section `file_serial` runs (it takes a `fn()`, not a closure).
fn critical() {
    let got = now_ns();
    spin(hold());
    *HELD.lock().unwrap() = (got, now_ns());
}

/// Holds without sleeping, so the hold time is the same for every method.
fn spin(d: Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
}

fn worker(method: &str, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (asked, got, gave) = match method {
        "lmx" | "zero-install" => {
            let c = live_mutex::connect_or_spawn(&std::env::var("HB_URL")?)?;
            let asked = now_ns();
            let g = c.lock(KEY)?;
            let got = now_ns();
            spin(hold());
            let gave = now_ns();
            g.unlock()?;
            (asked, got, gave)
        }
        "file_serial" => {
            let asked = now_ns();
            serial_test::fs_serial_core(vec![KEY], None, critical);
            let (got, gave) = *HELD.lock().unwrap();
            (asked, got, gave)
        }
        "poller" => {
            let lock = dir.join("poll.lock");
            let asked = now_ns();
            loop {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock)
                {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let got = now_ns();
            spin(hold());
            let gave = now_ns();
            std::fs::remove_file(&lock)?;
            (asked, got, gave)
        }
        m => return Err(format!("unknown method {m}").into()),
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("times"))?;
    writeln!(f, "{asked} {got} {gave}")?;
    Ok(())
}

struct Figures {
    handoff_us: Vec<f64>,
    inversions: f64,
    max_wait_ms: f64,
    overlaps: usize,
}

fn analyse(text: &str) -> Figures {
    let mut t: Vec<(u128, u128, u128)> = text
        .lines()
        .map(|l| {
            let v: Vec<u128> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect();
    t.sort_by_key(|x| x.1);
    let mut handoff_us = Vec::new();
    let mut overlaps = 0;
    for w in t.windows(2) {
        if w[1].1 < w[0].2 {
            overlaps += 1;
        } else if w[1].0 < w[0].2 {
            handoff_us.push((w[1].1 - w[0].2) as f64 / 1e3);
        }
    }
    handoff_us.sort_by(f64::total_cmp);
    let (mut inv, mut pairs) = (0u64, 0u64);
    for i in 0..t.len() {
        for j in i + 1..t.len() {
            pairs += 1;
            // t is in grant order: j was served after i although it asked first.
            if t[j].0 < t[i].0 {
                inv += 1;
            }
        }
    }
    let max_wait_ms = t
        .iter()
        .map(|x| (x.1 - x.0) as f64 / 1e6)
        .fold(0.0, f64::max);
    Figures {
        handoff_us,
        inversions: inv as f64 / pairs.max(1) as f64,
        max_wait_ms,
        overlaps,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, method, dir] = &args[..]
        && role == "--worker"
    {
        return worker(method, Path::new(dir));
    }
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let hold_us: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let exe = std::env::current_exe()?;
    let lmx = match std::env::var_os("LMX_BIN") {
        Some(b) => PathBuf::from(b),
        None => exe
            .parent()
            .and_then(Path::parent)
            .ok_or("no target dir")?
            .join("lmx"),
    };
    if !lmx.is_file() {
        return Err(format!("no lmx at {} (build it, or set LMX_BIN)", lmx.display()).into());
    }
    let base = std::env::temp_dir().join(format!("lmx-handoff-{}", std::process::id()));
    println!("{n} processes, hold {hold_us} us, {rounds} rounds per method (interleaved)");
    println!(
        "{:<13} {:>6} {:>12} {:>12} {:>12} {:>11} {:>12} {:>8}",
        "method",
        "round",
        "handoff p50",
        "handoff p90",
        "handoff mean",
        "inversions",
        "max wait",
        "overlaps"
    );
    for round in 0..rounds {
        for method in ["lmx", "zero-install", "file_serial", "poller"] {
            let dir = base.join(format!("{method}-{round}"));
            std::fs::create_dir_all(dir.join("xdg"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("xdg"), std::fs::Permissions::from_mode(0o700))?;
            let url = format!("unix://{}/xdg/live-mutex/broker.sock", dir.display());
            let kids: Vec<_> = (0..n)
                .map(|_| {
                    let mut c = Command::new(&exe);
                    c.args(["--worker", method, dir.to_str().unwrap()])
                        .env("HB_HOLD_US", hold_us.to_string())
                        .env("HB_URL", &url)
                        .env("LMX_BIN", &lmx)
                        .env("LMX_IDLE_EXIT", "1")
                        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
                        .env("TMPDIR", &dir);
                    if method == "zero-install" {
                        // No lmx anywhere: the first worker starts the broker from this binary.
                        c.env_remove("LMX_BIN").env("PATH", "/usr/bin:/bin");
                    }
                    c.spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut k in kids {
                if !k.wait()?.success() {
                    return Err(format!("a {method} worker failed").into());
                }
            }
            let f = analyse(&std::fs::read_to_string(dir.join("times"))?);
            let pct = |p: f64| {
                let h = &f.handoff_us;
                h.get(((h.len() as f64 - 1.0) * p) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            let mean = f.handoff_us.iter().sum::<f64>() / f.handoff_us.len().max(1) as f64;
            println!(
                "{method:<13} {round:>6} {:>9.1} us {:>9.1} us {:>9.1} us {:>11.3} {:>9.1} ms {:>8}",
                pct(0.5),
                pct(0.9),
                mean,
                f.inversions,
                f.max_wait_ms,
                f.overlaps
            );
            if method == "lmx" || method == "zero-install" {
                // Let the spawned broker idle out (1 s) before its directory goes.
                std::thread::sleep(Duration::from_millis(1500));
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }
    std::fs::remove_dir_all(&base).ok();
    Ok(())
}
