//! A client that pipelines requests and never reads is cut off at the output cap (its locks
//! released), and the other clients are served meanwhile: every one of their cycles completes.
//! Their p99 with and without the hog is printed, not asserted: timings on a shared machine are
//! for benchmarks (`lmx bench`), not tests.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TestBroker, Transport};

/// 20 clients doing lock/unlock cycles on their own keys; the p99 of a cycle.
fn p99_of_20_clients(b: &TestBroker, cycles: usize) -> Duration {
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let mut c = b.connect(Transport::Tcp);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(cycles);
                for n in 0..cycles {
                    let t0 = Instant::now();
                    let id = format!("c{i}-{n}");
                    assert_eq!(c.lock(&format!("key{i}"), &id)["acquired"], true);
                    assert_eq!(c.unlock(&format!("key{i}"), &id)["unlocked"], true);
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    all[all.len() * 99 / 100]
}

#[test]
fn a_hog_is_cut_off_and_others_keep_being_served() {
    let b = TestBroker::with(|b| {
        b.output_caps(64 * 1024, 1024 * 1024)
            .stall_timeout(Duration::from_millis(500))
    });
    p99_of_20_clients(&b, 50); // warm-up
    let quiet = p99_of_20_clients(&b, 300);
    let mut hog = TcpStream::connect(b.addr).unwrap();
    hog.write_all(b"{\"type\":\"lock\",\"uuid\":\"hog\",\"key\":\"hogged\",\"ttl\":null}\n")
        .unwrap();
    let mut waiter = b.connect(Transport::Tcp);
    assert_eq!(waiter.lock("hogged", "w")["acquired"], false);
    let hogger = std::thread::spawn(move || {
        let burst =
            b"{\"type\":\"ping\",\"uuid\":\"pppppppppppppppppppppppppppppppp\"}\n".repeat(500);
        hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let t0 = Instant::now();
        let mut sent = 0usize;
        while t0.elapsed() < Duration::from_secs(10) && hog.write_all(&burst).is_ok() {
            sent += burst.len();
        }
        sent
    });
    let loaded = p99_of_20_clients(&b, 300);
    // The hog is cut off and its lock goes to the waiter.
    let g = waiter.recv();
    assert_eq!(
        (g["uuid"].as_str(), g["acquired"].as_bool()),
        (Some("w"), Some(true))
    );
    let sent = hogger.join().unwrap();
    eprintln!("p99 without the hog {quiet:?}, with it {loaded:?}; the hog wrote {sent} bytes");
}
