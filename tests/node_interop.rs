//! Interop: the published npm `live-mutex@0.2.25` Node client against our broker.
//!
//! Each `#[test]` starts its own broker (127.0.0.1, a free port, plus a Unix socket in a temp dir) and
//! runs one scenario script from `tests/node/*.js` against it with `node`. A script exits 0 on pass and
//! non-zero with a `FAIL <scenario>: <reason>` line otherwise; it also stops itself (hard timeout).
//!
//! Requirements and knobs:
//! - `node` and `npm` on PATH. Missing: the tests print a note and pass as skipped, unless
//!   `LMX_REQUIRE_NODE=1`, which makes a missing toolchain (or a failed install) a failure.
//! - `live-mutex@0.2.25` is installed once with `npm install --prefix` into a cache outside the source
//!   tree: `$LMX_NODE_CACHE`, else `$HOME/.cache/live-mutex-tests/node-0.2.25`. The install goes to a
//!   temp dir next to it and is renamed into place, so parallel test processes never see a partial one.
//! - Our broker runs embedded in the test process (`live_mutex::broker::Broker`), one per test.
//! - `LMX_INTEROP_BROKER=node` runs the scenarios against the npm 0.2.25 *Node* broker instead of ours
//!   (for comparison: the scenarios that probe 0.2.25's bugs fail there, by design).

mod common;

use common::TempDir;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LIVE_MUTEX_VERSION: &str = "0.2.25";
/// Upper bound on one scenario, on top of the script's own hard timeout.
const SCRIPT_KILL_AFTER: Duration = Duration::from_secs(90);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scripts_dir() -> PathBuf {
    manifest_dir().join("tests").join("node")
}

fn require_node() -> bool {
    std::env::var("LMX_REQUIRE_NODE").is_ok_and(|v| v == "1")
}

fn tool_works(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Some(node_modules)` when the suite can run; `None` when it must be skipped (message printed).
/// Panics when `LMX_REQUIRE_NODE=1` and the toolchain or the install is missing.
fn node_modules() -> Option<PathBuf> {
    static SETUP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let res = SETUP.get_or_init(|| {
        for tool in ["node", "npm"] {
            if !tool_works(tool) {
                return Err(format!("`{tool} --version` did not run"));
            }
        }
        install_live_mutex()
    });
    match res {
        Ok(p) => Some(p.clone()),
        Err(e) if require_node() => panic!("node interop: {e} (LMX_REQUIRE_NODE=1)"),
        Err(e) => {
            // once per process, written past the test harness's output capture so it shows up
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "node interop: SKIPPED: {e}; set LMX_REQUIRE_NODE=1 to make this a failure"
                );
            });
            None
        }
    }
}

fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LMX_NODE_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(".cache")
        .join("live-mutex-tests")
        .join(format!("node-{LIVE_MUTEX_VERSION}"))
}

/// The cache is usable when the install finished (marker) and the package resolves.
fn cache_is_complete(dir: &Path) -> bool {
    let pkg = dir.join("node_modules/live-mutex/package.json");
    dir.join(".lmx-install-complete").is_file()
        && std::fs::read_to_string(pkg)
            .is_ok_and(|s| s.contains(&format!("\"version\": \"{LIVE_MUTEX_VERSION}\"")))
}

fn unique_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn install_live_mutex() -> Result<PathBuf, String> {
    let dir = cache_dir();
    if !cache_is_complete(&dir) {
        let parent = dir
            .parent()
            .ok_or_else(|| format!("bad cache dir {}", dir.display()))?;
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let tmp = parent.join(format!(".install-{}", unique_suffix()));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let out = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&tmp)
            .args([
                "--no-audit",
                "--no-fund",
                "--ignore-scripts", // its postinstall writes to $HOME and may curl
                "--loglevel=error",
                &format!("live-mutex@{LIVE_MUTEX_VERSION}"),
            ])
            .env("npm_config_update_notifier", "false")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "`npm install --prefix {} live-mutex@{LIVE_MUTEX_VERSION}` failed ({}):\n{}{}",
                tmp.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(tmp.join(".lmx-install-complete"), LIVE_MUTEX_VERSION)
            .map_err(|e| format!("cannot write install marker: {e}"))?;
        if dir.exists() && !cache_is_complete(&dir) {
            // a stale, partial cache from an older run: move it aside (atomic), then remove it
            let stale = parent.join(format!(".stale-{}", unique_suffix()));
            if std::fs::rename(&dir, &stale).is_ok() {
                let _ = std::fs::remove_dir_all(&stale);
            }
        }
        // Atomic publish; if another process won the race, its copy is as good as ours.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if !cache_is_complete(&dir) {
            return Err(format!("install into {} did not complete", dir.display()));
        }
    }
    let nm = dir.join("node_modules");
    let check = Command::new("node")
        .args(["-e", "require('live-mutex'); process.stdout.write(require('live-mutex/package.json').version)"])
        .env("NODE_PATH", &nm)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !check.status.success() || check.stdout != LIVE_MUTEX_VERSION.as_bytes() {
        return Err(format!(
            "live-mutex in {} does not load: {}",
            nm.display(),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    Ok(nm)
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Uds,
}

/// A running broker for one scenario: a TCP port usable by the 0.2.25 client (1025..=49151) and a
/// Unix socket path. Stopped on drop.
struct TestBroker {
    port: u16,
    uds: PathBuf,
    kind: &'static str,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// The one place that decides which broker the scenarios talk to.
fn scenario_broker(tmp: &Path) -> TestBroker {
    match std::env::var("LMX_INTEROP_BROKER").as_deref() {
        Ok("node") => start_node_broker(tmp),
        _ => our_broker(),
    }
}

/// Our broker, embedded (`common::TestBroker::for_node`: a TCP port the 0.2.25 client accepts,
/// and a Unix socket in a directory of its own).
fn our_broker() -> TestBroker {
    let b = common::TestBroker::for_node();
    TestBroker {
        port: b.addr.port(),
        uds: b.uds.clone(),
        kind: "our broker (embedded)",
        stop: Some(Box::new(move || drop(b))),
    }
}

/// Starts `tests/node/node_broker.js` (the npm 0.2.25 Node broker) with `extra` arguments and
/// returns it with its `LISTENING ...` line. Its stdin is a pipe: it also exits when we die.
fn spawn_node_broker(nm: &Path, extra: &[OsString]) -> (Child, String) {
    let mut child = Command::new("node")
        .arg(scripts_dir().join("node_broker.js"))
        .args(extra)
        .env("NODE_PATH", nm)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node broker");
    let mut out = child.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match out.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node broker exited before listening");
            }
        }
    }
    (child, String::from_utf8_lossy(&line).into_owned())
}

fn listening_port(line: &str) -> u16 {
    line.trim()
        .strip_prefix("LISTENING {\"port\":")
        .and_then(|s| s.strip_suffix('}'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected node broker output {line:?}"))
}

/// The npm 0.2.25 Node broker (`tests/node/node_broker.js`), one process per transport.
fn start_node_broker(tmp: &Path) -> TestBroker {
    let nm = node_modules().expect("node_modules");
    let uds = tmp.join("broker.sock");
    let (tcp_child, line) = spawn_node_broker(&nm, &[]);
    let port = listening_port(&line);
    let (uds_child, _) = spawn_node_broker(&nm, &["--uds".into(), uds.clone().into()]);
    let mut children = vec![tcp_child, uds_child];
    TestBroker {
        port,
        uds,
        kind: "npm live-mutex 0.2.25 Node broker",
        stop: Some(Box::new(move || {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
        })),
    }
}

fn wait_reachable(b: &TestBroker, t: Transport) {
    let reachable = || match t {
        Transport::Tcp => TcpStream::connect(("127.0.0.1", b.port)).is_ok(),
        Transport::Uds => std::os::unix::net::UnixStream::connect(&b.uds).is_ok(),
    };
    assert!(
        common::wait_until(reachable),
        "{} not reachable over {t:?}",
        b.kind
    );
}

/// Runs `tests/node/<script>.js` against a fresh broker; panics with the script's output on failure.
fn run_scenario(script: &str, transport: Transport) {
    let Some(nm) = node_modules() else { return };
    let tmp = TempDir::new();
    let broker = scenario_broker(&tmp.0);
    wait_reachable(&broker, transport);

    let mut cmd = Command::new("node");
    cmd.arg(scripts_dir().join(format!("{script}.js")))
        .env("NODE_PATH", &nm)
        .env("LMX_TMPDIR", &tmp.0)
        .env_remove("LMX_PORT")
        .env_remove("LMX_HOST")
        .env_remove("LMX_UDS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match transport {
        Transport::Tcp => {
            cmd.env("LMX_HOST", "127.0.0.1")
                .env("LMX_PORT", broker.port.to_string());
        }
        Transport::Uds => {
            cmd.env("LMX_UDS", &broker.uds);
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn node scenario");
    // drain the pipes on threads so a chatty script cannot block on a full pipe
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait scenario") {
            break Some(st);
        }
        if started.elapsed() > SCRIPT_KILL_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let kind = broker.kind;
    drop(broker);
    let summary = format!(
        "scenario {script} over {transport:?} against {kind} ({:.1}s)\n--- stdout\n{stdout}--- stderr\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(st) if st.success() => println!("{summary}"),
        Some(st) => panic!("FAILED ({st}): {summary}"),
        None => panic!("KILLED after {SCRIPT_KILL_AFTER:?}: {summary}"),
    }
}

macro_rules! scenarios {
    ($($name:ident => ($script:literal, $transport:ident);)*) => {
        $(
            #[test]
            fn $name() {
                run_scenario($script, Transport::$transport);
            }
        )*
    };
}

scenarios! {
    api_basic => ("api_basic", Tcp);
    contention => ("contention", Tcp);
    unlock_wrong_id => ("unlock_wrong_id", Tcp);
    semaphore => ("semaphore", Tcp);
    child_processes => ("child_processes", Tcp);
    request_timeout_retries => ("request_timeout_retries", Tcp);
    wait_false_no_ghost => ("wait_false_no_ghost", Tcp);
    stall_handoff => ("stall_handoff", Tcp);
    ttl_expiry => ("ttl_expiry", Tcp);
    unrelated_disconnect => ("unrelated_disconnect", Tcp);
    holder_disconnect => ("holder_disconnect", Tcp);
    uds_api_basic => ("api_basic", Uds);
    uds_contention => ("contention", Uds);
    uds_semaphore => ("semaphore", Uds);
    rw_lock => ("rw_lock", Tcp);
    ls_lock_info => ("ls_lock_info", Tcp);
    version_handshake => ("version_handshake", Tcp);
    keep_locks_constructor => ("keep_locks_constructor", Tcp);
}

// ---------------------------------------------------------------------------------------------
// The other direction: our Rust client (`live_mutex::Client`) against the REAL npm 0.2.25 Node
// broker. Each test starts its own Node broker process (a free port in 1025..=49151, or a Unix
// socket) and kills it at the end.
//
// Two known bugs of that broker shape these tests: any client disconnecting force-releases EVERY
// lock on the broker, and a lock without a TTL expires after 5 s. So every client of a phase stays
// connected until the phase is over, and every lock names an explicit, long TTL.

mod rust_client_on_node_broker {
    use super::*;
    use live_mutex::{BrokerKind, Client, Error, LockOptions};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Longer than any phase, so the Node broker's TTL never ends a lock under a test.
    const TTL: Duration = Duration::from_secs(60);

    fn opts() -> LockOptions {
        LockOptions::new().ttl(TTL)
    }

    /// One Node broker process; killed on drop.
    struct NodeBroker {
        child: Child,
        url: String,
        _tmp: TempDir,
    }

    impl Drop for NodeBroker {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `None` (skipped, message printed by `node_modules`) without node/npm.
    fn node_broker(transport: Transport) -> Option<NodeBroker> {
        let nm = node_modules()?;
        let tmp = TempDir::new();
        let (child, url) = match transport {
            Transport::Tcp => {
                let (child, line) = spawn_node_broker(&nm, &[]);
                (child, format!("tcp://127.0.0.1:{}", listening_port(&line)))
            }
            Transport::Uds => {
                let uds = tmp.0.join("node.sock");
                let (child, _) = spawn_node_broker(&nm, &["--uds".into(), uds.clone().into()]);
                (child, format!("unix://{}", uds.display()))
            }
        };
        Some(NodeBroker {
            child,
            url,
            _tmp: tmp,
        })
    }

    fn client(b: &NodeBroker) -> Client {
        let c = Client::connect(&b.url).unwrap_or_else(|e| panic!("connect {}: {e}", b.url));
        assert_eq!(
            c.broker_kind().expect("broker kind"),
            BrokerKind::Node,
            "the client did not detect the npm broker"
        );
        c
    }

    fn lock_unlock(t: Transport) {
        let Some(b) = node_broker(t) else { return };
        let c = client(&b);
        let g = c.lock_with("lu", &opts()).expect("lock");
        assert_eq!(g.key(), "lu");
        assert!(!g.is_lost());
        assert_eq!(
            g.fencing_token(),
            None,
            "the npm broker has no fencing tokens"
        );
        assert!(c.try_lock("lu").expect("try_lock").is_none(), "held twice");
        g.unlock().expect("unlock");
        // released: free again at once
        let g = c
            .lock_with("lu", &opts().try_only())
            .expect("free after unlock");
        g.unlock().expect("second unlock");
        // and a guard that is dropped releases too
        drop(c.lock_with("lu", &opts()).expect("third lock"));
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(g) = c.try_lock("lu").expect("try_lock") {
                g.unlock().expect("unlock");
                break;
            }
            assert!(Instant::now() < deadline, "a dropped guard did not release");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lock_and_unlock_tcp() {
        lock_unlock(Transport::Tcp);
    }

    #[test]
    fn lock_and_unlock_uds() {
        lock_unlock(Transport::Uds);
    }

    /// B waits while A holds the key and is granted only after A unlocks (a pushed grant, which
    /// the client acknowledges with `lock-received`).
    #[test]
    fn contention_second_client_granted_after_first_unlocks() {
        let Some(b) = node_broker(Transport::Tcp) else {
            return;
        };
        let (ca, cb) = (client(&b), client(&b));
        let ga = ca.lock_with("ct", &opts()).expect("A locks");
        let granted = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (cb, granted) = (cb.clone(), granted.clone());
            std::thread::spawn(move || {
                let g = cb.lock_with("ct", &opts()).expect("B locks");
                granted.store(true, Ordering::SeqCst);
                (Instant::now(), g)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !granted.load(Ordering::SeqCst),
            "B was granted while A held the key"
        );
        let released = Instant::now();
        ga.unlock().expect("A unlocks");
        let (at, gb) = waiter.join().expect("B's thread");
        assert!(at >= released, "B was granted before A unlocked");
        let after = at - released;
        println!("B granted {after:?} after A's unlock");
        assert!(
            after < Duration::from_secs(2),
            "B granted only {after:?} after A unlocked"
        );
        // B really holds it: A cannot take it now, and can once B unlocks.
        assert!(ca.try_lock("ct").expect("try_lock").is_none());
        // Against the npm broker a try-lock is queued and then cancelled by a second message;
        // an unlock racing that cancel (other socket) grants it, and the client hands it back.
        std::thread::sleep(Duration::from_millis(50));
        gb.unlock().expect("B unlocks");
        std::thread::sleep(Duration::from_millis(50));
        ca.lock_with("ct", &opts().try_only())
            .expect("A relocks")
            .unlock()
            .expect("A unlocks again");
    }

    /// A try-lock on a held key fails at once and leaves nothing queued: when the holder unlocks,
    /// the key is free (no ghost grant to the client that gave up).
    #[test]
    fn try_lock_on_a_held_key() {
        let Some(b) = node_broker(Transport::Tcp) else {
            return;
        };
        let (ca, cb) = (client(&b), client(&b));
        let ga = ca.lock_with("tl", &opts()).expect("A locks");
        for _ in 0..3 {
            let t0 = Instant::now();
            assert!(
                cb.lock_with("tl", &opts().try_only())
                    .is_err_and(|e| matches!(e, Error::Busy)),
                "B's try-lock on a held key did not fail"
            );
            assert!(t0.elapsed() < Duration::from_secs(1), "try-lock waited");
        }
        std::thread::sleep(Duration::from_millis(50));
        ga.unlock().expect("A unlocks");
        std::thread::sleep(Duration::from_millis(100));
        let g = cb
            .lock_with("tl", &opts().try_only())
            .expect("the key was not free after A unlocked: a given-up try-lock stayed queued");
        g.unlock().expect("B unlocks");
    }

    /// A wait time-out: the lock is refused after about the time-out, and the abandoned request
    /// does not get the key later.
    #[test]
    fn wait_timeout() {
        let Some(b) = node_broker(Transport::Tcp) else {
            return;
        };
        let (ca, cb) = (client(&b), client(&b));
        let ga = ca.lock_with("wt", &opts()).expect("A locks");
        let t0 = Instant::now();
        let r = cb.lock_with("wt", &opts().timeout(Duration::from_millis(300)));
        let waited = t0.elapsed();
        assert!(
            matches!(r, Err(Error::WaitTimedOut)),
            "expected a time-out, got {:?}",
            r.map(|g| g.id().to_string())
        );
        println!("timed out after {waited:?}");
        assert!(
            waited >= Duration::from_millis(280) && waited < Duration::from_secs(2),
            "timed out after {waited:?}, asked for 300 ms"
        );
        std::thread::sleep(Duration::from_millis(50));
        ga.unlock().expect("A unlocks");
        std::thread::sleep(Duration::from_millis(100));
        let g = cb
            .lock_with("wt", &opts().try_only())
            .expect("the key was not free after A unlocked: the timed-out request got it");
        g.unlock().expect("B unlocks");
    }

    /// Mutual exclusion: 4 threads, each with its own client connection, do 40 unsynchronised
    /// read-modify-write steps on a shared counter under the lock.
    #[test]
    fn shared_counter_mutual_exclusion() {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 40;
        let Some(b) = node_broker(Transport::Tcp) else {
            return;
        };
        // All connected before the first lock and kept until every thread is done (a
        // disconnect would release every lock on the npm broker).
        let clients: Vec<Client> = (0..THREADS).map(|_| client(&b)).collect();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let inside = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let threads: Vec<_> = clients
            .iter()
            .cloned()
            .map(|c| {
                let (counter, inside, overlaps) =
                    (counter.clone(), inside.clone(), overlaps.clone());
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        let g = c.lock_with("counter", &opts()).expect("lock");
                        if inside.swap(true, Ordering::SeqCst) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        let v = counter.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        counter.store(v + 1, Ordering::SeqCst);
                        inside.store(false, Ordering::SeqCst);
                        g.unlock().expect("unlock");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        println!(
            "{} lock/unlock cycles from {THREADS} connections in {:?}",
            THREADS as u64 * ROUNDS,
            t0.elapsed()
        );
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
        assert_eq!(counter.load(Ordering::SeqCst), THREADS as u64 * ROUNDS);
        drop(clients);
    }
}
