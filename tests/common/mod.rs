//! The one test-support module of the integration tests: brokers on port 0 and their own
//! socket paths (so tests run in parallel without meeting), the `lmx` binary run and started,
//! scratch directories removed on drop, waiting for a condition, and test clients that speak
//! the wire protocol byte by byte over each transport.
#![allow(dead_code)]

#[cfg(all(feature = "tls", target_os = "linux"))]
pub mod certs;
#[cfg(feature = "etcd")]
pub mod etcd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use live_mutex::broker::{Broker, BrokerBuilder, BrokerHandle};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
    Uds,
}

pub struct TestBroker {
    pub handle: Option<BrokerHandle>,
    pub addr: SocketAddr,
    pub uds: PathBuf,
    _dir: TempDir,
}

impl TestBroker {
    pub fn start() -> Self {
        Self::with(|b| b)
    }
    pub fn with(f: impl FnOnce(BrokerBuilder) -> BrokerBuilder) -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("lmx.sock");
        let b = Broker::builder()
            .tcp("127.0.0.1:0".parse().unwrap())
            .uds(&uds);
        let handle = f(b).bind().expect("bind").spawn().expect("spawn");
        let addr = handle.local_addr().expect("tcp addr");
        TestBroker {
            handle: Some(handle),
            addr,
            uds,
            _dir: dir,
        }
    }
    /// A broker whose TCP port the npm 0.2.25 client accepts: it refuses ports above 49151,
    /// so the broker is bound again until the OS picks one in 1025..=49151.
    pub fn for_node() -> Self {
        for _ in 0..64 {
            let b = Self::start();
            if (1025..=49151).contains(&b.addr.port()) {
                return b;
            }
        }
        panic!("the OS never picked a TCP port in 1025..=49151 for the broker");
    }
    pub fn connect(&self, t: Transport) -> Wire {
        Wire::connect(t, self.addr, &self.uds)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join().ok();
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "lmx-test-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A scratch directory, removed on drop (the tag only makes a leftover one recognisable).
pub fn scratch(tag: &str) -> TempDir {
    let d = TempDir::new();
    let p = d.0.with_file_name(format!(
        "{}-{tag}",
        d.0.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lmx-test")
    ));
    std::fs::rename(&d.0, &p).unwrap();
    std::mem::forget(d);
    TempDir(p)
}

/// A broker on 127.0.0.1 port 0, and its `tcp://` URL, for tests that use the client.
pub fn broker() -> (BrokerHandle, String) {
    let h = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let url = format!("tcp://{}", h.local_addr().unwrap());
    (h, url)
}

pub fn stop(h: BrokerHandle) {
    h.shutdown();
    h.join().unwrap();
}

/// Polls `cond` (every 5 ms) until it holds: `false` if it still does not after 10 s.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A command's stdout then stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits (up to 10 s) for a file that another process creates.
pub fn wait_for(p: &Path) {
    assert!(wait_until(|| p.exists()), "{} never appeared", p.display());
}

/// The `lmx` binary cargo built for this test run.
#[cfg(feature = "cli")]
pub const LMX: &str = env!("CARGO_BIN_EXE_lmx");

/// `lmx ARGS` with `env` set, run to its end, without the caller's own `LMX_*`/`NO_COLOR`
/// settings, which would change what it does.
#[cfg(feature = "cli")]
pub fn lmx_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(LMX);
    c.args(args);
    for k in [
        "LMX_URL",
        "LMX_SPAWN",
        "LMX_AUTH_TOKEN",
        "LMX_COLOR",
        "NO_COLOR",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run lmx")
}

/// `lmx ARGS`, run to its end, as [`lmx_env`] runs it.
#[cfg(feature = "cli")]
pub fn lmx(args: &[&str]) -> Output {
    lmx_env(args, &[])
}

/// `lmx ARGS`, which must succeed: its standard output.
#[cfg(feature = "cli")]
pub fn lmx_ok(args: &[&str]) -> String {
    let out = lmx(args);
    assert!(
        out.status.success(),
        "lmx {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lmx --url URL ARGS`, run to its end.
#[cfg(feature = "cli")]
pub fn lmx_at(url: &str, args: &[&str]) -> Output {
    lmx(&[&["--url", url][..], args].concat())
}

/// `ip ARGS` (iproute2), for the tests that build network namespaces.
pub fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new("ip").args(args).stdin(Stdio::null()).output()
}

/// `ip ARGS`, which must succeed.
pub fn ip_ok(args: &[&str]) {
    let out = ip(args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lmx ARGS` inside network namespace `ns` (`ip netns exec`), not started yet.
#[cfg(feature = "cli")]
pub fn lmx_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, LMX]).args(args);
    c.stdin(Stdio::null());
    c
}

/// `lmx start` on 127.0.0.1:`port` (a port the caller chose, so that it can start a broker
/// there again), returned once the port accepts connections.
#[cfg(feature = "cli")]
pub fn lmx_start_on(port: u16) -> Child {
    let child = Command::new(LMX)
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
        .spawn()
        .expect("lmx start");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(|| TcpStream::connect(addr).is_ok()),
        "lmx start on {addr} did not come up"
    );
    child
}

pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn set_read_timeout(&self, d: Duration) {
        match self {
            Sock::Tcp(s) => s.set_read_timeout(Some(d)).unwrap(),
            Sock::Unix(s) => s.set_read_timeout(Some(d)).unwrap(),
        }
    }
    fn try_clone(&self) -> Sock {
        match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone().unwrap()),
            Sock::Unix(s) => Sock::Unix(s.try_clone().unwrap()),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub enum Wire {
    Lines { r: BufReader<Sock>, w: Sock },
    Ws(Box<tungstenite::WebSocket<TcpStream>>),
}

pub const TIMEOUT: Duration = Duration::from_secs(5);

impl Wire {
    pub fn connect(t: Transport, addr: SocketAddr, uds: &Path) -> Wire {
        let sock = match t {
            Transport::Tcp | Transport::Ws => {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                if t == Transport::Ws {
                    let (ws, _) =
                        tungstenite::client(format!("ws://{addr}/"), s).expect("ws handshake");
                    return Wire::Ws(Box::new(ws));
                }
                Sock::Tcp(s)
            }
            Transport::Uds => {
                let s = UnixStream::connect(uds).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                Sock::Unix(s)
            }
        };
        let w = sock.try_clone();
        Wire::Lines {
            r: BufReader::new(sock),
            w,
        }
    }

    pub fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string());
    }

    /// One message, framed for the transport.
    pub fn send_raw(&mut self, s: &str) {
        match self {
            Wire::Lines { w, .. } => {
                let mut b = s.as_bytes().to_vec();
                b.push(b'\n');
                w.write_all(&b).unwrap();
            }
            Wire::Ws(ws) => ws.send(tungstenite::Message::text(s.to_string())).unwrap(),
        }
    }

    /// Raw bytes on a line transport (framing tests).
    pub fn send_bytes(&mut self, b: &[u8]) {
        if let Wire::Lines { w, .. } = self {
            w.write_all(b).unwrap();
        }
    }

    pub fn recv(&mut self) -> Value {
        self.try_recv().expect("a reply within the time-out")
    }

    /// The next message, or None when nothing arrives in time or the peer closed.
    pub fn try_recv(&mut self) -> Option<Value> {
        match self {
            Wire::Lines { r, .. } => {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(serde_json::from_str(&line).expect("reply is JSON")),
                }
            }
            Wire::Ws(ws) => loop {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        return Some(serde_json::from_str(&t).expect("reply is JSON"));
                    }
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            },
        }
    }

    /// Asserts nothing arrives for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        self.set_timeout(d);
        let got = self.try_recv();
        self.set_timeout(TIMEOUT);
        assert!(got.is_none(), "expected no message, got {got:?}");
    }

    pub fn set_timeout(&mut self, d: Duration) {
        match self {
            Wire::Lines { r, .. } => r.get_ref().set_read_timeout(d),
            Wire::Ws(ws) => ws.get_mut().set_read_timeout(Some(d)).unwrap(),
        }
    }

    pub fn lock(&mut self, key: &str, uuid: &str) -> Value {
        self.send(json!({"type":"lock","uuid":uuid,"key":key,"ttl":null}));
        self.recv()
    }

    pub fn unlock(&mut self, key: &str, lock_id: &str) -> Value {
        self.send(json!({"type":"unlock","uuid":format!("u-{lock_id}"),"key":key,"_uuid":lock_id}));
        self.recv()
    }
}

/// Sends `chunks` on a fresh TCP connection to `addr` as separate writes (50 ms apart), then
/// reads what comes back until the broker closes it (or `wait` passes without a byte).
pub fn exchange(addr: SocketAddr, chunks: &[&[u8]], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        if s.write_all(c).is_err() {
            break; // closed already
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Resident memory of this process (broker and test together), in KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// A child process killed and reaped on drop.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `lmx start ...` (its stderr piped) and returns it once it logs its TCP address, with
/// that address (`HOST:PORT`). Its log is drained from then on, so it never blocks on a full
/// pipe.
pub fn lmx_listening(cmd: &mut Command) -> (Killed, String) {
    let mut child = Killed(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lmx start"),
    );
    let mut err = BufReader::new(child.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read") > 0,
            "lmx start ended before listening"
        );
        if let Some(rest) = line.split("listening on tcp://").nth(1) {
            let addr = rest.split_whitespace().next().expect("addr").to_owned();
            std::thread::spawn(move || {
                let _ = err.read_to_end(&mut Vec::new());
            });
            return (child, addr);
        }
    }
}
