//! Keeping web pages out: HTTP recognised on the NDJSON port, and the Host and Origin rules of
//! every HTTP request the broker answers (today the WebSocket upgrade; later any endpoint such
//! as metrics or a status page, which must call [`HttpPolicy::check`] the same way).
//!
//! Why: any page in the user's browser can reach `127.0.0.1`. A `fetch` POST with a text/plain
//! body needs no CORS preflight, so its body lines would run as NDJSON requests (the
//! cross-protocol attack Redis closed in 3.2.7); a page can open a WebSocket with its own
//! `Origin`; and a DNS-rebinding page reaches the broker under a Host name it controls. The
//! broker therefore closes an NDJSON connection whose first lines look like HTTP, and answers a
//! WebSocket upgrade only when Host names this machine and Origin, if any, is the broker itself
//! or one the operator allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const METHODS: [&[u8]; 8] = [
    b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT",
];

/// A byte allowed in an HTTP token (RFC 9110 `tchar`): header names and methods are made of
/// them. `{`, `[`, `"` and whitespace are not, so no JSON text starts with a token and a colon.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Is this line (without its line ending) an HTTP request line or a header line?
///
/// A request line is one of the usual methods followed by a space, or any token, a space, a
/// target and ` HTTP/1.x` at the end. A header line is a token immediately followed by `:`
/// (`Host: x`, `Content-Type: text/plain`). No request of the protocol looks like either, since
/// every one starts with `{`.
pub(crate) fn is_http_line(line: &[u8]) -> bool {
    for m in METHODS {
        if line.len() > m.len() && line[..m.len()].eq_ignore_ascii_case(m) && line[m.len()] == b' '
        {
            return true;
        }
    }
    let token = line.iter().take_while(|&&b| is_tchar(b)).count();
    if token == 0 {
        return false;
    }
    match line.get(token) {
        Some(b':') => true,
        Some(b' ') => {
            let t = line.trim_ascii_end();
            t.len() >= 9 && t[t.len() - 9..t.len() - 1].eq_ignore_ascii_case(b" HTTP/1.")
        }
        _ => false,
    }
}

/// Why an HTTP request was refused (answered 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no Host header")]
    NoHost,
    #[error("Host {0:?} is not this machine (DNS rebinding?); allow it with --allow-host")]
    ForeignHost(String),
    #[error("Origin {0:?} is not allowed; allow it with --allow-origin")]
    ForeignOrigin(String),
}

/// The Host and Origin rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpPolicy {
    /// The broker's listening address: its IP is a valid Host too. When it is unspecified
    /// (0.0.0.0, ::) every IP literal is, since a DNS-rebinding page needs a name.
    bound: Option<SocketAddr>,
    /// Extra Host names (`--allow-host`), lowercase, without port.
    hosts: Vec<String>,
    /// Extra origins (`--allow-origin`), lowercase, without a trailing `/`; `null` only if
    /// listed.
    origins: Vec<String>,
}

impl HttpPolicy {
    pub(crate) fn new(bound: Option<SocketAddr>, hosts: &[String], origins: &[String]) -> Self {
        HttpPolicy {
            bound,
            hosts: hosts
                .iter()
                .map(|h| split_host_port(&h.to_ascii_lowercase()).0.to_string())
                .collect(),
            origins: origins.iter().map(|o| normal_origin(o)).collect(),
        }
    }

    /// Checks one request's `Host` and `Origin` header values. A request with no Origin (every
    /// non-browser client) is judged by its Host only.
    pub(crate) fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        let host = host.map(str::trim).ok_or(Refusal::NoHost)?;
        if !self.host_allowed(host) {
            return Err(Refusal::ForeignHost(host.to_string()));
        }
        let Some(origin) = origin.map(str::trim) else {
            return Ok(());
        };
        let o = normal_origin(origin);
        if self.origins.contains(&o) || (o != "null" && same_origin(&o, host)) {
            Ok(())
        } else {
            Err(Refusal::ForeignOrigin(origin.to_string()))
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let lower = host.to_ascii_lowercase();
        let (name, _) = split_host_port(&lower);
        if name == "localhost" || name == "localhost." || self.hosts.iter().any(|h| h == name) {
            return true;
        }
        let Some(ip) = parse_ip(name) else {
            return false;
        };
        ip.is_loopback()
            || self
                .bound
                .is_some_and(|b| b.ip() == ip || b.ip().is_unspecified())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` into the host (brackets kept) and the port text.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((h, _)) if h.contains(':') => (s, None),
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

fn parse_ip(name: &str) -> Option<IpAddr> {
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    name.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn normal_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Is the (normalised) origin `scheme://host[:port]` the same host and port as the Host header?
/// Missing ports are the scheme's default (a Host without port means 80: the broker has no TLS).
fn same_origin(origin: &str, host: &str) -> bool {
    let (scheme, rest) = match origin.split_once("://") {
        Some(p) => p,
        None => return false,
    };
    let default = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    if rest.contains('/') || rest.contains('@') {
        return false;
    }
    let (oh, op) = split_host_port(rest);
    let lower = host.to_ascii_lowercase();
    let (hh, hp) = split_host_port(&lower);
    oh == hh && op.unwrap_or(default) == hp.unwrap_or("80")
}

/// Notes refused connections on stderr with their peer, at most [`Self::BURST`] per
/// [`Self::WINDOW`], so that a page retrying in a loop cannot flood the log.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    const BURST: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(60);

    pub(crate) fn new() -> Self {
        RefusalLog {
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// The line to log for this refusal, if any (the caller writes it).
    pub(crate) fn refused(&mut self, now: Instant, peer: &str, why: &str) -> Option<String> {
        let fresh = self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= Self::WINDOW);
        let mut prefix = String::new();
        if fresh {
            if self.suppressed > 0 {
                prefix = format!("({} more refused since, not logged) ", self.suppressed);
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged >= Self::BURST {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(format!("{prefix}refused connection from {peer}: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_http_lines_and_never_json() {
        for l in [
            &b"POST / HTTP/1.1"[..],
            b"PUT /x HTTP/1.1",
            b"get / HTTP/1.0",
            b"OPTIONS * HTTP/1.1",
            b"CONNECT a:1 HTTP/1.1",
            b"PROPFIND /x HTTP/1.1",
            b"Host: 127.0.0.1:6970",
            b"Content-Type: text/plain",
            b"host:x",
        ] {
            assert!(is_http_line(l), "{}", String::from_utf8_lossy(l));
        }
        for l in [
            &br#"{"type":"lock","key":"Host: x"}"#[..],
            b" {\"type\":\"ping\"}",
            b"[1,2]",
            b"POSTX",
            b"hello world",
            b"",
            b"\"Host: x\"",
        ] {
            assert!(!is_http_line(l), "{}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn host_rules() {
        let p = HttpPolicy::new(
            Some("192.168.1.5:6970".parse().unwrap()),
            &["broker.lan".into()],
            &[],
        );
        for h in [
            "localhost",
            "LOCALHOST:6970",
            "127.0.0.1",
            "127.3.2.1:80",
            "[::1]",
            "[::1]:6970",
            "192.168.1.5:6970",
            "broker.lan:6970",
        ] {
            assert_eq!(p.check(Some(h), None), Ok(()), "{h}");
        }
        for h in [
            "attacker.example:6970",
            "192.168.1.6",
            "localhost.evil",
            "[::2]",
        ] {
            assert!(p.check(Some(h), None).is_err(), "{h}");
        }
        assert_eq!(p.check(None, None), Err(Refusal::NoHost));
        let any = HttpPolicy::new(Some("0.0.0.0:6970".parse().unwrap()), &[], &[]);
        assert!(any.check(Some("10.1.2.3:6970"), None).is_ok());
        assert!(any.check(Some("rebind.example:6970"), None).is_err());
    }

    #[test]
    fn origin_rules() {
        let p = HttpPolicy::new(None, &[], &["http://localhost:3000/".into()]);
        let ok = |h, o| p.check(Some(h), Some(o)).is_ok();
        assert!(ok("127.0.0.1:6970", "http://127.0.0.1:6970"));
        assert!(ok("localhost:6970", "http://LOCALHOST:6970/"));
        assert!(ok("localhost", "http://localhost"));
        assert!(ok("localhost:443", "https://localhost"));
        assert!(ok("127.0.0.1:6970", "http://localhost:3000"));
        assert!(!ok("127.0.0.1:6970", "http://localhost:6970"));
        assert!(!ok("127.0.0.1:6970", "http://evil.example"));
        assert!(!ok("127.0.0.1:6970", "null"));
        assert!(!ok("127.0.0.1:6970", "http://127.0.0.1:6971"));
        assert!(!ok("127.0.0.1:6970", "file://127.0.0.1:6970"));
        let n = HttpPolicy::new(None, &[], &["null".into()]);
        assert!(n.check(Some("127.0.0.1:1"), Some("null")).is_ok());
    }

    #[test]
    fn refusal_log_is_rate_limited() {
        let mut l = RefusalLog::new();
        let t = Instant::now();
        let n = (0..100)
            .filter(|_| l.refused(t, "1.2.3.4:5", "x").is_some())
            .count();
        assert_eq!(n, RefusalLog::BURST as usize);
        let next = l.refused(t + RefusalLog::WINDOW, "p", "x").unwrap();
        assert!(next.starts_with("(95 more refused"), "{next}");
    }
}
