//! The broker: one thread, one `mio::Poll`, every connection in a `Slab`, every lock decision in
//! the lock [`Table`]. This module is the only one that does network I/O.
//!
//! One TCP port serves both framings, told apart by the first byte a client sends (`G` starts
//! an HTTP upgrade to WebSocket, anything else is NDJSON); a Unix socket serves NDJSON.
//! Web pages are kept out by `http_guard` (HTTP lines on NDJSON close the connection, Host and
//! Origin rules on upgrades); vanished peers are found by `keepalive`.
//!
//! ```no_run
//! use live_mutex::broker::Broker;
//! let handle = Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
//! println!("listening on {:?}", handle.local_addr());
//! handle.shutdown();
//! handle.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod dispatch;
pub(crate) mod http_guard;
mod keepalive;
mod legacy_rw;

pub use keepalive::Keepalive;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::HandshakeError;

use crate::proto::ndjson::DEFAULT_MAX_LINE;
use crate::proto::{Decoder, Limits};
use crate::table::{self, ConnId, Table};
use conn::{Conn, Io, Stream};
use dispatch::{Core, log};
use http_guard::{HttpPolicy, RefusalLog};

const WAKER: Token = Token(usize::MAX);
const TCP_LISTENER: Token = Token(usize::MAX - 1);
const UDS_LISTENER: Token = Token(usize::MAX - 2);
/// How often deadlines of connections (handshakes, stalled output) are checked while any exist.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// Errors of starting or running a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("a broker is already listening on the Unix socket {0}")]
    UdsInUse(PathBuf),
    #[error("nothing to listen on: give a TCP address or a Unix socket path")]
    NoListener,
    #[error("broker I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the broker thread panicked")]
    Panicked,
}

/// Settings of a broker; see [`Broker::builder`].
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    tcp: Option<SocketAddr>,
    uds: Option<PathBuf>,
    uds_mode: u32,
    table: table::Config,
    limits: Limits,
    max_line: usize,
    max_connections: usize,
    out_soft: usize,
    out_hard: usize,
    stall_timeout: Duration,
    handshake_timeout: Duration,
    ack_timeout: Option<Duration>,
    auth_token: Option<String>,
    restrict_admin: bool,
    spin: Duration,
    keepalive: Option<Keepalive>,
    allow_hosts: Vec<String>,
    allow_origins: Vec<String>,
    idle_exit: Option<Duration>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        BrokerBuilder {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 6970))),
            uds: None,
            uds_mode: 0o600,
            // No expiry unless asked: a lock lives until unlocked or its connection dies, the
            // same as `lmx start`. (The Node client always sends its own ttl.)
            table: table::Config {
                token_seed: seed,
                default_ttl: None,
                ..table::Config::default()
            },
            limits: Limits::default(),
            max_line: DEFAULT_MAX_LINE,
            max_connections: 10_000,
            out_soft: 256 * 1024,
            out_hard: 4 * 1024 * 1024,
            stall_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            ack_timeout: None,
            auth_token: None,
            restrict_admin: false,
            spin: Duration::from_micros(30),
            keepalive: Some(Keepalive::default()),
            allow_hosts: Vec::new(),
            allow_origins: Vec::new(),
            idle_exit: None,
        }
    }
}

impl BrokerBuilder {
    /// TCP address for NDJSON and WebSocket clients (default 127.0.0.1:6970; port 0 picks one).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }
    /// Serve only the Unix socket.
    pub fn no_tcp(mut self) -> Self {
        self.tcp = None;
        self
    }
    /// Also listen on a Unix socket (NDJSON). A stale file of a dead broker is replaced.
    pub fn uds(mut self, path: impl Into<PathBuf>) -> Self {
        self.uds = Some(path.into());
        self
    }
    /// File mode of the Unix socket (default 0600: only this user may lock).
    pub fn uds_mode(mut self, mode: u32) -> Self {
        self.uds_mode = mode;
        self
    }
    /// TTL of locks whose request names none (default `None`: no expiry).
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.table.default_ttl = ttl;
        self
    }
    /// First fencing token (default: wall-clock microseconds, so tokens rise across restarts).
    pub fn token_seed(mut self, seed: u64) -> Self {
        self.table.token_seed = seed;
        self
    }
    /// Limits of the lock table (key length, waiters per key, requests per connection).
    pub fn table_config(mut self, cfg: table::Config) -> Self {
        let seed = self.table.token_seed;
        self.table = cfg;
        if self.table.token_seed <= 1 {
            self.table.token_seed = seed;
        }
        self.limits.max_key_len = self.table.max_key_len;
        self.limits.max_many_keys = self.table.max_keys_per_many;
        self
    }
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Output backlog at which a connection stops being read, and at which it is closed.
    pub fn output_caps(mut self, soft: usize, hard: usize) -> Self {
        self.out_soft = soft;
        self.out_hard = hard.max(soft);
        self
    }
    /// How long a connection may leave its output backed up before it is cut off (and its
    /// locks released).
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.stall_timeout = d;
        self
    }
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Longest line or WebSocket message (default 64 KiB).
    pub fn max_message(mut self, n: usize) -> Self {
        self.max_line = n;
        self
    }
    /// Opt-in: release a grant pushed to a Node client that is not acknowledged with
    /// `lock-received` within `d`, and grant the key to the next waiter.
    ///
    /// Off by default, because it can break mutual exclusion: a 0.2.x client whose event loop
    /// is blocked for longer than `d` (a large `require`, a build step) still reads the grant
    /// afterwards and believes it holds the key, which by then is someone else's. Without it an
    /// unacknowledged grant lives until its TTL (the npm client always sends one, 7,050 ms by
    /// default) or until the connection closes; a try-lock the client gave up on (a "ghost")
    /// is still released within about 200 ms by an ack probe that cannot misfire (see
    /// `docs/protocol.md`, "Compatibility").
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = Some(d);
        self
    }
    /// Require this shared secret before any other request.
    pub fn auth_token(mut self, token: Option<String>) -> Self {
        self.auth_token = token.filter(|t| !t.is_empty());
        self
    }

    /// How long the reactor keeps polling without sleeping after a busy turn (default 30 µs;
    /// zero switches it off). See `BENCHMARKS.md` for what it buys and costs.
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = d;
        self
    }

    /// Allow `force` unlocks only from Unix-socket connections, or from connections that
    /// authenticated with the auth token.
    pub fn restrict_admin(mut self, on: bool) -> Self {
        self.restrict_admin = on;
        self
    }

    /// TCP keepalive and user timeout of accepted TCP connections, so that a client host that
    /// vanishes (no FIN, no RST) loses its connection and locks (default
    /// [`Keepalive::default`]: within 25 s; `None`: off, the kernel's defaults).
    pub fn keepalive(mut self, k: Option<Keepalive>) -> Self {
        self.keepalive = k;
        self
    }
    /// Host names (besides loopback and the bound address) that HTTP requests such as the
    /// WebSocket upgrade may carry in `Host`; a port given with a name is ignored.
    pub fn allow_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allow_hosts = hosts;
        self
    }
    /// Origins (`scheme://host[:port]`, or `null`) whose pages may open a WebSocket, besides
    /// the broker's own origin.
    pub fn allow_origins(mut self, origins: Vec<String>) -> Self {
        self.allow_origins = origins;
        self
    }
    /// Stop by itself once it has had no connections, no holders and no waiters for this long
    /// (default `None`: never). Made for brokers spawned on demand (`lmx start --daemon
    /// --idle-exit`), which nobody is left to stop once the last test process is gone.
    pub fn idle_exit(mut self, d: Option<Duration>) -> Self {
        self.idle_exit = d;
        self
    }

    /// Binds the listeners; the broker runs with [`Broker::run`] or [`Broker::spawn`].
    pub fn bind(self) -> Result<Broker, BrokerError> {
        if self.tcp.is_none() && self.uds.is_none() {
            return Err(BrokerError::NoListener);
        }
        let poll = Poll::new()?;
        let mut tcp = match self.tcp {
            Some(addr) => Some(TcpListener::bind(addr).map_err(|source| BrokerError::Bind {
                addr: addr.to_string(),
                source,
            })?),
            None => None,
        };
        let mut uds = match &self.uds {
            Some(path) => Some(bind_uds(path, self.uds_mode)?),
            None => None,
        };
        if let Some(l) = &mut tcp {
            poll.registry()
                .register(l, TCP_LISTENER, Interest::READABLE)?;
        }
        if let Some(UdsListener { listener: l, .. }) = &mut uds {
            poll.registry()
                .register(l, UDS_LISTENER, Interest::READABLE)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let local_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
        if let Some(addr) = local_addr
            && !addr.ip().is_loopback()
            && self.auth_token.is_none()
        {
            log::note(&format!(
                "warning: listening on {addr}, beyond this machine, with no auth token: \
                 anyone who can reach it can take and force locks (set --auth-token)"
            ));
        }
        let table = Table::new(self.table.clone());
        let core = Core::new(table, self.ack_timeout, self.auth_token.clone());
        let policy = Arc::new(HttpPolicy::new(
            local_addr,
            &self.allow_hosts,
            &self.allow_origins,
        ));
        Ok(Broker {
            poll,
            tcp,
            uds,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            core,
            decoder: Decoder::new(self.limits),
            scratch: Vec::with_capacity(1024),
            local_addr,
            next_gen: 1,
            needs_housekeeping: false,
            retry_accept: false,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            warned_fds: false,
            warned_keepalive: false,
            policy,
            refusals: RefusalLog::new(),
            idle_since: Some(Instant::now()),
            cfg: self,
        })
    }
}

/// A bound Unix socket and the lock file that makes it ours.
struct UdsListener {
    listener: UnixListener,
    path: PathBuf,
    /// Holds an exclusive `flock` on `<socket>.lock` for the broker's whole life: only the
    /// holder may bind or remove the socket path, so a broker starting next to a live one can
    /// never unlink its socket, and a socket file whose lock nobody holds is known stale.
    _lock: std::fs::File,
}

/// The lock file beside a Unix socket that its live broker holds (`<socket>.lock`).
pub fn uds_lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn bind_uds(path: &Path, mode: u32) -> Result<UdsListener, BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let lock_path = uds_lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| BrokerError::Bind {
            addr: lock_path.display().to_string(),
            source,
        })?;
    // The lock file is never removed: unlinking it would let two brokers lock two different
    // files of the same name.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(BrokerError::UdsInUse(path.to_path_buf()));
        }
        return Err(BrokerError::Io(e));
    }
    if path.exists() {
        // Nobody holds the lock, yet something may still answer (a broker of an older version,
        // or the npm one): never steal a live socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BrokerError::UdsInUse(path.to_path_buf()));
        }
        // Nobody answers: the file is left over from a broker that died.
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).map_err(|source| BrokerError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(UdsListener {
        listener: l,
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// A bound broker, not yet running.
pub struct Broker {
    poll: Poll,
    tcp: Option<TcpListener>,
    uds: Option<UdsListener>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    core: Core,
    decoder: Decoder,
    scratch: Vec<u8>,
    local_addr: Option<SocketAddr>,
    next_gen: u64,
    needs_housekeeping: bool,
    retry_accept: bool,
    /// Held in reserve so that a connection can still be accepted (and refused) when the
    /// process runs out of descriptors.
    spare_fd: Option<std::fs::File>,
    warned_fds: bool,
    warned_keepalive: bool,
    /// Host and Origin rules of HTTP requests (the WebSocket upgrade).
    policy: Arc<HttpPolicy>,
    refusals: RefusalLog,
    /// Since when the broker has had no connections and no locks (for `idle_exit`).
    idle_since: Option<Instant>,
    cfg: BrokerBuilder,
}

/// Stops a running broker from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake().ok();
    }
}

/// A broker running on its own thread.
pub struct BrokerHandle {
    local_addr: Option<SocketAddr>,
    uds_path: Option<PathBuf>,
    stop: ShutdownHandle,
    thread: JoinHandle<Result<(), BrokerError>>,
}

impl BrokerHandle {
    /// The TCP address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
    pub fn uds_path(&self) -> Option<&Path> {
        self.uds_path.as_deref()
    }
    /// Asks the broker to stop; its connections are closed and its Unix socket removed.
    pub fn shutdown(&self) {
        self.stop.shutdown();
    }
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }
    /// Waits for the broker thread to end.
    pub fn join(self) -> Result<(), BrokerError> {
        self.thread.join().map_err(|_| BrokerError::Panicked)?
    }
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn uds_path(&self) -> Option<&Path> {
        self.uds.as_ref().map(|u| u.path.as_path())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: self.waker.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Runs the broker on a dedicated thread.
    pub fn spawn(self) -> Result<BrokerHandle, BrokerError> {
        let local_addr = self.local_addr;
        let uds_path = self.uds_path().map(Path::to_path_buf);
        let stop = self.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("lmx-broker".into())
            .spawn(move || self.run())?;
        Ok(BrokerHandle {
            local_addr,
            uds_path,
            stop,
            thread,
        })
    }

    /// Runs the broker on this thread until shut down.
    pub fn run(mut self) -> Result<(), BrokerError> {
        let mut events = Events::with_capacity(1024);
        let mut busy = false;
        loop {
            let timeout = self.next_timeout(Instant::now());
            let spun = busy && self.spin(&mut events)?;
            if !spun && let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            busy = !events.is_empty();
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    TCP_LISTENER | UDS_LISTENER => self.accept(ev.token(), now),
                    Token(slot) => {
                        if ev.is_writable() {
                            self.on_writable(slot, now);
                        }
                        if (ev.is_read_closed() || ev.is_error())
                            && let Some(c) = self.core.conns.get_mut(slot)
                        {
                            c.peer_closed = true;
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(slot, now);
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.retry_accept {
                self.retry_accept = false;
                self.accept(TCP_LISTENER, now);
                self.accept(UDS_LISTENER, now);
            }
            self.core.table.handle_timeout(now);
            self.core.route_events(now);
            self.core.ack_timers(now);
            if self.needs_housekeeping {
                self.housekeeping(now);
            }
            self.end_turn(now);
            if self.idle_expired(now) {
                log::note("idle: no connections and no locks for the idle time, exiting");
                break;
            }
        }
        self.close_all();
        Ok(())
    }

    /// After a busy turn, polls without sleeping for up to the spin budget: the next request
    /// of a client in a lock/unlock loop usually arrives within microseconds, and catching it
    /// awake saves the broker a sleep and a wake-up, which cost more than the whole lock
    /// decision. An idle broker never spins (it only spins after a turn that had events).
    /// True when events arrived.
    fn spin(&mut self, events: &mut Events) -> io::Result<bool> {
        if self.cfg.spin.is_zero() {
            return Ok(false);
        }
        let until = Instant::now() + self.cfg.spin;
        loop {
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) if !events.is_empty() => return Ok(true),
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Tracks idleness (no connection, nothing in the table) and says whether it has lasted
    /// the configured `idle_exit`.
    fn idle_expired(&mut self, now: Instant) -> bool {
        let Some(limit) = self.cfg.idle_exit else {
            return false;
        };
        if !self.core.conns.is_empty() || !self.core.table.is_empty() {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        now.duration_since(since) >= limit
    }

    fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        let mut next = self.core.table.poll_timeout();
        if let (Some(limit), Some(since)) = (self.cfg.idle_exit, self.idle_since) {
            next = Some(next.map_or(since + limit, |n| n.min(since + limit)));
        }
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.core.next_ack_deadline());
        if self.needs_housekeeping {
            consider(Some(now + HOUSEKEEPING));
        }
        if self.retry_accept {
            consider(Some(now + HOUSEKEEPING));
        }
        // Round up: waking a hair early would only spin until the deadline.
        next.map(|t| t.saturating_duration_since(now) + Duration::from_micros(200))
    }

    fn accept(&mut self, token: Token, now: Instant) {
        loop {
            let accepted = match token {
                TCP_LISTENER => match &self.tcp {
                    Some(l) => l.accept().map(|(s, peer)| {
                        s.set_nodelay(true).ok();
                        if let Some(k) = &self.cfg.keepalive
                            && let Err(e) = k.apply(&s)
                            && !self.warned_keepalive
                        {
                            self.warned_keepalive = true;
                            log::note(&format!("cannot set TCP keepalive: {e}"));
                        }
                        (Io::Sniff(Stream::Tcp(s)), Some(peer))
                    }),
                    None => return,
                },
                _ => match &self.uds {
                    Some(u) => u
                        .listener
                        .accept()
                        .map(|(s, _)| (Io::Ndjson(Stream::Unix(s)), None)),
                    None => return,
                },
            };
            let (io, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_fd_exhaustion(&e) && self.spare_fd.take().is_some() => {
                    // Out of descriptors: the spare one makes room to accept the connection
                    // and close it at once, a refusal the client sees, instead of leaving it
                    // hanging in the backlog. Existing connections are untouched.
                    let refused = match token {
                        TCP_LISTENER => self.tcp.as_ref().map(|l| l.accept().is_ok()),
                        _ => self.uds.as_ref().map(|u| u.listener.accept().is_ok()),
                    };
                    self.spare_fd = std::fs::File::open("/dev/null").ok();
                    if refused != Some(true) {
                        self.retry_accept = true;
                        return;
                    }
                    if !self.warned_fds {
                        self.warned_fds = true;
                        log::note("out of file descriptors: refusing new connections");
                    }
                    continue;
                }
                Err(e) => {
                    log::note(&format!("accept failed: {e}; retrying shortly"));
                    self.retry_accept = true;
                    return;
                }
            };
            self.warned_fds = false;
            if self.core.conns.len() >= self.cfg.max_connections {
                drop(io); // refused: closing at once is the clean answer a client can see
                continue;
            }
            let entry = self.core.conns.vacant_entry();
            let slot = entry.key();
            let id = ConnId((self.next_gen << 32) | slot as u64);
            self.next_gen += 1;
            let authed = self.cfg.auth_token.is_none();
            let unix = token == UDS_LISTENER;
            let mut conn = Conn::new(id, io, self.cfg.max_line, now, authed);
            conn.peer = peer;
            // Admin acts need the Unix socket (file permissions guard it) or a token.
            conn.admin = !self.cfg.restrict_admin || unix;
            let Some(stream) = conn.stream_mut() else {
                continue;
            };
            if self
                .poll
                .registry()
                .register(stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.needs_housekeeping |= conn.handshaking();
            entry.insert(conn);
        }
    }

    fn on_writable(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.core.conns.get_mut(slot) else {
            return;
        };
        if matches!(conn.io, Io::Handshake(_)) {
            return self.on_readable(slot, now);
        }
        match conn.flush() {
            Ok(true) => {
                if conn.close_after_flush {
                    return self.close(slot, now);
                }
                if conn.stalled_since.take().is_some() {
                    // Reading stopped while output was backed up; edge-triggered readiness
                    // will not fire again for data that already waits.
                    self.on_readable(slot, now);
                }
            }
            Ok(false) => {}
            Err(_) => self.close(slot, now),
        }
    }

    /// Reads and handles everything the connection has sent, until the socket would block.
    fn on_readable(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.stalled_since.is_some() {
                return;
            }
            match std::mem::replace(&mut conn.io, Io::Gone) {
                Io::Sniff(stream) => {
                    let mut b = [0u8; 1];
                    let peeked = match &stream {
                        Stream::Tcp(s) => s.peek(&mut b),
                        Stream::Unix(_) => Ok(1),
                    };
                    match peeked {
                        Ok(0) => {
                            conn.io = Io::Sniff(stream);
                            return self.close(slot, now);
                        }
                        Ok(_) if b[0] == b'G' => {
                            let cfg = conn::ws_config(self.cfg.max_line, self.cfg.out_hard);
                            let check = conn::UpgradeCheck {
                                policy: self.policy.clone(),
                                token: self.cfg.auth_token.as_deref().map(Into::into),
                            };
                            match tungstenite::accept_hdr_with_config(stream, check, Some(cfg)) {
                                Ok(ws) => {
                                    conn.io = Io::Ws(Box::new(ws));
                                    conn.authed = true;
                                }
                                Err(HandshakeError::Interrupted(mid)) => {
                                    conn.io = Io::Handshake(Box::new(mid));
                                    return;
                                }
                                Err(HandshakeError::Failure(e)) => {
                                    return self.handshake_failed(slot, now, &e);
                                }
                            }
                        }
                        Ok(_) => conn.io = Io::Ndjson(stream),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.io = Io::Sniff(stream);
                            return;
                        }
                        Err(_) => {
                            conn.io = Io::Sniff(stream);
                            return self.close(slot, now);
                        }
                    }
                }
                Io::Handshake(mid) => match mid.handshake() {
                    Ok(ws) => {
                        conn.io = Io::Ws(Box::new(ws));
                        conn.authed = true;
                    }
                    Err(HandshakeError::Interrupted(mid)) => {
                        conn.io = Io::Handshake(Box::new(mid));
                        return;
                    }
                    Err(HandshakeError::Failure(e)) => return self.handshake_failed(slot, now, &e),
                },
                Io::Ndjson(stream) => {
                    conn.io = Io::Ndjson(stream);
                    return self.read_ndjson(slot, now);
                }
                Io::Ws(ws) => {
                    conn.io = Io::Ws(ws);
                    return self.read_ws(slot, now);
                }
                Io::Gone => return,
            }
        }
    }

    fn read_ndjson(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.backlog() > self.cfg.out_soft {
                conn.stalled_since = Some(now);
                self.needs_housekeeping = true;
                return;
            }
            let Io::Ndjson(stream) = &mut conn.io else {
                return;
            };
            // A short read drained the socket: after its lines, wait for the next readiness
            // event rather than spend a `read` on `WouldBlock` (one syscall per message saved).
            // Not when the peer has closed: no further event would come for its EOF.
            let (eof, drained) = match conn.framer.read_some(stream) {
                Ok((0, _)) => (true, false),
                Ok((_, filled)) => (false, !filled),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot, now),
            };
            // Handle every complete line read so far.
            loop {
                let Some(conn) = self.core.conns.get_mut(slot) else {
                    return;
                };
                match conn.framer.next_line() {
                    Ok(Some(line)) => {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(line);
                    }
                    Ok(None) if eof => match conn.framer.finish() {
                        Some(line) => {
                            self.scratch.clear();
                            self.scratch.extend_from_slice(line);
                        }
                        None => break,
                    },
                    Ok(None) => break,
                    // Framing is lost: only this connection is closed.
                    Err(_) => return self.close(slot, now),
                }
                if !conn.vetted {
                    // Until its first valid request, a line that looks like HTTP means a web
                    // page (or a confused client) is talking: close before anything it sent,
                    // such as a POST body in the same segment, can run.
                    if http_guard::is_http_line(&self.scratch) {
                        return self.refuse(slot, now, "HTTP on the NDJSON port (a web page?)");
                    }
                    if self.handle_scratch(slot, now)
                        && let Some(c) = self.core.conns.get_mut(slot)
                    {
                        c.vetted = true;
                    }
                    continue;
                }
                self.handle_scratch(slot, now);
            }
            if eof {
                // The peer may have only half-closed (`printf ... | nc`): its replies still go
                // out, then the connection closes and its locks are released.
                let Some(conn) = self.core.conns.get_mut(slot) else {
                    return;
                };
                if conn.backlog() == 0 && !conn.ws_unflushed {
                    return self.close(slot, now);
                }
                conn.close_after_flush = true;
                if !std::mem::replace(&mut conn.dirty, true) {
                    self.core.dirty.push(slot);
                }
                return;
            }
            if drained && self.core.conns.get(slot).is_some_and(|c| !c.peer_closed) {
                return;
            }
        }
    }

    fn read_ws(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            let Io::Ws(ws) = &mut conn.io else {
                return;
            };
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(t.as_bytes());
                    self.handle_scratch(slot, now);
                }
                Ok(tungstenite::Message::Binary(b)) => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&b);
                    self.handle_scratch(slot, now);
                }
                Ok(_) => {
                    // Ping, pong, close: tungstenite answers them; their replies need a flush.
                    if !std::mem::replace(&mut conn.dirty, true) {
                        self.core.dirty.push(slot);
                    }
                    conn.ws_unflushed = true;
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return;
                }
                Err(_) => return self.close(slot, now),
            }
        }
    }

    /// Decodes and handles the message in `scratch`; true when it was a valid request.
    fn handle_scratch(&mut self, slot: usize, now: Instant) -> bool {
        match self.decoder.decode(&mut self.scratch) {
            Ok(req) => {
                self.core.handle(slot, now, req);
                true
            }
            Err(e) => {
                self.core.decode_error(slot, &e);
                false
            }
        }
    }

    /// Closes a connection that a web page (or something else speaking HTTP) opened, with a
    /// rate-limited note naming its peer.
    fn refuse(&mut self, slot: usize, now: Instant, why: &str) {
        let peer = self.core.conns.get(slot).and_then(|c| c.peer);
        let peer = peer.map_or_else(|| "the Unix socket".to_string(), |p| p.to_string());
        if let Some(line) = self.refusals.refused(now, &peer, why) {
            log::note(&line);
        }
        self.close(slot, now);
    }

    /// A failed WebSocket handshake closes the connection; a refusal by the Host/Origin rules
    /// (answered 403) is also logged.
    fn handshake_failed(&mut self, slot: usize, now: Instant, e: &tungstenite::Error) {
        match e {
            tungstenite::Error::Http(resp) if resp.status() == 403 => {
                let why = resp.body().as_deref().map(String::from_utf8_lossy);
                let why = format!("WebSocket upgrade: {}", why.unwrap_or_default());
                self.refuse(slot, now, &why);
            }
            _ => self.close(slot, now),
        }
    }

    /// Closes what must close, flushes what was written this turn.
    fn end_turn(&mut self, now: Instant) {
        let mut dirty = Vec::new();
        // Closing a connection releases its locks and may push grants to others, which makes
        // them dirty in turn: repeat until nothing is left to flush.
        loop {
            while let Some(slot) = self.core.doomed.pop() {
                self.close(slot, now);
            }
            std::mem::swap(&mut dirty, &mut self.core.dirty);
            if dirty.is_empty() {
                break;
            }
            for slot in dirty.drain(..) {
                let Some(conn) = self.core.conns.get_mut(slot) else {
                    continue;
                };
                conn.dirty = false;
                match conn.flush() {
                    Ok(true) if conn.close_after_flush => self.close(slot, now),
                    Ok(_) if conn.backlog() > self.cfg.out_hard => {
                        log::note("closing a connection whose output is backed up past the cap");
                        self.close(slot, now);
                    }
                    Ok(false) => {
                        if conn.backlog() > self.cfg.out_soft && conn.stalled_since.is_none() {
                            conn.stalled_since = Some(now);
                            self.needs_housekeeping = true;
                        }
                    }
                    Ok(true) => {}
                    Err(_) => self.close(slot, now),
                }
            }
        }
        // Keep the allocation for the next turn.
        self.core.dirty = dirty;
    }

    /// Cuts off connections that are stuck in a handshake or never read their output.
    fn housekeeping(&mut self, now: Instant) {
        let mut doomed = Vec::new();
        let mut watching = false;
        for (slot, c) in &self.core.conns {
            if c.handshaking() {
                if now.duration_since(c.opened) > self.cfg.handshake_timeout {
                    doomed.push(slot);
                } else {
                    watching = true;
                }
            } else if let Some(since) = c.stalled_since {
                if now.duration_since(since) > self.cfg.stall_timeout {
                    doomed.push(slot);
                } else {
                    watching = true;
                }
            }
        }
        self.needs_housekeeping = watching;
        for slot in doomed {
            self.close(slot, now);
        }
    }

    fn close(&mut self, slot: usize, now: Instant) {
        if !self.core.conns.contains(slot) {
            return;
        }
        let mut conn = self.core.conns.remove(slot);
        if let Some(s) = conn.stream_mut() {
            self.poll.registry().deregister(s).ok();
        }
        let id = conn.id;
        drop(conn);
        self.core.disconnect(now, id);
        // The last connection is gone: give back what a flood of them made the slab grow to.
        if self.core.conns.is_empty() && self.core.conns.capacity() > 1024 {
            self.core.conns.shrink_to_fit();
        }
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        let slots: Vec<usize> = self.core.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close(slot, now);
        }
        if let Some(u) = self.uds.take() {
            // Removed while the lock file is still held, so no newer broker's socket is hit.
            std::fs::remove_file(&u.path).ok();
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The broker's upgrade check (Host and Origin rules, no token) for the fuzz harness; the Host
/// `x` of the older seeds is allowed so that their frames are still reached.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_upgrade_check() -> impl tungstenite::handshake::server::Callback {
    let bound = SocketAddr::from(([127, 0, 0, 1], 6970));
    conn::UpgradeCheck {
        policy: Arc::new(HttpPolicy::new(Some(bound), &["x".into()], &[])),
        token: None,
    }
}

/// The WebSocket settings the broker uses, for the fuzz harness.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_ws_config() -> tungstenite::protocol::WebSocketConfig {
    conn::ws_config(DEFAULT_MAX_LINE, 4 * 1024 * 1024)
}
