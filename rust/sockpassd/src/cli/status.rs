//! `sockpass status`: the broker's sockets with their holders, share modes
//! and reference counts, as a table that fits 100 columns or as JSON (its
//! format is versioned: docs/STATUS-JSON.md).

use super::{flag, json, socket_arg};
use clap::{ArgMatches, Command};
use sockpass::client::{Client, Status};
use sockpass::{Proto, SocketSpec};

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
    let st = match Client::connect(super::broker_path(m)).and_then(|mut c| c.status()) {
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
        let path = if s.spec.proto.is_unix() {
            json::string(&s.spec.path)
        } else {
            "null".into()
        };
        o.push_str(&format!(
            "{{\"id\":{},\"spec\":{},\"proto\":\"{}\",\"address\":{},\"path\":{path},\"port\":{},\"refs\":{},\"holders\":[",
            s.id,
            json::string(&s.spec.to_string()),
            s.spec.proto.as_str(),
            json::string(&s.spec.addr.to_string()),
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

/// The spec as the table shows it: options equal to their defaults left out
/// (reuseaddr=1, v6only=1 on IPv6, the other flags off, mode 0666), so a
/// real spec fits its column.
pub fn short_spec(spec: &SocketSpec) -> String {
    let mut s = spec.clone();
    let o = &mut s.options;
    let off = |v: &mut Option<bool>| {
        if *v == Some(false) {
            *v = None;
        }
    };
    if o.reuseaddr == Some(true) {
        o.reuseaddr = None;
    }
    if o.v6only == Some(true) && spec.addr.is_ipv6() {
        o.v6only = None;
    }
    off(&mut o.reuseport);
    off(&mut o.freebind);
    off(&mut o.transparent);
    if o.mode == Some(0o666) {
        o.mode = None;
    }
    // Raw sockets have no port; a unix socket's address is its path.
    if spec.proto == Proto::Raw {
        s.port = 0;
    }
    s.to_string()
}

/// The table's width budget; a longer SOCKET goes on a line of its own.
const WIDTH: usize = 100;
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
    let specs: Vec<String> = st.sockets.iter().map(|s| short_spec(&s.spec)).collect();
    let w = specs
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .clamp(6, SOCKET_MAX);
    // ID SOCKET PORT REFS PID UID SHARE APP: the app gets what is left.
    let app_w = WIDTH - (6 + 1 + w + 1 + 5 + 1 + 4 + 2 + 8 + 1 + 6 + 1 + 5 + 1);
    let row = |c: [&str; 8]| {
        let app: String = c[7].chars().take(app_w).collect();
        let [id, spec, port, refs, pid, uid, share, _] = c;
        format!("{id:<6} {spec:<w$} {port:>5} {refs:>4}  {pid:<8} {uid:<6} {share:<5} {app}")
            .trim_end()
            .to_string()
            + "\n"
    };
    o.push_str(&row([
        "ID", "SOCKET", "PORT", "REFS", "PID", "UID", "SHARE", "APP",
    ]));
    for (s, spec) in st.sockets.iter().zip(&specs) {
        let port = if s.spec.proto.is_unix() || s.spec.proto == Proto::Raw {
            "-".to_string()
        } else {
            s.port.to_string()
        };
        let (mut id, mut sp) = (s.id.to_string(), spec.as_str());
        if spec.len() > w {
            // Too long for its column: on a line of its own, in full.
            o.push_str(&format!("{id:<6} {spec}\n"));
            id.clear();
            sp = "";
        }
        let mut first = Some((id, sp, port, s.refs.to_string()));
        for h in &s.holders {
            let (id, sp, port, refs) = first.take().unwrap_or_default();
            let pid = if h.reserved {
                "reserved".to_string()
            } else {
                h.pid.to_string()
            };
            let (uid, share) = (h.uid.to_string(), h.share.to_string());
            o.push_str(&row([&id, sp, &port, &refs, &pid, &uid, &share, &h.app]));
        }
    }
    o
}
