//! A small driver for counting instructions per uncontended lock+unlock under callgrind:
//! `valgrind --tool=callgrind target/release/examples/table_cycles N` for two values of N;
//! the difference of the totals divided by the difference of N is the cost of one cycle.

use std::time::Instant;

use live_mutex::internal::table::{Config, ConnId, LockRequest, Table};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut t = Table::new(Config::default());
    let now = Instant::now();
    let id = "8650931b-4909-4955-9c19-ce805365af0e";
    let mut granted = 0u64;
    for _ in 0..n {
        let r = LockRequest::new(ConnId(1), "foo", id);
        granted += u64::from(t.lock(now, &r).is_ok());
        t.unlock(now, "foo", Some(id), false).ok();
    }
    println!("{granted} cycles");
}
