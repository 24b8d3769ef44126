//! Issue 15: who holds a lock and since when (`lock-info`, `lmx info --json`, `lmx ls -l`),
//! `GET /metrics` parsed with a Prometheus text-format parser, the Host/Origin rules on the
//! HTTP endpoints, and the read-only `watch` message (`lmx top`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestBroker, Transport, lmx_ok};
use live_mutex::{Client, LockOptions};
use prometheus_parse::{Scrape, Value as Prom};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One HTTP/1.1 GET; the whole response (the broker closes after it).
fn get(addr: SocketAddr, path: &str, host: &str, origin: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Accept: */*\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn scrape(addr: SocketAddr) -> Scrape {
    let resp = get(addr, "/metrics", &addr.to_string(), None);
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of a counter or gauge (with this `reason` label, if given).
fn value(s: &Scrape, name: &str, reason: Option<&str>) -> f64 {
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == name && reason.is_none_or(|r| x.labels.get("reason") == Some(r)));
    match found.map(|x| &x.value) {
        Some(Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn wait_count(s: &Scrape) -> f64 {
    let h = s
        .samples
        .iter()
        .find(|x| x.metric == "lmx_lock_wait_seconds")
        .expect("histogram");
    match &h.value {
        Prom::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
        other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_move_as_clients_lock_and_unlock() {
    let b = TestBroker::start();
    let before = scrape(b.addr);
    for name in [
        "lmx_connections",
        "lmx_keys",
        "lmx_waiters",
        "lmx_expiries_total",
        "lmx_wait_timeouts_total",
        "lmx_reactor_turns_total",
    ] {
        value(&before, name, None);
    }
    // Counters carry `_total`; the histogram is in seconds.
    let docs = &before.docs;
    assert!(docs.contains_key("lmx_lock_wait_seconds"), "{docs:?}");
    let url = format!("tcp://{}", b.addr);
    let a = Client::connect(&url).unwrap();
    let c = Client::connect(&url).unwrap();
    let g = a.lock("m1").unwrap();
    assert!(c.try_lock("m1").unwrap().is_none());
    let mid = scrape(b.addr);
    assert_eq!(value(&mid, "lmx_holders", None), 1.0);
    assert_eq!(
        value(&mid, "lmx_connections", None),
        2.0 + 1.0,
        "two clients and the scrape"
    );
    g.unlock().unwrap();
    for _ in 0..5 {
        drop(a.lock("m2").unwrap());
    }
    // A request the broker cannot read.
    let mut raw = b.connect(Transport::Tcp);
    raw.send_raw("{\"type\":\"lock\",\"uuid\":7}\n");
    assert!(raw.recv()["error"].is_string());
    let after = scrape(b.addr);
    let d = |name: &str, reason: Option<&str>| {
        value(&after, name, reason) - value(&before, name, reason)
    };
    assert_eq!(d("lmx_grants_total", None), 6.0);
    assert!(
        d("lmx_unlocks_total", None) >= 1.0,
        "a release() waits for its answer"
    );
    assert_eq!(d("lmx_rejected_requests_total", Some("busy")), 1.0);
    assert_eq!(d("lmx_rejected_requests_total", Some("bad_request")), 1.0);
    assert_eq!(value(&after, "lmx_holders", None), 0.0);
    assert!(d("lmx_received_bytes_total", None) > 0.0);
    assert!(d("lmx_sent_bytes_total", None) > 0.0);
    assert!(d("lmx_connections_opened_total", None) >= 3.0);
    assert!(d("lmx_reactor_turns_total", None) > 0.0);
    assert_eq!(wait_count(&after) - wait_count(&before), 6.0);
}

/// Issue 26: which version answers, and the gauges an alert on a stuck lock needs.
#[test]
fn build_info_and_stuck_lock_gauges_move() {
    let b = TestBroker::start();
    let gauge = |s: &Scrape, name: &str, key: Option<&str>| -> Option<f64> {
        s.samples
            .iter()
            .find(|x| x.metric == name && key.is_none_or(|k| x.labels.get("key") == Some(k)))
            .map(|x| match x.value {
                Prom::Gauge(v) | Prom::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
    };
    let s0 = scrape(b.addr);
    let info = s0
        .samples
        .iter()
        .find(|x| x.metric == "lmx_build_info")
        .expect("lmx_build_info");
    assert_eq!(info.labels.get("version"), Some(live_mutex::VERSION));
    assert!(matches!(info.value, Prom::Gauge(v) if v == 1.0));
    assert_eq!(gauge(&s0, "lmx_oldest_lock_held_seconds", None), Some(0.0));
    assert_eq!(gauge(&s0, "lmx_longest_wait_seconds", None), Some(0.0));
    assert_eq!(
        gauge(&s0, "lmx_key_oldest_lock_held_seconds", Some("stuck")),
        None
    );

    let url = format!("tcp://{}", b.addr);
    let holder = Client::connect(&url).unwrap();
    let waiter = Client::connect(&url).unwrap();
    let g = holder.lock("stuck").unwrap();
    // Eight more held keys: the per-key series stay at five.
    let others: Vec<_> = (0..8)
        .map(|i| holder.lock(&format!("other{i}")).unwrap())
        .collect();
    let w = std::thread::spawn(move || waiter.lock("stuck").map(drop));
    std::thread::sleep(Duration::from_millis(300));
    let s1 = scrape(b.addr);
    let held1 = gauge(&s1, "lmx_oldest_lock_held_seconds", None).unwrap();
    let wait1 = gauge(&s1, "lmx_longest_wait_seconds", None).unwrap();
    assert!(held1 >= 0.3, "{held1}");
    assert!(wait1 >= 0.25, "{wait1}");
    assert_eq!(
        gauge(&s1, "lmx_key_oldest_lock_held_seconds", Some("stuck")),
        Some(held1)
    );
    assert_eq!(
        gauge(&s1, "lmx_key_longest_wait_seconds", Some("stuck")),
        Some(wait1)
    );
    let series = |s: &Scrape, name: &str| s.samples.iter().filter(|x| x.metric == name).count();
    assert_eq!(series(&s1, "lmx_key_oldest_lock_held_seconds"), 5);
    assert_eq!(series(&s1, "lmx_key_longest_wait_seconds"), 1);
    std::thread::sleep(Duration::from_millis(300));
    let s2 = scrape(b.addr);
    let held2 = gauge(&s2, "lmx_oldest_lock_held_seconds", None).unwrap();
    let wait2 = gauge(&s2, "lmx_longest_wait_seconds", None).unwrap();
    assert!(
        held2 >= held1 + 0.25 && wait2 >= wait1 + 0.25,
        "{held1} {held2} {wait1} {wait2}"
    );
    // Released: the waiter gets it and lets it go; nothing waits, the others are younger.
    g.unlock().unwrap();
    w.join().unwrap().unwrap();
    drop(others);
    let s3 = scrape(b.addr);
    assert_eq!(gauge(&s3, "lmx_longest_wait_seconds", None), Some(0.0));
    assert_eq!(gauge(&s3, "lmx_oldest_lock_held_seconds", None), Some(0.0));
    assert_eq!(series(&s3, "lmx_key_oldest_lock_held_seconds"), 0);
}

#[test]
fn http_endpoints_refuse_foreign_origins_and_rebinding_hosts() {
    let b = TestBroker::start();
    let me = b.addr.to_string();
    for path in ["/metrics", "/"] {
        let ok = get(b.addr, path, &me, None);
        assert_eq!(status(&ok), 200, "{path}: {ok}");
        let same = get(b.addr, path, &me, Some(&format!("http://{me}")));
        assert_eq!(status(&same), 200, "{path}, same origin: {same}");
        let foreign = get(b.addr, path, &me, Some("http://evil.example"));
        assert_eq!(status(&foreign), 403, "{path}: {foreign}");
        assert!(
            !foreign.contains("lmx_") && !foreign.contains("<html"),
            "{foreign}"
        );
        let rebinding = get(
            b.addr,
            path,
            &format!("evil.example:{}", b.addr.port()),
            None,
        );
        assert_eq!(status(&rebinding), 403, "{path}: {rebinding}");
        let null = get(b.addr, path, &me, Some("null"));
        assert_eq!(status(&null), 403, "{path}: {null}");
        for r in [&ok, &same, &foreign] {
            assert!(
                !r.to_ascii_lowercase()
                    .contains("access-control-allow-origin"),
                "{r}"
            );
        }
    }
    assert_eq!(status(&get(b.addr, "/nope", &me, None)), 404);
    let page = get(b.addr, "/", &me, None);
    assert!(
        page.contains("text/html") && page.contains("\"watch\""),
        "{page}"
    );
    // Nothing fetched from elsewhere: no external URL in the page.
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "{page}"
    );
    // A head that never ends is cut off, not buffered without bound.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut junk = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    junk.resize(9000, b'a');
    let _ = s.write_all(&junk);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"),
        "{out:?}"
    );
    // The broker is still fine.
    assert_eq!(status(&get(b.addr, "/metrics", &me, None)), 200);
}

#[test]
fn metrics_need_the_auth_token_when_the_broker_has_one() {
    let b = TestBroker::with(|b| b.auth_token(Some("s3cret".into())));
    let me = b.addr.to_string();
    assert_eq!(status(&get(b.addr, "/metrics", &me, None)), 401);
    let mut s = TcpStream::connect(b.addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {me}\r\nAuthorization: Bearer s3cret\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(status(&out), 200, "{out}");
    assert!(out.contains("lmx_grants_total"), "{out}");
}

#[test]
fn lock_info_says_who_holds_and_waits_and_since_when() {
    let b = TestBroker::start();
    let t0 = now_ms();
    let holder = Client::connect(&format!("tcp://{}", b.addr)).unwrap();
    let g = holder.lock("who").unwrap();
    let waiter = Client::connect(&format!("unix://{}", b.uds.display())).unwrap();
    let w = std::thread::spawn(move || waiter.lock_with("who", &LockOptions::new()).map(drop));
    let info = loop {
        let i = holder.info("who").unwrap();
        if !i.queue.is_empty() {
            break i;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = std::process::id();
    let h = &info.holders[0];
    let name = h.who.name.as_deref().unwrap();
    assert!(name.ends_with(&format!("[{pid}]")), "{name}");
    assert_eq!(h.who.pid, Some(u64::from(pid)));
    let peer = h.who.peer.as_deref().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    let since = h.held_since_ms.unwrap();
    assert!(
        (t0.saturating_sub(1000)..=now_ms() + 1000).contains(&since),
        "{since} vs {t0}"
    );
    let q = &info.queue[0];
    assert_eq!(
        q.who.peer.as_deref(),
        Some(&*format!("pid {pid} uid {}", unsafe { libc_getuid() })),
        "a Unix-socket peer is known by SO_PEERCRED"
    );
    assert!(q.waiting_since_ms.unwrap() >= since.saturating_sub(1000));
    drop(g);
    w.join().unwrap().unwrap();
}

unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}

#[test]
fn lmx_info_json_and_ls_long_show_the_holder() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let t0 = now_ms();
    let c = Client::connect(&url).unwrap();
    let local = {
        // The holder's own address, as the broker sees it: the only other TCP connection.
        let g = c.lock("db").unwrap();
        std::mem::forget(g);
        let i = c.info("db").unwrap();
        i.holders[0].who.peer.clone().unwrap().into_owned()
    };
    let out = lmx_ok(&["--url", &url, "--json", "info", "db"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let h = &v["holders"][0];
    assert_eq!(h["peer"], json!(local), "{v}");
    assert!(
        h["name"]
            .as_str()
            .unwrap()
            .ends_with(&format!("[{}]", std::process::id())),
        "{v}"
    );
    assert!(
        h["heldSince"].as_u64().unwrap() >= t0.saturating_sub(1000),
        "{v}"
    );
    let out = lmx_ok(&["--url", &url, "ls", "-l"]);
    assert!(out.contains("db: locked") && out.contains(&local), "{out}");
    // A lock kept after its connection closed still says who took it.
    let id = lmx_ok(&["--url", &url, "acquire", "kept"]);
    let out = lmx_ok(&["--url", &url, "--json", "info", "kept"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let h = &v["holders"][0];
    assert_eq!(h["id"], json!(id.trim()));
    assert!(h["name"].as_str().unwrap().starts_with("lmx["), "{v}");
    assert!(
        h["peer"].as_str().unwrap().ends_with("(disconnected)"),
        "{v}"
    );
}

#[test]
fn watch_pushes_snapshots_and_lmx_top_reads_them() {
    let b = TestBroker::start();
    let mut w = b.connect(Transport::Tcp);
    w.send(json!({"type":"hello","name":"watcher","pid":1}));
    w.send(json!({"type":"watch","uuid":"w1","intervalMs":200}));
    let s = w.recv();
    assert_eq!(s["type"], "watch", "{s}");
    assert_eq!(s["uuid"], "w1");
    assert_eq!(s["keys"], json!([]));
    assert!(
        s["conns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "watcher" && c["watching"] == true),
        "{s}"
    );
    let c = Client::connect(&format!("tcp://{}", b.addr)).unwrap();
    let g = c.lock("seen").unwrap();
    let held = loop {
        let s = w.recv();
        if s["keys"].as_array().is_some_and(|k| !k.is_empty()) {
            break s;
        }
    };
    let h = &held["keys"][0]["holders"][0];
    assert_eq!(held["keys"][0]["key"], "seen");
    assert_eq!(h["id"], g.id());
    assert!(
        h["name"]
            .as_str()
            .unwrap()
            .ends_with(&format!("[{}]", std::process::id()))
    );
    assert!(held["stats"]["grants"].as_u64().unwrap() >= 1);
    let out = lmx_ok(&["--url", &format!("tcp://{}", b.addr), "top", "--once"]);
    assert!(out.contains("seen") && out.contains("HELD"), "{out}");
    drop(g);
    loop {
        let s = w.recv();
        if s["keys"] == json!([]) {
            break;
        }
    }
    // A bad watch is an error, not a subscription.
    w.send(json!({"type":"watch","uuid":"w2","intervalMs":"soon"}));
    loop {
        let r = w.recv();
        if r["uuid"] == "w2" {
            assert!(r["error"].is_string(), "{r}");
            break;
        }
    }
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_client_names_its_connection_too() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = live_mutex::AsyncClient::connect(&url).await.unwrap();
        let g = c.lock("async-k").await.unwrap();
        let info = Client::connect(&url).unwrap().info("async-k").unwrap();
        let h = &info.holders[0];
        assert_eq!(&*h.id, g.id());
        let name = h.who.name.as_deref().unwrap_or("");
        assert!(
            name.ends_with(&format!("[{}]", std::process::id())),
            "{name:?}"
        );
    });
}
