//! `ls` in pages: a listing of every key can be far larger than a connection's output cap
//! (10,000 keys of 1 KiB are 10 MiB), and a reply is written whole. So each `ls` reply lists
//! keys until it reaches the reply budget (within the output cap), and then says where the
//! next page starts (`next`); the client asks again with `after` set to it. The reply keeps the
//! 0.2.x shape (`ls_result`), so a client that knows nothing of pages (the npm client) gets the
//! first page. No listing is ever built beyond one page, however many connections ask at once.
//!
//! With the in-memory table a page is read straight from it (its cursor is the last key's
//! place, which a key keeps while it is held): a key held throughout a listing is listed once;
//! a key taken or released meanwhile may be missing. A store that answers with every key
//! (etcd) is paged here by key order, the cursor being the last key listed.

use std::fmt::Display;

use crate::proto::encode::{Obj, write_str};
use crate::table::{Name, Table};

/// The page of `table`'s keys after the cursor `after` (the `next` of an earlier page).
pub(super) fn table_page(
    table: &Table,
    uuid: &str,
    after: Option<&str>,
    budget: usize,
) -> Result<Vec<u8>, &'static str> {
    let after = match after.map(str::parse::<usize>) {
        None => None,
        Some(Ok(place)) => Some(place),
        Some(Err(_)) => return Err("`after` must be the `next` of an earlier ls reply"),
    };
    let keys = table.keys_after(after).map(|(place, k)| (place, &**k));
    Ok(ls_page(uuid, keys, budget))
}

/// The page of every key a store listed (etcd) that follows `after`, in key order.
pub(super) fn list_page(
    uuid: &str,
    after: Option<&str>,
    mut keys: Vec<Name>,
    budget: usize,
) -> Vec<u8> {
    keys.sort_unstable();
    let from = after.map_or(0, |a| keys.partition_point(|k| &**k <= a));
    let page = keys[from..].iter().map(|k| (&**k, &**k));
    ls_page(uuid, page, budget)
}

/// Encodes one `ls` reply: the keys of `keys` (each with its cursor) until the line reaches
/// `budget` bytes (at least one key, so a listing always advances), then `next`, the cursor
/// of the last key listed, if any key is left.
fn ls_page<'k, C: Display>(
    uuid: &str,
    keys: impl Iterator<Item = (C, &'k str)>,
    budget: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(budget.min(16 * 1024));
    let mut o = Obj::new(&mut out);
    o.str("type", "ls").str("uuid", uuid).field("ls_result");
    o.out.push(b'[');
    let (mut listed, mut last, mut more) = (0usize, None, false);
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
        serde_json::from_slice(&ls_page("u", it, budget)).unwrap()
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
