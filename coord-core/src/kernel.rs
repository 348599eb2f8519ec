//! The coordination kernel: the traits every backend implements and the recipes build on.
//!
//! # Semantic rules (every backend; differences are stated where they exist)
//!
//! - **Namespace.** A [`Backend`] works inside one namespace taken from its URL; paths are
//!   relative to it and two namespaces never see each other's keys.
//! - **Parents.** A create needs its parent to exist
//!   ([`Error::NoParent`](crate::Error::NoParent) otherwise), except directly under the
//!   namespace root. [`crate::create_parents`] makes missing parents.
//! - **Ephemerals** belong to one [`Session`] and disappear when it expires or is closed.
//!   They cannot have children ([`Error::EphemeralParent`](crate::Error::EphemeralParent)).
//! - **Sequential** creation appends a [`crate::path::SEQUENCE_DIGITS`]-digit zero-padded
//!   number to the given name. Under one parent the numbers are unique and strictly increasing
//!   in the order the creates take effect; they are not dense (gaps are allowed).
//! - **Versions** are opaque: a [`Version`] changes on every write of a key and is only
//!   compared for equality (compare-and-set). On mem and ZooKeeper it counts writes from 0; on
//!   etcd and Consul it is a revision/index.
//! - **Delete** refuses a key with children ([`Error::NotEmpty`](crate::Error::NotEmpty)).
//! - **The namespace root** `/` always exists, holds no value, and cannot be written or deleted
//!   ([`Error::InvalidArgument`](crate::Error::InvalidArgument)).
//! - **Read-your-writes.** Once a call returns, every later read through the same `Backend`
//!   sees its effect (also for ephemerals created through a session). Reads never go back to
//!   an older state than one they answered from, but they need not be linearizable: what
//!   another client changed may show only after [`Backend::sync`] (a lagging ZooKeeper member).
//! - **Watches** are registered atomically with the read they return: a change that takes
//!   effect after the read is delivered. Events of one watch arrive in order. A backend may
//!   coalesce intermediate states ([`Capabilities::watch_coalesces`]) but never skips the latest
//!   one: after the last change, the last event describes the current state. When the backend
//!   cannot prove that nothing was missed (a reconnect, an etcd compaction, a Consul index
//!   reset) it re-reads and yields a `Resync` event with the current state. While the
//!   connection is suspended a watch yields nothing; it does not end on suspension or on a
//!   session's expiry (watches belong to the `Backend`, not to a session). A stream ends only
//!   when the `Backend` is dropped; an `Err` item is final.
//! - **Creation stamps.** Every node carries [`Stat::created`], the store's own global stamp
//!   of the transaction that created it: ZooKeeper's `czxid`, etcd's create revision, Consul's
//!   `CreateIndex`, and on mem a store-wide counter starting at 1. It is never 0 for a stored
//!   node (only the namespace root of mem, etcd and Consul, which is not stored, has 0), is
//!   the same in every read of one node (get, exists, watch events, the answer of the create),
//!   and is strictly larger for every node created later anywhere in the store: also for a
//!   node created again at the same path after a delete, and across the deletion and
//!   re-creation of its parent. It survives restarts of the servers and of coord, but not the
//!   loss of the store's data: a Consul `-dev` agent (in-memory, restarts at a small index), a
//!   wiped etcd or ZooKeeper data directory, or a new `mem` store start again from a small
//!   number. The election and lock recipes use the stamp of the holder's candidate node as
//!   the fencing token.
//! - **Guarded writes.** [`Backend::write_if`] runs one create, set or delete only if a
//!   [`Guard`] node still exists (and, if the guard names them, still has that version and that
//!   creation stamp), atomically in the store: ZooKeeper `multi` with a `check` op, an etcd
//!   transaction comparing the guard key's create/mod revision, a Consul `/v1/txn` with a
//!   `check-index` of the guard key, mem under its lock. A failed guard is
//!   [`Error::GuardFailed`](crate::Error::GuardFailed) and nothing is written; it is checked
//!   before the operation's own rules (so a write that would also fail reports the guard).
//!   Otherwise the operation behaves exactly as its unguarded form (same errors). Creates
//!   under a guard are persistent. On ZooKeeper a guard with a creation stamp is compared by a
//!   read just before the transaction, which then checks the version read: a node deleted and
//!   created again at the same path between the two, at the same data version, is not
//!   detected (never the case for the recipes' candidate nodes, whose names are unique).

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::error::Result;
use crate::path::Path;

/// The version of a key's value, for compare-and-set. Opaque: compare for equality only (it has
/// no order: on etcd and Consul it is a store-wide revision, not a per-key count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The identity of a session, as the backend names it (ZooKeeper session id, etcd lease id,
/// Consul session UUID, or a mem counter).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub String);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Metadata of a stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stat {
    /// The version to pass to compare-and-set operations.
    pub version: Version,
    /// The session owning the key if it is ephemeral.
    pub ephemeral_owner: Option<SessionId>,
    /// The store's global stamp of the key's creation (ZooKeeper `czxid`, etcd create
    /// revision, Consul `CreateIndex`, mem store counter): never 0 for a stored key, unchanged
    /// by writes, strictly larger for every key created later (see the module docs).
    pub created: u64,
}

impl Stat {
    /// A stat with the given version and owner, and creation stamp 0 (set it with
    /// [`Stat::with_created`]).
    pub fn new(version: Version, ephemeral_owner: Option<SessionId>) -> Stat {
        Stat {
            version,
            ephemeral_owner,
            created: 0,
        }
    }

    /// Sets [`Stat::created`].
    pub fn with_created(mut self, created: u64) -> Stat {
        self.created = created;
        self
    }
}

/// The node a guarded write ([`Backend::write_if`]) depends on: it must exist, and have the
/// given version and creation stamp where those are set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Guard {
    /// The guard node (not the namespace root).
    pub path: Path,
    /// The version the node must be at, if set.
    pub version: Option<Version>,
    /// The creation stamp ([`Stat::created`]) the node must have, if set: the node must be the
    /// very one created then, not one created again at the same path.
    pub created: Option<u64>,
}

impl Guard {
    /// A guard that only needs `path` to exist.
    pub fn exists(path: Path) -> Guard {
        Guard {
            path,
            version: None,
            created: None,
        }
    }

    /// A guard on the node `path` created at stamp `created` (as a fencing token names it):
    /// holds while that node exists, whatever is written to it.
    pub fn created(path: Path, created: u64) -> Guard {
        Guard::exists(path).with_created(created)
    }

    /// Also requires the version `version`.
    pub fn with_version(mut self, version: Version) -> Guard {
        self.version = Some(version);
        self
    }

    /// Also requires the creation stamp `created`.
    pub fn with_created(mut self, created: u64) -> Guard {
        self.created = Some(created);
        self
    }

    /// Whether a node with `stat` (`None`: absent) satisfies the guard.
    pub fn holds(&self, stat: Option<&Stat>) -> bool {
        self.failure(stat).is_none()
    }

    /// Why a node with `stat` (`None`: absent) fails the guard, `None` if it satisfies it.
    pub fn failure(&self, stat: Option<&Stat>) -> Option<GuardFailure> {
        let Some(stat) = stat else {
            return Some(GuardFailure::Absent);
        };
        if self.created.is_some_and(|c| c != stat.created) {
            return Some(GuardFailure::Replaced);
        }
        if self.version.is_some_and(|v| v != stat.version) {
            return Some(GuardFailure::Changed);
        }
        None
    }

    /// The [`crate::Error::GuardFailed`] for `reason`.
    pub fn error(&self, reason: GuardFailure) -> crate::Error {
        crate::Error::GuardFailed {
            path: self.path.to_string(),
            reason,
        }
    }
}

/// Why a guard failed (see [`crate::Error::GuardFailed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GuardFailure {
    /// The guard node does not exist.
    Absent,
    /// A node exists at the guard's path, but it was created at another stamp: the guarded
    /// node was deleted and another one created there.
    Replaced,
    /// The guard node is at another version than the guard names.
    Changed,
    /// Not sent to the store: the holder of a role (leadership, lock) already knows it lost
    /// it (resigned, unlocked, session ended, or suspended under the default policy).
    Released,
}

impl fmt::Display for GuardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuardFailure::Absent => "the guard node does not exist",
            GuardFailure::Replaced => "the guard node was replaced by another one",
            GuardFailure::Changed => "the guard node is at another version",
            GuardFailure::Released => "the role guarding the write was lost",
        })
    }
}

/// A write to run under a [`Guard`] ([`Backend::write_if`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOp {
    /// [`Backend::create`] (a persistent key).
    Create {
        /// The key (the prefix of the name if sequential).
        path: Path,
        /// The value.
        value: Vec<u8>,
        /// Exact or sequential.
        mode: CreateMode,
    },
    /// [`Backend::set`].
    Set {
        /// The key.
        path: Path,
        /// The new value.
        value: Vec<u8>,
        /// The version the key must be at, if set.
        expected: Option<Version>,
    },
    /// [`Backend::delete`].
    Delete {
        /// The key.
        path: Path,
        /// The version the key must be at, if set.
        expected: Option<Version>,
    },
}

impl WriteOp {
    /// An exact create of `path`.
    pub fn create(path: Path, value: impl Into<Vec<u8>>) -> WriteOp {
        WriteOp::Create {
            path,
            value: value.into(),
            mode: CreateMode::Exact,
        }
    }

    /// An unconditional write of `path`.
    pub fn set(path: Path, value: impl Into<Vec<u8>>) -> WriteOp {
        WriteOp::Set {
            path,
            value: value.into(),
            expected: None,
        }
    }

    /// An unconditional delete of `path`.
    pub fn delete(path: Path) -> WriteOp {
        WriteOp::Delete {
            path,
            expected: None,
        }
    }

    /// The key written.
    pub fn path(&self) -> &Path {
        match self {
            WriteOp::Create { path, .. }
            | WriteOp::Set { path, .. }
            | WriteOp::Delete { path, .. } => path,
        }
    }
}

/// What a guarded write did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteResult {
    /// The create's result.
    Created(Created),
    /// The new stat of the written key.
    Set(Stat),
    /// The key was deleted.
    Deleted,
}

/// A key's value with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The key.
    pub path: Path,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The metadata.
    pub stat: Stat,
}

/// Whether a create uses the given name as is or appends a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// The key is created with exactly the given path.
    #[default]
    Exact,
    /// The backend appends a unique, strictly increasing, zero-padded number to the name.
    Sequential,
}

/// What a create made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The key created (with the sequence suffix if sequential).
    pub path: Path,
    /// The sequence number appended, if sequential.
    pub sequence: Option<u64>,
    /// The new key's metadata.
    pub stat: Stat,
}

/// The liveness of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// In contact with the server; the session is alive.
    Connected,
    /// Contact lost; the session may still be alive on the server and may recover. Ephemerals
    /// may disappear at any time after the session's TTL: act as if you may have lost them.
    Suspended,
    /// Final: the server ended the session; all its ephemerals are gone.
    Expired,
    /// Final: the owner closed the session; all its ephemerals are gone.
    Closed,
}

impl SessionState {
    /// Whether the state is final (Expired or Closed).
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Expired | SessionState::Closed)
    }
}

/// Options for opening a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    /// How long the session survives without contact. `None`: the backend's configured
    /// default (from the URL). Must lie within the backend's [`Capabilities`] bounds.
    pub ttl: Option<Duration>,
}

impl SessionOptions {
    /// Options with the backend's default TTL.
    pub fn new() -> SessionOptions {
        SessionOptions { ttl: None }
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> SessionOptions {
        self.ttl = Some(ttl);
        self
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions::new()
    }
}

/// What a backend can do and its limits. The recipes and the conformance suite read it
/// instead of probing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name: `mem`, `zk`, `etcd`, `consul`.
    pub backend: &'static str,
    /// The largest value accepted, in bytes.
    pub max_value_size: usize,
    /// The shortest session TTL accepted.
    pub min_session_ttl: Duration,
    /// The longest session TTL accepted.
    pub max_session_ttl: Duration,
    /// The TTL of a session opened without one.
    pub default_session_ttl: Duration,
    /// Whether watches may merge several quick changes into one event (see the module docs).
    pub watch_coalesces: bool,
    /// The layout of [`crate::Client::registry`] (the URL option `registry`; default:
    /// [`RegistryLayout::Default`](crate::registry::RegistryLayout::Default)).
    pub registry_layout: crate::registry::RegistryLayout,
}

impl Capabilities {
    /// The capabilities of `backend` with conservative defaults (values up to 1 MiB, session
    /// TTLs from 1 s to 24 h with 10 s by default, watches that may coalesce); a backend sets
    /// what differs with the named `with_*` methods, so no two limits can be swapped.
    pub fn new(backend: &'static str) -> Capabilities {
        Capabilities {
            backend,
            max_value_size: 1024 * 1024,
            min_session_ttl: Duration::from_secs(1),
            max_session_ttl: Duration::from_secs(24 * 3600),
            default_session_ttl: Duration::from_secs(10),
            watch_coalesces: true,
            registry_layout: crate::registry::RegistryLayout::Default,
        }
    }

    /// Sets [`Capabilities::max_value_size`].
    pub fn with_max_value_size(mut self, bytes: usize) -> Capabilities {
        self.max_value_size = bytes;
        self
    }

    /// Sets [`Capabilities::min_session_ttl`].
    pub fn with_min_session_ttl(mut self, ttl: Duration) -> Capabilities {
        self.min_session_ttl = ttl;
        self
    }

    /// Sets [`Capabilities::max_session_ttl`].
    pub fn with_max_session_ttl(mut self, ttl: Duration) -> Capabilities {
        self.max_session_ttl = ttl;
        self
    }

    /// Sets [`Capabilities::default_session_ttl`].
    pub fn with_default_session_ttl(mut self, ttl: Duration) -> Capabilities {
        self.default_session_ttl = ttl;
        self
    }

    /// Sets [`Capabilities::watch_coalesces`].
    pub fn with_watch_coalesces(mut self, coalesces: bool) -> Capabilities {
        self.watch_coalesces = coalesces;
        self
    }

    /// Sets [`Capabilities::registry_layout`].
    pub fn with_registry_layout(mut self, layout: crate::registry::RegistryLayout) -> Capabilities {
        self.registry_layout = layout;
        self
    }
}

/// A stream of key events. See [`KeyEvent`].
pub type KeyWatch = Pin<Box<dyn Stream<Item = Result<KeyEvent>> + Send>>;
/// A stream of children events. See [`ChildrenEvent`].
pub type ChildrenWatch = Pin<Box<dyn Stream<Item = Result<ChildrenEvent>> + Send>>;
/// A stream of session states: the current state first, then every change; ends after a
/// final state.
pub type SessionStates = Pin<Box<dyn Stream<Item = SessionState> + Send>>;

/// A change of one watched key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// The key was created; its new value.
    Created(Node),
    /// The key's value was written; its new value.
    Changed(Node),
    /// The key was deleted.
    Deleted,
    /// Changes may have been missed (reconnect, compaction, index reset); this is the current
    /// state after a fresh read (`None`: absent).
    Resync(Option<Node>),
}

/// A change of a watched parent's children. Each event carries the full sorted list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildrenEvent {
    /// The children changed; the list after the change.
    Changed(Vec<String>),
    /// The parent was deleted (the list is empty until it comes back).
    ParentDeleted,
    /// Changes may have been missed; the current list after a fresh read (empty if the parent
    /// is absent).
    Resync(Vec<String>),
}

/// A session: the liveness that ephemeral keys are bound to (ZooKeeper session, etcd lease,
/// Consul session). The backend keeps it alive while its client runs.
#[async_trait]
pub trait Session: Send + Sync + 'static {
    /// The session's id.
    fn id(&self) -> &SessionId;
    /// The TTL granted.
    fn ttl(&self) -> Duration;
    /// The current state.
    fn state(&self) -> SessionState;
    /// The states as a stream: the current one first, then each change. Ends after a final
    /// state (Expired or Closed).
    fn states(&self) -> SessionStates;
    /// Creates an ephemeral key bound to this session. Fails with
    /// [`crate::Error::SessionExpired`] / [`crate::Error::SessionClosed`] once the session is
    /// gone. Not idempotent: do not retry blindly after a retryable error.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created>;
    /// Closes the session: its ephemerals are deleted now, not after the TTL. Idempotent.
    async fn close(&self) -> Result<()>;
    /// The driver of a peer's election/lock protocol that needs more than the kernel
    /// ([`crate::recipes::dialect`]); `None` (the default) when this backend has none for it.
    fn dialect_driver(
        &self,
        _dialect: crate::recipes::dialect::Dialect,
    ) -> Option<Arc<dyn crate::recipes::dialect::DialectDriver>> {
        None
    }
    /// The backend's native service registry ([`crate::registry::NativeRegistry`]); `None`
    /// (the default) when it has none.
    fn native_registry(&self) -> Option<Arc<dyn crate::registry::NativeRegistry>> {
        None
    }
    /// For backend-specific extensions and test harnesses (downcasting).
    fn as_any(&self) -> &dyn Any;
}

/// A client of one backend in one namespace: keys, watches, and a factory of sessions.
///
/// Object-safe: recipes hold an `Arc<dyn Backend>`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's abilities and limits.
    fn capabilities(&self) -> &Capabilities;
    /// The namespace this client works in (`""` for none).
    fn namespace(&self) -> &str;
    /// Opens a new session.
    async fn open_session(&self, options: SessionOptions) -> Result<Arc<dyn Session>>;
    /// Creates a persistent key.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created>;
    /// Reads a key ([`crate::Error::NotFound`] if absent).
    async fn get(&self, path: &Path) -> Result<Node>;
    /// The key's metadata, `None` if absent.
    async fn exists(&self, path: &Path) -> Result<Option<Stat>>;
    /// Writes a key's value. With `expected`, only if the version is still that one
    /// ([`crate::Error::VersionMismatch`] otherwise). The key must exist.
    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat>;
    /// Deletes a key, only at the `expected` version if given. Refuses a key with children.
    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()>;
    /// The names of a key's children, sorted.
    async fn children(&self, path: &Path) -> Result<Vec<String>>;
    /// Reads a key (`None` if absent) and watches it, atomically.
    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)>;
    /// Lists a key's children (empty if the key is absent) and watches the list, atomically.
    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)>;
    /// Runs `op` only if `guard` holds, atomically (see the module docs):
    /// [`crate::Error::GuardFailed`] and nothing written otherwise. The guard may not be the
    /// namespace root ([`crate::Error::InvalidArgument`]).
    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult>;
    /// Makes this client's later reads of `path` reflect every write the store completed
    /// before the call. Reads are sequentially consistent (never older than an earlier
    /// answer), not linearizable: a ZooKeeper member that lagged behind its leader — one just
    /// back from a partition it did not notice — answers from its own state. A recipe calls
    /// this before a read whose answer it acts on as the present (a grant). ZooKeeper's
    /// `sync`; nothing (the default) where reads are linearizable already.
    async fn sync(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// The driver of a peer's election/lock protocol that needs more than the kernel
    /// ([`crate::recipes::dialect`]); `None` (the default) when this backend has none for it.
    fn dialect_driver(
        &self,
        _dialect: crate::recipes::dialect::Dialect,
    ) -> Option<Arc<dyn crate::recipes::dialect::DialectDriver>> {
        None
    }
    /// The backend's native service registry ([`crate::registry::NativeRegistry`]); `None`
    /// (the default) when it has none.
    fn native_registry(&self) -> Option<Arc<dyn crate::registry::NativeRegistry>> {
        None
    }
    /// For backend-specific extensions and test harnesses (downcasting).
    fn as_any(&self) -> &dyn Any;
}

/// Creates `path` and any missing ancestors as persistent keys with empty values; keys that
/// already exist are left as they are. Returns without error if `path` exists.
pub async fn create_parents(backend: &dyn Backend, path: &Path) -> Result<()> {
    for p in path.ancestors_and_self() {
        if backend.exists(&p).await?.is_some() {
            continue;
        }
        match backend.create(&p, b"", CreateMode::Exact).await {
            Ok(_) | Err(crate::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
