//! sockpass: get sockets and other file descriptors to the processes that
//! need them, on one Linux host.
//!
//! The crate is organised one concept a module:
//! - [`spec`]: what socket is wanted, and its string form;
//! - [`fdpass`]: send and receive fds with `SCM_RIGHTS`;
//! - [`proto`]: the broker wire format;
//! - [`share`]: share modes and their compatibility;
//! - [`token`]: the tokens that name references;
//! - [`client`]: the blocking client;
//! - [`server_socket`]: server sockets handed into daemons, with a notifier
//!   (the D-Bus `ServerSocket` handover);
//! - [`activation`]: systemd socket activation (`LISTEN_FDS`);
//! - [`readiness`]: waiting for a child to be ready (pipe, sd_notify, s6 fd);
//! - [`dbus_address`]: D-Bus addresses of unix sockets;
//! - [`error`]: typed errors shared by every layer.

pub mod activation;
pub mod client;
pub mod dbus_address;
pub mod error;
pub mod fdpass;
pub mod keyhash;
pub mod memfd;
pub mod ns;
pub mod proto;
pub mod readiness;
pub mod server_socket;
pub mod share;
pub mod spawn;
pub mod spec;
pub mod sys;
pub mod token;

pub use client::{default_socket_path, Client, Grant, Status};
pub use error::{Error, Kind, Result};
pub use share::ShareMode;
pub use spec::{Proto, SocketSpec};
pub use token::Token;
