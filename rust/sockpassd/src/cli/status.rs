//! `sockpass status`: the broker's sockets with their holders, share modes
//! and reference counts, as a table that fits 100 columns or as JSON (its
//! format is versioned: docs/STATUS-JSON.md).

use super::{flag, json, socket_arg};
use clap::{ArgMatches, Command};
use sockpass::Status;
use sockpass::{Proto, SocketOptions, SocketSpec};

/// The JSON's `format`: bumped when a field changes meaning or goes away
/// (adding a field does not bump it).
pub const JSON_FORMAT: u32 = 1;

pub fn command() -> Command {
    Command::new("status")
        .about("List the broker's sockets, holders and references")
        .long_about(
            "List the broker's sockets, holders and references: a table (socket options shown \
             only where they differ from the defaults), or JSON with --json \
             (docs/STATUS-JSON.md).",
        )
        .arg(flag(
            "json",
            "Print JSON (versioned by its \"format\" field)",
        ))
        .arg(socket_arg())
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let st = match super::connect_broker(m).and_then(|mut c| c.status()) {
        Ok(s) => s,
        Err(e) => return Ok(super::fail("status", &e)),
    };
    if m.get_flag("json") {
        println!("{}", to_json(&st));
    } else {
        print!("{}", to_table(&st));
    }
    Ok(super::exit::OK)
}

pub fn to_json(st: &Status) -> String {
    let c = &st.counters;
    let mut o = format!(
        "{{\"format\":{JSON_FORMAT},\"sockets_total\":{},\"references\":{},\"connections\":{},\"reservations\":{},\"broker_fds\":{},\"sockets\":[",
        c.sockets, c.references, c.connections, c.reservations, c.broker_fds
    );
    for (i, s) in st.sockets.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        // A unix socket has a path and no address; the others the reverse.
        let (address, path) = if s.spec.proto.is_unix() {
            ("null".into(), json::string(&s.spec.path))
        } else {
            (json::string(&s.spec.addr.to_string()), "null".into())
        };
        o.push_str(&format!(
            "{{\"id\":{},\"spec\":{},\"proto\":\"{}\",\"address\":{address},\"path\":{path},\"port\":{},\"refs\":{},\"holders\":[",
            s.id,
            json::string(&s.spec.to_string()),
            s.spec.proto.as_str(),
            s.port,
            s.refs
        ));
        for (j, h) in s.holders.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            o.push_str(&format!(
                "{{\"client\":{},\"pid\":{},\"uid\":{},\"gid\":{},\"share\":\"{}\",\"app\":{},\"reserved\":{}}}",
                h.conn_id,
                h.pid,
                h.uid,
                h.gid,
                h.share,
                json::string(&h.app),
                h.reserved
            ));
        }
        o.push_str("]}");
    }
    o.push_str("]}");
    o
}

/// The spec as the table shows it: options equal to what the broker makes
/// of a spec that names none (its canonical defaults: reuseaddr on for TCP
/// only, v6only on IPv6, the other flags off, mode 0666) left out, so a real
/// spec fits its column.
pub fn short_spec(spec: &SocketSpec) -> String {
    let defaults = SocketSpec {
        options: SocketOptions::default(),
        ..spec.clone()
    }
    .into_canonical()
    .options;
    let mut s = spec.clone();
    let o = &mut s.options;
    fn drop_default<T: PartialEq>(v: &mut Option<T>, default: Option<T>) {
        if *v == default {
            *v = None;
        }
    }
    drop_default(&mut o.reuseaddr, defaults.reuseaddr);
    drop_default(&mut o.reuseport, defaults.reuseport);
    drop_default(&mut o.v6only, defaults.v6only);
    drop_default(&mut o.freebind, defaults.freebind);
    drop_default(&mut o.transparent, defaults.transparent);
    drop_default(&mut o.mode, defaults.mode);
    s.to_string()
}

/// The table's width; a SOCKET too long for its column goes on a line of
/// its own, and the APP column gets what is left (at least APP_MIN).
const WIDTH: usize = 100;
const APP_MIN: usize = 12;
/// Wider specs go on a line of their own even when there is room, so the
/// other columns stay put.
const SOCKET_MAX: usize = 44;

pub fn to_table(st: &Status) -> String {
    let c = &st.counters;
    let mut o = format!(
        "{} socket(s), {} reference(s), {} client connection(s), {} reservation(s)\n",
        c.sockets, c.references, c.connections, c.reservations
    );
    if st.sockets.is_empty() {
        return o;
    }
    // Cells: ID SOCKET PORT REFS PID UID SHARE APP, one row a holder (the
    // socket's own cells on its first holder's row only).
    let mut rows: Vec<[String; 8]> = Vec::new();
    for s in &st.sockets {
        let port = if s.spec.proto.is_unix() || s.spec.proto == Proto::Raw {
            "-".to_string()
        } else {
            s.port.to_string()
        };
        let mut first = Some([
            s.id.to_string(),
            short_spec(&s.spec),
            port,
            s.refs.to_string(),
        ]);
        for h in &s.holders {
            let [id, spec, port, refs] = first.take().unwrap_or_default();
            let pid = if h.reserved {
                "reserved".to_string()
            } else {
                h.pid.to_string()
            };
            let (uid, share) = (h.uid.to_string(), h.share.to_string());
            rows.push([id, spec, port, refs, pid, uid, share, h.app.clone()]);
        }
    }
    let head = ["ID", "SOCKET", "PORT", "REFS", "PID", "UID", "SHARE", "APP"];
    let mut w: [usize; 8] = head.map(str::len);
    for r in &rows {
        for (w, cell) in w.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    // Columns are one space apart; the socket gets what the others leave.
    let others: usize = w[2..7].iter().sum::<usize>() + w[0] + 7;
    w[1] = w[1]
        .min(SOCKET_MAX)
        .min(WIDTH.saturating_sub(others + APP_MIN))
        .max(head[1].len());
    let app_w = WIDTH.saturating_sub(others + w[1]).max(APP_MIN);
    let line = |r: [&str; 8]| {
        let app: String = r[7].chars().take(app_w).collect();
        let l = format!(
            "{:<iw$} {:<sw$} {:>pw$} {:>rw$} {:<dw$} {:<uw$} {:<hw$} {app}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            iw = w[0],
            sw = w[1],
            pw = w[2],
            rw = w[3],
            dw = w[4],
            uw = w[5],
            hw = w[6],
        );
        l.trim_end().to_string() + "\n"
    };
    o.push_str(&line(head));
    for r in &rows {
        let spec = if r[1].len() > w[1] {
            // Too long for its column: in full on a line of its own.
            o.push_str(&format!("{:<iw$} {}\n", r[0], r[1], iw = w[0]));
            ""
        } else {
            &r[1]
        };
        let id = if spec.is_empty() { "" } else { &r[0] };
        o.push_str(&line([id, spec, &r[2], &r[3], &r[4], &r[5], &r[6], &r[7]]));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockpass::{HolderStatus, SocketStatus};

    fn socket(id: u64, spec: &str, app: &str, reserved: bool) -> SocketStatus {
        let spec: SocketSpec = spec.parse().unwrap();
        SocketStatus {
            id,
            port: spec.port,
            spec,
            refs: 2,
            holders: vec![HolderStatus {
                conn_id: 1,
                pid: 4_194_304,
                uid: 4_294_967_294,
                gid: 0,
                share: sockpass::ShareMode::Any,
                reserved,
                app: app.into(),
            }],
        }
    }

    #[test]
    fn the_table_fits_100_columns_and_shows_what_differs() {
        let long_app = "a-very-long-application-name-that-would-not-fit-anywhere-at-all";
        let st = Status {
            counters: Default::default(),
            sockets: vec![
                // As the broker reports them: every option spelled out.
                socket(1, "tcp:[2001:db8::1]:8443?reuseaddr=1&reuseport=1&v6only=1&freebind=0&transparent=0&backlog=4096", long_app, false),
                socket(2, "udp:127.0.0.1:53?reuseaddr=0&reuseport=0&freebind=0&transparent=0", "dns", true),
                socket(5, "udp:127.0.0.1:54?reuseaddr=1&reuseport=0&freebind=0&transparent=0", "dns", true),
                socket(3, "unix:/run/some-application/with/a/long/path/to/its/control.sock?mode=0660", "ctl", false),
                socket(4, "unix:/run/app.sock?mode=0666", "app", false),
            ],
        };
        let t = to_table(&st);
        for line in t.lines() {
            assert!(line.len() <= 100, "{} columns: {line}", line.len());
        }
        assert!(
            t.contains("tcp:[2001:db8::1]:8443?reuseport=1&backlog=4096\n"),
            "{t}"
        );
        assert!(t.contains("udp:127.0.0.1:53 "), "{t}");
        // reuseaddr=1 is TCP's default, not UDP's: shown for UDP.
        assert!(t.contains("udp:127.0.0.1:54?reuseaddr=1 "), "{t}");
        assert!(
            t.contains(
                "unix:/run/some-application/with/a/long/path/to/its/control.sock?mode=0660\n"
            ),
            "{t}"
        );
        assert!(t.contains("unix:/run/app.sock "), "{t}");
        assert!(!t.contains("0.0.0.0:0") && !t.contains("freebind"), "{t}");
        assert!(t.contains("reserved"), "{t}");
        let j = to_json(&st);
        assert!(j.starts_with("{\"format\":1,"), "{j}");
        assert!(
            j.contains("\"address\":null,\"path\":\"/run/app.sock\""),
            "{j}"
        );
        assert!(j.contains("\"address\":\"127.0.0.1\",\"path\":null"), "{j}");
    }
}
