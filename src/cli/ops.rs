//! The one-request commands: acquire, release, ls, info, stats, ping.

use super::out::{safe, say};
use super::{Cmd, report};
use live_mutex::client::{LockInfo, Who};
use live_mutex::{LockOptions, Ttl};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn op(url: &str, spawn: bool, as_json: bool, cmd: Cmd) -> i32 {
    let client = match super::connect(url, spawn) {
        Ok(c) => c,
        Err(e) => return report(url, "connect", &e),
    };
    let out = |human: String, machine: serde_json::Value| {
        if as_json {
            say!("{machine}");
        } else if !human.is_empty() {
            say!("{human}");
        }
        0
    };
    match cmd {
        Cmd::Run(_)
        | Cmd::Start(_)
        | Cmd::Bench(_)
        | Cmd::Top(_)
        | Cmd::Status
        | Cmd::Stop(_)
        | Cmd::Completions(_)
        | Cmd::Man(_) => {
            unreachable!("handled in cli::main")
        }
        Cmd::Acquire { key, ttl, timeout } => {
            let mut o = LockOptions::new().ttl(ttl.map_or(Ttl::Never, Ttl::After));
            o.keep_after_disconnect = true;
            o.wait_timeout = timeout;
            match client.lock_with(&key, &o) {
                Ok(g) => {
                    let token = g.fencing_token();
                    let id = g.detach();
                    out(
                        safe(&id).into_owned(),
                        json!({"key":key,"id":id,"fencingToken":token}),
                    )
                }
                Err(e) => report(url, &format!("acquire {}", safe(&key)), &e),
            }
        }
        Cmd::Release { key, id, force } => {
            let r = match id {
                Some(id) if !force => client.unlock(&key, &id),
                _ => client.force_unlock(&key),
            };
            match r {
                Ok(()) => out(String::new(), json!({"key":key,"released":true})),
                Err(e) => report(url, &format!("release {}", safe(&key)), &e),
            }
        }
        Cmd::Ls { long: false } => match client.ls() {
            Ok(keys) => {
                let human: Vec<_> = keys.iter().map(|k| safe(k)).collect();
                out(human.join("\n"), json!({"keys":keys}))
            }
            Err(e) => report(url, "ls", &e),
        },
        Cmd::Ls { long: true } => {
            let keys = match client.ls() {
                Ok(k) => k,
                Err(e) => return report(url, "ls", &e),
            };
            let (mut human, mut machine) = (Vec::new(), Vec::new());
            for key in keys {
                match client.info(&key) {
                    Ok(i) => {
                        human.push(describe(&i));
                        machine.push(info_json(&i));
                    }
                    Err(e) => return report(url, &format!("info {}", safe(&key)), &e),
                }
            }
            out(human.join("\n"), json!({"keys":machine}))
        }
        Cmd::Info { key } => match client.info(&key) {
            Ok(i) => out(describe(&i), info_json(&i)),
            Err(e) => report(url, &format!("info {}", safe(&key)), &e),
        },
        Cmd::Stats => match client.stats() {
            Ok(s) => {
                let h = format!(
                    "keys        {}\nholders     {}\nwaiters     {}\nconnections {}\ngrants      {}",
                    s.keys, s.holders, s.waiters, s.connections, s.grants
                );
                out(
                    h,
                    json!({"keys":s.keys,"holders":s.holders,"waiters":s.waiters,"connections":s.connections,"grants":s.grants}),
                )
            }
            Err(e) => report(url, "stats", &e),
        },
        Cmd::Ping => match client.ping() {
            Ok(p) => {
                let broker = format!("{:?}", p.broker).to_lowercase();
                let us = p.rtt.as_micros() as u64;
                // With a list of brokers: the one that answered.
                let url = client.endpoint().unwrap_or_else(|| url.to_string());
                let version = p
                    .version
                    .as_deref()
                    .map_or(String::new(), |v| format!(" {}", safe(v)));
                let h = format!("pong from {url} ({broker} broker{version}) in {us} µs");
                out(
                    h,
                    json!({"url":url,"broker":broker,"version":p.version,"rttMicros":us,
                        "serverTimestamp":p.server_time_ms}),
                )
            }
            Err(e) => report(url, "ping", &e),
        },
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// `name (peer, pid N)`, or what is known of it.
pub(super) fn who_text(w: &Who<'_>) -> String {
    let mut extra = Vec::new();
    if let Some(p) = &w.peer {
        extra.push(p.to_string());
    }
    if let Some(pid) = w.pid
        && !w
            .name
            .as_deref()
            .is_some_and(|n| n.contains(&format!("[{pid}]")))
        && !w
            .peer
            .as_deref()
            .is_some_and(|p| p.contains(&format!("pid {pid} ")))
    {
        extra.push(format!("pid {pid}"));
    }
    let name = w.name.as_deref().unwrap_or(if w.peer.is_none() {
        "(disconnected)"
    } else {
        "(unnamed)"
    });
    let text = if extra.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", extra.join(", "))
    };
    safe(&text).into_owned()
}

/// How long ago a broker timestamp (Unix ms) was, by this machine's clock.
pub(super) fn ago(since_ms: Option<u64>) -> String {
    let Some(t) = since_ms else {
        return "?".into();
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms);
    let d = Duration::from_millis(now.saturating_sub(t));
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn describe(i: &LockInfo) -> String {
    let mut h = format!(
        "{}: {}, {} holder(s), {} waiting{}",
        safe(&i.key),
        if i.is_locked { "locked" } else { "free" },
        i.holders.len(),
        i.waiters,
        i.max.map_or(String::new(), |m| format!(", max {m}"))
    );
    for x in &i.holders {
        let ttl = x
            .ttl_remaining
            .map_or("no expiry".into(), |d| format!("{} ms left", ms(d)));
        let tok = x.fencing_token.map_or("-".into(), |t| t.to_string());
        h.push_str(&format!(
            "\n  held by {} for {}, {} token {} {}, id {}",
            who_text(&x.who),
            ago(x.held_since_ms),
            x.mode.as_str(),
            tok,
            ttl,
            safe(&x.id)
        ));
    }
    for (n, w) in i.queue.iter().enumerate() {
        h.push_str(&format!(
            "\n  {}. waiting: {} for {}, {}, id {}",
            n + 1,
            who_text(&w.who),
            ago(w.waiting_since_ms),
            w.mode.as_str(),
            safe(&w.id)
        ));
    }
    h
}

fn info_json(i: &LockInfo) -> serde_json::Value {
    let holders: Vec<_> = i
        .holders
        .iter()
        .map(|x| {
            json!({"id":x.id,"mode":x.mode.as_str(),"fencingToken":x.fencing_token,
                "ttlRemaining":x.ttl_remaining.map(ms),"heldSince":x.held_since_ms,
                "peer":x.who.peer,"name":x.who.name,"pid":x.who.pid})
        })
        .collect();
    let queue: Vec<_> = i
        .queue
        .iter()
        .map(|w| {
            json!({"id":w.id,"mode":w.mode.as_str(),"waitingSince":w.waiting_since_ms,
                "peer":w.who.peer,"name":w.who.name,"pid":w.who.pid})
        })
        .collect();
    json!({"key":i.key,"isLocked":i.is_locked,"holders":holders,"waiters":i.waiters,
        "queue":queue,"readers":i.readers,"max":i.max})
}
