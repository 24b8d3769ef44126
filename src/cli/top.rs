//! `lmx top`: the status page's view in the terminal, refreshing in place. It sends the same
//! read-only `watch` message as the page (through [`live_mutex::client::Watch`], so every URL
//! form and token the client takes works here too) and draws each snapshot the broker pushes.
//!
//! On a terminal each snapshot replaces the last; into a pipe or file each is written plainly
//! after the one before, without cursor movement; `--json` writes each snapshot as one line.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use live_mutex::client::Watch;
use serde_json::Value;

use super::out::{bold, safe, say, say_raw, tell};
use super::report;

#[derive(Args, Debug)]
pub(crate) struct TopArgs {
    /// Refresh interval (500ms, 2s; a plain number is ms; the broker allows 200 ms to 60 s)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration::ms)]
    interval: Duration,
    /// Print one snapshot and exit (with --json: the broker's snapshot as is)
    #[arg(long)]
    once: bool,
}

pub(crate) fn top(url: &str, spawn: bool, as_json: bool, a: TopArgs) -> i32 {
    if spawn {
        // Start the broker if none answers; the watch then has its own connection.
        if let Err(e) = super::connect(url, true) {
            return report(url, "connect", &e);
        }
    }
    let mut watch = match Watch::open(url, a.interval) {
        Ok(w) => w,
        Err(e) => return report(url, "top", &e),
    };
    let redraw = !as_json && std::io::stdout().is_terminal();
    let mut prev: Option<Value> = None;
    loop {
        let line = match watch.next_snapshot() {
            Ok(Some(l)) => l,
            Ok(None) => {
                tell!("lmx top: broker at {url} closed the connection");
                return super::EXIT_UNAVAILABLE;
            }
            Err(e) => return report(url, "top", &e),
        };
        if as_json {
            say!("{line}");
        } else {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                tell!("lmx top: broker at {url} sent a snapshot that is not JSON");
                return super::EXIT_SOFTWARE;
            };
            let screen = render(&v, prev.as_ref());
            if redraw {
                // Home, clear to the end: redraw in place.
                say_raw!("\x1b[H\x1b[2J{screen}");
            } else if a.once || prev.is_none() {
                say_raw!("{screen}");
            } else {
                say_raw!("\n{screen}");
            }
            prev = Some(v);
        }
        if a.once {
            return 0;
        }
    }
}

fn ago(now: u64, then: &Value) -> String {
    let Some(t) = then.as_u64() else {
        return "?".into();
    };
    let d = Duration::from_millis(now.saturating_sub(t));
    if d < Duration::from_secs(120) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn who(x: &Value) -> String {
    let name = safe(x["name"].as_str().unwrap_or("(unnamed)"));
    match x["peer"].as_str() {
        Some(p) => format!("{name} ({})", safe(p)),
        None => format!("{name} (disconnected)"),
    }
}

/// One screen: totals, the rates since the previous snapshot, held locks, queues, connections.
fn render(v: &Value, prev: Option<&Value>) -> String {
    let now = v["now"].as_u64().unwrap_or(0);
    let st = &v["stats"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mut o = format!(
        "{}  connections {}  keys {}  held {}  waiting {}  grants {}  expiries {}  \
         wait time-outs {}\n",
        bold("lmx top"),
        n(&st["connections"]),
        n(&st["keys"]),
        n(&st["holders"]),
        n(&st["waiters"]),
        n(&st["grants"]),
        n(&st["expiries"]),
        n(&st["waitTimeouts"])
    );
    if let Some(p) = prev {
        let dt = (now.saturating_sub(n(&p["now"])) as f64 / 1000.0).max(0.001);
        let grants = n(&st["grants"]).saturating_sub(n(&p["stats"]["grants"])) as f64 / dt;
        o.push_str(&format!(
            "grants/s {grants:.1}  wait p99 {}\n",
            p99(st, &p["stats"])
        ));
    }
    o.push_str("\nHELD\n");
    let keys = v["keys"].as_array().map_or(&[][..], Vec::as_slice);
    for k in keys {
        for h in k["holders"].as_array().into_iter().flatten() {
            let ttl = h["ttlRemaining"]
                .as_u64()
                .map_or("none".into(), |t| format!("{t}ms"));
            o.push_str(&format!(
                "  {:<24} {:<40} for {:<8} token {} ttl {}\n",
                safe(k["key"].as_str().unwrap_or("")),
                who(h),
                ago(now, &h["heldSince"]),
                h["fencingToken"],
                ttl
            ));
        }
    }
    o.push_str("\nWAITING\n");
    for k in keys {
        for (i, w) in k["waiters"].as_array().into_iter().flatten().enumerate() {
            o.push_str(&format!(
                "  {:<24} #{:<3} {:<40} for {}\n",
                safe(k["key"].as_str().unwrap_or("")),
                i + 1,
                who(w),
                ago(now, &w["waitingSince"])
            ));
        }
    }
    o.push_str("\nCONNECTIONS\n");
    for c in v["conns"].as_array().into_iter().flatten() {
        o.push_str(&format!("  {:<50} up {}\n", who(c), ago(now, &c["since"])));
    }
    o
}

/// The upper bound of the bucket holding the 99th percentile of the waits between two
/// snapshots, from the histogram the broker sends.
fn p99(st: &Value, prev: &Value) -> String {
    let bounds: Vec<f64> = st["waitBounds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    let now: Vec<u64> = st["waitCounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let before: Vec<u64> = prev["waitCounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let delta: Vec<u64> = now
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return "-".into();
    }
    let mut acc = 0;
    for (i, c) in delta.iter().enumerate() {
        acc += c;
        if acc as f64 >= 0.99 * total as f64 {
            return match bounds.get(i) {
                Some(b) if *b < 1.0 => format!("<= {} ms", b * 1000.0),
                Some(b) => format!("<= {b} s"),
                None => "> 60 s".into(),
            };
        }
    }
    "-".into()
}
