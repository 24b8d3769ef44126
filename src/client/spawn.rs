//! A broker started on demand, as its own daemon process, so that it outlives whichever
//! short-lived process (a test under `cargo nextest`, a CI step) happened to need it first.
//!
//! A broker embedded in one of many peer processes dies with that process, taking every other
//! process's locks with it, possibly in the middle of their critical sections. So the only
//! automatic start here is [`connect_or_spawn`]: connect, and if nothing answers at a local
//! address, spawn `lmx start --daemon` for it (exactly one per address, however many processes
//! race) and connect to that.

pub use super::runtime_dir::runtime_dir;
use super::runtime_dir::runtime_dir_path;
use super::url::{self, Endpoint};
use super::{Client, Error, Result};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a spawned `lmx start --daemon` to report a listening broker. A broker binds
/// in milliseconds; this only bounds a wrong `LMX_BIN` or a wedged machine.
const SPAWN_WAIT: Duration = Duration::from_secs(10);
/// Idle time after which a spawned broker exits, unless `LMX_IDLE_EXIT` says otherwise.
const DEFAULT_IDLE_EXIT_SECS: u64 = 300;
/// Name of the per-user socket in [`runtime_dir`].
const SOCKET_NAME: &str = "broker.sock";

/// Where a broker for a local URL listens: what `lmx start --daemon` binds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::exhaustive_enums)] // the two kinds of local listener there are; `lmx start` matches both
pub enum LocalAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A loopback TCP address (NDJSON and WebSocket).
    Tcp(SocketAddr),
}

/// The address a broker for `url` would listen on, if that broker may be spawned on this host:
/// a Unix socket, or a TCP/WebSocket URL whose host is loopback. Any other URL is an error,
/// since a broker started here would not be the one other hosts reach. A socket in the
/// per-user directory ([`runtime_dir`]) makes and checks that directory, as the default does.
///
/// ```
/// use live_mutex::client::{spawn_target, LocalAddr};
/// assert_eq!(spawn_target("unix:///tmp/x.sock")?, LocalAddr::Unix("/tmp/x.sock".into()));
/// assert!(matches!(spawn_target("tcp://127.0.0.1:7000")?, LocalAddr::Tcp(_)));
/// assert!(spawn_target("tcp://10.0.0.1:7000").is_err());
/// assert!(spawn_target("tls://127.0.0.1:7000").is_err());
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn spawn_target(url: &str) -> Result<LocalAddr> {
    // A list names brokers that run elsewhere (sharing an etcd store), and a TLS broker
    // needs a certificate: both are connected to, never spawned.
    let never = || {
        Error::Spawn(format!(
            "{url}: a list of brokers or a TLS broker is never spawned (start it with `lmx start`)"
        ))
    };
    if url.contains(',') {
        return Err(never());
    }
    let endpoint = url::parse(url)?.0;
    if endpoint.is_tls() {
        return Err(never());
    }
    let (host, port) = match endpoint {
        Endpoint::Unix(p) => {
            // A socket in the per-user directory, named explicitly (`--url`, `LMX_URL`): the
            // directory is made and checked as for the default one, whoever starts the broker.
            if p.parent() == Some(runtime_dir_path().as_path()) {
                runtime_dir()?;
            }
            return Ok(LocalAddr::Unix(p));
        }
        Endpoint::Tcp { host, port, .. } | Endpoint::Ws { host, port, .. } => (host, port),
    };
    let remote = || {
        Error::Spawn(format!(
            "{url} is not a local address: a broker is only spawned for a Unix socket or a \
             loopback TCP address (start the remote broker there, e.g. `lmx start --daemon`)"
        ))
    };
    // Only literal loopback addresses and `localhost` are resolved: a remote name is refused
    // without a DNS lookup.
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) if host.eq_ignore_ascii_case("localhost") => (host.as_str(), port)
            .to_socket_addrs()?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(remote)?,
        Err(_) => return Err(remote()),
    };
    if !addr.ip().is_loopback() {
        return Err(remote());
    }
    Ok(LocalAddr::Tcp(addr))
}

/// The URL [`serial`](crate::serial()) and `lmx --spawn` use: `LMX_URL` if set, else the npm variables
/// `live_mutex_host`/`live_mutex_port` if either is set, else the per-user Unix socket
/// `unix://<runtime_dir>/broker.sock`.
///
/// ```no_run
/// let url = live_mutex::client::spawn_url_from_env()?;
/// assert!(url.starts_with("unix://") || std::env::var("LMX_URL").is_ok());
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn spawn_url_from_env() -> Result<String> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    if set("LMX_URL") || set("live_mutex_host") || set("live_mutex_port") {
        return Ok(super::url_from_env());
    }
    let sock = runtime_dir()?.join(SOCKET_NAME);
    Ok(format!("unix://{}", sock.display()))
}

/// Connects to the broker at `url`; if nothing answers and the address is local (a Unix
/// socket, or a loopback TCP address), starts a broker for it as a daemon and connects to that.
/// However many processes race, one broker per address results: spawners take turns on an
/// `flock` (beside the socket, or in [`runtime_dir`] for TCP) and look again before spawning,
/// and the broker itself holds a lock file beside its socket for life.
///
/// The broker is a daemon of its own, so it outlives the process that spawned it; it exits
/// after `LMX_IDLE_EXIT` seconds (default 300) with no connections and no locks. It is
/// `lmx start --daemon --idle-exit N` with `lmx` from `LMX_BIN`, else `lmx` on `PATH`.
///
/// **Zero install.** With neither, a program built with the `broker` feature (as the `macros`
/// feature is) starts the broker from its own executable: it runs itself again with a marker
/// in the environment, and a function this crate puts in the executable's initialiser table
/// (`.init_array`; `__mod_init_func` on macOS) sees the marker before `main` runs, detaches the
/// broker exactly as `lmx start --daemon` would and exits, so the program's `main` (a test
/// harness, say) never runs in that process. Limits: the broker is a copy of that executable
/// (`ps` shows it with `--live-mutex-broker`) and keeps running its code after a rebuild
/// replaces the file, until its idle exit; only Linux, Android, the BSDs, illumos and macOS
/// have the initialiser (elsewhere, install `lmx`). An installed `lmx` always wins.
///
/// A token in `url` (or `LMX_AUTH_TOKEN`) is required by the spawned broker: it is handed over
/// in the daemon's environment, never on its command line.
///
/// ```no_run
/// let client = live_mutex::connect_or_spawn(&live_mutex::client::spawn_url_from_env()?)?;
/// let _g = client.lock("fixture-db")?;
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn connect_or_spawn(url: &str) -> Result<Client> {
    spawn_with(url, || find_starter(None))
}

/// [`connect_or_spawn`] with the `lmx` binary to run given explicitly (what `lmx --spawn`
/// uses: itself).
///
/// ```no_run
/// let c = live_mutex::connect_or_spawn_using("unix:///tmp/my.sock", "/usr/local/bin/lmx".as_ref())?;
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn connect_or_spawn_using(url: &str, lmx: &Path) -> Result<Client> {
    spawn_with(url, || Ok(Starter::Lmx(lmx.to_path_buf())))
}

/// What starts a broker: an `lmx` binary, or this very executable (zero install).
pub(crate) enum Starter {
    Lmx(PathBuf),
    #[cfg(feature = "broker")]
    Myself(PathBuf),
}

impl Starter {
    /// The command that detaches a broker listening at `addr` with `token`, and what to call
    /// it in errors. The URL on its command line never carries the token: other users can read
    /// a command line; the token goes in the environment, which only this user can read.
    fn command(&self, addr: &LocalAddr, token: Option<&str>, idle: u64) -> (Command, String) {
        let url = local_url(addr);
        let (mut cmd, what) = match self {
            Starter::Lmx(lmx) => {
                let mut c = Command::new(lmx);
                c.args(["--url", &url, "start", "--daemon", "--idle-exit"])
                    .arg(idle.to_string());
                (c, format!("`{} start --daemon`", lmx.display()))
            }
            #[cfg(feature = "broker")]
            Starter::Myself(exe) => {
                use crate::daemon::self_serve::{ARG, IDLE, MARKER};
                let mut c = Command::new(exe);
                c.arg(ARG).env(MARKER, &url).env(IDLE, idle.to_string());
                (
                    c,
                    format!("this executable ({}) as a broker", exe.display()),
                )
            }
        };
        match token {
            Some(t) => cmd.env("LMX_AUTH_TOKEN", t),
            None => cmd.env_remove("LMX_AUTH_TOKEN"),
        };
        (cmd, what)
    }
}

/// The URL of a local address, with no token (a Unix path's `%` and `?` escaped).
fn local_url(addr: &LocalAddr) -> String {
    match addr {
        LocalAddr::Unix(p) => {
            let p = p.display().to_string();
            format!("unix://{}", p.replace('%', "%25").replace('?', "%3F"))
        }
        LocalAddr::Tcp(a) => format!("tcp://{a}"),
    }
}

/// `starter` says what to run; it is only looked for when a spawn is needed.
pub(crate) fn spawn_with(url: &str, starter: impl FnOnce() -> Result<Starter>) -> Result<Client> {
    // Refuse a remote URL before touching the network.
    let target = spawn_target(url)?;
    if let Some(c) = probe(url)? {
        return Ok(c);
    }
    let lock_path = match &target {
        LocalAddr::Unix(p) => {
            // (`spawn_target` checked the per-user directory.)
            let mut s = p.as_os_str().to_owned();
            s.push(".spawn.lock");
            PathBuf::from(s)
        }
        LocalAddr::Tcp(a) => runtime_dir()?.join(format!("tcp-{}-{}.spawn.lock", a.ip(), a.port())),
    };
    let _turn = SpawnLock::take(&lock_path)?;
    // Whoever held the lock before us may have started the broker.
    if let Some(c) = probe(url)? {
        return Ok(c);
    }
    let token = super::url::Settings::new(url).resolve()?.token;
    let (cmd, what) = starter()?.command(&target, token.as_deref(), idle_exit()?);
    run_daemon(cmd, &what)?;
    match probe(url)? {
        Some(c) => Ok(c),
        None => Err(Error::Spawn(format!(
            "{what} exited 0 but no broker answers at {url}: is LMX_BIN an lmx binary?"
        ))),
    }
}

/// Connects, or `None` if nothing answers (refused, no socket file, dropped at once).
fn probe(url: &str) -> Result<Option<Client>> {
    match Client::builder(url).connect() {
        Ok(c) => Ok(Some(c)),
        Err(Error::Io(_) | Error::ConnectionLost) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An exclusive `flock` held until dropped (closing the file releases it).
struct SpawnLock(#[allow(dead_code)] std::fs::File);

impl SpawnLock {
    fn take(path: &Path) -> Result<SpawnLock> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::Spawn(format!(
                    "cannot open the spawn lock {}: {e}",
                    path.display()
                ))
            })?;
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Spawn(format!("flock {}: {e}", path.display())));
            }
        }
        Ok(SpawnLock(f))
    }
}

/// `LMX_BIN`, else `hint`, else `lmx` on `PATH`, else this executable if it can serve.
pub(crate) fn find_starter(hint: Option<&Path>) -> Result<Starter> {
    if let Some(p) = std::env::var_os("LMX_BIN").filter(|v| !v.is_empty()) {
        return Ok(Starter::Lmx(PathBuf::from(p)));
    }
    if let Some(h) = hint.filter(|h| h.is_file()) {
        return Ok(Starter::Lmx(h.to_path_buf()));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("lmx"))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
            })
    });
    if let Some(lmx) = on_path {
        return Ok(Starter::Lmx(lmx));
    }
    #[cfg(feature = "broker")]
    if crate::daemon::self_serve::available() {
        return Ok(Starter::Myself(crate::daemon::self_serve::executable()?));
    }
    Err(Error::Spawn(
        "no `lmx` binary to start a broker with, and this program cannot start one itself \
         (built without the `broker` feature, or on a platform where it cannot): install it \
         with `cargo install live-mutex`, or set LMX_BIN=/path/to/lmx"
            .into(),
    ))
}

/// `LMX_IDLE_EXIT`, else the default.
fn idle_exit() -> Result<u64> {
    match std::env::var("LMX_IDLE_EXIT") {
        Ok(v) if !v.is_empty() => v
            .parse::<u64>()
            .map_err(|_| Error::Config(format!("LMX_IDLE_EXIT={v:?} is not a number of seconds"))),
        _ => Ok(DEFAULT_IDLE_EXIT_SECS),
    }
}

/// Runs the command that detaches a broker (`what`, in errors) and waits (bounded) for it to
/// report.
fn run_daemon(mut cmd: Command, what: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so that a wrong LMX_BIN can be killed with whatever it started.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Spawn(format!("cannot run {what}: {e}")))?;
    let deadline = Instant::now() + SPAWN_WAIT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            child.wait().ok();
            return Err(Error::Spawn(format!(
                "{what} did not report a listening broker within {} s: is LMX_BIN an lmx \
                 binary?",
                SPAWN_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    if let Some(err) = child.stderr.as_mut() {
        // Not blocking: something the child left behind may still hold the pipe open.
        unsafe { libc::fcntl(err.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut buf = vec![0u8; 16 << 10];
        if let Ok(n) = err.read(&mut buf) {
            text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        }
    }
    Err(Error::Spawn(format!(
        "{what} failed ({status}){}{text}",
        if text.is_empty() { "" } else { ": " }
    )))
}
