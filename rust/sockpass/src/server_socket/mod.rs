//! Server sockets handed into daemons (the D-Bus containers design:
//! `ServerSocket` plus `ServerSocketReadyNotifier`):
//! - [`server`]: the receiving side, which adopts a socket, waits for the
//!   notifier, then accepts;
//! - [`manager`]: the handing side, which binds inside another process's
//!   namespaces and makes the notifier pair.
//!
//! systemd socket activation (`LISTEN_FDS`) lives in `activation`, beside
//! `readiness` (sd_notify): the systemd protocol pieces together.

pub(crate) mod manager;
pub(crate) mod server;

pub use manager::{
    bind_in_namespace, notifier_pair, prepare_lazy, BindOptions, LazyServer, Target,
};
pub use server::ServerSocket;
