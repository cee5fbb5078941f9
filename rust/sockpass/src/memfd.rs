//! Anonymous in-memory files, for payloads too large for one packet.

use crate::error::{Error, Result};
use std::io::{Read, Seek, SeekFrom, Write};
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
    let mut f = std::fs::File::from(fd);
    f.seek(SeekFrom::Start(0)).map_err(Error::from)?;
    let mut out = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Error::from)?;
    if out.len() > max {
        return Err(Error::protocol(format!("payload larger than {max} bytes")));
    }
    Ok(out)
}
