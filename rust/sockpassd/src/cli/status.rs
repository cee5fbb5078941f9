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
    o.push_str("]}");
    o
}

pub fn to_table(st: &Status) -> String {
    let c = &st.counters;
    let mut o = format!(
        "{} socket(s), {} reference(s), {} client connection(s), {} reservation(s)\n",
        c.sockets, c.references, c.connections, c.reservations
    );
    if st.sockets.is_empty() {
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
    o
}
