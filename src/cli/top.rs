//! `lmx top`: the status page's view in the terminal, refreshing in place. It sends the same
//! read-only `watch` message as the page and draws each snapshot the broker pushes.
//!
//! It speaks NDJSON over its own socket (tcp:// or unix://) rather than through `Client`: a
//! watch is a stream of pushed snapshots, not a request with one answer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::{EXIT_UNAVAILABLE, EXIT_USAGE};

#[derive(Args, Debug)]
pub(crate) struct TopArgs {
    /// Refresh interval in ms (the broker allows 200 to 60000)
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval: u64,
    /// Print one snapshot and exit (with --json: the broker's snapshot as is)
    #[arg(long)]
    once: bool,
}

pub(crate) fn top(url: &str, as_json: bool, a: TopArgs) -> i32 {
    let (stream, token) = match open(url) {
        Ok(s) => s,
        Err((code, e)) => {
            eprintln!("lmx top: {e}");
            return code;
        }
    };
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("lmx top: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let mut hello = String::new();
    if let Some(t) = token {
        hello.push_str(&json!({"type":"auth","uuid":"top-auth","token":t}).to_string());
        hello.push('\n');
    }
    let name = format!("lmx top[{}]", std::process::id());
    hello.push_str(&json!({"type":"hello","name":name,"pid":std::process::id()}).to_string());
    hello.push('\n');
    hello.push_str(&json!({"type":"watch","uuid":"top","intervalMs":a.interval}).to_string());
    hello.push('\n');
    if let Err(e) = w.write_all(hello.as_bytes()) {
        eprintln!("lmx top: broker at {url}: {e}");
        return EXIT_UNAVAILABLE;
    }
    let mut prev: Option<Value> = None;
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lmx top: broker at {url}: {e}");
                return EXIT_UNAVAILABLE;
            }
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("watch") => {}
            _ if v.get("error").is_some() => {
                eprintln!("lmx top: broker at {url}: {}", v["error"]);
                return super::EXIT_FAIL;
            }
            _ => continue,
        }
        if a.once {
            if as_json {
                println!("{v}");
            } else {
                print!("{}", render(&v, None));
            }
            return 0;
        }
        // Home, clear to the end: redraw in place.
        print!("\x1b[H\x1b[2J{}", render(&v, prev.as_ref()));
        let _ = std::io::stdout().flush();
        prev = Some(v);
    }
    eprintln!("lmx top: broker at {url} closed the connection");
    EXIT_UNAVAILABLE
}

type Opened = (Box<dyn ReadWrite>, Option<String>);

trait ReadWrite: std::io::Read + Write + Send {
    fn try_clone(&self) -> std::io::Result<Box<dyn ReadWrite>>;
}
impl ReadWrite for TcpStream {
    fn try_clone(&self) -> std::io::Result<Box<dyn ReadWrite>> {
        Ok(Box::new(TcpStream::try_clone(self)?))
    }
}
impl ReadWrite for UnixStream {
    fn try_clone(&self) -> std::io::Result<Box<dyn ReadWrite>> {
        Ok(Box::new(UnixStream::try_clone(self)?))
    }
}

/// Connects to a `tcp://HOST:PORT` or `unix:///PATH` URL; the token comes from `?token=` or
/// `LMX_AUTH_TOKEN`.
fn open(url: &str) -> Result<Opened, (i32, String)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
        .or_else(|| {
            std::env::var("LMX_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
    let unavailable = |e: std::io::Error| (EXIT_UNAVAILABLE, format!("broker at {url}: {e}"));
    let s: Box<dyn ReadWrite> = if let Some(path) = base.strip_prefix("unix://") {
        Box::new(UnixStream::connect(path).map_err(unavailable)?)
    } else if let Some(addr) = base.strip_prefix("tcp://") {
        let s = TcpStream::connect(addr.trim_end_matches('/')).map_err(unavailable)?;
        s.set_nodelay(true).ok();
        Box::new(s)
    } else {
        return Err((
            EXIT_USAGE,
            format!("{url}: lmx top needs a tcp:// or unix:// URL"),
        ));
    };
    Ok((s, token))
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
    let name = x["name"].as_str().unwrap_or("(unnamed)");
    match x["peer"].as_str() {
        Some(p) => format!("{name} ({p})"),
        None => format!("{name} (disconnected)"),
    }
}

/// One screen: totals, the rates since the previous snapshot, held locks, queues, connections.
fn render(v: &Value, prev: Option<&Value>) -> String {
    let now = v["now"].as_u64().unwrap_or(0);
    let st = &v["stats"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mut o = format!(
        "lmx top  connections {}  keys {}  held {}  waiting {}  grants {}  expiries {}  \
         wait time-outs {}\n",
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
                k["key"].as_str().unwrap_or(""),
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
                k["key"].as_str().unwrap_or(""),
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
