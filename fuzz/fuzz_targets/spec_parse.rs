//! The socket spec parser (string form) and decoder (wire form). Must never
//! panic; whatever parses prints back to a string that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass::SocketSpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(spec) = s.parse::<SocketSpec>() {
            let printed = spec.to_string();
            let again: SocketSpec = printed.parse().expect("printed spec parses");
            assert_eq!(again, spec);
            let mut wire = Vec::new();
            spec.encode(&mut wire);
            let (back, used) = SocketSpec::decode(&wire).expect("encoded spec decodes");
            assert_eq!(back, spec);
            assert_eq!(used, wire.len());
        }
    }
    if let Ok((spec, _)) = SocketSpec::decode(data) {
        let _ = spec.canonical();
        let _ = spec.to_string();
    }
});
