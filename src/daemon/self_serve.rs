//! Zero install: a program that links the broker starts the shared broker from its own
//! executable when no `lmx` is installed.
//!
//! [`connect_or_spawn`](crate::connect_or_spawn) (and so `#[live_mutex::serial]`) runs the
//! current executable again with [`MARKER`] in its environment. A function this crate places in
//! the executable's initialiser table (`.init_array`, `__mod_init_func` on macOS: what the
//! `ctor` crate does) runs before `main` in every process of that executable; when it finds the
//! marker it never returns: it detaches a broker exactly as `lmx start --daemon --idle-exit N`
//! does ([`detach`](super::detach)) and exits with that command's status, so the program's own
//! `main` (a test harness, say) never runs in that process. Without the marker it only notes
//! that it ran, which is how the spawner knows this executable can serve: a program re-run
//! without that initialiser (an unknown platform) would run its `main` instead, so the
//! spawner never tries then. As a second guard the re-run also gets the argument
//! `--live-mutex-broker`, which a test harness refuses.
//!
//! Limits: the broker process is a copy of the test executable (`ps` shows it with
//! `--live-mutex-broker`); it keeps running that file's code after a rebuild replaces it, until
//! its idle exit; and it exists only on Linux, Android, the BSDs, illumos and macOS.

use super::{EXIT_UNAVAILABLE, bind_waiting, detach};
use crate::client::{LocalAddr, spawn_target};
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Environment variable of the re-run executable: the URL (without token) to serve.
pub const MARKER: &str = "LMX_SELF_SERVE_URL";
/// Environment variable of the re-run executable: the idle exit, in seconds.
pub const IDLE: &str = "LMX_SELF_SERVE_IDLE";
/// The argument the re-run gets, so that a harness run by mistake refuses to start.
pub const ARG: &str = "--live-mutex-broker";

/// Set by [`before_main`] in every process of an executable that has the initialiser.
static RAN: AtomicBool = AtomicBool::new(false);

#[used]
#[cfg_attr(
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    ),
    unsafe(link_section = ".init_array")
)]
#[cfg_attr(
    target_vendor = "apple",
    unsafe(link_section = "__DATA,__mod_init_func")
)]
static BEFORE_MAIN: extern "C" fn() = before_main;

extern "C" fn before_main() {
    RAN.store(true, Ordering::Relaxed);
    let Some(url) = std::env::var_os(MARKER) else {
        return;
    };
    // Nothing may unwind out of an initialiser.
    let code = std::panic::catch_unwind(|| serve(url)).unwrap_or(EXIT_UNAVAILABLE);
    unsafe { libc::_exit(code) }
}

/// Whether this process's executable starts a broker when re-run with [`MARKER`].
pub fn available() -> bool {
    RAN.load(Ordering::Relaxed)
}

/// The path to re-run: the running executable itself (on Linux even if its file has since
/// been replaced or removed).
pub fn executable() -> std::io::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        return Ok("/proc/self/exe".into());
    }
    std::env::current_exe()
}

/// The daemon side: detach a broker for `url` (the token comes in `LMX_AUTH_TOKEN`).
fn serve(url: OsString) -> i32 {
    const WHO: &str = "live-mutex broker";
    let Some(url) = url.to_str() else {
        eprintln!("{WHO}: {MARKER} is not UTF-8");
        return EXIT_UNAVAILABLE;
    };
    let idle = std::env::var(IDLE).ok().and_then(|v| v.parse::<u64>().ok());
    let token = std::env::var("LMX_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let builder = match spawn_target(url) {
        Ok(LocalAddr::Unix(p)) => crate::broker::Broker::builder().no_tcp().uds(p),
        Ok(LocalAddr::Tcp(a)) => crate::broker::Broker::builder().tcp(a),
        Err(e) => {
            eprintln!("{WHO}: {e}");
            return EXIT_UNAVAILABLE;
        }
    }
    .auth_token(token)
    .idle_exit(idle.filter(|&s| s > 0).map(Duration::from_secs));
    detach(url, WHO, None, |ready| {
        // `main` would have done this: a peer that went away must not kill the broker.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let stop_on = block_stop_signals();
        let broker = bind_waiting(builder)?;
        ready();
        let stop = broker.shutdown_handle();
        // SIGTERM and SIGINT shut down cleanly (the socket is removed), as with `lmx start`.
        std::thread::spawn(move || {
            let mut sig = 0;
            if unsafe { libc::sigwait(&stop_on, &mut sig) } == 0 {
                stop.shutdown();
            }
        });
        broker.run()?;
        Ok(())
    })
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread it starts), for one
/// thread to `sigwait` on.
fn block_stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
