//! The in-memory table as a [`Store`]: every op is decided in the call, and its answer, then
//! whatever the op did to other requests (grants to the next waiters, expiries that were
//! due), waits in the event queue when `submit` returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    Gauges, HolderView, KeyPage, KeyView, Op, STUCK_KEYS, Snapshot, Store, StoreError, StoreEvent,
    StoreOp, WaiterView,
};
use crate::table::{self, ConnId, Event, LockOutcome, ManyOutcome, Name, Table};

/// The table and the answers it gave, not yet drained.
pub(crate) struct MemStore {
    table: Table,
    events: VecDeque<StoreEvent>,
}

impl MemStore {
    pub(crate) fn new(cfg: table::Config) -> Self {
        MemStore {
            table: Table::new(cfg),
            events: VecDeque::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        conn: table::ConnId,
        op: Op,
        tag: u64,
        id: Option<&str>,
        key: Option<&str>,
        e: table::TableError,
    ) {
        self.events.push_back(StoreEvent::Failed {
            conn,
            op,
            tag,
            id: id.map(Name::from),
            key: key.map(Name::from),
            error: StoreError::Rule(e),
        });
    }

    /// The table's events about other requests, after the answer to the op that caused them.
    fn drain_table(&mut self) {
        while let Some(ev) = self.table.poll_event() {
            self.events.push_back(match ev {
                Event::Granted {
                    conn,
                    id,
                    key,
                    grant,
                } => StoreEvent::Granted {
                    conn,
                    id,
                    key,
                    grant,
                },
                Event::ManyGranted { conn, id, tokens } => {
                    StoreEvent::ManyGranted { conn, id, tokens }
                }
                Event::TimedOut {
                    conn,
                    id,
                    key,
                    waited,
                } => StoreEvent::TimedOut {
                    conn,
                    id,
                    key,
                    waited,
                },
                Event::Expired { conn, id, key } => StoreEvent::Expired { conn, id, key },
            });
        }
    }

    fn lock(&mut self, now: Instant, req: &table::LockRequest<'_>) {
        let (conn, id, key) = (req.conn, Name::from(req.id), Name::from(req.key));
        let ev = match self.table.lock(now, req) {
            Err(e) => return self.failed(conn, Op::Lock, 0, Some(req.id), Some(req.key), e),
            Ok(LockOutcome::Granted(grant)) => StoreEvent::Granted {
                conn,
                id,
                key,
                grant,
            },
            Ok(LockOutcome::Queued { queue_len, readers }) => StoreEvent::Queued {
                conn,
                id,
                key,
                queue_len,
                readers,
            },
            Ok(LockOutcome::Busy { queue_len, readers }) => StoreEvent::Busy {
                conn,
                id,
                key,
                queue_len,
                readers,
            },
            Ok(LockOutcome::TimedOut) => StoreEvent::TimedOut {
                conn,
                id,
                key: Some(key),
                waited: Duration::ZERO,
            },
        };
        self.events.push_back(ev);
    }

    #[allow(clippy::too_many_arguments)]
    fn unlock(
        &mut self,
        now: Instant,
        conn: table::ConnId,
        tag: u64,
        key: &str,
        id: Option<&str>,
        force: bool,
    ) {
        // A forced unlock releases holders silently: say whom, so their requests are forgotten.
        let forced: Vec<(table::ConnId, Name)> = if force {
            self.table.handle_timeout(now);
            self.table.info(now, key).map_or_else(Vec::new, |i| {
                i.holders.into_iter().map(|h| (h.conn, h.id)).collect()
            })
        } else {
            Vec::new()
        };
        match self.table.unlock(now, key, id, force) {
            Ok(_) => {
                let queue_len = self.table.counts(key).0;
                self.events.push_back(StoreEvent::Unlocked {
                    tag,
                    key: key.into(),
                    id: id.map(Name::from),
                    queue_len,
                });
                for (holder, hid) in forced {
                    self.events.push_back(StoreEvent::Released {
                        conn: holder,
                        id: hid,
                        key: key.into(),
                        by: conn,
                    });
                }
            }
            Err(e) => self.failed(conn, Op::Unlock, tag, id, Some(key), e),
        }
    }

    /// A page of `ls`: the keys after place `after`, until their names reach `budget` bytes.
    fn page(&self, after: Option<&str>, budget: usize) -> Result<KeyPage, StoreError> {
        let after = match after.map(str::parse::<usize>) {
            None => None,
            Some(Ok(place)) => Some(place),
            Some(Err(_)) => return Err(StoreError::BadCursor),
        };
        let (mut page, mut used) = (KeyPage::default(), 0);
        for (place, key) in self.table.keys_after(after) {
            if !page.keys.is_empty() && used >= budget {
                page.more = true;
                break;
            }
            used += key.len();
            page.keys.push((place.to_string(), key.clone()));
        }
        Ok(page)
    }

    fn info(&self, now: Instant, key: &str) -> Option<KeyView> {
        let i = self.table.info(now, key)?;
        Some(KeyView {
            max: i.max,
            readers: i.readers,
            holders: i
                .holders
                .into_iter()
                .map(|h| HolderView {
                    id: h.id,
                    conn: Some(h.conn),
                    mode: h.mode,
                    token: h.token,
                    ttl_remaining: h.ttl_remaining,
                    since: Some(h.since),
                })
                .collect(),
            waiters: i
                .queue
                .into_iter()
                .map(|w| WaiterView {
                    id: w.id,
                    conn: Some(w.conn),
                    mode: w.mode,
                    since: Some(w.since),
                })
                .collect(),
        })
    }
}

impl Store for MemStore {
    fn submit(&mut self, now: Instant, op: StoreOp<'_>) {
        match op {
            StoreOp::Lock(req) => self.lock(now, &req),
            StoreOp::Cancel { conn, key, id } => {
                self.table.cancel(now, conn, key, id);
            }
            StoreOp::Unlock {
                conn,
                tag,
                key,
                id,
                force,
            } => self.unlock(now, conn, tag, key, id, force),
            StoreOp::Extend {
                conn,
                tag,
                key,
                id,
                ttl,
            } => match self.table.extend(now, key, id, ttl) {
                Ok(_) => self.events.push_back(StoreEvent::Extended { tag }),
                Err(e) => self.failed(conn, Op::Extend, tag, Some(id), Some(key), e),
            },
            StoreOp::LockMany(req) => {
                let (conn, id) = (req.conn, Name::from(req.id));
                let ev = match self.table.lock_many(now, &req) {
                    Err(e) => return self.failed(conn, Op::LockMany, 0, Some(req.id), None, e),
                    Ok(ManyOutcome::Granted(tokens)) => {
                        StoreEvent::ManyGranted { conn, id, tokens }
                    }
                    Ok(ManyOutcome::Queued) => StoreEvent::ManyQueued { conn, id },
                    Ok(ManyOutcome::Busy) => StoreEvent::ManyBusy { conn, id },
                    Ok(ManyOutcome::TimedOut) => StoreEvent::TimedOut {
                        conn,
                        id,
                        key: None,
                        waited: Duration::ZERO,
                    },
                };
                self.events.push_back(ev);
            }
            StoreOp::ReleaseMany { conn, tag, id } => match self.table.release_many(now, id) {
                Ok(_) => self.events.push_back(StoreEvent::ManyReleased { tag }),
                Err(e) => self.failed(conn, Op::ReleaseMany, tag, Some(id), None, e),
            },
            StoreOp::Disconnect { conn } => self.table.disconnect(now, conn),
            StoreOp::Keys { tag, after, budget } => {
                let keys = self.page(after, budget);
                self.events.push_back(StoreEvent::Keys { tag, keys });
            }
            StoreOp::Counts { tag, key } => {
                let (queue_len, readers) = self.table.counts(key);
                self.events.push_back(StoreEvent::Counts {
                    tag,
                    queue_len,
                    readers,
                });
            }
            StoreOp::Info { tag, key } => {
                let info = self.info(now, key);
                self.events.push_back(StoreEvent::Info {
                    tag,
                    info: Ok(info),
                });
            }
            StoreOp::Stats { tag } => {
                self.events.push_back(StoreEvent::Stats {
                    tag,
                    stats: Ok(self.table.stats()),
                });
            }
            StoreOp::Snapshot { tag, max_keys } => {
                let keys = self
                    .table
                    .keys()
                    .take(max_keys)
                    .filter_map(|k| Some((k.clone(), self.info(now, k)?)))
                    .collect();
                let stats = self.table.stats();
                let snapshot = Ok(Snapshot { stats, keys });
                self.events
                    .push_back(StoreEvent::Snapshot { tag, snapshot });
            }
        }
        self.drain_table();
    }

    fn poll_event(&mut self) -> Option<StoreEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.table.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.table.handle_timeout(now);
        self.drain_table();
    }

    fn is_idle(&self) -> bool {
        self.table.is_empty()
    }

    fn gauges(&self, now: Instant) -> Option<Gauges> {
        Some(Gauges {
            stats: self.table.stats(),
            longest: self.table.longest(now, STUCK_KEYS),
        })
    }

    fn knows_conn(&self, conn: ConnId) -> bool {
        self.table.knows_conn(conn)
    }

    fn releasable_holds(&self, conn: ConnId) -> Vec<(Name, Name)> {
        self.table.releasable_holds(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::LockRequest;

    #[test]
    fn a_snapshot_lists_holders_and_waiters_and_counts_every_key() {
        let mut s = MemStore::new(table::Config::default());
        let now = Instant::now();
        for (conn, key, id) in [(1, "a", "h"), (2, "a", "w"), (1, "b", "x")] {
            s.submit(now, StoreOp::Lock(LockRequest::new(ConnId(conn), key, id)));
        }
        while s.poll_event().is_some() {}
        s.submit(
            now,
            StoreOp::Snapshot {
                tag: 5,
                max_keys: 9,
            },
        );
        let Some(StoreEvent::Snapshot {
            tag: 5,
            snapshot: Ok(all),
        }) = s.poll_event()
        else {
            panic!("no snapshot");
        };
        let (st, mut keys) = (all.stats, all.keys);
        assert_eq!((st.keys, st.holders, st.waiters), (2, 2, 1));
        keys.sort_by(|x, y| x.0.cmp(&y.0));
        let who = |v: &KeyView| {
            let h: Vec<_> = v
                .holders
                .iter()
                .map(|h| (h.id.to_string(), h.conn))
                .collect();
            let w: Vec<_> = v
                .waiters
                .iter()
                .map(|w| (w.id.to_string(), w.conn))
                .collect();
            (h, w)
        };
        assert_eq!(keys[0].0, "a");
        assert_eq!(
            who(&keys[0].1),
            (
                vec![("h".to_owned(), Some(ConnId(1)))],
                vec![("w".to_owned(), Some(ConnId(2)))]
            )
        );
        assert_eq!(keys[1].0, "b");
        assert_eq!(who(&keys[1].1).0, [("x".to_owned(), Some(ConnId(1)))]);
        // Fewer keys listed than asked for, never fewer counted.
        s.submit(
            now,
            StoreOp::Snapshot {
                tag: 6,
                max_keys: 1,
            },
        );
        let Some(StoreEvent::Snapshot {
            snapshot: Ok(one), ..
        }) = s.poll_event()
        else {
            panic!("no snapshot");
        };
        assert_eq!((one.keys.len(), one.stats.keys), (1, 2));
    }
}
