#[live_mutex::serial(db, retries = "3")]
#[test]
fn t() {}

fn main() {}
