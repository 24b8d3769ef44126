//! Helpers for the tests of `#[live_mutex::serial]` and `#[live_mutex::parallel]` in this
//! crate's `tests/`: marker files that prove who was inside a key at once (not timing), and
//! running one test of the same binary as a child process (for the tests that must fail).
//!
//! Every test binary uses the same marker directory (the package's `CARGO_TARGET_TMPDIR`), so
//! keys shared between binaries are checked across processes too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a test stays inside its keys: long enough that a broken exclusion overlaps.
pub const STAY: Duration = Duration::from_millis(60);

/// A test inside some keys; leaving (drop, also on panic) removes its markers.
#[must_use]
pub struct Inside(Vec<PathBuf>);

impl Drop for Inside {
    fn drop(&mut self) {
        for p in &self.0 {
            std::fs::remove_file(p).ok();
        }
    }
}

fn key_dir(dir: &Path, key: &str) -> PathBuf {
    let d = dir.join("markers").join(key);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn parallel_markers(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("parallel-"))
        .collect()
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Enters `keys` as serial (`shared: false`: nobody else may be inside) or parallel (no serial
/// holder may be inside); panics naming the overlap. Each marker is created before the others
/// are looked for, so of two holders that overlap at least one sees the other.
pub fn enter(dir: &str, keys: &[&str], shared: bool, who: &str) -> Inside {
    let mut inside = Inside(Vec::new());
    for k in keys {
        let d = key_dir(Path::new(dir), k);
        if shared {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let p = d.join(format!("parallel-{}-{n}", std::process::id()));
            std::fs::write(&p, who).unwrap();
            inside.0.push(p);
            if let Ok(s) = std::fs::read_to_string(d.join("serial")) {
                panic!("OVERLAP: {who} (parallel {k}) is inside with serial {s}");
            }
        } else {
            let p = d.join("serial");
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => std::io::Write::write_all(&mut f, who.as_bytes()).unwrap(),
                Err(_) => panic!(
                    "OVERLAP: {who} (serial {k}) found serial {:?} inside",
                    std::fs::read_to_string(&p).unwrap_or_default()
                ),
            }
            inside.0.push(p);
            let others = parallel_markers(&d);
            assert!(
                others.is_empty(),
                "OVERLAP: {who} (serial {k}) is inside with parallel {others:?}"
            );
        }
    }
    inside
}

/// [`enter`], stay [`STAY`], leave.
pub fn visit(dir: &str, keys: &[&str], shared: bool, who: &str) {
    let _in = enter(dir, keys, shared, who);
    std::thread::sleep(STAY);
}

/// Waits (at most `within`) until at least `n` parallel holders of `key` are inside at once;
/// whether they were. A barrier in two phases, so that nobody leaves before all have seen the
/// others: each holder waits for `n` markers of `key`, then says so in the directory of this
/// `run` (one per driver run), and stays until `n` holders have said so.
pub fn together(dir: &str, key: &str, n: usize, within: Duration, run: &str) -> bool {
    let d = key_dir(Path::new(dir), key);
    let seen = Path::new(dir).join(format!("together-{run}"));
    std::fs::create_dir_all(&seen).unwrap();
    let end = Instant::now() + within;
    let wait = |ready: &dyn Fn() -> bool| {
        while !ready() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    if !wait(&|| parallel_markers(&d).len() >= n) {
        return false;
    }
    let me = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::write(seen.join(me), "").unwrap();
    wait(&|| std::fs::read_dir(&seen).unwrap().count() >= n)
}

/// Runs the test `name` of the current test binary (ignored tests included) in a child
/// process with `env` added, and returns what it printed. The child is how a test that must
/// fail is run: its failure is the parent's evidence.
pub fn run_test(name: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A child's stdout and stderr, as one text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The holders of `key` now, from a connection of its own (the broker started if need be).
fn holder_modes(key: &str) -> Vec<live_mutex::Mode> {
    let url = live_mutex::client::spawn_url_from_env().unwrap();
    let c = live_mutex::connect_or_spawn(&url).unwrap();
    c.info(key)
        .unwrap()
        .holders
        .iter()
        .map(|h| h.mode)
        .collect()
}

/// Whether `key` is held exclusively (by the caller, when it runs under a serial take of it).
pub fn held_exclusively_elsewhere(key: &str) -> bool {
    holder_modes(key) == [live_mutex::Mode::Exclusive]
}

/// Whether `key` is held shared (and not exclusively).
pub fn held_shared_elsewhere(key: &str) -> bool {
    let m = holder_modes(key);
    !m.is_empty() && m.iter().all(|m| *m == live_mutex::Mode::Read)
}

/// Whether nobody holds `key`.
pub fn free(key: &str) -> bool {
    holder_modes(key).is_empty()
}
