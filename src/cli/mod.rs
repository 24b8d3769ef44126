mod bench;
#[cfg(feature = "tokio")]
mod bench_async;
mod daemon;
mod duration;
mod manual;
mod ops;
mod out;
mod run;
mod service;
mod start;
mod top;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use live_mutex::{Client, Error};
use out::{safe, tell};
use std::time::Duration;

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
  NO_COLOR           if set and not empty, no colour (unless --color always)
  LMX_* of `lmx start --help`
                     every option of `lmx start` has one

Durations (--timeout, --ttl, --interval, ...) take a unit: 500ms, 5s, 2m, 1h, 1m30s; a plain
number keeps the flag's unit (ms unless its help says otherwise).

Exit status:
  0      success (lmx run: the command's own status)
  1      the broker said no (release of a lock not held, lock lost, request rejected)
  2      bad command line
  64     bad URL
  69     the broker cannot be reached, or the connection dropped before the lock was held
  70     protocol error (the peer is not a live-mutex broker?)
  75     lmx run/acquire: lock not obtained within --timeout, or busy with --nowait (run -E N: N)
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
    #[arg(long, global = true, env = "LMX_SPAWN", value_parser = clap::builder::BoolishValueParser::new())]
    spawn: bool,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(
        long,
        global = true,
        value_name = "WHEN",
        default_value = "auto",
        env = "LMX_COLOR"
    )]
    color: out::ColorChoice,
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
        /// Expire the lock after this long (30s, 5m; a plain number is ms) [default: never]
        #[arg(long, value_name = "DURATION", value_parser = duration::ms)]
        ttl: Option<Duration>,
        /// Give up (exit 75) if not granted within this long (5s, 500ms; a plain number is ms)
        /// [default: wait forever]
        #[arg(short = 'w', long, value_name = "DURATION", value_parser = duration::ms)]
        timeout: Option<Duration>,
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
    /// Measure a round trip to the broker, and say which version answered
    Ping,
    /// Is a broker running at the address? Its pid, uptime, version, connections and keys
    /// (exit 69 if none answers)
    Status,
    /// Stop the broker at the address (SIGTERM to its pid, which must be on this host and
    /// proven to be the one listening there), and wait until it has exited
    Stop(service::StopArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(manual::CompletionsArgs),
    /// Print the manual page (roff; `lmx man | man -l -`), of lmx or of one subcommand
    Man(manual::ManArgs),
    /// Load-test a broker: C clients doing lock+unlock cycles on K keys (throughput, lock-wait
    /// latency, fairness, mutual-exclusion check; exit 1 on any overlap or error)
    Bench(bench::BenchArgs),
}

pub(crate) fn main() -> i32 {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    out::set_color(cli.color);
    // `--spawn` on the command line where no broker should be started is a mistake worth a
    // word; from the environment (LMX_SPAWN=1 set for a whole session) it is just not used.
    let spawn_given = cli.spawn && spawn_on_command_line(&matches);
    let no_spawn = match &cli.cmd {
        Cmd::Start(_) => Some("lmx start is the broker itself (use --daemon to detach it)"),
        Cmd::Stop(_) => Some("lmx stop would only start a broker to stop it"),
        Cmd::Completions(_) | Cmd::Man(_) => Some("this command talks to no broker"),
        _ => None,
    };
    if let (true, Some(why)) = (spawn_given, no_spawn) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("--spawn does not apply here: {why}"),
            )
            .exit();
    }
    // No thread may exist before a daemon forks: handled before anything else.
    if let Cmd::Start(args) = cli.cmd {
        return start::start(*args, cli.url.as_deref());
    }
    match cli.cmd {
        Cmd::Completions(a) => return manual::completions(a),
        Cmd::Man(a) => return manual::man(a),
        _ => {}
    }
    let spawn = cli.spawn && no_spawn.is_none();
    let url = match (&cli.url, spawn) {
        (Some(u), _) => u.clone(),
        (None, false) => live_mutex::client::url_from_env(),
        (None, true) => match live_mutex::client::spawn_url_from_env() {
            Ok(u) => u,
            Err(e) => return report("", "--spawn", &e),
        },
    };
    match cli.cmd {
        Cmd::Run(args) => run::run(&url, spawn, args),
        Cmd::Bench(args) => bench::bench(&url, spawn, cli.json, args),
        Cmd::Top(args) => top::top(&url, spawn, cli.json, args),
        Cmd::Status => service::status(&url, spawn, cli.json),
        Cmd::Stop(args) => service::stop(&url, cli.json, args),
        Cmd::Start(_) | Cmd::Completions(_) | Cmd::Man(_) => unreachable!("handled above"),
        cmd => ops::op(&url, spawn, cli.json, cmd),
    }
}

/// Whether `--spawn` was typed (on `lmx` or on its subcommand), not taken from `LMX_SPAWN`.
fn spawn_on_command_line(m: &clap::ArgMatches) -> bool {
    let here = m.value_source("spawn") == Some(ValueSource::CommandLine);
    here || m
        .subcommand()
        .is_some_and(|(_, sub)| spawn_on_command_line(sub))
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
    tell!("lmx: {}", safe(&msg));
    code
}
