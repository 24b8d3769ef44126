//! `connect_or_spawn`, `lmx start --daemon` and `lmx --spawn` with many short-lived processes.
//!
//! The processes are this test binary run again with `LMX_SPAWN_TEST_WORKER` set (see
//! [`worker_entry`]). Every test runs in its own sandbox directory as `XDG_RUNTIME_DIR`, with a
//! 2 s idle exit, and kills whatever broker carries its sandbox in its environment when done.

mod common;

use live_mutex::Client;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = "LMX_SPAWN_TEST_WORKER";
use common::LMX;

/// A private runtime directory and everything spawned under it.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("spawn-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("xdg")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("xdg"), std::fs::Permissions::from_mode(0o700)).unwrap();
        Sandbox { dir }
    }
    fn xdg(&self) -> PathBuf {
        self.dir.join("xdg")
    }
    fn default_url(&self) -> String {
        format!("unix://{}/live-mutex/broker.sock", self.xdg().display())
    }
    /// A command whose environment points spawns into this sandbox (and nowhere else).
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.xdg())
            .env("LMX_BIN", LMX)
            .env("LMX_IDLE_EXIT", "2")
            .env("LMX_SANDBOX", &self.dir)
            .env_remove("LMX_URL")
            .env_remove("LMX_SPAWN")
            .env_remove("LMX_AUTH_TOKEN")
            .env_remove("live_mutex_host")
            .env_remove("live_mutex_port");
        c
    }
    /// This test binary as a worker: `mode` and its settings go in the environment.
    fn worker(&self, mode: &str, url: &str, log: &Path) -> Command {
        let mut c = self.cmd(std::env::current_exe().unwrap());
        c.args(["worker_entry", "--exact", "--nocapture", "--quiet"])
            .env(WORKER, mode)
            .env("LMX_TEST_URL", url)
            .env("LMX_TEST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
    /// Live brokers started under this sandbox (found by the environment they inherited).
    fn brokers(&self) -> Vec<i32> {
        let needle = format!("LMX_SANDBOX={}", self.dir.display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let has = |hay: &[u8], n: &[u8]| hay.split(|&b| b == 0).any(|w| w == n);
            let daemon = has(&cmdline, b"--daemon") || has(&cmdline, b"--live-mutex-broker");
            if daemon && has(&environ, needle.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }
    /// Waits (bounded) until no broker of this sandbox is left.
    fn wait_no_brokers(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.brokers().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.brokers() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The same, with no `lmx` to run: no `LMX_BIN`, and a `PATH` without it.
fn without_lmx(mut c: Command) -> Command {
    c.env_remove("LMX_BIN").env("PATH", "/usr/bin:/bin");
    c
}

/// Not a test on its own: the body of the worker processes.
#[test]
fn worker_entry() {
    let Ok(mode) = std::env::var(WORKER) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let url = match var("LMX_TEST_URL").as_str() {
        "default" => live_mutex::client::spawn_url_from_env().unwrap(),
        u => u.to_string(),
    };
    let log = PathBuf::from(var("LMX_TEST_LOG"));
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    };
    let client = match live_mutex::connect_or_spawn(&url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect_or_spawn: {e}");
            std::process::exit(3);
        }
    };
    let guard = client.lock("db").unwrap();
    if mode == "hold" {
        append("holding".into());
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    // The critical section, checked through a marker file only one process may create.
    let marker = log.with_extension("inside");
    let me = std::process::id();
    let inside = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker);
    if inside.is_err() {
        append(format!("OVERLAP {me}"));
    }
    std::thread::sleep(Duration::from_millis(25));
    if inside.is_ok() {
        std::fs::remove_file(&marker).unwrap();
    }
    append(format!("ok {me} {}", guard.fencing_token().unwrap_or(0)));
    guard.unlock().unwrap();
}

fn finish(kids: Vec<Child>) -> Vec<Output> {
    kids.into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect()
}

/// Runs `n` cycle workers (`gap` apart) against `url`; asserts 0 errors and 0 overlaps.
fn many(sb: &Sandbox, url: &str, n: usize, gap: Duration) {
    let log = sb.dir.join("cs.log");
    let mut kids = Vec::new();
    for _ in 0..n {
        kids.push(sb.worker("cycle", url, &log).spawn().unwrap());
        std::thread::sleep(gap);
    }
    let failed: Vec<String> = finish(kids)
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} workers failed: {failed:#?}",
        failed.len()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("OVERLAP").count(), 0, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), n);
    // One broker handed out every grant: fencing tokens rise in grant order.
    let tokens: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(2)?.parse().ok())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// After the workers: exactly one broker, alive after its spawner exited, that exits by itself
/// once idle.
fn one_broker_that_idles_out(sb: &Sandbox, url: &str) {
    assert_eq!(sb.brokers().len(), 1, "brokers: {:?}", sb.brokers());
    Client::connect(url).unwrap().ping().unwrap();
    assert!(
        sb.wait_no_brokers(Duration::from_secs(30)),
        "broker did not exit after its idle time"
    );
}

#[test]
fn forty_processes_10ms_apart_on_the_per_user_socket() {
    let sb = Sandbox::new("uds");
    many(&sb, "default", 40, Duration::from_millis(10));
    let url = sb.default_url();
    one_broker_that_idles_out(&sb, &url);
    let sock = sb.xdg().join("live-mutex/broker.sock");
    assert!(!sock.exists(), "the idle broker left its socket behind");
}

#[test]
fn twenty_four_processes_at_once_on_loopback_tcp() {
    let sb = Sandbox::new("tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    many(&sb, &url, 24, Duration::ZERO);
    one_broker_that_idles_out(&sb, &url);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // The spawn lock of a TCP address lives in the per-user directory.
    let lock = sb
        .xdg()
        .join(format!("live-mutex/tcp-127.0.0.1-{port}.spawn.lock"));
    assert!(lock.exists());
}

#[test]
fn kill_9_of_the_spawning_holder_loses_nothing() {
    let sb = Sandbox::new("kill");
    let url = sb.default_url();
    let log = sb.dir.join("cs.log");
    let mut holder = sb.worker("hold", "default", &log).spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("holding")) {
        assert!(Instant::now() < end, "the holder never got the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sb.brokers().len(), 1, "the holder spawned the broker");
    let waiters: Vec<Child> = (0..8)
        .map(|_| sb.worker("cycle", "default", &log).spawn().unwrap())
        .collect();
    let probe = Client::connect(&url).unwrap();
    while probe.info("db").unwrap().waiters < 8 {
        assert!(Instant::now() < end, "the waiters never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    for o in finish(waiters) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("OVERLAP").count(), 0, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 8);
    assert_eq!(sb.brokers().len(), 1, "the broker outlived its spawner");
}

#[test]
fn sixteen_lmx_run_spawn_count_exactly() {
    let sb = Sandbox::new("ctr");
    let ctr = sb.dir.join("counter");
    std::fs::write(&ctr, "0").unwrap();
    let script = format!(
        "n=$(cat '{0}'); sleep 0.01; echo $((n+1)) > '{0}'",
        ctr.display()
    );
    let kids: Vec<Child> = (0..16)
        .map(|_| {
            sb.cmd(LMX)
                .args(["run", "--spawn", "ctr", "--", "sh", "-c", &script])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for o in finish(kids) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read_to_string(&ctr).unwrap().trim(), "16");
    assert_eq!(sb.brokers().len(), 1);
}

#[test]
fn spawn_with_a_remote_url_is_refused_without_spawning() {
    let sb = Sandbox::new("remote");
    // TEST-NET-1: refused before any connection is tried.
    let o = sb
        .cmd(LMX)
        .args(["--spawn", "--url", "tcp://192.0.2.1:6970", "ping"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("not a local address"), "{err}");
    assert!(sb.brokers().is_empty());
    assert!(!sb.xdg().join("live-mutex").exists(), "nothing was set up");
    let e = live_mutex::connect_or_spawn("ws://example.invalid:1").unwrap_err();
    assert!(e.to_string().contains("not a local address"), "{e}");
}

#[test]
fn lmx_bin_that_is_not_lmx_fails_clearly_and_boundedly() {
    let sb = Sandbox::new("notlmx");
    let sleeper = sb.dir.join("sleeper.sh");
    std::fs::write(&sleeper, "#!/bin/sh\nsleep 600\n").unwrap();
    let failing = sb.dir.join("failing.sh");
    std::fs::write(&failing, "#!/bin/sh\necho 'I am not lmx' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&sleeper, &failing] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = sb.dir.join("cs.log");
    let cases: [(&Path, &str); 3] = [
        (Path::new("/bin/true"), "no broker answers"),
        (&failing, "I am not lmx"),
        (&sleeper, "did not report a listening broker within 10 s"),
    ];
    for (bin, want) in cases {
        let start = Instant::now();
        let o = sb
            .worker("cycle", "default", &log)
            .env("LMX_BIN", bin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{bin:?}: {err}");
        assert!(err.contains(want), "{bin:?}: {err}");
        // Bounded: the 10 s spawn wait, plus process start-up on a loaded machine.
        assert!(start.elapsed() < Duration::from_secs(60), "{bin:?} hung");
    }
    // The sleeper was killed with its process group.
    let sleeper = sleeper.to_str().unwrap().as_bytes();
    let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .any(|w| w == sleeper)
    });
    assert!(!alive, "the fake lmx was left running");
}

#[test]
fn unusable_runtime_dir_is_a_clear_error() {
    let sb = Sandbox::new("rtdir");
    let file = sb.dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let open = sb.dir.join("open");
    std::fs::create_dir_all(open.join("live-mutex")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        open.join("live-mutex"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    for (xdg, want) in [
        (&file, "cannot create the runtime directory"),
        (&open, "is not a private directory of this user"),
    ] {
        let o = sb
            .cmd(LMX)
            .env("XDG_RUNTIME_DIR", xdg)
            .args(["--spawn", "ping"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(69), "{err}");
        assert!(err.contains(want), "{err}");
    }
    assert!(sb.brokers().is_empty());
}

#[test]
fn daemon_is_idempotent_logs_and_refuses_a_non_broker() {
    let sb = Sandbox::new("daemon");
    let log = sb.dir.join("broker.log");
    let start = |extra: &[&str]| {
        sb.cmd(LMX)
            .args(["start", "--daemon", "--idle-exit", "2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = start(&["--log", log.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Listening by the time it returned.
    Client::connect(&sb.default_url()).unwrap().ping().unwrap();
    let o = start(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("already answers"),
        "{err}"
    );
    assert_eq!(sb.brokers().len(), 1);
    assert!(sb.wait_no_brokers(Duration::from_secs(30)));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("listening on unix://"), "{logged}");
    assert!(logged.contains("idle"), "{logged}");

    // A port held by something that is not a broker: a clear failure, not "already running".
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", squatter.local_addr().unwrap());
    let o = sb
        .cmd(LMX)
        .args(["--url", &url, "start", "--daemon"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("does not answer as a broker"), "{err}");
}

/// Zero install: with no `lmx` anywhere, 24 processes racing start exactly one broker, from
/// their own executable; it detaches, outlives them, and idles out.
#[test]
fn twenty_four_processes_without_lmx_start_one_broker_from_their_own_executable() {
    let sb = Sandbox::new("selfserve");
    let log = sb.dir.join("cs.log");
    let kids: Vec<Child> = (0..24)
        .map(|_| {
            without_lmx(sb.worker("cycle", "default", &log))
                .spawn()
                .unwrap()
        })
        .collect();
    for o in finish(kids) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("OVERLAP").count(), 0, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 24);
    let brokers = sb.brokers();
    assert_eq!(brokers.len(), 1, "brokers: {brokers:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", brokers[0])).unwrap();
    assert_eq!(
        exe,
        std::env::current_exe().unwrap(),
        "the broker is this test executable"
    );
    one_broker_that_idles_out(&sb, &sb.default_url());
}

/// A token in the URL is required by the broker spawned for it, and is on no command line;
/// for both ways of starting one (`lmx`, and the executable itself).
#[test]
fn a_spawned_broker_requires_the_urls_token_which_no_command_line_shows() {
    const TOKEN: &str = "s3cret-spawn-token";
    for with_lmx in [true, false] {
        let sb = Sandbox::new(if with_lmx { "token-lmx" } else { "token-self" });
        let url = format!("{}?token={TOKEN}", sb.default_url());
        let log = sb.dir.join("cs.log");
        let worker = sb.worker("hold", &url, &log);
        let mut holder = if with_lmx {
            worker
        } else {
            without_lmx(worker)
        }
        .spawn()
        .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("holding")) {
            assert!(Instant::now() < end, "the holder never got the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        let anonymous = Client::connect(&sb.default_url()).and_then(|c| c.try_lock("db"));
        assert!(
            anonymous.is_err(),
            "with_lmx={with_lmx}: a client without the token was served: {anonymous:?}"
        );
        let with_token = Client::connect(&url).unwrap();
        assert!(
            with_token.try_lock("db").unwrap().is_none(),
            "held by the worker"
        );
        let token = TOKEN.as_bytes();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            assert!(
                !cmdline.windows(token.len()).any(|w| w == token),
                "the token is on the command line of {:?}: {}",
                e.file_name(),
                String::from_utf8_lossy(&cmdline)
            );
        }
        assert_eq!(sb.brokers().len(), 1);
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
}
