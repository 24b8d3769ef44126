//! Issue 26: `lmx` as a service: `status` and `stop` against a daemon, `--spawn` honoured or
//! refused with a reason, an environment variable for every `start` option, `NO_COLOR` and
//! `--color`, shell completions and the man page.

mod common;

use common::scratch;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{LMX, lmx, lmx_env};

use common::output_text as text;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
}

/// `status` and `stop` against a daemon at `url` (started here), then again once stopped.
fn status_then_stop(url: &str, start: &[&str]) {
    let o = lmx(start);
    assert!(o.status.success(), "{}", text(&o));
    let s = lmx(&["--url", url, "status"]);
    assert!(s.status.success(), "{}", text(&s));
    let human = text(&s);
    for want in [
        "running",
        "version",
        env!("CARGO_PKG_VERSION"),
        "pid",
        "uptime",
        "connections",
        "keys",
    ] {
        assert!(human.contains(want), "{want} missing: {human}");
    }
    let v = json(&lmx(&["--url", url, "--json", "status"]));
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(v["running"], true);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptimeMs"].as_u64().is_some() && v["connections"].as_u64() >= Some(1));
    assert!(alive(pid));

    let t = Instant::now();
    let o = lmx(&["--url", url, "stop"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("pid {pid}")), "{}", text(&o));
    assert!(!alive(pid), "pid {pid} still runs after lmx stop");
    assert!(t.elapsed() < Duration::from_secs(10));
    let s = lmx(&["--url", url, "status"]);
    assert_eq!(s.status.code(), Some(69), "{}", text(&s));
    // Stopping what is stopped is done already.
    let o = lmx(&["--url", url, "stop"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn status_and_stop_a_daemon_on_a_unix_socket() {
    let dir = scratch("svc-uds");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let url = format!("unix://{}", dir.0.join("b.sock").display());
    status_then_stop(&url, &["--url", &url, "start", "--daemon"]);
    drop(dir);
}

#[test]
fn status_and_stop_a_daemon_on_tcp() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    status_then_stop(&url, &["--url", &url, "start", "--daemon"]);
}

/// A peer that answers like a broker and names another process as its pid: `lmx stop` must
/// not signal that process.
#[test]
fn stop_never_signals_a_pid_it_cannot_prove() {
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let pid = victim.id();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let uuid = v["uuid"].clone();
                    let reply = match v["type"].as_str() {
                        Some("ping") => serde_json::json!({"type":"pong","uuid":uuid,
                            "serverTimestamp":1,"version":"9.9.9"}),
                        Some("system-stats-request") => serde_json::json!({
                            "type":"system-stats-response","uuid":uuid,"stats":{"keys":0,
                            "holders":0,"waiters":0,"connections":1,"grants":0,"pid":pid,
                            "uptimeMs":1}}),
                        _ => continue,
                    };
                    let _ = writeln!(w, "{reply}");
                }
            });
        }
    });
    let o = lmx(&["--url", &url, "stop"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("will not signal"), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the victim was signalled"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn spawn_is_honoured_or_refused_with_a_reason() {
    let dir = scratch("svc-spawn");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let url = format!("unix://{}", dir.0.join("s.sock").display());
    // top and bench start the broker they need.
    let o = lmx(&["--url", &url, "--spawn", "top", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("lmx top"), "{}", text(&o));
    let o = lmx(&["--url", &url, "stop"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = lmx(&[
        "--url",
        &url,
        "--spawn",
        "bench",
        "--clients",
        "1",
        "--ops",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = lmx(&["--url", &url, "--spawn", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(lmx(&["--url", &url, "stop"]).status.success());
    // Where it cannot apply, --spawn is refused with the reason...
    for args in [
        &["start"][..],
        &["stop"],
        &["completions", "bash"],
        &["man"],
    ] {
        let mut a = vec!["--url", &url, "--spawn"];
        a.extend_from_slice(args);
        let o = lmx(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("--spawn does not apply"), "{}", text(&o));
    }
    // ...unless it comes from LMX_SPAWN, set for a whole session.
    let o = lmx_env(&["completions", "bash"], &[("LMX_SPAWN", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    drop(dir);
}

/// Every option of `lmx start` names its environment variable in `--help`.
#[test]
fn every_start_option_has_an_environment_variable() {
    let help = String::from_utf8(lmx(&["start", "--help"]).stdout).unwrap();
    let opts = help.split("Options:").nth(1).unwrap();
    let mut missing = Vec::new();
    let mut current: Option<String> = None;
    let mut has_env = false;
    let globals = ["--url", "--json", "--spawn", "--color", "--help"];
    for line in opts.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
            if let Some(o) = current.take()
                && !has_env
            {
                missing.push(o);
            }
            let name = t
                .split([' ', '<', '['])
                .find(|w| w.starts_with("--"))
                .unwrap();
            let name = name.trim_end_matches(',').to_string();
            current = (!globals.contains(&name.as_str())).then_some(name);
            has_env = false;
        }
        has_env |= t.contains("[env: ");
    }
    if let Some(o) = current
        && !has_env
    {
        missing.push(o);
    }
    assert!(
        missing.is_empty(),
        "no environment variable: {missing:?}\n{help}"
    );

    // And they work: a broker configured from the environment alone.
    let dir = scratch("svc-env");
    let sock = dir.0.join("e.sock");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = Command::new(LMX)
        .arg("start")
        .env_remove("LMX_IDLE_EXIT")
        .env("LMX_UDS", &sock)
        .env("live_mutex_port", port.to_string())
        .env("LMX_DEFAULT_TTL", "2s")
        .env("LMX_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut b = Killed(b);
    let url = format!("unix://{}", sock.display());
    let t = Instant::now();
    while !lmx(&["--url", &url, "ping"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(10), "no broker on {url}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A lock whose request names no TTL gets the broker's default.
    let c = live_mutex::Client::connect(&url).unwrap();
    let _g = c.lock("k").unwrap();
    let v = json(&lmx(&["--url", &url, "--json", "info", "k"]));
    let left = v["holders"][0]["ttlRemaining"].as_u64().unwrap();
    assert!(
        left <= 2_000 && left > 1_000,
        "LMX_DEFAULT_TTL: {left} ms left"
    );
    assert!(
        lmx(&["--url", &format!("tcp://127.0.0.1:{port}"), "ping"])
            .status
            .success()
    );
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    assert!(b.0.wait().unwrap().success());
    drop(dir);
}

/// A child process killed if the test fails before it is waited for.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn color_follows_the_flag_and_no_color() {
    let (h, url) = common::broker();
    let bold = |o: &Output| String::from_utf8_lossy(&o.stdout).contains("\x1b[1m");
    assert!(bold(&lmx(&[
        "--url", &url, "--color", "always", "top", "--once"
    ])));
    assert!(bold(&lmx_env(
        &["--url", &url, "top", "--once"],
        &[("LMX_COLOR", "always")]
    )));
    // Into a pipe, `auto` is off; `never` is off.
    assert!(!bold(&lmx(&["--url", &url, "top", "--once"])));
    assert!(!bold(&lmx(&[
        "--url", &url, "--color", "never", "top", "--once"
    ])));
    // On a terminal (a pty from script(1), where installed): bold unless NO_COLOR is set.
    if Command::new("script").arg("--version").output().is_ok() {
        let on_tty = |no_color: Option<&str>| {
            let mut c = Command::new("script");
            c.args([
                "-qec",
                &format!("{LMX} --url {url} top --once"),
                "/dev/null",
            ])
            .env_remove("LMX_COLOR")
            .env_remove("NO_COLOR");
            if let Some(v) = no_color {
                c.env("NO_COLOR", v);
            }
            let o = c.output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            bold(&o)
        };
        assert!(on_tty(None), "no colour on a terminal");
        assert!(!on_tty(Some("1")), "colour despite NO_COLOR");
        assert!(on_tty(Some("")), "an empty NO_COLOR counts as unset");
    }
    common::stop(h);

    // The broker's log: ANSI colour only when asked for.
    let dir = scratch("svc-color");
    let sock = dir.0.join("c.sock");
    for (color, ansi) in [("always", true), ("never", false)] {
        let url = format!("unix://{}", sock.display());
        let b = Command::new(LMX)
            .args(["--color", color, "--url", &url, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut b = Killed(b);
        let mut first = String::new();
        BufReader::new(b.0.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
        b.0.wait().unwrap();
        assert_eq!(first.contains('\x1b'), ansi, "--color {color}: {first:?}");
    }
    drop(dir);
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let o = lmx(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        for word in [
            "lmx",
            "nowait",
            "conflict-exit-code",
            "status",
            "completions",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
        // Where the shell is installed, its parser accepts the script.
        let check: &[&str] = match shell {
            "bash" => &["bash", "-n"],
            "zsh" => &["zsh", "-n"],
            _ => &["fish", "--no-execute"],
        };
        let dir = scratch("compl");
        let f = dir.0.join(format!("lmx.{shell}"));
        std::fs::write(&f, &script).unwrap();
        match Command::new(check[0]).args(&check[1..]).arg(&f).output() {
            Ok(o) => assert!(o.status.success(), "{shell} -n: {}", text(&o)),
            Err(_) => assert_ne!(shell, "bash", "bash is always there"),
        }
    }
    assert_eq!(lmx(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_renders_the_page() {
    let have_man = Command::new("man").arg("--version").output().is_ok();
    if !have_man {
        assert!(
            std::env::var_os("LMX_REQUIRE_MAN").is_none(),
            "LMX_REQUIRE_MAN is set but `man` is missing"
        );
        eprintln!("skipped: no `man` on this machine");
        return;
    }
    let dir = scratch("man");
    for (args, title, words) in [
        (
            &["man"][..],
            "lmx(1)",
            &["SUBCOMMANDS", "lmx-run(1)", "lmx-status(1)"][..],
        ),
        (
            &["man", "run"],
            "lmx-run(1)",
            &["--nowait", "--conflict-exit-code", "--max-hold"],
        ),
    ] {
        let o = lmx(args);
        assert!(o.status.success(), "{}", text(&o));
        let f = dir.0.join("page.1");
        std::fs::write(&f, &o.stdout).unwrap();
        let r = Command::new("man")
            .arg("-l")
            .arg(&f)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(r.status.success(), "man -l: {}", text(&r));
        let page = String::from_utf8_lossy(&r.stdout);
        // man renders bold as overstrikes when not on a terminal; compare plain text.
        let plain: String = {
            let mut s = String::new();
            for c in page.chars() {
                if c == '\u{8}' {
                    s.pop();
                } else {
                    s.push(c);
                }
            }
            s
        };
        assert!(plain.contains(title), "{plain}");
        for w in words {
            assert!(
                plain.contains(w),
                "{w} missing from the rendered page:\n{plain}"
            );
        }
    }
    assert_eq!(lmx(&["man", "nosuch"]).status.code(), Some(2));
    drop(dir);
}

/// contrib/lmx.service: `systemd-analyze verify` accepts it (where systemd is installed), and
/// its command, environment and readiness check bring up a broker that `lmx stop` stops.
#[test]
fn the_systemd_unit_works() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/lmx.service"))
        .unwrap();
    let dir = scratch("unit");
    let here = unit.replace("/usr/local/bin/lmx", LMX);
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let f = dir.0.join("lmx.service");
        std::fs::write(&f, &here).unwrap();
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&f)
            .output()
            .unwrap();
        assert!(o.status.success(), "systemd-analyze verify: {}", text(&o));
    }
    let value = |key: &str| -> Vec<String> {
        here.lines()
            .filter_map(|l| l.strip_prefix(key).map(str::to_string))
            .collect()
    };
    assert_eq!(value("ExecStart="), [format!("{LMX} start")]);
    // The unit's environment, with this test's own port and socket.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sock = dir.0.join("broker.sock");
    let mut env: Vec<(String, String)> = value("Environment=")
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = v
                .replace("/run/live-mutex/broker.sock", &sock.display().to_string())
                .replace("6970", &port.to_string());
            (k.to_string(), v)
        })
        .collect();
    env.push(("PATH".into(), "/usr/bin:/bin".into()));
    let start = |cmd: &str| {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(cmd).env_clear();
        for (k, v) in &env {
            c.env(k, v);
        }
        c
    };
    let b = start(&format!("exec {LMX} start"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _b = Killed(b);
    let post = value("ExecStartPost=/bin/sh -c ");
    let post = post[0].trim_matches('\'');
    let ready = start(post).output().unwrap();
    assert!(ready.status.success(), "ExecStartPost: {}", text(&ready));
    let tcp = format!("tcp://127.0.0.1:{port}");
    assert!(lmx(&["--url", &tcp, "status"]).status.success());
    let o = lmx(&["--url", &tcp, "stop"]);
    assert!(o.status.success(), "{}", text(&o));
    drop(dir);
}

/// A broker whose stderr reader has gone (`lmx start 2>&1 | head -1`) goes on serving, and
/// still shuts down on SIGTERM.
#[test]
fn a_broker_outlives_its_log_reader() {
    let dir = scratch("svc-log");
    let url = format!("unix://{}", dir.0.join("l.sock").display());
    let b = Command::new(LMX)
        .args(["--url", &url, "start", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = Killed(b);
    let mut first = String::new();
    BufReader::new(b.0.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone; each connection below makes the broker log.
    for _ in 0..3 {
        let o = lmx(&["--url", &url, "ping"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while b.0.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SIGTERM did not stop the broker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(b.0.wait().unwrap().success());
    drop(dir);
}
