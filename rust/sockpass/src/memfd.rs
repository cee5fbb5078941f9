//! Anonymous in-memory files, for payloads too large for one packet.

use crate::error::{Error, Result};
use std::io::Write;
use std::os::fd::OwnedFd;

/// A CLOEXEC memfd holding `data`, sealed against writes and resizing.
pub fn from_bytes(name: &str, data: &[u8]) -> Result<OwnedFd> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| Error::bad_request("memfd name contains NUL"))?;
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(&cname, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error::os(e.raw_os_error(), "memfd_create"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)
        .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EIO), "write memfd"))?;
    let fd = OwnedFd::from(f);
    let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(&fd, seals)
        .map_err(|e| Error::os(e.raw_os_error(), "seal memfd"))?;
    Ok(fd)
}

/// Read a whole received memfd (or any file), at most `max` bytes.
pub fn read_all(fd: OwnedFd, max: usize) -> Result<Vec<u8>> {
    // By offset (pread), not seek + read: a file description shared with
    // another reader has one offset for both.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(fd);
    let mut out = vec![0u8; 64 * 1024];
    let mut len = 0usize;
    loop {
        if len == out.len() {
            if len > max {
                break;
            }
            out.resize((len * 2).min(max + 1).max(len + 1), 0);
        }
        match f.read_at(&mut out[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from(e)),
        }
    }
    out.truncate(len);
    if out.len() > max {
        return Err(Error::protocol(format!("payload larger than {max} bytes")));
    }
    Ok(out)
}
