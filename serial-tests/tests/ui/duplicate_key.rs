#[live_mutex::serial(db, "db")]
#[test]
fn t() {}

fn main() {}
