//! coord's tree on a flat, transactional key-value store (etcd, Consul): the key layout, the
//! sequence counters, and the rules of create, delete, set and listing, written once over
//! [`FlatStore`], the few transactional steps each store supplies.
//!
//! # Key layout
//!
//! With `B` = the namespace without its leading `/`, then `/__coord/` (`"app/x/__coord/"` for
//! namespace `/app/x`; `"__coord/"` for none):
//!
//! | what | key | example (namespace `/ns`) |
//! | --- | --- | --- |
//! | node `P` at depth `d` | `B` `n` `d` (3 digits) `P` | `/a/b` → `ns/__coord/n002/a/b` |
//! | children of `P` | prefix `B` `n` `d+1` `P/` | children of `/a` → `ns/__coord/n002/a/` |
//! | sequence counter of `P` | `B` `s` `P` | `ns/__coord/s/a` (root: `ns/__coord/s/`) |
//! | child-version counter of `P` | `B` `c` `P` | `ns/__coord/c/a` |
//!
//! The depth in the key makes the children of a parent exactly one key prefix that holds no
//! grandchildren: listing or watching children costs O(children), not O(subtree). A namespace
//! never contains a `__coord` segment (reserved in paths), so no namespace's keys lie under
//! another's. A sequence counter holds the next number in decimal; a counter that is not one
//! is an error ([`Error::MalformedData`]), never read as 0 (sequence numbers would go
//! backwards).
//!
//! # Stamps and guards
//!
//! A node's creation stamp ([`Stat::created`]) is the store's own: etcd's create revision,
//! Consul's `CreateIndex` ([`Entry::created`]). A guarded write ([`Tree::write_if`]) hands the
//! store its usual attempt with a [`GuardCheck`] added: the store checks the guard key in the
//! same transaction and answers `GuardFailed` if the check failed; the tree then reads the
//! guard and either reports [`Error::GuardFailed`] or, when the guard still holds (a store
//! that checks a modification stamp it read before, and the guard node's value was written in
//! between), tries again.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Backoff, RawBackend};
use crate::error::{Error, Result};
use crate::kernel::{
    Capabilities, ChildrenWatch, CreateMode, Created, Guard, KeyWatch, Node, Session, SessionId,
    Stat, Version, WriteOp, WriteResult,
};
use crate::path::{format_sequence, Path, RESERVED_PREFIX};
use crate::recipes::dialect::{Dialect, DialectDriver};

/// Length of the zero-padded depth in a node key (a path has at most 512 segments).
const DEPTH_DIGITS: usize = 3;

/// How often a create or delete that lost a race is tried again before
/// [`Error::Contended`].
pub const MAX_ATTEMPTS: u32 = 200;

/// The keys of one namespace (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    base: String,
}

impl Layout {
    /// The layout of `namespace` (`""` or a valid path).
    pub fn new(namespace: &str) -> Layout {
        let trimmed = namespace.trim_matches('/');
        let base = if trimmed.is_empty() {
            format!("{RESERVED_PREFIX}/")
        } else {
            format!("{trimmed}/{RESERVED_PREFIX}/")
        };
        Layout { base }
    }

    /// The prefix of every key of this namespace.
    pub fn namespace_prefix(&self) -> &str {
        &self.base
    }

    fn depth_tag(&self, depth: usize) -> String {
        format!("{}n{depth:0w$}", self.base, w = DEPTH_DIGITS)
    }

    /// The key holding node `path`.
    pub fn node(&self, path: &Path) -> String {
        format!("{}{}", self.depth_tag(path.depth()), path.as_str())
    }

    /// The prefix of exactly the children of `parent` (no grandchildren), ending with `/`.
    pub fn children_prefix(&self, parent: &Path) -> String {
        let p = if parent.is_root() {
            ""
        } else {
            parent.as_str()
        };
        format!("{}{p}/", self.depth_tag(parent.depth() + 1))
    }

    /// The key of `parent`'s sequence counter.
    pub fn sequence(&self, parent: &Path) -> String {
        format!("{}s{}", self.base, parent.as_str())
    }

    /// The key of `parent`'s child-version counter (for stores that cannot check a key
    /// range's emptiness inside a transaction).
    pub fn child_version(&self, parent: &Path) -> String {
        format!("{}c{}", self.base, parent.as_str())
    }

    /// The child name in `key`, a key found under `children_prefix` (`None` if it is not one:
    /// foreign data).
    pub fn child_name<'k>(children_prefix: &str, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(children_prefix)?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }
}

/// A stored entry, as the tree reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// The store's modification stamp (etcd mod revision, Consul modify index): the version.
    pub modified: u64,
    /// The store's creation stamp (etcd create revision, Consul create index).
    pub created: u64,
    /// The session owning the entry if it is ephemeral.
    pub owner: Option<SessionId>,
}

impl Entry {
    /// The entry's metadata.
    pub fn stat(&self) -> Stat {
        Stat::new(Version(self.modified), self.owner.clone()).with_created(self.created)
    }
}

/// A guard as the store checks it in a write's transaction: the guard node's key exists, and
/// has the modification stamp `version` and the creation stamp `created` where set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardCheck<'a> {
    /// The guard node's key.
    pub key: &'a str,
    /// The modification stamp (version) it must have.
    pub version: Option<Version>,
    /// The creation stamp it must have.
    pub created: Option<u64>,
}

/// A parent's sequence counter as last read: the next number and the counter's stamp (0:
/// absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The number the next sequential create takes.
    pub next: u64,
    /// The counter's modification stamp; 0 while it does not exist.
    pub stamp: u64,
}

impl Counter {
    /// The counter stored in `entry` (`None`: absent); [`Error::MalformedData`] if it is not a
    /// decimal number.
    pub fn parse(key: &str, entry: Option<&Entry>) -> Result<Counter> {
        let Some(e) = entry else {
            return Ok(Counter { next: 0, stamp: 0 });
        };
        let next = std::str::from_utf8(&e.value)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::MalformedData {
                path: key.to_owned(),
                reason: "a sequence counter that is not a decimal number".into(),
            })?;
        Ok(Counter {
            next,
            stamp: e.modified,
        })
    }
}

/// One attempt at a create, for the store to run as one transaction: the parent (unless it
/// is the root) exists and is not ephemeral, `key` is absent, and for a sequential create the
/// counter is still at `counter.stamp`; then `key` is written (owned by `owner` if given) and
/// the counter set to `counter.next + 1`.
#[derive(Debug)]
pub struct CreateAttempt<'a, O> {
    /// The node being created.
    pub path: &'a Path,
    /// The parent node's key, `None` for the root.
    pub parent: Option<&'a str>,
    /// The key to create.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// The session owning the new key (ephemeral), or `None` (persistent).
    pub owner: Option<&'a O>,
    /// The parent's counter key and the state it must still be in (sequential only).
    pub counter: Option<(&'a str, Counter)>,
    /// The guard to check in the same transaction (a guarded create).
    pub guard: Option<GuardCheck<'a>>,
}

/// What a create attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Written; the new key's stamp (its creation and modification stamp: they are equal).
    Created(u64),
    /// The guard check failed (nothing written).
    GuardFailed,
    /// The parent does not exist.
    NoParent,
    /// The parent is ephemeral.
    EphemeralParent,
    /// The key exists.
    Taken,
    /// The owning session is gone.
    OwnerGone,
    /// The counter moved: its state now if the store read it in the same round trip, else
    /// `None` (the tree reads it again).
    CounterMoved(Option<Counter>),
    /// Something changed between the checks and the write (a stale guess, a concurrent
    /// writer): try again, after a back-off if `contended`.
    Retry {
        /// Whether another writer is the cause (then the next attempt backs off).
        contended: bool,
    },
}

/// What one attempt at a delete found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted (with its counters).
    Deleted,
    /// The key does not exist.
    Missing,
    /// The key is at another version than expected.
    Mismatch,
    /// The key has children.
    NotEmpty,
    /// The key or its children changed in between: try again after a back-off.
    Retry,
    /// The guard check failed (nothing written).
    GuardFailed,
}

/// One attempt at a delete of `path` (not the root): only at version `expected` if given,
/// only without children, only if the guard (if any) holds.
#[derive(Debug)]
pub struct DeleteAttempt<'a> {
    /// The node deleted.
    pub path: &'a Path,
    /// The version it must be at.
    pub expected: Option<Version>,
    /// The guard to check in the same transaction (a guarded delete).
    pub guard: Option<GuardCheck<'a>>,
}

/// A write of an existing key, only at version `expected` if given.
#[derive(Debug)]
pub struct SetAttempt<'a> {
    /// The node written.
    pub path: &'a Path,
    /// Its key.
    pub key: &'a str,
    /// The new value.
    pub value: &'a [u8],
    /// The version the key must be at.
    pub expected: Option<Version>,
    /// The guard to check in the same transaction (a guarded write).
    pub guard: Option<GuardCheck<'a>>,
}

/// What a write found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// Written: the new entry's stat (the owner of an ephemeral is kept).
    Written(Stat),
    /// The key does not exist.
    Missing,
    /// The key is at another version than expected.
    Mismatch,
    /// The guard check failed (nothing written).
    GuardFailed,
}

/// The transactional steps a flat store supplies; [`Tree`] does the rest.
#[async_trait]
pub trait FlatStore: Send + Sync + 'static {
    /// How the store names the session that owns an ephemeral key.
    type Owner: Send + Sync;

    /// Reads one key.
    async fn read(&self, key: &str) -> Result<Option<Entry>>;
    /// Runs one create attempt as one transaction (see [`CreateAttempt`]).
    async fn try_create(&self, attempt: &CreateAttempt<'_, Self::Owner>) -> Result<CreateOutcome>;
    /// Runs one delete attempt (see [`DeleteAttempt`]) atomically, removing the node's
    /// counters too.
    async fn try_delete(&self, attempt: &DeleteAttempt<'_>) -> Result<DeleteOutcome>;
    /// Writes an existing key (keeping its owner), only at the expected version if given, only
    /// if the guard (if any) holds.
    async fn try_set(&self, write: &SetAttempt<'_>) -> Result<SetOutcome>;
    /// The names under a children prefix, sorted, and the stamp of the read.
    async fn list(&self, prefix: &str) -> Result<(Vec<String>, u64)>;
    /// Whether `key` existed at the stamp of a [`FlatStore::list`] (stores without
    /// multi-version reads answer with the current state).
    async fn existed_at(&self, key: &str, stamp: u64) -> Result<bool>;
}

/// The tree rules over a [`FlatStore`].
#[derive(Debug)]
pub struct Tree<S> {
    /// The store.
    pub store: S,
    /// The key layout of the namespace.
    pub layout: Layout,
    /// The namespace (`""` for none).
    pub namespace: String,
    /// The backend's abilities and limits.
    pub caps: Capabilities,
}

fn root_node() -> Node {
    Node {
        path: Path::root(),
        value: Vec::new(),
        stat: Stat::new(Version(0), None),
    }
}

/// A guard with the store key of its node: the layout's key of the guard's path, or a raw key
/// outside the layout ([`Tree::write_if_key`]).
struct Keyed<'a> {
    guard: &'a Guard,
    key: String,
}

/// The store's check of `guard`.
fn check_of<'a>(guard: Option<&'a Keyed<'_>>) -> Option<GuardCheck<'a>> {
    guard.map(|g| GuardCheck {
        key: &g.key,
        version: g.guard.version,
        created: g.guard.created,
    })
}

/// The error of a create attempt that ends the create without a result.
fn create_error<O>(
    backend: &'static str,
    outcome: CreateOutcome,
    path: &Path,
    parent: &Path,
    full: &Path,
    owner: Option<(&O, &SessionId)>,
) -> Error {
    match outcome {
        CreateOutcome::NoParent => Error::NoParent {
            path: path.to_string(),
        },
        CreateOutcome::EphemeralParent => Error::EphemeralParent {
            path: parent.to_string(),
        },
        CreateOutcome::OwnerGone => Error::SessionExpired {
            session: owner.map(|(_, s)| s.0.clone()).unwrap_or_default(),
        },
        CreateOutcome::Taken => Error::AlreadyExists {
            path: full.to_string(),
        },
        other => Error::backend(
            backend,
            format!("unexpected create outcome {other:?} for {path}"),
            false,
        ),
    }
}

impl<S: FlatStore> Tree<S> {
    /// The tree of `store` in `namespace`, for a backend with `caps`.
    pub fn new(store: S, namespace: &str, caps: Capabilities) -> Tree<S> {
        Tree {
            store,
            layout: Layout::new(namespace),
            namespace: namespace.to_owned(),
            caps,
        }
    }

    /// Creates `path` (not the root; value already checked), owned by `owner` if given.
    pub async fn create(
        &self,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
        owner: Option<(&S::Owner, &SessionId)>,
    ) -> Result<Created> {
        self.create_guarded(path, value, mode, owner, None).await
    }

    /// The counter a sequential create uses in its next attempt: the one it last saw, else
    /// read now (`None` for an exact create).
    async fn counter_for(
        &self,
        sequential: bool,
        last: Option<Counter>,
        key: &str,
    ) -> Result<Option<Counter>> {
        Ok(match (sequential, last) {
            (false, _) => None,
            (true, Some(c)) => Some(c),
            (true, None) => Some(Counter::parse(key, self.store.read(key).await?.as_ref())?),
        })
    }

    /// A create, checking `guard` in each attempt's transaction.
    async fn create_guarded(
        &self,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
        owner: Option<(&S::Owner, &SessionId)>,
        guard: Option<&Keyed<'_>>,
    ) -> Result<Created> {
        let parent = path.parent().ok_or_else(|| Error::AlreadyExists {
            path: path.to_string(),
        })?;
        let pkey = (!parent.is_root()).then(|| self.layout.node(&parent));
        let ckey = self.layout.sequence(&parent);
        let sequential = mode == CreateMode::Sequential;
        let mut counter = None;
        let mut backoff = Backoff::contention();
        for _ in 0..MAX_ATTEMPTS {
            let c = self.counter_for(sequential, counter, &ckey).await?;
            let full = match c {
                Some(c) => parent.join(&format!("{}{}", path.name(), format_sequence(c.next)))?,
                None => path.clone(),
            };
            let key = self.layout.node(&full);
            let attempt = CreateAttempt {
                path: &full,
                parent: pkey.as_deref(),
                key: &key,
                value,
                owner: owner.map(|(o, _)| o),
                counter: c.map(|c| (ckey.as_str(), c)),
                guard: check_of(guard),
            };
            counter = c;
            match self.store.try_create(&attempt).await? {
                CreateOutcome::Created(stamp) => {
                    let sid = owner.map(|(_, sid)| sid.clone());
                    return Ok(Created {
                        path: full,
                        sequence: c.map(|c| c.next),
                        stat: Stat::new(Version(stamp), sid).with_created(stamp),
                    });
                }
                // A node with this exact name exists (made by an exact create): skip it.
                CreateOutcome::Taken if sequential => {
                    counter = c.map(|c| Counter {
                        next: c.next + 1,
                        ..c
                    });
                }
                // Another creator took the number: go on from the counter's new value.
                CreateOutcome::CounterMoved(now) => {
                    counter = now;
                    backoff.wait().await;
                }
                CreateOutcome::Retry { contended } => {
                    if contended {
                        backoff.wait().await;
                    }
                }
                CreateOutcome::GuardFailed => {
                    self.recheck_guard(guard).await?;
                    backoff.wait().await;
                }
                other => {
                    let backend = self.caps.backend;
                    return Err(create_error(backend, other, path, &parent, &full, owner));
                }
            }
        }
        Err(Error::Contended {
            op: "create",
            path: path.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// A guard check failed in the store: [`Error::GuardFailed`] if the guard no longer
    /// holds; `Ok` (try again) if it still does (the store checked a stamp read before, and
    /// the guard node was written in between).
    async fn recheck_guard(&self, guard: Option<&Keyed<'_>>) -> Result<()> {
        let Some(g) = guard else {
            return Err(Error::backend(
                self.caps.backend,
                "the store reported a failed guard for an unguarded write",
                false,
            ));
        };
        let stat = self.store.read(&g.key).await?.map(|e| e.stat());
        match g.guard.failure(stat.as_ref()) {
            Some(reason) => Err(g.guard.error(reason)),
            None => Ok(()),
        }
    }

    /// Reads `path` (the root: always there, empty, version 0).
    pub async fn get(&self, path: &Path) -> Result<Node> {
        if path.is_root() {
            return Ok(root_node());
        }
        match self.store.read(&self.layout.node(path)).await? {
            Some(e) => Ok(Node {
                path: path.clone(),
                stat: e.stat(),
                value: e.value,
            }),
            None => Err(Error::NotFound {
                path: path.to_string(),
            }),
        }
    }

    /// `path`'s stat, `None` if absent.
    pub async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        if path.is_root() {
            return Ok(Some(root_node().stat));
        }
        Ok(self
            .store
            .read(&self.layout.node(path))
            .await?
            .map(|e| e.stat()))
    }

    /// Writes `path` (not the root; value already checked).
    pub async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        self.set_guarded(path, value, expected, None).await
    }

    /// A write, checking `guard` in the same transaction.
    async fn set_guarded(
        &self,
        path: &Path,
        value: &[u8],
        expected: Option<Version>,
        guard: Option<&Keyed<'_>>,
    ) -> Result<Stat> {
        let key = self.layout.node(path);
        let write = SetAttempt {
            path,
            key: &key,
            value,
            expected,
            guard: check_of(guard),
        };
        let mut backoff = Backoff::contention();
        for _ in 0..MAX_ATTEMPTS {
            match self.store.try_set(&write).await? {
                SetOutcome::Written(stat) => return Ok(stat),
                SetOutcome::Missing => {
                    return Err(Error::NotFound {
                        path: path.to_string(),
                    })
                }
                SetOutcome::Mismatch => {
                    return Err(Error::VersionMismatch {
                        path: path.to_string(),
                        expected: expected.unwrap_or(Version(0)),
                    })
                }
                SetOutcome::GuardFailed => {
                    self.recheck_guard(guard).await?;
                    backoff.wait().await;
                }
            }
        }
        Err(Error::Contended {
            op: "set",
            path: path.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes `path` (not the root).
    pub async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        self.delete_guarded(path, expected, None).await
    }

    /// A delete, checking `guard` in each attempt's transaction.
    async fn delete_guarded(
        &self,
        path: &Path,
        expected: Option<Version>,
        guard: Option<&Keyed<'_>>,
    ) -> Result<()> {
        let attempt = DeleteAttempt {
            path,
            expected,
            guard: check_of(guard),
        };
        let mut backoff = Backoff::contention();
        for _ in 0..MAX_ATTEMPTS {
            let p = path.to_string();
            match self.store.try_delete(&attempt).await? {
                DeleteOutcome::Deleted => return Ok(()),
                DeleteOutcome::Missing => return Err(Error::NotFound { path: p }),
                DeleteOutcome::Mismatch => {
                    return Err(Error::VersionMismatch {
                        path: p,
                        expected: expected.unwrap_or(Version(0)),
                    })
                }
                DeleteOutcome::NotEmpty => return Err(Error::NotEmpty { path: p }),
                DeleteOutcome::Retry => backoff.wait().await,
                DeleteOutcome::GuardFailed => {
                    self.recheck_guard(guard).await?;
                    backoff.wait().await;
                }
            }
        }
        Err(Error::Contended {
            op: "delete",
            path: path.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Runs `op` only if `guard` holds (see the module docs); checks already done.
    pub async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        let key = self.layout.node(&guard.path);
        self.write_keyed(&Keyed { guard, key }, op).await
    }

    /// [`Tree::write_if`] with a guard node stored at the raw key `key`, outside the layout
    /// (a peer's election key, for the dialects); `guard.path` only names it in errors.
    pub async fn write_if_key(
        &self,
        guard: &Guard,
        key: &str,
        op: &WriteOp,
    ) -> Result<WriteResult> {
        let keyed = Keyed {
            guard,
            key: key.to_owned(),
        };
        self.write_keyed(&keyed, op).await
    }

    async fn write_keyed(&self, guard: &Keyed<'_>, op: &WriteOp) -> Result<WriteResult> {
        Ok(match op {
            WriteOp::Create { path, value, mode } => WriteResult::Created(
                self.create_guarded(path, value, *mode, None, Some(guard))
                    .await?,
            ),
            WriteOp::Set {
                path,
                value,
                expected,
            } => WriteResult::Set(
                self.set_guarded(path, value, *expected, Some(guard))
                    .await?,
            ),
            WriteOp::Delete { path, expected } => {
                self.delete_guarded(path, *expected, Some(guard)).await?;
                WriteResult::Deleted
            }
        })
    }

    /// The sorted names of `path`'s children ([`Error::NotFound`] if it is absent).
    pub async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let (names, stamp) = self.store.list(&self.layout.children_prefix(path)).await?;
        // Children exist only under an existing parent (create needs it, delete needs no
        // children), so the parent is read only when the list is empty: one round trip in the
        // common case; the store reads it at the list's stamp where it can.
        if names.is_empty()
            && !path.is_root()
            && !self
                .store
                .existed_at(&self.layout.node(path), stamp)
                .await?
        {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        }
        Ok(names)
    }
}

/// A backend over a flat store: its [`Tree`] answers the key operations, the adapter
/// supplies only sessions and watches; coord-core implements [`RawBackend`] for it.
#[async_trait]
pub trait FlatBackend: Send + Sync + 'static {
    /// The store under the tree.
    type Store: FlatStore;
    /// The namespace's tree (with the capabilities and the namespace).
    fn tree(&self) -> &Tree<Self::Store>;
    /// See [`RawBackend::open_session`].
    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>>;
    /// See [`RawBackend::watch`].
    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)>;
    /// See [`RawBackend::watch_children`].
    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)>;
    /// See [`RawBackend::native_registry`] (`None` by default).
    fn native_registry(&self) -> Option<Arc<dyn crate::registry::NativeRegistry>> {
        None
    }
    /// See [`RawBackend::dialect_driver`].
    fn dialect_driver(&self, _dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        None
    }
    /// See [`RawBackend::as_any`].
    fn as_any(&self) -> &dyn Any
    where
        Self: Sized,
    {
        self
    }
}

#[async_trait]
impl<T: FlatBackend> RawBackend for T {
    fn capabilities(&self) -> &Capabilities {
        &self.tree().caps
    }

    fn namespace(&self) -> &str {
        &self.tree().namespace
    }

    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>> {
        FlatBackend::open_session(self, ttl).await
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        self.tree().create(path, value, mode, None).await
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        self.tree().get(path).await
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        self.tree().exists(path).await
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        self.tree().set(path, value, expected).await
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        self.tree().delete(path, expected).await
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        self.tree().write_if(guard, op).await
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        self.tree().children(path).await
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        FlatBackend::watch(self, path).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        FlatBackend::watch_children(self, path).await
    }

    fn native_registry(&self) -> Option<Arc<dyn crate::registry::NativeRegistry>> {
        FlatBackend::native_registry(self)
    }

    fn dialect_driver(&self, dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        FlatBackend::dialect_driver(self, dialect)
    }

    fn as_any(&self) -> &dyn Any {
        FlatBackend::as_any(self)
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
        let l = Layout::new("/ns");
        assert_eq!(l.node(&p("/a/b")), "ns/__coord/n002/a/b");
        assert_eq!(l.node(&Path::root()), "ns/__coord/n000/");
        assert_eq!(l.children_prefix(&p("/a")), "ns/__coord/n002/a/");
        assert_eq!(l.children_prefix(&Path::root()), "ns/__coord/n001/");
        assert_eq!(l.sequence(&p("/a")), "ns/__coord/s/a");
        assert_eq!(l.sequence(&Path::root()), "ns/__coord/s/");
        assert_eq!(l.child_version(&p("/a/b")), "ns/__coord/c/a/b");
        assert_eq!(Layout::new("").node(&p("/x")), "__coord/n001/x");
        // A child key lies under its parent's children prefix; a grandchild does not.
        let kids = l.children_prefix(&p("/a"));
        assert!(l.node(&p("/a/b")).starts_with(&kids));
        assert!(!l.node(&p("/a/b/c")).starts_with(&kids));
        assert!(!l.node(&p("/ab")).starts_with(&kids));
        assert_eq!(Layout::child_name(&kids, &l.node(&p("/a/b"))), Some("b"));
        // Namespaces never nest: no key of one lies under another's prefix.
        let inner = Layout::new("/ns/x");
        assert!(!inner.node(&p("/a")).starts_with(l.namespace_prefix()));
        assert!(!l.node(&p("/x/a")).starts_with(inner.namespace_prefix()));
    }

    /// A store that always loses the race (or reports a counter it cannot parse).
    struct Hostile {
        counter: &'static [u8],
    }

    #[async_trait]
    impl FlatStore for Hostile {
        type Owner = ();

        async fn read(&self, _key: &str) -> Result<Option<Entry>> {
            Ok(Some(Entry {
                value: self.counter.to_vec(),
                modified: 1,
                created: 1,
                owner: None,
            }))
        }

        async fn try_create(&self, _: &CreateAttempt<'_, ()>) -> Result<CreateOutcome> {
            Ok(CreateOutcome::CounterMoved(None))
        }

        async fn try_delete(&self, _: &DeleteAttempt<'_>) -> Result<DeleteOutcome> {
            Ok(DeleteOutcome::Retry)
        }

        async fn try_set(&self, _: &SetAttempt<'_>) -> Result<SetOutcome> {
            Ok(SetOutcome::Missing)
        }

        async fn list(&self, _: &str) -> Result<(Vec<String>, u64)> {
            Ok((vec![], 1))
        }

        async fn existed_at(&self, _: &str, _: u64) -> Result<bool> {
            Ok(true)
        }
    }

    /// Contention exhaustion is one variant on every flat store (etcd said `Backend`,
    /// Consul `Timeout`); a malformed counter is an error (etcd read it as 0).
    #[tokio::test(start_paused = true)]
    async fn lost_races_end_in_contended_and_bad_counters_in_malformed_data() {
        let t = Tree::new(Hostile { counter: b"5" }, "/ns", Capabilities::new("test"));
        let r = t
            .create(&p("/q/n-"), b"", CreateMode::Sequential, None)
            .await;
        assert!(
            matches!(&r, Err(Error::Contended { op: "create", attempts, .. }) if *attempts == MAX_ATTEMPTS),
            "{r:?}"
        );
        assert!(r.is_err_and(|e| e.is_retryable()));
        let r = t.delete(&p("/q"), None).await;
        assert!(
            matches!(r, Err(Error::Contended { op: "delete", .. })),
            "{r:?}"
        );
        let t = Tree::new(Hostile { counter: b"x" }, "/ns", Capabilities::new("test"));
        let r = t
            .create(&p("/q/n-"), b"", CreateMode::Sequential, None)
            .await;
        assert!(matches!(r, Err(Error::MalformedData { .. })), "{r:?}");
    }

    #[test]
    fn counters_parse_strictly() {
        let e = |v: &[u8]| Entry {
            value: v.to_vec(),
            modified: 7,
            created: 7,
            owner: None,
        };
        assert_eq!(
            Counter::parse("k", None).unwrap(),
            Counter { next: 0, stamp: 0 }
        );
        assert_eq!(
            Counter::parse("k", Some(&e(b"12"))).unwrap(),
            Counter { next: 12, stamp: 7 }
        );
        for bad in [&b"x"[..], b"", b"-1", b"1.5"] {
            assert!(matches!(
                Counter::parse("k", Some(&e(bad))),
                Err(Error::MalformedData { .. })
            ));
        }
    }
}
