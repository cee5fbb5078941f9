//! Dispatch: the one place a message type is routed to its handler.

use super::conn::Attach;
use super::Broker;
use sockpass::proto::{self, ty, Request};
use sockpass::{Error, Result};
use std::time::{Duration, Instant};

/// The result of handling one request: the reply is in `wbuf`; this says
/// which fd goes with it.
pub(super) struct Reply {
    pub(super) attach: Option<Attach>,
}

/// At most `LogBudget::LINES` lines a second for one kind of event.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    const LINES: u32 = 20;

    /// Whether this event may be logged, and how many were suppressed in
    /// the window that just ended (to be reported once).
    fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            ended = std::mem::take(&mut self.suppressed);
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines < LogBudget::LINES {
            self.lines += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
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
            Request::Status => self.status(id),
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
        if !self.cfg.log {
            return;
        }
        let (allowed, suppressed) = self.refused_requests.take(Instant::now());
        if suppressed > 0 {
            self.log(format_args!(
                "{suppressed} more refused request(s) not logged in the last second"
            ));
        }
        if allowed {
            let c = self.conns.get(slot).unwrap();
            self.log(format_args!(
                "refused request from pid {} uid {}: {}",
                c.creds.pid, c.creds.uid, e
            ));
        }
    }
}
