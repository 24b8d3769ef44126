//! `lmx start`: a broker in the foreground until SIGINT/SIGTERM, or detached (`--daemon`).

use super::out::tell;
use super::{daemon, duration};
use clap::Args;
use live_mutex::broker::{Broker, BrokerBuilder, Keepalive};
use live_mutex::client::{LocalAddr, runtime_dir, spawn_target};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct StartArgs {
    /// Interface to listen on (NDJSON and WebSocket on the same port) [default: 127.0.0.1]
    #[arg(long, env = "live_mutex_host")]
    host: Option<String>,
    /// TCP port [default: 6970]
    #[arg(long, env = "live_mutex_port")]
    port: Option<u16>,
    /// Also listen on this Unix socket (NDJSON)
    #[arg(long, value_name = "PATH", env = "LMX_UDS")]
    uds: Option<PathBuf>,
    /// TTL of locks whose request does not say (30s, 5m; a plain number is ms) [default: no
    /// expiry]
    #[arg(long, value_name = "DURATION", env = "LMX_DEFAULT_TTL", value_parser = duration::ms)]
    default_ttl: Option<Duration>,
    /// File mode of the Unix socket, in octal
    #[arg(long, value_name = "MODE", default_value = "600", env = "LMX_UDS_MODE")]
    uds_mode: String,
    /// Shared secret every client must present first (an `auth` message, or the WebSocket
    /// upgrade's `Authorization: Bearer` header). Prefer $LMX_AUTH_TOKEN or --auth-token-file:
    /// other local users can read a process's command line
    #[arg(
        long,
        env = "LMX_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    auth_token: Option<String>,
    /// Read the auth token from this file (its first line), so that it is in no command line
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "auth_token",
        env = "LMX_AUTH_TOKEN_FILE"
    )]
    auth_token_file: Option<PathBuf>,
    /// Allow `force` unlocks only over the Unix socket or from authenticated connections
    #[arg(long, env = "LMX_RESTRICT_ADMIN", value_parser = clap::builder::BoolishValueParser::new())]
    restrict_admin: bool,
    /// Release a grant pushed to an npm client that is not acknowledged within this long
    /// (a plain number is ms) [default: never, the lock's TTL applies]. RISK: an npm client
    /// whose event loop is blocked for longer still takes the late grant and believes it holds
    /// the key while the next waiter holds it too. Ghosts of abandoned try-locks are cleared
    /// without it.
    #[arg(long, value_name = "DURATION", env = "LMX_ACK_TIMEOUT", value_parser = duration::ms)]
    ack_timeout: Option<Duration>,
    /// The most time to keep polling without sleeping after a busy turn, while spins pay (a
    /// plain number is microseconds; 0: never spin)
    #[arg(long, value_name = "DURATION", default_value = "30", env = "LMX_SPIN_US",
          value_parser = duration::us)]
    spin_us: Duration,
    /// Most connections at once; more are closed as they arrive
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        env = "LMX_MAX_CONNECTIONS"
    )]
    max_connections: usize,
    /// Most lock requests waiting at once across the broker; one more that would wait is
    /// refused with an error
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "LMX_MAX_WAITERS"
    )]
    max_waiters: usize,
    /// A Host name (besides localhost, 127.0.0.0/8, `[::1]` and the listening address) that
    /// WebSocket upgrades may name; repeatable
    #[arg(
        long,
        value_name = "HOST",
        env = "LMX_ALLOW_HOST",
        value_delimiter = ','
    )]
    allow_host: Vec<String>,
    /// An origin (`http://host:port`, or `null`) whose web pages may open a WebSocket to the
    /// broker; repeatable. Other pages get 403
    #[arg(
        long,
        value_name = "ORIGIN",
        env = "LMX_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    allow_origin: Vec<String>,
    /// Silence before a TCP connection is probed (TCP keepalive; whole seconds, a plain
    /// number is seconds)
    #[arg(long, value_name = "DURATION", default_value = "10", env = "LMX_KEEPALIVE_IDLE",
          value_parser = duration::secs)]
    keepalive_idle: Duration,
    /// Time between keepalive probes (whole seconds, a plain number is seconds)
    #[arg(long, value_name = "DURATION", default_value = "5", env = "LMX_KEEPALIVE_INTERVAL",
          value_parser = duration::secs)]
    keepalive_interval: Duration,
    /// Unanswered keepalive probes before the connection is dropped and its locks released
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        env = "LMX_KEEPALIVE_COUNT"
    )]
    keepalive_count: u32,
    /// How long sent data may stay unacknowledged before the connection is dropped
    /// (TCP_USER_TIMEOUT; a plain number is seconds; Linux only: elsewhere lmx says so and
    /// starts without it) [default: idle + interval × count]
    #[arg(long, value_name = "DURATION", env = "LMX_TCP_USER_TIMEOUT", value_parser = duration::secs)]
    tcp_user_timeout: Option<Duration>,
    /// Leave TCP keepalive off (a vanished host then keeps its locks until their TTL)
    #[arg(long, env = "LMX_NO_KEEPALIVE", value_parser = clap::builder::BoolishValueParser::new())]
    no_keepalive: bool,
    /// Detach (new session, stdio to /dev/null or --log) and exit 0 once the broker listens,
    /// or at once if a broker already answers at the address. With no --host/--port/--uds:
    /// --url, else $LMX_URL, else the per-user socket ($XDG_RUNTIME_DIR/live-mutex/broker.sock,
    /// else on macOS $TMPDIR/live-mutex-$UID/broker.sock, else /tmp/live-mutex-$UID/broker.sock)
    #[arg(long, env = "LMX_DAEMON", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) daemon: bool,
    /// With --daemon: append the broker's log here instead of discarding it
    #[arg(long, value_name = "FILE", requires = "daemon", env = "LMX_LOG")]
    pub(crate) log: Option<PathBuf>,
    /// Exit (removing the Unix socket) after this long with no connections and no locks
    /// (10m, 1h; a plain number is seconds; not LMX_IDLE_EXIT, which only brokers started by
    /// --spawn take) [default: never]
    #[arg(long, value_name = "DURATION", env = "LMX_START_IDLE_EXIT", value_parser = positive_secs)]
    idle_exit: Option<Duration>,
    /// Where lock decisions live: `memory` (this process), or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` so that any number of brokers serve the same
    /// keys (needs the `etcd` build feature) [default: memory]
    #[arg(long, value_name = "URL", env = "LMX_STORE")]
    store: Option<String>,
    /// With --store etcd://: the TTL of each connection's etcd lease, in whole seconds (at
    /// least 2; a plain number is seconds): a broker that dies loses its clients' locks this
    /// long after [default: 10]
    #[arg(long, value_name = "DURATION", env = "LMX_SESSION_TTL", value_parser = positive_secs)]
    session_ttl: Option<Duration>,
    /// TLS on the TCP port: this certificate chain (PEM). Clients then use tls:// or wss://;
    /// plain TCP stays available unless --require-tls. SIGHUP reloads it (and the key and
    /// client CA) without dropping connections
    #[arg(
        long,
        env = "LMX_START_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(
        long,
        env = "LMX_START_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Ask TLS clients for a certificate signed by a CA in this PEM file; a verified one
    /// authenticates the connection (instead of the token; `force` under --restrict-admin)
    #[arg(
        long,
        env = "LMX_START_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Refuse plain TCP from any address but loopback (the Unix socket and loopback clients
    /// such as the npm client still work); needs --tls-cert
    #[arg(long, env = "LMX_START_REQUIRE_TLS", value_parser = clap::builder::BoolishValueParser::new(), requires = "tls_cert")]
    require_tls: bool,
    /// With --store: the CA that signed the etcd members' certificates (PEM); implies TLS
    /// to etcd, as does `etcds://` (which otherwise trusts the system's roots)
    #[arg(long, env = "LMX_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// With --store: a client certificate for etcd (PEM; with --etcd-key)
    #[arg(
        long,
        env = "LMX_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    etcd_cert: Option<PathBuf>,
    /// With --store: the key of --etcd-cert (PEM)
    #[arg(
        long,
        env = "LMX_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,
    /// With --store: the etcd user (etcd `auth enable`); the password comes from
    /// --etcd-password-file, else $LMX_ETCD_PASSWORD
    #[arg(long, env = "LMX_ETCD_USER", value_name = "NAME")]
    etcd_user: Option<String>,
    /// With --etcd-user: a file whose first line is the password
    #[arg(
        long,
        env = "LMX_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "etcd_user"
    )]
    etcd_password_file: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter such as
    /// `live_mutex=debug` [default: $RUST_LOG, else info]. `info` logs connections opened
    /// and closed and lock events (forced unlocks, TTL expiries, locks released because
    /// their connection closed, refused admin acts); `debug` adds every grant, release and
    /// HTTP request
    #[arg(long, value_name = "FILTER", env = "LMX_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// A duration of at least one second (a plain number is seconds).
fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = duration::secs(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s}: must be at least 1s"));
    }
    Ok(d)
}

/// Sends the broker's `tracing` events to stderr, with timestamps, filtered by `--log-level`
/// or `RUST_LOG` (the library itself never installs a subscriber: an embedded broker logs
/// through its host program's, and is silent without one).
pub(crate) fn init_logging(level: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("--log-level {l:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = super::out::color_on(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A log line that cannot be written (stderr a pipe whose reader left) is dropped: the
        // subscriber's own complaint would go to the same stderr through `eprintln!`, whose
        // panic kills the thread that logged (the reactor, or the signal handler, which then
        // never shuts the broker down).
        .log_internal_errors(false)
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}

pub(crate) fn start(a: StartArgs, url: Option<&str>) -> i32 {
    if let Err(e) = init_logging(a.log_level.as_deref()) {
        tell!("lmx start: {e}");
        return super::EXIT_USAGE;
    }
    // Said before a daemon detaches, where the person who gave the flag sees it.
    if a.tcp_user_timeout.is_some()
        && let Some(why) = keepalive(&a).and_then(|k| k.user_timeout_unavailable())
    {
        eprintln!("lmx start: --tcp-user-timeout: {why}");
    }
    let listen = match listen(&a, url) {
        Ok(l) => l,
        Err(e) => {
            tell!("lmx start: {e}");
            return super::EXIT_USAGE;
        }
    };
    if a.daemon {
        return daemon::daemon(&a, listen, |b| builder(&a, b));
    }
    match serve(builder(&a, listen.builder()), |_| {}) {
        Ok(()) => 0,
        Err(e) => {
            tell!("lmx start: {e}");
            super::EXIT_UNAVAILABLE
        }
    }
}

/// Where to listen: `--host`/`--port`/`--uds` if any is given; else `--url`; else, for
/// `--daemon`, `$LMX_URL` or the per-user socket; else 127.0.0.1:6970, the npm default.
pub(crate) struct Listen {
    tcp: Option<std::net::SocketAddr>,
    uds: Option<PathBuf>,
}

impl Listen {
    /// A URL clients can use to reach it (the Unix socket if there is one).
    pub(crate) fn url(&self) -> String {
        match (&self.uds, self.tcp) {
            (Some(p), _) => format!("unix://{}", p.display()),
            (None, Some(a)) => format!("tcp://{a}"),
            (None, None) => String::new(),
        }
    }
    pub(crate) fn builder(&self) -> BrokerBuilder {
        let mut b = Broker::builder().no_tcp();
        if let Some(a) = self.tcp {
            b = b.tcp(a);
        }
        if let Some(p) = &self.uds {
            b = b.uds(p);
        }
        b
    }
}

fn listen(a: &StartArgs, url: Option<&str>) -> Result<Listen, Box<dyn std::error::Error>> {
    let explicit = a.host.is_some() || a.port.is_some() || a.uds.is_some();
    let from_url = |u: &str| -> Result<Listen, Box<dyn std::error::Error>> {
        Ok(match spawn_target(u)? {
            LocalAddr::Unix(p) => Listen {
                tcp: None,
                uds: Some(p),
            },
            LocalAddr::Tcp(t) => Listen {
                tcp: Some(t),
                uds: None,
            },
        })
    };
    if !explicit {
        if let Some(u) = url {
            return from_url(u);
        }
        if a.daemon {
            return match std::env::var("LMX_URL").ok().filter(|u| !u.is_empty()) {
                Some(u) => from_url(&u),
                None => Ok(Listen {
                    tcp: None,
                    uds: Some(runtime_dir()?.join("broker.sock")),
                }),
            };
        }
    }
    let host = a.host.as_deref().unwrap_or("127.0.0.1");
    let addr = (host, a.port.unwrap_or(6970))
        .to_socket_addrs()?
        .next()
        .ok_or("host has no address")?;
    // Absolute, since a daemon changes to `/` and removes its socket at exit.
    let uds = a.uds.as_deref().map(std::path::absolute).transpose()?;
    Ok(Listen {
        tcp: Some(addr),
        uds,
    })
}

fn builder(a: &StartArgs, b: BrokerBuilder) -> Result<BrokerBuilder, String> {
    let uds_mode = u32::from_str_radix(&a.uds_mode, 8)
        .map_err(|_| "--uds-mode takes an octal mode such as 600")?;
    let b = match a.ack_timeout {
        Some(t) => b.ack_timeout(t),
        None => b,
    };
    let b = store(a, b)?;
    let b = tls(a, b)?;
    Ok(b.default_ttl(a.default_ttl)
        .uds_mode(uds_mode)
        .auth_token(auth_token(a)?)
        .restrict_admin(a.restrict_admin)
        .max_connections(a.max_connections)
        .max_waiters(a.max_waiters)
        .raise_fd_limit(true)
        .spin(a.spin_us)
        .allow_hosts(a.allow_host.clone())
        .allow_origins(a.allow_origin.clone())
        .keepalive(keepalive(a))
        .idle_exit(a.idle_exit))
}

fn keepalive(a: &StartArgs) -> Option<Keepalive> {
    (!a.no_keepalive).then(|| {
        let second = Duration::from_secs(1);
        let mut k = Keepalive::new(
            a.keepalive_idle.max(second),
            a.keepalive_interval.max(second),
            a.keepalive_count.max(1),
        );
        if let Some(t) = a.tcp_user_timeout {
            k.user_timeout = t;
        }
        k
    })
}

/// `--auth-token` / `LMX_AUTH_TOKEN`, or the first line of `--auth-token-file`.
fn auth_token(a: &StartArgs) -> Result<Option<String>, String> {
    let Some(path) = &a.auth_token_file else {
        return Ok(a.auth_token.clone());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!(
            "--auth-token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(Some(token.to_string()))
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca` and `--require-tls`.
#[cfg(feature = "tls")]
fn tls(a: &StartArgs, b: BrokerBuilder) -> Result<BrokerBuilder, String> {
    let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) else {
        return Ok(b);
    };
    let abs = |p: &std::path::Path| std::path::absolute(p).map_err(|e| e.to_string());
    let client_ca = a.tls_client_ca.as_deref().map(abs).transpose()?;
    Ok(b.tls(abs(cert)?, abs(key)?)
        .tls_client_ca(client_ca)
        .require_tls(a.require_tls))
}

/// Without the `tls` feature, a TLS flag is an error that says so, not a silent plain broker.
#[cfg(not(feature = "tls"))]
fn tls(a: &StartArgs, b: BrokerBuilder) -> Result<BrokerBuilder, String> {
    match a.tls_cert {
        Some(_) => Err("--tls-cert: this lmx was built without the `tls` feature \
             (cargo install live-mutex, whose default features include it)"
            .into()),
        None => Ok(b),
    }
}

/// `--store` and `--session-ttl`.
fn store(a: &StartArgs, b: BrokerBuilder) -> Result<BrokerBuilder, String> {
    match a.store.as_deref() {
        None | Some("memory") => {
            if a.session_ttl.is_some()
                || a.etcd_ca.is_some()
                || a.etcd_cert.is_some()
                || a.etcd_user.is_some()
            {
                return Err("--session-ttl and --etcd-* need --store etcd://...".into());
            }
            Ok(b)
        }
        #[cfg(feature = "etcd")]
        Some(url) => {
            let mut cfg = live_mutex::broker::EtcdConfig::from_url(url)
                .map_err(|e| format!("--store: {e}"))?;
            cfg.session_ttl = a.session_ttl.unwrap_or(Duration::from_secs(10));
            let abs =
                |p: &PathBuf| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
            cfg.ca = a.etcd_ca.as_ref().map(abs).transpose()?;
            if let (Some(c), Some(k)) = (&a.etcd_cert, &a.etcd_key) {
                cfg.cert_key = Some((abs(c)?, abs(k)?));
            }
            if let Some(user) = &a.etcd_user {
                let password = match &a.etcd_password_file {
                    Some(f) => std::fs::read_to_string(f)
                        .map_err(|e| format!("--etcd-password-file {}: {e}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    None => std::env::var("LMX_ETCD_PASSWORD").map_err(
                        |_| "--etcd-user needs --etcd-password-file FILE or $LMX_ETCD_PASSWORD",
                    )?,
                };
                cfg.user = Some((user.clone(), password));
            }
            Ok(b.etcd(cfg))
        }
        #[cfg(not(feature = "etcd"))]
        Some(url) => Err(format!(
            "--store {url}: this lmx was built without the `etcd` feature \
             (cargo install live-mutex --features etcd); only --store memory is available"
        )),
    }
}

/// Binds, tells `ready` (a daemon's readiness pipe), then runs on this thread until SIGINT,
/// SIGTERM or the idle time.
pub(crate) fn serve(
    b: Result<BrokerBuilder, String>,
    ready: impl FnOnce(&Broker),
) -> Result<(), Box<dyn std::error::Error>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Registered before binding so that a signal arriving during start-up still shuts down cleanly.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let broker = live_mutex::daemon::bind_waiting(b?)?;
    // SIGHUP reloads the TLS files, when there are any.
    #[cfg(feature = "tls")]
    let reload = broker
        .tls_reloader()
        .map(|r| move || r.reload().map_err(|e| e.to_string()));
    #[cfg(not(feature = "tls"))]
    let reload: Option<fn() -> Result<(), String>> = None;
    if reload.is_some() {
        signals.add_signal(SIGHUP)?;
    }
    if let Some(addr) = broker.local_addr() {
        tracing::info!(
            "listening on tcp://{addr} (NDJSON) and ws://{addr} (WebSocket); status page \
             http://{addr}/, metrics http://{addr}/metrics"
        );
        if reload.is_some() {
            tracing::info!(
                "and TLS on the same port: tls://{addr}, wss://{addr} (SIGHUP reloads the files)"
            );
        }
    }
    if let Some(p) = broker.uds_path() {
        tracing::info!("listening on unix://{} (NDJSON)", p.display());
    }
    ready(&broker);
    let stop = broker.shutdown_handle();
    let sigs = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP
                && let Some(reload) = &reload
            {
                match reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::warn!("SIGHUP: {e}; the previous certificate stays"),
                }
                continue;
            }
            tracing::info!("signal {sig}, shutting down");
            stop.shutdown();
            break;
        }
    });
    broker.run()?;
    sigs.close();
    Ok(())
}
