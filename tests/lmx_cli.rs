mod common;

use common::{LMX, broker, lmx_at as lmx, scratch, stop, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn shared_counter_16_processes_x_100() {
    let (b, url) = broker();
    let dir = scratch("ctr");
    let file = dir.join("n");
    std::fs::write(&file, "0\n").unwrap();
    // Read, pause, write: without the lock, concurrent runs lose increments.
    let script = format!(
        "read n < '{f}'; sleep 0.001; echo $((n + 1)) > '{f}'",
        f = file.display()
    );
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..100 {
                    let out = lmx(&url, &["run", "ctr", "--", "sh", "-c", &script]);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
        }
    });
    let n = std::fs::read_to_string(&file).unwrap();
    eprintln!(
        "16 x 100 lmx run: counter {} in {:?}",
        n.trim(),
        t.elapsed()
    );
    assert_eq!(n.trim(), "1600");
    stop(b);
    drop(dir);
}

#[test]
fn run_env_exit_status_and_busy() {
    let (b, url) = broker();
    let out = lmx(
        &url,
        &[
            "run",
            "k",
            "--",
            "sh",
            "-c",
            "echo $LMX_KEY $LMX_LOCK_ID $LMX_FENCING_TOKEN; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!((f[0], f[1].len()), ("k", 32));
    assert!(f[2].parse::<u64>().unwrap() > 0);
    assert_eq!(
        lmx(&url, &["run", "k", "--", "/nonexistent/cmd"])
            .status
            .code(),
        Some(127)
    );

    let id = lmx(&url, &["acquire", "k"]);
    assert!(id.status.success());
    let id = String::from_utf8(id.stdout).unwrap().trim().to_string();
    // Held past `lmx acquire`'s exit.
    let busy = lmx(&url, &["run", "--nowait", "k", "--", "true"]);
    assert_eq!(busy.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("busy"));
    let t = Instant::now();
    assert_eq!(
        lmx(&url, &["run", "--timeout", "100", "k", "--", "true"])
            .status
            .code(),
        Some(75)
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    let info = lmx(&url, &["--json", "info", "k"]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["holders"][0]["id"], id.as_str());
    assert_eq!(
        lmx(&url, &["release", "k", "--id", "0123"]).status.code(),
        Some(1)
    );
    assert!(lmx(&url, &["release", "k", "--id", &id]).status.success());
    assert!(
        lmx(&url, &["run", "--nowait", "k", "--", "true"])
            .status
            .success()
    );
    assert!(lmx(&url, &["acquire", "k2"]).status.success());
    assert!(lmx(&url, &["release", "k2", "--force"]).status.success());

    let ls = lmx(&url, &["--json", "ls"]);
    assert!(serde_json::from_slice::<serde_json::Value>(&ls.stdout).unwrap()["keys"].is_array());
    assert!(lmx(&url, &["ping"]).status.success());
    assert!(lmx(&url, &["stats"]).status.success());
    assert_eq!(lmx("tcp://127.0.0.1:1", &["ping"]).status.code(), Some(69));
    stop(b);
}

#[test]
fn shared_runs_overlap() {
    let (b, url) = broker();
    let dir = scratch("shared");
    // Each run waits for the other's mark: only possible if both hold the lock at once.
    let script = |me: &str, other: &str| {
        format!(
            "touch {d}/{me}; i=0; while [ ! -e {d}/{other} ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done; [ -e {d}/{other} ]",
            d = dir.display()
        )
    };
    let (s1, s2) = (script("a", "b"), script("b", "a"));
    let h = {
        let url = url.clone();
        std::thread::spawn(move || {
            lmx(&url, &["run", "--shared", "s", "--", "sh", "-c", &s1])
                .status
                .code()
        })
    };
    assert_eq!(
        lmx(&url, &["run", "--shared", "s", "--", "sh", "-c", &s2])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(h.join().unwrap(), Some(0));
    stop(b);
    drop(dir);
}

#[test]
fn lost_lock_is_reported() {
    let (b, url) = broker();
    let client = live_mutex::Client::connect(&url).unwrap();
    let dir = scratch("lost");
    let mark = dir.join("started");
    let script = format!("touch {}; exec sleep 2", mark.display());
    let run = {
        let url = url.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let out = lmx(
                &url,
                &[
                    "run",
                    "--ttl",
                    "150",
                    "--kill-on-loss",
                    "l",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ],
            );
            (out, t.elapsed())
        })
    };
    while !mark.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    client.force_unlock("l").unwrap();
    let (out, took) = run.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(76),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost"));
    assert!(
        took < Duration::from_millis(1500),
        "--kill-on-loss ended the command early: {took:?}"
    );
    stop(b);
    drop(dir);
}

#[test]
fn signals_reach_the_command_and_broker_loss_is_reported() {
    let (b, url) = broker();
    let dir = scratch("sig");
    let mark = dir.join("ready");
    // SIGTERM to lmx reaches the command, whose own exit status lmx passes on.
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.01; done",
        mark.display()
    );
    let mut child = Command::new(LMX)
        .args(["--url", &url, "run", "s", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for(&mark);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(42));

    // Without --ttl the lock lives with the connection: a broker going away is a lost lock.
    std::fs::remove_file(&mark).unwrap();
    let script = format!("touch {}; exec sleep 5", mark.display());
    let run = {
        let url = url.clone();
        std::thread::spawn(move || {
            lmx(
                &url,
                &["run", "--kill-on-loss", "s", "--", "sh", "-c", &script],
            )
        })
    };
    wait_for(&mark);
    stop(b);
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(76));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost"));
    drop(dir);
}
