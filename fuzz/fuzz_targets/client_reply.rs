//! The client's reply decoding, end to end: a real `Client` talks to a fake
//! broker (a thread on an abstract seqpacket socket) that answers one call
//! with fuzzed bytes and fds (connecting sends nothing, so the fuzzed reply
//! answers the call's first message). The decoding lives in private methods of
//! `Client`, so it is driven through the public calls. Must never panic,
//! hang or leak an fd, whatever the reply.
//!
//! Input: op (which call), attach (low 2 bits: how many fds; bit 2: the
//! first is a memfd holding the tail as a status table; bit 3: patch the
//! reply's id to the request's), reply length (2 bytes), then the reply and
//! the table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass::Client;
use sockpass::fdpass::{recv_fds, send_fds};
use sockpass::proto::{self, ty};
use sockpass::{ShareMode, SocketSpec, Token};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

/// One fake-broker job: the call's op, the attach bits, the reply, the table.
type Job = (u8, u8, Vec<u8>, Vec<u8>);

/// The fake broker: one thread for the whole run (a thread per input would
/// still be exiting when LeakSanitizer looks), fed jobs over a channel.
struct Fake {
    path: PathBuf,
    jobs: Mutex<Sender<Job>>,
    done: Mutex<Receiver<()>>,
}

fn fake() -> &'static Fake {
    static F: OnceLock<Fake> = OnceLock::new();
    F.get_or_init(|| {
        let name = format!("\0sockpass-fuzz-client-{}", std::process::id());
        let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
        sockpass::sys::bind_unix(&fd, name.as_bytes()).unwrap();
        // SAFETY: listen on our socket.
        assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 4) }, 0);
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel();
        std::thread::spawn(move || {
            for (op, attach, reply, table) in job_rx {
                serve(&fd, op, attach, &reply, &table);
                let _ = done_tx.send(());
            }
        });
        Fake {
            path: PathBuf::from(OsStr::from_bytes(name.as_bytes())),
            jobs: Mutex::new(jobs),
            done: Mutex::new(done),
        }
    })
}

fn serve(l: &OwnedFd, op: u8, attach: u8, reply: &[u8], table: &[u8]) {
    // SAFETY: accept4 returns a new fd or -1.
    let raw = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(raw >= 0);
    // SAFETY: a fresh fd we own.
    let conn = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut buf = [0u8; proto::MAX_MSG];
    let Ok(r) = recv_fds(conn.as_fd(), &mut buf, 0, 0) else {
        return;
    };
    if r.len == 0 {
        return; // the client hung up without asking (e.g. a bad spec)
    }
    // The client's first message is the call itself (connecting sends no
    // HELLO; op 0 is an explicit hello()): its reply is the fuzzed one.
    let id = proto::Header::parse(&buf[..r.len]).unwrap().id;
    let mut out = reply.to_vec();
    if attach & 8 != 0 && out.len() >= proto::HEADER_LEN {
        out[4..8].copy_from_slice(&id.to_le_bytes());
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for i in 0..attach & 3 {
        fds.push(if i == 0 && attach & 4 != 0 {
            sockpass::memfd::from_bytes("table", table).unwrap()
        } else {
            std::fs::File::open("/dev/null").unwrap().into()
        });
    }
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    if send_fds(conn.as_fd(), &out, &borrowed, 0).is_err() {
        return;
    }
    drop(fds);
    // Until the client hangs up, so its reading never races our close.
    while matches!(recv_fds(conn.as_fd(), &mut buf, 0, 0), Ok(r) if r.len > 0) {}
}

fn call(op: u8, path: &std::path::Path) {
    let spec: SocketSpec = "udp:127.0.0.1:0".parse().unwrap();
    let token = Token::from_bytes([5; Token::LEN]);
    // Errors are values (an ERROR reply's text is the fake broker's, even
    // empty); only a panic, a hang or a leak fails.
    let Ok(mut c) = Client::connect(path) else {
        return;
    };
    let _ = match op {
        0 => c.hello().map(drop),
        1 => c.request_socket(&spec, ShareMode::Any, "f").map(drop),
        2 => c.release(&token).map(drop),
        3 => c.status().map(drop),
        4 => c.pickup(&token).map(drop),
        // Three tokens: one RELEASE_MANY, so one reply.
        5 => c.release_many(&[token; 3]).map(drop),
        _ => c.reserve_socket(&spec, ShareMode::Any, "f").map(drop),
    };
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let op = data[0] % 7;
    let attach = data[1];
    let n = (u16::from_le_bytes([data[2], data[3]]) as usize % 1200).min(data.len() - 4);
    let (reply, table) = data[4..].split_at(n);
    let f = fake();
    let before = sockpass::sys::count_open_fds();
    f.jobs
        .lock()
        .unwrap()
        .send((op, attach, reply.to_vec(), table.to_vec()))
        .unwrap();
    call(op, &f.path);
    f.done.lock().unwrap().recv().unwrap();
    assert_eq!(
        sockpass::sys::count_open_fds(),
        before,
        "an fd leaked (op {op}, attach {attach:#x})"
    );
});
