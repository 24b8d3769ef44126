#[live_mutex::serial(timeout = "0s")]
#[test]
fn t() {}

fn main() {}
