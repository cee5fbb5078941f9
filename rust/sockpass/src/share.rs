//! Share modes, with BIND10's semantics: a new request may share a cached
//! socket only if it and every existing holder allow each other.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShareMode {
    /// Nobody else may share.
    None,
    /// Only holders with the same application name may share.
    SameApp,
    /// Anyone may share.
    Any,
}

impl ShareMode {
    pub fn wire(self) -> u8 {
        match self {
            ShareMode::None => 0,
            ShareMode::SameApp => 1,
            ShareMode::Any => 2,
        }
    }

    pub fn from_wire(v: u8) -> Result<ShareMode> {
        match v {
            0 => Ok(ShareMode::None),
            1 => Ok(ShareMode::SameApp),
            2 => Ok(ShareMode::Any),
            _ => Err(Error::bad_request(format!("unknown share mode {v}"))),
        }
    }

    /// From the integer a C or Python caller passes (same numbers as the wire).
    pub fn from_int(v: i64) -> Result<ShareMode> {
        u8::try_from(v)
            .map_err(|_| Error::bad_request(format!("unknown share mode {v}")))
            .and_then(ShareMode::from_wire)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShareMode::None => "none",
            ShareMode::SameApp => "sameapp",
            ShareMode::Any => "any",
        }
    }

    /// Does a holder with this mode and `my_app` let `other_app` share?
    fn admits(self, my_app: &str, other_app: &str) -> bool {
        match self {
            ShareMode::None => false,
            ShareMode::SameApp => my_app == other_app,
            ShareMode::Any => true,
        }
    }
}

/// Can a request `(mode, app)` join a holder `(hmode, happ)`? Both directions
/// must admit the other.
pub fn compatible(mode: ShareMode, app: &str, hmode: ShareMode, happ: &str) -> bool {
    mode.admits(app, happ) && hmode.admits(happ, app)
}

/// [`compatible`] between a request from `uid` and a holder that joined as
/// `huid`. Within one uid the BIND10 matrix decides; across uids only `any`
/// on both sides is consent (an application name is the client's to choose,
/// so `sameapp` never reaches another user), and only if the policy allows
/// sharing across uids at all (`across`).
pub fn compatible_users(
    mode: ShareMode,
    app: &str,
    uid: u32,
    hmode: ShareMode,
    happ: &str,
    huid: u32,
    across: bool,
) -> bool {
    if uid == huid {
        compatible(mode, app, hmode, happ)
    } else {
        across && mode == ShareMode::Any && hmode == ShareMode::Any
    }
}

impl FromStr for ShareMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<ShareMode> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "no" => Ok(ShareMode::None),
            "sameapp" | "samename" | "same" => Ok(ShareMode::SameApp),
            "any" => Ok(ShareMode::Any),
            _ => Err(Error::bad_request(format!(
                "unknown share mode {s:?} (expected none, sameapp or any)"
            ))),
        }
    }
}

impl fmt::Display for ShareMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ShareMode::*;
    use super::*;

    #[test]
    fn bind10_matrix() {
        assert!(compatible(Any, "b", Any, "a"));
        assert!(compatible(Any, "a", SameApp, "a"));
        assert!(compatible(SameApp, "a", Any, "a"));
        assert!(!compatible(Any, "b", SameApp, "a"));
        assert!(!compatible(SameApp, "b", Any, "a"));
        assert!(compatible(SameApp, "a", SameApp, "a"));
        assert!(!compatible(SameApp, "a", SameApp, "b"));
        for m in [None, SameApp, Any] {
            assert!(!compatible(None, "a", m, "a"));
            assert!(!compatible(m, "a", None, "a"));
        }
    }
}
