//! sockpass-broker: the broker side of sockpass, used by `sockpassd` only.
//! The client library (`sockpass`) never depends on this crate, so the C
//! library and the Python extension cannot reach broker code.
//!
//! - [`broker`]: the cache, references and connections, in one epoll loop;
//! - [`policy`]: who may ask for what; [`quota`]: how much each uid may hold;
//! - [`handoff`]: the broker's state handed to its successor on upgrade;
//! - [`exe`]: the upgrade's binaries, opened once, checked, run by fd;
//! - [`fallback`]: a new image that fails before serving runs the old one;
//! - [`fdstore`]: sockets kept in systemd's fd store;
//! - [`create`]: turn a spec into a bound socket (unix ones in [`unixsock`]);
//! - [`log`]: log lines that never block the loop, rate limits;
//! - [`closer`]: closing fds a client could have touched off the loop.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod broker;
pub mod closer;
pub mod create;
pub mod exe;
pub mod fallback;
pub mod fdstore;
pub mod handoff;
mod holders;
pub mod log;
pub mod policy;
pub mod quota;
pub mod unixsock;
