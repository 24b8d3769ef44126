#[live_mutex::serial(db, timeout = "sixty seconds")]
#[test]
fn t() {}

fn main() {}
