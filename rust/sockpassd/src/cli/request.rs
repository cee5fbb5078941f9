//! `sockpass request SPEC...`: ask the broker for sockets, print one line per
//! socket (`PORT TOKEN SPEC`), and hold them until stdin closes or a signal
//! ends the process. The connection is the lease, so exiting releases them.
//! Useful from the shell, and as a real client process in tests.

use crate::args::Args;
use sockpass::Client;
use sockpass::{ShareMode, SocketSpec};
use std::io::{Read, Write};
use std::path::PathBuf;

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut socket: Option<PathBuf> = None;
    let mut share = ShareMode::None;
    let mut app = String::new();
    let mut hold = true;
    let mut reserve = false;
    let mut flags = 0u8;
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            "--share" => share = a.value(&k, v)?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--app" => app = a.value(&k, v)?,
            "--no-hold" => hold = false,
            "--reserve" => reserve = true,
            // Its own socket in the port's SO_REUSEPORT group (the spec
            // must ask for reuseport=1), rather than the shared one.
            "--per-worker" => flags |= sockpass::proto::REQ_PER_WORKER,
            _ => return Err(format!("request: unknown option {k}")),
        }
    }
    a.skip_separator();
    let specs: Vec<SocketSpec> = a
        .rest()
        .iter()
        .map(|s| {
            let s = s.to_str().ok_or("request: spec is not UTF-8")?;
            s.parse::<SocketSpec>().map_err(|e| format!("request: {e}"))
        })
        .collect::<Result<_, String>>()?;
    if reserve && flags != 0 {
        return Err("request: --per-worker sockets are held, not reserved; drop --reserve".into());
    }
    if specs.is_empty() {
        return Err("request: give at least one socket spec, e.g. udp:127.0.0.1:5353".into());
    }
    let path = socket.unwrap_or_else(sockpass::default_socket_path);
    let mut c = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("request", &e)),
    };
    let mut held = Vec::new();
    let mut out = std::io::stdout().lock();
    if !reserve && flags == 0 {
        // One batch: one round trip, all or nothing.
        let batch: Vec<_> = specs
            .iter()
            .map(|s| (s.clone(), share, app.as_str()))
            .collect();
        match c.request_many(&batch) {
            Ok(gs) => {
                for (g, spec) in gs.into_iter().zip(&specs) {
                    let _ = writeln!(out, "{} {} {}", g.port, g.token, spec);
                    held.push(g);
                }
            }
            Err(e) => return Ok(super::fail("request", &e)),
        }
    }
    for spec in specs.iter().filter(|_| reserve || flags != 0) {
        if reserve {
            match c.reserve_socket(spec, share, &app) {
                Ok(r) => {
                    let _ = writeln!(out, "{} {} {}", r.port, r.token, spec);
                }
                Err(e) => return Ok(super::fail(&format!("reserve {spec}"), &e)),
            }
            continue;
        }
        match c.request_with_flags(spec, share, &app, flags) {
            Ok(g) => {
                let _ = writeln!(out, "{} {} {}", g.port, g.token, spec);
                held.push(g);
            }
            Err(e) => return Ok(super::fail(&format!("request {spec}"), &e)),
        }
    }
    let _ = out.flush();
    drop(out);
    if hold {
        // Hold until stdin reaches EOF (or the process is killed).
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    }
    Ok(0)
}
