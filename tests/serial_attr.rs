//! `#[live_mutex::serial]` on this repo's own tests. Under `cargo test` they run as threads of
//! one process, under `cargo nextest run` each in a process of its own; either way two tests
//! sharing a key must never be inside at once, which each checks through marker files that
//! only one holder may create. The broker is the per-user one, spawned on first use (or
//! `LMX_URL`); `.cargo/config.toml` gives brokers spawned by this repo's tests a short idle exit.

use std::path::PathBuf;
use std::time::Duration;

/// Marks `keys` as entered for 100 ms; panics if any test is already inside one of them.
fn inside(keys: &[&str]) {
    struct Marker(PathBuf);
    impl Drop for Marker {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }
    let markers: Vec<Marker> = keys
        .iter()
        .map(|k| {
            let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serial-{k}.inside"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(_) => Marker(p),
                Err(e) => panic!("another test holding {k} is inside ({}: {e})", p.display()),
            }
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(markers);
}

#[live_mutex::serial("attr-db")]
#[test]
fn db_first() {
    inside(&["attr-db"]);
}

#[live_mutex::serial("attr-db")]
#[test]
fn db_second() {
    inside(&["attr-db"]);
}

#[live_mutex::serial("attr-db", "attr-cache")]
#[test]
fn db_and_cache() {
    inside(&["attr-db", "attr-cache"]);
}

// The same two keys in the other order: taken all-or-nothing, so no deadlock with the above.
#[live_mutex::serial("attr-cache", "attr-db")]
#[tokio::test]
async fn cache_and_db_async() {
    tokio::task::yield_now().await;
    inside(&["attr-cache", "attr-db"]);
}

#[live_mutex::serial("attr-cache")]
#[test]
fn cache_returning_result() -> Result<(), String> {
    inside(&["attr-cache"]);
    Ok(())
}

#[test]
fn the_guard_function_serialises_too() {
    let _g = live_mutex::client::serial_many(&["attr-db"]).unwrap();
    inside(&["attr-db"]);
}
