//! The broker's log: one line an event to stderr, written so that logging
//! never blocks or kills the daemon, and rate limits for the lines a client
//! can cause.
//!
//! Lines are formatted on the caller's thread and handed to a logger thread
//! through a bounded queue (`try_send`: a full queue drops the line and
//! counts it; "N log lines dropped" is written once writing resumes). Why a
//! thread and not non-blocking writes: stderr may be a pipe, a file, a tty
//! or a socket, and `O_NONBLOCK` on fd 2 changes the file description that
//! the process that started us shares (its own writes start failing with
//! EAGAIN); `MSG_DONTWAIT` works on sockets only, and even a write to a
//! regular file can block (NFS, a full FUSE disk). The thread can block in
//! any of those without the event loop noticing. Write errors (EPIPE from a
//! reader that went away: SIGPIPE is ignored, see [`ignore_sigpipe`]; EIO,
//! ENOSPC, EBADF) drop the line and count it; nothing here panics, unlike
//! `eprintln!`, which must not be used once the broker serves.
//!
//! Under journald (`$JOURNAL_STREAM` names stderr's device and inode) a line
//! starts with its sd-daemon priority (`<3>` error, `<4>` warning, `<6>`
//! info, `<7>` debug) so `journalctl -p` can filter; otherwise with
//! `sockpassd[PID]: ` and a level word.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How much a line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Lines waiting for the logger thread, at most.
const QUEUE: usize = 1024;

struct Logger {
    tx: SyncSender<Vec<u8>>,
    journal: bool,
    pid: u32,
}

static LOGGER: OnceLock<Option<Logger>> = OnceLock::new();
/// Lines dropped (queue full, or the write failed) and not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued and not yet written (for [`flush`]).
static PENDING: AtomicUsize = AtomicUsize::new(0);
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Log nothing but errors (`sockpassd --quiet`).
pub fn set_quiet(quiet: bool) {
    ENABLED.store(!quiet, Ordering::Relaxed);
}

fn logger() -> Option<&'static Logger> {
    LOGGER
        .get_or_init(|| {
            ignore_sigpipe();
            let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
            std::thread::Builder::new()
                .name("sockpassd-log".into())
                .spawn(move || {
                    block_signals();
                    for line in rx {
                        write_line(2, &line);
                        PENDING.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .ok()?;
            Some(Logger {
                tx,
                journal: under_journald(),
                pid: std::process::id(),
            })
        })
        .as_ref()
}

/// Queue one line; never blocks. Without a logger thread (none could be
/// started) the line is dropped: blocking the loop would be worse.
pub fn line(level: Level, args: fmt::Arguments<'_>) {
    if level != Level::Error && !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let Some(l) = logger() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Do not format a line that cannot be queued.
    if PENDING.load(Ordering::Relaxed) >= QUEUE {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let buf = format_line(l.journal, l.pid, level, args);
    PENDING.fetch_add(1, Ordering::Relaxed);
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = l.tx.try_send(buf) {
        PENDING.fetch_sub(1, Ordering::Relaxed);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn format_line(journal: bool, pid: u32, level: Level, args: fmt::Arguments<'_>) -> Vec<u8> {
    use std::io::Write;
    let mut buf = Vec::with_capacity(128);
    // Writing into a Vec cannot fail.
    let _ = if journal {
        // journald shows the program and pid itself.
        writeln!(buf, "<{}>{args}", level.priority())
    } else {
        writeln!(buf, "sockpassd[{pid}]: {}: {args}", level.word())
    };
    buf
}

/// The logger thread's write of one line to `fd`, then the drop count if any.
fn write_line(fd: i32, line: &[u8]) {
    if !write_all(fd, line) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let n = DROPPED.swap(0, Ordering::Relaxed);
    if n > 0 {
        let l = LOGGER.get().and_then(|l| l.as_ref());
        let (journal, pid) = l.map_or((false, 0), |l| (l.journal, l.pid));
        let note = format_line(
            journal,
            pid,
            Level::Warning,
            format_args!("{n} log lines dropped"),
        );
        if !write_all(fd, &note) {
            DROPPED.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Write to `fd` (stderr) until done or a real error. EAGAIN (someone else
/// made the description non-blocking) waits for POLLOUT: this is the
/// logger thread, it may wait.
fn write_all(fd: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        // SAFETY: writing from a valid buffer.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n > 0 {
            b = &b[n as usize..];
            continue;
        }
        match sockpass::sys::errno() {
            libc::EINTR => {}
            libc::EAGAIN => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            _ => return false,
        }
    }
    true
}

/// Wait up to `max` for queued lines to be written (before an exec or an
/// exit, which would lose them).
pub fn flush(max: Duration) {
    let t0 = Instant::now();
    while PENDING.load(Ordering::Relaxed) > 0 && t0.elapsed() < max {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// For the broker's helper threads: every signal is for the main thread
/// (its signalfd), never a helper whose default action would end the
/// process.
pub(crate) fn block_signals() {
    // SAFETY: a full set, blocked in the calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A closed stderr pipe must be an EPIPE error, not a fatal signal. Rust
/// programs start with SIGPIPE ignored; make sure it still is (an embedder
/// or a parent's signal disposition could have changed it).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Is stderr the journal stream systemd connected us to?
fn under_journald() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    st.st_dev == dev && st.st_ino == ino
}

/// Log at a level: `log!(Info, "listening on {}", p)`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::line($crate::log::Level::$level, format_args!($($arg)*))
    };
}

/// At most `lines` lines a second for one kind of event a client can cause;
/// the rest are counted and reported in one summary line.
#[derive(Debug)]
pub struct Budget {
    lines: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Budget {
    pub const fn new(lines: u32) -> Budget {
        Budget {
            lines,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether this event may be logged, and how many were suppressed in
    /// the window that just ended (to be reported once).
    pub fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            ended = std::mem::take(&mut self.suppressed);
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.lines {
            self.used += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_lines_a_second_and_reports_the_rest() {
        let mut b = Budget::new(3);
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| b.take(t0).0).count();
        assert_eq!(allowed, 3);
        let (ok, suppressed) = b.take(t0 + Duration::from_secs(1));
        assert!(ok);
        assert_eq!(suppressed, 97);
    }

    /// Lines lost while writing was impossible are counted, and the count
    /// is written after the next line that gets through; a write error
    /// (EPIPE: the reader is gone) is one more lost line, not a panic.
    #[test]
    fn dropped_lines_are_reported_when_writing_resumes() {
        ignore_sigpipe();
        let mut p = [-1; 2];
        // SAFETY: pipe2 into a local array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        DROPPED.store(5, Ordering::Relaxed);
        write_line(p[1], b"next\n");
        let mut buf = [0u8; 256];
        // SAFETY: reading into a local buffer; closing our pipe fds.
        let n = unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), buf.len()) };
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        assert!(text.starts_with("next\n"), "{text}");
        assert!(text.contains("5 log lines dropped"), "{text}");
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        // SAFETY: closes our pipe's read end, used no more.
        unsafe { libc::close(p[0]) };
        // A child another test forks may hold a copy of the read end until
        // it execs, and a write then goes through: written again, bounded.
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            write_line(p[1], b"into a pipe nobody reads any more\n");
            match DROPPED.swap(0, Ordering::Relaxed) {
                0 if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(10)),
                n => break assert_eq!(n, 1),
            }
        }
        // SAFETY: closes our pipe's write end, used no more.
        unsafe { libc::close(p[1]) };
    }

    #[test]
    fn line_forms() {
        let j = format_line(true, 7, Level::Warning, format_args!("x {}", 1));
        assert_eq!(j, b"<4>x 1\n");
        let p = format_line(false, 7, Level::Error, format_args!("y"));
        assert_eq!(p, b"sockpassd[7]: error: y\n");
    }
}
