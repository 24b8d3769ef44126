#[live_mutex::serial(db)]
struct Fixture;

fn main() {}
