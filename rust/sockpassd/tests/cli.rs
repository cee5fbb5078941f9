//! The command lines: help, errors and exit codes of every command, the man
//! pages and completions made from the same definitions, and `sockpass run`'s
//! socket-activation parity (listening hand-over, --accept, --inetd,
//! --seqpacket), with real processes and sockets.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

fn sockpass(args: &[&str]) -> Output {
    Command::new(sockpass_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sockpass")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help_and_refuses_bad_input_with_exit_2() {
    for cmd in [
        "status", "request", "reserve", "pickup", "run", "serve-in", "upgrade",
    ] {
        for h in ["--help", "-h"] {
            let o = sockpass(&[cmd, h]);
            let (out, err) = text(&o);
            assert_eq!(o.status.code(), Some(0), "{cmd} {h}: {err}");
            assert!(out.contains(&format!("sockpass {cmd}")), "{cmd} {h}: {out}");
        }
        let o = sockpass(&[cmd, "--bogus-option"]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("--bogus-option"), "{cmd}: {err}");
    }
    // The exit codes are in --help.
    let (out, _) = text(&sockpass(&["run", "--help"]));
    assert!(
        out.contains("69") && out.contains("77") && out.contains("127"),
        "{out}"
    );
    // Typos get a suggestion.
    let o = sockpass(&["stauts"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("status"), "{o:?}");
    let o = sockpass(&["status", "--jsno"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--json"), "{o:?}");
    // Stray arguments are refused, not ignored.
    let o = sockpass(&["status", "extra"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    // A bad spec is a usage error naming it.
    let o = sockpass(&["request", "tcp:nonsense"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o).1.contains("tcp:nonsense"), "{o:?}");
    // sockpassd too.
    let o = Command::new(sockpassd_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("--fd-store"), "{o:?}");
    let o = Command::new(sockpassd_bin())
        .arg("--max-sokets=3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--max-sockets"), "{o:?}");
}

#[test]
fn options_go_anywhere_and_unavailable_is_69() {
    let b = Broker::start("cli-anywhere");
    let p = path_str(&b.path);
    // An option after the spec is an option (it was read as a spec).
    let o = sockpass(&["request", "udp:127.0.0.1:0", "--no-hold", "--socket", &p]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let o = sockpass(&["status", "--socket", &p, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.starts_with("{\"format\":1,"), "{o:?}");
    // run: the program starts at the first non-option, `--` optional, and
    // its own options stay its own (-E after it is not run's).
    let o = sockpass(&["run", "sh", "-c", "exit 3", "-E", "X=1"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = sockpass(&["run", "-E", "X=4", "sh", "-c", "exit $X"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // No broker: 69 from every command that needs one.
    let gone = "/nonexistent/sockpassd.sock";
    for args in [
        vec!["status", "--socket", gone],
        vec!["request", "--socket", gone, "udp:127.0.0.1:0"],
        vec!["reserve", "--socket", gone, "udp:127.0.0.1:0"],
        vec!["pickup", "--socket", gone, &"0".repeat(48)],
        vec!["upgrade", "--socket", gone],
        vec![
            "run",
            "--socket",
            gone,
            "--request",
            "udp:127.0.0.1:0",
            "--",
            "true",
        ],
    ] {
        let o = sockpass(&args);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {o:?}");
    }
}

#[test]
fn denied_by_policy_is_77_in_every_command() {
    let dir = temp_dir("cli-denied");
    let pol = dir.join("policy.conf");
    // UDP is denied to everyone (deny by default covers the rest).
    std::fs::write(&pol, "deny * proto=udp\nallow * proto=tcp\n").unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path, &["--policy", &path_str(&pol)]);
    let p = path_str(&b.path);
    for args in [
        vec!["request", "--socket", &p, "udp:127.0.0.1:0"],
        vec!["reserve", "--socket", &p, "udp:127.0.0.1:0"],
        vec![
            "run",
            "--socket",
            &p,
            "--request",
            "udp:127.0.0.1:0",
            "--",
            "true",
        ],
    ] {
        let o = sockpass(&args);
        assert_eq!(o.status.code(), Some(77), "{args:?}: {o:?}");
    }
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = temp_dir("cli-generate");
    let man = dir.join("man");
    let comp = dir.join("completions");
    for (what, d) in [("man", &man), ("completions", &comp)] {
        let o = sockpass(&["__generate", what, &path_str(d)]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    }
    let page =
        |n: &str| std::fs::read_to_string(man.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let main = page("sockpass.1");
    assert!(
        main.starts_with(".ie") || main.contains(".TH sockpass 1"),
        "{main}"
    );
    assert!(
        main.contains("EXIT STATUS") && main.contains("SOCKPASS_SOCKET"),
        "{main}"
    );
    for cmd in [
        "status", "request", "reserve", "pickup", "run", "serve-in", "upgrade",
    ] {
        let p = page(&format!("sockpass-{cmd}.1"));
        assert!(p.contains("EXIT STATUS"), "{cmd}");
        assert!(
            p.contains("\\-\\-socket") || p.contains("\\-\\-mode"),
            "{cmd}: {p}"
        );
    }
    assert!(page("sockpass-run.1").contains("\\-\\-accept"));
    assert!(page("sockpass-run.1").contains("\\-\\-drain\\-timeout"));
    let p = page("sockpass-restart.1");
    assert!(
        p.contains("EXIT STATUS") && p.contains("\\-\\-timeout"),
        "{p}"
    );
    assert!(page("sockpassd.8").contains("\\-\\-fd\\-store"));
    assert!(!man.join("sockpass-__generate.1").exists());
    for f in [
        "sockpass.bash",
        "_sockpass",
        "sockpass.fish",
        "sockpassd.bash",
        "_sockpassd",
        "sockpassd.fish",
    ] {
        let c = std::fs::read_to_string(comp.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let want = if f.contains("sockpassd") {
            "reservation-ttl"
        } else {
            "serve-in"
        };
        assert!(c.contains(want), "{f}");
        assert!(
            !c.contains("__generate"),
            "{f}: the hidden command is not completed"
        );
    }
    // bash accepts its completion script, and it completes a command.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}; COMP_WORDS=(sockpass sta); COMP_CWORD=1; _sockpass sockpass sta sockpass; echo \"${{COMPREPLY[@]}}\"",
            path_str(&comp.join("sockpass.bash"))
        ))
        .output()
        .unwrap();
    assert_eq!(text(&o).0.trim(), "status", "{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sockpass run ARGS`, its stdout piped.
fn run_bg(args: &[&str]) -> std::process::Child {
    Command::new(sockpass_bin())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut c: std::process::Child) -> (i32, String, String) {
    let st = wait_child(&mut c);
    let (mut out, mut err) = (String::new(), String::new());
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st.code().unwrap_or(-1), out, err)
}

/// Prints fd 3's type and whether it listens (SO_ACCEPTCONN), or stdin's.
const SHOW_SOCKET: &str = "import socket,sys\n\
fd = int(sys.argv[1])\n\
s = socket.socket(fileno=fd)\n\
print(s.type == socket.SOCK_STREAM, s.type == socket.SOCK_SEQPACKET, \
s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), flush=True)\n\
s.detach()";

/// How the program `sockpass run ARGS -- PROGRAM` starts sees its fd 3:
/// [`SHOW_SOCKET`]'s line.
fn fd3_seen(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--", "python3", "-c", SHOW_SOCKET, "3"]);
    let (code, out, err) = finish(run_bg(&all));
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

#[test]
fn requested_stream_sockets_are_handed_over_listening() {
    let b = Broker::start("cli-listening");
    let p = path_str(&b.path);
    let seen = |more: &[&str], spec: &str| {
        let mut args = vec!["--socket", &p];
        args.extend(more);
        args.extend(["--request", spec]);
        fd3_seen(&args)
    };
    // Listening, as systemd hands stream sockets over.
    assert_eq!(seen(&[], "tcp:127.0.0.1:0"), "True False 1");
    // --no-listen: as the broker made it.
    assert_eq!(seen(&["--no-listen"], "tcp:127.0.0.1:0"), "True False 0");
    // A spec's own backlog is the one used.
    assert_eq!(seen(&[], "tcp:127.0.0.1:0?backlog=3"), "True False 1");
}

#[test]
fn seqpacket_and_inetd_as_systemd_socket_activate() {
    let dir = temp_dir("cli-seqpacket");
    let sock = path_str(&dir.join("s.sock"));
    assert_eq!(fd3_seen(&["-l", &sock, "--seqpacket"]), "False True 1");
    // --inetd without --accept: the listening socket is stdin (and
    // stdout), and no LISTEN_FDS is set.
    let port = free_port(false).to_string();
    let c = Command::new(sockpass_bin())
        .args(["run", "-l", &format!("127.0.0.1:{port}"), "--inetd", "--"])
        .args([
            "sh",
            "-c",
            "python3 -c \"$0\" 0 >&2; echo \"LISTEN_FDS=${LISTEN_FDS-unset}\" >&2",
        ])
        .arg(SHOW_SOCKET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, err) = {
        let mut c = c;
        let st = wait_child(&mut c);
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (st.code().unwrap_or(-1), (), err)
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "True False 1\nLISTEN_FDS=unset\n");
    // Misuse is a usage error.
    let o = sockpass(&["run", "--accept", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = sockpass(&["run", "-l", "8080", "--seqpacket", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With --accept, SIGHUP reaches the running connections' programs and
/// SIGUSR2 (run's restart) is ignored with a line, not run's death.
#[test]
fn accept_forwards_hup_and_ignores_usr2() {
    let port = free_port(false);
    let c = run_bg(&[
        "-l",
        &format!("127.0.0.1:{port}"),
        "--accept",
        "--",
        "sh",
        "-c",
        // Bounded (60 s), so a program whose run died cannot outlive the test.
        "trap 'echo hup >&3; exit 0' HUP; echo ready >&3; \
         for _ in $(seq 1200); do sleep 0.05; done",
    ]);
    let connect = || {
        let s = wait_for("run to accept", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s.set_read_timeout(Some(WAIT)).unwrap();
        BufReader::new(s)
    };
    let read_line = |r: &mut BufReader<TcpStream>| {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    let mut first = connect();
    assert_eq!(read_line(&mut first), "ready\n");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGUSR2) };
    // Still accepting after SIGUSR2, and the first program still runs.
    let mut second = connect();
    assert_eq!(read_line(&mut second), "ready\n");
    // SAFETY: as above.
    unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
    assert_eq!(read_line(&mut first), "hup\n");
    assert_eq!(read_line(&mut second), "hup\n");
    // SAFETY: as above.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let (code, _, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("SIGUSR2 ignored"), "{err}");
}

#[test]
fn accept_starts_a_program_per_connection() {
    let port = free_port(false);
    let addr = format!("127.0.0.1:{port}");
    // Per connection, LISTEN_FDS=1 with the connection at fd 3.
    let c = run_bg(&[
        "-l",
        &addr,
        "--accept",
        "--",
        "sh",
        "-c",
        "echo \"$LISTEN_FDS $LISTEN_FDNAMES $$\" >&3",
    ]);
    let line = || {
        let s = wait_for("run to accept", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut l = String::new();
        BufReader::new(s).read_line(&mut l).unwrap();
        l
    };
    let (a, b) = (line(), line());
    let (pa, pb) = (a.split_whitespace().nth(2), b.split_whitespace().nth(2));
    assert!(
        a.starts_with("1 connection ") && b.starts_with("1 connection "),
        "{a}{b}"
    );
    assert_ne!(pa, pb, "one process per connection");
    // SIGTERM stops accepting; run exits 0 once its children are done.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let (code, _, err) = finish(c);
    assert_eq!(code, 0, "{err}");

    // --inetd: the connection is stdin and stdout.
    let port2 = free_port(false);
    let c = run_bg(&[
        "-l",
        &format!("127.0.0.1:{port2}"),
        "--accept",
        "--inetd",
        "--",
        "sh",
        "-c",
        "read l; echo \"got $l\"",
    ]);
    let mut s = wait_for("run to accept", || {
        TcpStream::connect(("127.0.0.1", port2)).ok()
    });
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut l = String::new();
    BufReader::new(s).read_line(&mut l).unwrap();
    assert_eq!(l, "got hello\n");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let (code, _, err) = finish(c);
    assert_eq!(code, 0, "{err}");
}
