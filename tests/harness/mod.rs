#![allow(dead_code)]
//! Every test starts its own broker on port 0 (or its own socket path), so tests run in
//! parallel without meeting.

use live_mutex::broker::{Broker, BrokerHandle};
use std::path::PathBuf;

pub fn broker() -> (BrokerHandle, String) {
    let h = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let url = format!("tcp://{}", h.local_addr().unwrap());
    (h, url)
}

pub fn stop(h: BrokerHandle) {
    h.shutdown();
    h.join().unwrap();
}

/// A fresh scratch directory under the system temp dir, unique to this process and `tag`.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "lmx-test-{}-{tag}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits (up to 10 s) for a file that another process creates.
pub fn wait_for(p: &std::path::Path) {
    let t = std::time::Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
