//! The broker client: an opaque `sockpass_client` handle, and the
//! process-wide default client behind a few calls (BIND10's library style).
//! Fork and recovery are the core's (`sockpass::client::shared`).

use crate::boundary::{c_bytes, c_str, call, fault, opt_c_os_str, opt_c_str};
use sockpass::{Client, Parts, SharedClient};
use sockpass::{Error, Kind, ShareMode, SocketSpec, Token};
use std::os::fd::IntoRawFd;
use std::os::raw::{c_char, c_int, c_uint};
use std::time::Duration;

/// UDP (`SOCK_DGRAM`).
pub const SOCKPASS_PROTO_UDP: c_int = 1;
/// TCP (`SOCK_STREAM`), bound and not listening unless the spec asks.
pub const SOCKPASS_PROTO_TCP: c_int = 2;
/// A raw IP socket (`SOCK_RAW`; the port argument is the IP protocol number).
pub const SOCKPASS_PROTO_RAW: c_int = 3;
/// A unix stream socket (the address is its path; port 0).
pub const SOCKPASS_PROTO_UNIX_STREAM: c_int = 4;
/// A unix datagram socket (the address is its path; port 0).
pub const SOCKPASS_PROTO_UNIX_DGRAM: c_int = 5;
/// A unix seqpacket socket (the address is its path; port 0).
pub const SOCKPASS_PROTO_UNIX_SEQPACKET: c_int = 6;

/// Nobody else may share the socket.
pub const SOCKPASS_SHARE_NONE: c_int = 0;
/// Only requests with the same application name may share it.
pub const SOCKPASS_SHARE_SAMEAPP: c_int = 1;
/// Anyone may share it.
pub const SOCKPASS_SHARE_ANY: c_int = 2;

/// Bytes a token needs as text: 48 hex digits and the NUL.
pub const SOCKPASS_TOKEN_SIZE: usize = 49;

/// Longest string any argument may be, in bytes (a longer one is
/// `-ENAMETOOLONG`). The broker bounds requests further: an application
/// name is at most `SOCKPASS_MAX_APP_NAME` bytes, a whole request message
/// 4096 bytes (address, options and name together; 1024 for brokers before
/// the 4 KiB packet limit), and a unix socket path
/// 107 bytes.
pub const SOCKPASS_MAX_STRING: usize = 4095;

/// Longest application name the broker accepts, in bytes (a longer one is
/// `-ENAMETOOLONG`).
pub const SOCKPASS_MAX_APP_NAME: usize = 255;

/// A connection to the broker. It holds the references to every socket it
/// received until they are released or the client is freed. Thread-safe:
/// calls on one client from several threads are serialised.
///
/// After a lost connection, a protocol error or a timeout the client closes
/// its connection (the broker drops its references) and every later call
/// fails with `-SOCKPASS_E_BROKER_UNAVAILABLE` (`sockpass_last_error_errno()`
/// is `ENOTCONN`) until `sockpass_client_reconnect`.
///
/// Fork: a client made before `fork()` belongs to the parent. In the child
/// every call on it fails with `-SOCKPASS_E_BROKER_UNAVAILABLE`
/// (`sockpass_last_error_errno()` is `ECHILD`), never with another process's
/// socket, and nothing the child does (calls, `sockpass_client_free`)
/// releases or disturbs the parent's references; the child's copy of the
/// connection is closed on its first call, by `sockpass_client_free`, or at
/// exec. `sockpass_client_reconnect` gives the child a connection (a lease)
/// of its own. The client's lock is never taken in the child if it was the
/// parent's, so a fork while another thread is in a call cannot hang it.
pub struct sockpass_client {
    inner: SharedClient,
}

impl sockpass_client {
    /// A new handle for C (freed by `sockpass_client_free`) around the
    /// client `make` returns. The handle's memory is taken first, so that
    /// what `make` allocates for the connection's state follows it on the
    /// heap, most often on the same page: every call reads the handle, then
    /// that state, and a page fewer is one TLB miss fewer per call when many
    /// client processes take turns on a CPU.
    fn boxed(
        make: impl FnOnce() -> sockpass::Result<SharedClient>,
    ) -> sockpass::Result<*mut sockpass_client> {
        let mut b = Box::<sockpass_client>::new_uninit();
        b.write(sockpass_client { inner: make()? });
        // SAFETY: written just above.
        Ok(Box::into_raw(unsafe { b.assume_init() }))
    }

    pub(crate) fn with<R>(
        &self,
        f: impl FnMut(&mut Client) -> sockpass::Result<R>,
    ) -> sockpass::Result<R> {
        self.inner.with(f)
    }
}

/// A timeout in milliseconds from C: negative is none (wait forever).
fn timeout_ms(ms: c_int) -> sockpass::Result<Option<Duration>> {
    match ms {
        0 => Err(Error::bad_request(
            "timeout 0 ms would fail every call (pass a negative value for none)",
        )),
        ms if ms < 0 => Ok(None),
        ms => Ok(Some(Duration::from_millis(ms as u64))),
    }
}

pub(crate) unsafe fn client_ref<'a>(
    c: *mut sockpass_client,
) -> sockpass::Result<&'a sockpass_client> {
    c.as_ref().ok_or_else(|| fault("client"))
}

pub(crate) fn share_mode(share: c_int) -> sockpass::Result<ShareMode> {
    ShareMode::from_int(share.into())
}

unsafe fn spec_of(
    proto: c_int,
    address: *const c_char,
    port: c_int,
) -> sockpass::Result<SocketSpec> {
    let address = c_str(address, "address", crate::SOCKPASS_MAX_STRING)?;
    SocketSpec::from_proto_number(proto.into(), address, port.into())
}

fn token_of(p: *const c_char) -> sockpass::Result<Token> {
    // SAFETY: checked for NULL and bounded by c_str.
    let s = unsafe { c_bytes(p, "token", crate::SOCKPASS_MAX_STRING)? };
    Token::from_hex(s)
}

/// Check the caller's token buffer before anything changes, so a too-small
/// one fails without side effects.
fn check_token_buf(buf: *mut c_char, size: usize) -> sockpass::Result<()> {
    if !buf.is_null() && size < SOCKPASS_TOKEN_SIZE {
        return Err(Error::with_errno(
            Kind::Os,
            libc::ENOBUFS,
            format!("token buffer is {size} bytes, {SOCKPASS_TOKEN_SIZE} are needed"),
        ));
    }
    Ok(())
}

#[link_section = ".text.hot.sockpass"]
pub(crate) unsafe fn write_token(buf: *mut c_char, t: &Token) {
    if buf.is_null() {
        return;
    }
    let hex = t.to_hex();
    std::ptr::copy_nonoverlapping(hex.as_ptr(), buf.cast::<u8>(), hex.len());
    *buf.add(hex.len()) = 0;
}

/// Connect to the broker at `path`, or, if `path` is NULL, at the default
/// path: `$SOCKPASS_SOCKET` if set; else `/run/sockpass/sockpassd.sock` for
/// root; else `$XDG_RUNTIME_DIR/sockpass/sockpassd.sock` and, if nobody
/// listens there, the system path `/run/sockpass/sockpassd.sock`.
///
/// On success writes a new client to `*client_out` (free it with
/// `sockpass_client_free`) and returns 0. `path` is borrowed for the call;
/// it is bytes, as every path is (UTF-8 or not).
/// Errors: `-EFAULT` (`client_out` NULL), `-ENAMETOOLONG` (`path` longer than
/// a unix socket address holds, 107 bytes), `-SOCKPASS_E_BROKER_UNAVAILABLE`
/// (nobody listens at the path; `sockpass_last_error_errno()` tells why:
/// `ENOENT`, `ECONNREFUSED`, `EACCES`, ...).
///
/// It connects and sends nothing, as `s6_fdholder_start` does: a broker at
/// its connection limit (`-SOCKPASS_E_LIMIT_REACHED`) or one that speaks
/// another protocol version (`-SOCKPASS_E_PROTOCOL`) is reported by the
/// first call on the client. `sockpass_client_hello` checks at once.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_new(
    path: *const c_char,
    client_out: *mut *mut sockpass_client,
) -> c_int {
    call(|| {
        if client_out.is_null() {
            return Err(fault("client_out"));
        }
        let path = opt_c_os_str(path, "path", crate::SOCKPASS_MAX_STRING)?;
        *client_out = sockpass_client::boxed(|| {
            SharedClient::connect(path.map(std::path::Path::new), None, false)
        })?;
        Ok(0)
    })
}

/// Make a client from a connection to the broker that someone else made
/// and handed in as `fd` (a connected unix `SOCK_SEQPACKET` socket): how a
/// process in a container that cannot see the broker's socket path reaches
/// it. `fd` is taken over on success and on failure (closed then), and made
/// `O_CLOEXEC`. The broker knows the client by the credentials of whoever
/// connected. On success writes a new client to `*client_out` (free it with
/// `sockpass_client_free`) and returns 0. Errors: `-EFAULT` (`client_out`
/// NULL; `fd` is then left alone), `-EBADF` (`fd` not open), `-ENOTSOCK`,
/// `-EPROTOTYPE` (not a unix seqpacket socket),
/// `-SOCKPASS_E_BROKER_UNAVAILABLE` (not connected to a broker).
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_from_fd(
    fd: c_int,
    client_out: *mut *mut sockpass_client,
) -> c_int {
    call(|| {
        if client_out.is_null() {
            return Err(fault("client_out"));
        }
        let fd = sockpass::inherited_fd(fd)?;
        *client_out =
            sockpass_client::boxed(|| Ok(SharedClient::from_client(Client::from_fd(fd)?)))?;
        Ok(0)
    })
}

/// The version handshake, now: one round trip that checks the broker speaks
/// this library's protocol and will serve the connection. Returns the
/// broker's pid (> 0). Optional: every call checks the version on its own.
/// Errors: `-EFAULT` (`client` NULL), `-SOCKPASS_E_PROTOCOL` (another
/// protocol version), `-SOCKPASS_E_LIMIT_REACHED` (the broker is at its
/// connection limit and closed the connection),
/// `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_hello(client: *mut sockpass_client) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let pid = c.with(|c| c.hello())?;
        Ok(pid as c_int)
    })
}

/// Close the connection and connect anew to the same path, with the same
/// timeout: a new lease, holding nothing. Use it after an error closed the connection
/// (the broker has dropped the old references), or in a child after
/// `fork()` (the parent's references are untouched). Returns 0. Errors:
/// `-EFAULT` (`client` NULL), `-EINVAL` (a client made by
/// `sockpass_client_from_fd` has no path), `-ENAMETOOLONG`,
/// `-SOCKPASS_E_BROKER_UNAVAILABLE`, `-ETIMEDOUT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_reconnect(client: *mut sockpass_client) -> c_int {
    call(|| {
        client_ref(client)?.inner.reconnect()?;
        Ok(0)
    })
}

/// Time out every wait of this client for the broker (a reply, a send, a
/// reconnect) after `timeout_ms` milliseconds; a negative value waits
/// forever (the default). A call that times out fails with `-ETIMEDOUT`
/// and closes the connection (the reply may still come): reconnect after.
/// Returns 0. Errors: `-EFAULT` (`client` NULL), `-EINVAL` (0).
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_set_timeout(
    client: *mut sockpass_client,
    timeout_ms: c_int,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        c.inner.set_timeout(self::timeout_ms(timeout_ms)?);
        Ok(0)
    })
}

/// Poll for each reply up to `us` microseconds before blocking on it (0,
/// the default unless the environment variable `SOCKPASS_SPIN_US` says
/// otherwise: block at once; at most 1000). When the broker runs on another
/// CPU, a reply caught by the poll saves the cross-CPU wake-up of the
/// waiting client (tens of µs on VMs); the poll yields the CPU between
/// tries, and the client polls only while its recent round trips were
/// quick (under load it blocks at once). Returns 0. Errors: `-EFAULT`
/// (`client` NULL).
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_set_reply_spin(
    client: *mut sockpass_client,
    us: std::os::raw::c_uint,
) -> c_int {
    call(|| {
        client_ref(client)?.inner.set_reply_spin(u64::from(us));
        Ok(0)
    })
}

/// `sockpass_client_set_timeout` for the process-wide default client (the
/// `sockpass_*_default` calls). After a timeout its next call connects anew.
/// Returns 0. Errors: `-EINVAL` (0).
#[no_mangle]
pub extern "C" fn sockpass_set_default_timeout(timeout_ms: c_int) -> c_int {
    call(|| {
        sockpass::default_client().set_timeout(self::timeout_ms(timeout_ms)?);
        Ok(0)
    })
}

/// Close the connection and free the client. The broker drops every
/// reference the client still holds; the fds the caller received stay open
/// and remain the caller's. In a child after `fork()`, for a client made in
/// the parent, only the child's copy of the connection is closed: the
/// parent keeps its references. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_free(client: *mut sockpass_client) {
    if client.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(client));
    }));
}

/// Request a socket: `proto` (`SOCKPASS_PROTO_*`: for UDP and TCP an IPv4 or
/// IPv6 literal `address` and a `port`, 0..65535, 0 being a fresh ephemeral
/// port, never shared; for the unix kinds a path and port 0; for RAW the IP
/// protocol number as `port`; any other value is `-EINVAL`), a `share` mode
/// (`SOCKPASS_SHARE_*`) and an application name `app` (NULL or "": the
/// broker names the caller by its executable's file name, the basename of
/// `/proc/PID/exe`; at most `SOCKPASS_MAX_APP_NAME` bytes). `client`, `address` and `app` are borrowed
/// for the call; the client keeps the reference until it is released or
/// the client is freed.
///
/// Returns the socket fd (`O_CLOEXEC`; the caller owns it and closes it) and,
/// if `token_out` is not NULL, writes the token (48 hex digits and a NUL)
/// into it; `token_size` must then be at least `SOCKPASS_TOKEN_SIZE`.
/// Errors: `-EFAULT`, `-EINVAL` (bad protocol, share mode, address or port),
/// `-ENOBUFS` (token buffer too small), `-ENAMETOOLONG`,
/// `-SOCKPASS_E_SHARE_CONFLICT`, `-EACCES` (policy), `-EADDRINUSE`,
/// `-SOCKPASS_E_LIMIT_REACHED`, `-EMFILE` (this process is at
/// `RLIMIT_NOFILE`: the socket could not be received, and its reference was
/// given back), `-ETIMEDOUT`, `-SOCKPASS_E_PROTOCOL`,
/// `-SOCKPASS_E_BROKER_UNAVAILABLE` (the last three close the connection:
/// see `sockpass_client`).
#[no_mangle]
#[link_section = ".text.hot.sockpass"]
pub unsafe extern "C" fn sockpass_client_request_socket(
    client: *mut sockpass_client,
    proto: c_int,
    address: *const c_char,
    port: c_int,
    share: c_int,
    app: *const c_char,
    token_out: *mut c_char,
    token_size: usize,
) -> c_int {
    call(|| {
        client_ref(client)?.with(|c| {
            // In the documented order: the socket's parts, then the rest.
            let address = c_str(address, "address", crate::SOCKPASS_MAX_STRING)?;
            c.check_parts(proto.into(), address, port.into())?;
            let share = share_mode(share)?;
            let app = opt_c_str(app, "app", SOCKPASS_MAX_APP_NAME)?.unwrap_or("");
            check_token_buf(token_out, token_size)?;
            let g = c.request_parts(Parts {
                proto: proto.into(),
                address,
                port: port.into(),
                share,
                app,
                flags: 0,
            })?;
            write_token(token_out, &g.token);
            Ok(g.fd.into_raw_fd())
        })
    })
}

/// Like `sockpass_client_request_socket`, with the socket given as a spec
/// string, which can also carry pre-bind options and other kinds of socket:
/// `udp:127.0.0.1:53`, `tcp:[::1]:8080?reuseport=1&backlog=128`,
/// `unix:/run/app.sock?mode=0660`. See docs/PROTOCOL.md for the options.
/// `client`, `spec` and `app` are borrowed for the call; the returned fd and
/// the token are as for `sockpass_client_request_socket`. Errors: as there,
/// with `-EINVAL` for a malformed spec (the last error names the part).
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_request_spec(
    client: *mut sockpass_client,
    spec: *const c_char,
    share: c_int,
    app: *const c_char,
    token_out: *mut c_char,
    token_size: usize,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let spec: SocketSpec = c_str(spec, "spec", crate::SOCKPASS_MAX_STRING)?.parse()?;
        request(c, &spec, share, app, token_out, token_size)
    })
}

/// Request flag: a socket of this requester's own in the port's
/// `SO_REUSEPORT` group (the spec must ask for `reuseport=1` and a port),
/// instead of the one shared socket.
pub const SOCKPASS_REQUEST_PER_WORKER: c_uint = 0x02;

/// `sockpass_client_request_spec` with request `flags`
/// (`SOCKPASS_REQUEST_PER_WORKER`, or 0). Pointers are borrowed for the call;
/// the returned fd and the token are as for `sockpass_client_request_socket`.
/// Errors: as `sockpass_client_request_spec`, and `-EINVAL` for an unknown
/// flag or a per-worker request without `reuseport=1` or with port 0.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_request_spec_flags(
    client: *mut sockpass_client,
    spec: *const c_char,
    share: c_int,
    app: *const c_char,
    flags: c_uint,
    token_out: *mut c_char,
    token_size: usize,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let spec: SocketSpec = c_str(spec, "spec", crate::SOCKPASS_MAX_STRING)?.parse()?;
        if flags & !SOCKPASS_REQUEST_PER_WORKER != 0 {
            return Err(Error::bad_request(format!(
                "unknown request flags {flags:#x}"
            )));
        }
        request_flags(c, &spec, share, app, flags as u8, token_out, token_size)
    })
}

/// Ask the broker to re-execute itself in place: `exe` (an absolute path,
/// borrowed), or its own binary if NULL. Every socket, reference and
/// connection (this one too) carries over. Returns the broker's pid (the
/// same) once it serves again. Only root or the broker's own uid may.
/// Errors: `-EFAULT`, `-EINVAL` (relative path), `-EPERM` (not root or the
/// broker's uid), `-SOCKPASS_E_LIMIT_REACHED` (an upgrade is under way),
/// `-ENOEXEC` (not a compatible sockpassd: the broker keeps serving),
/// `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_upgrade(
    client: *mut sockpass_client,
    exe: *const c_char,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let exe = opt_c_os_str(exe, "exe", crate::SOCKPASS_MAX_STRING)?;
        let pid = c.with(|c| c.upgrade(exe.map(std::path::Path::new)))?;
        Ok(pid as c_int)
    })
}

unsafe fn request(
    c: &sockpass_client,
    spec: &SocketSpec,
    share: c_int,
    app: *const c_char,
    token_out: *mut c_char,
    token_size: usize,
) -> sockpass::Result<c_int> {
    request_flags(c, spec, share, app, 0, token_out, token_size)
}

unsafe fn request_flags(
    c: &sockpass_client,
    spec: &SocketSpec,
    share: c_int,
    app: *const c_char,
    flags: u8,
    token_out: *mut c_char,
    token_size: usize,
) -> sockpass::Result<c_int> {
    let share = share_mode(share)?;
    let app = opt_c_str(app, "app", SOCKPASS_MAX_APP_NAME)?.unwrap_or("");
    check_token_buf(token_out, token_size)?;
    let g = c.with(|c| c.request_with_flags(spec, share, app, flags))?;
    write_token(token_out, &g.token);
    Ok(g.fd.into_raw_fd())
}

/// Release one reference by its token (borrowed). Returns the references
/// left on that socket (0: the broker closed its copy). The caller still
/// closes its own fd. Errors: `-EFAULT`, `-EINVAL` (malformed token),
/// `-SOCKPASS_E_UNKNOWN_TOKEN` (unknown, already released, or another
/// client's), `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_release(
    client: *mut sockpass_client,
    token: *const c_char,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let t = token_of(token)?;
        Ok(c.with(|c| c.release(&t))? as c_int)
    })
}

/// Release the reference that came with socket `fd` from this client. The
/// fd is not closed (the caller owns it). Returns the references left.
/// Errors: `-EFAULT` (`client` NULL), `-EINVAL` (negative fd),
/// `-SOCKPASS_E_UNKNOWN_TOKEN` (the fd did not come from this client or was
/// already released), `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_release_fd(
    client: *mut sockpass_client,
    fd: c_int,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        Ok(c.with(|c| c.release_fd(fd))? as c_int)
    })
}

/// Release many references by token (each borrowed): up to 170 tokens a
/// message (42 to a broker that takes 1024-byte packets), several messages
/// in flight, so `n_tokens` releases cost a round trip or a few, not
/// `n_tokens`. Every
/// token is checked before anything is sent: a NULL or malformed one fails
/// the whole call. `results` is NULL or room for `n_tokens` ints, written on
/// success only: for each token, the references left on its socket or a
/// negative error code (`-SOCKPASS_E_UNKNOWN_TOKEN`: unknown, already
/// released, or another client's). Returns how many were released. Errors:
/// `-EFAULT` (`client` NULL, `tokens` NULL with `n_tokens` > 0, a NULL
/// token), `-EINVAL` (a malformed token, or `n_tokens` > `INT_MAX`),
/// `-SOCKPASS_E_BROKER_UNAVAILABLE` (those sent before the loss may have
/// been released; the broker drops the rest with the connection).
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_release_many(
    client: *mut sockpass_client,
    tokens: *const *const c_char,
    n_tokens: usize,
    results: *mut c_int,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        if tokens.is_null() && n_tokens > 0 {
            return Err(fault("tokens"));
        }
        if n_tokens > c_int::MAX as usize {
            return Err(Error::bad_request(format!(
                "{n_tokens} tokens is more than one call can count"
            )));
        }
        let ptrs: &[*const c_char] = if n_tokens == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(tokens, n_tokens)
        };
        // As for one token: the bytes, checked by the core's parse.
        let strs = ptrs
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                c_bytes(p, "token", crate::SOCKPASS_MAX_STRING)
                    .map_err(|e| e.context(format_args!("tokens[{i}]")))
            })
            .collect::<sockpass::Result<Vec<&[u8]>>>()?;
        let parsed = Token::parse_all(strs)?;
        let res = c.with(|c| c.release_many(&parsed))?;
        let mut released = 0;
        for (i, r) in res.iter().enumerate() {
            let v = match r {
                Ok(left) => {
                    released += 1;
                    c_int::try_from(*left).unwrap_or(c_int::MAX)
                }
                Err(e) => -e.code(),
            };
            if !results.is_null() {
                *results.add(i) = v;
            }
        }
        Ok(released)
    })
}

/// Release every reference this client holds (`client` borrowed; the fds
/// the caller received stay open and the caller's). Returns how many.
/// Errors: `-EFAULT`, `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_release_all(client: *mut sockpass_client) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        Ok(c.with(|c| c.release_all())? as c_int)
    })
}

/// Reserve a socket (given as a spec string) for another process to pick up
/// by token within the broker's reservation expiry. Writes the token into
/// `token_out` (required, at least `SOCKPASS_TOKEN_SIZE` bytes) and returns
/// the bound port. No fd is handed out. `client`, `spec` and `app` are
/// borrowed for the call. Errors: `-EFAULT` (any pointer but `app` NULL),
/// `-ENOBUFS`, `-EINVAL` (malformed spec or share mode),
/// `-SOCKPASS_E_SHARE_CONFLICT`, `-EACCES`, `-EADDRINUSE`,
/// `-SOCKPASS_E_LIMIT_REACHED` (too many reservations pending),
/// `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_reserve_spec(
    client: *mut sockpass_client,
    spec: *const c_char,
    share: c_int,
    app: *const c_char,
    token_out: *mut c_char,
    token_size: usize,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let spec: SocketSpec = c_str(spec, "spec", crate::SOCKPASS_MAX_STRING)?.parse()?;
        let share = share_mode(share)?;
        let app = opt_c_str(app, "app", SOCKPASS_MAX_APP_NAME)?.unwrap_or("");
        if token_out.is_null() {
            return Err(fault("token_out"));
        }
        check_token_buf(token_out, token_size)?;
        let r = c.with(|c| c.reserve_socket(&spec, share, app))?;
        write_token(token_out, &r.token);
        Ok(c_int::from(r.port))
    })
}

/// Pick up a reserved socket by its token (borrowed; it becomes this
/// client's reference, released by the same token). Returns the fd (owned by
/// the caller, `O_CLOEXEC`). Errors: `-EFAULT` (`client` or `token` NULL),
/// `-EINVAL` (malformed token), `-SOCKPASS_E_UNKNOWN_TOKEN`,
/// `-SOCKPASS_E_TOKEN_EXPIRED`, `-EACCES`, `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_pickup(
    client: *mut sockpass_client,
    token: *const c_char,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        let t = token_of(token)?;
        Ok(c.with(|c| c.pickup(&t))?.fd.into_raw_fd())
    })
}

/// `sockpass_client_request_socket` on the process-wide default client,
/// connected to the default path on first use. Thread-safe.
///
/// The default client recovers by itself: after a lost connection, a
/// protocol error or a timeout (`sockpass_set_default_timeout`) it drops the
/// connection (and with it its references) and the next call connects anew;
/// a call whose send failed before the broker got anything (the broker
/// restarted) is retried once on a new connection. In a child after
/// `fork()` the first call makes a connection (a lease) of the child's own:
/// the child's sockets are its own, released when it exits, and the
/// parent's references are untouched (the child's copy of the parent's
/// connection is closed at the fork). A fork while another thread is in a
/// call does not hang the child. `address` and `app` are borrowed
/// for the call; the fd is the caller's (`O_CLOEXEC`); the token is written
/// into `token_out` if it is not NULL. Errors: as
/// `sockpass_client_request_socket`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_request_socket_default(
    proto: c_int,
    address: *const c_char,
    port: c_int,
    share: c_int,
    app: *const c_char,
    token_out: *mut c_char,
    token_size: usize,
) -> c_int {
    call(|| {
        let spec = spec_of(proto, address, port)?;
        let share = share_mode(share)?;
        let app = opt_c_str(app, "app", SOCKPASS_MAX_APP_NAME)?.unwrap_or("");
        check_token_buf(token_out, token_size)?;
        let g = sockpass::with_default(|c| c.request_socket(&spec, share, app))?;
        write_token(token_out, &g.token);
        Ok(g.fd.into_raw_fd())
    })
}

/// Release, on the default client, the reference named by `token`
/// (borrowed). Returns the references left on that socket; the caller still
/// closes its fd. Errors: `-EFAULT`, `-EINVAL` (malformed token),
/// `-SOCKPASS_E_UNKNOWN_TOKEN`, `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_release_socket_default(token: *const c_char) -> c_int {
    call(|| {
        let t = token_of(token)?;
        Ok(sockpass::with_default(|c| c.release(&t))? as c_int)
    })
}

/// Release, on the default client, the reference that came with `fd`. The
/// fd is not closed (the caller owns it). Returns the references left.
/// Errors: `-EINVAL` (negative fd), `-SOCKPASS_E_UNKNOWN_TOKEN`,
/// `-SOCKPASS_E_BROKER_UNAVAILABLE`.
#[no_mangle]
pub extern "C" fn sockpass_release_fd_default(fd: c_int) -> c_int {
    call(|| Ok(sockpass::with_default(|c| c.release_fd(fd))? as c_int))
}
