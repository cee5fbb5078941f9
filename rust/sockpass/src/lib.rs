//! sockpass: get sockets and other file descriptors to the processes that
//! need them, on one Linux host.
//!
//! The API is re-exported here from private modules, one concept a module:
//! - `spec`: what socket is wanted, and its string form;
//! - `fdpass`: send and receive fds with `SCM_RIGHTS`;
//! - `proto`: the broker wire format;
//! - `share`: share modes and their compatibility;
//! - `token`: the tokens that name references;
//! - `client`: the blocking client (and `client::shared`, the one threads
//!   and forked children share);
//! - `forkgen`: telling a fork's child from its parent without a syscall;
//! - `server_socket`: server sockets handed into daemons, with a notifier
//!   (the D-Bus `ServerSocket` handover);
//! - `activation`: systemd socket activation (`LISTEN_FDS`);
//! - `supervise`: one program across restarts (old and new instance
//!   overlapping on the same sockets);
//! - `readiness`: waiting for a child to be ready (pipe, sd_notify, s6 fd);
//! - `catchbind`: answering a spawned program's own `bind()` calls with
//!   broker sockets (seccomp user notification);
//! - `dbus_address`: D-Bus addresses of unix sockets;
//! - `error`: typed errors shared by every layer.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod activation;
mod catchbind;
mod client;
mod dbus_address;
mod error;
mod forkgen;
mod ns;
mod readiness;
mod server_socket;
mod share;
mod spawn;
mod spec;
mod supervise;
mod token;

// Low-level pieces the sibling crates (sockpass-broker, sockpass-ffi,
// sockpassd, the Python extension, the fuzz targets) share with this one.
// Not API: hidden from the docs, and free to change with the siblings.
#[doc(hidden)]
pub mod fdpass;
#[doc(hidden)]
pub mod forking;
#[doc(hidden)]
pub mod keyhash;
#[doc(hidden)]
pub mod memfd;
#[doc(hidden)]
pub mod proto;
#[doc(hidden)]
pub mod sys;
#[doc(hidden)]
pub mod unixbind;
#[doc(hidden)]
pub use error::strerror;
#[doc(hidden)]
pub use sys::errno as last_errno;
#[doc(hidden)]
pub use token::{TokenBuildHasher, TokenSource};

pub use activation::{adopt_listen_socket, listen_fds, LISTEN_FDS_START};
#[doc(hidden)]
pub use activation::{listen_count, take_listen_fd};
pub use catchbind::{BindPorts, CatchBind};
pub use client::path::{candidates as default_socket_paths, SYSTEM_SOCKET};
pub use client::shared::default_client;
pub use client::{
    default_socket_path, with_default, Client, Grant, HolderStatus, Parts, Reservation,
    SharedClient, SocketStatus, Status, MAX_SPIN_US, PIPELINE_WINDOW,
};
pub use dbus_address::{
    escape_value as dbus_escape_value, unescape_value as dbus_unescape_value,
    unix_address as dbus_unix_address,
};
pub use error::{
    code_message, Error, Kind, Result, CODE_BROKER_UNAVAILABLE, CODE_CHILD_FAILED,
    CODE_LIMIT_REACHED, CODE_NOT_READY, CODE_PROTOCOL, CODE_SHARE_CONFLICT, CODE_TOKEN_EXPIRED,
    CODE_UNKNOWN_TOKEN,
};
pub use ns::{Namespaces, NsSet};
/// Per-uid use and quotas in [`Status::users`].
pub use proto::{Counters, UidCounts, UidRow};
#[doc(hidden)]
pub use readiness::connect_notify_socket;
pub use readiness::{
    inherited_fd, notify_ready_from_env, parse_notify, report_ready_fd, send_notify, Method,
    Readiness, MAX_NOTIFY_MESSAGE,
};
pub use server_socket::{
    bind_in_namespace, notifier_pair, prepare_lazy, BindOptions, LazyServer, ServerSocket, Target,
};
pub use share::{compatible, compatible_users, ShareMode};
pub use spawn::{exit_code, validate_name, Child, EnvBase, Slot, Spawn};
pub use spec::{parse_addr, Proto, SocketOptions, SocketSpec};
pub use supervise::{
    attach_readiness, describe_status, Event as SuperviseEvent, Options as SuperviseOptions,
    RestartFailure, Restarted, Supervisor,
};
pub use token::Token;
