//! The async client on both runtime flavours over every transport, and its cancellation
//! safety: an aborted lock future never leaves a waiter or a grant behind.
#![cfg(feature = "tokio")]

mod common;

use common::{TestBroker, Transport};
use live_mutex::{AsyncClient, Error, LockOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TRANSPORTS: [Transport; 3] = [Transport::Tcp, Transport::Uds, Transport::Ws];

fn url(b: &TestBroker, t: Transport) -> String {
    match t {
        Transport::Tcp => format!("tcp://{}", b.addr),
        Transport::Ws => format!("ws://{}", b.addr),
        Transport::Uds => format!("unix://{}", b.uds.display()),
    }
}

/// Runs `f` on a fresh runtime of each flavour.
fn on_both_flavours<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(f());
    }
}

/// Runs `f` for every transport, with the URL of one broker on it, on both runtime flavours.
fn on_every_transport<F, Fut>(f: F)
where
    F: Fn(Transport, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let b = TestBroker::start();
    on_both_flavours(|| async {
        for t in TRANSPORTS {
            f(t, url(&b, t)).await;
        }
    });
}

/// Two clients of the broker at `u`, each on its own connection.
async fn two_clients(u: &str) -> (AsyncClient, AsyncClient) {
    let c = || AsyncClient::connect(u);
    (c().await.unwrap(), c().await.unwrap())
}

/// Polls `f` every 2 ms until it gives `Some` (10 s at most, then fails saying `never`).
async fn eventually<T, F: Future<Output = Option<T>>>(never: &str, mut f: impl FnMut() -> F) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{never}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `info(key).waiters` until it equals `n`.
async fn wait_for_waiters(c: &AsyncClient, key: &str, n: u64) {
    let never = format!("{key} never had {n} waiters");
    eventually(&never, || async {
        (c.info(key).await.unwrap().waiters == n).then_some(())
    })
    .await;
}

#[test]
fn lock_try_many_timeouts_and_contention_everywhere() {
    on_every_transport(|t, u| async move {
        let (c1, c2) = two_clients(&u).await;
        let g = c1.lock("k").await.unwrap();
        assert!(g.fencing_token().is_some(), "{t:?}");
        assert!(c2.try_lock("k").await.unwrap().is_none(), "{t:?}");
        let r = c2
            .lock_with("k", &LockOptions::new().timeout(Duration::from_millis(50)))
            .await;
        assert!(matches!(r, Err(Error::WaitTimedOut)), "{t:?} {r:?}");
        let r = c2.lock_with("k", &LockOptions::new().try_only()).await;
        assert!(r.unwrap_err().is_busy());
        drop(g);
        // The unlock was queued by the drop; this try-lock on another connection sees it.
        let never = format!("{t:?}: drop never released");
        let g2 = eventually(&never, || async { c2.try_lock("k").await.unwrap() }).await;
        g2.unlock().await.unwrap();
        let zero = LockOptions::new().ttl(Duration::from_micros(500));
        assert!(matches!(
            c1.lock_with("z", &zero).await,
            Err(Error::Config(_))
        ));
        let many = c1.lock_many(&["m1", "m2"]).await.unwrap();
        assert_eq!(many.fencing_tokens().len(), 2);
        assert!(c2.try_lock("m2").await.unwrap().is_none());
        drop(many);
        c2.lock_many(&["m2"]).await.unwrap().unlock().await.unwrap();

        // 8 tasks on 2 connections, 50 cycles each on one key: never two holders.
        let inside = Arc::new(AtomicU32::new(0));
        let overlaps = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
                let (inside, overlaps) = (inside.clone(), overlaps.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let g = c.lock("hot").await.unwrap();
                        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(g);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{t:?}");
        c1.ping().await.unwrap();
        c2.ping().await.unwrap();
        assert_eq!(c1.lost_releases().await.unwrap(), 0);
        assert_eq!(c2.lost_releases().await.unwrap(), 0);
        let info = c1.info("hot").await.unwrap();
        assert!(!info.is_locked && info.waiters == 0, "{t:?} {info:?}");
    });
}

/// 100 tasks wait for a held key and are aborted: the broker then shows 0 waiters, and when
/// the key is released none of them is granted (a fresh client takes it at once).
#[test]
fn aborting_100_waiting_futures_leaves_no_waiter_and_no_grant() {
    on_every_transport(|t, u| async move {
        let (holder, waiters) = two_clients(&u).await;
        let key = format!("cancel-{t:?}");
        let held = holder.lock(&key).await.unwrap();
        let granted = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (c, key, granted) = (waiters.clone(), key.clone(), granted.clone());
                tokio::spawn(async move {
                    let g = c.lock(&key).await;
                    granted.fetch_add(1, Ordering::SeqCst);
                    g
                })
            })
            .collect();
        wait_for_waiters(&holder, &key, 100).await;
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        wait_for_waiters(&holder, &key, 0).await;
        held.unlock().await.unwrap();
        let fresh = AsyncClient::connect(&u).await.unwrap();
        let g = fresh.try_lock(&key).await.unwrap();
        assert!(g.is_some(), "{t:?}: an aborted waiter was granted the key");
        assert_eq!(granted.load(Ordering::SeqCst), 0, "{t:?}");
    });
}

/// Waiters aborted at the very moment the key is released: a grant that crosses the cancel on
/// the wire is handed back at once, so the key ends up free.
#[test]
fn a_grant_racing_the_abort_is_released() {
    on_every_transport(|t, u| async move {
        let (holder, waiters) = two_clients(&u).await;
        for round in 0..20 {
            let key = format!("race-{t:?}-{round}");
            let held = holder.lock(&key).await.unwrap();
            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let (c, key) = (waiters.clone(), key.clone());
                    // A task that completes drops its guard at once.
                    tokio::spawn(async move { drop(c.lock(&key).await) })
                })
                .collect();
            wait_for_waiters(&holder, &key, 5).await;
            drop(held);
            if round % 2 == 1 {
                tokio::task::yield_now().await;
            }
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
            let never = format!("{t:?}: key {key} stayed held after every waiter was aborted");
            drop(eventually(&never, || async { holder.try_lock(&key).await.unwrap() }).await);
        }
    });
}

/// A lock wait bounded by `tokio::time::timeout` (the future is dropped): nothing left queued.
#[test]
fn a_timed_out_future_is_withdrawn() {
    let b = TestBroker::start();
    on_both_flavours(|| async {
        let u = url(&b, Transport::Uds);
        let c = AsyncClient::connect(&u).await.unwrap();
        let held = c.lock("t").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(30), c.lock("t")).await;
        assert!(r.is_err());
        wait_for_waiters(&c, "t", 0).await;
        drop(held);
        assert!(c.try_lock("t").await.unwrap().is_some());
    });
}

/// The broker goes away: a waiting lock fails with ConnectionLost, a guard reports lost, and
/// connecting to nothing fails without blocking the runtime.
#[test]
fn broker_gone() {
    on_both_flavours(|| async {
        let mut b = TestBroker::start();
        let u = url(&b, Transport::Tcp);
        let c = AsyncClient::connect(&u).await.unwrap();
        let g = c.lock("k").await.unwrap();
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.lock("k").await.map(|_| ()) });
        wait_for_waiters(&c, "k", 1).await;
        let h = b.handle.take().unwrap();
        tokio::task::spawn_blocking(move || {
            h.shutdown();
            h.join().unwrap();
        })
        .await
        .unwrap();
        let r = waiting.await.unwrap();
        assert!(r.unwrap_err().is_connection());
        eventually("the guard never saw its lock lost", || async {
            g.is_lost().then_some(())
        })
        .await;
        assert!(c.lock("k").await.unwrap_err().is_connection());
    });
}
