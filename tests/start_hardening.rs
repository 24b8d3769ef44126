//! `lmx start` on a host shared with others (issue 20, item 15): it opens no file through a
//! symlink, raises its open-file limit and says what connection cap is in effect, and checks
//! the per-user directory however its socket was named.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TempDir;
use live_mutex::broker::Broker;

use common::LMX;

/// The socket's lock file and `--log` are never opened through a symlink: a broker run by
/// root in a directory others can write to would otherwise create or lock the file it names.
#[test]
fn a_symlinked_lock_file_or_log_is_refused() {
    let dir = TempDir::new();
    let sock = dir.join("b.sock");
    let victim = dir.join("victim");
    std::os::unix::fs::symlink(&victim, dir.join("b.sock.lock")).unwrap();
    let r = Broker::builder().no_tcp().uds(&sock).bind();
    let err = r.err().map(|e| e.to_string()).unwrap_or_default();
    println!("lock file through a symlink: {err}");
    assert!(err.contains("b.sock.lock"), "{err:?}");
    assert!(!victim.exists(), "the symlink's target was created");

    let log = dir.join("log");
    let victim = dir.join("victim-log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let o = Command::new(LMX)
        .args(["start", "--daemon", "--idle-exit", "1", "--uds"])
        .arg(dir.join("c.sock"))
        .arg("--log")
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("--log through a symlink: {err}");
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--log"), "{err}");
    assert!(!victim.exists(), "the symlink's target was created");
}

/// Starts `lmx start` under a shell `ulimit`; returns its "at most N connections" line (empty
/// if none within 10 s) and the soft open-file limit it runs with; then stops it.
fn start_under(ulimit: &str, extra: &str) -> (String, u64) {
    let mut child = Command::new("bash")
        .args([
            "-c",
            &format!("{ulimit}; exec {LMX} start --port 0 {extra}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            if l.contains("at most") && tx.send(l.trim().to_string()).is_err() {
                return;
            }
        }
    });
    let cap = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse().ok())
        .unwrap();
    child.kill().ok();
    child.wait().ok();
    (cap, soft)
}

/// The soft open-file limit is raised toward the hard one as far as `--max-connections`
/// needs; when the hard limit is lower, the cap in effect is lowered to fit, and said.
#[test]
fn lmx_start_raises_the_open_file_limit_and_reports_the_connection_cap() {
    let hard: u64 = String::from_utf8(
        Command::new("bash")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    if hard >= 1064 {
        let (cap, soft) = start_under("ulimit -Sn 256", "--max-connections 1000");
        println!(
            "soft limit 256, --max-connections 1000: {cap:?}; runs with a soft limit of {soft}"
        );
        assert!(cap.contains("at most 1000 connections"), "{cap}");
        assert!(soft >= 1064, "{soft}");
    }
    let (cap, soft) = start_under("ulimit -n 100", "");
    println!("limit 100 (soft and hard), default --max-connections: {cap:?}; soft {soft}");
    assert!(cap.contains("at most 88 connections, not 10000"), "{cap}");
    assert_eq!(soft, 100);
}

/// `lmx --url unix://<per-user dir>/broker.sock start --daemon` checks the per-user directory
/// as the default socket does: one that others may enter is refused.
#[test]
fn a_daemon_on_a_named_socket_in_the_per_user_dir_checks_the_dir() {
    let xdg = TempDir::new();
    let open = xdg.join("live-mutex");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let url = format!("unix://{}/broker.sock", open.display());
    let o = Command::new(LMX)
        .env("XDG_RUNTIME_DIR", &*xdg)
        .args(["--url", &url, "start", "--daemon", "--idle-exit", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("--url in an open per-user dir: {err}");
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("is not a private directory"), "{err}");
    assert!(!open.join("broker.sock").exists());
}

/// `--auth-token-file`: the token comes from a file, so it is in no command line.
#[test]
fn the_auth_token_can_come_from_a_file() {
    use std::io::Write;
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let sock = dir.join("t.sock");
    let mut child = Command::new(LMX)
        .args(["start", "--port", "0", "--uds"])
        .arg(&sock)
        .arg("--auth-token-file")
        .arg(&file)
        .env_remove("LMX_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut answers = Vec::new();
    for token in ["wrong", "s3cret"] {
        let mut s = None;
        for _ in 0..200 {
            s = std::os::unix::net::UnixStream::connect(&sock).ok();
            if s.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = s.expect("the broker listens");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(s, r#"{{"type":"auth","uuid":"a","token":"{token}"}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        answers.push(line);
    }
    child.kill().ok();
    child.wait().ok();
    println!("auth with a wrong token, then the file's: {answers:?}");
    assert!(
        answers[0].contains(r#""authenticated":false"#),
        "{answers:?}"
    );
    assert!(
        answers[1].contains(r#""authenticated":true"#),
        "{answers:?}"
    );
}
