//! One lock+unlock cycle through an embedded broker (the Rust client over NDJSON/TCP, WebSocket
//! and a Unix socket) beside the two ways processes on one machine lock without a broker: a
//! lock file (`open(O_CREAT|O_EXCL)`, retried after a poll sleep of 1 ms or 10 ms, `unlink` to
//! release) and `flock(2)`.
//!
//! * `uncontended/*`: one thread, time per lock+unlock cycle.
//! * `contended/*`: four threads, each with its own connection or file descriptor, on one key;
//!   the time reported is per *handoff* (the lock passing to a different thread). Polling and
//!   `flock` let the releasing thread take the lock straight back, so a cycle there is often
//!   no handoff at all: counting handoffs rather than cycles charges that unfairness.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use live_mutex::broker::Broker;
use live_mutex::{Client, LockOptions, Ttl};

const THREADS: usize = 4;
/// A contended sample stops after this long even if fewer handoffs happened than asked for (a
/// polling waiter can miss the short window in which the lock file is absent); the time is then
/// scaled by handoffs done.
const SAMPLE_CAP: Duration = Duration::from_secs(2);

/// A way to take and release one lock, held by one thread.
trait Locker: Send {
    fn lock(&mut self);
    fn unlock(&mut self);
}

struct Broker1 {
    client: Client,
    opts: LockOptions,
    guard: Option<live_mutex::LockGuard>,
}

impl Locker for Broker1 {
    fn lock(&mut self) {
        self.guard = Some(self.client.lock_with("bench", &self.opts).expect("lock"));
    }
    fn unlock(&mut self) {
        self.guard.take().expect("held").unlock().expect("unlock");
    }
}

struct LockFile {
    path: CString,
    poll: Duration,
}

impl Locker for LockFile {
    fn lock(&mut self) {
        loop {
            let fd = unsafe {
                libc::open(
                    self.path.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd >= 0 {
                unsafe { libc::close(fd) };
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "open lock file: {e}");
            std::thread::sleep(self.poll);
        }
    }
    fn unlock(&mut self) {
        assert_eq!(unsafe { libc::unlink(self.path.as_ptr()) }, 0, "unlink");
    }
}

struct Flock {
    fd: i32,
}

impl Flock {
    fn open(path: &Path) -> Flock {
        let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
        Flock { fd }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

impl Locker for Flock {
    fn lock(&mut self) {
        assert_eq!(unsafe { libc::flock(self.fd, libc::LOCK_EX) }, 0, "flock");
    }
    fn unlock(&mut self) {
        assert_eq!(unsafe { libc::flock(self.fd, libc::LOCK_UN) }, 0, "flock");
    }
}

#[derive(Clone)]
enum Kind {
    Broker(String),
    LockFile(PathBuf, Duration),
    Flock(PathBuf),
}

impl Kind {
    fn make(&self) -> Box<dyn Locker> {
        match self {
            Kind::Broker(url) => Box::new(Broker1 {
                client: Client::connect(url).expect("connect"),
                opts: LockOptions::new().ttl(Ttl::After(Duration::from_secs(30))),
                guard: None,
            }),
            Kind::LockFile(p, poll) => Box::new(LockFile {
                path: CString::new(p.as_os_str().as_encoded_bytes()).unwrap(),
                poll: *poll,
            }),
            Kind::Flock(p) => Box::new(Flock::open(p)),
        }
    }
}

/// Runs THREADS lockers on one key until `handoffs` handoffs happened (or SAMPLE_CAP passed);
/// returns the time for exactly `handoffs`, scaled if the cap cut the run short.
fn contended(lockers: &mut [Box<dyn Locker>], handoffs: u64) -> Duration {
    const NOBODY: usize = usize::MAX;
    let owner = AtomicUsize::new(NOBODY);
    let count = AtomicUsize::new(0);
    let target = handoffs as usize;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (i, l) in lockers.iter_mut().enumerate() {
            let (owner, count) = (&owner, &count);
            s.spawn(move || {
                while count.load(Ordering::Relaxed) < target && t0.elapsed() < SAMPLE_CAP {
                    l.lock();
                    if owner.swap(i, Ordering::Relaxed) != i {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    l.unlock();
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    let done = count.load(Ordering::Relaxed).max(1) as f64;
    elapsed.mul_f64(handoffs as f64 / done)
}

fn lock_cycle(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lmx-lock-cycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("broker.sock");
    let broker = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .uds(&uds)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = broker.local_addr().unwrap();
    let kinds = [
        ("broker tcp-ndjson", Kind::Broker(format!("tcp://{addr}"))),
        ("broker websocket", Kind::Broker(format!("ws://{addr}"))),
        (
            "broker uds",
            Kind::Broker(format!("unix://{}", uds.display())),
        ),
        (
            "lockfile poll 1ms",
            Kind::LockFile(dir.join("a.lock"), Duration::from_millis(1)),
        ),
        (
            "lockfile poll 10ms",
            Kind::LockFile(dir.join("b.lock"), Duration::from_millis(10)),
        ),
        ("flock", Kind::Flock(dir.join("c.flock"))),
    ];

    let mut g = c.benchmark_group("uncontended");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, kind) in &kinds {
        let mut l = kind.make();
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                l.lock();
                l.unlock();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("contended {THREADS} threads, per handoff"));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for (name, kind) in &kinds {
        let mut lockers: Vec<_> = (0..THREADS).map(|_| kind.make()).collect();
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|n| contended(&mut lockers, n))
        });
    }
    g.finish();

    broker.shutdown();
    broker.join().ok();
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, lock_cycle);
criterion_main!(benches);
