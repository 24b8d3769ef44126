//! The broker logs through `tracing`: one line per connection opened and closed, with its
//! peer and the reason, into whatever subscriber the host program installed; and nothing at
//! all when it installed none.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestBroker;
use live_mutex::Client;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn text(b: &Buf) -> String {
    String::from_utf8_lossy(&b.0.lock().unwrap()).into_owned()
}

#[test]
fn connections_log_one_line_each_way_through_the_hosts_subscriber() {
    let buf = Buf::default();
    let sink = buf.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let b = TestBroker::start();
    let c = Client::connect(&format!("tcp://{}", b.addr)).unwrap();
    drop(c.lock("k").unwrap());
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text(&buf).contains("connection closed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = text(&buf);
    let opened: Vec<_> = log
        .lines()
        .filter(|l| l.contains("connection opened"))
        .collect();
    let closed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert_eq!((opened.len(), closed.len()), (1, 1), "{log}");
    assert!(
        opened[0].contains("INFO") && opened[0].contains("peer=\"127.0.0.1:"),
        "{log}"
    );
    assert!(opened[0].contains("(NDJSON)"), "{log}");
    // The close says why, who (the name the client gave) and carries a timestamp.
    assert!(closed[0].contains("peer closed"), "{log}");
    assert!(
        closed[0].contains(&format!("[{}]", std::process::id())),
        "{log}"
    );
    assert!(closed[0].starts_with("20"), "timestamped: {log}");
}

/// Run in a child process: an embedded broker with no subscriber installed.
#[test]
fn silent_child() {
    if std::env::var_os("LMX_SILENT_CHILD").is_none() {
        return;
    }
    let b = TestBroker::start();
    let c = Client::connect(&format!("tcp://{}", b.addr)).unwrap();
    drop(c.lock("k").unwrap());
    let mut raw = std::net::TcpStream::connect(b.addr).unwrap();
    // A refused web page would be logged at warn level with a subscriber.
    let _ = raw.write_all(b"POST / HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn an_embedded_broker_without_a_subscriber_is_silent() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "silent_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LMX_SILENT_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("connection") && !stdout.contains("refused"),
        "{stdout}"
    );
}
