//! `lmx`: run commands under a live-mutex lock, inspect and administer a broker.

#[path = "../cli/mod.rs"]
mod cli;

fn main() {
    std::process::exit(cli::main());
}
