//! `--require-tls` from a peer that is not loopback (issue 25): plain TCP (NDJSON or
//! WebSocket) is refused with a clean close, TLS is served, and loopback still gets plain TCP.
//!
//! The second address comes from a network namespace of this test's own: 10.231.7.1 on that
//! namespace's `lo`, so a connection to it inside the namespace comes *from* 10.231.7.1, which
//! is not loopback. The broker (the built `lmx`) and the clients run inside it; nothing is
//! sent anywhere else. Needs root and `ip` (iproute2); skips with a message otherwise, or fails
//! when `LMX_REQUIRE_NETNS=1` (CI).

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::certs::Ca;
use common::scratch;

use common::{ip, lmx_in};
const ADDR: &str = "10.231.7.1";

/// The namespace and the broker in it; dropping it kills the broker and deletes the namespace.
struct Lab {
    ns: String,
    broker: Option<Child>,
}

impl Lab {
    fn new() -> Option<Lab> {
        let ns = format!("lmx-test-tls-{}", std::process::id());
        match ip(&["netns", "add", &ns]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => return skip(String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => return skip(&format!("cannot run `ip` (install iproute2): {e}")),
        }
        let lab = Lab { ns, broker: None };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{ADDR}/32"), "dev", "lo"],
        ] {
            let out = ip(&[&["-n", &lab.ns][..], args].concat()).expect("ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        Some(lab)
    }

    /// `lmx ARGS` inside the namespace, with `env` set.
    fn lmx(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut c = lmx_in(&self.ns, args);
        c.envs(env.iter().copied());
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(b) = &mut self.broker {
            b.kill().ok();
            b.wait().ok();
        }
        ip(&["netns", "del", &self.ns]).ok();
    }
}

fn skip(why: &str) -> Option<Lab> {
    if std::env::var("LMX_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("network namespaces are required (LMX_REQUIRE_NETNS=1) but {why}");
    }
    println!("SKIPPED require_tls_refuses_plain_tcp_from_beyond_loopback: {why}");
    None
}

#[test]
fn require_tls_refuses_plain_tcp_from_beyond_loopback() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    let dir = scratch("tls-netns");
    let ca = Ca::new(&dir, "netns");
    let server = ca.server("server", &[ADDR, "127.0.0.1"]);
    let (cert, key) = (server.cert.to_str().unwrap(), server.key.to_str().unwrap());
    let mut cmd = lab.lmx(
        &[],
        &[
            "start",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--require-tls",
        ],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lmx start");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    lab.broker = Some(child);
    let port = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "broker exited");
        if let Some(rest) = line.split("listening on tcp://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for l in err.lines().map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let ca_pem = ca.pem.to_str().unwrap();
    let ping = |env: &[(&str, &str)], url: &str| {
        let o = lab
            .lmx(env, &["--url", url, "ping"])
            .output()
            .expect("lmx ping");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        println!("lmx --url {url} ping: {}", text.trim());
        (o.status.success(), text)
    };
    // From 10.231.7.1: TLS is served (NDJSON and WebSocket inside it)...
    for url in [
        format!("tls://{ADDR}:{port}"),
        format!("wss://{ADDR}:{port}/"),
    ] {
        let (ok, text) = ping(&[("LMX_TLS_CA", ca_pem)], &url);
        assert!(ok, "{url}: {text}");
        assert!(text.contains(&format!("pong from {url}")), "{text}");
    }
    // ...plain TCP is not...
    for url in [
        format!("tcp://{ADDR}:{port}"),
        format!("ws://{ADDR}:{port}/"),
    ] {
        let (ok, text) = ping(&[], &url);
        assert!(!ok, "{url} must be refused: {text}");
    }
    // ...and its bytes get a clean close (a FIN: `cat` ends with status 0 and no output), not a
    // reset and not an answer.
    let script = format!(
        "exec 3<>/dev/tcp/{ADDR}/{port} && printf '%s\\n' '{{\"type\":\"ping\",\"uuid\":\"p\"}}' >&3 \
         && cat <&3; echo \"cat=$?\""
    );
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "bash", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    println!(
        "plain NDJSON to the TLS-only port: {:?} {:?}",
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.trim(), "cat=0", "closed cleanly, nothing answered");
    // Loopback still gets plain TCP (the npm client's way in).
    let (ok, text) = ping(&[], &format!("tcp://127.0.0.1:{port}"));
    assert!(ok, "{text}");
    drop(lab);
    let log = log.join().unwrap_or_default();
    assert!(log.contains("requires TLS"), "the refusal is logged: {log}");
}
