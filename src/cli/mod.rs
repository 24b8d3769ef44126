mod bench;
#[cfg(feature = "tokio")]
mod bench_async;
mod daemon;
mod ops;
mod run;
mod start;
mod top;

use clap::{Parser, Subcommand};
use live_mutex::{Client, Error};

pub(crate) const EXIT_FAIL: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 64;
pub(crate) const EXIT_UNAVAILABLE: i32 = 69;
pub(crate) const EXIT_SOFTWARE: i32 = 70;
pub(crate) const EXIT_NOT_ACQUIRED: i32 = 75;
pub(crate) const EXIT_LOST: i32 = 76;

const AFTER_HELP: &str = "\
Environment:
  LMX_URL            broker URL (tcp://HOST:PORT, ws://HOST:PORT, unix:///PATH, tls://HOST:PORT,
                     wss://HOST:PORT), like --url; a comma-separated list: the first that answers
  LMX_URL_RANDOM=1   with a list, start at a random broker
  LMX_TLS_CA         CA certificate(s) to trust for tls:// and wss:// (PEM; default: the system's)
  LMX_TLS_CERT, LMX_TLS_KEY
                     a client certificate and its key to present (PEM)
  live_mutex_host, live_mutex_port
                     used when LMX_URL is unset (default tcp://127.0.0.1:6970)
  LMX_AUTH_TOKEN     auth token, unless the URL carries one (?token=T or T@HOST)
  LMX_SPAWN=1        like --spawn; then with no LMX_URL and neither npm variable, the URL is
                     the per-user socket unix://$XDG_RUNTIME_DIR/live-mutex/broker.sock
                     (else on macOS unix://$TMPDIR/live-mutex-$UID/broker.sock,
                     else unix:///tmp/live-mutex-$UID/broker.sock)
  LMX_IDLE_EXIT      seconds a spawned broker stays up with nothing to do (default 300)

Exit status:
  0      success (lmx run: the command's own status)
  1      the broker said no (release of a lock not held, lock lost, request rejected)
  2      bad command line
  64     bad URL
  69     the broker cannot be reached, or the connection dropped before the lock was held
  70     protocol error (the peer is not a live-mutex broker?)
  75     lmx run/acquire: lock not obtained within --timeout, or busy with --nowait
  76     lmx run: the lock was lost while the command ran (TTL expired or broker gone)
  126    lmx run: the command could not be executed
  127    lmx run: the command was not found
  128+N  lmx run: the command was killed by signal N";

/// Take live-mutex locks from the shell, and inspect a broker.
#[derive(Parser, Debug)]
#[command(name = "lmx", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Broker URL [default: $LMX_URL, else tcp://$live_mutex_host:$live_mutex_port]
    #[arg(long, global = true)]
    url: Option<String>,
    /// Machine-readable output (one JSON object)
    #[arg(long, global = true)]
    json: bool,
    /// If no broker answers at a local URL, start one (`lmx start --daemon`) that outlives
    /// this process, exactly one per address however many race
    #[arg(long, global = true, env = "LMX_SPAWN")]
    spawn: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a broker in the foreground until SIGINT/SIGTERM
    Start(Box<start::StartArgs>),
    /// Run a command while holding a lock, like flock(1); exit with the command's status
    #[command(after_help = AFTER_HELP)]
    Run(run::RunArgs),
    /// Take a lock that outlives this process; prints the lock id for `lmx release --id`
    Acquire {
        key: String,
        /// Expire the lock after this many ms [default: never]
        #[arg(long, value_name = "MS")]
        ttl: Option<u64>,
        /// Give up (exit 75) if not granted within this many ms [default: wait forever]
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
    /// Release a lock by id, or every holder of a key with --force
    Release {
        key: String,
        /// The lock id printed by `lmx acquire`
        #[arg(long, required_unless_present = "force", conflicts_with = "force")]
        id: Option<String>,
        /// Release whoever holds the key (an administrator's tool)
        #[arg(long)]
        force: bool,
    },
    /// List keys that are held or waited for
    Ls {
        /// Long listing: each key's holders (who, peer, since when, token, TTL left) and queue
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Show the holders and queue of a key: who (name, peer, pid), since when, token, TTL
    Info { key: String },
    /// Watch the broker live in the terminal: held locks, queues, connections, grants/s
    Top(top::TopArgs),
    /// Show broker-wide counters
    Stats,
    /// Measure a round trip to the broker
    Ping,
    /// Load-test a broker: C clients doing lock+unlock cycles on K keys (throughput, lock-wait
    /// latency, fairness, mutual-exclusion check; exit 1 on any overlap or error)
    Bench(bench::BenchArgs),
}

pub(crate) fn main() -> i32 {
    let cli = Cli::parse();
    // No thread may exist before a daemon forks: handled before anything else.
    if let Cmd::Start(args) = cli.cmd {
        return start::start(*args, cli.url.as_deref());
    }
    let url = match (&cli.url, cli.spawn) {
        (Some(u), _) => u.clone(),
        (None, false) => live_mutex::client::url_from_env(),
        (None, true) => match live_mutex::client::spawn_url_from_env() {
            Ok(u) => u,
            Err(e) => return report("", "--spawn", &e),
        },
    };
    let spawn = cli.spawn;
    match cli.cmd {
        Cmd::Run(args) => run::run(&url, spawn, args),
        Cmd::Start(_) => unreachable!("handled above"),
        Cmd::Bench(args) => bench::bench(&url, cli.json, args),
        Cmd::Top(args) => top::top(&url, cli.json, args),
        cmd => ops::op(&url, spawn, cli.json, cmd),
    }
}

/// Connects, spawning a broker first with `--spawn` (this very binary, so the broker is the
/// same version as the client).
pub(crate) fn connect(url: &str, spawn: bool) -> Result<Client, Error> {
    if !spawn {
        return Client::connect(url);
    }
    let me = std::env::current_exe()?;
    live_mutex::connect_or_spawn_using(url, &me)
}

/// Prints `e` in terms of what the user asked for and picks the documented exit status.
pub(crate) fn report(url: &str, what: &str, e: &Error) -> i32 {
    let (code, msg) = match e {
        Error::Io(_) | Error::ConnectionLost => (EXIT_UNAVAILABLE, format!("broker at {url}: {e}")),
        Error::Busy => (EXIT_NOT_ACQUIRED, format!("{what}: busy")),
        Error::WaitTimedOut => (EXIT_NOT_ACQUIRED, format!("{what}: timed out")),
        Error::BrokerSilent => (EXIT_UNAVAILABLE, format!("broker at {url}: {e}")),
        Error::Config(_) => (EXIT_USAGE, e.to_string()),
        Error::Spawn(_) => (EXIT_UNAVAILABLE, e.to_string()),
        Error::Protocol(_) => (EXIT_SOFTWARE, format!("broker at {url}: {e}")),
        _ => (EXIT_FAIL, format!("{what}: {e}")),
    };
    eprintln!("lmx: {msg}");
    code
}
