//! A plan copied for another start: a supervisor spawns one recipe once per
//! instance, and every instance must get the same open files (each copy
//! duplicates the fds, so the sockets, their inodes and numbers are the same).

use super::{Slot, Spawn};
use crate::error::{Error, Result};
use std::os::fd::OwnedFd;

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    // OwnedFd::try_clone is F_DUPFD_CLOEXEC.
    fd.try_clone()
        .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EBADF), "dup a planned fd"))
}

impl Slot {
    /// The same slot, its fd (if any) duplicated.
    pub fn try_clone(&self) -> Result<Slot> {
        Ok(match self {
            Slot::Fd { fd, name } => Slot::Fd {
                fd: dup(fd)?,
                name: name.clone(),
            },
            Slot::Empty { name } => Slot::Empty { name: name.clone() },
            Slot::Inherit => Slot::Inherit,
        })
    }
}

impl Spawn {
    /// The same plan with every fd duplicated (CLOEXEC): spawning the copy
    /// leaves this one intact, to be copied again.
    pub fn try_clone(&self) -> Result<Spawn> {
        Ok(Spawn {
            program: self.program.clone(),
            args: self.args.clone(),
            env_base: self.env_base,
            env_ops: self.env_ops.clone(),
            slots: self
                .slots
                .iter()
                .map(Slot::try_clone)
                .collect::<Result<_>>()?,
            extra: self
                .extra
                .iter()
                .map(|(fd, t)| Ok((dup(fd)?, *t)))
                .collect::<Result<_>>()?,
            start: self.start,
            listen_env: self.listen_env,
            join: self.join.as_ref().map(|n| n.try_clone()).transpose()?,
            // Each instance gets its own catch (filter, thread, broker lease).
            catch: self.catch.clone(),
            paused: self.paused,
        })
    }
}
