#[live_mutex::serial(db, timeout = "1s", timeout = "2s")]
#[test]
fn t() {}

fn main() {}
