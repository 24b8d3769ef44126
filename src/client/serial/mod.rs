//! `serial`/`parallel`, as functions and as what `#[live_mutex::serial]` and
//! `#[live_mutex::parallel]` expand to: broker locks held for a test, shared by every test
//! process of a host (or of a CI job's `LMX_URL`).
//!
//! `serial` takes keys exclusively; `parallel` takes them shared (a read lock), so parallel
//! tests of a key run together but never alongside a serial one. Several keys are taken
//! all-or-nothing from the caller's view, one at a time in sorted order (the order the broker's
//! acquire-many uses), so overlapping key sets never deadlock. Nested takes by the same test
//! proceed ([`held`] says what "the same test" is).

mod held;
#[cfg(feature = "tokio")]
mod scope;
mod wait;

pub use held::SerialGuard;

use super::spawn::{find_starter, spawn_target, spawn_url_from_env, spawn_with};
use super::{Client, Result};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The one blocking client the takes of a process share.
static PROCESS_CLIENT: Mutex<Option<Client>> = Mutex::new(None);

/// The process's client: connected with [`connect_or_spawn`](super::connect_or_spawn) to
/// [`spawn_url_from_env`] on first use; a remote `LMX_URL` is connected to, never spawned.
/// `hint` is an `lmx` binary to prefer to `PATH` (the attribute passes `CARGO_BIN_EXE_lmx`).
fn process_client(hint: Option<&str>) -> Result<Client> {
    let mut slot = PROCESS_CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = &*slot {
        return Ok(c.clone());
    }
    let url = spawn_url_from_env()?;
    let c = match spawn_target(&url) {
        Ok(_) => spawn_with(&url, || find_starter(hint.map(Path::new)))?,
        Err(_) => Client::connect(&url)?,
    };
    *slot = Some(c.clone());
    Ok(c)
}

/// A take on the calling thread (blocking), by the current owner.
fn take_blocking(
    keys: &[&str],
    shared: bool,
    timeout: Option<Duration>,
    hint: Option<&str>,
    test: &str,
) -> Result<SerialGuard> {
    let (mut guard, missing) = held::begin(held::current_owner(), keys, shared)?;
    if missing.is_empty() {
        return Ok(guard);
    }
    let client = process_client(hint)?;
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    for key in missing {
        let t = wait::Take {
            key: &key,
            shared,
            deadline,
            test,
        };
        let g = wait::take(&client, &t)?;
        guard.add(key, shared, held::Backing::Blocking(g));
    }
    Ok(guard)
}

/// The name a function-form take reports in its notices: the thread's (`cargo test` names each
/// test's thread after the test).
fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this process")
        .to_string()
}

/// Holds `key` until the guard drops, across every process that takes it: the cross-process
/// counterpart of `serial_test`'s `#[serial]`. One client per process, connected with
/// [`connect_or_spawn`](super::connect_or_spawn) to [`spawn_url_from_env`] (by default the
/// per-user socket, a broker started on first use); a remote `LMX_URL` is connected to as is.
/// The lock never expires: it lasts until the guard drops or the process dies.
///
/// A test that already holds `key` (see [`SerialGuard`]) gets it again at once; a test holding
/// it through [`parallel`] gets [`Error::Serial`](super::Error::Serial) at once (it would wait
/// for itself). After 3 s of waiting (`LMX_SERIAL_NOTICE_MS`) one line on stderr names the
/// holder.
///
/// ```no_run
/// #[test]
/// fn migrates() {
///     let _db = live_mutex::serial("db").unwrap();
///     // ... no other test process touches the database now ...
/// }
/// ```
pub fn serial(key: &str) -> Result<SerialGuard> {
    take_blocking(&[key], false, None, None, &thread_name())
}

/// [`serial`] for several keys, all-or-nothing, so two callers with overlapping keys can never
/// deadlock on each other. Keys the test already holds are counted, not requested again.
///
/// ```no_run
/// let _g = live_mutex::client::serial_many(&["db", "cache"])?;
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn serial_many<S: AsRef<str>>(keys: &[S]) -> Result<SerialGuard> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    take_blocking(&keys, false, None, None, &thread_name())
}

/// Holds `key` shared until the guard drops: any number of `parallel` holders of a key at once,
/// never alongside a [`serial`] one (a read lock). The counterpart of `serial_test`'s
/// `#[parallel]`, across processes.
///
/// ```no_run
/// let _r = live_mutex::client::parallel("db")?; // other readers of "db" may run now, no writer
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn parallel(key: &str) -> Result<SerialGuard> {
    take_blocking(&[key], true, None, None, &thread_name())
}

/// [`parallel`] for several keys, all-or-nothing.
///
/// ```no_run
/// let _r = live_mutex::client::parallel_many(&["db", "cache"])?;
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn parallel_many<S: AsRef<str>>(keys: &[S]) -> Result<SerialGuard> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    take_blocking(&keys, true, None, None, &thread_name())
}

/// What `#[live_mutex::serial(..)]` and `#[live_mutex::parallel(..)]` pass: the keys, the mode,
/// the `timeout` in ms, the `lmx` built by the same package (`CARGO_BIN_EXE_lmx`, which only
/// this crate's own tests have), and the test's path for messages.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
#[allow(clippy::exhaustive_structs)] // built by the attribute's expansion, in the user's crate
pub struct __Attr {
    pub keys: &'static [&'static str],
    pub shared: bool,
    pub timeout_ms: Option<u64>,
    pub lmx_hint: Option<&'static str>,
    pub test: &'static str,
}

type Attr = __Attr;

impl __Attr {
    fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// The attribute's take failed: the test fails with what the attribute was and why.
fn attr_failed(a: Attr, e: super::Error) -> ! {
    let form = if a.shared { "parallel" } else { "serial" };
    panic!("#[live_mutex::{form}] on {}: {e}", a.test)
}

/// What the attribute expands to on a plain `fn`: takes the keys on this thread, blocking.
#[doc(hidden)]
pub fn __serial_attr(a: __Attr) -> SerialGuard {
    take_blocking(a.keys, a.shared, a.timeout(), a.lmx_hint, a.test)
        .unwrap_or_else(|e| attr_failed(a, e))
}

/// What the attribute expands to on an `async fn`: runs `body` holding the keys. With the
/// `tokio` feature inside a tokio runtime the keys are awaited there (the runtime keeps running
/// other tasks meanwhile); otherwise they are taken blocking before `body` starts.
#[doc(hidden)]
pub async fn __serial_async<F: std::future::Future>(a: __Attr, body: F) -> F::Output {
    #[cfg(feature = "tokio")]
    return scope::run(a, body).await;
    #[cfg(not(feature = "tokio"))]
    {
        let _g = __serial_attr(a);
        body.await
    }
}
