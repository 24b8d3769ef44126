//! [`StoreOp`] owning its strings, for a store that answers from another thread (etcd): the
//! op crosses to that thread and outlives the core's borrowed request.

use super::StoreOp;
use crate::table::{ConnId, Mode, Name, Ttl, Wait};

/// A [`StoreOp`] that owns its strings; the variants and their meaning are `StoreOp`'s.
#[derive(Clone, Debug)]
pub(crate) enum OwnedOp {
    Lock(OwnedLock),
    Cancel {
        conn: ConnId,
        key: Name,
        id: Name,
    },
    Unlock {
        conn: ConnId,
        tag: u64,
        key: Name,
        id: Option<Name>,
        force: bool,
    },
    Extend {
        conn: ConnId,
        tag: u64,
        key: Name,
        id: Name,
        ttl: Ttl,
    },
    LockMany(OwnedMany),
    ReleaseMany {
        conn: ConnId,
        tag: u64,
        id: Name,
    },
    Disconnect {
        conn: ConnId,
    },
    Keys {
        tag: u64,
        after: Option<Name>,
        budget: usize,
    },
    Counts {
        tag: u64,
        key: Name,
    },
    Info {
        tag: u64,
        key: Name,
    },
    Stats {
        tag: u64,
    },
    Snapshot {
        tag: u64,
        max_keys: usize,
    },
}

/// A [`LockRequest`](crate::table::LockRequest) that owns its strings.
#[derive(Clone, Debug)]
pub(crate) struct OwnedLock {
    pub conn: ConnId,
    pub key: Name,
    pub id: Name,
    pub mode: Mode,
    pub max: Option<u32>,
    pub ttl: Ttl,
    pub wait: Wait,
    pub keep_after_disconnect: bool,
}

/// A [`ManyRequest`](crate::table::ManyRequest) that owns its strings.
#[derive(Clone, Debug)]
pub(crate) struct OwnedMany {
    pub conn: ConnId,
    pub keys: Vec<Name>,
    pub id: Name,
    pub ttl: Ttl,
    pub wait: Wait,
    pub keep_after_disconnect: bool,
}

impl From<StoreOp<'_>> for OwnedOp {
    fn from(op: StoreOp<'_>) -> Self {
        match op {
            StoreOp::Lock(r) => OwnedOp::Lock(OwnedLock {
                conn: r.conn,
                key: r.key.into(),
                id: r.id.into(),
                mode: r.mode,
                max: r.max,
                ttl: r.ttl,
                wait: r.wait,
                keep_after_disconnect: r.keep_after_disconnect,
            }),
            StoreOp::Cancel { conn, key, id } => OwnedOp::Cancel {
                conn,
                key: key.into(),
                id: id.into(),
            },
            StoreOp::Unlock {
                conn,
                tag,
                key,
                id,
                force,
            } => OwnedOp::Unlock {
                conn,
                tag,
                key: key.into(),
                id: id.map(Name::from),
                force,
            },
            StoreOp::Extend {
                conn,
                tag,
                key,
                id,
                ttl,
            } => OwnedOp::Extend {
                conn,
                tag,
                key: key.into(),
                id: id.into(),
                ttl,
            },
            StoreOp::LockMany(r) => OwnedOp::LockMany(OwnedMany {
                conn: r.conn,
                keys: r.keys.iter().map(|k| Name::from(*k)).collect(),
                id: r.id.into(),
                ttl: r.ttl,
                wait: r.wait,
                keep_after_disconnect: r.keep_after_disconnect,
            }),
            StoreOp::ReleaseMany { conn, tag, id } => OwnedOp::ReleaseMany {
                conn,
                tag,
                id: id.into(),
            },
            StoreOp::Disconnect { conn } => OwnedOp::Disconnect { conn },
            StoreOp::Keys { tag, after, budget } => OwnedOp::Keys {
                tag,
                after: after.map(Name::from),
                budget,
            },
            StoreOp::Counts { tag, key } => OwnedOp::Counts {
                tag,
                key: key.into(),
            },
            StoreOp::Info { tag, key } => OwnedOp::Info {
                tag,
                key: key.into(),
            },
            StoreOp::Stats { tag } => OwnedOp::Stats { tag },
            StoreOp::Snapshot { tag, max_keys } => OwnedOp::Snapshot { tag, max_keys },
        }
    }
}
