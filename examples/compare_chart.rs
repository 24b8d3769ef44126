//! Two helpers of `benches/compare.sh`:
//!
//! * `compare_chart lockfile --clients C --keys K --ops N --dir D`: the W1–W4 cycle with no
//!   broker, `flock(2)` on one lock file per key (the usual "lock file" way), printing one JSON
//!   line with `ops_per_s` and `overlaps` like `lmx bench --json`.
//! * `compare_chart chart RESULTS.jsonl OUT.svg`: a grouped bar chart of the median cycles/s
//!   per workload and per series (`{"series":S,"workload":W,"ops_per_s":R}` lines).

use plotters::prelude::*;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("lockfile") => lockfile(&args[1..]),
        Some("chart") if args.len() == 3 => chart(&args[1], &args[2]),
        _ => {
            eprintln!(
                "usage: compare_chart lockfile --clients C --keys K --ops N --dir D | chart IN OUT.svg"
            );
            std::process::exit(2);
        }
    }
}

fn opt(args: &[String], name: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("{name} missing"));
    args[i + 1].clone()
}

fn lockfile(args: &[String]) {
    let c: usize = opt(args, "--clients").parse().unwrap();
    let k: usize = opt(args, "--keys").parse().unwrap();
    let ops: u64 = opt(args, "--ops").parse().unwrap();
    let dir = std::path::PathBuf::from(opt(args, "--dir"));
    let inside: Vec<AtomicU32> = (0..k).map(|_| AtomicU32::new(0)).collect();
    let overlaps = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for i in 0..c {
            let (inside, overlaps, dir) = (&inside, &overlaps, &dir);
            let quota = ops / c as u64 + u64::from((i as u64) < ops % c as u64);
            s.spawn(move || {
                // Each client its own open file descriptions, as separate processes would have.
                let files: Vec<std::fs::File> = (0..k)
                    .map(|j| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(dir.join(format!("key-{j}.lock")))
                            .unwrap()
                    })
                    .collect();
                for n in 0..quota {
                    let j = (i + n as usize) % k;
                    let fd = files[j].as_raw_fd();
                    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX) }, 0);
                    if inside[j].fetch_add(1, Ordering::AcqRel) != 0 {
                        overlaps.fetch_add(1, Ordering::Relaxed);
                    }
                    inside[j].fetch_sub(1, Ordering::AcqRel);
                    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_UN) }, 0);
                }
            });
        }
    });
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{{\"ops_per_s\":{:.1},\"overlaps\":{},\"errors\":0}}",
        ops as f64 / s,
        overlaps.load(Ordering::Relaxed)
    );
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

fn chart(input: &str, out: &str) {
    let mut by: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (Some(s), Some(w), Some(r)) = (
            v["series"].as_str(),
            v["workload"].as_str(),
            v["ops_per_s"].as_f64(),
        ) else {
            continue;
        };
        by.entry((w.to_string(), s.to_string()))
            .or_default()
            .push(r);
    }
    let workloads: Vec<String> = {
        let mut w: Vec<String> = by.keys().map(|(w, _)| w.clone()).collect();
        w.dedup();
        w
    };
    let mut series: Vec<String> = by.keys().map(|(_, s)| s.clone()).collect();
    series.sort();
    series.dedup();
    let med: BTreeMap<(String, String), f64> =
        by.into_iter().map(|(k, v)| (k, median(v))).collect();
    let top = med.values().cloned().fold(0.0, f64::max) * 1.1;
    let root = SVGBackend::new(out, (900, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let n = series.len() as f64;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "lock+unlock cycles/s per workload (median, one run)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..workloads.len() as f64, 0f64..top)
        .unwrap();
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                workloads.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("cycles/s")
        .draw()
        .unwrap();
    for (si, s) in series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let bars = workloads.iter().enumerate().filter_map(|(wi, w)| {
            let v = *med.get(&(w.clone(), s.clone()))?;
            let x0 = wi as f64 + 0.1 + 0.8 * si as f64 / n;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + 0.8 / n, v)],
                color.filled(),
            ))
        });
        ch.draw_series(bars)
            .unwrap()
            .label(s.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
