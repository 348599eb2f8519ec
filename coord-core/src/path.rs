//! Validated hierarchical key paths.

use std::fmt;

use crate::error::{Error, Result};

/// The longest path accepted, in bytes (the namespace prefix is not counted).
pub const MAX_PATH_LEN: usize = 1024;
/// The longest segment (name between two `/`) accepted, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;
/// Segments starting with this prefix are reserved for coord's own bookkeeping (for example
/// the sequence counters of the etcd and Consul backends) and are rejected in user paths.
pub const RESERVED_PREFIX: &str = "__coord";

/// A validated key path such as `/services/api/instance-1`.
///
/// The rules, checked by [`Path::new`] before any I/O:
/// - absolute: starts with `/`; `/` alone is the root of the client's namespace;
/// - `/`-separated, no empty segment (so no `//` and no trailing `/`, except the root);
/// - no `.` or `..` segment;
/// - no control character (U+0000–U+001F, U+007F–U+009F), no invisible format character
///   (Unicode category Cf such as U+200B–U+200F, U+202A–U+202E, U+FEFF: Consul stores them
///   but cannot read or delete them by URL), none of the code points ZooKeeper refuses
///   (U+E000–U+F8FF, U+FFF0–U+FFFF) and nothing above U+FFFF (ZooKeeper refuses the
///   surrogate pairs Java makes of them), so that a path valid on one backend is valid on all
///   of them;
/// - at most [`MAX_PATH_LEN`] bytes, each segment at most [`MAX_SEGMENT_LEN`] bytes;
/// - no segment starting with [`RESERVED_PREFIX`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(String);

fn invalid(path: &str, reason: impl Into<String>) -> Error {
    // Keep hostile inputs from flooding logs: show at most 64 characters.
    let shown: String = path.chars().take(64).collect();
    Error::InvalidPath {
        path: shown,
        reason: reason.into(),
    }
}

fn check_segment(path: &str, seg: &str) -> Result<()> {
    if seg.is_empty() {
        return Err(invalid(path, "empty segment (`//` or trailing `/`)"));
    }
    if seg == "." || seg == ".." {
        return Err(invalid(path, "`.` and `..` segments are not allowed"));
    }
    if seg.len() > MAX_SEGMENT_LEN {
        return Err(invalid(
            path,
            format!("segment longer than {MAX_SEGMENT_LEN} bytes"),
        ));
    }
    if seg.starts_with(RESERVED_PREFIX) {
        return Err(invalid(
            path,
            format!("segments starting with `{RESERVED_PREFIX}` are reserved"),
        ));
    }
    if let Some(c) = seg.chars().find(|&c| forbidden_char(c)) {
        return Err(invalid(
            path,
            format!("forbidden character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

fn forbidden_char(c: char) -> bool {
    matches!(
        c as u32,
        // Controls.
        0x00..=0x1F | 0x7F..=0x9F
        // Format characters (general category Cf) of the BMP.
        | 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        // What ZooKeeper refuses: private use and specials, and everything outside the BMP.
        | 0xE000..=0xF8FF | 0xFFF0..=0xFFFF | 0x10000..
    ) || c == '/'
}

impl Path {
    /// Parses and validates `s` (see the rules on [`Path`]).
    pub fn new(s: impl AsRef<str>) -> Result<Path> {
        let s = s.as_ref();
        if s.len() > MAX_PATH_LEN {
            return Err(invalid(s, format!("longer than {MAX_PATH_LEN} bytes")));
        }
        if !s.starts_with('/') {
            return Err(invalid(s, "must be absolute (start with `/`)"));
        }
        if s == "/" {
            return Ok(Path::root());
        }
        for seg in s[1..].split('/') {
            check_segment(s, seg)?;
        }
        Ok(Path(s.to_owned()))
    }

    /// The root of the namespace, `/`.
    pub fn root() -> Path {
        Path("/".to_owned())
    }

    /// Whether this is the root `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (`""` for the root).
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => "",
        }
    }

    /// The number of segments (0 for the root): `/a/b` has depth 2.
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            self.0.bytes().filter(|b| *b == b'/').count()
        }
    }

    /// The parent path, `None` for the root.
    pub fn parent(&self) -> Option<Path> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) => Some(Path::root()),
            Some(i) => Some(Path(self.0[..i].to_owned())),
            None => None,
        }
    }

    /// The child `name` of this path; `name` must be one valid segment.
    pub fn join(&self, name: &str) -> Result<Path> {
        let s = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        if s.len() > MAX_PATH_LEN {
            return Err(invalid(&s, format!("longer than {MAX_PATH_LEN} bytes")));
        }
        check_segment(&s, name)?;
        Ok(Path(s))
    }

    /// The ancestors from the first segment down to (and including) this path; empty for the root.
    pub fn ancestors_and_self(&self) -> Vec<Path> {
        let mut out = Vec::new();
        if self.is_root() {
            return out;
        }
        for (i, _) in self.0.match_indices('/').skip(1) {
            out.push(Path(self.0[..i].to_owned()));
        }
        out.push(self.clone());
        out
    }

    /// Whether `self` is `other` or lies under it.
    pub fn starts_with(&self, other: &Path) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({:?})", self.0)
    }
}

impl AsRef<str> for Path {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Path {
    type Error = Error;
    fn try_from(s: &str) -> Result<Path> {
        Path::new(s)
    }
}

impl TryFrom<String> for Path {
    type Error = Error;
    fn try_from(s: String) -> Result<Path> {
        Path::new(s)
    }
}

impl std::str::FromStr for Path {
    type Err = Error;
    fn from_str(s: &str) -> Result<Path> {
        Path::new(s)
    }
}

/// Number of decimal digits of the suffix appended by sequential creation (as ZooKeeper does).
pub const SEQUENCE_DIGITS: usize = 10;

/// Formats a sequence number as the zero-padded suffix every backend appends.
pub fn format_sequence(n: u64) -> String {
    format!("{n:0width$}", width = SEQUENCE_DIGITS)
}

/// Splits a sequential node name into its prefix and sequence number, if it ends with a
/// [`SEQUENCE_DIGITS`]-digit suffix.
pub fn parse_sequence(name: &str) -> Option<(&str, u64)> {
    if name.len() < SEQUENCE_DIGITS {
        return None;
    }
    let split = name.len() - SEQUENCE_DIGITS;
    if !name.is_char_boundary(split) {
        return None;
    }
    let (prefix, digits) = name.split_at(split);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|n| (prefix, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_splits() {
        let p = Path::new("/a/b/c").unwrap();
        assert_eq!(p.name(), "c");
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(Path::new("/a").unwrap().parent().unwrap(), Path::root());
        assert_eq!(Path::root().parent(), None);
        assert_eq!((Path::root().depth(), p.depth()), (0, 3));
        assert_eq!(Path::root().join("x").unwrap().as_str(), "/x");
        let anc: Vec<_> = p
            .ancestors_and_self()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(anc, ["/a", "/a/b", "/a/b/c"]);
        assert!(p.starts_with(&Path::new("/a").unwrap()));
        assert!(!Path::new("/ab")
            .unwrap()
            .starts_with(&Path::new("/a").unwrap()));
        assert!(Path::new("/ünïcödé/日本").is_ok());
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "a",
            "//",
            "/a/",
            "/a//b",
            "/.",
            "/a/..",
            "/a\0b",
            "/a\nb",
            "/a\u{7f}",
            "/a\u{85}",
            "/\u{e000}",
            "/\u{ffff}",
            "/__coord_seq",
            "/a\u{200D}b",
            "/\u{202E}rtl",
            "/\u{FEFF}bom",
            "/\u{AD}",
            "/😀",
        ] {
            assert!(
                matches!(Path::new(bad), Err(Error::InvalidPath { .. })),
                "{bad:?}"
            );
        }
        assert!(Path::new(format!("/{}", "a".repeat(256))).is_err());
        assert!(Path::new("/a".repeat(600)).is_err());
        assert!(Path::root().join("a/b").is_err());
    }

    #[test]
    fn sequences() {
        assert_eq!(format_sequence(42), "0000000042");
        assert_eq!(parse_sequence("n-0000000042"), Some(("n-", 42)));
        assert_eq!(parse_sequence("n-00000x0042"), None);
        assert_eq!(parse_sequence("short"), None);
    }
}
