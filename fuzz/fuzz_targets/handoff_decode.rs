//! `handoff::State::decode`, which rebuilds the broker from the state memfd
//! after an upgrade. Must never panic or leak: every fd handed in is either
//! in the state or closed, on success and on error. A state that decodes
//! re-encodes to bytes that decode and re-encode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass_broker::handoff::State;
use std::os::fd::{AsRawFd, OwnedFd};

fuzz_target!(|data: &[u8]| {
    let Some((&k, bytes)) = data.split_first() else {
        return;
    };
    // 0 to 4 fds come with the bytes, as they would from the old image.
    let fds: Vec<OwnedFd> = (0..k % 5)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into())
        .collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    match State::decode(bytes, fds) {
        Ok(st) => {
            let (b1, f1) = st.encode();
            let st2 = State::decode(&b1, f1).expect("a re-encoded state decodes");
            let (b2, f2) = st2.encode();
            assert_eq!(b1, b2, "encode(decode(x)) is stable");
            drop(f2);
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
    // Single-threaded: nothing else can have reused these numbers.
    for fd in raw {
        assert!(!sockpass::sys::fd_is_open(fd), "fd {fd} leaked");
    }
});
