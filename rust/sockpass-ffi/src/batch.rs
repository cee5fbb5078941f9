//! Batch requests: many sockets in one round trip, all or nothing.

use crate::boundary::{c_str, call, fault, opt_c_str};
use crate::client::{client_ref, share_mode, sockpass_client, write_token, SOCKPASS_TOKEN_SIZE};
use sockpass::{Error, Kind};
use std::os::fd::IntoRawFd;
use std::os::raw::{c_char, c_int};

/// Request `n` sockets in one batch: socket `i` is the spec string
/// `specs[i]` (as for `sockpass_client_request_spec`) with share mode
/// `shares[i]` (`SOCKPASS_SHARE_*`) and application name `apps[i]` (`apps`
/// NULL, or `apps[i]` NULL or "": this program's name). Every array is
/// borrowed for the call. All or nothing: on any error no reference is kept
/// and no fd is left open, and the last error message names the refused
/// spec (`spec I of N: ...`).
///
/// On success returns `n`, writes socket `i`'s fd (`O_CLOEXEC`, owned by the
/// caller) to `fds_out[i]` and, if `tokens_out` is not NULL, its token (48 hex
/// digits and a NUL) at `tokens_out + i * SOCKPASS_TOKEN_SIZE`; `tokens_size`
/// must then be at least `n * SOCKPASS_TOKEN_SIZE`. Nothing is written on
/// failure. Up to 145 sockets travel in one message (36 to a broker that
/// takes 1024-byte packets), more in several, all in flight at once.
/// Errors: `-EFAULT` (`client`, `specs`, `shares` or
/// `fds_out` NULL with `n` > 0, a NULL spec), `-EINVAL` (a malformed spec or
/// share mode, `n` > `INT_MAX`), `-ENOBUFS` (token buffer too small), and
/// those of `sockpass_client_request_spec` for the refused spec.
#[no_mangle]
pub unsafe extern "C" fn sockpass_client_request_many(
    client: *mut sockpass_client,
    specs: *const *const c_char,
    shares: *const c_int,
    apps: *const *const c_char,
    n: usize,
    fds_out: *mut c_int,
    tokens_out: *mut c_char,
    tokens_size: usize,
) -> c_int {
    call(|| {
        let c = client_ref(client)?;
        if n > c_int::MAX as usize {
            return Err(Error::bad_request(format!(
                "{n} sockets is more than one call can count"
            )));
        }
        if n == 0 {
            return Ok(0);
        }
        if specs.is_null() {
            return Err(fault("specs"));
        }
        if shares.is_null() {
            return Err(fault("shares"));
        }
        if fds_out.is_null() {
            return Err(fault("fds_out"));
        }
        if !tokens_out.is_null() && tokens_size / SOCKPASS_TOKEN_SIZE < n {
            return Err(Error::with_errno(
                Kind::Os,
                libc::ENOBUFS,
                format!(
                    "token buffer is {tokens_size} bytes, {} are needed",
                    n * SOCKPASS_TOKEN_SIZE
                ),
            ));
        }
        let spec_ptrs = std::slice::from_raw_parts(specs, n);
        let share_vals = std::slice::from_raw_parts(shares, n);
        let app_ptrs = (!apps.is_null()).then(|| std::slice::from_raw_parts(apps, n));
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let item = (|| {
                // Parsed (and so checked) by the client as it packs.
                let spec = c_str(spec_ptrs[i], "spec", crate::SOCKPASS_MAX_STRING)?;
                let share = share_mode(share_vals[i])?;
                let app = match app_ptrs {
                    Some(a) => opt_c_str(a[i], "app", crate::SOCKPASS_MAX_STRING)?.unwrap_or(""),
                    None => "",
                };
                Ok((spec, share, app))
            })()
            .map_err(|e: Error| e.context(format_args!("spec {i} of {n}")))?;
            batch.push(item);
        }
        let grants = c.with(|c| c.request_many_text(&batch))?;
        for (i, g) in grants.into_iter().enumerate() {
            if !tokens_out.is_null() {
                write_token(tokens_out.add(i * SOCKPASS_TOKEN_SIZE), &g.token);
            }
            *fds_out.add(i) = g.fd.into_raw_fd();
        }
        Ok(n as c_int)
    })
}
