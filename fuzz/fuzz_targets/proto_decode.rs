//! Everything the broker and the client decode from the wire: headers,
//! requests, error replies and status rows. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass::proto::{self, Header, Reader, StatusRow};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let payload = &data[proto::HEADER_LEN..];
        // A decoded request re-encodes to a request that decodes the same.
        if let Ok(proto::Request::Socket(r)) = proto::decode_request(&h, payload) {
            let mut out = Vec::new();
            proto::encode_request(&mut out, h.id, &r.spec, r.share, r.app, r.flags).unwrap();
            let h2 = Header::parse(&out).unwrap();
            match proto::decode_request(&h2, &out[proto::HEADER_LEN..]).unwrap() {
                // The same request; its spec's bytes (`wire`) may differ
                // (the options' order is the encoder's).
                proto::Request::Socket(r2) => assert_eq!(
                    (&r2.spec, r2.share, r2.app, r2.flags),
                    (&r.spec, r.share, r.app, r.flags)
                ),
                other => panic!("re-encoded request decoded as {other:?}"),
            }
        }
        // A decoded RELEASE_MANY re-encodes to the same payload.
        if let Ok(proto::Request::ReleaseMany(ts)) = proto::decode_request(&h, payload) {
            let tokens: Vec<_> = ts.iter().collect();
            let mut out = Vec::new();
            proto::encode_release_many(&mut out, h.id, &tokens).unwrap();
            assert_eq!(&out[proto::HEADER_LEN..], payload);
        }
        // A RELEASED_MANY reply, for as many tokens as it claims (a batch at most).
        let n = payload
            .get(..2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        let tokens = vec![
            sockpass::Token::from_bytes([1; sockpass::Token::LEN]);
            n.min(proto::MAX_RELEASE_BATCH)
        ];
        let _ = proto::decode_released_many(payload, &tokens);
        let _ = proto::decode_error(payload);
    }
    let mut r = Reader::new(data);
    while StatusRow::decode(&mut r).is_ok() {}
});
