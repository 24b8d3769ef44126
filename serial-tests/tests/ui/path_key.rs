#[live_mutex::parallel(a::b)]
#[test]
fn t() {}

fn main() {}
