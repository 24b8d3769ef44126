//! The attributes on `async fn`s: keys awaited on the test's own runtime (a current-thread
//! runtime keeps running its other tasks meanwhile), nested takes inside the async test's scope
//! proceeding, from async and blocking helpers alike.

use live_mutex::{parallel, serial};
use live_mutex_serial_tests::{STAY, enter, held_exclusively_elsewhere, held_shared_elsewhere};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DIR: &str = env!("CARGO_TARGET_TMPDIR");

async fn stay(keys: &[&str], shared: bool, who: &str) {
    let _in = enter(DIR, keys, shared, who);
    tokio::time::sleep(STAY).await;
}

#[serial(st_db)]
#[tokio::test]
async fn serial_on_a_current_thread_test() {
    stay(&["st_db"], false, "async::current_thread").await;
    assert!(held_exclusively_elsewhere("st_db"));
}

// The other attribute order: tokio's expands first, ours then sees a plain fn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[serial("st_db", st_cache)]
async fn serial_outside_tokio_test_on_a_multi_thread_runtime() {
    stay(&["st_cache", "st_db"], false, "async::multi_thread").await;
}

#[parallel(st_db)]
#[tokio::test]
async fn parallel_async() {
    stay(&["st_db"], true, "async::parallel").await;
    assert!(held_shared_elsewhere("st_db"));
}

#[serial(st_anest)]
async fn async_helper() -> u32 {
    tokio::task::yield_now().await;
    7
}

#[serial(st_anest)]
fn blocking_helper() -> u32 {
    5
}

/// Nested takes in the scope of an async test finish: an attributed async helper, an
/// attributed blocking helper and the function form, all on the same key.
#[serial(st_anest)]
#[tokio::test]
async fn nested_takes_in_an_async_test_finish() {
    assert_eq!(async_helper().await, 7);
    assert_eq!(blocking_helper(), 5);
    let g = serial("st_anest").unwrap();
    drop(g);
    stay(&["st_anest"], false, "async::nested").await;
    assert!(held_exclusively_elsewhere("st_anest"));
}

#[serial(st_ajoin_a)]
async fn holds_a() -> bool {
    held_exclusively_elsewhere("st_ajoin_a")
}

#[serial(st_ajoin_b)]
async fn holds_b() -> bool {
    held_exclusively_elsewhere("st_ajoin_b")
}

#[tokio::test]
async fn two_helpers_joined_in_one_test() {
    let (a, b) = tokio::join!(holds_a(), holds_b());
    assert!(a && b);
}

#[serial(st_tick)]
async fn wait_for_tick_key() {}

/// While an async test waits for a key on a current-thread runtime, the runtime's other tasks
/// keep running: the holder (another thread, so another test) lets go only once it has seen
/// the test's ticker advance while it held the key. A blocking wait would freeze the ticker
/// and the holder would give up after 20 s, failing the assertion.
#[tokio::test(flavor = "current_thread")]
async fn a_waiting_async_test_does_not_block_its_runtime() {
    let ticks = Arc::new(AtomicUsize::new(0));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let ticks = ticks.clone();
        std::thread::spawn(move || {
            let g = serial("st_tick").unwrap();
            let at_grant = ticks.load(Ordering::SeqCst);
            held_tx.send(()).unwrap();
            let end = Instant::now() + Duration::from_secs(20);
            while ticks.load(Ordering::SeqCst) < at_grant + 5 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            let seen = ticks.load(Ordering::SeqCst) - at_grant;
            drop(g);
            seen
        })
    };
    held_rx.await.unwrap();
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for_tick_key().await;
    ticker.abort();
    let seen = holder.join().unwrap();
    assert!(
        seen >= 5,
        "the ticker advanced only {seen} times while the test waited"
    );
}

/// Two async tests of one key, each on its own current-thread runtime, run in turn.
#[test]
fn two_async_tests_on_their_own_runtimes_take_turns() {
    #[serial(st_two_rt)]
    async fn one(who: &'static str) {
        stay(&["st_two_rt"], false, who).await;
    }
    let run = |who: &'static str| {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(one(who))
        })
    };
    let (a, b) = (run("async::rt_a"), run("async::rt_b"));
    a.join().unwrap();
    b.join().unwrap();
}
