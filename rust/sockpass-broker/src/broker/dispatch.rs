//! Dispatch: the one place a message type is routed to its handler.

use super::conn::Attach;
use super::{Broker, Noisy};
use crate::log::Level;
use sockpass::proto::{self, ty, Request};
use sockpass::{Error, Result};

/// The result of handling one request: the reply is in `wbuf`; this says
/// which fd goes with it.
pub(super) struct Reply {
    pub(super) attach: Option<Attach>,
}

impl Broker {
    pub(super) fn handle(&mut self, slot: usize, id: u32, req: Request<'_>) {
        let res = match req {
            Request::Hello {
                min_version,
                max_version,
            } => {
                if min_version > proto::VERSION || max_version < proto::VERSION {
                    Err(Error::protocol(format!(
                        "client speaks versions {min_version}..={max_version}; this broker speaks {}",
                        proto::VERSION
                    )))
                } else {
                    proto::begin(&mut self.wbuf, ty::HELLO_OK, id);
                    self.wbuf.extend_from_slice(&[proto::VERSION, 0, 0, 0]);
                    self.wbuf
                        .extend_from_slice(&(proto::MAX_MSG as u32).to_le_bytes());
                    self.wbuf.extend_from_slice(&self.pid.to_le_bytes());
                    Ok(Reply { attach: None })
                }
            }
            Request::Socket(r) => self.request_socket(slot, id, r),
            Request::SocketMany(rs) => self.request_many(slot, id, rs),
            Request::Release(t) => self.release(slot, id, &t),
            Request::ReleaseMany(ts) => self.release_many(slot, id, ts),
            Request::Pickup(t) => self.pickup(slot, id, &t),
            Request::Status => self.status(slot, id),
            Request::Upgrade(exe) => self.ask_upgrade(slot, id, exe),
        };
        self.answer(slot, id, res);
    }

    /// Send a request's reply, or its error.
    pub(super) fn answer(&mut self, slot: usize, id: u32, res: Result<Reply>) {
        match res {
            // An accepted UPGRADE is answered once the upgrade is done.
            Ok(_)
                if self
                    .upgrade
                    .as_ref()
                    .is_some_and(|u| u.from == Some((slot, id))) => {}
            Ok(reply) => {
                let bytes = std::mem::take(&mut self.wbuf);
                self.send(slot, bytes, reply.attach);
            }
            Err(e) => {
                self.log_refusal(slot, &e);
                self.reply_error(slot, id, &e);
            }
        }
    }

    /// One line per refused request, so an operator sees why a service got
    /// nothing; past the budget a client flooding bad requests costs one
    /// summary line a second instead.
    pub(super) fn log_refusal(&mut self, slot: usize, e: &Error) {
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        let (pid, uid) = (c.creds.pid, c.creds.uid);
        self.log_noisy(
            Noisy::Refusal,
            Level::Warning,
            format_args!("refused request from pid {pid} uid {uid}: {e}"),
        );
    }
}
