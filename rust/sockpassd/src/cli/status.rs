//! `sockpass status`: the broker's sockets with their holders, share modes
//! and reference counts, as a table or as JSON.

use super::json;
use crate::args::Args;
use sockpass::{Client, Status};
use std::path::PathBuf;

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut as_json = false;
    let mut socket: Option<PathBuf> = None;
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--json" => as_json = true,
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            _ => return Err(format!("status: unknown option {k}")),
        }
    }
    let path = socket.unwrap_or_else(sockpass::default_socket_path);
    let st = match Client::connect(&path).and_then(|mut c| c.status()) {
        Ok(s) => s,
        Err(e) => return Ok(super::fail("status", &e)),
    };
    if as_json {
        println!("{}", to_json(&st));
    } else {
        print!("{}", to_table(&st));
    }
    Ok(0)
}

pub fn to_json(st: &Status) -> String {
    let c = &st.counters;
    let mut o = format!(
        "{{\"sockets_total\":{},\"references\":{},\"connections\":{},\"reservations\":{},\"broker_fds\":{},\"sockets\":[",
        c.sockets, c.references, c.connections, c.reservations, c.broker_fds
    );
    for (i, s) in st.sockets.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str(&format!(
            "{{\"id\":{},\"spec\":{},\"proto\":\"{}\",\"address\":{},\"port\":{},\"refs\":{},\"holders\":[",
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
    o.push_str("],\"users\":[");
    for (i, u) in st.users.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str(&format!(
            "{{\"uid\":{},\"used\":{},\"quota\":{}}}",
            u.uid,
            uid_counts_json(&u.used),
            uid_counts_json(&u.quota)
        ));
    }
    o.push_str("]}");
    o
}

/// One uid's counts as a JSON object; a quota of u32::MAX is null (none).
fn uid_counts_json(c: &sockpass::UidCounts) -> String {
    let n = |v: u32| {
        if v == u32::MAX {
            "null".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "{{\"connections\":{},\"sockets\":{},\"references\":{},\"reservations\":{},\"status\":{}}}",
        n(c.connections),
        n(c.sockets),
        n(c.references),
        n(c.reservations),
        n(c.status)
    )
}

/// The per-uid section: each uid's use over its quota ("-": none).
fn users_table(st: &Status) -> String {
    if st.users.is_empty() {
        return String::new();
    }
    let cell = |used: u32, max: u32| {
        if max == u32::MAX {
            format!("{used}/-")
        } else {
            format!("{used}/{max}")
        }
    };
    let mut o = format!(
        "\n{:<10} {:>13} {:>13} {:>15} {:>13} {:>9}\n",
        "UID", "CONNECTIONS", "SOCKETS", "REFERENCES", "RESERVATIONS", "STATUS"
    );
    for u in &st.users {
        let (a, q) = (&u.used, &u.quota);
        o.push_str(&format!(
            "{:<10} {:>13} {:>13} {:>15} {:>13} {:>9}\n",
            u.uid,
            cell(a.connections, q.connections),
            cell(a.sockets, q.sockets),
            cell(a.references, q.references),
            cell(a.reservations, q.reservations),
            cell(a.status, q.status)
        ));
    }
    o
}

pub fn to_table(st: &Status) -> String {
    let c = &st.counters;
    let mut o = format!(
        "{} socket(s), {} reference(s), {} client connection(s), {} reservation(s)\n",
        c.sockets, c.references, c.connections, c.reservations
    );
    if st.sockets.is_empty() {
        o.push_str(&users_table(st));
        return o;
    }
    o.push_str(&format!(
        "{:<6} {:<40} {:>5} {:>4}  {:<8} {:<8} {:<7} {}\n",
        "ID", "SOCKET", "PORT", "REFS", "PID", "UID", "SHARE", "APP"
    ));
    for s in &st.sockets {
        for (j, h) in s.holders.iter().enumerate() {
            let (id, spec, port, refs) = if j == 0 {
                (
                    s.id.to_string(),
                    s.spec.to_string(),
                    s.port.to_string(),
                    s.refs.to_string(),
                )
            } else {
                (String::new(), String::new(), String::new(), String::new())
            };
            let pid = if h.reserved {
                "reserved".to_string()
            } else {
                h.pid.to_string()
            };
            o.push_str(&format!(
                "{:<6} {:<40} {:>5} {:>4}  {:<8} {:<8} {:<7} {}\n",
                id, spec, port, refs, pid, h.uid, h.share, h.app
            ));
        }
    }
    o.push_str(&users_table(st));
    o
}
