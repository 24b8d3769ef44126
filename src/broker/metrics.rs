//! `GET /metrics`: the broker's counters in the Prometheus text format (version 0.0.4).
//!
//! Names follow the Prometheus conventions: an `lmx_` prefix, `_total` on counters, base units
//! (seconds, bytes). Everything is read from counters the core and the reactor keep anyway,
//! at scrape time; nothing is computed per request.

use std::fmt::Write;

use std::time::Duration;

use super::core::{CoreMetrics, Reject, STUCK_KEYS};
use crate::table::Name;
use crate::table::WAIT_BUCKETS;

pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the reactor counts (the core counts the rest); the spinner's figures are copied in
/// when `/metrics` is rendered.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IoCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub turns: u64,
    /// Spins after a busy turn, and those that found work (see `spin.rs`).
    pub spins: u64,
    pub spin_wins: u64,
    pub spun_ns: u64,
    /// HTTP requests answered (`/metrics`, `/`, refusals).
    pub http: u64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// The stuck-lock gauges: the largest age overall, then one series per key named in `top`
/// (at most `STUCK_KEYS`, so the label set stays bounded however many keys there are).
fn longest(out: &mut String, names: [&str; 2], help: &str, top: &[(Name, Duration)]) {
    let [name, per_key] = names;
    let max = top.first().map_or(0.0, |(_, d)| d.as_secs_f64());
    one_f(out, name, help, max);
    family(
        out,
        per_key,
        "gauge",
        &format!("{help} Per key, for the {STUCK_KEYS} keys where it is largest."),
    );
    for (key, d) in top {
        let _ = writeln!(
            out,
            "{per_key}{{key=\"{}\"}} {}",
            label(key),
            d.as_secs_f64()
        );
    }
}

fn one_f(out: &mut String, name: &str, help: &str, v: f64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// The whole exposition.
pub(super) fn render(m: &CoreMetrics, io: &IoCounters) -> String {
    let mut o = String::with_capacity(4096);
    let t = &m.table;
    family(
        &mut o,
        "lmx_build_info",
        "gauge",
        "The broker's version, as a label; the value is always 1.",
    );
    let _ = writeln!(
        o,
        "lmx_build_info{{version=\"{}\"}} 1",
        label(crate::VERSION)
    );
    longest(
        &mut o,
        [
            "lmx_oldest_lock_held_seconds",
            "lmx_key_oldest_lock_held_seconds",
        ],
        "Age of the oldest lock held now (0 when none is held).",
        &m.longest.held,
    );
    longest(
        &mut o,
        ["lmx_longest_wait_seconds", "lmx_key_longest_wait_seconds"],
        "How long the longest-waiting queued request has waited so far (0 when none waits).",
        &m.longest.waiting,
    );
    one(
        &mut o,
        "lmx_connections",
        "gauge",
        "Open connections.",
        m.connections as u64,
    );
    one(
        &mut o,
        "lmx_connections_opened_total",
        "counter",
        "Connections accepted since start.",
        m.counters.opened,
    );
    if let Some(age) = m.reading_age {
        family(
            &mut o,
            "lmx_store_reading_age_seconds",
            "gauge",
            "How old the store's figures below are (keys, holders, waiters, groups, grants, \
             expiries, wait time-outs): an etcd broker reads the cluster's at most once a \
             second, when scraped or watched (+Inf before its first read).",
        );
        let age = age.map_or("+Inf".to_owned(), |d| d.as_secs_f64().to_string());
        let _ = writeln!(o, "lmx_store_reading_age_seconds {age}");
    }
    one(
        &mut o,
        "lmx_keys",
        "gauge",
        "Keys held or waited for.",
        t.keys as u64,
    );
    one(
        &mut o,
        "lmx_holders",
        "gauge",
        "Locks held.",
        t.holders as u64,
    );
    one(
        &mut o,
        "lmx_waiters",
        "gauge",
        "Requests queued for a lock.",
        t.waiters as u64,
    );
    one(
        &mut o,
        "lmx_lock_groups",
        "gauge",
        "Acquire-many groups.",
        t.groups as u64,
    );
    one(
        &mut o,
        "lmx_watchers",
        "gauge",
        "Connections watching (status pages, lmx top).",
        m.watchers as u64,
    );
    one(
        &mut o,
        "lmx_grants_total",
        "counter",
        "Locks granted.",
        t.grants,
    );
    one(
        &mut o,
        "lmx_unlocks_total",
        "counter",
        "Locks released by their holder.",
        m.counters.unlocks,
    );
    one(
        &mut o,
        "lmx_expiries_total",
        "counter",
        "Locks that ended by their TTL.",
        t.expiries,
    );
    one(
        &mut o,
        "lmx_wait_timeouts_total",
        "counter",
        "Queued requests that reached their wait time-out.",
        t.wait_timeouts,
    );
    family(
        &mut o,
        "lmx_rejected_requests_total",
        "counter",
        "Requests refused, by reason.",
    );
    for r in Reject::ALL {
        let _ = writeln!(
            o,
            "lmx_rejected_requests_total{{reason=\"{}\"}} {}",
            r.label(),
            m.counters.rejected[r as usize]
        );
    }
    family(
        &mut o,
        "lmx_lock_wait_seconds",
        "histogram",
        "How long granted requests waited (zero when granted at once).",
    );
    let mut cumulative = 0;
    for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
        cumulative += t.waits.counts[i];
        let _ = writeln!(
            o,
            "lmx_lock_wait_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let count = t.waits.count();
    let _ = writeln!(o, "lmx_lock_wait_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        o,
        "lmx_lock_wait_seconds_sum {}",
        t.waits.sum_micros as f64 / 1e6
    );
    let _ = writeln!(o, "lmx_lock_wait_seconds_count {count}");
    one(
        &mut o,
        "lmx_received_bytes_total",
        "counter",
        "Bytes read from clients.",
        io.bytes_in,
    );
    one(
        &mut o,
        "lmx_sent_bytes_total",
        "counter",
        "Bytes written to clients.",
        io.bytes_out,
    );
    one(
        &mut o,
        "lmx_reactor_turns_total",
        "counter",
        "Turns of the broker's poll loop.",
        io.turns,
    );
    one(
        &mut o,
        "lmx_reactor_spins_total",
        "counter",
        "Times the poll loop polled without sleeping after a busy turn.",
        io.spins,
    );
    one(
        &mut o,
        "lmx_reactor_spin_wins_total",
        "counter",
        "Spins that found work before their budget ran out.",
        io.spin_wins,
    );
    family(
        &mut o,
        "lmx_reactor_spin_seconds_total",
        "counter",
        "Time spent spinning.",
    );
    let _ = writeln!(
        o,
        "lmx_reactor_spin_seconds_total {}",
        io.spun_ns as f64 / 1e9
    );
    one(
        &mut o,
        "lmx_http_requests_total",
        "counter",
        "HTTP requests answered (/metrics, the status page, refusals).",
        io.http,
    );
    o
}
