//! Waiting for a key the way a test runner's user wants: silent when it is quick, one line on
//! stderr naming the holder when it is not, and a time-out whose error names the holder too.

use super::super::{Client, Error, LockGuard, LockInfo, LockOptions, Mode, Result, Ttl};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a take waits before it says on stderr what it waits for: `LMX_SERIAL_NOTICE_MS`,
/// else 3 s.
pub(crate) fn notice_after() -> Duration {
    std::env::var("LMX_SERIAL_NOTICE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_millis)
}

/// The options of a serial (`shared: false`) or parallel take: held until released, never
/// expiring.
fn options(shared: bool) -> LockOptions {
    LockOptions::new()
        .ttl(Ttl::Never)
        .mode(if shared { Mode::Read } else { Mode::Exclusive })
}

fn what(key: &str, shared: bool) -> String {
    format!("{}({key:?})", if shared { "parallel" } else { "serial" })
}

/// Who holds the key, from the broker's `lock-info`: name, pid, peer and hold time of each
/// holder (at most three). Text from the network is shown escaped.
pub(crate) fn holders(info: Result<LockInfo>) -> String {
    let info = match info {
        Ok(i) => i,
        Err(e) => return format!("a holder the broker would not describe ({e})"),
    };
    if info.holders.is_empty() {
        return "nobody any more (it was just released)".into();
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut parts: Vec<String> = info
        .holders
        .iter()
        .take(3)
        .map(|h| {
            let w = &h.who;
            let mut s = match &w.name {
                Some(n) => format!("{:?}", n.as_ref()),
                None => "a client".into(),
            };
            if let Some(pid) = w.pid {
                s += &format!(" (pid {pid}");
            } else {
                s += " (pid unknown";
            }
            if let Some(peer) = &w.peer {
                s += &format!(", peer {:?}", peer.as_ref());
            }
            s += ")";
            if let Some(since) = h.held_since_ms {
                let held = now_ms.saturating_sub(since) as f64 / 1000.0;
                s += &format!(" for {held:.1} s");
            }
            s
        })
        .collect();
    if info.holders.len() > 3 {
        parts.push(format!("{} more", info.holders.len() - 3));
    }
    parts.join(", ")
}

/// One key to take, as both the blocking and the async take see it.
pub(crate) struct Take<'a> {
    pub key: &'a str,
    pub shared: bool,
    /// When to give up, and the `timeout` that set it.
    pub deadline: Option<(Instant, Duration)>,
    /// The test's path, for messages.
    pub test: &'a str,
}

impl Take<'_> {
    /// A try first: most takes are not contended, and then nothing waits at all.
    pub(crate) fn try_options(&self) -> LockOptions {
        options(self.shared).try_only()
    }

    /// The waiting request, bounded by what is left of the deadline.
    pub(crate) fn wait_options(&self) -> LockOptions {
        match self.deadline {
            Some((at, _)) => {
                options(self.shared).timeout(at.saturating_duration_since(Instant::now()))
            }
            None => options(self.shared),
        }
    }

    /// The line printed once the take has waited since `started`, held `by` (the async take's;
    /// the blocking one prints from its own thread).
    #[cfg(feature = "tokio")]
    pub(crate) fn notice(&self, started: Instant, by: &str) -> String {
        notice(self.test, self.key, self.shared, started, by)
    }

    /// Whether `r` is this take's `timeout` running out (then [`timed_out`](Self::timed_out)).
    pub(crate) fn ran_out<T>(&self, r: &Result<T>) -> bool {
        matches!(r, Err(Error::WaitTimedOut)) && self.deadline.is_some()
    }

    /// The error of a take whose `timeout` ran out, held `by`.
    pub(crate) fn timed_out(&self, by: &str) -> Error {
        let limit = self.deadline.map_or(Duration::ZERO, |(_, l)| l);
        Error::Serial(format!(
            "{}: timed out after {:.1} s waiting for {} held by {by}",
            self.test,
            limit.as_secs_f64(),
            what(self.key, self.shared)
        ))
    }
}

fn notice(test: &str, key: &str, shared: bool, started: Instant, by: &str) -> String {
    format!(
        "live-mutex: {test} has waited {:.1} s for {} held by {by}",
        started.elapsed().as_secs_f64(),
        what(key, shared)
    )
}

/// Takes one key, blocking, with the notice after [`notice_after`] (from a thread of its own).
pub(crate) fn take(client: &Client, t: &Take<'_>) -> Result<LockGuard> {
    match client.lock_with(t.key, &t.try_options()) {
        Err(Error::Busy) => {}
        r => return r,
    }
    let started = Instant::now();
    let (done, watch) = mpsc::channel::<()>();
    let watcher = {
        let (client, after) = (client.clone(), notice_after());
        let (test, key, shared) = (t.test.to_string(), t.key.to_string(), t.shared);
        move || {
            if watch.recv_timeout(after) == Err(mpsc::RecvTimeoutError::Timeout) {
                let by = holders(client.info(&key));
                eprintln!("{}", notice(&test, &key, shared, started, &by));
            }
        }
    };
    std::thread::Builder::new()
        .name("live-mutex-notice".into())
        .spawn(watcher)?;
    let r = client.lock_with(t.key, &t.wait_options());
    drop(done);
    if t.ran_out(&r) {
        return Err(t.timed_out(&holders(client.info(t.key))));
    }
    r
}
