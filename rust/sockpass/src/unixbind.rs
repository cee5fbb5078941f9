//! The one hardened binder of Unix-domain sockets at a path ([`UnixBinder`]),
//! shared by the broker's listener, its Unix socket requests
//! (`sockpass_broker::unixsock`) and the server-socket manager.
//!
//! The race it closes: a path is checked, then `bind()` resolves it again,
//! and whoever can write a directory on the way swaps in a symlink between
//! the two, so a root-owned socket appears in a directory they cannot
//! write. The binder never resolves the path twice through anything a
//! stranger can change:
//!
//! 1. The directory that will hold the socket is opened from `/` (or the
//!    working directory, for a relative path) one component at a time with
//!    `O_PATH | O_NOFOLLOW | O_DIRECTORY`; a symlink on the way is refused,
//!    so a policy's `path=` prefix (compared as text) is where the file goes.
//! 2. Each step also tells whether the path is *stable*: every directory
//!    above the socket's own is owned by root (or by us) and writable by
//!    nobody else, or sticky with the next directory owned by root (or us).
//!    Then nobody else can rename, replace or mount over anything the path
//!    runs through, so binding by the absolute path binds in the directory
//!    just opened, and the socket keeps its absolute address (what
//!    `getsockname`, D-Bus addresses and `sd_is_socket_unix` see). Otherwise
//!    (a directory someone else can write, or a path too long for
//!    `sun_path`), the socket is bound by its bare name from inside the
//!    opened directory, so `getsockname` reports only the name; the bind
//!    cannot land anywhere else. The socket's own directory may be
//!    writable by anyone: `bind()` never follows a symlink at the name.
//! 3. Both need a working directory and a umask of our own: the socket file
//!    is created with exactly its mode (umask `!mode`), so no chmod by path
//!    is needed. Both are process-wide, so the binder runs in a thread that
//!    first takes a private copy of them (`unshare(CLONE_FS)`), or, where
//!    that is refused (seccomp), in a forked child; the manager's helper
//!    child calls [`UnixBinder::bind_in_child`] directly. The process's own
//!    working directory and umask never change.
//! 4. The result is checked by fd: the name in the opened directory must be
//!    a socket with one link, owned by our effective uid (a file another
//!    user put there is theirs; hard links to root's sockets are refused by
//!    `protected_hardlinks`, and in a directory where the name can be
//!    swapped at all, every candidate is a file the swapper could already
//!    remove). Owner and, where a default ACL widened it, mode are then set
//!    through an `O_PATH` handle to that very file (`fchownat` and
//!    `fchmodat2` with `AT_EMPTY_PATH`, or `chmod` of its `/proc/self/fd`
//!    link), never by path.
//!
//! A failure after the bind removes the file again, if the name still
//! names the inode that was checked.

use crate::error::{Error, Kind, Result};
use crate::sys;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What to do with a file already at the socket's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Fail (`bind()` says `EADDRINUSE`).
    Refuse,
    /// Remove a socket file nobody listens on; refuse anything else.
    ReplaceStale,
}

/// Where the binder failed, and why, as `(step, errno)`: what a forked
/// child can report without allocating. [`UnixBinder::error`] words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Opening directory component N (0-based) failed.
    OpenDir(u16),
    /// Directory component N is a symlink (or not a directory).
    Symlink(u16),
    /// Creating directory component N failed.
    MakeDir(u16),
    /// The name exists and is not a socket (errno EEXIST), or is a symlink
    /// (ELOOP).
    NotSocket,
    /// Something listens on the existing socket.
    Live,
    /// Probing or removing a stale socket failed.
    Stale,
    /// Getting a private working directory and umask failed.
    Private,
    Bind,
    /// After the bind the name is not our fresh socket.
    Verify,
    Chown,
    Chmod,
    Listen,
}

impl Step {
    /// As two bytes, for a report from a child.
    pub fn encode(self) -> [u8; 2] {
        let (k, n) = match self {
            Step::OpenDir(n) => (1, n),
            Step::Symlink(n) => (2, n),
            Step::MakeDir(n) => (3, n),
            Step::NotSocket => (4, 0),
            Step::Live => (5, 0),
            Step::Stale => (6, 0),
            Step::Private => (7, 0),
            Step::Bind => (8, 0),
            Step::Verify => (9, 0),
            Step::Chown => (10, 0),
            Step::Chmod => (11, 0),
            Step::Listen => (12, 0),
        };
        [k, n.min(255) as u8]
    }

    pub fn decode(b: [u8; 2]) -> Step {
        let n = u16::from(b[1]);
        match b[0] {
            1 => Step::OpenDir(n),
            2 => Step::Symlink(n),
            3 => Step::MakeDir(n),
            4 => Step::NotSocket,
            5 => Step::Live,
            6 => Step::Stale,
            7 => Step::Private,
            8 => Step::Bind,
            9 => Step::Verify,
            10 => Step::Chown,
            11 => Step::Chmod,
            _ => Step::Listen,
        }
    }
}

/// A Unix socket path, split and checked before any syscall, and how to
/// make the file. Binding allocates nothing, so a forked child may do it.
#[derive(Clone, Debug)]
pub struct UnixBinder {
    path: CString,
    dirs: Vec<CString>,
    name: CString,
    relative: bool,
    /// The file's mode (default 0o666).
    pub mode: u32,
    /// Owner and group to give the file (`u32::MAX` leaves one as it is).
    pub owner: Option<(u32, u32)>,
    /// listen() after bind, with this backlog.
    pub backlog: Option<i32>,
    pub existing: Existing,
    /// Create missing directories with this mode.
    pub make_dirs: Option<u32>,
}

type Raw<T> = std::result::Result<T, (Step, i32)>;

impl UnixBinder {
    /// A binder for `path`: absolute (or relative to the working
    /// directory), without `.` or `..` components or NUL bytes.
    pub fn new(path: &[u8]) -> Result<UnixBinder> {
        let bad = || {
            Error::bad_request(format!(
                "invalid Unix socket path {:?}",
                String::from_utf8_lossy(path)
            ))
        };
        let relative = path.first() != Some(&b'/');
        let mut comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let name = comps.pop().ok_or_else(bad)?;
        if path.ends_with(b"/") || path.contains(&0) {
            return Err(bad());
        }
        if comps
            .iter()
            .chain([&name])
            .any(|c| *c == b"." || *c == b"..")
        {
            return Err(bad());
        }
        let c = |b: &[u8]| CString::new(b).map_err(|_| bad());
        Ok(UnixBinder {
            path: c(path)?,
            dirs: comps.into_iter().map(c).collect::<Result<_>>()?,
            name: c(name)?,
            relative,
            mode: 0o666,
            owner: None,
            backlog: None,
            existing: Existing::Refuse,
            make_dirs: None,
        })
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap_or("(not UTF-8)")
    }

    /// Bind `sock` at the path (see the module text); returns the socket
    /// file's inode. Runs where the working directory and umask are private
    /// to the binder, so the process's own never change.
    pub fn bind(&self, sock: BorrowedFd<'_>) -> Result<u64> {
        let raw = sock.as_raw_fd();
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscall; affects this thread only.
                if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                    return None;
                }
                // SAFETY: this thread's cwd and umask are its own now.
                Some(unsafe { self.bind_in_child(raw) })
            })
            .join()
            .unwrap_or(None)
        });
        match r {
            Some(r) => r,
            None => self.bind_forked(raw),
        }
        .map_err(|(step, e)| self.error(step, e))
    }

    /// The fallback where `unshare(CLONE_FS)` is refused: a child process
    /// binds the socket (the fd is shared) and reports.
    fn bind_forked(&self, sock: RawFd) -> Raw<u64> {
        let (rd, wr) = crate::readiness::pipe().map_err(|e| (Step::Private, e.errno()))?;
        // SAFETY: the child runs only async-signal-safe calls on data
        // prepared before, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err((Step::Private, sys::errno()));
        }
        if pid == 0 {
            // SAFETY: in the child, which owns its cwd and umask.
            let r = unsafe { self.bind_in_child(sock) };
            let mut m = [0u8; 14];
            match r {
                Ok(ino) => m[6..14].copy_from_slice(&ino.to_ne_bytes()),
                Err((step, e)) => {
                    m[..2].copy_from_slice(&step.encode());
                    m[2..6].copy_from_slice(&e.to_ne_bytes());
                }
            }
            // SAFETY: write to our pipe, then leave.
            unsafe {
                libc::write(wr.as_raw_fd(), m.as_ptr().cast(), m.len());
                libc::_exit(0)
            }
        }
        drop(wr);
        let mut m = [0u8; 14];
        let mut got = 0;
        while got < m.len() {
            // SAFETY: reading into the unread tail of m.
            let n =
                unsafe { libc::read(rd.as_raw_fd(), m[got..].as_mut_ptr().cast(), m.len() - got) };
            if n > 0 {
                got += n as usize;
            } else if n == 0 || sys::errno() != libc::EINTR {
                break;
            }
        }
        let mut st = 0;
        // SAFETY: reaping our own child.
        while unsafe { libc::waitpid(pid, &mut st, 0) } < 0 && sys::errno() == libc::EINTR {}
        if got < m.len() {
            return Err((Step::Private, libc::ECHILD));
        }
        let e = i32::from_ne_bytes(m[2..6].try_into().unwrap());
        if m[0] != 0 {
            return Err((Step::decode([m[0], m[1]]), e));
        }
        Ok(u64::from_ne_bytes(m[6..14].try_into().unwrap()))
    }

    /// The binder itself, for a caller whose working directory and umask
    /// are its own (a forked child, or a thread after `unshare(CLONE_FS)`):
    /// it changes both. Async-signal-safe; allocates nothing.
    ///
    /// # Safety
    /// `sock` must be an open socket; the cwd and umask must be private.
    pub unsafe fn bind_in_child(&self, sock: RawFd) -> Raw<u64> {
        let (dir, stable) = self.open_parent()?;
        if libc::fchdir(dir.0) != 0 {
            return Err((Step::Private, sys::errno()));
        }
        // The bytes bind() gets: the absolute path where nobody else can
        // change it, else the bare name in the directory we hold.
        let path = self.path.as_bytes();
        let use_path = stable && path.len() < 108;
        let addr = if use_path { path } else { self.name.as_bytes() };
        let Ok((sun, len)) = sys::sockaddr_un(addr) else {
            return Err((Step::Bind, libc::ENAMETOOLONG));
        };
        if self.existing == Existing::ReplaceStale {
            self.remove_if_stale(&dir, &sun, len)?;
        }
        libc::umask(!self.mode as libc::mode_t & 0o777);
        if libc::bind(sock, (&sun as *const libc::sockaddr_un).cast(), len) != 0 {
            return Err((Step::Bind, sys::errno()));
        }
        // Find what the bind made, through the directory we hold.
        let f = libc::openat(
            dir.0,
            self.name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if f < 0 {
            return Err((Step::Verify, sys::errno()));
        }
        let f = Fd(f);
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(f.0, &mut st) != 0 {
            return Err((Step::Verify, sys::errno()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK
            || st.st_nlink != 1
            || st.st_uid != libc::geteuid()
        {
            return Err((Step::Verify, libc::EEXIST));
        }
        let ino = st.st_ino;
        let undo = |step: Step| -> (Step, i32) {
            let e = sys::errno();
            let mut now: libc::stat = std::mem::zeroed();
            if libc::fstatat(
                dir.0,
                self.name.as_ptr(),
                &mut now,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0
                && now.st_ino == ino
            {
                libc::unlinkat(dir.0, self.name.as_ptr(), 0);
            }
            (step, e)
        };
        if let Some((uid, gid)) = self.owner {
            if libc::fchownat(f.0, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) != 0 {
                return Err(undo(Step::Chown));
            }
        }
        // A default ACL on the directory overrides the umask.
        if st.st_mode & 0o7777 != self.mode && !chmod_fd(f.0, self.mode) {
            return Err(undo(Step::Chmod));
        }
        if let Some(b) = self.backlog {
            if libc::listen(sock, b) != 0 {
                return Err(undo(Step::Listen));
            }
        }
        Ok(ino)
    }

    /// Walk to the socket's directory; also whether the path is stable.
    unsafe fn open_parent(&self) -> Raw<(Fd, bool)> {
        let start: &CStr = if self.relative { c"." } else { c"/" };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let d = libc::open(start.as_ptr(), flags);
        if d < 0 {
            return Err((Step::OpenDir(0), sys::errno()));
        }
        let mut dir = Fd(d);
        let mut st = fstat_raw(dir.0).map_err(|e| (Step::OpenDir(0), e))?;
        let euid = libc::geteuid();
        let trusted = |uid: u32| uid == 0 || uid == euid;
        let mut stable = true;
        for (i, c) in self.dirs.iter().enumerate() {
            let i = i as u16;
            let open = || libc::openat(dir.0, c.as_ptr(), flags | libc::O_NOFOLLOW);
            let mut n = open();
            if n < 0 && sys::errno() == libc::ENOENT {
                if let Some(m) = self.make_dirs {
                    if libc::mkdirat(dir.0, c.as_ptr(), m as libc::mode_t) != 0
                        && sys::errno() != libc::EEXIST
                    {
                        return Err((Step::MakeDir(i), sys::errno()));
                    }
                    n = open();
                }
            }
            if n < 0 {
                // With O_PATH|O_NOFOLLOW a symlink opens as itself, which
                // O_DIRECTORY then refuses: ENOTDIR (ELOOP without O_PATH).
                return Err(match sys::errno() {
                    e @ (libc::ENOTDIR | libc::ELOOP) => (Step::Symlink(i), e),
                    e => (Step::OpenDir(i), e),
                });
            }
            let next = Fd(n);
            let nst = fstat_raw(next.0).map_err(|e| (Step::OpenDir(i), e))?;
            // Can anyone but root or us change what `c` in `dir` names?
            let shut = st.st_mode & 0o022 == 0;
            let sticky = st.st_mode & libc::S_ISVTX != 0 && trusted(nst.st_uid);
            stable &= trusted(st.st_uid) && (shut || sticky);
            dir = next;
            st = nst;
        }
        Ok((dir, stable))
    }

    /// If a socket file is at the name and nothing answers on it, remove
    /// it. Anything else there (a live socket, a regular file, a symlink)
    /// is an error.
    unsafe fn remove_if_stale(
        &self,
        dir: &Fd,
        sun: &libc::sockaddr_un,
        len: libc::socklen_t,
    ) -> Raw<()> {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.0,
            self.name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) != 0
        {
            return match sys::errno() {
                libc::ENOENT => Ok(()),
                e => Err((Step::Stale, e)),
            };
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => {}
            libc::S_IFLNK => return Err((Step::NotSocket, libc::ELOOP)),
            _ => return Err((Step::NotSocket, libc::EEXIST)),
        }
        // Probe with a socket of the file's own kind: try each type, since
        // the file does not say which it is.
        for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET, libc::SOCK_DGRAM] {
            let p = libc::socket(
                libc::AF_UNIX,
                ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            );
            if p < 0 {
                return Err((Step::Stale, sys::errno()));
            }
            let p = Fd(p);
            let r = libc::connect(p.0, (sun as *const libc::sockaddr_un).cast(), len);
            match if r == 0 { 0 } else { sys::errno() } {
                // A live listener with a full backlog says EAGAIN.
                0 | libc::EAGAIN | libc::EINPROGRESS => return Err((Step::Live, libc::EADDRINUSE)),
                libc::EPROTOTYPE => continue,
                libc::ECONNREFUSED => {}
                e => return Err((Step::Stale, e)),
            }
        }
        // Stale: nothing listens. Remove it, unless it changed under us.
        let mut now: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.0,
            self.name.as_ptr(),
            &mut now,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
            && now.st_ino == st.st_ino
            && libc::unlinkat(dir.0, self.name.as_ptr(), 0) != 0
        {
            return Err((Step::Stale, sys::errno()));
        }
        Ok(())
    }

    /// Word a `(step, errno)` failure.
    pub fn error(&self, step: Step, errno: i32) -> Error {
        let path = self.path();
        let dir = |n: u16| {
            let mut s = String::new();
            if !self.relative {
                s.push('/');
            }
            for c in self.dirs.iter().take(usize::from(n) + 1) {
                s.push_str(&c.to_string_lossy());
                s.push('/');
            }
            s.pop();
            s
        };
        match step {
            Step::OpenDir(n) => Error::os(errno, format!("cannot open directory {} of {path}", dir(n))),
            Step::Symlink(n) => Error::with_errno(
                Kind::NotAllowed,
                errno,
                format!(
                    "{} is a symlink or not a directory; refusing to create or remove {path} through it",
                    dir(n)
                ),
            ),
            Step::MakeDir(n) => Error::os(errno, format!("cannot create socket directory {}", dir(n))),
            Step::NotSocket => Error::with_errno(
                Kind::AddressInUse,
                libc::EEXIST,
                if errno == libc::ELOOP {
                    format!("{path} is a symlink; refusing to replace it")
                } else {
                    format!("{path} exists and is not a socket; refusing to replace it")
                },
            ),
            Step::Live => Error::with_errno(
                Kind::AddressInUse,
                libc::EADDRINUSE,
                format!("something listens on {path}; not replacing it"),
            ),
            Step::Stale => Error::os(errno, format!("cannot probe or remove the stale socket {path}")),
            Step::Private => Error::os(errno, format!("cannot bind {path} race-free (no private working directory)")),
            Step::Bind => Error::os(errno, format!("bind {path}")),
            Step::Verify => Error::with_errno(
                Kind::NotAllowed,
                errno,
                format!("{path} is not the socket just bound (replaced in its directory meanwhile?); not changing it"),
            ),
            Step::Chown => {
                let (u, g) = self.owner.unwrap_or((u32::MAX, u32::MAX));
                Error::os(errno, format!("chown {path} to {}:{}", u as i32, g as i32))
            }
            Step::Chmod => Error::os(errno, format!("chmod {path} to {:o}", self.mode)),
            Step::Listen => Error::os(errno, format!("listen on {path}")),
        }
    }
}

/// chmod the file an `O_PATH` fd names: `fchmodat2(AT_EMPTY_PATH)` where
/// the kernel has it, else its `/proc/self/fd` link (which names this very
/// inode, not a path). Async-signal-safe.
unsafe fn chmod_fd(fd: RawFd, mode: u32) -> bool {
    const SYS_FCHMODAT2: libc::c_long = 452;
    let r = libc::syscall(
        SYS_FCHMODAT2,
        fd,
        c"".as_ptr(),
        mode as libc::mode_t,
        libc::AT_EMPTY_PATH,
    );
    if r == 0 {
        return true;
    }
    // "/proc/self/fd/" + decimal fd + NUL, built on the stack.
    let mut buf = [0u8; 32];
    let pre = b"/proc/self/fd/";
    buf[..pre.len()].copy_from_slice(pre);
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (fd as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for j in 0..k {
        buf[pre.len() + j] = digits[k - 1 - j];
    }
    libc::chmod(buf.as_ptr().cast(), mode as libc::mode_t) == 0
}

/// A raw fd closed on drop, usable after fork (no allocation).
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

fn fstat_raw(fd: RawFd) -> std::result::Result<libc::stat, i32> {
    // SAFETY: all-zero is a valid stat; the call fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH fds may be fstat'ed), st writable.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        Err(sys::errno())
    } else {
        Ok(st)
    }
}

impl UnixBinder {
    /// The socket's directory, opened without following a symlink, and the
    /// file's name in it: for finding and removing files the binder made.
    pub fn open_dir(&self) -> Option<(OwnedFd, &CStr)> {
        // SAFETY: open_parent only opens and stats; the fd is then owned.
        let (dir, _) = unsafe { self.open_parent() }.ok()?;
        let raw = dir.0;
        std::mem::forget(dir);
        // SAFETY: raw is the directory fd open_parent returned, now ours.
        Some((unsafe { OwnedFd::from_raw_fd(raw) }, &self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sp-unixbind-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn stale_replaced_live_refused_dirs_made() {
        let d = tmp("stale");
        let p = d.join("a/b/s.sock");
        let mut b = UnixBinder::new(p.as_os_str().as_encoded_bytes()).unwrap();
        b.make_dirs = Some(0o755);
        b.backlog = Some(4);
        b.existing = Existing::ReplaceStale;
        let s1 = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        b.bind(s1.as_fd()).unwrap();
        // Live: refused.
        let s2 = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let e = b.bind(s2.as_fd()).unwrap_err();
        assert_eq!(e.kind(), Kind::AddressInUse, "{e}");
        // Stale once s1 is gone: replaced.
        drop(s1);
        // A test forking on another thread may hold a copy of s1 for a
        // moment (a forked child has every fd until it exits or execs), so
        // the socket can read as live briefly: wait, bounded.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let ino = loop {
            match b.bind(s2.as_fd()) {
                Err(e) if e.kind() == Kind::AddressInUse && std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => break r.unwrap(),
            }
        };
        assert_eq!(std::fs::symlink_metadata(&p).unwrap().ino(), ino);
        // The fork fallback binds the same way.
        let s3 = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let mut b3 = UnixBinder::new(d.join("a/f.sock").as_os_str().as_encoded_bytes()).unwrap();
        b3.backlog = Some(1);
        let ino3 = b3.bind_forked(s3.as_raw_fd()).unwrap();
        assert_eq!(
            std::fs::symlink_metadata(d.join("a/f.sock")).unwrap().ino(),
            ino3
        );
        assert!(crate::server_socket::server::is_listening(s3.as_fd()).unwrap());
        for bad in [&b"/a/../b"[..], b"/a/./b", b"/", b"/a/", b""] {
            assert!(UnixBinder::new(bad).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
