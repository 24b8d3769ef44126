//! `lmx start`: a broker in the foreground until SIGINT/SIGTERM.

use clap::Args;
use live_mutex::broker::{Broker, Keepalive};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct StartArgs {
    /// Interface to listen on (NDJSON and WebSocket on the same port)
    #[arg(long, env = "live_mutex_host", default_value = "127.0.0.1")]
    host: String,
    /// TCP port
    #[arg(long, env = "live_mutex_port", default_value_t = 6970)]
    port: u16,
    /// Also listen on this Unix socket (NDJSON)
    #[arg(long, value_name = "PATH")]
    uds: Option<PathBuf>,
    /// TTL in ms of locks whose request does not say [default: no expiry]
    #[arg(long, value_name = "MS")]
    default_ttl: Option<u64>,
    /// File mode of the Unix socket, in octal
    #[arg(long, value_name = "MODE", default_value = "600")]
    uds_mode: String,
    /// Shared secret every client must present first (NDJSON `auth` message, or the
    /// WebSocket upgrade's `Authorization: Bearer` header)
    #[arg(
        long,
        env = "LMX_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    auth_token: Option<String>,
    /// Allow `force` unlocks only over the Unix socket or from authenticated connections
    #[arg(long)]
    restrict_admin: bool,
    /// Release a grant pushed to an npm client that is not acknowledged within MS [default:
    /// never, the lock's TTL applies]. RISK: an npm client whose event loop is blocked for
    /// longer than MS still takes the late grant and believes it holds the key while the next
    /// waiter holds it too. Ghosts of abandoned try-locks are cleared without it.
    #[arg(long, value_name = "MS")]
    ack_timeout: Option<u64>,
    /// Microseconds to keep polling without sleeping after a busy turn (0: never spin)
    #[arg(long, value_name = "US", default_value_t = 30)]
    spin_us: u64,
    /// Most connections at once; more are closed as they arrive
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
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
    /// Seconds of silence before a TCP connection is probed (TCP keepalive)
    #[arg(long, value_name = "S", default_value_t = 10)]
    keepalive_idle: u64,
    /// Seconds between keepalive probes
    #[arg(long, value_name = "S", default_value_t = 5)]
    keepalive_interval: u64,
    /// Unanswered keepalive probes before the connection is dropped and its locks released
    #[arg(long, value_name = "N", default_value_t = 3)]
    keepalive_count: u32,
    /// Seconds that sent data may stay unacknowledged before the connection is dropped
    /// (TCP_USER_TIMEOUT) [default: idle + interval × count]
    #[arg(long, value_name = "S")]
    tcp_user_timeout: Option<u64>,
    /// Leave TCP keepalive off (a vanished host then keeps its locks until their TTL)
    #[arg(long)]
    no_keepalive: bool,
}

pub(crate) fn start(a: StartArgs) -> i32 {
    match serve(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lmx start: {e}");
            super::EXIT_UNAVAILABLE
        }
    }
}

fn serve(a: StartArgs) -> Result<(), Box<dyn std::error::Error>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let addr = (a.host.as_str(), a.port)
        .to_socket_addrs()?
        .next()
        .ok_or("host has no address")?;
    // Registered before binding so that a signal arriving during start-up still shuts down cleanly.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let uds_mode = u32::from_str_radix(&a.uds_mode, 8)
        .map_err(|_| "--uds-mode takes an octal mode such as 600")?;
    let mut b = Broker::builder()
        .tcp(addr)
        .default_ttl(a.default_ttl.map(Duration::from_millis))
        .uds_mode(uds_mode)
        .auth_token(a.auth_token)
        .restrict_admin(a.restrict_admin)
        .max_connections(a.max_connections)
        .spin(Duration::from_micros(a.spin_us))
        .allow_hosts(a.allow_host)
        .allow_origins(a.allow_origin)
        .keepalive((!a.no_keepalive).then(|| {
            let mut k = Keepalive::new(
                Duration::from_secs(a.keepalive_idle.max(1)),
                Duration::from_secs(a.keepalive_interval.max(1)),
                a.keepalive_count.max(1),
            );
            if let Some(t) = a.tcp_user_timeout {
                k.user_timeout = Duration::from_secs(t);
            }
            k
        }));
    if let Some(p) = &a.uds {
        b = b.uds(p);
    }
    if let Some(ms) = a.ack_timeout {
        b = b.ack_timeout(Duration::from_millis(ms));
    }
    let broker = b.bind()?.spawn()?;
    if let Some(addr) = broker.local_addr() {
        eprintln!("lmx: listening on tcp://{addr} (NDJSON) and ws://{addr} (WebSocket)");
    }
    if let Some(p) = broker.uds_path() {
        eprintln!("lmx: listening on unix://{} (NDJSON)", p.display());
    }
    let sig = signals.forever().next();
    eprintln!("lmx: signal {}, shutting down", sig.unwrap_or(0));
    broker.shutdown();
    broker.join()?;
    Ok(())
}
