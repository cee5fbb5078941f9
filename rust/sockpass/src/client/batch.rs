//! Batch requests: many sockets in one round trip (REQUEST_MANY), all or
//! nothing.

use super::{unavailable, Client, Grant, PIPELINE_WINDOW};
use crate::error::{Error, Kind, Result};
use crate::fdpass::{send_fds, RecvError};
use crate::proto::{self, ty, GrantEntry, Header};
use crate::share::ShareMode;
use crate::spec::{PlainIpv4, SocketSpec};
use std::os::fd::{AsRawFd, OwnedFd};

/// One REQUEST_MANY to send: its bytes, and which specs it carries.
struct Message {
    bytes: Vec<u8>,
    first: usize,
    count: usize,
}

/// What one SOCKETS reply brought: its grants with their fds, or why not.
type Answer = Result<Vec<(GrantEntry, OwnedFd)>>;

/// A try at a batch whose messages the broker refused as too long (the
/// refusal): nothing of it is held, and the connection is in step.
struct TooLong(Error);

/// The specs of one call, as given: parsed (checked when packed), or as
/// text (parsed when packed, which checks them: a spec from C is not
/// checked twice).
#[derive(Clone, Copy)]
enum Specs<'a> {
    Parsed(&'a [(SocketSpec, ShareMode, &'a str)]),
    Text(&'a [(&'a str, ShareMode, &'a str)]),
}

impl Specs<'_> {
    fn len(self) -> usize {
        match self {
            Specs::Parsed(v) => v.len(),
            Specs::Text(v) => v.len(),
        }
    }

    /// Append spec `i`'s REQUEST_MANY item to `out`.
    fn encode(self, i: usize, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Specs::Parsed(v) => {
                let (spec, share, app) = &v[i];
                spec.validate()?;
                proto::encode_request_item(out, spec, *share, app, 0)
            }
            Specs::Text(v) => {
                let (text, share, app) = v[i];
                // The common `udp:A.B.C.D:PORT` encoded from its parts: a
                // SocketSpec made and dropped for each was half the
                // client's instructions on a batch from C.
                if let Some(plain) = PlainIpv4::parse(text.as_bytes()) {
                    return proto::encode_request_item_with(
                        out,
                        |o| plain.encode(o),
                        share,
                        app,
                        0,
                    );
                }
                let spec: SocketSpec = text.parse()?;
                proto::encode_request_item(out, &spec, share, app, 0)
            }
        }
    }
}

/// Pack the specs into messages of at most `max_msg` bytes (the broker's
/// packet limit), each with no more specs than its SOCKETS reply of at most
/// `max_msg` bytes holds ([`proto::request_batch_for`]).
fn pack(
    specs: Specs<'_>,
    max_msg: usize,
    mut id: impl FnMut() -> Result<u32>,
) -> Result<Vec<Message>> {
    let per = proto::request_batch_for(max_msg);
    let mut msgs: Vec<Message> = Vec::new();
    let mut item = Vec::new();
    for i in 0..specs.len() {
        item.clear();
        specs
            .encode(i, &mut item)
            .map_err(|e| e.context(format_args!("spec {i} of {}", specs.len())))?;
        let fits = msgs
            .last()
            .is_some_and(|m| m.count < per && m.bytes.len() + item.len() <= max_msg);
        if !fits {
            let mut bytes = Vec::with_capacity(max_msg);
            proto::begin_request_many(&mut bytes, id()?);
            if bytes.len() + item.len() > max_msg {
                return Err(Error::bad_request(format!(
                    "spec {i} of {}: too long for one message",
                    specs.len()
                )));
            }
            msgs.push(Message {
                bytes,
                first: i,
                count: 0,
            });
        }
        let m = msgs.last_mut().unwrap();
        m.bytes.extend_from_slice(&item);
        m.count += 1;
    }
    for m in &mut msgs {
        proto::finish_request_many(&mut m.bytes, m.count);
    }
    Ok(msgs)
}

/// The broker names a refused spec by its place in its message ("spec 3 of
/// 36: …"); name it by its place in the whole call instead.
fn renumber(e: Error, first: usize, total: usize) -> Error {
    let m = e.message();
    let rest = m
        .strip_prefix("spec ")
        .and_then(|r| r.split_once(": "))
        .and_then(|(num, rest)| {
            let i: usize = num.split_once(" of ")?.0.parse().ok()?;
            Some((i, rest))
        });
    match rest {
        Some((i, rest)) => Error::with_errno(
            e.kind(),
            e.errno(),
            format!("spec {} of {total}: {rest}", first + i),
        ),
        None => e,
    }
}

impl Client {
    /// Ask for many sockets at once: each spec with its share mode and
    /// application name (empty: my executable's name), as
    /// [`Client::request_socket`] would. All or nothing: on any refusal no
    /// reference is kept and no fd is left open, and the error names the
    /// spec (`spec I of N: …`). Up to [`proto::MAX_REQUEST_BATCH`] specs
    /// (as many as fit in the broker's packet limit: 36 to a broker that
    /// takes 1024-byte packets) travel in one message, their fds in one
    /// `SCM_RIGHTS` message; more are pipelined, still about one round trip.
    /// A batch that does not fit in one 1024-byte message on a connection
    /// that has not said HELLO says it first, once, to learn the broker's
    /// limit.
    pub fn request_many(&mut self, specs: &[(SocketSpec, ShareMode, &str)]) -> Result<Vec<Grant>> {
        self.request_specs(Specs::Parsed(specs))
    }

    /// [`Client::request_many`] with each spec as text, parsed here (a
    /// spec that does not parse is refused before anything is sent, named
    /// `spec I of N: …`).
    pub fn request_many_text(&mut self, specs: &[(&str, ShareMode, &str)]) -> Result<Vec<Grant>> {
        self.request_specs(Specs::Text(specs))
    }

    fn request_specs(&mut self, specs: Specs<'_>) -> Result<Vec<Grant>> {
        if specs.len() == 0 {
            return Ok(Vec::new());
        }
        let r = self.request_many_inner(specs);
        self.settle(r)
    }

    fn request_many_inner(&mut self, specs: Specs<'_>) -> Result<Vec<Grant>> {
        match self.request_many_once(specs)? {
            Ok(grants) => Ok(grants),
            // Refused as too long (see `Client::limit_lowered_by`): nothing
            // of it is held, the connection is in step, and the limit is
            // MIN_MSG now: once more, repacked. A refusal again is the call's.
            Err(TooLong(_)) => self.request_many_once(specs)?.map_err(|TooLong(e)| e),
        }
    }

    /// One try at a batch: its messages packed to the packet limit and
    /// pipelined, all or nothing.
    fn request_many_once(
        &mut self,
        specs: Specs<'_>,
    ) -> Result<std::result::Result<Vec<Grant>, TooLong>> {
        let limit = self.packet_limit();
        let mut msgs = pack(specs, limit, || self.take_id())?;
        if msgs.len() > 1 && self.broker_max_msg == 0 {
            // Packed to the 1024 bytes every version-1 broker takes: ask
            // this one's limit (a round trip, once a connection) rather than
            // pay for a message more on every batch after.
            self.hello_inner()?;
            if self.packet_limit() > limit {
                msgs = pack(specs, self.packet_limit(), || self.take_id())?;
            }
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(msgs.len());
        let (mut sent, mut read) = (0, 0);
        let mut lost = None;
        let mut too_long = None;
        let mut broke_off = false;
        while read < msgs.len() {
            // After a refusal as too long nothing more is sent.
            while sent < msgs.len() && sent - read < PIPELINE_WINDOW && too_long.is_none() {
                let r = send_fds(self.sock(), &msgs[sent].bytes, &[], 0);
                if let Err(e) = self.sent(r) {
                    lost = Some(e);
                    break;
                }
                sent += 1;
            }
            if read == sent {
                break;
            }
            let m = &msgs[read];
            let id = Header::parse(&m.bytes)?.id;
            let a = self.sockets_reply(id, m.count);
            read += 1;
            if let Err(e) = &a {
                if self.limit_lowered_by(e, id, m.bytes.len()) {
                    // Not fatal: the replies in flight are still read.
                    too_long = Some(e.clone());
                    answers.push(a);
                    continue;
                }
            }
            let fatal = matches!(&a, Err(e) if matches!(e.kind(), Kind::BrokerUnavailable | Kind::Timeout | Kind::Protocol) && !e.message().contains("MSG_CTRUNC"));
            answers.push(a.map_err(|e| renumber(e, m.first, specs.len())));
            if fatal {
                broke_off = true;
                break;
            }
        }
        // Sent again only if every reply was read.
        let again = too_long.filter(|_| lost.is_none() && !broke_off);
        let failed = lost.or_else(|| answers.iter().find_map(|a| a.as_ref().err().cloned()));
        let grants = answers.into_iter().filter_map(|a| a.ok()).flatten();
        match failed {
            None => {
                let mut out = Vec::with_capacity(specs.len());
                for (g, fd) in grants {
                    self.track(fd.as_raw_fd(), g.token);
                    out.push(Grant {
                        fd,
                        token: g.token,
                        port: g.port,
                        cached: g.cached,
                    });
                }
                Ok(Ok(out))
            }
            Some(e) => {
                // All or nothing: give back what the other messages got.
                let tokens: Vec<_> = grants.map(|(g, _fd)| g.token).collect();
                if !tokens.is_empty() {
                    let _ = self.release_many(&tokens);
                }
                match again {
                    Some(t) => Ok(Err(TooLong(t))),
                    None => Err(e),
                }
            }
        }
    }

    /// Receive the SOCKETS reply to message `id` of `count` specs. If its
    /// fds cannot all be received (MSG_CTRUNC, say at RLIMIT_NOFILE), its
    /// tokens are released, so the broker keeps nothing for it.
    fn sockets_reply(&mut self, id: u32, count: usize) -> Answer {
        debug_assert!(self.fds.is_empty());
        let mut lost = false;
        let res = self.recv_msg_lost(count, 0, &mut lost);
        let fds = std::mem::take(&mut self.fds);
        let len = match res {
            Ok(n) => n,
            Err(RecvError::Os(libc::EAGAIN)) => {
                return Err(Error::with_errno(
                    Kind::Timeout,
                    libc::ETIMEDOUT,
                    "sockpassd did not reply in time",
                ))
            }
            Err(RecvError::Os(e)) => {
                return Err(self.refusal(unavailable(e, "receiving from sockpassd")))
            }
            Err(e) => return Err(e.into_error("reply from sockpassd")),
        };
        if lost {
            // The fds did not fit under RLIMIT_NOFILE (MSG_CTRUNC); the
            // payload came whole: give its references back.
            let h = Header::parse(&self.rbuf[..len])?;
            if h.ty != ty::SOCKETS || h.id != id {
                return Err(RecvError::TruncatedFds.into_error("the reply to a batch request"));
            }
            let entries = proto::decode_sockets(&self.rbuf[proto::HEADER_LEN..len])?;
            let tokens: Vec<_> = entries.iter().map(|g| g.token).collect();
            let released = self.release_many(&tokens).is_ok();
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EMFILE,
                format!(
                    "cannot receive the {} sockets of a batch (MSG_CTRUNC: out of file descriptors?); {}",
                    entries.len(),
                    if released {
                        "their references were released"
                    } else {
                        "releasing their references failed too"
                    }
                ),
            ));
        }
        self.rbuf.truncate(len);
        if len == 0 && fds.is_empty() {
            return Err(unavailable(
                libc::ECONNRESET,
                "sockpassd closed the connection",
            ));
        }
        let h = Header::parse(&self.rbuf)?;
        let payload = &self.rbuf[proto::HEADER_LEN..];
        if h.ty == ty::ERROR && (h.id == 0 || h.id == id) {
            let e = proto::decode_error(payload)?;
            if h.id == 0 {
                // About the connection (its limit): the broker closes it.
                self.close_after(&e);
            }
            return Err(e);
        }
        if h.id != id {
            return Err(Error::protocol(format!(
                "reply for request {} while waiting for {id}",
                h.id
            )));
        }
        if h.ty != ty::SOCKETS {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to a batch request",
                h.ty
            )));
        }
        let entries = proto::decode_sockets(payload)?;
        if entries.len() != count || entries.iter().any(|g| g.reserved) || fds.len() != count {
            return Err(Error::protocol(format!(
                "a SOCKETS reply with {} entries and {} fds to a batch of {count}",
                entries.len(),
                fds.len()
            )));
        }
        Ok(entries.into_iter().zip(fds).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` specs `udp:127.0.0.1:PORT` with the application name `app`.
    fn specs(n: usize, app: &str) -> Vec<(SocketSpec, ShareMode, &str)> {
        (0..n)
            .map(|i| {
                let s = format!("udp:127.0.0.1:{}", 40000 + i).parse().unwrap();
                (s, ShareMode::Any, app)
            })
            .collect()
    }

    /// Pack to `limit` with ids from 1; check every message against the
    /// limit and its reply against the same limit; return the counts.
    fn counts(specs: &[(SocketSpec, ShareMode, &str)], limit: usize) -> Vec<usize> {
        let mut next = 0;
        let msgs = pack(Specs::Parsed(specs), limit, || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        // The same specs as text pack to the same bytes.
        let texts: Vec<String> = specs.iter().map(|(s, _, _)| s.to_string()).collect();
        let text: Vec<(&str, ShareMode, &str)> = specs
            .iter()
            .zip(&texts)
            .map(|((_, share, app), t)| (t.as_str(), *share, *app))
            .collect();
        let mut next = 0;
        let again = pack(Specs::Text(&text), limit, || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        assert!(msgs.iter().zip(&again).all(|(a, b)| a.bytes == b.bytes));
        assert_eq!(msgs.len(), again.len());
        let mut first = 0;
        for m in &msgs {
            assert!(
                m.bytes.len() <= limit,
                "{} bytes over {limit}",
                m.bytes.len()
            );
            let reply = proto::HEADER_LEN + 2 + m.count * proto::GRANT_ENTRY_LEN;
            assert!(reply <= limit, "a reply of {reply} bytes over {limit}");
            assert_eq!(m.first, first);
            first += m.count;
            // Each message decodes as the broker would, count and all.
            let h = Header::parse(&m.bytes).unwrap();
            match proto::decode_request(&h, &m.bytes[proto::HEADER_LEN..]).unwrap() {
                proto::Request::SocketMany(v) => assert_eq!(v.len(), m.count),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(first, specs.len());
        msgs.iter().map(|m| m.count).collect()
    }

    /// 64 specs go in one message to a broker that takes a page, in two to
    /// one that said 1024 (a broker before the page limit): its replies
    /// (28 bytes a grant) hold 36.
    #[test]
    fn a_batch_is_packed_to_the_brokers_limit() {
        let s = specs(64, "bench");
        assert_eq!(counts(&s, proto::MAX_MSG), [64]);
        assert_eq!(counts(&s, proto::MIN_MSG), [36, 28]);
        // The most one message carries, and one more.
        let s = specs(proto::MAX_REQUEST_BATCH + 1, "");
        assert_eq!(counts(&s, proto::MAX_MSG), [proto::MAX_REQUEST_BATCH, 1]);
        // Long names fill the request before the reply: bytes decide.
        let long = "a".repeat(proto::MAX_APP);
        let s = specs(64, &long);
        let c = counts(&s, proto::MIN_MSG);
        assert!(c.len() > 2 && c.iter().all(|&n| n < 36), "{c:?}");
        let c = counts(&s, proto::MAX_MSG);
        assert!(c.len() < 64 / 3, "{c:?}");
    }

    /// A spec as text that does not parse, or a built spec that is not
    /// valid, is refused before anything is packed, and named.
    #[test]
    fn a_bad_spec_is_named_before_packing() {
        let text = [
            ("udp:127.0.0.1:53", ShareMode::Any, ""),
            ("udp:nowhere", ShareMode::Any, ""),
        ];
        let e = pack(Specs::Text(&text), proto::MAX_MSG, || Ok(1))
            .err()
            .unwrap();
        assert_eq!(e.kind(), Kind::BadRequest);
        assert!(e.message().starts_with("spec 1 of 2: "), "{e}");
        let mut built: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
        built.options.backlog = Some(4);
        let parsed = [(built, ShareMode::Any, "")];
        let e = pack(Specs::Parsed(&parsed), proto::MAX_MSG, || Ok(1))
            .err()
            .unwrap();
        assert!(e.message().starts_with("spec 0 of 1: "), "{e}");
    }
}
