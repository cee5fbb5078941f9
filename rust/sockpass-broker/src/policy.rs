//! Who may ask for what. The broker asks the policy before it creates or
//! shares a socket, before a pick-up, and before a client releases a token
//! it does not hold. The first rule that matches the client, the operation
//! and the request decides; what no rule matches is denied (deny by default).
//!
//! Socket options that take a privilege the client may not have
//! ([`Opt`]: transparent, freebind, mark, bindtodevice, an owner other than
//! the client itself) are allowed only by a rule whose `opts=` lists them.
//!
//! The built-in default suits a first run: root may request anything; others
//! may request port 0 (ephemeral) and ports from 1024 up, without privileged
//! options; anyone holding a reservation token may pick it up; nobody may
//! release another client's token. The file format is in docs/POLICY.md and
//! `contrib/policy.conf`.

use crate::quota::QuotaLine;
use sockpass::sys::Creds;
use sockpass::ShareMode;
use sockpass::{Error, Kind, Result};
use sockpass::{Proto, SocketSpec};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Anyone,
    Uid(u32),
    Gid(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// What a client asks to do with a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or share a socket (also: reserve one for someone else).
    Request,
    /// Pick up a reservation by token.
    Pickup,
    /// Release a token that another connection holds.
    ReleaseOther,
}

impl Op {
    const ALL: [Op; 3] = [Op::Request, Op::Pickup, Op::ReleaseOther];

    fn bit(self) -> u8 {
        match self {
            Op::Request => 1,
            Op::Pickup => 2,
            Op::ReleaseOther => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Request => "request",
            Op::Pickup => "pickup",
            Op::ReleaseOther => "release",
        }
    }
}

/// A socket option a client could not set on a socket of its own, or that
/// reaches past what the rule's other keys describe. A request that uses one
/// needs a rule whose `opts=` lists it.
///
/// - `transparent` (IP_TRANSPARENT) and `mark` (SO_MARK) need CAP_NET_ADMIN
///   (or CAP_NET_RAW);
/// - `freebind` binds an address the host does not have, and `bindtodevice`
///   ties the socket to an interface: neither is visible to `addr=`;
/// - `owner` makes a Unix socket file belong to another user or group (the
///   client's own uid and primary gid are not privileged).
///
/// `rcvbuf`/`sndbuf` are not here: the broker sets SO_RCVBUF/SO_SNDBUF, which
/// the kernel caps at the sysctl maximum, never the *FORCE variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    Transparent,
    Freebind,
    Mark,
    BindToDevice,
    Owner,
}

impl Opt {
    pub const ALL: [Opt; 5] = [
        Opt::Transparent,
        Opt::Freebind,
        Opt::Mark,
        Opt::BindToDevice,
        Opt::Owner,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Opt::Transparent => "transparent",
            Opt::Freebind => "freebind",
            Opt::Mark => "mark",
            Opt::BindToDevice => "bindtodevice",
            Opt::Owner => "owner",
        }
    }

    /// The privileged options `spec` asks for (bits of [`Opt`]), for a
    /// client with `creds`.
    pub fn used(spec: &SocketSpec, creds: &Creds) -> u8 {
        let o = &spec.options;
        let mut m = 0;
        if o.transparent == Some(true) {
            m |= Opt::Transparent.bit();
        }
        if o.freebind == Some(true) {
            m |= Opt::Freebind.bit();
        }
        // Setting SO_MARK needs the capability whatever the value.
        if o.mark.is_some() {
            m |= Opt::Mark.bit();
        }
        if o.bindtodevice.is_some() {
            m |= Opt::BindToDevice.bit();
        }
        if o.owner.is_some_and(|own| own != (creds.uid, creds.gid)) {
            m |= Opt::Owner.bit();
        }
        m
    }

    fn first_in(bits: u8) -> Option<Opt> {
        Opt::ALL.into_iter().find(|o| bits & o.bit() != 0)
    }
}

const ALL_OPTS: u8 = 0x1f;

/// One rule: who it applies to, what it matches, and what it decides.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Where the rule came from ("built-in default rule 1", "policy.conf:7").
    pub origin: String,
    pub action: Action,
    pub who: Who,
    /// Operations the rule covers (bits of [`Op`]).
    pub ops: u8,
    /// None matches every protocol.
    pub protos: Option<Vec<Proto>>,
    /// Empty matches every address; else (network, prefix length).
    pub nets: Vec<(IpAddr, u8)>,
    /// Empty matches every port.
    pub ports: Vec<RangeInclusive<u16>>,
    /// None matches every share mode.
    pub shares: Option<Vec<ShareMode>>,
    /// Empty matches every socket; else Unix sockets under one of these
    /// directories (or at one of these paths).
    pub paths: Vec<String>,
    /// Privileged options (bits of [`Opt`]), for requests only. An allow
    /// rule matches only requests whose privileged options are all in this
    /// set (none by default). A deny rule with a non-empty set matches only
    /// requests that use one of them; with an empty set, any request.
    pub opts: u8,
}

impl Rule {
    fn applies_to(&self, c: &Creds, op: Op) -> bool {
        if self.ops & op.bit() == 0 {
            return false;
        }
        match self.who {
            Who::Anyone => true,
            Who::Uid(u) => c.uid == u,
            Who::Gid(g) => c.gid == g,
        }
    }

    /// Does the rule match `spec` and `share`, options aside?
    fn matches(&self, spec: &SocketSpec, share: ShareMode) -> bool {
        if let Some(p) = &self.protos {
            if !p.contains(&spec.proto) {
                return false;
            }
        }
        let unix = spec.proto.is_unix();
        // Address ranges match IP sockets only, port ranges UDP and TCP only,
        // paths Unix sockets only: a rule never matches a socket its keys
        // cannot describe.
        if !self.nets.is_empty()
            && (unix || !self.nets.iter().any(|(n, l)| in_net(&spec.addr, n, *l)))
        {
            return false;
        }
        if !self.ports.is_empty()
            && (!matches!(spec.proto, Proto::Udp | Proto::Tcp)
                || !self.ports.iter().any(|r| r.contains(&spec.port)))
        {
            return false;
        }
        if !self.paths.is_empty() && (!unix || !self.paths.iter().any(|p| under(&spec.path, p))) {
            return false;
        }
        if let Some(s) = &self.shares {
            if !s.contains(&share) {
                return false;
            }
        }
        true
    }
}

/// Is `path` the directory or file `prefix`, or inside it?
fn under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
}

/// Is `a` inside `net/len`?
pub fn in_net(a: &IpAddr, net: &IpAddr, len: u8) -> bool {
    use std::net::IpAddr::*;
    match (a, net) {
        (V4(a), V4(n)) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32) as u32)
            };
            u32::from(*a) & m == u32::from(*n) & m
        }
        (V6(a), V6(n)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128) as u32)
            };
            u128::from(*a) & m == u128::from(*n) & m
        }
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// `limit` lines: per-uid quotas over the flags' defaults.
    pub limits: Vec<QuotaLine>,
    /// May references of different uids share one socket (each asked for
    /// `any`)? `share-across-uids no` forbids it; `sameapp` never crosses
    /// uids either way.
    pub share_across_uids: bool,
}

const ALL_OPS: u8 = 7;

impl Policy {
    /// Root may request anything; everyone may request port 0 and
    /// 1024–65535, and pick up a reservation whose token they hold. Nobody
    /// may release another client's token (that takes an `ops=release` rule).
    pub fn builtin() -> Policy {
        let rule = |origin: &str, who, ops, ports, opts| Rule {
            origin: origin.into(),
            action: Action::Allow,
            who,
            ops,
            protos: None,
            nets: vec![],
            ports,
            shares: None,
            paths: vec![],
            opts,
        };
        Policy {
            rules: vec![
                rule(
                    "built-in default rule 1 (root may request anything)",
                    Who::Uid(0),
                    Op::Request.bit(),
                    vec![],
                    ALL_OPTS,
                ),
                rule(
                    "built-in default rule 2 (others may request UDP or TCP port 0 or 1024-65535, without privileged options)",
                    Who::Anyone,
                    Op::Request.bit(),
                    vec![0..=0, 1024..=65535],
                    0,
                ),
                rule(
                    "built-in default rule 3 (anyone holding a reservation token may pick it up)",
                    Who::Anyone,
                    Op::Pickup.bit(),
                    vec![],
                    0,
                ),
            ],
            limits: Vec::new(),
            share_across_uids: true,
        }
    }

    /// Allow or deny a socket request from `creds`. A denial names its rule.
    pub fn check(&self, creds: &Creds, spec: &SocketSpec, share: ShareMode) -> Result<()> {
        self.check_op(Op::Request, creds, spec, share)
    }

    /// Allow or deny `op` on a socket `spec` (held with `share`) by `creds`.
    /// Privileged options count for requests only: a pick-up or release
    /// concerns a socket someone was already allowed to request.
    pub fn check_op(
        &self,
        op: Op,
        creds: &Creds,
        spec: &SocketSpec,
        share: ShareMode,
    ) -> Result<()> {
        let used = if op == Op::Request {
            Opt::used(spec, creds)
        } else {
            0
        };
        // The first allow rule that matched all but an option: named if
        // nothing else allows the request.
        let mut short: Option<(&Rule, Opt)> = None;
        for r in &self.rules {
            if !(r.applies_to(creds, op) && r.matches(spec, share)) {
                continue;
            }
            let opts_match = match r.action {
                Action::Allow => used & !r.opts == 0,
                Action::Deny => r.opts == 0 || used & r.opts != 0,
            };
            if !opts_match {
                if r.action == Action::Allow && short.is_none() {
                    short = Opt::first_in(used & !r.opts).map(|o| (r, o));
                }
                continue;
            }
            return match r.action {
                Action::Allow => Ok(()),
                Action::Deny => Err(Error::with_errno(
                    Kind::NotAllowed,
                    libc::EACCES,
                    format!(
                        "{} of {spec} denied for uid {} by {}",
                        op.as_str(),
                        creds.uid,
                        r.origin
                    ),
                )),
            };
        }
        if let Some((r, o)) = short {
            return Err(Error::with_errno(
                Kind::NotAllowed,
                libc::EACCES,
                format!(
                    "{} of {spec} denied for uid {}: option {} is not allowed by {} (a rule needs opts={})",
                    op.as_str(),
                    creds.uid,
                    o.as_str(),
                    r.origin,
                    o.as_str()
                ),
            ));
        }
        Err(Error::with_errno(
            Kind::NotAllowed,
            libc::EACCES,
            format!(
                "{} of {spec} denied for uid {}: no policy rule allows it (deny by default)",
                op.as_str(),
                creds.uid
            ),
        ))
    }

    /// Read a policy file. Errors name the file and line.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::os(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot read policy file {}", path.display()),
            )
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Policy::parse(&text, &name)
    }

    /// Parse the text of a policy file; `name` is used in rule origins and
    /// error messages (`name:LINE`).
    pub fn parse(text: &str, name: &str) -> Result<Policy> {
        let mut rules = Vec::new();
        let mut limits = Vec::new();
        let mut across: Option<bool> = None;
        for (i, line) in text.lines().enumerate() {
            let at = format!("{name}:{}", i + 1);
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("limit ") {
                let l = QuotaLine::parse(rest)
                    .and_then(|l| crate::quota::check_unique(&limits, &l).map(|_| l))
                    .map_err(|e| Error::bad_request(format!("{at}: {}", e.message())))?;
                limits.push(l);
                continue;
            }
            if let Some(v) = line.strip_prefix("share-across-uids") {
                let v = match v.split_whitespace().collect::<Vec<_>>()[..] {
                    ["yes"] => true,
                    ["no"] => false,
                    _ => {
                        return Err(Error::bad_request(format!(
                            "{at}: expected share-across-uids yes or no, got {line:?}"
                        )))
                    }
                };
                if across.replace(v).is_some() {
                    return Err(Error::bad_request(format!(
                        "{at}: share-across-uids given twice"
                    )));
                }
                continue;
            }
            let rule = parse_rule(line, &at)
                .map_err(|e| Error::bad_request(format!("{at}: {}", e.message())))?;
            rules.push(rule);
        }
        Ok(Policy {
            rules,
            limits,
            share_across_uids: across.unwrap_or(true),
        })
    }
}

fn parse_rule(line: &str, at: &str) -> Result<Rule> {
    let mut words = line.split_whitespace();
    let action = match words.next() {
        Some("allow") => Action::Allow,
        Some("deny") => Action::Deny,
        Some(w) => {
            return Err(Error::bad_request(format!(
                "expected allow, deny, limit or share-across-uids, got {w:?}"
            )))
        }
        None => unreachable!("empty lines are skipped"),
    };
    let who = match words.next() {
        Some("*") | Some("anyone") => Who::Anyone,
        Some(w) => {
            let (k, v) = w.split_once('=').ok_or_else(|| {
                Error::bad_request(format!(
                    "expected who the rule is for (*, uid=N, gid=N, user=NAME, group=NAME), got {w:?}"
                ))
            })?;
            match k {
                "uid" => Who::Uid(number(k, v)?),
                "gid" => Who::Gid(number(k, v)?),
                "user" => Who::Uid(lookup_user(v)?),
                "group" => Who::Gid(sockpass::sys::lookup_group(v)?),
                _ => {
                    return Err(Error::bad_request(format!(
                        "expected uid=, gid=, user= or group=, got {k:?}"
                    )))
                }
            }
        }
        None => {
            return Err(Error::bad_request(
                "missing who the rule is for (*, uid=N, gid=N, user=NAME, group=NAME)",
            ))
        }
    };
    let mut rule = Rule {
        origin: format!("rule at {at}"),
        action,
        who,
        ops: Op::Request.bit(),
        protos: None,
        nets: vec![],
        ports: vec![],
        shares: None,
        paths: vec![],
        opts: 0,
    };
    let mut seen = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| Error::bad_request(format!("expected KEY=VALUE, got {w:?}")))?;
        if seen.contains(&k) {
            return Err(Error::bad_request(format!("{k}= given twice")));
        }
        seen.push(k);
        let items = v.split(',').map(str::trim);
        if v.is_empty() {
            return Err(Error::bad_request(format!("{k}= has no value")));
        }
        match k {
            "proto" => {
                rule.protos = Some(items.map(str::parse).collect::<Result<Vec<Proto>>>()?);
            }
            "share" => {
                rule.shares = Some(items.map(str::parse).collect::<Result<Vec<ShareMode>>>()?);
            }
            "addr" => {
                for a in items {
                    rule.nets.push(parse_net(a)?);
                }
            }
            "port" => {
                for p in items {
                    rule.ports.push(parse_port_range(p)?);
                }
            }
            "path" => {
                for p in items {
                    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                        return Err(Error::bad_request(format!(
                            "path {p:?} must be absolute, without '..'"
                        )));
                    }
                    rule.paths.push(p.to_string());
                }
            }
            "ops" => {
                rule.ops = 0;
                for o in items {
                    rule.ops |= match o {
                        "all" => ALL_OPS,
                        _ => Op::ALL
                            .iter()
                            .find(|x| x.as_str() == o)
                            .ok_or_else(|| {
                                Error::bad_request(format!(
                                    "unknown operation {o:?} (expected request, pickup, release or all)"
                                ))
                            })?
                            .bit(),
                    };
                }
            }
            "opts" => {
                for o in items {
                    rule.opts |= match o {
                        "all" => ALL_OPTS,
                        "none" => 0,
                        _ => Opt::ALL
                            .iter()
                            .find(|x| x.as_str() == o)
                            .ok_or_else(|| {
                                Error::bad_request(format!(
                                    "unknown option {o:?} (expected transparent, freebind, mark, bindtodevice, owner, all or none)"
                                ))
                            })?
                            .bit(),
                    };
                }
            }
            _ => {
                return Err(Error::bad_request(format!(
                    "unknown key {k:?} (expected proto, addr, port, path, share, ops or opts)"
                )))
            }
        }
    }
    Ok(rule)
}

fn number(k: &str, v: &str) -> Result<u32> {
    v.parse()
        .map_err(|_| Error::bad_request(format!("{k}={v}: not a number")))
}

fn parse_net(s: &str) -> Result<(IpAddr, u8)> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = sockpass::parse_addr(a)
        .map_err(|_| Error::bad_request(format!("invalid address range {s:?}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| Error::bad_request(format!("invalid prefix length in {s:?}")))?,
    };
    Ok((addr, len))
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>> {
    let p = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| Error::bad_request(format!("invalid port {x:?} (0..=65535)")))
    };
    let r = match s.split_once('-') {
        Some((a, b)) => p(a)?..=p(b)?,
        None => p(s)?..=p(s)?,
    };
    if r.is_empty() {
        return Err(Error::bad_request(format!("empty port range {s:?}")));
    }
    Ok(r)
}

pub(crate) fn lookup_user(name: &str) -> Result<u32> {
    sockpass::sys::lookup_user(name).map(|(uid, _)| uid)
}

pub use sockpass::sys::group_id;

impl Default for Policy {
    fn default() -> Self {
        Policy::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, gid: u32) -> Creds {
        Creds { pid: 1, uid, gid }
    }

    #[test]
    fn share_across_uids_directive() {
        assert!(Policy::builtin().share_across_uids);
        assert!(Policy::parse("allow *", "p").unwrap().share_across_uids);
        let p = Policy::parse("share-across-uids no\nallow *", "p").unwrap();
        assert!(!p.share_across_uids && p.rules.len() == 1);
        assert!(
            Policy::parse("share-across-uids yes", "p")
                .unwrap()
                .share_across_uids
        );
        for bad in [
            "share-across-uids",
            "share-across-uids maybe",
            "share-across-uids no no",
            "share-across-uids no\nshare-across-uids yes",
        ] {
            let e = Policy::parse(bad, "p").unwrap_err();
            assert!(e.message().contains("share-across-uids"), "{bad}: {e}");
        }
    }

    #[test]
    fn builtin_default() {
        let p = Policy::builtin();
        let root = creds(0, 0);
        let user = creds(1000, 1000);
        let low: SocketSpec = "udp:0.0.0.0:53".parse().unwrap();
        let high: SocketSpec = "udp:0.0.0.0:5353".parse().unwrap();
        assert!(p.check(&root, &low, ShareMode::None).is_ok());
        let e = p.check(&user, &low, ShareMode::None).unwrap_err();
        assert_eq!(e.kind(), Kind::NotAllowed);
        assert!(e.message().contains("deny by default"), "{e}");
        assert!(p.check(&user, &high, ShareMode::Any).is_ok());
        // Raw and Unix sockets are root's unless a policy file says otherwise.
        for s in ["raw:icmp:127.0.0.1", "unix:/tmp/x.sock"] {
            let s: SocketSpec = s.parse().unwrap();
            assert!(p.check(&user, &s, ShareMode::Any).is_err(), "{s}");
            assert!(p.check(&root, &s, ShareMode::Any).is_ok(), "{s}");
        }
        assert!(p.check_op(Op::Pickup, &user, &low, ShareMode::Any).is_ok());
        assert!(p
            .check_op(Op::ReleaseOther, &user, &high, ShareMode::Any)
            .is_err());
        assert!(p
            .check_op(Op::ReleaseOther, &root, &high, ShareMode::Any)
            .is_err());
    }

    #[test]
    fn file_rules_first_match_decides() {
        let text = "\
# comment
deny  uid=1001 port=8000-8999      # a trailing comment
allow gid=50 proto=tcp addr=10.0.0.0/8,::1 port=80,443 share=any,sameapp
allow * port=1024-65535 ops=request,pickup
allow user=root ops=all
allow * path=/run/app/,/tmp/one.sock proto=unix
";
        let p = Policy::parse(text, "p.conf").unwrap();
        assert_eq!(p.rules.len(), 5);
        let u = |x: &str| SocketSpec::unix(Proto::UnixStream, x);
        assert!(p
            .check(&creds(7, 7), &u("/run/app/s"), ShareMode::Any)
            .is_ok());
        assert!(p
            .check(&creds(7, 7), &u("/tmp/one.sock"), ShareMode::Any)
            .is_ok());
        assert!(p
            .check(&creds(7, 7), &u("/run/apple"), ShareMode::Any)
            .is_err());
        assert!(p
            .check(&creds(7, 7), &u("/tmp/one.sockx"), ShareMode::Any)
            .is_err());
        let raw: SocketSpec = "raw:icmp:127.0.0.1".parse().unwrap();
        assert!(p.check(&creds(7, 7), &raw, ShareMode::Any).is_err());
        let s = |x: &str| x.parse::<SocketSpec>().unwrap();
        let e = p
            .check(&creds(1001, 1), &s("udp:0.0.0.0:8080"), ShareMode::Any)
            .unwrap_err();
        assert!(e.message().contains("rule at p.conf:2"), "{e}");
        assert!(p
            .check(&creds(7, 50), &s("tcp:10.1.2.3:443"), ShareMode::Any)
            .is_ok());
        assert!(p
            .check(&creds(7, 50), &s("tcp:[::1]:80"), ShareMode::SameApp)
            .is_ok());
        // Share mode none is not in rule 3's list, port 80 not in rule 4's.
        assert!(p
            .check(&creds(7, 50), &s("tcp:10.1.2.3:80"), ShareMode::None)
            .is_err());
        assert!(p
            .check(&creds(7, 50), &s("udp:10.1.2.3:80"), ShareMode::Any)
            .is_err());
        assert!(p
            .check_op(
                Op::Pickup,
                &creds(7, 7),
                &s("udp:1.2.3.4:2000"),
                ShareMode::Any
            )
            .is_ok());
        assert!(p
            .check_op(
                Op::ReleaseOther,
                &creds(7, 7),
                &s("udp:1.2.3.4:2000"),
                ShareMode::Any
            )
            .is_err());
        assert!(p
            .check_op(
                Op::ReleaseOther,
                &creds(0, 0),
                &s("udp:1.2.3.4:2000"),
                ShareMode::Any
            )
            .is_ok());
    }

    #[test]
    fn privileged_options_need_a_rule_that_lists_them() {
        let s = |x: &str| x.parse::<SocketSpec>().unwrap();
        let user = creds(65534, 65534);
        let root = creds(0, 0);
        let b = Policy::builtin();
        for (spec, opt) in [
            ("udp:0.0.0.0:5353?transparent=1", "transparent"),
            ("udp:0.0.0.0:5353?freebind=1", "freebind"),
            ("udp:0.0.0.0:5353?mark=0", "mark"),
            ("tcp:[::]:8080?bindtodevice=lo", "bindtodevice"),
        ] {
            let e = b.check(&user, &s(spec), ShareMode::Any).unwrap_err();
            assert_eq!(e.kind(), Kind::NotAllowed);
            assert_eq!(e.errno(), libc::EACCES);
            assert!(
                e.message().contains(&format!("option {opt} "))
                    && e.message().contains("built-in default rule 2"),
                "{e}"
            );
            assert!(b.check(&root, &s(spec), ShareMode::Any).is_ok(), "{spec}");
        }
        // Off is not privileged; ordinary options are not either.
        for spec in [
            "udp:0.0.0.0:5353?transparent=0&freebind=0",
            "tcp:0.0.0.0:5353?reuseport=1&rcvbuf=1048576&backlog=5",
        ] {
            assert!(b.check(&user, &s(spec), ShareMode::Any).is_ok(), "{spec}");
        }
        // An owner is privileged unless it is the client itself.
        let p = Policy::parse(
            "allow uid=7 path=/run/a/ opts=owner
allow * path=/run/a/
",
            "o.conf",
        )
        .unwrap();
        let mut u = SocketSpec::unix(Proto::UnixStream, "/run/a/s");
        u.options.owner = Some((0, 0));
        let e = p.check(&user, &u, ShareMode::Any).unwrap_err();
        assert!(
            e.message().contains("option owner") && e.message().contains("rule at o.conf:2"),
            "{e}"
        );
        assert!(p.check(&creds(7, 7), &u, ShareMode::Any).is_ok());
        u.options.owner = Some((65534, 65534));
        assert!(p.check(&user, &u, ShareMode::Any).is_ok());
        u.options.owner = Some((65534, 0));
        assert!(p.check(&user, &u, ShareMode::Any).is_err());
        // Options do not concern pick-up or release.
        let t = s("udp:0.0.0.0:5353?transparent=1");
        assert!(b.check_op(Op::Pickup, &user, &t, ShareMode::Any).is_ok());
        // First match decides: a rule that grants the option allows it; a
        // deny rule with opts= matches only requests using one of them.
        let p = Policy::parse(
            "deny * opts=mark
             allow uid=7 opts=transparent,freebind port=5353
             allow * port=1024-65535
             allow uid=8 opts=all
",
            "g.conf",
        )
        .unwrap();
        assert!(p.check(&creds(7, 7), &t, ShareMode::Any).is_ok());
        let e = p
            .check(&creds(7, 7), &s("udp:0.0.0.0:5353?mark=3"), ShareMode::Any)
            .unwrap_err();
        assert!(e.message().contains("by rule at g.conf:1"), "{e}");
        assert!(p
            .check(&creds(7, 7), &s("udp:0.0.0.0:5353"), ShareMode::Any)
            .is_ok());
        let e = p
            .check(
                &creds(9, 9),
                &s("udp:0.0.0.0:5354?bindtodevice=lo"),
                ShareMode::Any,
            )
            .unwrap_err();
        assert!(
            e.message()
                .contains("option bindtodevice is not allowed by rule at g.conf:3"),
            "{e}"
        );
        assert!(p
            .check(
                &creds(8, 8),
                &s("udp:0.0.0.0:80?bindtodevice=lo"),
                ShareMode::Any
            )
            .is_ok());
    }

    #[test]
    fn malformed_files_name_the_line() {
        for (text, line, what) in [
            (
                "allow *\npermit *\n",
                2,
                "expected allow, deny, limit or share-across-uids",
            ),
            ("allow\n", 1, "missing who"),
            ("\n\nallow uid=x\n", 3, "not a number"),
            ("allow * port=70000\n", 1, "invalid port"),
            ("allow * port=9-3\n", 1, "empty port range"),
            ("allow * addr=10.0.0.0/33\n", 1, "prefix length"),
            ("allow * addr=example.com\n", 1, "invalid address"),
            ("allow * proto=sctp\n", 1, "unknown protocol"),
            ("allow * share=some\n", 1, "unknown share mode"),
            ("allow * ops=steal\n", 1, "unknown operation"),
            ("allow * colour=red\n", 1, "unknown key"),
            (
                "allow * opts=transparent,cap_net_admin\n",
                1,
                "unknown option",
            ),
            ("allow * opts=mark opts=owner\n", 1, "given twice"),
            ("allow * port=1 port=2\n", 1, "given twice"),
            ("allow user=no-such-user-xyz\n", 1, "unknown user"),
            ("allow group=no-such-group-xyz\n", 1, "unknown group"),
            ("allow * port\n", 1, "expected KEY=VALUE"),
            ("limit * sockets=x\n", 1, "not a number"),
            (
                "limit * sockets=1\nlimit * status=1\n",
                2,
                "second 'limit *'",
            ),
            ("limit group=x sockets=1\n", 1, "per uid"),
        ] {
            let e = Policy::parse(text, "f").unwrap_err();
            assert_eq!(e.kind(), Kind::BadRequest);
            assert!(e.message().starts_with(&format!("f:{line}: ")), "{e}");
            assert!(e.message().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn nets() {
        let a = "10.1.2.3".parse().unwrap();
        assert!(in_net(&a, &"10.0.0.0".parse().unwrap(), 8));
        assert!(!in_net(&a, &"11.0.0.0".parse().unwrap(), 8));
        assert!(in_net(&a, &"0.0.0.0".parse().unwrap(), 0));
        assert!(in_net(&"::1".parse().unwrap(), &"::".parse().unwrap(), 64));
    }
}
