//! A broker process at its descriptor limit refuses new connections cleanly (they are closed,
//! not left hanging) while its existing connections go on, and serves again once descriptors
//! are free. (Alone in its binary: it owns a broker process.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Killed, LMX};

/// Ok(true): answered; Ok(false): closed by the broker; Err: nothing within the time-out.
fn ping(s: &mut TcpStream) -> Result<bool, ()> {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(b"{\"type\":\"ping\",\"uuid\":\"p\"}\n")
        .is_err()
    {
        return Ok(false);
    }
    let mut line = String::new();
    match BufReader::new(&*s).read_line(&mut line) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(line.contains("pong")),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Err(())
        }
        Err(_) => Ok(false),
    }
}

#[test]
fn out_of_descriptors_refuses_cleanly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _broker = Killed(
        Command::new("bash")
            .args([
                "-c",
                &format!("ulimit -n 40; exec {LMX} start --port {port}"),
            ])
            .spawn()
            .unwrap(),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut conns = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..60 {
        let mut s = TcpStream::connect(addr).unwrap();
        match ping(&mut s) {
            Ok(true) => {
                served += 1;
                conns.push(s);
            }
            Ok(false) => refused += 1,
            Err(()) => panic!("a connection was left hanging instead of refused"),
        }
    }
    eprintln!("at a limit of 40 descriptors: {served} served, {refused} refused");
    assert!(served > 20 && refused > 0);
    for s in &mut conns {
        assert_eq!(ping(s), Ok(true), "existing connections are unaffected");
    }
    conns.truncate(served - 10);
    std::thread::sleep(Duration::from_millis(100));
    let mut s = TcpStream::connect(addr).unwrap();
    assert_eq!(
        ping(&mut s),
        Ok(true),
        "served again once descriptors are free"
    );
}
