//! sockpass: get sockets and other file descriptors to the processes that
//! need them, on one Linux host.
//!
//! The crate is organised one concept a module:
//! - [`spec`]: what socket is wanted, and its string form;
//! - [`create`]: turn a spec into a bound socket;
//! - [`fdpass`]: send and receive fds with `SCM_RIGHTS`;
//! - [`proto`]: the broker wire format;
//! - [`share`]: share modes and their compatibility;
//! - [`token`]: the tokens that name references;
//! - [`policy`]: who may ask for what;
//! - [`broker`]: the cache, references and connections, in one epoll loop;
//! - [`client`]: the blocking client (and [`client::shared`], the one threads
//!   and forked children share);
//! - [`forkgen`]: telling a fork's child from its parent without a syscall;
//! - [`notify`]: server sockets handed into daemons, with a notifier;
//! - [`readiness`]: waiting for a child to be ready (pipe, sd_notify, s6 fd);
//! - [`dbus_address`]: D-Bus addresses of unix sockets;
//! - [`error`]: typed errors shared by every layer.

pub mod broker;
pub mod client;
pub mod create;
pub mod dbus_address;
pub mod error;
pub mod fdpass;
pub mod fdstore;
pub mod forkgen;
pub mod handoff;
mod holders;
mod keyhash;
pub mod memfd;
pub mod notify;
pub mod ns;
pub mod policy;
pub mod proto;
pub mod readiness;
pub mod share;
pub mod spawn;
pub mod spec;
pub mod sys;
pub mod token;
pub mod unixsock;

pub use client::{Client, Grant, Status};
pub use error::{Error, Kind, Result};
pub use share::ShareMode;
pub use spec::{Proto, SocketSpec};
pub use token::Token;
