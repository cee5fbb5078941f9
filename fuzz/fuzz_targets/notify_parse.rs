//! `readiness::parse_notify`, which reads sd_notify messages a spawned child
//! (any program) sends. Must never panic; whatever parses is KEY=VALUE lines
//! that print back to a message that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass::parse_notify;

fuzz_target!(|data: &[u8]| {
    match parse_notify(data) {
        Ok(pairs) => {
            assert!(!pairs.is_empty());
            let mut again = Vec::new();
            for (k, v) in &pairs {
                assert!(!k.is_empty());
                assert!(k
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_'));
                assert!(!v.contains(&b'\n'));
                again.extend_from_slice(k);
                again.push(b'=');
                again.extend_from_slice(v);
                again.push(b'\n');
            }
            assert_eq!(parse_notify(&again).unwrap(), pairs);
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
});
