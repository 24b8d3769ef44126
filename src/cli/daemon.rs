//! `lmx start --daemon`: a broker detached from the process that started it.
//!
//! Classic double fork: the first child calls `setsid` (no controlling terminal, its own
//! session, so the terminal's or the CI step's hang-up and process-group signals do not reach
//! it) and forks again, so the broker is not a session leader and can never reacquire a
//! terminal. The broker's stdio goes to `/dev/null` or `--log`. The grandchild reports over a
//! pipe once it listens (or why it cannot), and only then does the original process exit 0:
//! when `lmx start --daemon` returns, clients can connect.
//!
//! The fork happens before this process has any thread (only clap has run), so the children
//! inherit no lock held by a thread that does not exist in them.

use super::out::tell;
use super::start::{Listen, StartArgs, serve};
use super::{EXIT_UNAVAILABLE, EXIT_USAGE};
use live_mutex::Client;
use live_mutex::broker::{BrokerBuilder, BrokerError};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

/// What the broker writes on the readiness pipe.
const READY: &str = "OK\n";
/// Prefix of the reply when another broker holds the address.
const IN_USE: &str = "IN-USE ";

pub(crate) fn daemon(
    a: &StartArgs,
    listen: Listen,
    configure: impl Fn(BrokerBuilder) -> Result<BrokerBuilder, String>,
) -> i32 {
    let url = listen.url();
    // Relative to where lmx was started, not to `/` where the daemon runs.
    let log = match a.log.as_deref().map(std::path::absolute).transpose() {
        Ok(l) => l,
        Err(e) => {
            tell!("lmx start: --log: {e}");
            return EXIT_USAGE;
        }
    };
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        tell!("lmx start: pipe: {}", std::io::Error::last_os_error());
        return EXIT_UNAVAILABLE;
    }
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => {
            tell!("lmx start: fork: {}", std::io::Error::last_os_error());
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
                        let mut w = std::fs::File::from(wr);
                        let e = std::io::Error::last_os_error();
                        let _ = write!(w, "ERR fork: {e}");
                        libc::_exit(1);
                    }
                    _ => libc::_exit(0),
                }
            }
            let mut w = std::fs::File::from(wr);
            if let Err(e) = redirect_stdio(log.as_deref()) {
                let _ = write!(
                    w,
                    "ERR --log {}: {e}",
                    a.log
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                );
                unsafe { libc::_exit(1) };
            }
            let mut w = Some(w);
            let r = serve(configure(listen.builder()), |_| {
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
            let _ = std::fs::File::from(rd).read_to_string(&mut reply);
            report(&url, &reply)
        }
    }
}

/// The original process: says what became of the daemon, and exits accordingly.
fn report(url: &str, reply: &str) -> i32 {
    if reply == READY {
        tell!("lmx: broker listening on {url} (detached)");
        return 0;
    }
    if let Some(why) = reply.strip_prefix(IN_USE) {
        // Idempotent only if what holds the address is really a broker.
        return match Client::connect(url).and_then(|c| c.ping()) {
            Ok(_) => {
                tell!("lmx: a broker already answers at {url}");
                0
            }
            Err(e) => {
                tell!("lmx start: {why}, and it does not answer as a broker: {e}");
                EXIT_UNAVAILABLE
            }
        };
    }
    match reply.strip_prefix("ERR ") {
        Some(why) => tell!("lmx start: {why}"),
        None => tell!("lmx start: the daemon exited before it listened (see --log)"),
    }
    EXIT_UNAVAILABLE
}

/// stdin from `/dev/null`; stdout and stderr to `log` (appended) or `/dev/null`.
fn redirect_stdio(log: Option<&std::path::Path>) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
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
