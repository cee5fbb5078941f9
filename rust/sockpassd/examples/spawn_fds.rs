//! Benchmark helper (benches/run, B8): `spawn_fds N PROGRAM [ARGS...]`
//! listens on N TCP sockets on 127.0.0.1 (as `systemd-socket-activate -l`
//! does), starts PROGRAM with them as fds 3.. (LISTEN_FDS) through
//! `sockpass::spawn`, waits for it and exits with its status.
use sockpass::{exit_code, Spawn};
use std::net::TcpListener;
use std::os::fd::OwnedFd;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: spawn_fds N PROGRAM [ARGS...]");
        std::process::exit(2);
    }
    let n: usize = args[0].parse().expect("N: a number");
    let mut s = Spawn::new(&args[1]);
    s.args(&args[2..]);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        s.fd(OwnedFd::from(l), None);
    }
    let mut child = s.spawn().unwrap_or_else(|e| {
        eprintln!("spawn_fds: {e}");
        std::process::exit(1)
    });
    let st = child.wait().expect("wait");
    std::process::exit(exit_code(st));
}
