//! How the broker is set up.

use super::limits::Limits;
use crate::policy::Policy;

/// How the broker is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub limits: Limits,
    pub policy: Policy,
    /// Mode of the listening socket file.
    pub socket_mode: u32,
    /// Group of the listening socket file (None: the broker's own).
    pub socket_group: Option<u32>,
    /// Write one line per event that matters to stderr.
    pub log: bool,
    /// Send the replies of a loop turn together, by io_uring where the
    /// kernel allows it (`--no-io-uring`: one `sendmsg` each).
    pub io_uring: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            policy: Policy::builtin(),
            socket_mode: 0o666,
            socket_group: None,
            log: true,
            io_uring: true,
        }
    }
}
