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
