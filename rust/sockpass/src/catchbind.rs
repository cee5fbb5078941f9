//! Catching a spawned program's own `bind()` calls and answering them with
//! broker sockets (`sockpass run --catch-bind`, [`crate::Spawn::catch_bind`]).
//!
//! The child installs a seccomp filter before `exec` that turns `bind` into
//! a user notification ([`filter`]); its listener goes to the parent, where
//! a thread per instance ([`supervisor`]) reads each caught bind
//! ([`notify`]), reads the address and looks at the program's socket
//! through `pidfd_getfd` ([`target`]), asks the broker for that socket
//! (share mode and application name as for a request), installs it over
//! the program's fd with `SECCOMP_IOCTL_NOTIF_ADDFD` (same number, the
//! program's `O_NONBLOCK` and `FD_CLOEXEC`), and answers 0.
//!
//! **It grants, it never restricts.** A bind it does not catch (another
//! family, port 0, a port outside [`BindPorts`], another syscall ABI, an
//! io_uring bind) runs in the kernel as without sockpass
//! (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`), and so does a bind the broker
//! refuses (the program gets the kernel's own answer, `EACCES` for a
//! privileged port) or one from a process the supervisor cannot read; each
//! refusal is a line on stderr naming the reason (the policy's rule). A
//! sharing conflict fails the bind with `EADDRINUSE`.
//!
//! **References.** The thread's broker connection is the instance's lease:
//! it holds one reference a socket it installed, and closes (releasing
//! them) when every filtered process is gone or the `Child` is dropped. A
//! socket obtained for a program that dies before it is installed is
//! released at once.
//!
//! **Sharing.** Requests are plain (not `PER_WORKER`): with `--share
//! sameapp` an instance that binds an address another instance holds gets
//! that very socket (one accept queue, so a restart refuses nothing), and
//! so does a second bind of one address within an instance, `SO_REUSEPORT`
//! or not. With share mode none a second bind of an address the instance
//! holds (it closed its socket, or makes a reuseport group) releases the
//! older reference and gets a new socket, as the kernel would.
//!
//! **Limits.** The socket's `O_NONBLOCK` belongs to its open file
//! description, which a shared socket shares: the last program to bind it
//! sets it for all. Options the spec has no word for (`TCP_FASTOPEN`,
//! `IP_TOS`, ...) set before bind are not carried, nor is a buffer size
//! set to exactly the kernel's default (it cannot be told from none).
//! Without `CAP_SYS_ADMIN`
//! the kernel installs a filter only under `no_new_privs`, so the program
//! (and what it execs) gains nothing from setuid bits or file
//! capabilities. The kernel allows one listener on a filter chain: a
//! program already under one (a `--catch-bind` inside another, some
//! container runtimes) cannot be caught again. If the supervisor goes
//! away, later binds in the program fail with `ENOSYS` (the kernel's
//! answer for a filter without a listener).

mod filter;
mod notify;
mod ports;
mod supervisor;
mod target;

pub(crate) use filter::install_and_send;
pub use ports::BindPorts;
pub(crate) use supervisor::{Prepared, Supervisor};

use crate::client::Client;
use crate::error::Result;
use crate::share::ShareMode;
use std::path::PathBuf;
use std::time::Duration;

/// How a spawned program's binds are caught ([`crate::Spawn::catch_bind`]):
/// the child runs under a seccomp filter that sends each `bind()` to a
/// thread of the caller, which answers the TCP and UDP binds to
/// [`CatchBind::ports`] with a socket from the broker, installed at the
/// program's own fd number. Anything else, and whatever the broker refuses,
/// the kernel judges as without sockpass (a line on stderr says why).
/// Limits: the program runs with `no_new_privs` unless the caller has
/// `CAP_SYS_ADMIN`; one listener per filter chain (no catch inside a
/// catch); a shared socket's `O_NONBLOCK` is the last binder's;
/// options a socket spec has no word for are not carried; the catch ends
/// with the [`crate::Child`] (later binds then fail with `ENOSYS`).
#[derive(Clone, Debug)]
pub struct CatchBind {
    /// Which ports are caught (default: the privileged ones).
    pub ports: BindPorts,
    /// The broker's socket; `None`: where every client looks
    /// ([`crate::default_socket_paths`]).
    pub socket: Option<PathBuf>,
    /// Share mode and application name of every request, as for
    /// [`Client::request_socket`].
    pub share: ShareMode,
    pub app: String,
    /// Bound on each broker call; a broker that does not answer in time
    /// leaves the bind to the kernel.
    pub timeout: Duration,
}

impl CatchBind {
    pub fn new(ports: BindPorts) -> CatchBind {
        CatchBind {
            ports,
            socket: None,
            share: ShareMode::None,
            app: String::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Before the fork: check the kernel can do it (a clear error, and no
    /// program started, if not), connect to the broker.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        let notif_size = filter::probe()?;
        let t = Some(self.timeout);
        let client = match &self.socket {
            Some(p) => Client::connect_timeout(p, t),
            None => Client::connect_default_timeout(t),
        }
        .map_err(|e| e.context("--catch-bind: connect to the broker"))?;
        let ranges = self.ports.resolve(ports::unprivileged_start());
        Ok(Prepared::new(
            client,
            ranges,
            self.share,
            self.app.clone(),
            notif_size,
        ))
    }
}
