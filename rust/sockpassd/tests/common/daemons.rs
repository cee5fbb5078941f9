//! Real daemons from Debian run by `sockpass run` as uid nobody (started
//! as nobody.rs does) in third_party.rs and catch_bind_real.rs: the
//! supervised process tree, reaped whole (daemons that fork included),
//! nginx's configuration, and small HTTP and DNS clients.

use super::{path_str, sockpass_run_as_nobody_cmd, until, NOBODY, WAIT};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A directory uid nobody owns, for a daemon's files (its temp dirs, pid
/// file, logs).
pub fn nobody_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
    d
}

/// `sockpass run` (and what it starts), as uid nobody, in a process group
/// of its own; on drop every process of the tree is killed and the
/// supervisor reaped.
pub struct Supervised {
    pub child: Child,
    pub log: PathBuf,
}

/// [`sockpass_run_as_nobody`] in a process group of its own, supervised:
/// each program in its chain execs the next, so the child's pid is
/// sockpass run's.
pub fn supervise_as_nobody(args: &[String], log: &Path, systemd_booted: bool) -> Supervised {
    let child = sockpass_run_as_nobody_cmd(args, log, systemd_booted)
        .process_group(0)
        .spawn()
        .expect("start sockpass run");
    Supervised {
        child,
        log: log.to_path_buf(),
    }
}

impl Supervised {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What sockpass run and its program wrote so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait, bounded, for `f` to give a value while sockpass run runs; an
    /// exit first or a wait that runs out fails with the log.
    pub fn until<T>(&mut self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        until(&mut self.child, &self.log, what, f)
    }

    /// Wait (bounded) for sockpass run to exit; its exit code (-1: killed).
    pub fn wait(&mut self) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < WAIT,
                "sockpass run did not exit within {WAIT:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM sockpass run (it forwards it to the program) and return its
    /// exit code once it and every process it started are gone.
    pub fn stop(mut self) -> i32 {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let code = self.wait();
        let t0 = Instant::now();
        while !self.tree().is_empty() {
            assert!(
                t0.elapsed() < WAIT,
                "processes of sockpass run outlived it by {WAIT:?}: {:?}",
                self.tree()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        code
    }

    /// Processes left of the tree: the process group's members and
    /// sockpass run's descendants (a program may leave the group).
    pub fn tree(&self) -> Vec<i32> {
        let procs = processes();
        let mut out: Vec<i32> = procs
            .iter()
            .filter(|p| p.pgid == self.pid() && p.state != 'Z')
            .map(|p| p.pid)
            .collect();
        let mut stack = vec![self.pid()];
        while let Some(parent) = stack.pop() {
            for p in procs.iter().filter(|p| p.ppid == parent) {
                if !out.contains(&p.pid) && p.state != 'Z' {
                    out.push(p.pid);
                }
                stack.push(p.pid);
            }
        }
        out
    }

    /// The descendants of sockpass run whose command line starts with
    /// `prefix` (nginx names its processes "nginx: master process ...").
    pub fn programs(&self, prefix: &str) -> Vec<Proc> {
        let tree = self.tree();
        processes()
            .into_iter()
            .filter(|p| {
                p.pid != self.pid() && tree.contains(&p.pid) && p.cmdline.starts_with(prefix)
            })
            .collect()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Everything at once: a master killed first would leave its
        // workers to init.
        for pid in self.tree() {
            // SAFETY: SIGKILL to processes this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: as above, the whole group.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
    pub uid: u32,
    pub cmdline: String,
}

/// Every process now, from /proc.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // After the command name in parentheses (which may hold spaces):
        // state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let uid = std::fs::read_to_string(e.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            })
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX);
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if f.len() < 3 {
            continue;
        }
        out.push(Proc {
            pid,
            ppid: f[1].parse().unwrap_or(0),
            pgid: f[2].parse().unwrap_or(0),
            state: f[0].chars().next().unwrap_or('?'),
            uid,
            cmdline: cmdline.trim_end().to_string(),
        });
    }
    out
}

/// `GET /` over HTTP/1.0 on 127.0.0.1:`port`: the whole answer, or None
/// when nothing answers (refused, reset, or no complete answer).
pub fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    Some(r)
}

/// Whether an HTTP answer is a 200.
pub fn is_200(reply: &str) -> bool {
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// nginx's configuration for a master and 2 workers in the foreground,
/// every file it writes in `dir` (owned by nobody), serving `body` on
/// 127.0.0.1 at each of `ports`. No `user`: it runs as nobody already.
pub fn nginx_conf(dir: &Path, ports: &[u16], body: &str) -> PathBuf {
    let html = dir.join("html");
    std::fs::create_dir_all(&html).unwrap();
    std::fs::write(html.join("index.html"), body).unwrap();
    let d = dir.display();
    let listen: String = ports
        .iter()
        .map(|p| format!("    listen 127.0.0.1:{p};\n"))
        .collect();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n{listen}    root {d}/html;\n  }}\n}}\n"
        ),
    )
    .unwrap();
    conf
}

/// nginx's arguments for [`nginx_conf`] in `dir` (`-e`: the error log
/// before the configuration is read, which would be /var/log/nginx).
pub fn nginx_args(nginx: &Path, dir: &Path) -> Vec<String> {
    vec![
        path_str(nginx),
        "-c".into(),
        path_str(&dir.join("nginx.conf")),
        "-p".into(),
        path_str(dir),
        "-e".into(),
        path_str(&dir.join("error.log")),
    ]
}

/// A DNS query for `name` IN A, with id `id`.
pub fn dns_query_id(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A DNS query for `name` IN A, id 0x5350.
pub fn dns_query(name: &str) -> Vec<u8> {
    dns_query_id(name, 0x5350)
}

/// The A record's address of an answer to [`dns_query`] (its last record).
pub fn dns_answer(reply: &[u8]) -> Option<[u8; 4]> {
    let ok = reply.len() > 16
        && reply[..2] == [0x53, 0x50]
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1;
    ok.then(|| reply[reply.len() - 4..].try_into().unwrap())
}

/// The answer to `query` (one question, IN A) with one A record `addr`,
/// as an upstream server gives it.
pub fn dns_reply_a(query: &[u8], addr: [u8; 4]) -> Vec<u8> {
    let mut r = query.to_vec();
    r[2] = 0x81; // QR, RD
    r[3] = 0x80; // RA, NOERROR
    r[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    r[8..12].fill(0); // NSCOUNT, ARCOUNT (EDNS dropped)
                      // The question ends 4 bytes after its name's root label.
    let mut i = 12;
    while query[i] != 0 {
        i += query[i] as usize + 1;
    }
    r.truncate(i + 5);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    r.extend_from_slice(&addr);
    r
}

pub fn ask_udp(port: u16, q: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(q, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

pub fn ask_tcp(port: u16, q: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect over TCP");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(q).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("a TCP answer");
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    reply
}
