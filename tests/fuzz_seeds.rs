//! Replays every committed fuzz seed and saved crash input (`fuzz/seeds/<target>/`) through the
//! same harnesses the fuzzer runs, on stable Rust, so a fixed finding stays fixed.

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ok = std::panic::catch_unwind(|| harness(&data));
        assert!(ok.is_ok(), "{} fails on {}", target, path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn decode_seeds() {
    replay("decode", live_mutex::fuzzing::decode);
}

#[test]
fn framer_seeds() {
    replay("framer", live_mutex::fuzzing::framer);
}

#[test]
fn ws_server_seeds() {
    replay("ws_server", live_mutex::fuzzing::ws_server);
}

#[test]
fn table_ops_seeds() {
    replay("table_ops", live_mutex::fuzzing::table_ops);
}
