//! Alone in its binary so that no other test competes for the CPU while it measures.
mod common;

use common::{broker, scratch, stop, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

use common::LMX;

#[test]
fn kill_9_of_holder_hands_over_within_100ms() {
    let (b, url) = broker();
    let dir = scratch("kill");
    let (held, got) = (dir.join("held"), dir.join("got"));
    let run = |script: String| {
        Command::new(LMX)
            .args(["--url", &url, "run", "kk", "--", "sh", "-c", &script])
            .spawn()
            .unwrap()
    };
    let mut holder = run(format!(
        "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 30",
        held.display()
    ));
    wait_for(&held);
    let mut waiter = run(format!(": > {}", got.display()));
    let client = live_mutex::Client::connect(&url).unwrap();
    while client.info("kk").unwrap().waiters == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = Instant::now();
    holder.kill().unwrap();
    while !got.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_micros(500));
    }
    let handoff = t0.elapsed();
    eprintln!("kill -9 handoff: {handoff:?}");
    assert!(
        handoff < Duration::from_millis(100),
        "handoff took {handoff:?}"
    );
    assert!(waiter.wait().unwrap().success());
    holder.wait().unwrap();
    // The orphaned command was killed with its lmx (it no longer had the lock).
    let pid: i32 = std::fs::read_to_string(&held)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Instant::now();
    let gone = |pid: i32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    };
    while !gone(pid) && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        gone(pid),
        "the command of a killed lmx run must not outlive it"
    );
    stop(b);
    drop(dir);
}
