//! The sockpass C ABI: thin `extern "C"` wrappers over the `sockpass` crate.
//! They translate C types and errors and decide nothing.
//!
//! Conventions (as systemd's sd-daemon and rustls-ffi):
//! - names are `sockpass_<object>_<verb>`; constants `SOCKPASS_*`;
//! - functions return `int`: `>= 0` on success (an fd, a count, a port),
//!   `-code` on failure, where `code` is an errno value or one of the
//!   `SOCKPASS_E_*` codes; `sockpass_strerror()` names it and
//!   `sockpass_last_error_message()` gives this thread's detail;
//! - out-parameters are written only on success;
//! - every function is behind a panic boundary (a panic is `-SOCKPASS_E_PANIC`);
//! - every fd handed out is `O_CLOEXEC` and owned by the caller.
#![allow(non_camel_case_types)]
// The exported functions check their pointers themselves (NULL gets -EFAULT);
// callers must pass valid pointers otherwise, as every C API requires.
#![allow(clippy::missing_safety_doc)]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod boundary;
mod client;
// After the client in include/sockpass.h.
mod batch;
mod errors;
// cbindgen writes include/sockpass.h in module order: server sockets come
// before readiness, as they did when this module was named `notify`.
mod server_socket;

mod readiness;
mod spawn;
mod supervise;

pub use batch::*;
pub use client::*;
pub use errors::*;
pub use server_socket::*;

pub use readiness::*;
pub use spawn::*;
pub use supervise::*;

/// The library version, as the three parts of the project version.
pub const SOCKPASS_VERSION_MAJOR: u32 = 0;
pub const SOCKPASS_VERSION_MINOR: u32 = 1;
pub const SOCKPASS_VERSION_PATCH: u32 = 0;

/// The library's version string, "MAJOR.MINOR.PATCH"; static, never freed.
#[no_mangle]
pub extern "C" fn sockpass_version() -> *const libc::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_constants_match_the_crate() {
        assert_eq!(
            super::SOCKPASS_VERSION_MAJOR.to_string(),
            env!("CARGO_PKG_VERSION_MAJOR")
        );
        assert_eq!(
            super::SOCKPASS_VERSION_MINOR.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
        assert_eq!(
            super::SOCKPASS_VERSION_PATCH.to_string(),
            env!("CARGO_PKG_VERSION_PATCH")
        );
    }
}
