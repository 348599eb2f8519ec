//! How coord's key tree is stored on etcd's flat key space.
//!
//! With `B` = the namespace's bytes followed by one `\x00` byte (`"/myapp\x00"`, or just
//! `"\x00"` for the root namespace):
//!
//! | what | etcd key | example (namespace `/ns`) |
//! | --- | --- | --- |
//! | node `P` at depth `d` | `B` `n` `d` (3 digits) `P` | `/a/b` → `/ns\x00n002/a/b` |
//! | children of `P` | prefix `B` `n` `d+1` `P/` | children of `/a` → `/ns\x00n002/a/` |
//! | sequence counter of `P` | `B` `m` `P/__coord_seq` | `/ns\x00m/a/__coord_seq` |
//!
//! The depth (number of segments, 0 for the root) in the key makes the children of a parent
//! exactly one key-range prefix that holds no grandchildren: listing or watching the children
//! of a parent costs O(children), not O(subtree). `\x00` cannot occur in a path, so two
//! namespaces never share a prefix (`/a\x00…` vs `/a/b\x00…`). The internal counters live under
//! `B m` (never inside a children range) and use the reserved `__coord` segment name, which no
//! user path can contain. The namespace root itself always exists; a value written to it is
//! stored at `B n000/`.

use coord_core::Path;

/// Length of the zero-padded depth in a node key (a path has at most 512 segments).
const DEPTH_DIGITS: usize = 3;
/// The name of a parent's sequence counter under the metadata prefix.
const SEQUENCE_NAME: &str = "__coord_seq";

/// The etcd keys of one namespace (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    base: Vec<u8>,
}

impl KeyLayout {
    /// The layout of `namespace` (`""` for the root namespace, else a valid path).
    pub fn new(namespace: &str) -> KeyLayout {
        let mut base = namespace.as_bytes().to_vec();
        base.push(0);
        KeyLayout { base }
    }

    /// The prefix of every key of this namespace.
    pub fn namespace_prefix(&self) -> &[u8] {
        &self.base
    }

    fn node_prefix(&self, depth: usize) -> Vec<u8> {
        let mut k = self.base.clone();
        k.push(b'n');
        k.extend_from_slice(format!("{depth:0w$}", w = DEPTH_DIGITS).as_bytes());
        k
    }

    /// The key holding node `path`.
    pub fn node_key(&self, path: &Path) -> Vec<u8> {
        let mut k = self.node_prefix(path.depth());
        k.extend_from_slice(path.as_str().as_bytes());
        k
    }

    /// The key prefix of exactly the children of `parent` (no grandchildren).
    pub fn children_prefix(&self, parent: &Path) -> Vec<u8> {
        let mut k = self.node_prefix(parent.depth() + 1);
        if !parent.is_root() {
            k.extend_from_slice(parent.as_str().as_bytes());
        }
        k.push(b'/');
        k
    }

    /// The key of `parent`'s sequence counter (a decimal number: the next sequence).
    pub fn sequence_key(&self, parent: &Path) -> Vec<u8> {
        let mut k = self.base.clone();
        k.push(b'm');
        if !parent.is_root() {
            k.extend_from_slice(parent.as_str().as_bytes());
        }
        k.push(b'/');
        k.extend_from_slice(SEQUENCE_NAME.as_bytes());
        k
    }

    /// The child name in `key`, a key found under `children_prefix` (`None` if it is not
    /// one: foreign data).
    pub fn child_name<'k>(children_prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(children_prefix)?;
        let name = std::str::from_utf8(rest).ok()?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::new(s).unwrap()
    }

    #[test]
    fn keys() {
        let l = KeyLayout::new("/ns");
        assert_eq!(l.node_key(&p("/a/b")), b"/ns\x00n002/a/b");
        assert_eq!(l.node_key(&Path::root()), b"/ns\x00n000/");
        assert_eq!(l.children_prefix(&p("/a")), b"/ns\x00n002/a/");
        assert_eq!(l.children_prefix(&Path::root()), b"/ns\x00n001/");
        assert_eq!(l.sequence_key(&p("/a")), b"/ns\x00m/a/__coord_seq");
        assert_eq!(l.sequence_key(&Path::root()), b"/ns\x00m/__coord_seq");
        assert_eq!(KeyLayout::new("").node_key(&p("/x")), b"\x00n001/x");
        // A child key lies under its parent's children prefix; a grandchild does not.
        let kids = l.children_prefix(&p("/a"));
        assert!(l.node_key(&p("/a/b")).starts_with(&kids));
        assert!(!l.node_key(&p("/a/b/c")).starts_with(&kids));
        assert!(!l.node_key(&p("/ab")).starts_with(&kids));
        assert_eq!(
            KeyLayout::child_name(&kids, &l.node_key(&p("/a/b"))),
            Some("b")
        );
        // Namespaces never nest.
        let inner = KeyLayout::new("/ns/x");
        assert!(!inner.node_key(&p("/a")).starts_with(l.namespace_prefix()));
    }
}
