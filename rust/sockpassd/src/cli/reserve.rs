//! `sockpass reserve SPEC...`: reserve sockets for another process to pick up
//! (deferred pick-up). Prints `PORT TOKEN SPEC` per reservation and exits:
//! the broker holds each reservation until it is picked up or expires
//! (`sockpassd --reservation-ttl`, default 30 s).

use crate::args::Args;
use sockpass::Client;
use sockpass::{ShareMode, SocketSpec};
use std::io::Write;
use std::path::PathBuf;

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut socket: Option<PathBuf> = None;
    let mut share = ShareMode::None;
    let mut app = String::new();
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            "--share" => share = a.value(&k, v)?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--app" => app = a.value(&k, v)?,
            _ => return Err(format!("reserve: unknown option {k}")),
        }
    }
    a.skip_separator();
    let specs: Vec<SocketSpec> = a
        .rest()
        .iter()
        .map(|s| {
            let s = s.to_str().ok_or("reserve: spec is not UTF-8")?;
            s.parse::<SocketSpec>().map_err(|e| format!("reserve: {e}"))
        })
        .collect::<Result<_, String>>()?;
    if specs.is_empty() {
        return Err(
            "reserve: give at least one socket spec, e.g. tcp:0.0.0.0:80?backlog=128".into(),
        );
    }
    let path = socket.unwrap_or_else(sockpass::default_socket_path);
    let mut c = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("reserve", &e)),
    };
    let mut out = std::io::stdout().lock();
    for spec in &specs {
        match c.reserve_socket(spec, share, &app) {
            Ok(r) => {
                let _ = writeln!(out, "{} {} {}", r.port, r.token, spec);
            }
            Err(e) => return Ok(super::fail(&format!("reserve {spec}"), &e)),
        }
    }
    let _ = out.flush();
    Ok(0)
}
