//! `lmx bench --json` against an embedded broker: the report's fields, and no overlaps.

mod common;

use common::{broker, stop};
use serde_json::Value;
use std::process::Command;

use common::LMX;

fn bench(url: &str, args: &[&str]) -> (std::process::ExitStatus, Value, String) {
    let out = Command::new(LMX)
        .args(["--url", url, "bench", "--json"])
        .args(args)
        .env_remove("LMX_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stdout.lines().count(),
        1,
        "--json prints exactly one line; got {stdout:?} (stderr {stderr:?})"
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    (out.status, v, stderr)
}

#[test]
fn contended_and_spread_runs_report_every_field_and_no_overlap() {
    let (b, url) = broker();
    for (clients, keys, ops) in [("4", "1", "400"), ("6", "3", "600")] {
        let (status, v, stderr) = bench(
            &url,
            &[
                "--clients",
                clients,
                "--keys",
                keys,
                "--ops",
                ops,
                "--hold-us",
                "20",
            ],
        );
        assert!(status.success(), "{v} / {stderr}");
        assert!(stderr.is_empty(), "quiet under --json, got {stderr:?}");
        assert_eq!(v["broker"], "rust");
        assert_eq!(v["clients"].to_string(), clients);
        assert_eq!(v["keys"].to_string(), keys);
        assert_eq!(v["cycles"].to_string(), ops, "{v}");
        assert_eq!(v["overlaps"], 0, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["elapsed_s"].as_f64().unwrap() > 0.0, "{v}");
        let w = &v["lock_wait_us"];
        let q = |k: &str| {
            w[k].as_f64()
                .unwrap_or_else(|| panic!("lock_wait_us.{k} in {v}"))
        };
        assert!(q("p50") > 0.0 && q("p50") <= q("p99"), "{v}");
        assert!(q("p99") <= q("p999") && q("p999") <= q("max"), "{v}");
        assert!(q("mean") > 0.0, "{v}");
        let f = v["fairness"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f), "{v}");
    }
    stop(b);
}

#[test]
fn unreachable_broker_exits_69() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(LMX)
        .args([
            "--url",
            &format!("tcp://127.0.0.1:{port}"),
            "bench",
            "--json",
        ])
        .args(["--clients", "2", "--ops", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
}
