//! Where the store's keys live: the `etcd://` URL, the settings, and the key layout.
//!
//! Layout: a request for lock key `K` with id `I` is the etcd key `PREFIX/enc(K)/enc(I)`, where
//! `enc` percent-escapes `%`, `/` and control bytes. Escaping `/` keeps the requests of key
//! `a` and key `a/b` in disjoint ranges, so a range read of `PREFIX/enc(K)/` sees one key only.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::StoreError;

/// Settings of an [`EtcdStore`](super::EtcdStore).
#[derive(Clone)]
pub struct EtcdConfig {
    /// `host:port` of each member; the client balances over them and fails over between them.
    pub endpoints: Vec<String>,
    /// Prefix of every key the store writes, without a trailing `/`.
    pub prefix: String,
    /// TTL of each connection's lease (`--session-ttl`). etcd counts whole seconds; at least 2.
    pub session_ttl: Duration,
    /// TTL of a lock whose request names none (`Ttl::Default`); `None` = no expiry.
    pub default_ttl: Option<Duration>,
    /// Deadline of each etcd call: past it the request gets an error, never a silent wait.
    pub op_timeout: Duration,
    /// TLS to etcd (`etcds://`, or any of the files below); needs the `tls` feature. Without
    /// `ca` the system's roots are trusted.
    pub tls: bool,
    /// The CA that signed the members' certificates (PEM).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for members started with
    /// `--client-cert-auth`.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// etcd user name and password (etcd's `auth enable`).
    pub user: Option<(String, String)>,
}

/// The password is never printed.
impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("session_ttl", &self.session_ttl)
            .field("default_ttl", &self.default_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("cert_key", &self.cert_key)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, or `etcds://...` for TLS. The
    /// prefix defaults to `lmx`.
    pub fn from_url(url: &str) -> Result<EtcdConfig, StoreError> {
        let bad = |why: &str| StoreError::BadUrl(format!("{url}: {why}"));
        let (tls, rest) = match url.strip_prefix("etcds://") {
            Some(rest) => (true, Some(rest)),
            None => (false, url.strip_prefix("etcd://")),
        };
        let rest =
            rest.ok_or_else(|| bad("expected etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX]"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for hp in hosts.split(',') {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| bad("every member needs HOST:PORT"))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(
                    "every member needs HOST:PORT with a port from 1 to 65535",
                ));
            }
            endpoints.push(hp.to_owned());
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: if prefix.is_empty() {
                "lmx".to_owned()
            } else {
                prefix.to_owned()
            },
            tls,
            ..EtcdConfig::default()
        })
    }

    /// The lease TTL in whole seconds, as etcd takes it (rounded up, at least 2).
    pub fn session_ttl_secs(&self) -> i64 {
        ttl_secs(self.session_ttl)
    }

    /// `PREFIX/enc(key)/`: the range holding every request of `key`.
    pub fn key_dir(&self, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + key.len() + 2);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'/');
        escape_into(key, &mut out);
        out.push(b'/');
        out
    }

    /// `PREFIX/enc(key)/enc(id)`: the key of one request.
    pub fn request_key(&self, key: &str, id: &str) -> Vec<u8> {
        let mut out = self.key_dir(key);
        escape_into(id, &mut out);
        out
    }

    /// `PREFIX/`: the range of every key of this store.
    pub fn root(&self) -> Vec<u8> {
        format!("{}/", self.prefix).into_bytes()
    }

    /// Splits an etcd key under [`root`](Self::root) into (lock key, request id).
    pub fn parse_request_key(&self, raw: &[u8]) -> Option<(String, String)> {
        let rest = raw.strip_prefix(self.root().as_slice())?;
        let rest = std::str::from_utf8(rest).ok()?;
        let (k, i) = rest.split_once('/')?;
        Some((unescape(k)?, unescape(i)?))
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            prefix: "lmx".to_owned(),
            session_ttl: Duration::from_secs(10),
            default_ttl: Some(Duration::from_millis(5000)),
            op_timeout: Duration::from_secs(3),
            tls: false,
            ca: None,
            cert_key: None,
            user: None,
        }
    }
}

/// Whole seconds, rounded up, at least 2: etcd's lease granularity (one second is too close to
/// its own election and keepalive timing to mean anything).
pub(super) fn ttl_secs(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s.max(2)).unwrap_or(i64::MAX)
}

fn escape_into(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        if b == b'%' || b == b'/' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:2379,10.0.0.2:2380/locks/a").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "10.0.0.2:2380"]);
        assert_eq!(c.prefix, "locks/a");
        assert_eq!(EtcdConfig::from_url("etcd://h:1").unwrap().prefix, "lmx");
        assert!(!EtcdConfig::from_url("etcd://h:1").unwrap().tls);
        let s = EtcdConfig::from_url("etcds://h:1/p").unwrap();
        assert!(s.tls && s.prefix == "p" && s.endpoints == ["h:1"]);
        assert!(EtcdConfig::from_url("tcp://h:1").is_err());
        assert!(EtcdConfig::from_url("etcd://h").is_err());
        assert!(EtcdConfig::from_url("etcd://h:0").is_err());
        assert!(EtcdConfig::from_url("etcd://h:1,:2").is_err());
    }

    #[test]
    fn keys_with_slashes_stay_apart() {
        let c = EtcdConfig::default();
        assert_eq!(c.request_key("a/b", "x%"), b"lmx/a%2Fb/x%25");
        assert!(!c.request_key("a/b", "1").starts_with(&c.key_dir("a")));
        assert_eq!(
            c.parse_request_key(&c.request_key("a/b\n", "i/d")),
            Some(("a/b\n".to_owned(), "i/d".to_owned()))
        );
    }

    #[test]
    fn ttls_are_whole_seconds_from_two() {
        assert_eq!(ttl_secs(Duration::from_millis(100)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::from_secs(10)), 10);
    }
}
