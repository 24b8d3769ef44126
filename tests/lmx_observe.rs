//! Issue 26 (and item 10 of issue 20): `lmx top` through the client's URL parser, plain into a
//! pipe, streaming `--json`, no panic on a closed pipe; network text escaped in `lmx info`,
//! `ls`, `ls -l` and `top`; the version in `pong`; lock events in the broker's log.

mod common;

use common::{TestBroker, scratch};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LMX, lmx, lmx_env};

use common::output_text as text;

/// `lmx ARGS | head -1` under `pipefail`: the pipeline's status is lmx's own.
fn into_head(args: &str) -> (Option<i32>, String) {
    let o = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!("timeout 20 \"$LMX\" {args} | head -1"),
        ])
        .env("LMX", LMX)
        .env_remove("LMX_URL")
        .output()
        .unwrap();
    (o.status.code(), text(&o))
}

#[test]
fn top_into_a_closed_pipe_exits_0() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let (code, out) = into_head(&format!("--url {url} top --once"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("lmx top"), "{out}");
    // Streaming: the second snapshot meets a pipe whose reader is gone.
    let (code, out) = into_head(&format!("--url {url} top --interval 200"));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let (code, out) = into_head(&format!("--url {url} --json top --interval 200ms"));
    assert_eq!(code, Some(0), "{out}");
    // Other commands too: more keys than a pipe buffers, a reader that takes one.
    let c = live_mutex::Client::connect(&url).unwrap();
    let pad = "-".repeat(40);
    let guards: Vec<_> = (0..3000)
        .map(|i| c.lock(&format!("k{i:05}{pad}")).unwrap())
        .collect();
    let (code, out) = into_head(&format!("--url {url} ls"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("k0"), "{out}");
    drop(guards);
}

#[test]
fn top_is_plain_in_a_pipe_and_streams_json() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let once = lmx(&["--url", &url, "top", "--once"]);
    assert!(once.status.success(), "{}", text(&once));
    assert!(
        !once.stdout.contains(&0x1b),
        "cursor escapes written into a pipe: {}",
        text(&once)
    );
    // --json without --once: one object per refresh, one per line.
    let mut child = Command::new(LMX)
        .args(["--url", &url, "--json", "top", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut nows = Vec::new();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "watch");
        nows.push(v["now"].as_u64().unwrap());
    }
    assert!(nows.windows(2).all(|w| w[1] > w[0]), "{nows:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Plain mode into a pipe: snapshots one after another, no cursor movement.
    let mut child = Command::new(LMX)
        .args(["--url", &url, "top", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = Vec::new();
    let t = Instant::now();
    while buf.windows(7).filter(|w| w == b"lmx top").count() < 2 {
        assert!(t.elapsed() < Duration::from_secs(10));
        let mut chunk = [0; 4096];
        let n = out.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(!buf.contains(&0x1b), "{}", String::from_utf8_lossy(&buf));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn top_takes_every_url_form_with_a_token() {
    let b = TestBroker::with(|b| b.auth_token(Some("s3cret".into())));
    let forms = [
        format!("tcp://s3cret@{}", b.addr),
        format!("tcp://{}?token=s3cret", b.addr),
        format!("ws://s3cret@{}", b.addr),
        format!("unix://{}?token=s3cret", b.uds.display()),
    ];
    for url in &forms {
        let o = lmx(&["--url", url, "top", "--once"]);
        assert!(o.status.success(), "{url}: {}", text(&o));
        assert!(text(&o).contains("lmx top"), "{url}: {}", text(&o));
    }
    let url = format!("tcp://{}", b.addr);
    let o = lmx_env(
        &["--url", &url, "top", "--once"],
        &[("LMX_AUTH_TOKEN", "s3cret")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = lmx(&["--url", &format!("tcp://wrong@{}", b.addr), "top", "--once"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("wrong auth token"), "{}", text(&o));
}

#[test]
fn network_text_is_escaped_in_human_output() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let evil = "\u{1b}[2J\u{1b}]52;c;aGFja2Vk\u{7}";
    let key = format!("key{evil}");
    let dir = scratch("esc");
    let mark = dir.0.join("held");
    let mut holder = Command::new(LMX)
        .args(["--url", &url, "run", &key, "sh", "-c"])
        .arg(format!("touch {}; exec sleep 30", mark.display()))
        .env("LMX_CLIENT_NAME", evil)
        .spawn()
        .unwrap();
    common::wait_for(&mark);
    let waiter = {
        let (url, key) = (url.clone(), key.clone());
        std::thread::spawn(move || {
            lmx_env(
                &["--url", &url, "run", "-w", "3s", &key, "true"],
                &[("LMX_CLIENT_NAME", evil)],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for args in [
        &["info", &key][..],
        &["ls"],
        &["ls", "-l"],
        &["top", "--once"],
    ] {
        let mut a = vec!["--url", url.as_str()];
        a.extend_from_slice(args);
        let o = lmx(&a);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains(['\u{1b}', '\u{7}']),
            "{args:?} printed raw control characters: {out:?}"
        );
        assert!(
            out.contains("key\\u{1b}[2J\\u{1b}]52;c;aGFja2Vk\\u{7}"),
            "{args:?}: {out}"
        );
        if args[0] != "ls" || args.len() > 1 {
            // Holder and waiter names.
            assert!(out.contains("\\u{1b}]52;c;"), "{args:?}: {out}");
        }
    }
    // --json keeps the exact text (JSON escapes it).
    let v: serde_json::Value =
        serde_json::from_slice(&lmx(&["--url", &url, "--json", "info", &key]).stdout).unwrap();
    assert_eq!(v["key"], key.as_str());
    assert_eq!(v["holders"][0]["name"], evil);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(waiter.join().unwrap().status.code(), Some(0));
    drop(dir);
}

#[test]
fn ping_says_which_version_answered() {
    let b = TestBroker::start();
    let url = format!("tcp://{}", b.addr);
    let o = lmx(&["--url", &url, "ping"]);
    assert!(
        text(&o).contains(&format!("rust broker {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&o)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&lmx(&["--url", &url, "--json", "ping"]).stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let p = live_mutex::Client::connect(&url).unwrap().ping().unwrap();
    assert_eq!(p.version.as_deref(), Some(live_mutex::VERSION));
}

/// The broker's log names who forced whose lock, which lock's TTL ran out, which locks a
/// dead connection released and who was refused an admin act, one line each.
#[test]
fn lock_events_are_logged_with_the_names_involved() {
    let dir = scratch("events");
    let sock = dir.0.join("ev.sock");
    let log = dir.0.join("broker.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = Command::new(LMX)
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--uds")
        .arg(&sock)
        .args([
            "--restrict-admin",
            "--log-level",
            "info",
            "--color",
            "never",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let tcp = format!("tcp://127.0.0.1:{port}");
    let uds = format!("unix://{}", sock.display());
    let t = Instant::now();
    while !lmx(&["--url", &tcp, "ping"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let named = |name: &str, url: &str, args: &[&str]| {
        let mut a = vec!["--url", url];
        a.extend_from_slice(args);
        lmx_env(&a, &[("LMX_CLIENT_NAME", name)])
    };
    // A forced unlock: holder-a's lock, forced by admin-b over the Unix socket.
    assert!(
        named("holder-a\u{1b}[2J", &tcp, &["acquire", "forced-key"])
            .status
            .success()
    );
    assert!(
        named("admin-b", &uds, &["release", "forced-key", "--force"])
            .status
            .success()
    );
    // Refused: a forced unlock over TCP without the token.
    assert!(
        named("holder-e", &tcp, &["acquire", "guarded-key"])
            .status
            .success()
    );
    let o = named("intruder-f", &tcp, &["release", "guarded-key", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A TTL expiry.
    assert!(
        named("holder-c", &tcp, &["acquire", "--ttl", "150ms", "ttl-key"])
            .status
            .success()
    );
    // A holder killed while it holds.
    let mark = dir.0.join("in");
    let mut victim = Command::new(LMX)
        .args(["--url", &tcp, "run", "dead-key", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 30", mark.display()))
        .env("LMX_CLIENT_NAME", "holder-d")
        .spawn()
        .unwrap();
    common::wait_for(&mark);
    victim.kill().unwrap();
    victim.wait().unwrap();
    // Every line is in once the last one is (the broker logs as it goes).
    let t = Instant::now();
    let wanted = [
        (
            "lock force-released",
            &[
                "key=\"forced-key\"",
                "holder=\"holder-a\\u{1b}[2J",
                "by=\"admin-b",
            ][..],
        ),
        (
            "force unlock refused",
            &["key=\"guarded-key\"", "by=\"intruder-f"],
        ),
        (
            "lock expired (TTL)",
            &["key=\"ttl-key\"", "holder=\"holder-c"],
        ),
        (
            "lock released: its connection closed",
            &["key=\"dead-key\"", "holder=\"holder-d"],
        ),
    ];
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if wanted.iter().all(|(what, _)| text.contains(what))
            || t.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (what, names) in wanted {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(what)).collect();
        assert_eq!(lines.len(), 1, "{what}: {lines:?}\n{text}");
        for n in names {
            assert!(lines[0].contains(n), "{what} without {n}: {}", lines[0]);
        }
        assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    }
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape reached the log:\n{text}"
    );
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    broker.wait().unwrap();
    drop(dir);
}
