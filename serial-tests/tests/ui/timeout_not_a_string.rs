#[live_mutex::parallel(timeout = 60)]
#[test]
fn t() {}

fn main() {}
