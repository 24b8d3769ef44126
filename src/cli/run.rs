//! `lmx run`: hold a lock for exactly the lifetime of a command.

use super::out::{safe, tell};
use super::{EXIT_LOST, report};
use clap::Args;
use live_mutex::{Error, LockOptions, Mode, Ttl};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
#[command(
    override_usage = "lmx run [OPTIONS] KEY CMD [ARGS]...\n       lmx run [OPTIONS] KEY -c 'SHELL COMMAND'"
)]
pub(crate) struct RunArgs {
    /// The lock's key
    key: String,
    /// Let the lock expire this long after its last renewal (5s, 500ms; a plain number is ms);
    /// lmx renews it every TTL/3 while the command runs [default: no expiry, the lock lives as
    /// long as lmx's connection]
    #[arg(long, value_name = "DURATION", value_parser = ttl)]
    ttl: Option<Duration>,
    /// Give up (exit 75, or -E's code) if the lock is not granted within this long (5s, 2m,
    /// 500ms; a plain number is ms) [default: wait forever]
    #[arg(short = 'w', long, visible_alias = "wait", value_name = "DURATION", value_parser = super::duration::ms)]
    timeout: Option<Duration>,
    /// Stop renewing the lock this long after it was granted (needs --ttl): a command that runs
    /// for longer loses the lock when the TTL then runs out (see --kill-on-loss)
    #[arg(long, value_name = "DURATION", value_parser = super::duration::ms, requires = "ttl")]
    max_hold: Option<Duration>,
    /// Allow up to N holders of the key at once (a semaphore)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max: Option<u32>,
    /// Take a shared (read) lock: other --shared runs may hold it at the same time
    #[arg(short = 's', long, visible_alias = "read")]
    shared: bool,
    /// Take an exclusive lock (the default)
    #[arg(short = 'x', long, visible_alias = "write", conflicts_with = "shared")]
    exclusive: bool,
    /// Do not wait: exit 75 (or -E's code) at once if the key is busy; wins over --timeout,
    /// as in flock(1)
    #[arg(short = 'n', long, visible_alias = "nonblock")]
    nowait: bool,
    /// Exit with this status when the lock is not obtained (busy with --nowait, or --timeout
    /// reached) [default: 75]
    #[arg(short = 'E', long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=255))]
    conflict_exit_code: Option<i32>,
    /// If the lock is lost while the command runs, terminate it (SIGTERM, SIGKILL 5 s later)
    #[arg(long)]
    kill_on_loss: bool,
    /// Run this command line with `sh -c` instead of CMD ARGS
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL COMMAND",
        conflicts_with = "cmd"
    )]
    shell: Option<String>,
    /// The command and its arguments (no `--` needed: everything after CMD is its own)
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell"
    )]
    cmd: Vec<String>,
}

/// `--ttl`: the broker needs at least 3 ms to renew at TTL/3.
fn ttl(s: &str) -> Result<Duration, String> {
    let d = super::duration::ms(s)?;
    if d < Duration::from_millis(3) {
        return Err(format!("{s}: a TTL must be at least 3 ms"));
    }
    Ok(d)
}

/// How often `--max-hold` looks whether the lock's last TTL has run out.
const EXPIRY_CHECK: Duration = Duration::from_millis(10);

enum Ev {
    Exited,
    Lost,
    Signal(i32),
}

pub(crate) fn run(url: &str, spawn: bool, a: RunArgs) -> i32 {
    let client = match super::connect(url, spawn) {
        Ok(c) => c,
        Err(e) => return report(url, "connect", &e),
    };
    let ttl = a.ttl;
    let mut opts = LockOptions::new()
        .ttl(ttl.map_or(Ttl::Never, Ttl::After))
        .mode(if a.shared {
            Mode::Read
        } else {
            Mode::Exclusive
        });
    if let Some(t) = a.timeout {
        opts = opts.timeout(t);
    }
    if a.nowait {
        opts = opts.try_only();
        opts.wait_timeout = None;
    }
    if let Some(n) = a.max {
        opts = opts.max(n);
    }
    let guard = match client.lock_with(&a.key, &opts) {
        Ok(g) => g,
        Err(Error::Busy | Error::WaitTimedOut) => {
            let why = match a.timeout {
                Some(t) if !a.nowait => format!("not granted within {t:?}"),
                _ => "is busy".to_string(),
            };
            tell!("lmx: lock {} {why}", safe(&a.key));
            return a.conflict_exit_code.unwrap_or(super::EXIT_NOT_ACQUIRED);
        }
        Err(e) => return report(url, &format!("lock {}", safe(&a.key)), &e),
    };
    let granted = Instant::now();
    let (tx, rx) = mpsc::channel();
    let lost_tx = tx.clone();
    guard.on_lost(move || _ = lost_tx.send(Ev::Lost));

    let (program, args) = match &a.shell {
        Some(line) => ("sh", vec!["-c".to_string(), line.clone()]),
        None => (a.cmd[0].as_str(), a.cmd[1..].to_vec()),
    };
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env("LMX_KEY", &a.key)
        .env("LMX_LOCK_ID", guard.id());
    cmd.env(
        "LMX_FENCING_TOKEN",
        guard
            .fencing_token()
            .map(|t| t.to_string())
            .unwrap_or_default(),
    );
    die_with_parent(&mut cmd);
    forward_signals(tx.clone());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tell!("lmx: {program}: {e}");
            let _ = guard.unlock();
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id() as libc::pid_t;
    std::thread::spawn(move || {
        // Wait without reaping, so the pid cannot be recycled while signals are still forwarded.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        while unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        } != 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        let _ = tx.send(Ev::Exited);
    });

    let period = ttl.map(|t| t / 3);
    let mut next_extend = period.map(|p| Instant::now() + p);
    // --max-hold: the last renewal is the one due before this.
    let renew_until = a.max_hold.map(|m| granted + m);
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        let wake = [next_extend, kill_at].into_iter().flatten().min();
        let ev = match wake {
            Some(w) => rx.recv_timeout(w.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let mut now_lost = false;
        match ev {
            Ok(Ev::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Ev::Signal(s)) => unsafe { _ = libc::kill(pid, s) },
            Ok(Ev::Lost) => now_lost = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if kill_at.is_some_and(|k| k <= now) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    kill_at = None;
                }
                if let (Some(p), Some(n)) = (period, next_extend)
                    && n <= now
                {
                    if renew_until.is_some_and(|u| now >= u) {
                        // Renewals have stopped: look again until the guard's clock (which
                        // starts each TTL when its request left) says the TTL ran out.
                        now_lost = guard.is_lost();
                        next_extend = Some(now + EXPIRY_CHECK);
                    } else {
                        match guard.extend(ttl) {
                            Err(Error::LockLost | Error::ConnectionLost) => now_lost = true,
                            // A slow broker: try again soon; `is_lost` notices if the TTL ran out.
                            Err(_) => now_lost = guard.is_lost(),
                            Ok(()) => {}
                        }
                        next_extend = Some(Instant::now() + p);
                    }
                }
            }
        }
        if now_lost && !lost {
            lost = true;
            next_extend = None;
            tell!(
                "lmx: lock {} was lost while the command was running",
                safe(&a.key)
            );
            if a.kill_on_loss {
                unsafe { libc::kill(pid, libc::SIGTERM) };
                kill_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }
    let code = match child.wait() {
        Ok(st) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(1),
        Err(e) => {
            tell!("lmx: waiting for {program}: {e}");
            1
        }
    };
    if !lost {
        match guard.unlock() {
            Ok(()) => return code,
            Err(Error::LockLost) => {
                tell!(
                    "lmx: lock {} had been lost before the command ended",
                    safe(&a.key)
                )
            }
            Err(e) => {
                // The command is done; an unlock that did not go through is released by the
                // broker when this process's connection closes.
                tell!("lmx: releasing lock {}: {e}", safe(&a.key));
                return code;
            }
        }
    } else {
        drop(guard);
    }
    tell!(
        "lmx: the command exited with status {code}; exiting {EXIT_LOST} because its lock was lost"
    );
    EXIT_LOST
}

/// On Linux and FreeBSD the command is killed if lmx dies: lmx's death releases the lock, and
/// the command must not go on believing it is protected. (macOS has no parent-death signal.)
fn die_with_parent(cmd: &mut Command) {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if parent_death_signal(libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(EXIT_LOST);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let _ = cmd;
}

/// Asks the kernel to send `sig` to this process when its parent exits.
#[cfg(target_os = "linux")]
unsafe fn parent_death_signal(sig: libc::c_int) -> libc::c_int {
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig) }
}

/// Asks the kernel to send `sig` to this process when its parent exits (procctl(2), FreeBSD
/// 11.2 and later; id 0 is the calling process).
#[cfg(target_os = "freebsd")]
unsafe fn parent_death_signal(mut sig: libc::c_int) -> libc::c_int {
    unsafe {
        libc::procctl(
            libc::P_PID,
            0,
            libc::PROC_PDEATHSIG_CTL,
            (&raw mut sig).cast(),
        )
    }
}

/// SIGINT, SIGTERM and SIGHUP go to the command, which decides how to end; lmx itself stays
/// to release the lock once it has. Registered before the command starts so that none is
/// missed; exec resets the handlers in the child.
fn forward_signals(tx: mpsc::Sender<Ev>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut sigs) => {
            std::thread::spawn(move || {
                for s in sigs.forever() {
                    if tx.send(Ev::Signal(s)).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tell!("lmx: cannot forward signals: {e}"),
    }
}
