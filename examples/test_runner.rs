//! N worker processes take turns on a shared file, the way parallel test runners serialise
//! access to a fixture.
//!
//! `cargo run --example test_runner [N]` starts a broker inside this process on a free port,
//! re-runs itself N times as a worker (`LMX_URL` tells the workers where the broker is), and
//! checks that no two workers were ever inside the critical section together.

use live_mutex::Client;
use std::io::Write;
use std::time::Duration;

fn worker(file: &str, me: usize) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::from_env()?;
    for _ in 0..10 {
        let guard = client.lock("fixture")?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)?;
        writeln!(f, "begin {me} token {}", guard.fencing_token().unwrap_or(0))?;
        std::thread::sleep(Duration::from_millis(2));
        writeln!(f, "end {me}")?;
        guard.unlock()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, file, me] = &args[..]
        && role == "--worker"
    {
        return worker(file, me.parse()?);
    }
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let broker = live_mutex::broker::Broker::builder()
        .tcp("127.0.0.1:0".parse()?)
        .bind()?
        .spawn()?;
    let url = format!("tcp://{}", broker.local_addr().ok_or("no TCP listener")?);
    let file = std::env::temp_dir().join(format!("lmx-test-runner-{}.log", std::process::id()));
    let file = file.to_str().ok_or("temp path is not UTF-8")?.to_string();
    let exe = std::env::current_exe()?;
    let kids: Vec<_> = (0..n)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--worker", &file, &i.to_string()])
                .env("LMX_URL", &url)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut k in kids {
        if !k.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    let log = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = log.lines().collect();
    for pair in lines.chunks(2) {
        let (b, e) = (
            pair[0].split(' ').nth(1),
            pair.get(1).and_then(|l| l.strip_prefix("end ")),
        );
        if !pair[0].starts_with("begin ") || b != e {
            return Err(format!("interleaved critical sections: {pair:?}").into());
        }
    }
    println!(
        "{n} workers, {} critical sections, never overlapping",
        lines.len() / 2
    );
    std::fs::remove_file(&file)?;
    broker.shutdown();
    broker.join()?;
    Ok(())
}
