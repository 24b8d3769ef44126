//! `lmx status` and `lmx stop`: a broker at an address seen as a service.
//!
//! The broker reports its pid and uptime in `system-stats` and its version in `pong`, so any
//! client can see which broker answers. `lmx stop` sends SIGTERM (the broker's clean shutdown)
//! to that pid only after proving, from this host's own records, that the pid is the process
//! listening at the address: a broker's word alone must never choose which of the user's
//! processes is signalled.

use super::duration::{self, as_ms};
use super::out::{safe, say, tell};
use super::{EXIT_FAIL, EXIT_UNAVAILABLE, report};
use clap::Args;
use live_mutex::{Client, Error};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub(crate) struct StopArgs {
    /// How long to wait for the broker to exit (10s, 500ms; a plain number is ms)
    #[arg(short = 'w', long, value_name = "DURATION", default_value = "10s",
          value_parser = duration::ms)]
    timeout: Duration,
}

/// What `status` shows.
struct Status {
    version: Option<String>,
    pid: Option<u64>,
    uptime: Option<Duration>,
    connections: u64,
    keys: u64,
    holders: u64,
    waiters: u64,
}

fn read_status(client: &Client) -> Result<Status, Error> {
    let pong = client.ping()?;
    let s = client.stats()?;
    Ok(Status {
        version: pong.version,
        pid: s.pid,
        uptime: s.uptime_ms.map(Duration::from_millis),
        connections: s.connections,
        keys: s.keys,
        holders: s.holders,
        waiters: s.waiters,
    })
}

pub(crate) fn status(url: &str, spawn: bool, as_json: bool) -> i32 {
    let st = match super::connect(url, spawn).and_then(|c| read_status(&c)) {
        Ok(s) => s,
        Err(e) => {
            if as_json {
                say!(
                    "{}",
                    json!({"url":url,"running":false,"error":e.to_string()})
                );
            }
            return report(url, "status", &e);
        }
    };
    if as_json {
        say!(
            "{}",
            json!({"url":url,"running":true,"version":st.version,"pid":st.pid,
                "uptimeMs":st.uptime.map(as_ms),"connections":st.connections,"keys":st.keys,
                "holders":st.holders,"waiters":st.waiters})
        );
        return 0;
    }
    let unknown = || "? (not reported)".to_string();
    say!("broker at {url}: running");
    say!(
        "  version      {}",
        st.version
            .as_deref()
            .map_or_else(unknown, |v| safe(v).into_owned())
    );
    say!(
        "  pid          {}",
        st.pid.map_or_else(unknown, |p| p.to_string())
    );
    say!("  uptime       {}", st.uptime.map_or_else(unknown, human));
    say!("  connections  {}", st.connections);
    say!(
        "  keys         {} ({} held, {} waiting)",
        st.keys,
        st.holders,
        st.waiters
    );
    0
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12.3s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) fn stop(url: &str, as_json: bool, a: StopArgs) -> i32 {
    let done = |stopped: bool, pid: Option<u64>, msg: String| {
        if as_json {
            say!("{}", json!({"url":url,"stopped":stopped,"pid":pid}));
        } else {
            tell!("lmx: {msg}");
        }
        0
    };
    let client = match Client::connect(url) {
        Ok(c) => c,
        // Nothing answers: already stopped, as `systemctl stop` of a stopped unit.
        Err(Error::Io(e)) => {
            return done(false, None, format!("no broker answers at {url} ({e})"));
        }
        Err(e) => return report(url, "stop", &e),
    };
    let pid = match client.stats() {
        Ok(s) => s.pid,
        Err(e) => return report(url, "stop", &e),
    };
    drop(client);
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        tell!(
            "lmx stop: the broker at {url} does not report its pid (an npm broker, or an older \
             lmx): stop it the way it was started"
        );
        return EXIT_FAIL;
    };
    if let Err(why) = listener::proves(url, pid) {
        tell!("lmx stop: will not signal pid {pid}: {why}");
        return EXIT_FAIL;
    }
    // SAFETY: kill has no memory effects; the pid was checked above.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        tell!("lmx stop: pid {pid}: {e}");
        return if e.raw_os_error() == Some(libc::ESRCH) {
            0
        } else {
            EXIT_FAIL
        };
    }
    let deadline = Instant::now() + a.timeout;
    while Instant::now() < deadline {
        if gone(pid) {
            return done(
                true,
                Some(pid as u64),
                format!("stopped the broker at {url} (pid {pid})"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tell!(
        "lmx stop: pid {pid} still runs {:?} after SIGTERM (it finishes with its connections; \
         try again, or kill -9 {pid})",
        a.timeout
    );
    EXIT_UNAVAILABLE
}

/// The process has exited (a zombie waiting for its parent counts as exited).
fn gone(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        return stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    }
    false
}

/// Proof that a pid is the process listening at a URL, from the kernel's own records.
mod listener {
    /// `Ok` when `pid` is the process that listens at `url`.
    #[cfg(target_os = "linux")]
    pub(super) fn proves(url: &str, pid: libc::pid_t) -> Result<(), String> {
        use live_mutex::client::{LocalAddr, spawn_target};
        // The client's own parser, which also refuses a broker on another host.
        let inode = match spawn_target(url).map_err(|e| e.to_string())? {
            LocalAddr::Unix(path) => unix_inode(&path.to_string_lossy())?,
            LocalAddr::Tcp(addr) => tcp_inode(addr)?,
        };
        let fds = format!("/proc/{pid}/fd");
        let want = format!("socket:[{inode}]");
        let entries = std::fs::read_dir(&fds).map_err(|e| format!("{fds}: {e}"))?;
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Ok(());
            }
        }
        Err(format!("it does not hold the socket listening at {url}"))
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn proves(url: &str, _pid: libc::pid_t) -> Result<(), String> {
        Err(format!(
            "on this system lmx cannot prove which process listens at {url}; send SIGTERM to \
             the broker's pid yourself (`lmx status` shows it)"
        ))
    }

    /// The inode of the listening Unix socket bound at `path` (`/proc/net/unix`).
    #[cfg(target_os = "linux")]
    fn unix_inode(path: &str) -> Result<u64, String> {
        let table = std::fs::read_to_string("/proc/net/unix").map_err(|e| e.to_string())?;
        // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON.
        table
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
                (listening && f.get(7) == Some(&path)).then(|| f.get(6)?.parse().ok())?
            })
            .next()
            .ok_or_else(|| format!("no socket listens at {path}"))
    }

    /// The inode of the socket listening at `addr`, or on every address at its port.
    #[cfg(target_os = "linux")]
    fn tcp_inode(addr: std::net::SocketAddr) -> Result<u64, String> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let port = addr.port();
        // /proc/net/tcp{,6} write addresses as 32-bit words in host byte order.
        let hex = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => format!("{:08X}:{port:04X}", u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut s = String::new();
                for w in o.chunks(4) {
                    let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                    s.push_str(&format!("{w:08X}"));
                }
                format!("{s}:{port:04X}")
            }
        };
        let wanted = [
            hex(addr.ip()),
            hex(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            hex(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ];
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(t) = std::fs::read_to_string(table) else {
                continue;
            };
            // sl local_address rem_address st ... inode (10th field); st 0A is LISTEN.
            for l in t.lines().skip(1) {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() > 9
                    && f[3] == "0A"
                    && wanted.iter().any(|w| w == f[1])
                    && let Ok(inode) = f[9].parse()
                {
                    return Ok(inode);
                }
            }
        }
        Err(format!("no socket listens at {addr}"))
    }
}
