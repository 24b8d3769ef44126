//! The status page in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol (a WebSocket, spoken with tungstenite). The page must load, show a lock taken by a
//! test client with its holder's name, and drop it after the unlock; a screenshot is saved
//! under `target/`.
//!
//! Why DevTools rather than `--dump-dom`: the point is the live update over the page's own
//! WebSocket, which needs the same page observed before and after the unlock; a one-shot dump
//! cannot show a row disappearing.
//!
//! Skips (with a message) when chromium is absent, unless `LMX_REQUIRE_CHROMIUM` is set (CI).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, TestBroker, Transport};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Kills and reaps chromium however the test ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools connection: one browser WebSocket, commands to a page's session.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let m = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let v: Value = serde_json::from_str(&m).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value, by JSON.
    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Waits (up to 20 s) for `expr` to be true in the page.
    fn wait_for(&mut self, session: &str, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(session, expr) != json!(true) {
            if Instant::now() > deadline {
                let body = self.eval(session, "document.body ? document.body.innerText : ''");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, session: &str, to: &Path) {
        let r = self.call(
            Some(session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let png = base64(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap();
    }
}

/// Standard base64 (what DevTools sends screenshots in).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Starts headless chromium with DevTools on a port of its choosing; returns it and the
/// browser's DevTools WebSocket URL.
fn launch(exe: &Path, profile: &Path) -> (Browser, String) {
    let mut child = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1200,800",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let err = child.stderr.take().unwrap();
    let browser = Browser(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(Ok(url.trim().to_string()));
            }
            lines.push(line);
        }
        let _ = tx.send(Err(lines.join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(url)) => (browser, url),
        Ok(Err(log)) => panic!("chromium exited before DevTools listened:\n{log}"),
        Err(_) => panic!("chromium did not start DevTools within 60 s"),
    }
}

/// Chromium on `url`, attached over DevTools: the browser (killed on drop), the DevTools
/// client and the page's session id; `None` (the test skips) without chromium.
fn open_page(profile: &Path, url: &str) -> Option<(Browser, Cdp, String)> {
    let Some(exe) = chromium() else {
        assert!(
            std::env::var_os("LMX_REQUIRE_CHROMIUM").is_none(),
            "LMX_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!(
            "SKIPPED: chromium not installed (apt-get install chromium; CI sets LMX_REQUIRE_CHROMIUM)"
        );
        return None;
    };
    let (browser, devtools) = launch(&exe, profile);
    let addr = devtools
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("DevTools URL");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (ws, _) = tungstenite::client(devtools.as_str(), stream).expect("DevTools handshake");
    let mut cdp = Cdp { ws, next: 0 };
    let target = cdp.call(None, "Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    let s = attached["sessionId"].as_str().expect("session").to_string();
    cdp.call(Some(&s), "Page.enable", json!({}));
    cdp.call(Some(&s), "Page.navigate", json!({"url": url}));
    Some((browser, cdp, s))
}

#[test]
fn status_page_shows_a_lock_and_its_holder_live_in_chromium() {
    let b = TestBroker::start();
    let profile = TempDir::new();
    let Some((_browser, mut cdp, s)) = open_page(&profile.0, &format!("http://{}/", b.addr)) else {
        return;
    };

    // The page loads and its WebSocket goes live.
    cdp.wait_for(
        &s,
        "document.getElementById('state') !== null && document.getElementById('state').textContent === 'live' && document.querySelectorAll('#conns tbody tr').length > 0",
        "the page to load and go live",
    );

    // A test client, with a name of its own, takes a lock.
    let mut holder = b.connect(Transport::Tcp);
    holder.send(json!({"type":"hello","name":"page-test-holder","pid":4242}));
    assert_eq!(holder.lock("build/cache", "h-1")["acquired"], true);
    let row = "document.querySelector('#holders tr[data-key=\"build/cache\"]')";
    cdp.wait_for(
        &s,
        &format!("{row} !== null && {row}.getAttribute('data-holder') === 'page-test-holder' && {row}.innerText.includes('127.0.0.1:')"),
        "the lock and its holder's name to appear",
    );
    // Let a chart get a second point, then keep the evidence.
    std::thread::sleep(Duration::from_millis(1200));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..");
    let held_png = shots.join("status-page-held.png");
    cdp.screenshot(&s, &held_png);

    // The unlock: the row goes away without a reload.
    assert_eq!(holder.unlock("build/cache", "h-1")["unlocked"], true);
    cdp.wait_for(
        &s,
        &format!("{row} === null"),
        "the lock to disappear after the unlock",
    );
    cdp.screenshot(&s, &shots.join("status-page-free.png"));
    eprintln!(
        "screenshots: {}",
        held_png.canonicalize().unwrap().display()
    );
}

/// With an auth token the page is opened as `/#token=...` and its WebSocket authenticates
/// with an `auth` message (a browser cannot put an `Authorization` header on the upgrade).
#[test]
fn status_page_connects_to_a_broker_with_a_token_in_its_fragment() {
    let b = TestBroker::with(|b| b.auth_token(Some("s3cret".into())));
    let mut holder = b.connect(Transport::Tcp);
    holder.send(json!({"type":"auth","uuid":"a","token":"s3cret"}));
    assert_eq!(holder.recv()["authenticated"], true);
    assert_eq!(holder.lock("with-token", "t-1")["acquired"], true);
    let profile = TempDir::new();
    let url = format!("http://{}/#token=s3cret", b.addr);
    let Some((_browser, mut cdp, s)) = open_page(&profile.0, &url) else {
        return;
    };
    cdp.wait_for(
        &s,
        "document.querySelector('#holders tr[data-key=\"with-token\"]') !== null",
        "the lock to appear on the page of a broker with a token",
    );
}
