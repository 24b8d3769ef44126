//! `ls` in pages: a listing of every key can be far larger than a connection's output cap
//! (10,000 keys of 1 KiB are 10 MiB), and a reply is written whole. So each `ls` reply lists
//! keys until it reaches the reply budget (within the output cap), and then says where the
//! next page starts (`next`); the client asks again with `after` set to it. The reply keeps the
//! 0.2.x shape (`ls_result`), so a client that knows nothing of pages (the npm client) gets the
//! first page. No listing is ever built beyond one page, however many connections ask at once.
//!
//! The store gives the page's keys (`StoreOp::Keys`), each with its cursor, up to the budget
//! in bytes of names, and whether more follow; this file encodes them. The table's cursor is
//! a key's place, which a key keeps while it is held: a key held throughout a listing is
//! listed once; a key taken or released meanwhile may be missing. etcd's is the key itself,
//! its pages in key order.

use std::fmt::Display;

use crate::proto::encode::{Obj, write_str};
use crate::store::KeyPage;

/// The `ls` reply for the page a store answered.
pub(super) fn page(uuid: &str, page: &KeyPage, budget: usize) -> Vec<u8> {
    let keys = page.keys.iter().map(|(cursor, k)| (cursor, &**k));
    ls_page(uuid, keys, page.more, budget)
}

/// Encodes one `ls` reply: the keys of `keys` (each with its cursor) until the line reaches
/// `budget` bytes (at least one key, so a listing always advances), then `next`, the cursor
/// of the last key listed, if any key is left (in `keys`, or after them: `more`).
fn ls_page<'k, C: Display>(
    uuid: &str,
    keys: impl Iterator<Item = (C, &'k str)>,
    mut more: bool,
    budget: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(budget.min(16 * 1024));
    let mut o = Obj::new(&mut out);
    o.str("type", "ls").str("uuid", uuid).field("ls_result");
    o.out.push(b'[');
    let (mut listed, mut last) = (0usize, None);
    for (cursor, key) in keys {
        if listed > 0 && o.out.len() >= budget {
            more = true;
            break;
        }
        if listed > 0 {
            o.out.push(b',');
        }
        write_str(o.out, key);
        listed += 1;
        last = Some(cursor);
    }
    o.out.push(b']');
    if more && let Some(c) = last {
        o.str("next", &c.to_string());
    }
    o.finish();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], budget: usize) -> serde_json::Value {
        let it = keys.iter().enumerate().map(|(i, k)| (i, *k));
        serde_json::from_slice(&ls_page("u", it, false, budget)).unwrap()
    }

    #[test]
    fn a_page_stops_at_the_budget_and_names_the_next() {
        let keys: Vec<String> = (0..100).map(|i| format!("key-{i:03}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let v = page(&refs, 200);
        let listed = v["ls_result"].as_array().unwrap().len();
        assert!(listed > 1 && listed < 100, "{v}");
        assert_eq!(v["next"], (listed - 1).to_string());
        let all = page(&refs, 1 << 20);
        assert_eq!(all["ls_result"].as_array().unwrap().len(), 100);
        assert!(all.get("next").is_none());
        // One key bigger than the budget still goes out, alone.
        let big = "x".repeat(500);
        let v = page(&[&big, "b"], 100);
        assert_eq!(
            (v["ls_result"].as_array().unwrap().len(), v["next"].as_str()),
            (1, Some("0"))
        );
    }
}
