//! Questions about the broker: `ls`, `lock-info`, `ping`, `system-stats`, `inspect`.

use std::time::{Instant, UNIX_EPOCH};

use super::identity::wall_ms;
use super::{Core, ms, wire_mode};
use crate::proto::Reply;
use crate::proto::encode::{self, HolderInfo, WaiterInfo};
use crate::table::Name;

impl Core {
    pub(super) fn ls(&mut self, slot: usize, uuid: &str) {
        let keys: Vec<Name> = self.table.keys().cloned().collect();
        let refs: Vec<&str> = keys.iter().map(|k| &**k).collect();
        self.send(
            slot,
            &Reply::Ls {
                uuid,
                keys: refs.into(),
            },
        );
    }

    pub(super) fn lock_info(&mut self, slot: usize, now: Instant, uuid: &str, key: &str) {
        let info = self.table.info(now, key);
        let wall = (self.wall_clock)();
        let holders: Vec<HolderInfo<'_>> = info
            .iter()
            .flat_map(|i| &i.holders)
            .map(|h| HolderInfo {
                id: (*h.id).into(),
                fencing_token: Some(h.token),
                mode: wire_mode(h.mode),
                ttl_remaining: h.ttl_remaining,
                held_since_ms: Some(wall_ms(wall, now, h.since)),
                who: self.who(h.conn),
            })
            .collect();
        let waiters: Vec<WaiterInfo<'_>> = info
            .iter()
            .flat_map(|i| &i.queue)
            .map(|w| WaiterInfo {
                id: (*w.id).into(),
                mode: wire_mode(w.mode),
                waiting_since_ms: Some(wall_ms(wall, now, w.since)),
                who: self.who(w.conn),
            })
            .collect();
        let reply = Reply::LockInfo {
            uuid,
            key,
            lock_request_count: info.as_ref().map_or(0, |i| i.waiters as u64),
            readers_count: info.as_ref().map_or(0, |i| i.readers as u64),
            is_locked: !holders.is_empty(),
            max: Some(info.as_ref().map_or(1, |i| i.max)),
            holders: holders.into(),
            waiters: waiters.into(),
        };
        // Encoded apart: the identities borrow the connections' states.
        let mut line = Vec::with_capacity(256);
        reply.encode(&mut line);
        drop(reply);
        self.send_line(slot, &line);
    }

    pub(super) fn ping(&mut self, slot: usize, uuid: &str) {
        let ts = (self.wall_clock)().duration_since(UNIX_EPOCH).map_or(0, ms);
        self.send(
            slot,
            &Reply::Pong {
                uuid,
                server_timestamp_ms: ts,
            },
        );
    }

    pub(super) fn system_stats(&mut self, slot: usize, uuid: &str) {
        let s = self.table.stats();
        let stats = encode::Stats {
            keys: s.keys as u64,
            holders: s.holders as u64,
            waiters: s.waiters as u64,
            connections: self.open as u64,
            grants: s.grants,
        };
        self.send(slot, &Reply::SystemStats { uuid, stats });
    }

    pub(super) fn inspect(&mut self, slot: usize, uuid: Option<&str>, command: &str) {
        // The spellings 0.2.25's broker accepts; anything else: the number of holders.
        let result = match command {
            "lockcount" | "lock-count" | "lock_count" => self.table.stats().keys as u64,
            "clientcount" | "client-count" | "client_count" => self.open as u64,
            _ => self.table.stats().holders as u64,
        };
        self.send(slot, &Reply::Inspect { uuid, result });
    }
}
