//! STATUS: the table of sockets and references, sent as a sealed memfd.

use super::conn::{Attach, CountedFd};
use super::dispatch::Reply;
use super::limits::MAX_REPLY_FDS;
use super::Broker;
use crate::holders::Owner;
use sockpass::proto::{self, ty};
use sockpass::{Error, Kind, Result};

impl Broker {
    pub(super) fn status(&mut self, id: u32) -> Result<Reply> {
        if self.reply_fds.get() >= MAX_REPLY_FDS {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EMFILE,
                format!(
                    "{} status replies wait for their clients to read them, the limit; try again",
                    self.reply_fds.get()
                ),
            ));
        }
        let mut table = Vec::new();
        let mut rows = 0u32;
        table.extend_from_slice(&0u32.to_le_bytes());
        for (_, e) in self.sockets.iter() {
            for h in &e.holders {
                proto::StatusRow {
                    socket_id: e.id,
                    spec: e.spec.clone(),
                    port: e.port,
                    refs: e.holders.len() as u32,
                    conn_id: h.conn_id,
                    pid: h.creds.pid,
                    uid: h.creds.uid,
                    gid: h.creds.gid,
                    share: h.share,
                    reserved: matches!(h.owner, Owner::Reserved(_)),
                    app: h.app.to_string(),
                }
                .encode(&mut table);
                rows += 1;
            }
        }
        table[..4].copy_from_slice(&rows.to_le_bytes());
        // The table can be far larger than a packet, so it travels as a
        // sealed memfd: one atomic snapshot, nothing kept in the broker.
        let memfd = CountedFd::new(
            sockpass::memfd::from_bytes("sockpass-status", &table)?,
            &self.reply_fds,
        );
        proto::begin(&mut self.wbuf, ty::STATUS_OK, id);
        self.counters().encode(&mut self.wbuf);
        Ok(Reply {
            attach: Some(Attach::Owned(memfd)),
        })
    }
}
