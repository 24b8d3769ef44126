//! The etcd store behind the [`Store`] interface: ops go to its thread, its events come back
//! translated.
//!
//! The etcd store speaks its own, owned and thread-safe, vocabulary (`store::etcd`'s
//! `StoreOp`/`StoreEvent`, which its tests drive directly). Its answers to unlock, extend and
//! release-many name the request (connection, key, lock id) rather than the core's tag; it
//! answers one connection's ops on one lock in order, so a first-in first-out list of tags per
//! request finds the tag again.

use std::collections::VecDeque;
use std::time::Instant;

use ahash::RandomState;
use hashbrown::HashMap;

use super::WaiterView;
use super::etcd::{self, EtcdStore, LockSpec, ManySpec};
use super::{HolderView, KeyView, Op, Store, StoreError, StoreEvent, StoreOp, StoreStats};
use crate::table::{ConnId, Grant, Name, Table};

/// The connection named in questions: their answers are matched by tag alone.
const NOBODY: ConnId = ConnId(0);

/// Which answer a tag waits for, by the request it names.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Awaits {
    Unlock(ConnId, String, Option<String>),
    Extend(ConnId, String, String),
    ReleaseMany(ConnId, String),
}

/// The etcd store as the core's [`Store`].
pub(crate) struct EtcdBridge {
    store: EtcdStore,
    tags: HashMap<Awaits, VecDeque<u64>, RandomState>,
    /// Answers made here (the store's thread has stopped), drained first.
    local: VecDeque<StoreEvent>,
}

impl EtcdBridge {
    pub(crate) fn new(store: EtcdStore) -> Self {
        EtcdBridge {
            store,
            tags: HashMap::default(),
            local: VecDeque::new(),
        }
    }

    fn tag(&mut self, a: Awaits) -> u64 {
        let Some(q) = self.tags.get_mut(&a) else {
            return 0;
        };
        let tag = q.pop_front().unwrap_or(0);
        if q.is_empty() {
            self.tags.remove(&a);
        }
        tag
    }

    fn translate(&mut self, ev: etcd::StoreEvent) -> StoreEvent {
        use etcd::StoreEvent as E;
        match ev {
            E::Granted {
                conn,
                id,
                key,
                token,
            } => StoreEvent::Granted {
                conn,
                id: id.as_str().into(),
                key: key.as_str().into(),
                grant: Grant {
                    token,
                    queue_len: 0,
                    readers: 0,
                },
            },
            E::Queued {
                conn,
                id,
                key,
                ahead,
            } => StoreEvent::Queued {
                conn,
                id: id.as_str().into(),
                key: key.as_str().into(),
                queue_len: ahead,
                readers: 0,
            },
            E::Busy {
                conn,
                id,
                key,
                ahead,
            } => StoreEvent::Busy {
                conn,
                id: id.as_str().into(),
                key: key.as_str().into(),
                queue_len: ahead,
                readers: 0,
            },
            E::TimedOut {
                conn,
                id,
                key,
                waited,
            } => StoreEvent::TimedOut {
                conn,
                id: id.as_str().into(),
                key: Some(key.as_str().into()),
                waited,
            },
            E::ManyTimedOut { conn, id, waited } => StoreEvent::TimedOut {
                conn,
                id: id.as_str().into(),
                key: None,
                waited,
            },
            E::Expired { conn, id, key } => StoreEvent::Expired {
                conn,
                id: id.as_str().into(),
                key: key.as_str().into(),
            },
            E::Lost {
                conn,
                id,
                key,
                reason,
            } => StoreEvent::Lost {
                conn,
                id: id.as_str().into(),
                key: key.as_str().into(),
                reason,
            },
            E::Unlocked { conn, key, id, .. } => {
                let tag = self.tag(Awaits::Unlock(conn, key.clone(), id.clone()));
                StoreEvent::Unlocked {
                    tag,
                    key: key.as_str().into(),
                    id: id.as_deref().map(Name::from),
                    queue_len: 0,
                }
            }
            E::Extended { conn, key, id } => StoreEvent::Extended {
                tag: self.tag(Awaits::Extend(conn, key, id)),
            },
            E::ManyGranted { conn, id, tokens } => StoreEvent::ManyGranted {
                conn,
                id: id.as_str().into(),
                tokens: tokens
                    .iter()
                    .map(|(k, t)| (Name::from(k.as_str()), *t))
                    .collect(),
            },
            E::ManyQueued { conn, id } => StoreEvent::ManyQueued {
                conn,
                id: id.as_str().into(),
            },
            E::ManyBusy { conn, id } => StoreEvent::ManyBusy {
                conn,
                id: id.as_str().into(),
            },
            E::ManyReleased { conn, id } => StoreEvent::ManyReleased {
                tag: self.tag(Awaits::ReleaseMany(conn, id)),
            },
            E::Error {
                conn,
                op,
                id,
                key,
                error,
            } => {
                let (op, tag) = match op {
                    etcd::Op::Lock => (Op::Lock, 0),
                    etcd::Op::LockMany => (Op::LockMany, 0),
                    etcd::Op::Unlock => {
                        let a = Awaits::Unlock(conn, key.clone(), id.clone());
                        (Op::Unlock, self.tag(a))
                    }
                    etcd::Op::Extend => {
                        let a = Awaits::Extend(conn, key.clone(), id.clone().unwrap_or_default());
                        (Op::Extend, self.tag(a))
                    }
                    etcd::Op::ReleaseMany => {
                        let a = Awaits::ReleaseMany(conn, id.clone().unwrap_or_default());
                        (Op::ReleaseMany, self.tag(a))
                    }
                };
                StoreEvent::Failed {
                    conn,
                    op,
                    tag,
                    id: id.as_deref().map(Name::from),
                    key: Some(key.as_str().into()).filter(|k: &Name| !k.is_empty()),
                    error: StoreError::Etcd(error),
                }
            }
            E::Keys { tag, keys, .. } => StoreEvent::Keys {
                tag,
                keys: keys
                    .map(|ks| ks.iter().map(|k| Name::from(k.as_str())).collect())
                    .map_err(StoreError::Etcd),
            },
            E::Info { tag, info, .. } => StoreEvent::Info {
                tag,
                info: info
                    .map(|i| i.map(|i| self.key_view(i)))
                    .map_err(StoreError::Etcd),
            },
            E::Stats { tag, stats, .. } => StoreEvent::Stats {
                tag,
                stats: stats
                    .map(|s| StoreStats {
                        keys: s.keys,
                        holders: s.holders,
                        waiters: s.waiters,
                        grants: s.grants,
                    })
                    .map_err(StoreError::Etcd),
            },
        }
    }

    /// Holders and waiters of this broker carry their connection, so `lock-info` can say who.
    fn key_view(&self, i: etcd::KeyInfo) -> KeyView {
        let mine = |owner: &str, conn: u64| (owner == self.store.owner()).then_some(ConnId(conn));
        KeyView {
            max: i.max,
            readers: i.readers,
            holders: i
                .holders
                .iter()
                .map(|h| HolderView {
                    id: h.id.as_str().into(),
                    conn: mine(&h.owner, h.conn),
                    mode: h.mode,
                    token: h.token,
                    ttl_remaining: None,
                    since: None,
                })
                .collect(),
            waiters: i
                .queue
                .iter()
                .map(|w| WaiterView {
                    id: w.id.as_str().into(),
                    conn: mine(&w.owner, w.conn),
                    mode: w.mode,
                    since: None,
                })
                .collect(),
        }
    }

    fn send(&mut self, op: etcd::StoreOp, on_fail: impl FnOnce(StoreError) -> StoreEvent) {
        if let Err(e) = self.store.submit(op) {
            self.local.push_back(on_fail(StoreError::Etcd(e)));
        }
    }
}

impl Store for EtcdBridge {
    fn submit(&mut self, _now: Instant, op: StoreOp<'_>) {
        use etcd::StoreOp as E;
        let failed = |conn, op, tag, id: Option<&str>, key: Option<&str>| {
            let (id, key) = (id.map(Name::from), key.map(Name::from));
            move |error| StoreEvent::Failed {
                conn,
                op,
                tag,
                id,
                key,
                error,
            }
        };
        match op {
            StoreOp::Lock(r) => {
                let spec = LockSpec {
                    conn: r.conn,
                    key: r.key.to_owned(),
                    id: r.id.to_owned(),
                    mode: r.mode,
                    max: r.max,
                    ttl: r.ttl,
                    wait: r.wait,
                    keep_after_disconnect: r.keep_after_disconnect,
                };
                let f = failed(r.conn, Op::Lock, 0, Some(r.id), Some(r.key));
                self.send(E::Lock(spec), f);
            }
            StoreOp::Cancel { conn, key, id } => {
                let op = E::Cancel {
                    conn,
                    key: key.to_owned(),
                    id: id.to_owned(),
                };
                // Nothing awaits an answer; a stopped store has released everything anyway.
                let _ = self.store.submit(op);
            }
            StoreOp::Unlock {
                conn,
                tag,
                key,
                id,
                force,
            } => {
                let a = Awaits::Unlock(conn, key.to_owned(), id.map(str::to_owned));
                self.tags.entry(a).or_default().push_back(tag);
                let op = E::Unlock {
                    conn,
                    key: key.to_owned(),
                    id: id.map(str::to_owned),
                    force,
                };
                let f = failed(conn, Op::Unlock, tag, id, Some(key));
                self.send(op, f);
            }
            StoreOp::Extend {
                conn,
                tag,
                key,
                id,
                ttl,
            } => {
                let a = Awaits::Extend(conn, key.to_owned(), id.to_owned());
                self.tags.entry(a).or_default().push_back(tag);
                let op = E::Extend {
                    conn,
                    key: key.to_owned(),
                    id: id.to_owned(),
                    ttl,
                };
                let f = failed(conn, Op::Extend, tag, Some(id), Some(key));
                self.send(op, f);
            }
            StoreOp::LockMany(r) => {
                let spec = ManySpec {
                    conn: r.conn,
                    keys: r.keys.iter().map(|k| (*k).to_owned()).collect(),
                    id: r.id.to_owned(),
                    ttl: r.ttl,
                    wait: r.wait,
                    keep_after_disconnect: r.keep_after_disconnect,
                };
                let f = failed(r.conn, Op::LockMany, 0, Some(r.id), None);
                self.send(E::LockMany(spec), f);
            }
            StoreOp::ReleaseMany { conn, tag, id } => {
                let a = Awaits::ReleaseMany(conn, id.to_owned());
                self.tags.entry(a).or_default().push_back(tag);
                let f = failed(conn, Op::ReleaseMany, tag, Some(id), None);
                let op = E::ReleaseMany {
                    conn,
                    id: id.to_owned(),
                };
                self.send(op, f);
            }
            StoreOp::Disconnect { conn } => {
                self.tags.retain(|a, _| match a {
                    Awaits::Unlock(c, ..) | Awaits::Extend(c, ..) | Awaits::ReleaseMany(c, _) => {
                        *c != conn
                    }
                });
                let _ = self.store.submit(E::Disconnect { conn });
            }
            StoreOp::Keys { tag } => self.send(E::Keys { conn: NOBODY, tag }, move |e| {
                StoreEvent::Keys { tag, keys: Err(e) }
            }),
            StoreOp::Info { tag, key } => {
                let op = E::Info {
                    conn: NOBODY,
                    tag,
                    key: key.to_owned(),
                };
                self.send(op, move |e| StoreEvent::Info { tag, info: Err(e) });
            }
            StoreOp::Stats { tag } => self.send(E::Stats { conn: NOBODY, tag }, move |e| {
                StoreEvent::Stats { tag, stats: Err(e) }
            }),
        }
    }

    fn poll_event(&mut self) -> Option<StoreEvent> {
        if let Some(ev) = self.local.pop_front() {
            return Some(ev);
        }
        let ev = self.store.poll_event()?;
        Some(self.translate(ev))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        // The store's timers run on its own thread.
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn answers_later(&self) -> bool {
        true
    }

    fn is_idle(&self) -> bool {
        // Locks live in etcd and outlive this broker's idleness; only connections count.
        true
    }

    fn table(&self) -> Option<&Table> {
        None
    }

    fn table_mut(&mut self) -> Option<&mut Table> {
        None
    }
}
