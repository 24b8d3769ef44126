#[live_mutex::serial("")]
#[test]
fn t() {}

fn main() {}
