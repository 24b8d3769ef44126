//! A loopback etcd cluster for the etcd tests (started with `.ci/etcd.sh`, or taken from
//! `LMX_ETCD_ENDPOINTS`), and stores on it with the tools to drive them: see
//! tests/etcd_store.rs and tests/etcd_broker.rs.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use live_mutex::internal::etcd::{EtcdConfig, EtcdStore};
use live_mutex::internal::store::{ConnId, LockRequest, StoreEvent, StoreOp, Ttl};

/// One test at a time: the timings below (a release seen on the other broker in under 2 s)
/// are about etcd, not about 2 cores shared by several clusters.
static SERIAL: Mutex<()> = Mutex::new(());

/// A secured cluster's CA and credentials (`LMX_ETCD_SECURE=1 .ci/etcd.sh start`): TLS to the
/// members, and authentication.
#[derive(Clone)]
pub struct Secure {
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
}

impl Secure {
    /// From `LMX_ETCD_CA`, `LMX_ETCD_USER`, `LMX_ETCD_PASSWORD` when `LMX_ETCD_SECURE=1`.
    pub fn from_env() -> Option<Secure> {
        Self::from_vars(|n| std::env::var(n).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Secure> {
        if var("LMX_ETCD_SECURE").as_deref() != Some("1") {
            return None;
        }
        Some(Secure {
            ca: PathBuf::from(var("LMX_ETCD_CA").expect("LMX_ETCD_CA")),
            user: var("LMX_ETCD_USER").expect("LMX_ETCD_USER"),
            password: var("LMX_ETCD_PASSWORD").expect("LMX_ETCD_PASSWORD"),
        })
    }

    /// Applies the CA and credentials to a store's settings.
    pub fn apply(&self, cfg: &mut EtcdConfig) {
        cfg.tls = true;
        cfg.ca = Some(self.ca.clone());
        cfg.user = Some((self.user.clone(), self.password.clone()));
    }
}

/// The store settings for `etcd://EPS/PREFIX`, secured when `secure` says so.
pub fn config(eps: &str, prefix: &str, secure: Option<&Secure>) -> EtcdConfig {
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{eps}/{prefix}")).expect("url");
    if let Some(s) = secure {
        s.apply(&mut cfg);
    }
    cfg
}

pub struct Cluster {
    pub endpoints: String,
    /// Each member's plain-HTTP `/metrics` (`LMX_ETCD_METRICS`; the client endpoints when
    /// unset, which serve it too unless they speak TLS).
    pub metrics: String,
    pub pids: Vec<i32>,
    /// Set on a secured cluster (CI runs the etcd tests on one too).
    pub secure: Option<Secure>,
    /// Set when this test started the cluster: its state file, for `.ci/etcd.sh stop`.
    state: Option<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    pub fn get(private: bool) -> Option<Cluster> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !private && let Ok(eps) = std::env::var("LMX_ETCD_ENDPOINTS") {
            return Some(Cluster {
                metrics: std::env::var("LMX_ETCD_METRICS").unwrap_or_else(|_| eps.clone()),
                endpoints: eps,
                pids: Vec::new(),
                secure: Secure::from_env(),
                state: None,
                _serial: serial,
            });
        }
        let have = Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            assert!(
                std::env::var_os("LMX_REQUIRE_ETCD").is_none(),
                "LMX_REQUIRE_ETCD is set but etcd is not installed (apt-get install etcd-server etcd-client)"
            );
            eprintln!("SKIPPED: etcd is not installed and LMX_REQUIRE_ETCD is unset");
            return None;
        }
        let state = std::env::temp_dir().join(format!(
            "lmx-etcd-test-{}-{}.env",
            std::process::id(),
            fastrand::u64(..)
        ));
        let out = Command::new(script())
            .args(["start"])
            .arg(&state)
            .stdin(Stdio::null())
            .output()
            .expect("run .ci/etcd.sh");
        assert!(
            out.status.success(),
            "etcd.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars = std::fs::read_to_string(&state).expect("state file");
        let var = |name: &str| {
            vars.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
                .expect(name)
        };
        Some(Cluster {
            metrics: var("LMX_ETCD_METRICS"),
            endpoints: var("LMX_ETCD_ENDPOINTS"),
            pids: var("LMX_ETCD_PIDS")
                .split(',')
                .map(|p| p.parse().expect("pid"))
                .collect(),
            secure: Secure::from_vars(|n| {
                vars.lines()
                    .find_map(|l| l.strip_prefix(&format!("{n}=")))
                    .map(str::to_owned)
            }),
            state: Some(state),
            _serial: serial,
        })
    }

    /// The store settings for `prefix` on this cluster.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        config(&self.endpoints, prefix, self.secure.as_ref())
    }

    /// `lmx start` arguments (and the password's variable) for `--store` on this cluster.
    pub fn lmx_store(&self, cmd: &mut Command, prefix: &str) {
        cmd.arg("--store")
            .arg(format!("etcd://{}/{prefix}", self.endpoints));
        if let Some(s) = &self.secure {
            cmd.arg("--etcd-ca")
                .arg(&s.ca)
                .args(["--etcd-user", &s.user]);
            cmd.env("LMX_ETCD_PASSWORD", &s.password);
        }
    }

    /// `etcdctl` on this cluster (with its CA and credentials when secured).
    pub fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints]);
        if let Some(s) = &self.secure {
            c.arg("--cacert").arg(&s.ca);
            c.args(["--user", &format!("{}:{}", s.user, s.password)]);
        }
        c
    }

    /// A raw etcd client on this cluster (secured like the store).
    pub async fn raw_client(&self) -> etcd_client::Client {
        let (scheme, opts) = match &self.secure {
            #[cfg(feature = "tls")]
            Some(s) => {
                let ca = std::fs::read(&s.ca).expect("CA");
                let tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca));
                let opts = etcd_client::ConnectOptions::new()
                    .with_tls(tls)
                    .with_user(&s.user, &s.password);
                ("https", Some(opts))
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => panic!("a secured cluster needs the tls feature"),
            None => ("http", None),
        };
        let eps: Vec<String> = self
            .endpoints
            .split(',')
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        etcd_client::Client::connect(&eps, opts)
            .await
            .expect("etcd")
    }

    /// A store on this cluster under `prefix`, its wake hook feeding `wake`.
    /// The index (into `pids`) of the member that is the Raft leader now.
    pub fn leader(&self) -> usize {
        let out = self
            .etcdctl()
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .expect("etcdctl");
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let eps: Vec<&str> = self.endpoints.split(',').collect();
        st.as_array()
            .expect("array")
            .iter()
            .find(|m| m["Status"]["leader"] == m["Status"]["header"]["member_id"])
            .and_then(|m| m["Endpoint"].as_str())
            .and_then(|e| eps.iter().position(|x| e.ends_with(x)))
            .expect("a leader")
    }

    pub fn store(&self, prefix: &str, session_ttl: Duration, wake: &Sender<()>) -> Node {
        let mut cfg = self.config(prefix);
        cfg.session_ttl = session_ttl;
        let tx = wake.clone();
        let store = EtcdStore::start(
            cfg,
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .expect("store starts");
        Node {
            store,
            backlog: VecDeque::new(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            let _ = Command::new(script())
                .arg("stop")
                .arg(state)
                .stdin(Stdio::null())
                .output();
        }
    }
}

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/etcd.sh")
}

pub fn prefix(name: &str) -> String {
    format!("lmxtest-{name}-{:08x}", fastrand::u32(..))
}

pub struct Node {
    pub store: EtcdStore,
    pub backlog: VecDeque<StoreEvent>,
}

impl Node {
    pub fn submit(&self, op: StoreOp<'_>) {
        self.store.submit(op).expect("store running");
    }

    pub fn lock(&self, conn: u64, key: &str, id: &str, f: impl FnOnce(&mut LockRequest<'_>)) {
        let mut req = LockRequest::new(ConnId(conn), key, id);
        req.ttl = Ttl::Never;
        f(&mut req);
        self.submit(StoreOp::Lock(req));
    }

    /// Unlocks `id` for connection `conn`; the answer comes back with tag `conn`.
    pub fn unlock(&self, conn: u64, key: &str, id: &str) {
        self.submit(StoreOp::Unlock {
            conn: ConnId(conn),
            tag: conn,
            key,
            id: Some(id),
            force: false,
        });
    }

    /// The first event (backlog first) that `f` accepts; the others stay in the backlog.
    pub fn expect(
        &mut self,
        wake: &Receiver<()>,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&StoreEvent) -> bool,
    ) -> StoreEvent {
        let end = Instant::now() + within;
        loop {
            while let Some(ev) = self.store.poll_event() {
                self.backlog.push_back(ev);
            }
            if let Some(i) = self.backlog.iter().position(&mut f) {
                return self.backlog.remove(i).expect("found");
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {within:?}; got {:?}",
                self.backlog
            );
            let _ = wake.recv_timeout(left.min(Duration::from_millis(50)));
        }
    }
}

pub fn granted<'a>(id: &'a str) -> impl FnMut(&StoreEvent) -> bool + 'a {
    move |e| matches!(e, StoreEvent::Granted { id: i, .. } if i == id)
}

pub fn queued<'a>(id: &'a str) -> impl FnMut(&StoreEvent) -> bool + 'a {
    move |e| matches!(e, StoreEvent::Queued { id: i, .. } if i == id)
}

pub fn token(e: &StoreEvent) -> u64 {
    match e {
        StoreEvent::Granted { grant, .. } => grant.token,
        other => panic!("not a grant: {other:?}"),
    }
}

pub const T: Duration = Duration::from_secs(10);
pub const SESSION: Duration = Duration::from_secs(10);

/// What a contention run saw.
#[derive(Debug, Default)]
pub struct Contention {
    pub grants: usize,
    pub overlaps: usize,
    pub falling_tokens: usize,
    pub errors: usize,
    pub lost: usize,
    /// Longest time without a grant.
    pub max_gap: Duration,
    /// Grants per node after `at` ran.
    pub after: Vec<usize>,
}

/// Clients on every node lock `key`, check they are alone, unlock, and go again, until
/// `target` grants; `at` runs once when `at.0` grants have been seen.
pub fn contend(
    nodes: &mut [Node],
    wake: &Receiver<()>,
    key: &str,
    conns: u64,
    target: usize,
    mut at: (usize, Box<dyn FnMut()>),
) -> Contention {
    #[derive(Clone)]
    enum Phase {
        Locking(String),
        Unlocking,
    }
    let mut next_id = 0u64;
    let mut fresh = || {
        next_id += 1;
        format!("c{next_id}")
    };
    let mut phase: HashMap<(usize, u64), Phase> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for c in 1..=conns {
            let id = fresh();
            node.lock(c, key, &id, |_| {});
            phase.insert((n, c), Phase::Locking(id));
        }
    }
    let mut r = Contention {
        after: vec![0; nodes.len()],
        ..Contention::default()
    };
    let mut at_ran = false;
    let mut holder: Option<(usize, u64)> = None;
    let mut last_token = 0;
    let mut due: Vec<(Instant, usize, u64, String)> = Vec::new();
    let mut last_grant = Instant::now();
    let start = Instant::now();
    while r.grants < target {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "contention stalled: {r:?}"
        );
        let _ = wake.recv_timeout(Duration::from_millis(2));
        r.max_gap = r.max_gap.max(last_grant.elapsed());
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|d| d.0 <= now);
        due = later;
        for (_, n, c, id) in ready {
            if holder == Some((n, c)) {
                holder = None;
            }
            nodes[n].unlock(c, key, &id);
            phase.insert((n, c), Phase::Unlocking);
        }
        for n in 0..nodes.len() {
            while let Some(ev) = nodes[n].store.poll_event() {
                let relock = |nodes: &mut [Node], phase: &mut HashMap<_, _>, c: u64, id: String| {
                    nodes[n].lock(c, key, &id, |_| {});
                    phase.insert((n, c), Phase::Locking(id));
                };
                match ev {
                    StoreEvent::Granted {
                        conn, id, grant, ..
                    } => {
                        let (ConnId(c), token) = (conn, grant.token);
                        if !matches!(phase.get(&(n, c)), Some(Phase::Locking(i)) if **i == *id) {
                            continue;
                        }
                        if holder.is_some() {
                            r.overlaps += 1;
                        }
                        if token <= last_token {
                            r.falling_tokens += 1;
                        }
                        last_token = token;
                        r.grants += 1;
                        last_grant = Instant::now();
                        if at_ran {
                            r.after[n] += 1;
                        }
                        if r.grants == at.0 {
                            (at.1)();
                            at_ran = true;
                        }
                        // The client works alone for a while; it stops before it asks to
                        // unlock, so any grant seen meanwhile is an overlap.
                        holder = Some((n, c));
                        due.push((
                            Instant::now() + Duration::from_millis(3),
                            n,
                            c,
                            id.to_string(),
                        ));
                    }
                    // An unlock's tag is its connection (`Node::unlock`).
                    StoreEvent::Unlocked { tag, .. } => {
                        let id = fresh();
                        relock(nodes, &mut phase, tag, id);
                    }
                    StoreEvent::Failed { conn, .. } => {
                        r.errors += 1;
                        let id = fresh();
                        relock(nodes, &mut phase, conn.0, id);
                    }
                    StoreEvent::Lost { conn, .. } => {
                        r.lost += 1;
                        if holder == Some((n, conn.0)) {
                            holder = None;
                        }
                        due.retain(|d| (d.1, d.2) != (n, conn.0));
                        let id = fresh();
                        relock(nodes, &mut phase, conn.0, id);
                    }
                    _ => {}
                }
            }
        }
    }
    r
}

/// Fails if any node has a grant in its backlog or queue.
pub fn no_stray_grant(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        while let Some(ev) = n.store.poll_event() {
            n.backlog.push_back(ev);
        }
        let stray: Vec<_> = n
            .backlog
            .iter()
            .filter(|e| matches!(e, StoreEvent::Granted { .. }))
            .collect();
        assert!(stray.is_empty(), "out of order: {stray:?}");
    }
}
