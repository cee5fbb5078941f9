//! Send and receive file descriptors over unix sockets with `SCM_RIGHTS`.
//!
//! Receiving always uses `MSG_CMSG_CLOEXEC`; a truncated control message
//! (`MSG_CTRUNC`) or a truncated payload (`MSG_TRUNC`) is an error, and every
//! fd that did arrive is owned, so it is closed if the caller does not keep it.

use crate::error::{Error, Kind, Result};
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Most fds one message may carry in either direction (the kernel's SCM_MAX_FD
/// is 253).
pub const MAX_FDS: usize = 253;

/// Messages with at most this many fds (a request's reply carries one) are
/// sent and received with a control buffer this small on the stack; more
/// take a separate frame with room for `MAX_FDS`. A 1-2 KiB buffer in every
/// call's frame put the frames below it, and the control message the
/// kernel writes, on a stack page of their own: one more page for the TLB
/// to find on every request, a cold one whenever many client processes
/// take turns on a CPU.
const FEW_FDS: usize = 4;

/// Control-buffer room for `n` fds, 8-byte aligned as cmsg requires.
const fn cmsg_words(n: usize) -> usize {
    // CMSG_SPACE(n * 4) = header (16) + data rounded up to 8.
    (16 + (n * 4).div_ceil(8) * 8) / 8
}

/// What one `recv_fds` call got.
#[derive(Debug)]
pub struct Received {
    /// Bytes of payload; 0 means the peer closed the connection.
    pub len: usize,
    /// The fds that came with the message, each owned and CLOEXEC.
    pub fds: Vec<OwnedFd>,
}

/// Why a receive failed. `Truncated*` still consumed the message.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The payload did not fit in the buffer (MSG_TRUNC).
    TruncatedPayload,
    /// More fds arrived than the control buffer could hold (MSG_CTRUNC); the
    /// kernel closed the excess, and those that fit were closed here.
    TruncatedFds,
    /// A syscall error (EAGAIN included, for nonblocking sockets).
    Os(i32),
}

impl RecvError {
    pub fn into_error(self, what: &str) -> Error {
        match self {
            RecvError::TruncatedPayload => Error::protocol(format!("{what}: message too large")),
            RecvError::TruncatedFds => Error::with_errno(
                Kind::Protocol,
                libc::EPROTO,
                format!("{what}: more file descriptors than expected, or some lost to MSG_CTRUNC (the peer sent extra fds, or RLIMIT_NOFILE is exhausted); every one that arrived was closed"),
            ),
            RecvError::Os(e) => Error::os(e, what),
        }
    }
}

/// Send `data` with `fds` attached, as one message. Never raises SIGPIPE.
/// `flags` is or-ed in (e.g. `MSG_DONTWAIT`). Returns the errno on failure.
/// Async-signal-safe (no allocation, raw syscalls): a forked child may
/// send its report with it.
#[link_section = ".text.hot.sockpass"]
pub fn send_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: i32,
) -> std::result::Result<usize, i32> {
    if let [fd] = fds {
        return send_one_fd(sock, data, fd.as_raw_fd(), flags);
    }
    if fds.len() > FEW_FDS {
        assert!(fds.len() <= MAX_FDS);
        return in_own_frame::<u8, { rustix::cmsg_space!(ScmRights(MAX_FDS)) }, _>(|space| {
            send_with(sock, data, fds, flags, space)
        });
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FEW_FDS))];
    send_with(sock, data, fds, flags, &mut space)
}

/// `SCM_RIGHTS` with one fd, laid out as `CMSG_SPACE(sizeof(int))`.
#[repr(C)]
pub struct OneFdCmsg {
    pub hdr: libc::cmsghdr,
    pub fd: libc::c_int,
}

impl OneFdCmsg {
    /// The control message that passes `fd` (borrowed: the kernel takes
    /// its own reference when the message is sent).
    pub fn new(fd: libc::c_int) -> OneFdCmsg {
        // SAFETY: an all-zero cmsghdr is a valid value; its fields are set
        // below (zeroed first for the padding the kernel does not read).
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_level = libc::SOL_SOCKET;
        hdr.cmsg_type = libc::SCM_RIGHTS;
        hdr.cmsg_len =
            (std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<libc::c_int>()) as _;
        OneFdCmsg { hdr, fd }
    }
}

/// [`send_fds`] with exactly one fd (every reply that hands out a socket):
/// the control message built in place, without rustix's general buffer
/// (77 fewer of the broker's instructions for such a reply, callgrind).
#[inline(always)]
fn send_one_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: libc::c_int,
    flags: i32,
) -> std::result::Result<usize, i32> {
    let mut cmsg = OneFdCmsg::new(fd);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value; the fields set below
    // point at `iov` and `cmsg`, which outlive the calls.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut OneFdCmsg).cast();
    msg.msg_controllen = std::mem::size_of::<OneFdCmsg>() as _;
    loop {
        // The raw system call: libc's sendmsg is a cancellation point, and
        // entering and leaving asynchronous cancellation cost as much as
        // the rest of the call here. SAFETY: msg describes one iovec over
        // `data` and one SCM_RIGHTS control message with a valid layout;
        // the kernel only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendmsg,
                sock.as_raw_fd(),
                &msg as *const libc::msghdr,
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        match crate::sys::errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// `f` with an uninitialised buffer of `N` `T`s in a stack frame of its
/// own: the control buffers for more than `FEW_FDS` fds, kept out of the
/// common calls' frames.
#[inline(never)]
fn in_own_frame<T: Copy, const N: usize, R>(f: impl FnOnce(&mut [MaybeUninit<T>]) -> R) -> R {
    let mut buf = [MaybeUninit::<T>::uninit(); N];
    f(&mut buf)
}

/// [`send_fds`] with `space` for the control message (room for `fds`).
#[inline(always)]
fn send_with(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: i32,
    space: &mut [MaybeUninit<u8>],
) -> std::result::Result<usize, i32> {
    let flags = SendFlags::from_bits_retain(flags as u32) | SendFlags::NOSIGNAL;
    // Not zeroed: only the header and fds pushed are written and sent, and
    // zeroing 1 KiB on every call was a tenth of the hot path's instructions.
    let mut control = SendAncillaryBuffer::new(space);
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(pushed, "room for the fds");
    }
    loop {
        // Without fds, send(2): the kernel then copies no msghdr in.
        let r = if fds.is_empty() {
            rustix::net::send(sock, data, flags)
        } else {
            rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut control, flags)
        };
        match r {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.raw_os_error()),
        }
    }
}

/// Receive one message into `buf`, accepting at most `max_fds` fds (more is
/// `TruncatedFds`). `flags` is or-ed in (e.g. `MSG_DONTWAIT`).
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: i32,
) -> std::result::Result<Received, RecvError> {
    let mut fds = Vec::new();
    let len = recv_fds_into(sock, buf, max_fds, flags, &mut fds)?;
    Ok(Received { len, fds })
}

/// [`recv_fds`] appending the fds to `fds`, so that a caller receiving on a
/// hot path reuses one vector instead of allocating one a message. On an
/// error `fds` is as it was (what arrived is closed).
pub fn recv_fds_into(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: i32,
    fds: &mut Vec<OwnedFd>,
) -> std::result::Result<usize, RecvError> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    unsafe {
        recv_raw(
            sock,
            buf.as_mut_ptr(),
            buf.len(),
            max_fds,
            flags,
            fds,
            false,
        )
    }
}

/// [`recv_fds_into`] for a caller that must choose how unexpected fds are
/// closed (the broker closes them off its event loop: a close can block):
/// every fd that arrived is appended to `fds`, also when an error
/// (`MSG_CTRUNC`, `MSG_TRUNC`) is returned.
pub fn recv_fds_keeping(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: i32,
    fds: &mut Vec<OwnedFd>,
) -> std::result::Result<usize, RecvError> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    unsafe { recv_raw(sock, buf.as_mut_ptr(), buf.len(), MAX_FDS, flags, fds, true) }
}

/// One message from a socket that refuses fds (`SO_PASSRIGHTS` 0 since it
/// was made, so none can be queued): a plain `recv`, no control buffer,
/// which costs the kernel less than `recvmsg` (no `msghdr` to copy in and
/// out: 65 ns of a 600 ns send and receive here). A message longer than
/// `buf` is `TruncatedPayload`, with its first `buf.len()` bytes in `buf`.
pub fn recv_refusing_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: i32,
) -> std::result::Result<usize, RecvError> {
    let flags =
        rustix::net::RecvFlags::from_bits_retain(flags as u32) | rustix::net::RecvFlags::TRUNC;
    loop {
        match rustix::net::recv(sock, &mut *buf, flags) {
            Ok((n, whole)) if whole > n => return Err(RecvError::TruncatedPayload),
            Ok((n, _)) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(RecvError::Os(e.raw_os_error())),
        }
    }
}

/// [`recv_fds_into`] into a buffer not yet written, such as a vector's
/// spare capacity: the first `n` bytes are written when it returns `Ok(n)`,
/// so a caller that receives into a fresh buffer need not zero it.
pub fn recv_fds_into_uninit(
    sock: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    max_fds: usize,
    flags: i32,
    fds: &mut Vec<OwnedFd>,
) -> std::result::Result<usize, RecvError> {
    // SAFETY: buf is valid for writes of buf.len() bytes; the kernel only
    // writes to it, never reads.
    unsafe {
        recv_raw(
            sock,
            buf.as_mut_ptr().cast(),
            buf.len(),
            max_fds,
            flags,
            fds,
            false,
        )
    }
}

/// # Safety
/// `buf` must be valid for writes of `len` bytes.
unsafe fn recv_raw(
    sock: BorrowedFd<'_>,
    buf: *mut u8,
    len: usize,
    max_fds: usize,
    flags: i32,
    fds: &mut Vec<OwnedFd>,
    keep_on_error: bool,
) -> std::result::Result<usize, RecvError> {
    let mut lost = false;
    recv_raw_lost(RecvCall {
        sock,
        buf,
        len,
        max_fds,
        flags,
        fds,
        keep_on_error,
        lost_ok: false,
        lost: &mut lost,
    })
}

/// One receive's arguments: into `buf` (`len` bytes), at most `max_fds` fds
/// appended to `fds` (kept on an error if `keep_on_error`); with `lost_ok`,
/// fds lost to `RLIMIT_NOFILE` set `lost` instead of failing.
struct RecvCall<'a, 'f> {
    sock: BorrowedFd<'a>,
    buf: *mut u8,
    len: usize,
    max_fds: usize,
    flags: i32,
    fds: &'f mut Vec<OwnedFd>,
    keep_on_error: bool,
    lost_ok: bool,
    lost: &'f mut bool,
}

/// # Safety
/// `r.buf` must be valid for writes of `r.len` bytes.
#[link_section = ".text.hot.sockpass"]
unsafe fn recv_raw_lost(mut r: RecvCall<'_, '_>) -> std::result::Result<usize, RecvError> {
    r.max_fds = r.max_fds.min(MAX_FDS);
    if r.max_fds > FEW_FDS {
        return in_own_frame::<u64, { cmsg_words(MAX_FDS) }, _>(|cbuf| {
            // SAFETY: as this function's; cbuf has room for MAX_FDS.
            unsafe { recv_with_control(r, cbuf) }
        });
    }
    // Not zeroed: the kernel writes what it reports in msg_controllen, and
    // only that is read.
    let mut cbuf = [MaybeUninit::<u64>::uninit(); cmsg_words(FEW_FDS)];
    // SAFETY: as this function's; cbuf has room for max_fds (<= FEW_FDS).
    unsafe { recv_with_control(r, &mut cbuf) }
}

/// [`recv_raw_lost`] with `cbuf` for the control message.
///
/// # Safety
/// `call.buf` must be valid for writes of `call.len` bytes, and `cbuf` must
/// have room for the control message of `call.max_fds.max(1)` fds.
#[inline(always)]
unsafe fn recv_with_control(
    call: RecvCall<'_, '_>,
    cbuf: &mut [MaybeUninit<u64>],
) -> std::result::Result<usize, RecvError> {
    let mut iov = libc::iovec {
        iov_base: call.buf.cast(),
        iov_len: call.len,
    };
    // SAFETY: zeroed msghdr, then pointers to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // Room for max_fds, or the smallest buffer if none are expected, so that
    // unexpected fds still arrive here (and are closed) rather than being
    // silently dropped by the kernel without our knowing.
    let room = call.max_fds.max(1);
    msg.msg_control = cbuf.as_mut_ptr().cast::<libc::c_void>();
    // CMSG_SPACE exactly (rustix's cmsg_space! adds room to align a
    // buffer, which cbuf already is): never more than cbuf holds.
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE((room * std::mem::size_of::<libc::c_int>()) as u32) } as usize;
    assert!(msg.msg_controllen <= std::mem::size_of_val(cbuf));
    let n = loop {
        // The syscall itself: rustix's `recvmsg` wants initialised buffers
        // (`buf` may not be), and glibc's is a cancellation point, which
        // costs every message two calls into pthread (nothing here cancels).
        // SAFETY: msg points at live buffers of the stated sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                call.sock.as_raw_fd(),
                &mut msg as *mut libc::msghdr,
                call.flags | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if r >= 0 {
            break r as usize;
        }
        let e = crate::sys::errno();
        if e != libc::EINTR {
            return Err(RecvError::Os(e));
        }
    };
    let before = call.fds.len();
    // Every fd of every SCM_RIGHTS message is owned from here (closed unless
    // kept); nothing else is asked for. libc's CMSG_* walk, inlined, rather
    // than rustix's generic drain: that was two code pages and 99
    // instructions on each request's path, for the one message of one fd.
    // SAFETY: msg describes cbuf, where the kernel wrote msg_controllen bytes
    // of control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c points at a whole cmsghdr inside the kernel's messages
        // (cbuf is 8-byte aligned, as is every header in it).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the data of an SCM_RIGHTS message is cmsg_len -
            // CMSG_LEN(0) bytes of ints (no more than the kernel wrote),
            // each an fd now this process's.
            unsafe {
                let data = libc::CMSG_DATA(c);
                let written = cbuf.as_ptr().cast::<u8>().add(msg.msg_controllen);
                let bytes = (h.cmsg_len as usize)
                    .saturating_sub(libc::CMSG_LEN(0) as usize)
                    .min(written.offset_from(data).max(0) as usize);
                let data = data.cast::<libc::c_int>();
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    call.fds
                        .push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || call.fds.len() - before > call.max_fds {
        // Lost to the rlimit (fewer arrived than there was room for), not
        // sent in excess (which fills the room): the message still counts.
        let lost_only =
            call.fds.len() - before < call.max_fds && msg.msg_flags & libc::MSG_TRUNC == 0;
        // Truncating closes every fd that did arrive.
        if !call.keep_on_error {
            call.fds.truncate(before);
        }
        if call.lost_ok && lost_only {
            call.fds.truncate(before);
            *call.lost = true;
            return Ok(n);
        }
        return Err(RecvError::TruncatedFds);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        if !call.keep_on_error {
            call.fds.truncate(before);
        }
        return Err(RecvError::TruncatedPayload);
    }
    Ok(n)
}

/// [`recv_fds_into_uninit`] for a message whose fds may be lost to the
/// receiver's `RLIMIT_NOFILE` (`MSG_CTRUNC`): instead of an error, the
/// message is returned with `fds_lost` set (and no fd), so the receiver can
/// still read what the message says (say, the token of a reference it must
/// now give back). Any fd that did arrive is closed.
#[link_section = ".text.hot.sockpass"]
pub fn recv_fds_into_uninit_or_lost(
    sock: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    max_fds: usize,
    flags: i32,
    fds: &mut Vec<OwnedFd>,
    fds_lost: &mut bool,
) -> std::result::Result<usize, RecvError> {
    *fds_lost = false;
    // SAFETY: as in recv_fds_into_uninit.
    unsafe {
        recv_raw_lost(RecvCall {
            sock,
            buf: buf.as_mut_ptr().cast(),
            len: buf.len(),
            max_fds,
            flags,
            fds,
            keep_on_error: false,
            lost_ok: true,
            lost: fds_lost,
        })
    }
}

/// A connected pair of unix sockets of type `ty`, both CLOEXEC.
pub fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::from_raw(ty as u32),
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::os(e.raw_os_error(), "socketpair"))
}

/// Send one fd with a payload on a blocking socket (convenience).
pub fn send_fd(sock: &impl AsFd, data: &[u8], fd: &impl AsFd) -> Result<()> {
    send_fds(sock.as_fd(), data, &[fd.as_fd()], 0)
        .map(|_| ())
        .map_err(|e| Error::os(e, "sendmsg"))
}

/// Receive exactly one fd with its payload on a blocking socket (convenience).
/// A message without an fd, or with more than one, is a protocol error.
pub fn recv_fd(sock: &impl AsFd, buf: &mut [u8]) -> Result<(usize, OwnedFd)> {
    let r = recv_fds(sock.as_fd(), buf, 1, 0).map_err(|e| e.into_error("recvmsg"))?;
    if r.len == 0 && r.fds.is_empty() {
        return Err(Error::with_errno(
            Kind::BrokerUnavailable,
            libc::ECONNRESET,
            "peer closed the connection",
        ));
    }
    let mut fds = r.fds;
    match fds.pop() {
        Some(fd) => Ok((r.len, fd)),
        None => Err(Error::protocol("expected a file descriptor, none arrived")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-fd control message is laid out as CMSG_SPACE and CMSG_LEN
    /// say, so the kernel reads the fd where it was written.
    #[test]
    fn one_fd_cmsg_has_the_kernels_layout() {
        let one = std::mem::size_of::<libc::c_int>() as u32;
        let c = OneFdCmsg::new(7);
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute lengths.
        let (space, len) = unsafe { (libc::CMSG_SPACE(one), libc::CMSG_LEN(one)) };
        assert_eq!(std::mem::size_of::<OneFdCmsg>(), space as usize);
        assert_eq!(u64::try_from(c.hdr.cmsg_len).ok(), Some(u64::from(len)));
        // SAFETY: CMSG_DATA of a header at the start of `c` points inside it.
        let data = unsafe { libc::CMSG_DATA(&c.hdr) };
        assert_eq!(data as usize, std::ptr::addr_of!(c.fd) as usize);
        assert_eq!(
            (c.hdr.cmsg_level, c.hdr.cmsg_type, c.fd),
            (libc::SOL_SOCKET, libc::SCM_RIGHTS, 7)
        );
    }

    #[test]
    fn passes_fds_cloexec() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let (x, _y) = socketpair(libc::SOCK_STREAM).unwrap();
        send_fd(&a, b"hi", &x).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_fd(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert!(crate::sys::is_cloexec(fd.as_raw_fd()));
    }

    #[test]
    fn too_many_fds_is_ctrunc_and_closes() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let (x, y) = socketpair(libc::SOCK_STREAM).unwrap();
        let many: Vec<BorrowedFd> = (0..5).map(|_| x.as_fd()).collect();
        send_fds(a.as_fd(), b"m", &many, 0).unwrap();
        drop(many);
        drop(x);
        let mut buf = [0u8; 16];
        let e = recv_fds(b.as_fd(), &mut buf, 2, 0).unwrap_err();
        assert_eq!(e, RecvError::TruncatedFds);
        // Every copy of x is closed (those that arrived, by us; the rest, by
        // the kernel) exactly when its peer sees end-of-stream.
        let mut one = [0u8; 1];
        // SAFETY: read into a local buffer; y is blocking but every writer is gone.
        let n = unsafe { libc::read(y.as_raw_fd(), one.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "no copy of the passed socket is left open");
    }

    #[test]
    fn receives_into_unwritten_capacity() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let (x, _y) = socketpair(libc::SOCK_STREAM).unwrap();
        send_fd(&a, b"hello", &x).unwrap();
        let mut buf: Vec<u8> = Vec::with_capacity(16);
        let mut fds = Vec::new();
        let n = recv_fds_into_uninit(b.as_fd(), buf.spare_capacity_mut(), 1, 0, &mut fds).unwrap();
        // SAFETY: the kernel wrote the n bytes it reported.
        unsafe { buf.set_len(n) };
        assert_eq!(buf, b"hello");
        assert_eq!(fds.len(), 1);
        assert!(crate::sys::is_cloexec(fds[0].as_raw_fd()));
        // More than the room is truncation, and what came with it is closed.
        send_fds(a.as_fd(), &[1u8; 64], &[x.as_fd()], 0).unwrap();
        let mut small: Vec<u8> = Vec::with_capacity(64);
        let e = recv_fds_into_uninit(
            b.as_fd(),
            &mut small.spare_capacity_mut()[..16],
            1,
            0,
            &mut fds,
        )
        .unwrap_err();
        assert_eq!(e, RecvError::TruncatedPayload);
        assert_eq!(
            fds.len(),
            1,
            "the fd that came with the cut message is closed"
        );
    }

    #[test]
    fn oversized_payload_is_trunc() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        send_fds(a.as_fd(), &[1u8; 64], &[], 0).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            recv_fds(b.as_fd(), &mut buf, 0, 0).unwrap_err(),
            RecvError::TruncatedPayload
        );
    }
}
