//! Handing the broker's state to a new program image (upgrade by re-exec).
//!
//! The broker's state is flattened into a [`State`]: plain data plus the fds
//! it owns. [`exec`] writes it into a sealed memfd, has the new binary
//! restore it in a child first (the probe, `--handoff-check`), then clears
//! `FD_CLOEXEC` on exactly the fds being handed over and executes the new
//! binary by fd with [`STATE_ENV`] naming the memfd. The pid stays, so supervisors see no
//! change, and client connections survive because their fds do. The new
//! image calls [`take_from_env`], which marks every handed-over fd CLOEXEC
//! again before anything else can start a process.

use crate::exe::Exe;
use sockpass::sys::Creds;
use sockpass::Token;
use sockpass::{Error, Result};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// The environment variable naming the state memfd in the new image.
pub const STATE_ENV: &str = "SOCKPASS_STATE_FD";

/// The handoff format this build writes and reads. `sockpassd
/// --handoff-version` prints it; [`Exe::preflight`] asks a new binary for
/// it before the exec.
pub const FORMAT: &str = "SPHANDv2";
const MAGIC: &[u8] = FORMAT.as_bytes();
/// How long [`Exe::preflight`] and the probe each wait for the new binary
/// (the event loop waits with them: requests queue, none fails).
pub const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The state memfd is read whole; this bounds a corrupt or hostile one.
const MAX_STATE: usize = 1 << 30;

/// Everything the broker needs to carry on in a new image.
#[derive(Debug)]
pub struct State {
    pub listener: OwnedFd,
    /// The listener belongs to a socket activator (its file is not ours).
    pub activated: bool,
    pub next_conn_id: u64,
    pub next_entry_id: u64,
    pub next_token_seq: u64,
    /// The key that hides the sequence in tokens (kept, so tokens made
    /// after the upgrade never repeat earlier ones).
    pub token_key: [u64; 2],
    pub conns: Vec<ConnState>,
    pub entries: Vec<EntryState>,
    pub expired: Vec<Token>,
    /// The UPGRADE request to answer: connection slot and request id.
    pub upgrade_from: Option<(u64, u32)>,
}

#[derive(Debug)]
pub struct ConnState {
    pub slot: u64,
    pub fd: OwnedFd,
    pub id: u64,
    pub creds: Creds,
    pub default_app: Option<String>,
    pub last_app: String,
    pub tokens: Vec<Token>,
    pub outq: Vec<(Vec<u8>, AttachState)>,
    pub pipelining: bool,
}

/// The fd a queued reply carries.
#[derive(Debug)]
pub enum AttachState {
    None,
    /// A cached socket: entry slot and entry id.
    Entry(u64, u64),
    Owned(OwnedFd),
    /// Several cached sockets (a REQUEST_MANY reply). Tag 3, added within
    /// format v1: a build that predates it only fails on such a reply.
    Entries(Vec<(u64, u64)>),
}

#[derive(Debug)]
pub struct EntryState {
    pub slot: u64,
    pub id: u64,
    /// The canonical spec string (round-trips through `SocketSpec`).
    pub spec: String,
    pub fd: OwnedFd,
    pub port: u16,
    pub keyed: bool,
    pub per_worker: bool,
    pub unix_ino: Option<u64>,
    /// Its name in the systemd fd store (empty: not stored).
    pub store_name: Option<String>,
    /// Adopted from the fd store and not yet claimed.
    pub adopted: bool,
    pub holders: Vec<HolderState>,
}

#[derive(Debug)]
pub struct HolderState {
    pub token: Token,
    /// The holding connection's slot, or None for a reservation.
    pub conn_slot: Option<u64>,
    /// A reservation's time left, in milliseconds.
    pub reserved_ms: u64,
    pub share: u8,
    pub app: String,
    pub creds: Creds,
    pub conn_id: u64,
}

struct Writer {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn fd(&mut self, fd: OwnedFd) {
        self.u32(self.fds.len() as u32);
        self.fds.push(fd);
    }
    fn creds(&mut self, c: &Creds) {
        self.u32(c.pid as u32);
        self.u32(c.uid);
        self.u32(c.gid);
    }
    fn token(&mut self, t: &Token) {
        self.buf.extend_from_slice(t.as_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    fds: Vec<Option<OwnedFd>>,
}

fn corrupt(what: &str) -> Error {
    Error::protocol(format!("handed-over state is corrupt: {what}"))
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.buf.len() < n {
            return Err(corrupt("truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u64()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| corrupt("string is not UTF-8"))
    }
    fn fd(&mut self) -> Result<OwnedFd> {
        let i = self.u32()? as usize;
        self.fds
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| corrupt("fd index"))
    }
    fn creds(&mut self) -> Result<Creds> {
        Ok(Creds {
            pid: self.u32()? as i32,
            uid: self.u32()?,
            gid: self.u32()?,
        })
    }
    fn token(&mut self) -> Result<Token> {
        Ok(Token::from_bytes(
            self.take(Token::LEN)?.try_into().unwrap(),
        ))
    }
    fn count(&mut self) -> Result<usize> {
        let n = self.u64()? as usize;
        // Every element takes at least one byte: no huge preallocation.
        if n > self.buf.len() {
            return Err(corrupt("count"));
        }
        Ok(n)
    }
}

impl State {
    /// Flatten into bytes and the fds they refer to by index.
    pub fn encode(self) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut w = Writer {
            buf: Vec::new(),
            fds: Vec::new(),
        };
        w.fd(self.listener);
        w.u8(self.activated as u8);
        w.u64(self.next_conn_id);
        w.u64(self.next_entry_id);
        w.u64(self.next_token_seq);
        w.u64(self.token_key[0]);
        w.u64(self.token_key[1]);
        match self.upgrade_from {
            Some((s, id)) => {
                w.u8(1);
                w.u64(s);
                w.u32(id);
            }
            None => w.u8(0),
        }
        w.u64(self.expired.len() as u64);
        for t in &self.expired {
            w.token(t);
        }
        // Entries first: queued replies refer to them.
        w.u64(self.entries.len() as u64);
        for e in self.entries {
            w.u64(e.slot);
            w.u64(e.id);
            w.bytes(e.spec.as_bytes());
            w.fd(e.fd);
            w.u32(e.port as u32);
            w.u8(e.keyed as u8);
            w.u8(e.per_worker as u8);
            w.u8(e.unix_ino.is_some() as u8);
            w.u64(e.unix_ino.unwrap_or(0));
            w.bytes(e.store_name.unwrap_or_default().as_bytes());
            w.u8(e.adopted as u8);
            w.u64(e.holders.len() as u64);
            for h in &e.holders {
                w.token(&h.token);
                w.u8(h.conn_slot.is_some() as u8);
                w.u64(h.conn_slot.unwrap_or(0));
                w.u64(h.reserved_ms);
                w.u8(h.share);
                w.bytes(h.app.as_bytes());
                w.creds(&h.creds);
                w.u64(h.conn_id);
            }
        }
        w.u64(self.conns.len() as u64);
        for c in self.conns {
            w.u64(c.slot);
            w.fd(c.fd);
            w.u64(c.id);
            w.creds(&c.creds);
            w.u8(c.default_app.is_some() as u8);
            w.bytes(c.default_app.unwrap_or_default().as_bytes());
            w.bytes(c.last_app.as_bytes());
            w.u8(c.pipelining as u8);
            w.u64(c.tokens.len() as u64);
            for t in &c.tokens {
                w.token(t);
            }
            w.u64(c.outq.len() as u64);
            for (bytes, a) in c.outq {
                w.bytes(&bytes);
                match a {
                    AttachState::None => w.u8(0),
                    AttachState::Entry(s, id) => {
                        w.u8(1);
                        w.u64(s);
                        w.u64(id);
                    }
                    AttachState::Owned(fd) => {
                        w.u8(2);
                        w.fd(fd);
                    }
                    AttachState::Entries(v) => {
                        w.u8(3);
                        w.u64(v.len() as u64);
                        for (s, id) in v {
                            w.u64(s);
                            w.u64(id);
                        }
                    }
                }
            }
        }
        (w.buf, w.fds)
    }

    /// Rebuild from [`State::encode`]'s output. Every fd is consumed: those
    /// the bytes do not name are closed.
    pub fn decode(buf: &[u8], fds: Vec<OwnedFd>) -> Result<State> {
        let mut r = Reader {
            buf,
            fds: fds.into_iter().map(Some).collect(),
        };
        let listener = r.fd()?;
        let activated = r.bool()?;
        let next_conn_id = r.u64()?;
        let next_entry_id = r.u64()?;
        let next_token_seq = r.u64()?;
        let token_key = [r.u64()?, r.u64()?];
        let upgrade_from = if r.bool()? {
            Some((r.u64()?, r.u32()?))
        } else {
            None
        };
        let n = r.count()?;
        let expired = (0..n).map(|_| r.token()).collect::<Result<_>>()?;
        let n = r.count()?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = r.u64()?;
            let id = r.u64()?;
            let spec = r.string()?;
            let fd = r.fd()?;
            let port = r.u32()? as u16;
            let keyed = r.bool()?;
            let per_worker = r.bool()?;
            let has_ino = r.bool()?;
            let ino = r.u64()?;
            let store_name = Some(r.string()?).filter(|n| !n.is_empty());
            let adopted = r.bool()?;
            let nh = r.count()?;
            let mut holders = Vec::with_capacity(nh);
            for _ in 0..nh {
                let token = r.token()?;
                let has_conn = r.bool()?;
                let cs = r.u64()?;
                holders.push(HolderState {
                    token,
                    conn_slot: has_conn.then_some(cs),
                    reserved_ms: r.u64()?,
                    share: r.u8()?,
                    app: r.string()?,
                    creds: r.creds()?,
                    conn_id: r.u64()?,
                });
            }
            entries.push(EntryState {
                slot,
                id,
                spec,
                fd,
                port,
                keyed,
                per_worker,
                unix_ino: has_ino.then_some(ino),
                store_name,
                adopted,
                holders,
            });
        }
        let n = r.count()?;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = r.u64()?;
            let fd = r.fd()?;
            let id = r.u64()?;
            let creds = r.creds()?;
            let has_default = r.bool()?;
            let default_app = r.string()?;
            let last_app = r.string()?;
            let pipelining = r.bool()?;
            let nt = r.count()?;
            let tokens = (0..nt).map(|_| r.token()).collect::<Result<_>>()?;
            let nq = r.count()?;
            let mut outq = Vec::with_capacity(nq);
            for _ in 0..nq {
                let bytes = r.bytes()?;
                let a = match r.u8()? {
                    0 => AttachState::None,
                    1 => AttachState::Entry(r.u64()?, r.u64()?),
                    2 => AttachState::Owned(r.fd()?),
                    3 => {
                        let n = r.count()?;
                        let v = (0..n)
                            .map(|_| Ok((r.u64()?, r.u64()?)))
                            .collect::<Result<_>>()?;
                        AttachState::Entries(v)
                    }
                    _ => return Err(corrupt("attachment kind")),
                };
                outq.push((bytes, a));
            }
            conns.push(ConnState {
                slot,
                fd,
                id,
                creds,
                default_app: has_default.then_some(default_app),
                last_app,
                tokens,
                outq,
                pipelining,
            });
        }
        if !r.buf.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(State {
            listener,
            activated,
            next_conn_id,
            next_entry_id,
            next_token_seq,
            token_key,
            conns,
            entries,
            expired,
            upgrade_from,
        })
    }
}

pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        if fl < 0 {
            return Err(Error::last_os("fcntl F_GETFD"));
        }
        let want = if on {
            fl | libc::FD_CLOEXEC
        } else {
            fl & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, want) < 0 {
            return Err(Error::last_os("fcntl F_SETFD"));
        }
    }
    Ok(())
}

/// Replace this process's image with `target argv[1..]`, handing `state`
/// over, once `target --handoff-check` has restored that very state in a
/// child (see [`crate::exe`]). `running`, if known, is what the new image
/// executes again should it fail before it serves (see [`crate::fallback`]).
/// Returns only on failure, with the state back (every fd CLOEXEC again) so
/// the caller can carry on serving.
pub fn exec(
    state: State,
    target: &Exe,
    running: Option<&Exe>,
    args: &[OsString],
) -> (State, Error) {
    let (bytes, fds) = state.encode();
    let e = prepare_and_exec(&bytes, &fds, target, running, args).unwrap_or_else(|e| e);
    for fd in &fds {
        let _ = set_cloexec(fd.as_raw_fd(), true);
    }
    if let Some(r) = running {
        let _ = set_cloexec(r.raw(), true);
    }
    let st = State::decode(&bytes, fds).expect("state just encoded decodes");
    (st, e)
}

fn prepare_and_exec(
    bytes: &[u8],
    fds: &[OwnedFd],
    target: &Exe,
    running: Option<&Exe>,
    args: &[OsString],
) -> Result<Error> {
    let mut blob = Vec::with_capacity(bytes.len() + 16 + fds.len() * 4);
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    for fd in fds {
        blob.extend_from_slice(&fd.as_raw_fd().to_le_bytes());
    }
    blob.extend_from_slice(bytes);
    let memfd = sockpass::memfd::from_bytes("sockpassd-state", &blob)?;
    let raws: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    target.probe(args, memfd.as_raw_fd(), &raws, PREFLIGHT_TIMEOUT)?;
    let plan = running
        .map(|r| crate::fallback::write_plan(r, args))
        .transpose()?;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| Error::bad_request("argument contains NUL"));
    let mut argv = vec![cstr(target.path().as_os_str().as_bytes())?];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let ours = [
        STATE_ENV,
        crate::fallback::PLAN_ENV,
        crate::fallback::EXE_ENV,
        crate::fallback::FAILED_ENV,
    ];
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if ours.iter().any(|n| k == *n) {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstr(&kv)?);
    }
    let mut inherit = vec![memfd.as_raw_fd()];
    envp.push(cstr(
        format!("{STATE_ENV}={}", memfd.as_raw_fd()).as_bytes(),
    )?);
    envp.push(cstr(
        format!("{}={}", crate::fallback::EXE_ENV, target.raw()).as_bytes(),
    )?);
    if let (Some(plan), Some(r)) = (&plan, running) {
        envp.push(cstr(
            format!("{}={}", crate::fallback::PLAN_ENV, plan.as_raw_fd()).as_bytes(),
        )?);
        inherit.push(plan.as_raw_fd());
        inherit.push(r.raw());
    }
    for fd in inherit.iter().copied().chain(raws.iter().copied()) {
        set_cloexec(fd, false)?;
    }
    // A watchdog for a new image that hangs before it serves: an alarm,
    // which survives the exec, ignored unless the new image arms its way
    // back (then it executes this image again; see fallback).
    if plan.is_some() {
        // SAFETY: plain signal-disposition and timer calls.
        unsafe {
            libc::signal(libc::SIGALRM, libc::SIG_IGN);
            libc::alarm(crate::fallback::SERVE_WITHIN.as_secs() as libc::c_uint);
        }
    }
    let e = target.exec(&argv, &envp);
    // SAFETY: as above, undone.
    unsafe {
        libc::alarm(0);
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
    }
    Ok(e)
}

/// An exec by fd names the process after the fd's number on older kernels
/// (comm "5"): take the name from argv[0] again, as `pidof` expects.
fn name_after_argv0() {
    let Some(a0) = std::env::args_os().next() else {
        return;
    };
    let base = a0.as_bytes().rsplit(|b| *b == b'/').next().unwrap_or(b"");
    let Ok(name) = CString::new(&base[..base.len().min(15)]) else {
        return;
    };
    if !name.as_bytes().is_empty() {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
}

/// In a new image: take the state handed over by [`exec`], if any. Every
/// handed-over fd is marked CLOEXEC again, and the variable is removed.
pub fn take_from_env() -> Result<Option<State>> {
    let Some(v) = std::env::var_os(STATE_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(STATE_ENV);
    crate::fallback::drop_exe_fd();
    name_after_argv0();
    let n: RawFd = v
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| corrupt(&format!("{STATE_ENV}={v:?}")))?;
    if !sockpass::sys::fd_is_open(n) {
        return Err(corrupt(&format!("{STATE_ENV}={n} is not open")));
    }
    set_cloexec(n, true)?;
    // SAFETY: the previous image left this fd for us; nothing else owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(n) };
    let blob = sockpass::memfd::read_all(
        sockpass::sys::dup_cloexec(memfd.as_fd()).map_err(|e| Error::os(e, "dup"))?,
        MAX_STATE,
    )?;
    if blob.len() < 12 || &blob[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let nfds = u32::from_le_bytes(blob[8..12].try_into().unwrap()) as usize;
    let body = 12 + nfds * 4;
    if blob.len() < body {
        return Err(corrupt("fd table"));
    }
    let mut raws = Vec::with_capacity(nfds);
    for i in 0..nfds {
        let o = 12 + i * 4;
        let raw = RawFd::from_le_bytes(blob[o..o + 4].try_into().unwrap());
        if raw < 0 || !sockpass::sys::fd_is_open(raw) {
            return Err(corrupt(&format!("fd {raw} is not open")));
        }
        set_cloexec(raw, true)?;
        raws.push(raw);
    }
    // From here until it serves, a failing image can go back to the old one.
    if let Err(e) = crate::fallback::arm(&memfd, &raws) {
        eprintln!("sockpassd: no way back if this upgrade fails: {e}");
    }
    // SAFETY: handed over to this image; each number appears once.
    let fds = raws
        .iter()
        .map(|&r| unsafe { OwnedFd::from_raw_fd(r) })
        .collect();
    State::decode(&blob[body..], fds)
        .map(Some)
        .inspect_err(|_| {
            // Decoding failed and closed the fds: there is nothing to go back with.
            crate::fallback::disarm();
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        sockpass::memfd::from_bytes("t", b"x").unwrap()
    }

    fn sample() -> State {
        let t = Token::from_bytes([7; Token::LEN]);
        State {
            listener: fd(),
            activated: true,
            next_conn_id: 5,
            next_entry_id: 9,
            next_token_seq: 77,
            token_key: [3, 4],
            conns: vec![ConnState {
                slot: 2,
                fd: fd(),
                id: 4,
                creds: Creds {
                    pid: 10,
                    uid: 11,
                    gid: 12,
                },
                default_app: Some("app".into()),
                last_app: "last".into(),
                tokens: vec![t],
                outq: vec![
                    (vec![1, 2, 3], AttachState::Entry(3, 8)),
                    (vec![4], AttachState::Owned(fd())),
                    (vec![], AttachState::None),
                    (vec![5], AttachState::Entries(vec![(3, 8), (4, 10)])),
                ],
                pipelining: true,
            }],
            entries: vec![EntryState {
                slot: 3,
                id: 8,
                spec: "udp:127.0.0.1:53".into(),
                fd: fd(),
                port: 53,
                keyed: true,
                per_worker: false,
                unix_ino: Some(99),
                store_name: Some("sp.8.x".into()),
                adopted: false,
                holders: vec![HolderState {
                    token: t,
                    conn_slot: Some(2),
                    reserved_ms: 0,
                    share: 2,
                    app: "app".into(),
                    creds: Creds::default(),
                    conn_id: 4,
                }],
            }],
            expired: vec![t],
            upgrade_from: Some((2, 41)),
        }
    }

    #[test]
    fn round_trip() {
        let (bytes, fds) = sample().encode();
        assert_eq!(fds.len(), 4);
        let st = State::decode(&bytes, fds).unwrap();
        assert!(st.activated);
        assert_eq!(
            (st.next_conn_id, st.next_entry_id, st.next_token_seq),
            (5, 9, 77)
        );
        assert_eq!(st.token_key, [3, 4]);
        assert_eq!(st.upgrade_from, Some((2, 41)));
        let c = &st.conns[0];
        assert_eq!((c.slot, c.id, c.creds.uid), (2, 4, 11));
        assert_eq!(c.default_app.as_deref(), Some("app"));
        assert!(matches!(c.outq[0].1, AttachState::Entry(3, 8)));
        assert!(matches!(c.outq[1].1, AttachState::Owned(_)));
        assert!(matches!(&c.outq[3].1, AttachState::Entries(v) if v == &[(3, 8), (4, 10)]));
        let e = &st.entries[0];
        assert_eq!(
            (e.spec.as_str(), e.port, e.unix_ino),
            ("udp:127.0.0.1:53", 53, Some(99))
        );
        assert_eq!(e.store_name.as_deref(), Some("sp.8.x"));
        assert_eq!(e.holders[0].conn_slot, Some(2));
    }

    #[test]
    fn corrupt_state_is_an_error_and_closes_every_fd() {
        let (bytes, fds) = sample().encode();
        let raws: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        drop(fds);
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            // Socket pairs: the kept ends see a hang-up once the handed
            // ends are closed (no fd-number checks, which other tests race).
            let (handed, kept): (Vec<OwnedFd>, Vec<OwnedFd>) = (0..raws.len())
                .map(|_| {
                    let mut sv = [0; 2];
                    // SAFETY: socketpair into a local array.
                    let r = unsafe {
                        libc::socketpair(
                            libc::AF_UNIX,
                            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                            0,
                            sv.as_mut_ptr(),
                        )
                    };
                    assert_eq!(r, 0);
                    // SAFETY: new fds we own.
                    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
                })
                .unzip();
            let e = State::decode(&bytes[..cut], handed).unwrap_err();
            assert!(e.message().contains("corrupt"), "{e}");
            for k in &kept {
                use std::os::fd::AsFd;
                // A bounded wait, not a glance: another test's fork may
                // hold a copy of a handed end until its child execs.
                let ev = sockpass::sys::poll_one(k.as_fd(), libc::POLLIN, 10_000).unwrap();
                assert!(
                    ev & libc::POLLHUP != 0,
                    "a handed fd leaked on a corrupt state"
                );
            }
        }
        let fds: Vec<OwnedFd> = (0..raws.len()).map(|_| fd()).collect();
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(State::decode(&extra, fds).is_err());
    }
}
