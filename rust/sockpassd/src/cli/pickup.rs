//! `sockpass pickup TOKEN...`: collect reserved sockets by token, print
//! `PORT TOKEN` per socket, and hold them until stdin closes (the connection
//! is the lease), like `sockpass request`. `--fd N` uses a broker connection
//! handed in on fd N instead of connecting to a path.

use crate::args::Args;
use sockpass::Client;
use sockpass::Token;
use std::io::{Read, Write};
use std::path::PathBuf;

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut socket: Option<PathBuf> = None;
    let mut hold = true;
    let mut conn_fd: Option<i32> = None;
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            "--no-hold" => hold = false,
            // A broker connection handed in by a manager (a container
            // that cannot see the broker's path).
            "--fd" => {
                let v = a.value(&k, v)?;
                conn_fd = Some(
                    v.parse()
                        .map_err(|_| format!("{k}: not an fd number: {v}"))?,
                );
            }
            _ => return Err(format!("pickup: unknown option {k}")),
        }
    }
    a.skip_separator();
    let tokens: Vec<Token> = a
        .rest()
        .iter()
        .map(|s| {
            let s = s.to_str().ok_or("pickup: token is not UTF-8")?;
            s.parse::<Token>().map_err(|e| format!("pickup: {e}"))
        })
        .collect::<Result<_, String>>()?;
    if tokens.is_empty() {
        return Err("pickup: give at least one token (from sockpass reserve)".into());
    }
    if conn_fd.is_some() && socket.is_some() {
        return Err("pickup: give --fd or --socket, not both".into());
    }
    let c = match conn_fd {
        Some(n) => sockpass::inherited_fd(n).and_then(Client::from_fd),
        None => Client::connect(socket.unwrap_or_else(sockpass::default_socket_path)),
    };
    let mut c = match c {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("pickup", &e)),
    };
    let mut held = Vec::new();
    let mut out = std::io::stdout().lock();
    for t in &tokens {
        match c.pickup(t) {
            Ok(g) => {
                let _ = writeln!(out, "{} {}", g.port, g.token);
                held.push(g);
            }
            Err(e) => return Ok(super::fail("pickup", &e)),
        }
    }
    let _ = out.flush();
    drop(out);
    if hold {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    }
    Ok(0)
}
