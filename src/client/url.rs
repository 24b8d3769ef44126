use super::error::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// What both client builders collect: the URL, a token that wins over the URL's, and the
/// time-outs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// What both clients keep to (re)connect: the [`Settings`], with the URL parsed and the token
/// chosen.
pub(crate) struct Target {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Settings {
    /// The defaults: 3 s to connect (handshake included), 10 s for an answer.
    pub fn new(url: &str) -> Settings {
        Settings {
            url: url.to_string(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Parses the URL; the token is the builder's, else the URL's, else `LMX_AUTH_TOKEN`.
    pub fn resolve(self) -> Result<Target> {
        let (endpoint, url_token) = parse(&self.url)?;
        let token = self.token.or(url_token).or_else(|| {
            std::env::var("LMX_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        Ok(Target {
            endpoint,
            token,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }
}

/// Where a broker listens, parsed from `tcp://host:port`, `ws://host:port[/path]` or
/// `unix:///path`, each optionally carrying an auth token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    Ws {
        host: String,
        port: u16,
        path: String,
    },
    Unix(PathBuf),
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
    match scheme {
        "tcp" => Ok((Endpoint::Tcp { host, port }, token)),
        "ws" => {
            let path = if path.is_empty() { "/" } else { path }.to_string();
            Ok((Endpoint::Ws { host, port, path }, token))
        }
        _ => Err(bad("unsupported scheme (want tcp, ws or unix)")),
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
        };
        assert_eq!(parse("ws://h:2/lmx").unwrap().0, ws);
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
}
