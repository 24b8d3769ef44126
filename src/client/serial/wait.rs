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
pub(crate) fn options(shared: bool) -> LockOptions {
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

/// The line printed once a take has waited [`notice_after`].
pub(crate) fn notice(test: &str, key: &str, shared: bool, waited: Duration, by: &str) -> String {
    format!(
        "live-mutex: {test} has waited {:.1} s for {} held by {by}",
        waited.as_secs_f64(),
        what(key, shared)
    )
}

/// The error of a take whose `timeout` ran out.
pub(crate) fn timed_out(test: &str, key: &str, shared: bool, limit: Duration, by: &str) -> Error {
    Error::Serial(format!(
        "{test}: timed out after {:.1} s waiting for {} held by {by}",
        limit.as_secs_f64(),
        what(key, shared)
    ))
}

/// Takes one key, waiting until `deadline` (if any), with the notice after a few seconds.
pub(crate) fn take(
    client: &Client,
    key: &str,
    shared: bool,
    deadline: Option<(Instant, Duration)>,
    test: &str,
) -> Result<LockGuard> {
    let opts = options(shared);
    // Most takes are not contended: no watcher thread for those.
    match client.lock_with(key, &opts.clone().try_only()) {
        Err(Error::Busy) => {}
        r => return r,
    }
    let started = Instant::now();
    let (done, watch) = mpsc::channel::<()>();
    let watcher = {
        let (client, key, test) = (client.clone(), key.to_string(), test.to_string());
        let after = notice_after();
        move || {
            if watch.recv_timeout(after) == Err(mpsc::RecvTimeoutError::Timeout) {
                let by = holders(client.info(&key));
                eprintln!("{}", notice(&test, &key, shared, started.elapsed(), &by));
            }
        }
    };
    std::thread::Builder::new()
        .name("live-mutex-notice".into())
        .spawn(watcher)?;
    let opts = match deadline {
        Some((at, _)) => opts.timeout(at.saturating_duration_since(Instant::now())),
        None => opts,
    };
    let r = client.lock_with(key, &opts);
    drop(done);
    match (r, deadline) {
        (Err(Error::WaitTimedOut), Some((_, limit))) => Err(timed_out(
            test,
            key,
            shared,
            limit,
            &holders(client.info(key)),
        )),
        (r, _) => r,
    }
}
