use super::error::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// What both client builders collect: the URL (or a comma-separated list of them), a token
/// that wins over the URL's, the time-outs, and whether to start at a random broker.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub random: bool,
    /// CA file to trust (wins over `LMX_TLS_CA`).
    #[cfg(feature = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key files (win over `LMX_TLS_CERT`/`LMX_TLS_KEY`).
    #[cfg(feature = "tls")]
    pub tls_cert: Option<(PathBuf, PathBuf)>,
}

/// What both clients keep to (re)connect: the [`Settings`], with the URLs parsed, the token
/// chosen and the TLS configuration read (once, if any URL needs it).
pub(crate) struct Target {
    /// Tried in turn; see `backoff::Slot` for the order.
    pub endpoints: Vec<Endpoint>,
    pub random: bool,
    pub token: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::Config>,
}

impl Settings {
    /// The defaults: 3 s to connect (handshake included), 10 s for an answer.
    pub(crate) fn new(url: &str) -> Settings {
        Settings {
            url: url.to_string(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            random: std::env::var("LMX_URL_RANDOM").is_ok_and(|v| v == "1" || v == "true"),
            #[cfg(feature = "tls")]
            tls_ca: None,
            #[cfg(feature = "tls")]
            tls_cert: None,
        }
    }

    /// Parses the URLs (`a,b,...`); the token is the builder's, else the first URL's that
    /// carries one, else `LMX_AUTH_TOKEN`.
    pub(crate) fn resolve(self) -> Result<Target> {
        let mut endpoints = Vec::new();
        let mut url_token = None;
        for url in self.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (endpoint, t) = parse(url)?;
            url_token = url_token.or(t);
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(Error::Config(format!("no broker URL in {:?}", self.url)));
        }
        let token = self.token.or(url_token).or_else(|| {
            std::env::var("LMX_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        let tls = endpoints.iter().any(Endpoint::is_tls);
        #[cfg(not(feature = "tls"))]
        if tls {
            return Err(Error::Config(
                "tls:// and wss:// need live-mutex built with the `tls` feature".into(),
            ));
        }
        Ok(Target {
            endpoints,
            random: self.random,
            token,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            #[cfg(feature = "tls")]
            tls: tls
                .then(|| super::tls::config(self.tls_ca, self.tls_cert))
                .transpose()?,
        })
    }
}

/// Where a broker listens, parsed from `tcp://host:port`, `tls://host:port`,
/// `ws://host:port[/path]`, `wss://host:port[/path]` or `unix:///path`, each optionally
/// carrying an auth token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp {
        host: String,
        port: u16,
        /// `tls://`: NDJSON inside TLS.
        tls: bool,
    },
    Ws {
        host: String,
        port: u16,
        path: String,
        /// `wss://`
        tls: bool,
    },
    Unix(PathBuf),
}

impl Endpoint {
    pub(crate) fn is_tls(&self) -> bool {
        matches!(
            self,
            Endpoint::Tcp { tls: true, .. } | Endpoint::Ws { tls: true, .. }
        )
    }
}

/// The URL without its token (for `Client::endpoint`, logs and `lmx ping`).
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port, tls } => {
                let scheme = if *tls { "tls" } else { "tcp" };
                write!(f, "{scheme}://{}", host_port(host, *port))
            }
            Endpoint::Ws {
                host,
                port,
                path,
                tls,
            } => {
                let scheme = if *tls { "wss" } else { "ws" };
                write!(f, "{scheme}://{}{path}", host_port(host, *port))
            }
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// The default endpoint of the npm live-mutex broker, kept so Node and Rust users meet.
pub(crate) const DEFAULT_PORT: u16 = 6970;

/// Splits a URL into its endpoint and the token it carries (`?token=` or userinfo
/// `token@` / `user:token@`), so tokens can be handed around in one string.
pub(crate) fn parse(url: &str) -> Result<(Endpoint, Option<String>)> {
    let bad = |why: &str| Error::Config(format!("{why} in URL {url:?}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut token = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token=").map(percent_decode));
    if scheme == "unix" {
        if !rest.starts_with('/') {
            return Err(bad("unix socket path must be absolute"));
        }
        return Ok((Endpoint::Unix(PathBuf::from(percent_decode(rest))), token));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let t = userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw);
            token = token.or(Some(percent_decode(t)));
            hp
        }
        None => authority,
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        _ => (hostport, DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let host = host.to_string();
    let path = if path.is_empty() { "/" } else { path }.to_string();
    match scheme {
        "tcp" | "tls" => Ok((
            Endpoint::Tcp {
                host,
                port,
                tls: scheme == "tls",
            },
            token,
        )),
        "ws" | "wss" => Ok((
            Endpoint::Ws {
                host,
                port,
                path,
                tls: scheme == "wss",
            },
            token,
        )),
        _ => Err(bad("unsupported scheme (want tcp, tls, ws, wss or unix)")),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Formats `host` for use in `host:port`, bracketing IPv6 literals.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        let tcp = |h: &str, p| Endpoint::Tcp {
            host: h.into(),
            port: p,
            tls: false,
        };
        assert_eq!(
            parse("tcp://127.0.0.1:7000").unwrap(),
            (tcp("127.0.0.1", 7000), None)
        );
        assert_eq!(
            parse("tcp://localhost").unwrap(),
            (tcp("localhost", 6970), None)
        );
        assert_eq!(parse("tcp://[::1]:5").unwrap(), (tcp("::1", 5), None));
        assert_eq!(
            parse("tcp://h:1?token=a%20b").unwrap().1.as_deref(),
            Some("a b")
        );
        assert_eq!(
            parse("tcp://sekret@h:1").unwrap().1.as_deref(),
            Some("sekret")
        );
        assert_eq!(parse("tcp://u:pw@h:1").unwrap().1.as_deref(), Some("pw"));
        let ws = Endpoint::Ws {
            host: "h".into(),
            port: 2,
            path: "/lmx".into(),
            tls: false,
        };
        assert_eq!(parse("ws://h:2/lmx").unwrap().0, ws);
        let wss = parse("wss://h:2/lmx").unwrap().0;
        assert_eq!(wss.to_string(), "wss://h:2/lmx");
        assert!(wss.is_tls());
        let tls = parse("tls://t@[::1]:9").unwrap();
        assert_eq!(
            (tls.0.to_string(), tls.1.as_deref()),
            ("tls://[::1]:9".into(), Some("t"))
        );
        assert_eq!(parse("ws://h").unwrap().0.to_string(), "ws://h:6970/");
        assert_eq!(
            parse("unix:///tmp/x.sock?token=t").unwrap(),
            (Endpoint::Unix("/tmp/x.sock".into()), Some("t".into()))
        );
        for bad in [
            "127.0.0.1:1",
            "http://h:1",
            "tcp://:1",
            "tcp://h:99999",
            "unix://rel",
        ] {
            assert!(matches!(parse(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn a_list_of_brokers() {
        let mut s = Settings::new(" tcp://a:1, tcp://t@b:2 ,,unix:///x");
        s.token = None;
        let t = s.resolve().unwrap();
        let eps: Vec<String> = t.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(eps, ["tcp://a:1", "tcp://b:2", "unix:///x"]);
        assert_eq!(t.token.as_deref(), Some("t"));
        assert!(matches!(
            Settings::new(" , ").resolve(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Settings::new("tcp://a:1,bogus").resolve(),
            Err(Error::Config(_))
        ));
    }
}
