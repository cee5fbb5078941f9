//! Which binds `--catch-bind` catches: `privileged` (ports below the
//! kernel's `ip_unprivileged_port_start`), `inet` (every non-zero port) or a
//! list of ports and ranges (`53,80,8000-8099`).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The ports whose binds are caught (port 0 never is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BindPorts {
    /// Ports below `/proc/sys/net/ipv4/ip_unprivileged_port_start`, read
    /// when the program starts (1024 if unreadable).
    #[default]
    Privileged,
    /// Every TCP and UDP bind with a non-zero port.
    Inet,
    /// These inclusive ranges.
    List(Vec<(u16, u16)>),
}

/// Where the kernel's privileged port range ends.
const UNPRIVILEGED_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// The first unprivileged port in our network namespace.
pub(crate) fn unprivileged_start() -> u16 {
    std::fs::read_to_string(UNPRIVILEGED_START)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(1024, |n| n.min(u16::MAX as u32) as u16)
}

impl BindPorts {
    /// The ranges caught, with `privileged` resolved against `start` (the
    /// first unprivileged port).
    pub(crate) fn resolve(&self, start: u16) -> Vec<(u16, u16)> {
        match self {
            BindPorts::Privileged if start <= 1 => Vec::new(),
            BindPorts::Privileged => vec![(1, start - 1)],
            BindPorts::Inet => vec![(1, u16::MAX)],
            BindPorts::List(l) => l.clone(),
        }
    }
}

impl FromStr for BindPorts {
    type Err = Error;
    fn from_str(s: &str) -> Result<BindPorts> {
        match s {
            "" | "privileged" => return Ok(BindPorts::Privileged),
            "inet" => return Ok(BindPorts::Inet),
            _ => {}
        }
        let bad = |part: &str, why: &str| {
            Error::bad_request(format!(
                "catch-bind ports {s:?}: {part:?} {why} (expected privileged, inet, or \
                 ports and ranges such as 53,80,8000-8099)"
            ))
        };
        let port = |p: &str, part: &str| match p.trim().parse::<u16>() {
            Ok(0) => Err(bad(part, "has port 0, which is never caught")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(part, "is not a port (1..=65535)")),
        };
        let mut list = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (port(a, part)?, port(b, part)?),
                None => {
                    let p = port(part, part)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(bad(part, "is a range that ends before it starts"));
            }
            list.push((lo, hi));
        }
        Ok(BindPorts::List(list))
    }
}

impl fmt::Display for BindPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindPorts::Privileged => f.write_str("privileged"),
            BindPorts::Inet => f.write_str("inet"),
            BindPorts::List(l) => {
                for (i, (lo, hi)) in l.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    if lo == hi {
                        write!(f, "{sep}{lo}")?;
                    } else {
                        write!(f, "{sep}{lo}-{hi}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!("".parse::<BindPorts>().unwrap(), BindPorts::Privileged);
        assert_eq!("inet".parse::<BindPorts>().unwrap(), BindPorts::Inet);
        let l = "53,80,8000-8099".parse::<BindPorts>().unwrap();
        assert_eq!(l, BindPorts::List(vec![(53, 53), (80, 80), (8000, 8099)]));
        assert_eq!(l.to_string(), "53,80,8000-8099");
        for bad in ["0", "80-70", "x", "53,", "70000", "1-0"] {
            assert!(bad.parse::<BindPorts>().is_err(), "{bad}");
        }
        assert_eq!(BindPorts::Privileged.resolve(1024), vec![(1, 1023)]);
        assert!(BindPorts::Privileged.resolve(0).is_empty());
    }
}
