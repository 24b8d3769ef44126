//! Finding peers that vanished: TCP keepalive and `TCP_USER_TIMEOUT` on every accepted TCP
//! connection.
//!
//! Why: a client host that loses power, its cable or its route sends neither FIN nor RST, and
//! the broker, which has nothing to say to a client that holds a lock quietly, would keep that
//! lock forever (the default TTL is none). Keepalive probes an idle connection; the user timeout
//! fails a connection whose output (a grant, a reply) is never acknowledged, which keepalive
//! does not cover because it only probes when nothing is in flight.
//!
//! Detection time with the defaults: an idle connection is probed after `idle` (10 s) of
//! silence, then every `interval` (5 s); on Linux a set user timeout decides when probing gives
//! up (the kernel drops the connection once `user_timeout` has passed since the last thing heard
//! with at least one probe unanswered, instead of counting `count` probes), so both an idle and
//! a busy connection to a vanished host fail 25 s after the last segment it acknowledged, and
//! its locks are released then. The documented bound is 30 s: 25 s plus timer slack.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Keepalive settings of accepted TCP connections; see [`crate::broker::BrokerBuilder::keepalive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`, whole seconds, at least 1).
    pub idle: Duration,
    /// Between probes (`TCP_KEEPINTVL`, whole seconds, at least 1).
    pub interval: Duration,
    /// Unanswered probes before the connection fails (`TCP_KEEPCNT`), when no user timeout is
    /// set.
    pub count: u32,
    /// How long sent data, or a keepalive probe, may stay unacknowledged (`TCP_USER_TIMEOUT`,
    /// milliseconds; zero leaves the kernel's default of about 15 minutes for data).
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive::new(Duration::from_secs(10), Duration::from_secs(5), 3)
    }
}

impl Keepalive {
    /// Probing after `idle`, every `interval`, `count` times; the user timeout is set to the
    /// same total (`idle + interval × count`), so unacknowledged output fails no later.
    pub fn new(idle: Duration, interval: Duration, count: u32) -> Self {
        Keepalive {
            idle,
            interval,
            count,
            user_timeout: idle + interval * count,
        }
    }

    /// The longest a vanished peer keeps its connection (and locks), before timer slack: with
    /// a user timeout, the first keepalive tick (`idle + k × interval`, k ≥ 1) at or after it
    /// (Linux checks it at those ticks); without, `idle + interval × count`.
    pub fn detection_time(&self) -> Duration {
        if self.user_timeout.is_zero() || self.interval.is_zero() {
            return self.idle + self.interval * self.count;
        }
        let after_idle = self.user_timeout.saturating_sub(self.idle);
        let k = after_idle
            .as_nanos()
            .div_ceil(self.interval.as_nanos())
            .max(1);
        self.idle + self.interval * u32::try_from(k).unwrap_or(u32::MAX)
    }

    /// Sets the options on one socket.
    pub(crate) fn apply(&self, s: &impl AsRawFd) -> io::Result<()> {
        let fd = s.as_raw_fd();
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(self.idle))?;
            setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                secs(self.interval),
            )?;
            let cnt = self.count.clamp(1, i32::MAX as u32) as libc::c_int;
            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt)?;
            let ms = self.user_timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
        }
        Ok(())
    }
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call, and the
    // option value is a live c_int whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd and a c_int-sized out buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        v
    }

    #[test]
    fn defaults_fail_a_vanished_peer_within_30_s_and_are_set_on_the_socket() {
        let k = Keepalive::default();
        assert_eq!(k.user_timeout, Duration::from_secs(25));
        assert_eq!(k.detection_time(), Duration::from_secs(25));
        assert_eq!(
            Keepalive {
                user_timeout: Duration::ZERO,
                ..k
            }
            .detection_time(),
            Duration::from_secs(25)
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        k.apply(&s).unwrap();
        let fd = s.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 10);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 25_000);
    }
}
