//! The lock file beside a broker's Unix socket, and the idle exit.

use live_mutex::Client;
use live_mutex::broker::{Broker, BrokerError, uds_lock_path};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lifetime-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn uds_broker(path: &std::path::Path) -> Result<Broker, BrokerError> {
    Broker::builder().no_tcp().uds(path).bind()
}

#[test]
fn a_live_socket_is_never_stolen() {
    let d = dir("live");
    let sock = d.join("b.sock");
    let first = uds_broker(&sock).unwrap().spawn().unwrap();
    let url = format!("unix://{}", sock.display());
    assert!(matches!(uds_broker(&sock), Err(BrokerError::UdsInUse(_))));
    Client::connect(&url).unwrap().ping().unwrap();
    first.shutdown();
    first.join().unwrap();
    assert!(!sock.exists(), "the holder removes its socket");
    assert!(uds_lock_path(&sock).exists(), "the lock file stays");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_stale_socket_is_replaced_and_an_unlocked_live_one_is_not() {
    let d = dir("stale");
    let sock = d.join("b.sock");
    // A socket file nobody listens on and nobody holds the lock of: left by a dead broker.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let b = uds_broker(&sock).unwrap().spawn().unwrap();
    Client::connect(&format!("unix://{}", sock.display()))
        .unwrap()
        .ping()
        .unwrap();
    b.shutdown();
    b.join().unwrap();

    // Something listening without the lock file (another program): left alone.
    let other = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert!(matches!(uds_broker(&sock), Err(BrokerError::UdsInUse(_))));
    assert!(sock.exists());
    drop(other);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn idle_exit_waits_for_connections_and_locks_to_go() {
    let d = dir("idle");
    let sock = d.join("b.sock");
    let idle = Duration::from_millis(300);
    let b = Broker::builder()
        .no_tcp()
        .uds(&sock)
        .idle_exit(Some(idle))
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let url = format!("unix://{}", sock.display());
    let c = Client::connect(&url).unwrap();
    // A lock that outlives its connection keeps the broker busy too.
    let id = c
        .lock_with(
            "k",
            &live_mutex::LockOptions::new()
                .keep_after_disconnect()
                .ttl(live_mutex::Ttl::Never),
        )
        .unwrap()
        .detach();
    drop(c);
    std::thread::sleep(idle * 3);
    let c = Client::connect(&url).expect("still up: a lock is held");
    c.unlock("k", &id).unwrap();
    drop(c);
    let end = Instant::now() + Duration::from_secs(20);
    while sock.exists() {
        assert!(Instant::now() < end, "no idle exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.join().unwrap();
    std::fs::remove_dir_all(&d).ok();
}
