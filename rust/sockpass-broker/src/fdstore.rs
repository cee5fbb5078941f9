//! The systemd fd store: cached sockets kept by the service manager, so a
//! crash or `kill -9` of the broker does not close them.
//!
//! Each cached (keyed) socket is pushed with `FDSTORE=1` and a name
//! `sp.<entry id>.<spec>` (the spec escaped to the characters systemd allows
//! in a name: printable ASCII without `:`), and removed with
//! `FDSTOREREMOVE=1` when its last reference goes. On restart systemd passes
//! the stored fds after the socket unit's, named in `LISTEN_FDNAMES`;
//! [`take_stored_from_env`] takes them out of the activation set.

use sockpass::fdpass::send_fds;
use sockpass::sys;
use sockpass::{Error, Kind, Result};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Names of the fds this module stores start with this.
pub const NAME_PREFIX: &str = "sp.";
/// systemd's limit on an fd name.
const MAX_NAME: usize = 255;

/// The fd name for a cached socket, or None if the spec is too long to fit.
pub fn fd_name(entry_id: u64, spec: &str) -> Option<String> {
    let mut n = format!("{NAME_PREFIX}{entry_id}.");
    for b in spec.bytes() {
        if b.is_ascii_graphic() && b != b':' && b != b'%' {
            n.push(b as char);
        } else {
            n.push_str(&format!("%{b:02X}"));
        }
    }
    (n.len() <= MAX_NAME).then_some(n)
}

/// The spec string in an fd name made by [`fd_name`].
pub fn spec_of_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (id, esc) = rest.split_once('.')?;
    id.parse::<u64>().ok()?;
    let b = esc.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A connection to `$NOTIFY_SOCKET` for fd store messages.
#[derive(Debug)]
pub struct FdStore {
    sock: OwnedFd,
}

impl FdStore {
    /// Connect to the notify socket `addr` (`/path` or `@abstract`).
    pub fn connect(addr: &OsStr) -> Result<FdStore> {
        let b = addr.as_bytes();
        let a = match b.first() {
            Some(b'@') => [&[0u8][..], &b[1..]].concat(),
            Some(b'/') => b.to_vec(),
            _ => {
                return Err(Error::bad_request(format!(
                    "notify socket {:?} is neither an absolute path nor @abstract",
                    addr.to_string_lossy()
                )))
            }
        };
        let sock = sys::unix_socket(libc::SOCK_DGRAM, false).map_err(|e| Error::os(e, "socket"))?;
        sys::connect_unix(&sock, &a).map_err(|e| {
            Error::os(
                e,
                format!("connect to notify socket {}", addr.to_string_lossy()),
            )
        })?;
        Ok(FdStore { sock })
    }

    fn send(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> Result<()> {
        send_fds(self.sock.as_fd(), msg.as_bytes(), fds, libc::MSG_DONTWAIT)
            .map(|_| ())
            .map_err(|e| Error::os(e, "send to notify socket"))
    }

    /// Keep `fd` in the store under `name`.
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>) -> Result<()> {
        self.send(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd])
    }

    /// Drop the stored fds named `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
    }
}

fn bad(msg: String) -> Error {
    Error::with_errno(Kind::BadRequest, libc::EINVAL, msg)
}

/// Take the fds this module stored out of a socket activation environment
/// (`LISTEN_PID` = us, `LISTEN_FDS`, `LISTEN_FDNAMES`): each with its name
/// and the spec the name carries, owned and CLOEXEC. The variables are rewritten to name
/// only the fds left (the socket unit's, which systemd passes first), so
/// socket activation sees just those. Without stored fds nothing changes.
pub fn take_stored_from_env() -> Result<Vec<(String, String, OwnedFd)>> {
    let (Ok(pid), Ok(n), Ok(names)) = (
        std::env::var("LISTEN_PID"),
        std::env::var("LISTEN_FDS"),
        std::env::var("LISTEN_FDNAMES"),
    ) else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: usize = n
        .parse()
        .ok()
        .filter(|n| *n <= 4096)
        .ok_or_else(|| bad(format!("LISTEN_FDS={n:?} is not a count of fds")))?;
    let names: Vec<&str> = names.split(':').collect();
    if names.len() != n {
        return Err(bad(format!(
            "LISTEN_FDNAMES names {} fds, LISTEN_FDS says {n}",
            names.len()
        )));
    }
    let first_stored = names
        .iter()
        .position(|s| s.starts_with(NAME_PREFIX))
        .unwrap_or(n);
    if names[first_stored..]
        .iter()
        .any(|s| !s.starts_with(NAME_PREFIX))
    {
        return Err(bad(format!(
            "LISTEN_FDNAMES={:?}: stored sockets must come after the socket unit's",
            names.join(":")
        )));
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate().skip(first_stored) {
        let fd = 3 + i as RawFd;
        if !sys::fd_is_open(fd) {
            return Err(Error::with_errno(
                Kind::BadRequest,
                libc::EBADF,
                format!("LISTEN_FDS={n} but fd {fd} is not open"),
            ));
        }
        // SAFETY: fd is open and passed to this process to own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: as above; each fd is taken once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match spec_of_name(name) {
            Some(spec) => out.push((name.to_string(), spec, fd)),
            // Not ours after all: closed, and said so by the caller's count.
            None => drop(fd),
        }
    }
    if first_stored == 0 {
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
    } else {
        std::env::set_var("LISTEN_FDS", first_stored.to_string());
        std::env::set_var("LISTEN_FDNAMES", names[..first_stored].join(":"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_avoid_colons() {
        for s in [
            "udp:127.0.0.1:53?reuseport=1",
            "tcp:[::1]:80?backlog=128",
            "unix:/run/x y/%s.sock",
        ] {
            let n = fd_name(42, s).unwrap();
            assert!(n.starts_with("sp.42."));
            assert!(!n.contains(':') && n.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(spec_of_name(&n).as_deref(), Some(s));
        }
        assert!(fd_name(1, &"x".repeat(300)).is_none());
        assert_eq!(spec_of_name("sockpassd.socket"), None);
        assert_eq!(spec_of_name("sp.x.udp"), None);
        assert_eq!(spec_of_name("sp.1.bad%zz"), None);
    }
}
