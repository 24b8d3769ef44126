#[live_mutex::serial(db)]
mod elsewhere;

fn main() {}
