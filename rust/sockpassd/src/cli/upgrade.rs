//! `sockpass upgrade [--exe PATH] [--socket PATH]`: replace the broker's
//! program in place (same pid), keeping every socket, reference and client
//! connection. Allowed to root and to the broker's own uid.

use crate::args::Args;
use sockpass::Client;
use std::path::PathBuf;

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut socket: Option<PathBuf> = None;
    let mut exe: Option<PathBuf> = None;
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            "--exe" => {
                let p = PathBuf::from(a.value_os(&k, v)?);
                // The broker resolves nothing relative to our directory.
                let p = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir()
                        .map_err(|e| format!("upgrade: {e}"))?
                        .join(p)
                };
                exe = Some(p);
            }
            _ => return Err(format!("upgrade: unknown option {k}")),
        }
    }
    if let Some(extra) = a.next_raw() {
        return Err(format!("upgrade: unexpected argument {extra:?}"));
    }
    let path = socket.unwrap_or_else(sockpass::default_socket_path);
    let mut c = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("upgrade", &e)),
    };
    match c.upgrade(exe.as_deref()) {
        Ok(pid) => {
            println!("upgraded sockpassd (pid {pid})");
            Ok(0)
        }
        Err(e) => Ok(super::fail("upgrade", &e)),
    }
}
