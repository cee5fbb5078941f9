use super::*;
use crate::fdpass::RecvError;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn whole_token_hash_sees_every_byte() {
    // Tokens that differ only past their first 8 bytes (as a broker
    // counting in the last bytes would make them) must not share a hash.
    let s = KeyedState::default();
    let hashes: HashSet<u64> = (0..1000u64)
        .map(|i| {
            let mut b = [7u8; Token::LEN];
            b[16..].copy_from_slice(&i.to_le_bytes());
            s.hash_one(WholeToken(Token::from_bytes(b)))
        })
        .collect();
    assert_eq!(hashes.len(), 1000);
}

/// A spec built field by field, not parsed, is validated before anything
/// is sent: the peer here (not a broker) receives nothing.
#[test]
fn an_invalid_built_spec_is_refused_before_sending() {
    let (mine, peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
    let mut c = Client::new(mine, PathBuf::new());
    // Were it sent, the wait for a reply ends instead of hanging.
    c.set_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut built: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
    built.options.backlog = Some(4);
    let e = c.request_socket(&built, ShareMode::Any, "k").unwrap_err();
    assert_eq!(e.kind(), Kind::BadRequest);
    assert!(e.message().contains("TCP only"), "{e}");
    let e = c.reserve_socket(&built, ShareMode::Any, "k").unwrap_err();
    assert_eq!(e.kind(), Kind::BadRequest);
    let mut buf = [0u8; 64];
    assert_eq!(
        crate::fdpass::recv_fds(peer.as_fd(), &mut buf, 0, libc::MSG_DONTWAIT).unwrap_err(),
        RecvError::Os(libc::EAGAIN),
        "nothing was sent"
    );
}

/// A protocol error answering a message of at most MIN_MSG bytes is no
/// refusal as too long (every broker takes that much): the call fails and
/// the connection is closed, as before; the limit is left as it was.
#[test]
fn a_protocol_error_to_a_short_message_closes_the_connection() {
    let spec: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
    for release in [false, true] {
        let (mine, peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut c = Client::new(mine, PathBuf::new());
        c.set_timeout(Some(Duration::from_secs(5))).unwrap();
        // As if HELLO_OK had said a page.
        c.broker_max_msg = proto::MAX_MSG;
        // The peer answers the one message it gets as an old broker
        // answers one too long for it.
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; proto::MAX_MSG];
            let r = crate::fdpass::recv_fds(peer.as_fd(), &mut buf, 0, 0).unwrap();
            let h = Header::parse(&buf[..r.len]).unwrap();
            let mut out = Vec::new();
            let e = Error::protocol(format!("message larger than {} bytes", proto::MIN_MSG));
            proto::encode_error(&mut out, h.id, &e);
            send_fds(peer.as_fd(), &out, &[], 0).unwrap();
            (r.len, peer)
        });
        let e = if release {
            let t = Token::from_bytes([1; Token::LEN]);
            c.release_many(&[t; 3]).unwrap_err()
        } else {
            let specs = vec![(spec.clone(), ShareMode::Any, "k"); 3];
            c.request_many(&specs).unwrap_err()
        };
        let (len, _peer) = answer.join().unwrap();
        assert!(len <= proto::MIN_MSG, "{len}");
        assert_eq!(e.kind(), Kind::Protocol, "{e}");
        assert!(!c.is_usable(), "the connection is closed");
        assert_eq!(c.broker_max_msg, proto::MAX_MSG);
    }
}
