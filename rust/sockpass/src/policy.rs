//! Who may ask for what. The broker asks [`Policy::check`] before it creates
//! or shares a socket; the first rule that matches the client and the request
//! decides, and a request no rule matches is denied (deny by default).
//!
//! The built-in default suits a first run: root may request anything, others
//! may request port 0 (ephemeral) and ports from 1024 up.

use crate::error::{Error, Kind, Result};
use crate::share::ShareMode;
use crate::spec::{Proto, SocketSpec};
use crate::sys::Creds;
use std::ops::RangeInclusive;

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

/// One rule: who it applies to, what it matches, and what it decides.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Where the rule came from ("built-in default rule 1", "policy.conf:7").
    pub origin: String,
    pub action: Action,
    pub who: Who,
    /// None matches every protocol.
    pub protos: Option<Vec<Proto>>,
    /// Empty matches every address; else (network, prefix length).
    pub nets: Vec<(std::net::IpAddr, u8)>,
    /// Empty matches every port.
    pub ports: Vec<RangeInclusive<u16>>,
    /// None matches every share mode.
    pub shares: Option<Vec<ShareMode>>,
}

impl Rule {
    fn applies_to(&self, c: &Creds) -> bool {
        match self.who {
            Who::Anyone => true,
            Who::Uid(u) => c.uid == u,
            Who::Gid(g) => c.gid == g,
        }
    }

    fn matches(&self, spec: &SocketSpec, share: ShareMode) -> bool {
        if let Some(p) = &self.protos {
            if !p.contains(&spec.proto) {
                return false;
            }
        }
        if !self.nets.is_empty() && !self.nets.iter().any(|(n, l)| in_net(&spec.addr, n, *l)) {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(&spec.port)) {
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

/// Is `a` inside `net/len`?
pub fn in_net(a: &std::net::IpAddr, net: &std::net::IpAddr, len: u8) -> bool {
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
}

impl Policy {
    /// Root may request anything; everyone may request port 0 and 1024–65535.
    pub fn builtin() -> Policy {
        Policy {
            rules: vec![
                Rule {
                    origin: "built-in default rule 1 (root may request anything)".into(),
                    action: Action::Allow,
                    who: Who::Uid(0),
                    protos: None,
                    nets: vec![],
                    ports: vec![],
                    shares: None,
                },
                Rule {
                    origin: "built-in default rule 2 (others: port 0 or 1024-65535)".into(),
                    action: Action::Allow,
                    who: Who::Anyone,
                    protos: None,
                    nets: vec![],
                    ports: vec![0..=0, 1024..=65535],
                    shares: None,
                },
            ],
        }
    }

    /// Allow or deny a socket request from `creds`. A denial names its rule.
    pub fn check(&self, creds: &Creds, spec: &SocketSpec, share: ShareMode) -> Result<()> {
        for r in &self.rules {
            if r.applies_to(creds) && r.matches(spec, share) {
                return match r.action {
                    Action::Allow => Ok(()),
                    Action::Deny => Err(Error::with_errno(
                        Kind::NotAllowed,
                        libc::EACCES,
                        format!("{spec} denied for uid {} by {}", creds.uid, r.origin),
                    )),
                };
            }
        }
        Err(Error::with_errno(
            Kind::NotAllowed,
            libc::EACCES,
            format!(
                "{spec} denied for uid {}: no policy rule allows it (deny by default)",
                creds.uid
            ),
        ))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default() {
        let p = Policy::builtin();
        let root = Creds {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        let user = Creds {
            pid: 1,
            uid: 1000,
            gid: 1000,
        };
        let low: SocketSpec = "udp:0.0.0.0:53".parse().unwrap();
        let high: SocketSpec = "udp:0.0.0.0:5353".parse().unwrap();
        assert!(p.check(&root, &low, ShareMode::None).is_ok());
        let e = p.check(&user, &low, ShareMode::None).unwrap_err();
        assert_eq!(e.kind(), Kind::NotAllowed);
        assert!(e.message().contains("deny by default"), "{e}");
        assert!(p.check(&user, &high, ShareMode::Any).is_ok());
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
