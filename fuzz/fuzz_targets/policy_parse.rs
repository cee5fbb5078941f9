//! The policy file parser. Must never panic, whatever the text; a policy
//! that parses must answer every check (allow or a denial naming a rule or
//! the default) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass_broker::policy::{Op, Policy};
use sockpass::sys::Creds;
use sockpass::{ShareMode, SocketSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The last line, if it is a spec, is what the parsed policy is asked about.
    let (body, probe) = text.rsplit_once('\n').unwrap_or((text, ""));
    let Ok(policy) = Policy::parse(body, "fuzz.conf") else {
        return;
    };
    let spec: SocketSpec = probe
        .parse()
        .unwrap_or_else(|_| "udp:127.0.0.1:53".parse().unwrap());
    for uid in [0, 65534] {
        let creds = Creds { pid: 1, uid, gid: uid };
        for op in [Op::Request, Op::Pickup, Op::ReleaseOther] {
            for share in [ShareMode::None, ShareMode::SameApp, ShareMode::Any] {
                if let Err(e) = policy.check_op(op, &creds, &spec, share) {
                    assert!(!e.message().is_empty());
                }
            }
        }
    }
});
