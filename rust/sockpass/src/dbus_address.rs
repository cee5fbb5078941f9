//! D-Bus server addresses for unix sockets (`unix:path=…`, `unix:abstract=…`),
//! escaped by the D-Bus specification's rules: the bytes `[-0-9A-Za-z_/.\*]`
//! stay as they are and every other byte becomes `%XX`. Paths are bytes, not
//! text: a path need not be UTF-8, and an abstract name may hold any byte.

/// True for the bytes D-Bus leaves unescaped in address values.
fn is_optionally_escaped(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.' | b'\\' | b'*')
}

/// Escape one address value (the part after `path=`).
pub fn escape_value(value: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(value.len());
    for &b in value {
        if is_optionally_escaped(b) {
            s.push(b as char);
        } else {
            s.push('%');
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
    }
    s
}

/// The D-Bus address of a unix socket address as [`crate::sys::sockaddr_un`]
/// takes it: a leading NUL byte marks an abstract name.
pub fn unix_address(path: &[u8]) -> String {
    match path.split_first() {
        Some((0, name)) => format!("unix:abstract={}", escape_value(name)),
        _ => format!("unix:path={}", escape_value(path)),
    }
}

/// Undo [`escape_value`]; `None` for a malformed `%` sequence.
pub fn unescape_value(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_safe_set_and_escapes_the_rest() {
        assert_eq!(
            unix_address(b"/run/a-b_c.d/x*\\y"),
            "unix:path=/run/a-b_c.d/x*\\y"
        );
        assert_eq!(
            unix_address(b"/tmp/with space/bus"),
            "unix:path=/tmp/with%20space/bus"
        );
        // Non-ASCII (UTF-8 "é" and a lone 0xff) and the address syntax's own
        // separators are escaped byte by byte.
        assert_eq!(
            unix_address("/tmp/é\u{ff}".as_bytes()),
            "unix:path=/tmp/%c3%a9%c3%bf"
        );
        assert_eq!(unix_address(b"/a,b;c=d%"), "unix:path=/a%2cb%3bc%3dd%25");
        assert_eq!(unix_address(b"\0my bus"), "unix:abstract=my%20bus");
        assert_eq!(unix_address(b"\0a\0b"), "unix:abstract=a%00b");
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let e = escape_value(&all);
        assert!(e.is_ascii());
        assert_eq!(unescape_value(&e).unwrap(), all);
        assert_eq!(unescape_value("%4"), None);
        assert_eq!(unescape_value("%zz"), None);
    }
}
