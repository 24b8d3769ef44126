//! `lmx bench --async`: the same cycles as the threaded bench, each client a future with its
//! own [`AsyncClient`] connection, all polled by one current-thread tokio runtime.

use super::bench::{Common, Outcome, progress, quota};
use live_mutex::{AsyncClient, BrokerKind, Error};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(super) fn run(
    url: &str,
    c: usize,
    ops: u64,
    common: &Common<'_>,
    show_progress: bool,
) -> Result<(BrokerKind, Duration, Vec<Outcome>), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let bar = show_progress.then(|| s.spawn(|| progress(ops, common.total_done, &stop)));
        let r = rt.block_on(async {
            let mut clients = Vec::with_capacity(c);
            for _ in 0..c {
                clients.push(AsyncClient::connect(url).await?);
            }
            let kind = clients[0].broker_kind().await?;
            let t0 = Instant::now();
            let outcomes = futures_util::future::join_all(
                clients
                    .iter()
                    .enumerate()
                    .map(|(i, client)| one(client, i, quota(ops, c, i), common)),
            )
            .await;
            let elapsed = t0.elapsed();
            let mut outcomes = outcomes;
            for cl in &clients {
                if let Ok(n) = async {
                    cl.ping().await?;
                    cl.lost_releases().await
                }
                .await
                {
                    outcomes[0].lost_releases(n);
                }
            }
            Ok((kind, elapsed, outcomes))
        });
        stop.store(true, Ordering::Release);
        if let Some(b) = bar {
            b.join().ok();
        }
        r
    })
}

async fn one(client: &AsyncClient, i: usize, quota: u64, common: &Common<'_>) -> Outcome {
    let mut o = Outcome::new();
    for n in 0..quota {
        let k = (i + n as usize) % common.keys.len();
        let t = Instant::now();
        let got = client.lock_with(&common.keys[k], common.opts).await;
        let g = match o.locked(got, t) {
            Ok(g) => g,
            Err(e) if e.is_connection() => break,
            Err(_) => continue,
        };
        common.critical_section(k);
        if common.wait_unlock {
            if let Err(e) = g.unlock().await {
                o.fail("unlock", &e);
            }
        } else {
            drop(g);
        }
        common.cycle_done(i);
    }
    common.finished();
    o
}
