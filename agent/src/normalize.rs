//! The request path as authorization sees it, and as the app then receives it: normalised the way
//! Envoy's `normalize_path` and `merge_slashes` do, so `/%61dmin`, `//admin`, `/./admin`,
//! `/x/../admin` and `/%2e/admin` are all `/admin` to a rule on `/admin`.
//!
//! Steps (RFC 3986 §6.2.2): percent-encodings of unreserved characters are decoded (`%61` → `a`,
//! `%2E` → `.`), the others are kept with upper-case hex; repeated slashes merge; `.` and `..`
//! segments are removed (`..` never climbs above the root). An encoded slash or backslash
//! (`%2F`, `%5C`) is refused, as Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST` does —
//! apps disagree on whether it separates segments, so no rule could mean one thing for all of them —
//! and so is a `%` not followed by two hex digits.

use std::borrow::Cow;

/// Why a path cannot be normalised (the agent answers 400 and names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `%` not followed by two hex digits.
    #[error("{0:?} is not a percent-encoding (% and two hex digits)")]
    BadEscape(String),
    /// `%2F` or `%5C`.
    #[error("an encoded slash or backslash ({0}) in a path is refused: apps disagree on what it means")]
    EncodedSlash(String),
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalised form of `path` (the part of the target before `?`); borrowed when it already is.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    // Decode the unreserved escapes; keep the others, upper-cased.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = path.get(i..(i + 3).min(path.len())).unwrap_or("%");
            let (Some(h), Some(l)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            else {
                return Err(PathError::BadEscape(escape.to_owned()));
            };
            let b = h * 16 + l;
            if b == b'/' || b == b'\\' {
                return Err(PathError::EncodedSlash(escape.to_ascii_uppercase()));
            }
            if unreserved(b) {
                decoded.push(b as char);
            } else {
                decoded.push('%');
                decoded.push_str(&escape[1..].to_ascii_uppercase());
            }
            i += 3;
        } else {
            // Copy the run up to the next `%` whole (it may hold multi-byte characters).
            let end = path[i..].find('%').map_or(path.len(), |k| i + k);
            decoded.push_str(&path[i..end]);
            i = end;
        }
    }
    // Merge slashes and remove dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing = k == last && k > 0,
            "." => trailing = k == last,
            ".." => {
                out.pop();
                trailing = k == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// The common case, checked without allocating: starts with `/`, no `%`, no `//`, no dot segment.
fn is_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_admin_is_admin() {
        for p in [
            "/admin",
            "/%61dmin",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/a/b/../../admin",
        ] {
            assert_eq!(normalize_path(p).unwrap(), "/admin", "{p}");
        }
        assert_eq!(normalize_path("/admin/").unwrap(), "/admin/");
        assert_eq!(normalize_path("/admin/.").unwrap(), "/admin/");
        assert_eq!(normalize_path("/../..").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b", "reserved escapes stay");
        assert_eq!(normalize_path("/a%3fb").unwrap(), "/a%3Fb", "with upper-case hex");
        assert_eq!(normalize_path("/caf\u{e9}/%7e").unwrap(), "/caf\u{e9}/~");
        assert!(matches!(normalize_path("/plain/path"), Ok(Cow::Borrowed(_))), "no work on the common path");
    }

    #[test]
    fn encoded_slashes_and_broken_escapes_are_refused() {
        assert_eq!(normalize_path("/x%2F..%2Fadmin"), Err(PathError::EncodedSlash("%2F".into())));
        assert_eq!(normalize_path("/x%5cadmin"), Err(PathError::EncodedSlash("%5C".into())));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape("%zz".into())));
        assert_eq!(normalize_path("/a%4"), Err(PathError::BadEscape("%4".into())));
    }
}
