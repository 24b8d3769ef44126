//! Connection settings as both clients take them: one builder, whose `connect` is the
//! driver's (the blocking [`Client`](super::Client), or the async client's).

use super::url::Settings;
use std::marker::PhantomData;
use std::time::Duration;

/// Builds a client with non-default time-outs, token or TLS files: [`ClientBuilder`] for the
/// blocking [`Client`](super::Client), `AsyncClientBuilder` for the async client (feature
/// `tokio`). `connect` belongs to each.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// use std::time::Duration;
/// let client = live_mutex::Client::builder(&url).connect_timeout(Duration::from_millis(500)).connect()?;
/// client.ping()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Builder<C> {
    pub(crate) settings: Settings,
    client: PhantomData<fn() -> C>,
}

/// Builds a [`Client`](super::Client) with non-default time-outs or token.
pub type ClientBuilder = Builder<super::Client>;

impl<C> Builder<C> {
    pub(crate) fn new(url: &str) -> Self {
        Builder {
            settings: Settings::new(url),
            client: PhantomData,
        }
    }

    /// Sets the auth token (wins over the URL's and `LMX_AUTH_TOKEN`).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").token("s3cret");
    /// # drop(b);
    /// ```
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.settings.token = Some(t.into());
        self
    }
    /// Longest time to establish a connection, including the broker handshake (default 3 s).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").connect_timeout(std::time::Duration::from_secs(1));
    /// assert!(b.connect().is_err());
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.settings.connect_timeout = d;
        self
    }
    /// Longest wait for the reply to a request other than a lock wait (default 10 s).
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tcp://127.0.0.1:1").request_timeout(std::time::Duration::from_secs(2));
    /// # drop(b);
    /// ```
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.settings.request_timeout = d;
        self
    }
    /// With a list of brokers, start at a random one instead of the first (to spread clients
    /// over the brokers); the default is `LMX_URL_RANDOM=1` in the environment, else off.
    ///
    /// ```
    /// let b = live_mutex::Client::builder("tls://a:6970,tls://b:6970").random_start(true);
    /// # drop(b);
    /// ```
    pub fn random_start(mut self, on: bool) -> Self {
        self.settings.random = on;
        self
    }
    /// For `tls://` and `wss://`: trust the CA certificates in this PEM file instead of
    /// `LMX_TLS_CA` (else the system's roots). Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_ca(mut self, pem: impl Into<std::path::PathBuf>) -> Self {
        self.settings.tls_ca = Some(pem.into());
        self
    }
    /// For `tls://` and `wss://`: present this client certificate (chain) and key, PEM files,
    /// instead of `LMX_TLS_CERT`/`LMX_TLS_KEY`. A broker with a client CA takes a verified
    /// certificate in place of the auth token. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.settings.tls_cert = Some((cert.into(), key.into()));
        self
    }
}

impl<C> Clone for Builder<C> {
    fn clone(&self) -> Self {
        Builder {
            settings: self.settings.clone(),
            client: PhantomData,
        }
    }
}

impl<C> std::fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Builder").field(&self.settings).finish()
    }
}
