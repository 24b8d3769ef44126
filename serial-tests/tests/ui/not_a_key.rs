#[live_mutex::serial(42)]
#[test]
fn t() {}

fn main() {}
