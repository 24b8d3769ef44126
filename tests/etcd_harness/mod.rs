//! Two etcd stores on one loopback etcd cluster, and the tools to drive them: see
//! tests/etcd_store.rs.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use live_mutex::store::etcd::{ConnId, EtcdConfig, EtcdStore, LockSpec, StoreEvent, StoreOp, Ttl};

/// One test at a time: the timings below (a release seen on the other broker in under 2 s)
/// are about etcd, not about 2 cores shared by several clusters.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Cluster {
    pub endpoints: String,
    pub pids: Vec<i32>,
    /// Set when this test started the cluster: its state file, for `.ci/etcd.sh stop`.
    state: Option<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    pub fn get(private: bool) -> Option<Cluster> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !private && let Ok(eps) = std::env::var("LMX_ETCD_ENDPOINTS") {
            return Some(Cluster {
                endpoints: eps,
                pids: Vec::new(),
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
            endpoints: var("LMX_ETCD_ENDPOINTS"),
            pids: var("LMX_ETCD_PIDS")
                .split(',')
                .map(|p| p.parse().expect("pid"))
                .collect(),
            state: Some(state),
            _serial: serial,
        })
    }

    /// A store on this cluster under `prefix`, its wake hook feeding `wake`.
    pub fn store(&self, prefix: &str, session_ttl: Duration, wake: &Sender<()>) -> Node {
        let mut cfg =
            EtcdConfig::from_url(&format!("etcd://{}/{prefix}", self.endpoints)).expect("url");
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
    pub fn submit(&self, op: StoreOp) {
        self.store.submit(op).expect("store running");
    }

    pub fn lock(&self, conn: u64, key: &str, id: &str, f: impl FnOnce(&mut LockSpec)) {
        let mut spec = LockSpec::new(ConnId(conn), key, id);
        spec.ttl = Ttl::Never;
        f(&mut spec);
        self.submit(StoreOp::Lock(spec));
    }

    pub fn unlock(&self, conn: u64, key: &str, id: &str) {
        self.submit(StoreOp::Unlock {
            conn: ConnId(conn),
            key: key.into(),
            id: Some(id.into()),
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
        StoreEvent::Granted { token, .. } => *token,
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
                        conn, id, token, ..
                    } => {
                        let ConnId(c) = conn;
                        if !matches!(phase.get(&(n, c)), Some(Phase::Locking(i)) if *i == id) {
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
                        due.push((Instant::now() + Duration::from_millis(3), n, c, id));
                    }
                    StoreEvent::Unlocked { conn, .. } => {
                        let id = fresh();
                        relock(nodes, &mut phase, conn.0, id);
                    }
                    StoreEvent::Error { conn, .. } => {
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
