//! The policy file parser. Must never panic, whatever the text; a policy
//! that parses must answer every check (allow or a denial naming a rule or
//! the default) without panicking, and give every uid a quota (`limit`
//! lines over the flags' defaults) that a named line decides key by key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockpass_broker::policy::{Op, Policy};
use sockpass_broker::quota;
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
    let base = sockpass_broker::broker::Limits::default().uid_quota();
    for (uid, privileged) in [(0, true), (1000, false), (65534, false)] {
        let q = quota::resolve(base, &policy.limits, uid, privileged);
        let named = |u| policy.limits.iter().any(|l| l.who == quota::QuotaWho::Uid(u));
        if !named(uid) && !named(u32::MAX - 1) {
            let expect = if privileged {
                quota::Quota::UNLIMITED
            } else {
                quota::resolve(base, &policy.limits, u32::MAX - 1, false)
            };
            assert_eq!(q, expect, "a uid without a line gets the shared quota");
        }
    }
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
