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
//!
//! macOS and FreeBSD have keepalive idle/interval/count but no `TCP_USER_TIMEOUT`: there an
//! idle connection to a vanished host fails after `idle + interval × count` (25 s too), but one
//! with output in flight (a grant sent just before the host vanished) only when the kernel's
//! retransmissions give up, which takes minutes. `--tcp-user-timeout` says so on those systems
//! ([`Keepalive::user_timeout_unavailable`]) instead of failing.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Whether this OS has `TCP_USER_TIMEOUT` (Linux and Android; macOS and the BSDs do not).
const USER_TIMEOUT_AVAILABLE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Keepalive settings of accepted TCP connections; see [`crate::broker::BrokerBuilder::keepalive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`, `TCP_KEEPALIVE` on macOS; whole seconds,
    /// at least 1).
    pub idle: Duration,
    /// Between probes (`TCP_KEEPINTVL`, whole seconds, at least 1).
    pub interval: Duration,
    /// Unanswered probes before the connection fails (`TCP_KEEPCNT`), when no user timeout is
    /// set.
    pub count: u32,
    /// How long sent data, or a keepalive probe, may stay unacknowledged (`TCP_USER_TIMEOUT`,
    /// milliseconds; zero leaves the kernel's default of about 15 minutes for data). Linux and
    /// Android only: other systems have no such option, and this field is not applied there.
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

    /// The longest a vanished peer keeps its idle connection (and locks), before timer slack:
    /// with a user timeout (on an OS that has one), the first keepalive tick
    /// (`idle + k × interval`, k ≥ 1) at or after it (Linux checks it at those ticks); without,
    /// `idle + interval × count`.
    pub fn detection_time(&self) -> Duration {
        self.detection_time_on(USER_TIMEOUT_AVAILABLE)
    }

    fn detection_time_on(&self, user_timeout_available: bool) -> Duration {
        if !user_timeout_available || self.user_timeout.is_zero() || self.interval.is_zero() {
            return self.idle + self.interval * self.count;
        }
        let after_idle = self.user_timeout.saturating_sub(self.idle);
        let k = after_idle
            .as_nanos()
            .div_ceil(self.interval.as_nanos())
            .max(1);
        self.idle + self.interval * u32::try_from(k).unwrap_or(u32::MAX)
    }

    /// `None` where this OS can apply [`user_timeout`](Self::user_timeout); elsewhere (macOS,
    /// FreeBSD) a sentence for the person who asked for one: that it is not available here and
    /// what a vanished peer costs instead. Why: a flag that sets it should say so, not fail at
    /// start, and not be ignored in silence either.
    pub fn user_timeout_unavailable(&self) -> Option<String> {
        self.user_timeout_unavailable_on(USER_TIMEOUT_AVAILABLE, std::env::consts::OS)
    }

    fn user_timeout_unavailable_on(&self, available: bool, os: &str) -> Option<String> {
        let os = match os {
            "macos" => "macOS",
            "freebsd" => "FreeBSD",
            other => other,
        };
        (!available).then(|| {
            format!(
                "not available on {os} (it has no TCP_USER_TIMEOUT), so it is not set: a \
                 vanished host's idle connection is still dropped by keepalive after {} s (idle \
                 {} s + {} × {} s), but one with unacknowledged output only once {os}'s TCP \
                 retransmissions give up (minutes); give locks a TTL to bound that",
                self.detection_time_on(false).as_secs(),
                self.idle.as_secs(),
                self.count,
                self.interval.as_secs()
            )
        })
    }

    /// Sets the options on one socket.
    pub(crate) fn apply(&self, s: &impl AsFd) -> io::Result<()> {
        let sock = socket2::SockRef::from(s);
        let secs = |d: Duration| Duration::from_secs(d.as_secs().clamp(1, i32::MAX as u64));
        let params = socket2::TcpKeepalive::new()
            .with_time(secs(self.idle))
            .with_interval(secs(self.interval))
            .with_retries(self.count.clamp(1, i32::MAX as u32));
        sock.set_tcp_keepalive(&params)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.set_tcp_user_timeout(Some(self.user_timeout).filter(|t| !t.is_zero()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fail_a_vanished_peer_within_30_s_and_are_set_on_the_socket() {
        let k = Keepalive::default();
        assert_eq!(k.user_timeout, Duration::from_secs(25));
        assert_eq!(k.detection_time(), Duration::from_secs(25));
        assert_eq!(k.detection_time_on(false), Duration::from_secs(25));
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
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(10));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(25))
        );
    }

    /// On an OS without `TCP_USER_TIMEOUT` (macOS, FreeBSD) a user timeout that was asked for
    /// is reported as unavailable, with what applies instead; where the OS has it, nothing is.
    #[test]
    fn a_user_timeout_on_an_os_without_it_is_reported_not_failed() {
        let k = Keepalive {
            user_timeout: Duration::from_secs(7),
            ..Keepalive::new(Duration::from_secs(4), Duration::from_secs(2), 5)
        };
        assert_eq!(k.user_timeout_unavailable_on(true, "linux"), None);
        let why = k.user_timeout_unavailable_on(false, "macos").unwrap();
        assert!(
            why.starts_with(
                "not available on macOS (it has no TCP_USER_TIMEOUT), so it is not set"
            ),
            "{why}"
        );
        assert!(
            why.contains("dropped by keepalive after 14 s (idle 4 s + 5 × 2 s)"),
            "{why}"
        );
        assert_eq!(k.detection_time_on(false), Duration::from_secs(14));
        assert_eq!(k.detection_time_on(true), Duration::from_secs(8));
        assert_eq!(
            k.user_timeout_unavailable().is_none(),
            cfg!(any(target_os = "linux", target_os = "android"))
        );
    }
}
