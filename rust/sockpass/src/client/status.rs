//! The broker's status, as a client decodes it.

use crate::error::Result;
use crate::proto::{Counters, Reader, StatusRow};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use std::collections::HashMap;

/// One holder of a cached socket, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderStatus {
    pub conn_id: u64,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub share: ShareMode,
    pub reserved: bool,
    pub app: String,
}

/// A socket the broker holds, with all its references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketStatus {
    pub id: u64,
    pub spec: SocketSpec,
    pub port: u16,
    pub refs: u32,
    pub holders: Vec<HolderStatus>,
}

/// A snapshot of the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub counters: Counters,
    pub sockets: Vec<SocketStatus>,
}

/// The status table (the memfd's bytes) with the reply's counters.
pub(super) fn decode(counters: Counters, bytes: &[u8]) -> Result<Status> {
    let mut r = Reader::new(bytes);
    let rows = r.u32()?;
    let mut sockets: Vec<SocketStatus> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for _ in 0..rows {
        let row = StatusRow::decode(&mut r)?;
        let i = *index.entry(row.socket_id).or_insert_with(|| {
            sockets.push(SocketStatus {
                id: row.socket_id,
                spec: row.spec.clone(),
                port: row.port,
                refs: row.refs,
                holders: Vec::new(),
            });
            sockets.len() - 1
        });
        sockets[i].holders.push(HolderStatus {
            conn_id: row.conn_id,
            pid: row.pid,
            uid: row.uid,
            gid: row.gid,
            share: row.share,
            reserved: row.reserved,
            app: row.app,
        });
    }
    sockets.sort_by_key(|s| s.id);
    Ok(Status { counters, sockets })
}
