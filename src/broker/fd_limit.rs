//! The connection cap in effect: every connection takes a file descriptor, so a broker whose
//! open-file limit is lower than `max_connections` would run out of descriptors first (about
//! 1,015 connections under the common soft limit of 1024, whatever `--max-connections` says).
//! `lmx start` raises the soft limit toward the hard one as far as the cap needs; whatever the
//! limit then is, the cap is lowered to fit under it and logged, so that a newcomer past it is
//! refused by the cap (or makes room, see `accept`) rather than by a failed `accept`.

/// Descriptors kept for the broker's own files (stdio, poll, waker, listeners, the spare one,
/// the lock file, etcd's sockets), at most.
const RESERVE_MAX: u64 = 64;

/// The connection cap in effect and how it came about, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cap {
    pub cap: usize,
    wanted: usize,
    /// The open-file limit: (soft, hard), when known.
    limit: Option<(u64, u64)>,
    /// The soft limit before it was raised.
    raised_from: Option<u64>,
}

impl Cap {
    /// One line (two when the limit was raised), logged once the broker runs, after the
    /// "listening" line.
    pub(super) fn log(&self) {
        let Some((soft, hard)) = self.limit else {
            return;
        };
        if let Some(was) = self.raised_from {
            tracing::info!("raised the open-file soft limit from {was} to {soft}");
        }
        let (cap, wanted) = (self.cap, self.wanted);
        if cap < wanted {
            tracing::warn!(
                "at most {cap} connections, not {wanted}: the open-file limit is {soft} (hard \
                 {hard}); raise it (ulimit -n) for more"
            );
        } else {
            tracing::info!("at most {cap} connections (open-file limit {soft})");
        }
    }
}

/// The cap on connections that fits under the open-file limit, after raising the soft limit
/// (when `raise`) toward what `wanted` connections need.
pub(super) fn connection_cap(wanted: usize, raise: bool) -> Cap {
    let Some((mut soft, hard)) = nofile() else {
        return Cap {
            cap: wanted,
            wanted,
            limit: None,
            raised_from: None,
        };
    };
    let need = (wanted as u64).saturating_add(RESERVE_MAX);
    let mut raised_from = None;
    if raise && soft < need {
        let target = need.min(hard);
        // macOS refuses a soft limit above OPEN_MAX (10,240) even when the hard one is higher.
        if set_soft(target, hard) || (target > 10_240 && set_soft(10_240, hard)) {
            raised_from = Some(soft);
            soft = nofile().map_or(soft, |(s, _)| s);
        }
    }
    let room = soft.saturating_sub(reserve(soft));
    Cap {
        cap: wanted.min(usize::try_from(room).unwrap_or(usize::MAX)),
        wanted,
        limit: Some((soft, hard)),
        raised_from,
    }
}

/// Descriptors left for the broker's own files under a limit of `soft`.
fn reserve(soft: u64) -> u64 {
    (soft / 8).clamp(8, RESERVE_MAX)
}

/// The open-file limit: (soft, hard).
fn nofile() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the call to fill.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, macOS and FreeBSD; not everywhere
    ok.then_some((r.rlim_cur as u64, r.rlim_max as u64))
}

fn set_soft(soft: u64, hard: u64) -> bool {
    let r = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `r` is a valid rlimit; lowering nothing, raising the soft limit within the hard.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_limit_with_room_for_the_brokers_own_files() {
        assert_eq!(reserve(40), 8);
        assert_eq!(reserve(1024), 64);
        let (soft, _) = nofile().expect("getrlimit");
        let cap = connection_cap(usize::MAX, false).cap;
        assert_eq!(cap as u64, soft - reserve(soft));
        assert_eq!(connection_cap(5, false).cap, 5);
    }
}
