//! Typed errors shared by every layer.
//!
//! Each error has a [`Kind`] a caller can act on, an optional OS errno, and a
//! message. [`Error::code`] is the one number the C ABI (negated) and Python
//! (`OSError.errno`) carry; it is decided here so that no binding decides it.

use std::fmt;
use std::io;

/// sockpass-specific codes live above the errno range so they never collide
/// with a real errno. Their values are part of the stable ABI: never reuse one.
pub const CODE_SHARE_CONFLICT: i32 = 2001;
pub const CODE_UNKNOWN_TOKEN: i32 = 2002;
pub const CODE_LIMIT_REACHED: i32 = 2003;
pub const CODE_BROKER_UNAVAILABLE: i32 = 2004;
pub const CODE_PROTOCOL: i32 = 2005;
pub const CODE_TOKEN_EXPIRED: i32 = 2006;
pub const CODE_NOT_READY: i32 = 2007;
pub const CODE_CHILD_FAILED: i32 = 2008;

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The broker's policy (or the kernel) refused: EACCES/EPERM.
    NotAllowed,
    /// The address is already bound by someone outside the broker's cache.
    AddressInUse,
    /// Another holder's share mode (or a differing option) forbids sharing.
    ShareConflict,
    /// The request itself is malformed or makes no sense.
    BadRequest,
    /// The token is not a live token of this client.
    UnknownToken,
    /// The token existed but its reservation expired.
    TokenExpired,
    /// A configured bound (connections, references, fds) was hit.
    LimitReached,
    /// The broker could not be reached or went away.
    BrokerUnavailable,
    /// The peer spoke something that is not the sockpass protocol.
    Protocol,
    /// A wait ran out of time.
    Timeout,
    /// A readiness wait ended without the peer becoming ready.
    NotReady,
    /// A spawned child failed in set-up or exec.
    ChildFailed,
    /// Any other OS error, with its errno.
    Os,
}

impl Kind {
    /// The wire number of this kind (see docs/PROTOCOL.md). Never reuse one.
    pub fn wire(self) -> u16 {
        match self {
            Kind::NotAllowed => 1,
            Kind::AddressInUse => 2,
            Kind::ShareConflict => 3,
            Kind::BadRequest => 4,
            Kind::UnknownToken => 5,
            Kind::LimitReached => 6,
            Kind::BrokerUnavailable => 7,
            Kind::Protocol => 8,
            Kind::Os => 9,
            Kind::TokenExpired => 10,
            Kind::Timeout => 11,
            Kind::NotReady => 12,
            Kind::ChildFailed => 13,
        }
    }

    pub fn from_wire(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::NotAllowed,
            2 => Kind::AddressInUse,
            3 => Kind::ShareConflict,
            4 => Kind::BadRequest,
            5 => Kind::UnknownToken,
            6 => Kind::LimitReached,
            7 => Kind::BrokerUnavailable,
            8 => Kind::Protocol,
            9 => Kind::Os,
            10 => Kind::TokenExpired,
            11 => Kind::Timeout,
            12 => Kind::NotReady,
            13 => Kind::ChildFailed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::NotAllowed => "not allowed",
            Kind::AddressInUse => "address in use",
            Kind::ShareConflict => "sharing conflict",
            Kind::BadRequest => "bad request",
            Kind::UnknownToken => "unknown token",
            Kind::TokenExpired => "token expired",
            Kind::LimitReached => "limit reached",
            Kind::BrokerUnavailable => "broker unavailable",
            Kind::Protocol => "protocol error",
            Kind::Timeout => "timed out",
            Kind::NotReady => "not ready",
            Kind::ChildFailed => "child failed",
            Kind::Os => "system error",
        }
    }
}

/// An error with a kind, an optional errno and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    errno: i32,
    msg: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            errno: 0,
            msg: msg.into(),
        }
    }

    pub fn with_errno(kind: Kind, errno: i32, msg: impl Into<String>) -> Error {
        Error {
            kind,
            errno,
            msg: msg.into(),
        }
    }

    /// An OS error from `errno`, classified into a kind where one fits.
    pub fn os(errno: i32, what: impl fmt::Display) -> Error {
        let kind = match errno {
            libc::EACCES | libc::EPERM => Kind::NotAllowed,
            libc::EADDRINUSE => Kind::AddressInUse,
            libc::EMFILE | libc::ENFILE => Kind::LimitReached,
            _ => Kind::Os,
        };
        Error::with_errno(kind, errno, format!("{what}: {}", strerror(errno)))
    }

    /// The error for the current `errno` after a failed libc call.
    pub fn last_os(what: impl fmt::Display) -> Error {
        Error::os(last_errno(), what)
    }

    pub fn bad_request(msg: impl Into<String>) -> Error {
        Error::with_errno(Kind::BadRequest, libc::EINVAL, msg)
    }

    pub fn protocol(msg: impl Into<String>) -> Error {
        Error::with_errno(Kind::Protocol, libc::EPROTO, msg)
    }

    /// The same error, its message prefixed with where it happened (say,
    /// which item of a list).
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            msg: format!("{what}: {}", self.msg),
            ..self
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The OS errno behind this error, or 0 when there is none.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    /// The positive code every binding reports: the C ABI returns `-code()`,
    /// Python sets `OSError.errno = code()`. Kinds that have a natural errno
    /// use it; the rest use the sockpass codes above. A bad request keeps the
    /// specific errno it carries (`ENOTSOCK`, `ESRCH`, `EBADF`, `EMFILE`…),
    /// else `EINVAL`.
    pub fn code(&self) -> i32 {
        match self.kind {
            Kind::ShareConflict => CODE_SHARE_CONFLICT,
            Kind::UnknownToken => CODE_UNKNOWN_TOKEN,
            Kind::TokenExpired => CODE_TOKEN_EXPIRED,
            Kind::LimitReached => CODE_LIMIT_REACHED,
            Kind::BrokerUnavailable => CODE_BROKER_UNAVAILABLE,
            Kind::Protocol => CODE_PROTOCOL,
            Kind::NotReady => CODE_NOT_READY,
            Kind::ChildFailed => CODE_CHILD_FAILED,
            Kind::NotAllowed => nonzero(self.errno, libc::EACCES),
            Kind::AddressInUse => libc::EADDRINUSE,
            Kind::BadRequest => nonzero(self.errno, libc::EINVAL),
            Kind::Timeout => libc::ETIMEDOUT,
            Kind::Os => nonzero(self.errno, libc::EIO),
        }
    }
}

fn nonzero(v: i32, default: i32) -> i32 {
    if v > 0 {
        v
    } else {
        default
    }
}

/// The message for a code as returned by [`Error::code`].
pub fn code_message(code: i32) -> String {
    let code = code.abs();
    match code {
        0 => "success".to_string(),
        CODE_SHARE_CONFLICT => "sharing conflict".to_string(),
        CODE_UNKNOWN_TOKEN => "unknown token".to_string(),
        CODE_TOKEN_EXPIRED => "token expired".to_string(),
        CODE_LIMIT_REACHED => "limit reached".to_string(),
        CODE_BROKER_UNAVAILABLE => "broker unavailable".to_string(),
        CODE_PROTOCOL => "protocol error".to_string(),
        CODE_NOT_READY => "not ready".to_string(),
        CODE_CHILD_FAILED => "child failed".to_string(),
        e => strerror(e),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(n) => Error::os(n, "I/O"),
            None => Error::new(Kind::Os, e.to_string()),
        }
    }
}

pub fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub fn strerror(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    // io::Error appends " (os error N)"; keep just the text.
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_round_trip() {
        for v in 0..32 {
            if let Some(k) = Kind::from_wire(v) {
                assert_eq!(k.wire(), v);
            }
        }
        assert_eq!(Kind::from_wire(0), None);
    }

    #[test]
    fn codes_are_distinct_for_share_and_token() {
        let a = Error::new(Kind::ShareConflict, "x").code();
        let b = Error::new(Kind::UnknownToken, "x").code();
        assert_ne!(a, b);
        assert!(a > 1000 && b > 1000);
        assert_eq!(
            Error::os(libc::EADDRINUSE, "bind").kind(),
            Kind::AddressInUse
        );
        assert_eq!(code_message(-CODE_SHARE_CONFLICT), "sharing conflict");
    }

    #[test]
    fn a_bad_request_keeps_its_errno() {
        assert_eq!(Error::bad_request("x").code(), libc::EINVAL);
        assert_eq!(Error::new(Kind::BadRequest, "x").code(), libc::EINVAL);
        let e = Error::with_errno(Kind::BadRequest, libc::ENOTSOCK, "x");
        assert_eq!((e.kind(), e.code()), (Kind::BadRequest, libc::ENOTSOCK));
    }
}
