//! A load generator for the restart tests: threads that send requests
//! without letting up (HTTP over TCP, DNS over UDP and TCP, each on a new
//! connection or a fresh query id) and count how each one ended.

use super::dns_query_id;
use super::restartd::{ask_tcp_on, dns_answer_id};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one request ended.
pub enum Outcome {
    /// Answered in full; the tag (if not empty) says who answered.
    Ok(String),
    /// ECONNREFUSED: nobody held the port (for UDP, an ICMP port
    /// unreachable).
    Refused,
    /// ECONNRESET, EPIPE, or EOF before the whole response.
    Reset(String),
    /// Reset (the reason given), then answered in full on a new
    /// connection.
    Retried(String),
    /// No answer within the per-request timeout.
    Timeout(String),
    /// Anything else (a wrong answer, another error).
    Other(String),
}

/// Counts of [`Outcome`]s so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub retried: u64,
    pub timeout: u64,
    pub other: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.ok + self.refused + self.reset + self.retried + self.timeout + self.other
    }
    /// Requests not answered, even on a retry.
    pub fn failed(&self) -> u64 {
        self.total() - self.ok - self.retried
    }
    /// Percentage answered.
    pub fn ok_percent(&self) -> f64 {
        100.0 * self.ok as f64 / self.total().max(1) as f64
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} ok ({:.3} %), {} refused, {} reset, {} timed out, {} other",
            self.total(),
            self.ok,
            self.ok_percent(),
            self.refused,
            self.reset,
            self.timeout,
            self.other
        )?;
        if self.retried > 0 {
            write!(
                f,
                "; {} more reset, then answered on a new connection",
                self.retried
            )?;
        }
        Ok(())
    }
}

/// Milliseconds since the first call in this process: when a request
/// failed, to set beside the restarts' times.
pub fn ms() -> u128 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_millis()
}

/// One kind of request's tally, shared by its threads.
#[derive(Default)]
pub struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    retried: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
    /// The first few failures, for the test's message.
    errors: Mutex<Vec<String>>,
    /// How many answers had each tag (e.g. the answering process).
    tags: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn add(&self, o: Outcome) {
        let (n, why) = match o {
            Outcome::Ok(tag) => {
                if !tag.is_empty() {
                    *self.tags.lock().unwrap().entry(tag).or_default() += 1;
                }
                (&self.ok, None)
            }
            Outcome::Refused => (&self.refused, Some("refused".to_string())),
            Outcome::Reset(w) => (&self.reset, Some(format!("reset: {w}"))),
            Outcome::Retried(w) => (&self.retried, Some(format!("reset, retried: {w}"))),
            Outcome::Timeout(w) => (&self.timeout, Some(format!("timed out: {w}"))),
            Outcome::Other(w) => (&self.other, Some(w)),
        };
        n.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = why {
            let mut e = self.errors.lock().unwrap();
            if e.len() < 10 {
                e.push(format!("at {} ms: {why}", ms()));
            }
        }
    }

    pub fn counts(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            ok: g(&self.ok),
            refused: g(&self.refused),
            reset: g(&self.reset),
            retried: g(&self.retried),
            timeout: g(&self.timeout),
            other: g(&self.other),
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub fn tags(&self) -> BTreeMap<String, u64> {
        self.tags.lock().unwrap().clone()
    }

    /// Wait (bounded by `within`) until `n` more requests were answered
    /// than now; false if they were not.
    pub fn progress(&self, n: u64, within: Duration) -> bool {
        let want = self.counts().ok + n;
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.counts().ok >= want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// Threads sending requests until [`Load::finish`].
#[derive(Default)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// One request to send again and again; made once per thread.
pub type Probe = Box<dyn FnMut() -> Outcome + Send>;

/// A pause between one thread's requests: continuous load, but a noisy
/// 2-core machine keeps room for the daemons' restarts.
const PAUSE: Duration = Duration::from_millis(1);

impl Load {
    /// Start `threads` threads, each sending the requests of a probe that
    /// `make` makes, into one tally.
    pub fn spawn(&mut self, threads: usize, make: impl Fn() -> Probe) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        for _ in 0..threads {
            let (stop, tally, mut probe) = (self.stop.clone(), tally.clone(), make());
            self.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tally.add(probe());
                    std::thread::sleep(PAUSE);
                }
            }));
        }
        tally
    }

    /// Stop the threads (each ends its request in flight) and join them.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The outcome of a failed TCP exchange.
fn tcp_error(what: &str, e: std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => Outcome::Reset(format!("{what}: {e}")),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout(format!("{what}: {e}")),
        _ => Outcome::Other(format!("{what}: {e}")),
    }
}

/// HTTP/1.1 GET `path` with `Connection: close` on a new connection each
/// time (gunicorn's sync worker closes every connection after one
/// response), the whole response read (Content-Length bytes of body),
/// within `timeout`. Tagged with what follows "pid " in the body (see
/// [`super::restartd::wsgi_app`]).
pub fn http_probe(port: u16, path: &'static str, timeout: Duration) -> Probe {
    Box::new(move || {
        let mut s = match TcpStream::connect_timeout(&loopback(port), timeout) {
            Ok(s) => s,
            Err(e) => return tcp_error("connect", e),
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_write_timeout(Some(timeout)).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()) {
            return tcp_error("send", e);
        }
        let mut r = Vec::new();
        if let Err(e) = s.read_to_end(&mut r) {
            return tcp_error("receive", e);
        }
        let text = String::from_utf8_lossy(&r);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Outcome::Reset(format!("EOF within the header after {} bytes", r.len()));
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Outcome::Other(format!("not 200: {head}"));
        }
        let len = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        match len {
            Some(n) if n == body.len() => {
                Outcome::Ok(body.split_once("pid ").map_or("", |t| t.1).to_string())
            }
            Some(n) if n > body.len() => {
                Outcome::Reset(format!("EOF after {} of {n} bytes of body", body.len()))
            }
            _ => Outcome::Other(format!("body does not match its length: {head}")),
        }
    })
}

/// DNS queries for `name` over UDP from one socket connected to the
/// server (so an ICMP port unreachable shows as refused), each with its
/// own id, answered with `want` within `timeout` or counted as not
/// answered (a late answer to an earlier id is skipped).
pub fn dns_udp_probe(port: u16, name: &'static str, want: [u8; 4], timeout: Duration) -> Probe {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(loopback(port)).unwrap();
    let mut id: u16 = 0;
    Box::new(move || {
        id = id.wrapping_add(1);
        if let Err(e) = s.send(&dns_query_id(name, id)) {
            return match e.kind() {
                ErrorKind::ConnectionRefused => Outcome::Refused,
                _ => Outcome::Other(format!("send: {e}")),
            };
        }
        let t0 = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return Outcome::Timeout(format!("query {id}"));
            }
            s.set_read_timeout(Some(left)).unwrap();
            match s.recv(&mut buf) {
                Ok(n) if buf[..2] == id.to_be_bytes() => {
                    return match dns_answer_id(id, &buf[..n]) {
                        Some(a) if a == want => Outcome::Ok(String::new()),
                        _ => Outcome::Other(format!("wrong answer to query {id}")),
                    };
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Outcome::Timeout(format!("query {id}"))
                }
                Err(e) => return Outcome::Other(format!("receive: {e}")),
            }
        }
    })
}

/// DNS queries for `name` over TCP, a new connection for each, answered
/// with `want` within `timeout`. A query whose connection is reset or
/// closed unanswered is asked again once on a new connection, as RFC 7766
/// has DNS clients do ("clients SHOULD retry unanswered queries if the
/// connection closes before receiving all outstanding responses"): it
/// counts as [`Outcome::Retried`] if answered then.
pub fn dns_tcp_probe(port: u16, name: &'static str, want: [u8; 4], timeout: Duration) -> Probe {
    let mut id: u16 = 0;
    let ask = move |id: u16| {
        let mut s = match TcpStream::connect_timeout(&loopback(port), timeout) {
            Ok(s) => s,
            Err(e) => return tcp_error("connect", e),
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_write_timeout(Some(timeout)).unwrap();
        match ask_tcp_on(&mut s, &dns_query_id(name, id)) {
            Ok(r) if dns_answer_id(id, &r) == Some(want) => Outcome::Ok(String::new()),
            Ok(_) => Outcome::Other(format!("wrong answer to query {id}")),
            Err(e) => tcp_error("query", e),
        }
    };
    Box::new(move || {
        id = id.wrapping_add(1);
        match ask(id) {
            Outcome::Reset(why) => match ask(id) {
                Outcome::Ok(_) => Outcome::Retried(why),
                again => again,
            },
            o => o,
        }
    })
}
