//! Where a client looks for the broker when it is given no path.

use std::path::{Path, PathBuf};

/// The system broker's socket.
pub const SYSTEM_SOCKET: &str = "/run/sockpass/sockpassd.sock";

/// The paths a client tries, in order, when it is given none:
/// `$SOCKPASS_SOCKET` alone if it is set (and not empty); for root the
/// system socket; for anyone else the per-user socket
/// (`$XDG_RUNTIME_DIR/sockpass/sockpassd.sock`, or
/// `/run/user/UID/sockpass/sockpassd.sock` without `XDG_RUNTIME_DIR`) and
/// then the system socket, so an unprivileged service finds the system
/// broker without being told.
pub fn candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("SOCKPASS_SOCKET").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return vec![PathBuf::from(SYSTEM_SOCKET)];
    }
    let user = match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("sockpass/sockpassd.sock"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/run/user/{}/sockpass/sockpassd.sock", unsafe {
            libc::getuid()
        })),
    };
    vec![user, PathBuf::from(SYSTEM_SOCKET)]
}
