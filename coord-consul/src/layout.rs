//! How coord's tree maps onto Consul's flat KV.
//!
//! With namespace prefix `P` (`"app/x/"` for namespace `/app/x`, `""` for none):
//!
//! | what | Consul key |
//! | --- | --- |
//! | node `/a/b` (depth 2) | `P` `n/2/a/b` |
//! | children of `/a/b` | the keys directly under `P` `n/3/a/b/` |
//! | children of the root | the keys directly under `P` `n/1/` |
//! | sequence counter of parent `/a` | `P` `__coord/seq/a` (root: `P` `__coord/seq`) |
//! | child-version counter of `/a` | `P` `__coord/cv/a` |
//!
//! The depth in the key makes a children listing touch only the children (O(children), not
//! O(subtree)); internal counters live under `__coord`, which no user path can contain, so
//! they never show up as children.

use coord_core::Path;

/// The key layout of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout for namespace `ns` (`""` or a valid path).
    pub(crate) fn new(ns: &str) -> Layout {
        let trimmed = ns.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Layout { prefix }
    }

    /// The key of node `p` (not the root, which is implicit).
    pub(crate) fn node(&self, p: &Path) -> String {
        format!("{}n/{}{}", self.prefix, p.depth(), p.as_str())
    }

    /// The prefix under which `p`'s children live, ending with `/`.
    pub(crate) fn children_prefix(&self, p: &Path) -> String {
        if p.is_root() {
            format!("{}n/1/", self.prefix)
        } else {
            format!("{}n/{}{}/", self.prefix, p.depth() + 1, p.as_str())
        }
    }

    fn meta(&self, kind: &str, p: &Path) -> String {
        if p.is_root() {
            format!("{}__coord/{kind}", self.prefix)
        } else {
            format!("{}__coord/{kind}{}", self.prefix, p.as_str())
        }
    }

    /// The sequence counter of parent `p`.
    pub(crate) fn seq(&self, p: &Path) -> String {
        self.meta("seq", p)
    }

    /// The child-version counter of `p`: written by every child create, checked by the
    /// delete of `p` (so that a delete cannot race with a create under it).
    pub(crate) fn cv(&self, p: &Path) -> String {
        self.meta("cv", p)
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
        let l = Layout::new("/app/x");
        assert_eq!(l.node(&p("/a")), "app/x/n/1/a");
        assert_eq!(l.node(&p("/a/b")), "app/x/n/2/a/b");
        assert_eq!(l.children_prefix(&p("/a")), "app/x/n/2/a/");
        assert_eq!(l.children_prefix(&Path::root()), "app/x/n/1/");
        assert_eq!(l.seq(&Path::root()), "app/x/__coord/seq");
        assert_eq!(l.seq(&p("/a")), "app/x/__coord/seq/a");
        assert_eq!(l.cv(&p("/a/b")), "app/x/__coord/cv/a/b");
        let l = Layout::new("");
        assert_eq!(l.node(&p("/a")), "n/1/a");
        // A child's key starts with its parent's children prefix.
        assert!(l.node(&p("/a/b")).starts_with(&l.children_prefix(&p("/a"))));
    }
}
