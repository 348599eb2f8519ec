//! The events between two reads of a watch that re-reads (ZooKeeper one-shot watches, Consul
//! blocking queries): both only say "something changed", so the adapter compares snapshots.

use crate::kernel::{ChildrenEvent, KeyEvent, Node};

/// What a watch last saw of a key: its identity (`created`: the store's create
/// zxid/revision/index, so a delete and re-create is seen even between two reads) and its
/// last modification (`modified`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySnapshot {
    /// The store's creation stamp of the key.
    pub created: u64,
    /// The store's modification stamp of the key.
    pub modified: u64,
    /// The key's value and metadata.
    pub node: Node,
}

impl KeySnapshot {
    /// The events leading from `old` to `new` (`None`: the key was absent).
    pub fn events(old: Option<&KeySnapshot>, new: Option<&KeySnapshot>) -> Vec<KeyEvent> {
        match (old, new) {
            (None, None) => vec![],
            (None, Some(n)) => vec![KeyEvent::Created(n.node.clone())],
            (Some(_), None) => vec![KeyEvent::Deleted],
            (Some(o), Some(n)) if o.created != n.created => {
                vec![KeyEvent::Deleted, KeyEvent::Created(n.node.clone())]
            }
            (Some(o), Some(n))
                if o.modified != n.modified
                    || o.node.stat.ephemeral_owner != n.node.stat.ephemeral_owner =>
            {
                vec![KeyEvent::Changed(n.node.clone())]
            }
            _ => vec![],
        }
    }

    /// The resync event for the state `new`.
    pub fn resync(new: Option<&KeySnapshot>) -> KeyEvent {
        KeyEvent::Resync(new.map(|s| s.node.clone()))
    }
}

/// What a watch last saw of a parent's children: the parent's creation stamp (`None`: the
/// parent was absent; the namespace root has a constant one) and the sorted names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildrenSnapshot {
    /// The parent's creation stamp, `None` while it is absent.
    pub parent: Option<u64>,
    /// The children's names, sorted (ignored while the parent is absent).
    pub list: Vec<String>,
}

impl ChildrenSnapshot {
    /// The list as the kernel reports it: empty while the parent is absent.
    pub fn visible(&self) -> Vec<String> {
        if self.parent.is_some() {
            self.list.clone()
        } else {
            Vec::new()
        }
    }

    /// The events leading from `old` to `new`: `ParentDeleted` when the parent went (or was
    /// replaced), then `Changed` if the visible list differs from what was last reported.
    pub fn events(old: &ChildrenSnapshot, new: &ChildrenSnapshot) -> Vec<ChildrenEvent> {
        let mut out = Vec::new();
        let mut before = old.visible();
        if old.parent.is_some() && old.parent != new.parent {
            out.push(ChildrenEvent::ParentDeleted);
            before.clear();
        }
        let after = new.visible();
        if before != after {
            out.push(ChildrenEvent::Changed(after));
        }
        out
    }

    /// The resync event for the state `new`.
    pub fn resync(new: &ChildrenSnapshot) -> ChildrenEvent {
        ChildrenEvent::Resync(new.visible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Stat, Version};
    use crate::Path;

    fn key(created: u64, modified: u64) -> KeySnapshot {
        KeySnapshot {
            created,
            modified,
            node: Node {
                path: Path::new("/k").unwrap(),
                value: vec![],
                stat: Stat::new(Version(modified), None),
            },
        }
    }

    fn kids(parent: Option<u64>, list: &[&str]) -> ChildrenSnapshot {
        ChildrenSnapshot {
            parent,
            list: list.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn key_events() {
        let (a, b, c) = (key(1, 1), key(1, 2), key(3, 3));
        assert!(KeySnapshot::events(Some(&a), Some(&a)).is_empty());
        assert!(matches!(
            KeySnapshot::events(None, Some(&a))[..],
            [KeyEvent::Created(_)]
        ));
        assert!(matches!(
            KeySnapshot::events(Some(&a), Some(&b))[..],
            [KeyEvent::Changed(_)]
        ));
        assert!(matches!(
            KeySnapshot::events(Some(&b), Some(&c))[..],
            [KeyEvent::Deleted, KeyEvent::Created(_)]
        ));
        assert_eq!(KeySnapshot::events(Some(&a), None), [KeyEvent::Deleted]);
    }

    #[test]
    fn children_events() {
        use ChildrenEvent::*;
        let ev = ChildrenSnapshot::events;
        assert!(ev(&kids(None, &[]), &kids(Some(1), &[])).is_empty());
        assert_eq!(
            ev(&kids(Some(1), &[]), &kids(Some(1), &["a"])),
            [Changed(vec!["a".into()])]
        );
        assert_eq!(
            ev(&kids(Some(1), &["a"]), &kids(None, &[])),
            [ParentDeleted]
        );
        assert_eq!(
            ev(&kids(Some(1), &["a"]), &kids(Some(2), &["b"])),
            [ParentDeleted, Changed(vec!["b".into()])]
        );
        assert_eq!(
            ev(&kids(Some(1), &["a"]), &kids(Some(2), &[])),
            [ParentDeleted]
        );
    }
}
