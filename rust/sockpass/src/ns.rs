//! Joining another process's namespaces (as `nsenter` and runc's `nsexec`
//! do): every namespace fd, and the target's root and cwd, are opened before
//! any is joined; joining happens in a forked child only, so the caller's
//! threads never change namespace. A namespace the target shares with us is
//! skipped, as `nsenter` does (re-entering one's own user namespace is
//! `EINVAL`, so `--ns all` would fail for every target without its own).

use crate::error::{Error, Kind, Result};
use crate::sys::errno;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The namespaces that can be joined, in the order they are joined: user
/// first (it grants the rights to join the rest), mount last (so nothing
/// after it resolves paths in the target's tree by accident).
pub const ALL: [(&str, i32); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// A subset of [`ALL`], as a bit per entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsSet(u8);

impl NsSet {
    pub const NONE: NsSet = NsSet(0);

    /// Every namespace but the user namespace: what a root container
    /// manager usually joins (`--ns` default of `sockpass run --join`).
    pub fn default_join() -> NsSet {
        NsSet(0b111_1110)
    }

    pub fn contains(self, name: &str) -> bool {
        ALL.iter()
            .position(|(n, _)| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        ALL.iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
    }
}

impl std::str::FromStr for NsSet {
    type Err = Error;
    /// A comma-separated list of `user,ipc,uts,net,pid,cgroup,mnt` (also
    /// `mount`, `all`).
    fn from_str(s: &str) -> Result<NsSet> {
        let mut set = 0u8;
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let w = if w == "mount" { "mnt" } else { w };
            if w == "all" {
                set |= 0b111_1111;
                continue;
            }
            let i = ALL.iter().position(|(n, _)| *n == w).ok_or_else(|| {
                Error::bad_request(format!(
                    "unknown namespace {w:?} (one of user, ipc, uts, net, pid, cgroup, mnt)"
                ))
            })?;
            set |= 1 << i;
        }
        Ok(NsSet(set))
    }
}

/// The opened namespaces of one process, ready to be joined in a child.
#[derive(Debug)]
pub struct Namespaces {
    pid: i32,
    /// (index into [`ALL`], fd), in joining order.
    fds: Vec<(usize, OwnedFd)>,
    /// With the mount namespace: the target's root and cwd.
    root: Option<OwnedFd>,
    cwd: Option<OwnedFd>,
}

fn open_path(path: &str) -> std::result::Result<OwnedFd, i32> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| e.raw_os_error())
}

impl Namespaces {
    /// Open `set` of process `pid`'s namespaces. A dead pid (`ESRCH`), or a
    /// namespace that cannot be opened, is an error naming it and the errno.
    /// A namespace the target shares with us (same device and inode as
    /// `/proc/self/ns/X`) is skipped: not opened, not joined. With `mnt` in
    /// `set`, the target's root and cwd are taken even when its mount
    /// namespace is ours (it may be chrooted).
    pub fn open(pid: i32, set: NsSet) -> Result<Namespaces> {
        if pid <= 0 {
            return Err(Error::bad_request(format!("invalid target pid {pid}")));
        }
        // Kind::Os, so the bindings carry ESRCH itself (a bad request's
        // code is EINVAL).
        let dir = open_path(&format!("/proc/{pid}")).map_err(|e| {
            Error::with_errno(
                Kind::Os,
                if e == libc::ENOENT { libc::ESRCH } else { e },
                format!("target process {pid} does not exist"),
            )
        })?;
        let mut fds = Vec::new();
        for (i, (name, _)) in ALL.iter().enumerate() {
            if set.0 & (1 << i) == 0 {
                continue;
            }
            let fd = open_path(&format!("/proc/{pid}/ns/{name}")).map_err(|e| {
                Error::os(
                    e,
                    format!("cannot open the {name} namespace of process {pid}"),
                )
            })?;
            if same_file(&fd, &format!("/proc/self/ns/{name}")) {
                continue;
            }
            fds.push((i, fd));
        }
        let (root, cwd) = if set.contains("mnt") {
            let o = |what: &str| {
                open_path(&format!("/proc/{pid}/{what}"))
                    .map_err(|e| Error::os(e, format!("cannot open the {what} of process {pid}")))
            };
            (Some(o("root")?), Some(o("cwd")?))
        } else {
            (None, None)
        };
        drop(dir);
        Ok(Namespaces {
            pid,
            fds,
            root,
            cwd,
        })
    }

    /// Another handle on the same namespaces (each fd duplicated), for a
    /// plan spawned more than once (a supervisor's next instance).
    pub fn try_clone(&self) -> Result<Namespaces> {
        let dup = |f: &OwnedFd| {
            f.try_clone()
                .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EBADF), "dup"))
        };
        Ok(Namespaces {
            pid: self.pid,
            fds: self
                .fds
                .iter()
                .map(|(i, f)| Ok((*i, dup(f)?)))
                .collect::<Result<_>>()?,
            root: self.root.as_ref().map(dup).transpose()?,
            cwd: self.cwd.as_ref().map(dup).transpose()?,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The namespaces that will be joined (those shared with us are not).
    pub fn joined(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fds.iter().map(|(i, _)| ALL[*i].0)
    }

    pub fn joins_pid(&self) -> bool {
        self.fds.iter().any(|(i, _)| ALL[*i].0 == "pid")
    }

    /// Every fd this holds, so a spawn can keep them clear of its targets.
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds
            .iter()
            .map(|(_, f)| f.as_raw_fd())
            .chain(self.root.iter().map(|f| f.as_raw_fd()))
            .chain(self.cwd.iter().map(|f| f.as_raw_fd()))
    }

    /// Join every opened namespace, then take the target's root and cwd.
    /// Only for a forked, single-threaded child: async-signal-safe, no
    /// allocation. On failure returns (step, errno) where step indexes
    /// [`ALL`], or 7 for the root and 8 for the cwd.
    pub fn enter(&self) -> std::result::Result<(), (usize, i32)> {
        for (i, fd) in &self.fds {
            // SAFETY: setns on an fd we own.
            if unsafe { libc::setns(fd.as_raw_fd(), ALL[*i].1) } != 0 {
                return Err((*i, errno()));
            }
        }
        if let (Some(root), Some(cwd)) = (&self.root, &self.cwd) {
            // SAFETY: plain syscalls on fds we own and a static string.
            unsafe {
                if libc::fchdir(root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                    return Err((7, errno()));
                }
                if libc::fchdir(cwd.as_raw_fd()) != 0 {
                    return Err((8, errno()));
                }
            }
        }
        Ok(())
    }

    /// Name a step [`Namespaces::enter`] failed at.
    pub fn step_name(step: usize) -> &'static str {
        match step {
            0..=6 => ALL[step].0,
            7 => "root",
            _ => "cwd",
        }
    }
}

/// Whether `fd` is the file at `path` (same device and inode), as nsenter
/// compares namespaces. An unreadable `path` is "not the same".
fn same_file(fd: &OwnedFd, path: &str) -> bool {
    match (rustix::fs::fstat(fd), rustix::fs::stat(path)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sets() {
        let s: NsSet = "net,mount".parse().unwrap();
        assert!(s.contains("net") && s.contains("mnt") && !s.contains("pid"));
        assert_eq!(s.names().collect::<Vec<_>>(), ["net", "mnt"]);
        assert!("net,bogus".parse::<NsSet>().is_err());
        assert!(!NsSet::default_join().contains("user"));
    }

    #[test]
    fn dead_pid_and_own_namespaces() {
        let e = Namespaces::open(i32::MAX - 1, NsSet::default_join()).unwrap_err();
        assert_eq!((e.errno(), e.code()), (libc::ESRCH, libc::ESRCH));
        // Our own namespaces are all shared with us: none is joined, but
        // with mnt the root and cwd are still taken.
        let me = std::process::id() as i32;
        let n = Namespaces::open(me, "all".parse().unwrap()).unwrap();
        assert_eq!(n.joined().count(), 0);
        assert_eq!(n.raw_fds().count(), 2);
        assert!(!n.joins_pid());
    }
}
