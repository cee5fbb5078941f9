//! The access policy with real uids: a policy file allowing and denying,
//! denials naming the rule and logged, a malformed file refusing start-up,
//! pick-up and release of others' tokens under the policy, and the socket
//! file's mode and group. Client processes run as `nobody` (uid 65534).

mod common;

use common::*;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

fn describe(r: sockpass::Result<impl Sized>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}: {}", e.kind(), e.message()),
    }
}

/// Child: connect to $SOCK and request each `SPEC SHARE` in $REQS (`;`
/// separated); print one result per request, `|` separated.
#[test]
#[ignore]
fn child_requests() {
    if !is_child() {
        return;
    }
    let mut c = Client::connect(std::env::var("SOCK").unwrap());
    let reqs = std::env::var("REQS").unwrap();
    let mut out = Vec::new();
    for r in reqs.split(';') {
        let (s, share) = r.split_once(' ').unwrap();
        let res = match &mut c {
            Ok(c) => describe(c.request_socket(&spec(s), share.parse().unwrap(), "child")),
            Err(e) => format!("{:?}: {}", e.kind(), e.message()),
        };
        out.push(res);
    }
    println!("@@ {}", out.join("|"));
}

/// Child: pick up $TOKEN from the broker at $SOCK.
#[test]
#[ignore]
fn child_pickup() {
    if !is_child() {
        return;
    }
    let mut c = Client::connect(std::env::var("SOCK").unwrap()).unwrap();
    let t = std::env::var("TOKEN").unwrap().parse().unwrap();
    println!("@@ {}", describe(c.pickup(&t)));
}

fn need_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {what}: needs root to run clients as nobody");
        return false;
    }
    true
}

#[test]
fn policy_file_allows_and_denies_by_uid_and_names_the_rule() {
    if !need_root("policy_file_allows_and_denies_by_uid_and_names_the_rule") {
        return;
    }
    let dir = temp_dir("policy");
    let pol = dir.join("policy.conf");
    std::fs::write(
        &pol,
        "# test policy\n\
         allow uid=0 ops=all\n\
         deny user=nobody port=6000-6999\n\
         allow user=nobody proto=udp addr=127.0.0.0/8 port=1024-65535 share=any,sameapp\n",
    )
    .unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path.clone(), &["--policy", &path_str(&pol)]);
    let hi = free_port(true);
    let hi = if (6000..7000).contains(&hi) {
        hi + 1000
    } else {
        hi
    };
    let reqs = [
        format!("udp:127.0.0.1:{hi} any"),
        "udp:127.0.0.1:6500 any".to_string(),
        format!("udp:127.0.0.1:{} none", hi),
        format!("tcp:127.0.0.1:{hi} any"),
        "udp:127.0.0.1:80 any".to_string(),
    ];
    let line = run_as_nobody(
        "child_requests",
        &[("SOCK", path_str(&path)), ("REQS", reqs.join(";"))],
    );
    let res: Vec<&str> = line.split('|').collect();
    assert_eq!(res.len(), 5, "{line}");
    assert_eq!(res[0], "ok");
    assert!(
        res[1].starts_with("NotAllowed") && res[1].contains("rule at policy.conf:3"),
        "{}",
        res[1]
    );
    for r in &res[2..] {
        assert!(
            r.starts_with("NotAllowed") && r.contains("deny by default"),
            "{r}"
        );
    }
    // Root, under rule 2, may request the low port.
    let mut root = b.client();
    root.request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "r")
        .unwrap();
    let log = b.log_text();
    assert!(log.contains("refused request from pid"), "{log}");
    assert!(
        log.contains(&format!("uid {NOBODY}")) && log.contains("policy.conf:3"),
        "{log}"
    );
}

#[test]
fn the_default_policy_file_is_read_when_present_and_no_policy_is_given() {
    if !need_root("the_default_policy_file_is_read_when_present_and_no_policy_is_given") {
        return;
    }
    let dir = temp_dir("policy-default-file");
    let pol = dir.join("policy.conf");
    // Denies nobody a port the built-in policy would give it.
    std::fs::write(&pol, "allow uid=0 ops=all\ndeny user=nobody\n").unwrap();
    let path = dir.join("sockpassd.sock");
    let env = [("SOCKPASSD_DEFAULT_POLICY", path_str(&pol))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = Broker::start_env(dir.clone(), path.clone(), &[], &env);
    let hi = free_port(true);
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&path)),
            ("REQS", format!("udp:127.0.0.1:{hi} any")),
        ],
    );
    assert!(
        line.starts_with("NotAllowed") && line.contains("rule at policy.conf:2"),
        "{line}"
    );
    drop(b);

    // --policy wins over the default file.
    let dir = temp_dir("policy-default-overridden");
    let other = dir.join("other.conf");
    std::fs::write(&other, "allow * port=1024-65535\n").unwrap();
    let path = dir.join("sockpassd.sock");
    let _b = Broker::start_env(
        dir.clone(),
        path.clone(),
        &["--policy", &path_str(&other)],
        &env,
    );
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&path)),
            ("REQS", format!("udp:127.0.0.1:{hi} any")),
        ],
    );
    assert_eq!(line, "ok");

    // A malformed default file stops the broker, naming the file and line
    // (the first broker's directory went with it).
    let pol = dir.join("policy.conf");
    std::fs::write(&pol, "allow uid=0\nallow nobody-knows\n").unwrap();
    let out = Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(dir.join("never.sock"))
        .env("SOCKPASSD_DEFAULT_POLICY", &pol)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("bad policy file {}", pol.display())) && err.contains(":2"),
        "{err}"
    );
}

#[test]
fn builtin_default_denies_privileged_ports_to_others() {
    if !need_root("builtin_default_denies_privileged_ports_to_others") {
        return;
    }
    let b = Broker::start("policydefault");
    let hi = free_port(true);
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&b.path)),
            (
                "REQS",
                format!("udp:127.0.0.1:{hi} any;udp:127.0.0.1:0 any;udp:127.0.0.1:53 any"),
            ),
        ],
    );
    let res: Vec<&str> = line.split('|').collect();
    assert_eq!(&res[..2], ["ok", "ok"], "{line}");
    assert!(res[2].starts_with("NotAllowed"), "{line}");
}

/// Root's requests for a privileged port leave its spec bytes remembered
/// as a cache hit; another uid sending the same bytes is still judged by the
/// policy, and refused in the same words as for a spec never requested.
#[test]
fn a_cache_hit_by_known_bytes_is_still_judged_by_the_policy() {
    if !need_root("a_cache_hit_by_known_bytes_is_still_judged_by_the_policy") {
        return;
    }
    let b = Broker::start("policyknown");
    let low = (600..1000u16)
        .find(|&p| can_bind(true, p))
        .expect("a free privileged UDP port");
    let s = format!("udp:127.0.0.1:{low}");
    let mut root = b.client();
    let held: Vec<_> = (0..3)
        .map(|_| {
            root.request_socket(&spec(&s), ShareMode::Any, "child")
                .unwrap()
        })
        .collect();
    assert!(held[2].cached);
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&b.path)),
            ("REQS", format!("{s} any;{s} any")),
        ],
    );
    let want = format!("NotAllowed: request of {s} denied for uid {NOBODY}");
    for r in line.split('|') {
        assert!(r.starts_with(&want), "{r}");
    }
    assert_eq!(b.status().sockets[0].refs, 3);
}

#[test]
fn privileged_options_are_refused_to_others_naming_rule_and_option() {
    if !need_root("privileged_options_are_refused_to_others_naming_rule_and_option") {
        return;
    }
    let hi = free_port(true);
    let hi2 = free_port(true);
    // Built-in default: root may, nobody may not.
    let b = Broker::start("policyopts");
    let reqs = [
        format!("udp:127.0.0.1:{hi}?transparent=1 any"),
        format!("udp:127.0.0.1:{hi}?mark=1 any"),
        format!("udp:127.0.0.1:{hi}?freebind=1 any"),
        format!("udp:127.0.0.1:{hi}?bindtodevice=lo any"),
    ];
    let line = run_as_nobody(
        "child_requests",
        &[("SOCK", path_str(&b.path)), ("REQS", reqs.join(";"))],
    );
    let res: Vec<&str> = line.split('|').collect();
    for (r, opt) in res
        .iter()
        .zip(["transparent", "mark", "freebind", "bindtodevice"])
    {
        assert!(
            r.starts_with("NotAllowed")
                && r.contains(&format!(
                    "option {opt} is not allowed by built-in default rule 2"
                )),
            "{line}"
        );
    }
    assert_eq!(b.status().counters.references, 0, "nothing was created");
    let log = b.log_text();
    assert!(
        log.contains(&format!("uid {NOBODY}")) && log.contains("option transparent"),
        "{log}"
    );
    let mut root = b.client();
    let g = root
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{hi}?transparent=1&mark=1")),
            ShareMode::None,
            "r",
        )
        .unwrap();
    assert_eq!(root.release(&g.token).unwrap(), 0);
    // Closed here too: UDP sockets have SO_REUSEADDR off, so the port is
    // free again only when no fd is left.
    drop(g);
    drop(b);

    // A policy file: refused by the rule that matched all but the option,
    // granted by a rule that lists it.
    let dir = temp_dir("policyopts-file");
    let sockdir = dir.join("socks");
    std::fs::create_dir(&sockdir).unwrap();
    let pol = dir.join("policy.conf");
    let deny_text = format!(
        "allow uid=0 ops=all opts=all\n\
         allow user=nobody proto=udp port=1024-65535\n\
         allow user=nobody path={}/\n",
        path_str(&sockdir)
    );
    std::fs::write(&pol, &deny_text).unwrap();
    let bdir = temp_dir("policyopts-deny");
    let path = bdir.join("sockpassd.sock");
    let reqs = [
        format!("udp:127.0.0.1:{hi}?transparent=1 any"),
        format!("udp:127.0.0.1:{hi2}?mark=1 any"),
        format!("unix:{}/root.sock?owner=0:0 any", path_str(&sockdir)),
        format!(
            "unix:{}/own.sock?owner={NOBODY}:{NOBODY} any",
            path_str(&sockdir)
        ),
    ];
    let b = Broker::start_at(bdir, path.clone(), &["--policy", &path_str(&pol)]);
    let line = run_as_nobody(
        "child_requests",
        &[("SOCK", path_str(&path)), ("REQS", reqs.join(";"))],
    );
    let res: Vec<&str> = line.split('|').collect();
    assert_eq!(res.len(), 4, "{line}");
    for (r, want) in res[..3].iter().zip([
        "option transparent is not allowed by rule at policy.conf:2",
        "option mark is not allowed by rule at policy.conf:2",
        "option owner is not allowed by rule at policy.conf:3",
    ]) {
        assert!(
            r.starts_with("NotAllowed") && r.contains(want),
            "{want}: {line}"
        );
    }
    assert!(!sockdir.join("root.sock").exists());
    // Its own uid and gid are not privileged.
    assert_eq!(res[3], "ok", "{line}");
    drop(b);

    let grant_text = deny_text
        .replace("port=1024-65535", "port=1024-65535 opts=transparent,mark")
        .replace("/\n", "/ opts=owner\n");
    std::fs::write(&pol, &grant_text).unwrap();
    let bdir = temp_dir("policyopts-grant");
    let path = bdir.join("sockpassd.sock");
    let b = Broker::start_at(bdir, path.clone(), &["--policy", &path_str(&pol)]);
    let line = run_as_nobody(
        "child_requests",
        &[("SOCK", path_str(&path)), ("REQS", reqs[..3].join(";"))],
    );
    assert_eq!(line, "ok|ok|ok", "{grant_text}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_policy_refuses_start_naming_the_line() {
    let dir = temp_dir("policybad");
    let pol = dir.join("bad.conf");
    std::fs::write(&pol, "allow uid=0\n# fine so far\nallow * port=99999\n").unwrap();
    let out = Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--policy")
        .arg(&pol)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.conf:3") && err.contains("invalid port"),
        "{err}"
    );
    assert!(!dir.join("s.sock").exists(), "no socket was bound");
    let missing = Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--policy")
        .arg(dir.join("nonexistent.conf"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read policy file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pickup_follows_the_policy() {
    if !need_root("pickup_follows_the_policy") {
        return;
    }
    let dir = temp_dir("policypickup");
    let pol = dir.join("policy.conf");
    std::fs::write(
        &pol,
        "allow uid=0 ops=all\nallow user=nobody ops=pickup proto=udp\n",
    )
    .unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path.clone(), &["--policy", &path_str(&pol)]);
    let mut mgr = b.client();
    // Privileged ports are fine: root reserved them, the token is the grant.
    let ok = mgr
        .reserve_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "c")
        .unwrap();
    let denied = mgr
        .reserve_socket(&spec("tcp:127.0.0.1:0"), ShareMode::Any, "c")
        .unwrap();
    let line = run_as_nobody(
        "child_pickup",
        &[("SOCK", path_str(&path)), ("TOKEN", ok.token.to_string())],
    );
    assert_eq!(line, "ok");
    let line = run_as_nobody(
        "child_pickup",
        &[
            ("SOCK", path_str(&path)),
            ("TOKEN", denied.token.to_string()),
        ],
    );
    assert!(
        line.starts_with("NotAllowed") && line.contains("pickup of tcp:127.0.0.1:"),
        "{line}\n{}",
        b.log_text()
    );
    // The denied reservation is untouched: still pending, and root may collect it.
    let st = b.status();
    assert_eq!(st.counters.reservations, 1);
    let g = mgr.pickup(&denied.token).unwrap();
    assert_eq!(g.port, denied.port);
    assert!(b.log_text().contains("refused request"), "{}", b.log_text());
}

#[test]
fn releasing_others_tokens_needs_the_release_operation() {
    let dir = temp_dir("policyrelease");
    let strict = dir.join("strict.conf");
    let open = dir.join("open.conf");
    std::fs::write(&strict, "allow * ops=request,pickup\n").unwrap();
    std::fs::write(&open, "allow * ops=request,pickup,release\n").unwrap();
    for (pol, may) in [(&strict, false), (&open, true)] {
        let b = Broker::start_at(
            temp_dir("policyrelease-b"),
            dir.join(format!("s{may}.sock")),
            &["--policy", &path_str(pol)],
        );
        let mut holder = b.client();
        let mut other = b.client();
        let g = holder
            .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "h")
            .unwrap();
        let r = other.release(&g.token);
        if may {
            assert_eq!(r.unwrap(), 0);
            let e = holder.release(&g.token).unwrap_err();
            assert_eq!(e.kind(), Kind::UnknownToken);
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), Kind::UnknownToken);
            assert!(e.message().contains("another client"), "{e}");
            assert_eq!(b.status().counters.references, 1);
            assert_eq!(holder.release(&g.token).unwrap(), 0);
        }
    }
    // A reserver may always cancel its own reservation.
    let b = Broker::start_at(
        temp_dir("policycancel"),
        dir.join("c.sock"),
        &["--policy", &path_str(&strict)],
    );
    let mut mgr = b.client();
    let r = mgr
        .reserve_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "m")
        .unwrap();
    assert_eq!(mgr.release(&r.token).unwrap(), 0);
    assert_eq!(b.status().counters.reservations, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_file_mode_and_group() {
    if !need_root("socket_file_mode_and_group") {
        return;
    }
    let b = Broker::start_with(
        "policymode",
        &["--socket-mode", "0660", "--socket-group", "nogroup"],
    );
    let m = std::fs::metadata(&b.path).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o660);
    assert_eq!(m.gid(), NOBODY);
    // nobody is in group nogroup: it may connect.
    let hi = free_port(true);
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&b.path)),
            ("REQS", format!("udp:127.0.0.1:{hi} any")),
        ],
    );
    assert_eq!(line, "ok");

    let b = Broker::start_with("policymode2", &["--socket-mode", "0600"]);
    let line = run_as_nobody(
        "child_requests",
        &[
            ("SOCK", path_str(&b.path)),
            ("REQS", format!("udp:127.0.0.1:{hi} any")),
        ],
    );
    assert!(
        line.starts_with("BrokerUnavailable") && line.contains("ermission denied"),
        "{line}"
    );
}

#[test]
fn shipped_example_policy_parses() {
    let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/policy.conf");
    let p = sockpass_broker::policy::Policy::load(&f).unwrap();
    assert!(p.rules.len() >= 4);
}
