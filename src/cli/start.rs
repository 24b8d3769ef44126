//! `lmx start`: a broker in the foreground until SIGINT/SIGTERM.

use clap::Args;
use live_mutex::broker::Broker;
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
    let mut b = Broker::builder()
        .tcp(addr)
        .default_ttl(a.default_ttl.map(Duration::from_millis));
    if let Some(p) = &a.uds {
        b = b.uds(p);
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
