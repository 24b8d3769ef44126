//! Waiting: the notice on stderr and the time-out name the holder (its name, pid, peer and
//! hold time); parallel tests of a key are seen inside together. The tests that must fail or
//! must run at the same time as others are `#[ignore]`d here and run by a driver test as child
//! processes of this binary (`run_test`), whose output is the evidence.

use live_mutex::serial;
use live_mutex_serial_tests::{run_test, text, together};
use std::time::Duration;

const DIR: &str = env!("CARGO_TARGET_TMPDIR");

/// This binary's name as its broker connection gives it (`waiting-<hash>[pid]`).
fn my_name() -> String {
    let exe = std::env::current_exe().unwrap();
    let prog = exe.file_name().unwrap().to_string_lossy().into_owned();
    format!("{prog}[{}]", std::process::id())
}

#[ignore = "run by times_out_naming_the_holder"]
#[serial(st_wait, timeout = "1s")]
#[test]
fn victim_times_out() {
    unreachable!("st_wait is held by the driver");
}

#[test]
fn times_out_naming_the_holder() {
    let _held = serial("st_wait").unwrap();
    let o = run_test("victim_times_out", &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("#[live_mutex::serial] on waiting::victim_times_out"),
        "{out}"
    );
    assert!(
        out.contains("timed out after 1.0 s waiting for serial(\"st_wait\")"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{:?}", my_name())),
        "holder's name: {out}"
    );
    assert!(
        out.contains(&format!("(pid {}, peer \"", std::process::id())),
        "pid, peer: {out}"
    );
    assert!(
        out.contains(" s\n") || out.contains(" s"),
        "hold time: {out}"
    );
}

#[ignore = "run by async_times_out_naming_the_holder"]
#[serial(st_wait_async, timeout = "1s")]
#[tokio::test]
async fn async_victim_times_out() {
    unreachable!("st_wait_async is held by the driver");
}

#[test]
fn async_times_out_naming_the_holder() {
    let _held = serial("st_wait_async").unwrap();
    let o = run_test("async_victim_times_out", &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("timed out after 1.0 s"), "{out}");
    assert!(
        out.contains(&format!("(pid {}, peer", std::process::id())),
        "{out}"
    );
}

#[ignore = "run by a_long_wait_says_who_holds_the_key"]
#[serial(st_notice, timeout = "4s")]
#[test]
fn victim_waits_long() {}

#[test]
fn a_long_wait_says_who_holds_the_key() {
    let _held = serial("st_notice").unwrap();
    let o = run_test("victim_waits_long", &[("LMX_SERIAL_NOTICE_MS", "300")]);
    let out = text(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("live-mutex: waiting::victim_waits_long has waited"))
        .unwrap_or_else(|| panic!("no notice line: {out}"));
    assert!(line.contains("for serial(\"st_notice\") held by"), "{line}");
    assert!(
        line.contains(&format!("{:?} (pid {}", my_name(), std::process::id())),
        "{line}"
    );
    assert!(line.ends_with(" s"), "{line}");
    assert_eq!(
        out.matches("has waited").count(),
        1,
        "one line, once: {out}"
    );
}

#[ignore = "run three at once by parallel_tests_run_together"]
#[live_mutex::parallel(st_together)]
#[test]
fn parallel_member() {
    let _in = live_mutex_serial_tests::enter(DIR, &["st_together"], true, "waiting::member");
    assert!(
        together(
            DIR,
            "st_together",
            3,
            Duration::from_secs(60),
            &std::env::var("ST_RUN").unwrap()
        ),
        "the other parallel members never came in"
    );
}

/// Three parallel holders of one key, in three processes, are all inside at once. (Nothing
/// else takes this key: a serial take queued among them would, by design, hold back the
/// parallel takes behind it. Serial and parallel tests of one key meet on `st_db` instead.)
#[test]
fn parallel_tests_run_together() {
    let run = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let kids: Vec<_> = (0..3)
        .map(|_| {
            let run = run.clone();
            std::thread::spawn(move || run_test("parallel_member", &[("ST_RUN", &run)]))
        })
        .collect();
    for k in kids {
        let o = k.join().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}
