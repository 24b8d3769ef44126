//! Keep-alive: a lock with a 1 s TTL held for 5 s is never lost with keep-alive, and is lost
//! without it; for the blocking and (feature `tokio`) the async client.

mod common;

use common::{broker, stop};
use live_mutex::{Client, Error, LockOptions};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);
const HOLD: Duration = Duration::from_secs(5);

/// Holds a 1 s lock for 5 s, checking every 100 ms from another connection whether the key
/// is still taken; returns whether it ever was free, and the final unlock's result.
fn hold(keep_alive: bool) -> (bool, Result<(), Error>) {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let other = Client::connect(&url).unwrap();
    let mut o = LockOptions::new().ttl(TTL);
    if keep_alive {
        o = o.keep_alive();
    }
    let g = c.lock_with("lease", &o).unwrap();
    let t = Instant::now();
    let mut ever_free = false;
    while t.elapsed() < HOLD {
        std::thread::sleep(Duration::from_millis(100));
        if !other.info("lease").unwrap().is_locked {
            ever_free = true;
        }
        if keep_alive {
            assert!(!g.is_lost(), "keep-alive let the lease run out");
        }
    }
    let r = g.unlock();
    stop(b);
    (ever_free, r)
}

#[test]
fn with_keep_alive_a_1s_lock_held_5s_is_never_lost() {
    let (ever_free, r) = hold(true);
    assert!(!ever_free, "the key was free while the guard lived");
    r.unwrap();
}

#[test]
fn without_keep_alive_it_is_lost() {
    let (ever_free, r) = hold(false);
    assert!(ever_free);
    assert!(matches!(r, Err(Error::LockLost)), "{r:?}");
}

#[test]
fn extend_from_another_thread_shares_the_guard() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let g = c
        .lock_with(
            "shared",
            &LockOptions::new().ttl(Duration::from_millis(300)),
        )
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..6 {
                std::thread::sleep(Duration::from_millis(100));
                g.extend(Some(Duration::from_millis(300))).unwrap();
            }
        });
    });
    assert!(!g.is_lost());
    g.unlock().unwrap();
    stop(b);
}

/// `max_hold`: renewals stop 400 ms after the grant; with a 300 ms TTL the lock is gone by
/// about 700 ms, the guard says so, and another client takes the key.
const SHORT_TTL: Duration = Duration::from_millis(300);
const MAX_HOLD: Duration = Duration::from_millis(400);

#[test]
fn max_hold_caps_keep_alive() {
    let (b, url) = broker();
    let c = Client::connect(&url).unwrap();
    let other = Client::connect(&url).unwrap();
    let o = LockOptions::new().ttl(SHORT_TTL).max_hold(MAX_HOLD);
    let g = c.lock_with("capped", &o).unwrap();
    let t = Instant::now();
    // Renewed past its first TTL...
    std::thread::sleep(Duration::from_millis(350));
    assert!(!g.is_lost(), "lost before max_hold");
    assert!(other.try_lock("capped").unwrap().is_none());
    // ...and not after max_hold: gone within a TTL of it.
    while !g.is_lost() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "still held after {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let lost_at = t.elapsed();
    assert!(lost_at >= MAX_HOLD, "{lost_at:?}");
    let taken = Instant::now();
    let g2 = loop {
        if let Some(g2) = other.try_lock("capped").unwrap() {
            break g2;
        }
        assert!(
            taken.elapsed() < Duration::from_secs(2),
            "the broker never let it go"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(matches!(g.unlock(), Err(Error::LockLost)));
    g2.unlock().unwrap();
    stop(b);
}

#[cfg(feature = "tokio")]
mod async_client {
    use super::*;
    use live_mutex::AsyncClient;

    async fn hold(url: &str, keep_alive: bool) -> (bool, Result<(), Error>) {
        let c = AsyncClient::connect(url).await.unwrap();
        let other = AsyncClient::connect(url).await.unwrap();
        let mut o = LockOptions::new().ttl(TTL);
        if keep_alive {
            o = o.keep_alive();
        }
        let g = c.lock_with("lease", &o).await.unwrap();
        let t = Instant::now();
        let mut ever_free = false;
        while t.elapsed() < HOLD {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !other.info("lease").await.unwrap().is_locked {
                ever_free = true;
            }
        }
        (ever_free, g.unlock().await)
    }

    #[test]
    fn with_keep_alive_never_lost_without_lost() {
        let (b, url) = broker();
        let (url2, b2) = {
            let (b2, u2) = broker();
            (u2, b2)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ((kept_free, kept), (lost_free, lost)) =
            rt.block_on(async { tokio::join!(hold(&url, true), hold(&url2, false)) });
        assert!(!kept_free, "the key was free while the guard lived");
        kept.unwrap();
        assert!(lost_free);
        assert!(matches!(lost, Err(Error::LockLost)), "{lost:?}");
        stop(b);
        stop(b2);
    }

    #[test]
    fn max_hold_caps_keep_alive() {
        let (b, url) = broker();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = AsyncClient::connect(&url).await.unwrap();
            let other = AsyncClient::connect(&url).await.unwrap();
            let o = LockOptions::new().ttl(SHORT_TTL).max_hold(MAX_HOLD);
            let g = c.lock_with("capped", &o).await.unwrap();
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(350)).await;
            assert!(!g.is_lost(), "lost before max_hold");
            assert!(other.try_lock("capped").await.unwrap().is_none());
            while !g.is_lost() {
                assert!(t.elapsed() < Duration::from_secs(3), "still held");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(t.elapsed() >= MAX_HOLD);
            let taken = Instant::now();
            loop {
                if let Some(g2) = other.try_lock("capped").await.unwrap() {
                    g2.unlock().await.unwrap();
                    break;
                }
                assert!(taken.elapsed() < Duration::from_secs(2), "never let go");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(matches!(g.unlock().await, Err(Error::LockLost)));
        });
        stop(b);
    }
}
