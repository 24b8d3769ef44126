//! The broker process killed (-9) and restarted under load from 20 clients: every client learns
//! its lock is lost, none goes on believing it holds one, and tokens after the restart are
//! higher than any before it. (Alone in its binary: it owns a broker process and a port.)

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use live_mutex::client::Error;

use common::lmx_start_on as start_broker;

#[derive(Debug, PartialEq)]
enum Ending {
    /// Held a lock when the broker died, and saw it reported lost.
    HeldAndLost,
    /// A request was in flight: it failed with a connection error.
    RequestFailed,
}

#[test]
fn broker_killed_and_restarted_under_load() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = start_broker(port);
    let url = format!("tcp://127.0.0.1:{port}");
    let killed = Arc::new(AtomicBool::new(false));
    let max_token = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (url, killed, max_token) = (url.clone(), killed.clone(), max_token.clone());
            std::thread::spawn(move || {
                let client = live_mutex::Client::connect(&url).expect("connect");
                let key = format!("k{}", i % 4);
                loop {
                    match client.lock(&key) {
                        Ok(g) => {
                            max_token.fetch_max(g.fencing_token().unwrap_or(0), Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(1));
                            if killed.load(Ordering::SeqCst) {
                                // The broker is gone: the guard must say so, soon.
                                let t0 = Instant::now();
                                while !g.is_lost() {
                                    assert!(
                                        t0.elapsed() < Duration::from_secs(3),
                                        "client {i} still believes it holds {key}"
                                    );
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                                return Ending::HeldAndLost;
                            }
                        }
                        Err(Error::ConnectionLost | Error::Io(_) | Error::LockLost) => {
                            assert!(
                                killed.load(Ordering::SeqCst),
                                "client {i} failed before the kill"
                            );
                            return Ending::RequestFailed;
                        }
                        Err(e) => panic!("client {i}: unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    killed.store(true, Ordering::SeqCst);
    broker.kill().unwrap(); // SIGKILL
    broker.wait().unwrap();
    let endings: Vec<Ending> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let held = endings
        .iter()
        .filter(|e| **e == Ending::HeldAndLost)
        .count();
    eprintln!(
        "20 clients: {held} held a lock and saw it lost, {} had a request fail; max token before {}",
        20 - held,
        max_token.load(Ordering::SeqCst)
    );
    let mut broker = start_broker(port);
    let client = live_mutex::Client::connect(&url).unwrap();
    let g = client.lock("k0").unwrap();
    let after = g.fencing_token().unwrap();
    assert!(
        after > max_token.load(Ordering::SeqCst),
        "token after restart {after} must exceed {}",
        max_token.load(Ordering::SeqCst)
    );
    drop(g);
    broker.kill().ok();
    broker.wait().ok();
}
