//! The broker's settings ([`BrokerBuilder`]) and binding its listeners.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Poll, Waker};

use super::core::{self, Core};
use super::http_guard::HttpPolicy;
use super::reactor::{Bound, Broker, TCP_LISTENER, UDS_LISTENER, WAKER};
use super::{BrokerError, Keepalive};
use crate::proto::Limits;
use crate::proto::ndjson::DEFAULT_MAX_LINE;
use crate::table;

/// Settings of a broker; see [`Broker::builder`].
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    pub(super) tcp: Option<SocketAddr>,
    pub(super) uds: Option<PathBuf>,
    pub(super) uds_mode: u32,
    pub(super) table: table::Config,
    pub(super) limits: Limits,
    pub(super) max_line: usize,
    pub(super) max_connections: usize,
    pub(super) out_soft: usize,
    pub(super) out_hard: usize,
    pub(super) stall_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) ack_timeout: Option<Duration>,
    pub(super) auth_token: Option<String>,
    pub(super) restrict_admin: bool,
    pub(super) spin: Duration,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) allow_hosts: Vec<String>,
    pub(super) allow_origins: Vec<String>,
    pub(super) idle_exit: Option<Duration>,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<super::tls::TlsFiles>,
    pub(super) require_tls: bool,
    pub(super) raise_fd_limit: bool,
    /// The connection cap in effect (set by `bind`), logged when the broker runs.
    pub(super) fd_cap: Option<super::fd_limit::Cap>,
    /// Where lock decisions live: the in-memory table, or etcd ([`BrokerBuilder::etcd`]).
    pub(super) store: crate::store::Backend,
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
            #[cfg(feature = "tls")]
            tls: None,
            require_tls: false,
            raise_fd_limit: false,
            fd_cap: None,
            store: crate::store::Backend::Memory,
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
    pub fn table_config(mut self, cfg: super::TableConfig) -> Self {
        let seed = self.table.token_seed;
        self.table = cfg;
        if self.table.token_seed <= 1 {
            self.table.token_seed = seed;
        }
        self.limits.max_key_len = self.table.max_key_len;
        self.limits.max_many_keys = self.table.max_keys_per_many;
        self
    }
    /// Most requests waiting at once across the broker (default 100 000); one more that would
    /// wait is refused with an error (a try-lock or an immediate grant never is).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.table.max_waiters = n;
        self
    }
    /// Most open connections (default 10 000); one more is accepted and closed at once. Each
    /// takes a file descriptor, so the cap in effect is also bounded by the process's
    /// open-file limit (less a few for the broker's own files); [`bind`](Self::bind) logs it.
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
    /// How long a new connection may take to show its protocol (first bytes, WebSocket
    /// upgrade, an HTTP request) before it is closed (default 10 s).
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

    /// The most the reactor keeps polling without sleeping after a busy turn (default 30 µs;
    /// zero switches it off). It spins only while recent spins found work, and shortens the
    /// budget to what winning spins needed (`src/broker/spin.rs`). See `BENCHMARKS.md` for
    /// what it buys and costs.
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

    /// Serve TLS on the TCP port (feature `tls`) with this certificate chain and private key
    /// (PEM files): a client that starts with a TLS handshake gets NDJSON, WebSocket and the
    /// HTTP endpoints inside it (`tls://`, `wss://`), and plain clients are still served
    /// (see [`require_tls`](Self::require_tls)). The files are read again by
    /// [`Broker::tls_reloader`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let client_ca = self.tls.take().and_then(|t| t.client_ca);
        self.tls = Some(super::tls::TlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca,
        });
        self
    }
    /// Ask TLS clients for a certificate signed by a CA in this PEM file (after
    /// [`tls`](Self::tls)): a verified one authenticates its connection as the auth token
    /// would (no `auth` message needed; `force` allowed under `restrict_admin`). Clients
    /// without a certificate are still served (and need the token if there is one).
    #[cfg(feature = "tls")]
    pub fn tls_client_ca(mut self, ca: Option<PathBuf>) -> Self {
        if let Some(t) = &mut self.tls {
            t.client_ca = ca;
        }
        self
    }
    /// Refuse plain TCP (NDJSON, WebSocket, HTTP) from any address but loopback: only TLS is
    /// served to other hosts. The Unix socket and loopback clients (the npm client, which
    /// cannot speak TLS) are unaffected. Needs [`tls`](Self::tls).
    pub fn require_tls(mut self, on: bool) -> Self {
        self.require_tls = on;
        self
    }

    /// At [`bind`](Self::bind), raise this process's open-file soft limit toward its hard
    /// limit, as far as [`max_connections`](Self::max_connections) needs (default off: a
    /// library does not change its host's limits unasked; `lmx start` turns it on).
    pub fn raise_fd_limit(mut self, on: bool) -> Self {
        self.raise_fd_limit = on;
        self
    }

    /// Keep every lock decision in an etcd cluster (feature `etcd`), so that any number of
    /// brokers can serve the same keys: see README.md, "Running more than one broker", and
    /// for the recipe the docs of `src/store/etcd/mod.rs`. The broker's default TTL
    /// ([`default_ttl`](Self::default_ttl)) replaces `cfg.default_ttl`. Not served on this
    /// path: `acquire-many`, `extend` and the 0.2.x read/write protocol (each gets an error).
    #[cfg(feature = "etcd")]
    pub fn etcd(mut self, cfg: super::EtcdConfig) -> Self {
        self.store = crate::store::Backend::Etcd(Box::new(cfg));
        self
    }

    /// Binds the listeners; the broker runs with [`Broker::run`] or [`Broker::spawn`].
    pub fn bind(mut self) -> Result<Broker, BrokerError> {
        if self.tcp.is_none() && self.uds.is_none() {
            return Err(BrokerError::NoListener);
        }
        #[cfg(feature = "tls")]
        let tls = self
            .tls
            .clone()
            .map(super::tls::ServerTls::load)
            .transpose()?;
        #[cfg(feature = "tls")]
        let has_tls = tls.is_some();
        #[cfg(not(feature = "tls"))]
        let has_tls = false;
        if self.require_tls && !has_tls {
            return Err(BrokerError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "require_tls needs a TLS certificate and key (--tls-cert, --tls-key)",
            )));
        }
        let cap = super::fd_limit::connection_cap(self.max_connections, self.raise_fd_limit);
        self.max_connections = cap.cap;
        self.fd_cap = Some(cap);
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
            && !self.require_tls
        {
            tracing::warn!(
                "listening on {addr}, beyond this machine, with no auth token: \
                 anyone who can reach it can take and force locks (set --auth-token)"
            );
        }
        let mut core = Core::new(core::Config {
            table: self.table.clone(),
            limits: self.limits,
            ack_timeout: self.ack_timeout,
            auth_token: self.auth_token.clone(),
            restrict_admin: self.restrict_admin,
            wall_clock: SystemTime::now,
            // Within the output cap with room to spare: a reply is written whole, so one
            // listing after a backlog at the soft cap still stays below the hard one.
            reply_budget: self.out_soft.min(self.out_hard / 4).max(4096),
            started: Instant::now(),
            pid: std::process::id(),
        });
        let w = waker.clone();
        let wake = Box::new(move || {
            let _ = w.wake();
        });
        core.use_store(crate::store::open(&self.store, &self.table, wake)?);
        let policy = Arc::new(HttpPolicy::new(
            local_addr,
            &self.allow_hosts,
            &self.allow_origins,
        ));
        Ok(Broker::new(Bound {
            poll,
            tcp,
            uds,
            waker,
            core,
            local_addr,
            policy,
            cfg: self,
            #[cfg(feature = "tls")]
            tls,
        }))
    }
}

/// A bound Unix socket and the lock file that makes it ours.
pub(super) struct UdsListener {
    pub(super) listener: UnixListener,
    pub(super) path: PathBuf,
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
    // Never through a symlink: a broker run by root in a directory others can write to would
    // otherwise create (or lock) whatever file the link names.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
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
