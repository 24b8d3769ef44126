//! The one-request commands: acquire, release, ls, info, stats, ping.

use super::{Cmd, report};
use live_mutex::{LockOptions, Ttl};
use serde_json::json;
use std::time::Duration;

pub(super) fn op(url: &str, spawn: bool, as_json: bool, cmd: Cmd) -> i32 {
    let client = match super::connect(url, spawn) {
        Ok(c) => c,
        Err(e) => return report(url, "connect", &e),
    };
    let out = |human: String, machine: serde_json::Value| {
        if as_json {
            println!("{machine}");
        } else if !human.is_empty() {
            println!("{human}");
        }
        0
    };
    let ms = |d: Duration| d.as_millis() as u64;
    match cmd {
        Cmd::Run(_) | Cmd::Start(_) | Cmd::Bench(_) => unreachable!("handled in cli::main"),
        Cmd::Acquire { key, ttl, timeout } => {
            let mut o = LockOptions::new()
                .ttl(ttl.map_or(Ttl::Never, |t| Ttl::After(Duration::from_millis(t))));
            o.keep_after_disconnect = true;
            o.wait_timeout = timeout.map(Duration::from_millis);
            match client.lock_with(&key, &o) {
                Ok(g) => {
                    let token = g.fencing_token();
                    let id = g.detach();
                    out(id.clone(), json!({"key":key,"id":id,"fencingToken":token}))
                }
                Err(e) => report(url, &format!("acquire {key}"), &e),
            }
        }
        Cmd::Release { key, id, force } => {
            let r = match id {
                Some(id) if !force => client.unlock(&key, &id),
                _ => client.force_unlock(&key),
            };
            match r {
                Ok(()) => out(String::new(), json!({"key":key,"released":true})),
                Err(e) => report(url, &format!("release {key}"), &e),
            }
        }
        Cmd::Ls => match client.ls() {
            Ok(keys) => out(keys.join("\n"), json!({"keys":keys})),
            Err(e) => report(url, "ls", &e),
        },
        Cmd::Info { key } => match client.info(&key) {
            Ok(i) => {
                let mut h = format!(
                    "{}: {}, {} holder(s), {} waiting{}",
                    i.key,
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
                        "\n  {} {} token {} {}",
                        x.id,
                        x.mode.as_str(),
                        tok,
                        ttl
                    ));
                }
                let holders: Vec<_> = i
                    .holders
                    .iter()
                    .map(|x| json!({"id":x.id,"mode":x.mode.as_str(),"fencingToken":x.fencing_token,"ttlRemaining":x.ttl_remaining.map(ms)}))
                    .collect();
                let j = json!({"key":i.key,"isLocked":i.is_locked,"holders":holders,"waiters":i.waiters,"readers":i.readers,"max":i.max});
                out(h, j)
            }
            Err(e) => report(url, &format!("info {key}"), &e),
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
                let h = format!("pong from {url} ({broker} broker) in {us} µs");
                out(
                    h,
                    json!({"url":url,"broker":broker,"rttMicros":us,"serverTimestamp":p.server_time_ms}),
                )
            }
            Err(e) => report(url, "ping", &e),
        },
    }
}
