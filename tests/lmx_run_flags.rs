//! Issue 26: `lmx run` with flock(1)'s habits (no `--`, `-n`, `-s`, `-x`, `-w`, `-E`, `-c`),
//! human durations wherever a duration is taken, and `--max-hold`.

mod common;

use common::{broker, scratch, stop};
use std::process::Output;
use std::time::{Duration, Instant};

use common::lmx_at as lmx;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn nowait_timeout_conflict_code_and_shell_command() {
    let (b, url) = broker();
    // The issue's own example: the lock is free, so the command's status comes back.
    let free = lmx(
        &url,
        &["run", "-n", "-w", "2s", "key", "sh", "-c", "exit 3"],
    );
    assert_eq!(code(&free), 3, "{}", stderr(&free));

    let held = lmx(&url, &["acquire", "key"]);
    assert!(held.status.success());
    // Busy: -n wins over -w, as in flock(1): 75 at once, not after 2 s.
    let t = Instant::now();
    let busy = lmx(
        &url,
        &["run", "-n", "-w", "2s", "key", "sh", "-c", "exit 3"],
    );
    let took = t.elapsed();
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    assert!(took < Duration::from_millis(1500), "-n waited {took:?}");
    assert!(stderr(&busy).contains("busy"), "{}", stderr(&busy));
    // -E picks the status for "not obtained", for -n and for -w alike.
    let e = lmx(&url, &["run", "-n", "-E", "9", "key", "true"]);
    assert_eq!(code(&e), 9);
    let t = Instant::now();
    let e = lmx(&url, &["run", "-w", "300ms", "-E", "0", "key", "false"]);
    assert_eq!(code(&e), 0, "-E 0 with the command not run");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        code(&lmx(
            &url,
            &["run", "--conflict-exit-code", "200", "-n", "key", "true"]
        )),
        200
    );
    assert!(lmx(&url, &["release", "key", "--force"]).status.success());

    // -c: a shell command line, with the lock's environment.
    let c = lmx(&url, &["run", "key", "-c", "echo \"$LMX_KEY\"; exit 4"]);
    assert_eq!(code(&c), 4);
    assert_eq!(String::from_utf8_lossy(&c.stdout).trim(), "key");
    let c = lmx(&url, &["run", "-c", "exit 5", "key"]);
    assert_eq!(code(&c), 5, "-c before the key");
    // No `--` needed, and the command's own options are its own (`-c`, `-n` here are sh's
    // and echo's, not lmx's); `--` still works.
    let o = lmx(&url, &["run", "key", "echo", "-n", "x"]);
    assert_eq!(
        (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
        (0, "x")
    );
    let o = lmx(&url, &["run", "key", "--", "echo", "dashes"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "dashes");
    // A command and -c together is a usage error.
    assert_eq!(code(&lmx(&url, &["run", "key", "-c", "true", "true"])), 2);
    stop(b);
}

#[test]
fn shared_and_exclusive_short_flags() {
    let (b, url) = broker();
    let dir = scratch("sx");
    let mark = dir.0.join("in");
    // Two -s holders at once: the second starts while the first is still inside.
    let script = format!(
        "touch {m}; i=0; while [ $i -lt 300 ] && [ -e {m} ]; do sleep 0.01; i=$((i+1)); done",
        m = mark.display()
    );
    let first = {
        let url = url.clone();
        std::thread::spawn(move || code(&lmx(&url, &["run", "-s", "s", "sh", "-c", &script])))
    };
    common::wait_for(&mark);
    let second = lmx(
        &url,
        &["run", "-s", "-n", "s", "rm", &mark.display().to_string()],
    );
    assert_eq!(code(&second), 0, "a second -s holder: {}", stderr(&second));
    assert_eq!(first.join().unwrap(), 0);
    // -x conflicts with -s.
    assert_eq!(code(&lmx(&url, &["run", "-s", "-x", "s", "true"])), 2);
    assert_eq!(code(&lmx(&url, &["run", "-x", "-n", "s", "true"])), 0);
    stop(b);
    drop(dir);
}

/// `ttlRemaining` (ms) of the holder of `key`, from `lmx --json info`.
fn ttl_left(url: &str, key: &str) -> u64 {
    let o = lmx(url, &["--json", "info", key]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["holders"][0]["ttlRemaining"].as_u64().unwrap()
}

#[test]
fn durations_take_every_unit() {
    let (b, url) = broker();
    for (i, (given, ms)) in [
        ("2500", 2_500),
        ("1500ms", 1_500),
        ("2s", 2_000),
        ("1.5s", 1_500),
        ("2m", 120_000),
        ("1m30s", 90_000),
        ("1h", 3_600_000),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("d{i}");
        let o = lmx(&url, &["acquire", "--ttl", given, &key]);
        assert!(o.status.success(), "{given}: {}", stderr(&o));
        let left = ttl_left(&url, &key);
        assert!(
            left <= ms && left + 1_000 > ms,
            "--ttl {given}: {left} ms left, want about {ms}"
        );
    }
    // Microseconds (plain for --hold-us), and a wait time-out in each small unit.
    let o = lmx(
        &url,
        &["bench", "--clients", "1", "--ops", "5", "--hold-us", "20us"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(lmx(&url, &["acquire", "busy"]).status.success());
    for w in ["150", "150ms", "0.15s"] {
        let t = Instant::now();
        let o = lmx(&url, &["run", "-w", w, "busy", "true"]);
        let took = t.elapsed();
        assert_eq!(code(&o), 75, "-w {w}");
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(5),
            "-w {w}: {took:?}"
        );
    }
    // A bad duration is a usage error that says what it wants.
    let o = lmx(&url, &["run", "-w", "5 parsecs", "busy", "true"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("500ms"), "{}", stderr(&o));
    stop(b);
}

#[test]
fn max_hold_stops_renewals_and_the_lock_is_lost() {
    let (b, url) = broker();
    let t = Instant::now();
    // Renewed every 100 ms until 400 ms after the grant; lost when the TTL then runs out.
    let o = lmx(
        &url,
        &[
            "run",
            "--ttl",
            "300ms",
            "--max-hold",
            "400ms",
            "--kill-on-loss",
            "mh",
            "sleep",
            "10",
        ],
    );
    let took = t.elapsed();
    assert_eq!(code(&o), 76, "{}", stderr(&o));
    assert!(stderr(&o).contains("lost"), "{}", stderr(&o));
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "lost after {took:?}"
    );
    // --max-hold alone (no TTL to run out) is refused.
    assert_eq!(
        code(&lmx(&url, &["run", "--max-hold", "1s", "mh", "true"])),
        2
    );
    // Without --max-hold the same command keeps its lock past many TTLs.
    let o = lmx(&url, &["run", "--ttl", "150ms", "mh", "sleep", "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stop(b);
}
