//! A broker detached from the process that started it: what `lmx start --daemon` runs, and
//! what a test executable runs when it starts the shared broker itself ([`self_serve`](crate::daemon::self_serve)).
//!
//! Classic double fork: the first child calls `setsid` (no controlling terminal, its own
//! session, so the terminal's or the CI step's hang-up and process-group signals do not reach
//! it) and forks again, so the broker is not a session leader and can never reacquire a
//! terminal. The broker's stdio goes to `/dev/null` or a log file. The grandchild reports over
//! a pipe once it listens (or why it cannot), and only then does the original process return:
//! when [`detach`](crate::daemon::detach) returns 0, clients can connect.
//!
//! The fork must happen before the calling process has any other thread (`lmx`: only clap has
//! run; [`self_serve`](crate::daemon::self_serve): before `main`), so the children inherit no lock held by a thread that
//! does not exist in them.

pub mod self_serve;

use crate::broker::{Broker, BrokerBuilder, BrokerError};
use crate::client::Client;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Exit status of [`detach`] when no broker could be started (sysexits' `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// What the broker writes on the readiness pipe.
const READY: &str = "OK\n";
/// Prefix of the reply when another broker holds the address.
const IN_USE: &str = "IN-USE ";

/// The error a serving function returns (any, shown as text to the starter).
pub type ServeError = Box<dyn std::error::Error>;

/// Forks the broker off as a daemon and returns the exit status the starter should exit with:
/// 0 once the broker listens at `url` (or another broker already answers there), else
/// [`EXIT_UNAVAILABLE`] with the reason on stderr, prefixed with `who`.
///
/// `serve` runs in the daemon: it binds, calls the `ready` it is given once it listens, and
/// runs the broker until it exits. `log` (absolute) receives the daemon's stdout and stderr,
/// else `/dev/null`.
pub fn detach(
    url: &str,
    who: &str,
    log: Option<&Path>,
    serve: impl FnOnce(&mut dyn FnMut()) -> Result<(), ServeError>,
) -> i32 {
    // Close-on-exec on every OS, so that nothing the broker runs holds the pipe open.
    let (mut rd, wr) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{who}: pipe: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("{who}: fork: {}", std::io::Error::last_os_error());
            EXIT_UNAVAILABLE
        }
        0 => {
            drop(rd);
            // First child: a new session, then fork again and leave.
            unsafe {
                libc::setsid();
                match libc::fork() {
                    0 => {}
                    -1 => {
                        let mut w = wr;
                        let e = std::io::Error::last_os_error();
                        let _ = write!(w, "ERR fork: {e}");
                        libc::_exit(1);
                    }
                    _ => libc::_exit(0),
                }
            }
            let mut w = wr;
            if let Err(e) = redirect_stdio(log) {
                let shown = log.map_or(String::new(), |p| p.display().to_string());
                let _ = write!(w, "ERR --log {shown}: {e}");
                unsafe { libc::_exit(1) };
            }
            let mut w = Some(w);
            let r = serve(&mut || {
                if let Some(mut w) = w.take() {
                    let _ = w.write_all(READY.as_bytes());
                }
                // The broker no longer needs where it was started from.
                let _ = std::env::set_current_dir("/");
            });
            if let (Err(e), Some(mut w)) = (r, w) {
                let msg = match e.downcast_ref::<BrokerError>() {
                    Some(BrokerError::UdsInUse(_)) => format!("{IN_USE}{e}"),
                    Some(BrokerError::Bind { source, .. })
                        if source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        format!("{IN_USE}{e}")
                    }
                    _ => format!("ERR {e}"),
                };
                let _ = w.write_all(msg.as_bytes());
                unsafe { libc::_exit(1) };
            }
            unsafe { libc::_exit(0) }
        }
        child => {
            drop(wr);
            // The first child exits at once; reap it so that it leaves no zombie.
            let mut st = 0;
            while unsafe { libc::waitpid(child, &mut st, 0) } == -1
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            let mut reply = String::new();
            let _ = rd.read_to_string(&mut reply);
            report(url, who, &reply)
        }
    }
}

/// The original process: says what became of the daemon, and returns the exit status.
fn report(url: &str, who: &str, reply: &str) -> i32 {
    if reply == READY {
        eprintln!("{who}: broker listening on {url} (detached)");
        return 0;
    }
    if let Some(why) = reply.strip_prefix(IN_USE) {
        // Idempotent only if what holds the address is really a broker.
        return match Client::connect(url).and_then(|c| c.ping()) {
            Ok(_) => {
                eprintln!("{who}: a broker already answers at {url}");
                0
            }
            Err(e) => {
                eprintln!("{who}: {why}, and it does not answer as a broker: {e}");
                EXIT_UNAVAILABLE
            }
        };
    }
    match reply.strip_prefix("ERR ") {
        Some(why) => eprintln!("{who}: {why}"),
        None => eprintln!("{who}: the daemon exited before it listened (see its log)"),
    }
    EXIT_UNAVAILABLE
}

/// stdin from `/dev/null`; stdout and stderr to `log` (appended) or `/dev/null`.
fn redirect_stdio(log: Option<&Path>) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let out = match log {
        // Never through a symlink (see the broker's socket lock file).
        Some(p) => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)?,
        None => null.try_clone()?,
    };
    for (from, to) in [(&null, 0), (&out, 1), (&out, 2)] {
        if unsafe { libc::dup2(from.as_raw_fd(), to) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds; a Unix socket whose lock file is held by a broker that does not answer (one still
/// starting, or one exiting after its idle time) is waited for, briefly.
pub fn bind_waiting(b: BrokerBuilder) -> Result<Broker, BrokerError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match b.clone().bind() {
            Err(BrokerError::UdsInUse(p))
                if Instant::now() < deadline
                    && std::os::unix::net::UnixStream::connect(&p).is_err() =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}
