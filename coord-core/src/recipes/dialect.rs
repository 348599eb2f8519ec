//! Dialects: the election and lock protocols of other libraries, so that coord candidates can
//! join the elections and locks of Curator, kazoo, etcd's concurrency package and Consul's
//! `api.Lock` fleets.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! use coord_core::dialect::Dialect;
//! // The LeaderLatch of a Java service at /services/billing/leader (under the URL's namespace).
//! let election = client.election_with("/services/billing/leader", Dialect::CuratorLatch)?;
//! let leadership = election.campaign(b"billing-7").await?; // getLeader().getId() == "billing-7"
//! # Ok(()) }
//! ```
//!
//! The dialects whose layout is ephemeral sequential nodes in a directory (Curator, kazoo) run
//! on the generic candidate queue with the peer's node names and order. The others (etcd's
//! concurrency package, Consul's single-key locks) need what the kernel does not have (raw keys
//! outside coord's layout, CreateRevision order, `?acquire`): their adapter serves them through
//! a [`DialectDriver`] returned by [`crate::Backend::dialect_driver`].
//!
//! A dialect is chosen per election or lock ([`crate::Client::election_with`],
//! [`crate::Client::lock_with`], [`crate::election::Election::with_dialect`],
//! [`crate::lock::Lock::with_dialect`]) or per client handle
//! ([`crate::Client::with_default_dialect`]). A dialect the backend cannot serve fails with
//! [`Error::Unsupported`] before any I/O. The API is the same in every dialect (`campaign`,
//! `resign`, `lost`, `leader`, `observe`, `participants`, `proclaim`, the guarded writes).
//!
//! # The ZooKeeper dialects
//!
//! | dialect | peer | our node | order (the first holds the role) | node data |
//! |---|---|---|---|---|
//! | [`Dialect::CuratorLock`] | Curator `InterProcessMutex`, `LeaderSelector` | `_c_<uuid>-lock-<seq>` | the text after the last `lock-`, a name without it whole (`StandardLockInternalsDriver.fixForSorting`); every child counts | the campaign value (LeaderSelector's participant id); empty for a lock |
//! | [`Dialect::CuratorLatch`] | Curator `LeaderLatch` | `_c_<uuid>-latch-<seq>` | the same with `latch-` | the campaign value (the latch's id) |
//! | [`Dialect::Kazoo`] | kazoo `Lock`, `Election` | `<uuid4 hex>__lock__<seq>` | children matching `__lock__(-?\d{10})$`, by that text (kazoo's `_get_predecessor`, `contenders()`); others ignored | the campaign value (kazoo's identifier); empty for a lock |
//!
//! A waiter watches only its predecessor, as the peers do (herd-free). The `<uuid>` part plays
//! the role of coord's nonce: after a create whose answer was lost, coord finds its node by it
//! (Curator's "protection" and kazoo's retry do the same). The fencing token is the creation
//! zxid of the holder's node (`czxid`, [`crate::Stat::created`]) in every ZooKeeper dialect, so
//! tokens keep increasing when coord and the peer take turns; a peer that wants to fence reads
//! its own node's `czxid` (as the mixed-fleet tests' peers do). Curator's mutex writes the
//! host's IP address as node data by default and LeaderSelector/LeaderLatch the id; coord writes
//! what was passed to `campaign` (and nothing for a lock).
//!
//! ZooKeeper ACLs: with credentials in the URL, coord creates the nodes it makes (the missing
//! parents of the election, its candidate nodes) with *creator all + world read*. Joining a
//! foreign election needs CREATE on its directory and READ on the others' nodes (to read the
//! leader's data and to watch a predecessor); coord never deletes or writes another
//! candidate's node. So: let the peer (or an operator) create the directory, with an ACL that
//! lets every member's identity create children (Curator's and kazoo's default is
//! `world:anyone` all), or give every member the same digest credentials. A directory that
//! coord created with credentials stops peers with another identity from joining (their
//! create fails with `NoAuth`); so does a namespace (chroot) that coord created with
//! credentials when the peer would create the directory in it. coord's own candidate nodes are world-readable, which is all a
//! peer needs of them.
//!
//! # Driver dialects
//!
//! [`Dialect::EtcdConcurrency`], [`Dialect::ConsulLock`] and [`Dialect::ConsulElection`] are
//! served by their adapter's [`DialectDriver`] (module `dialect` of coord-etcd and of
//! coord-consul has the details). Their keys lie outside coord's layout (`…/__coord/…`), so a
//! leadership's node is not a node of coord's tree: write under it with the leadership's
//! guarded writes (`Leadership::guarded_set`, `write_if_held`), which the driver checks on the
//! raw key, not with [`crate::Backend::write_if`] and `Leadership::guard()`.
//!
//! | dialect | peer | key(s) for the name `/a/b` | holder | fencing token |
//! |---|---|---|---|---|
//! | [`Dialect::EtcdConcurrency`] | Go `concurrency.Election` / `Mutex`, `etcdctl elect` / `lock`, `v3election` / `v3lock` | `a/b/<lease id hex>` per candidate, under its lease (the namespace first, if any) | lowest CreateRevision; a waiter watches the key created just before its own | the holder key's CreateRevision |
//! | [`Dialect::ConsulLock`] | Go `api.Lock`, `consul lock a/b` | `a/b/.lock`, flags `0x2ddccbc058a50c18` | the key's `Session` (`?acquire`) | the key's `ModifyIndex` while held (the acquire's index, raised by a proclaim) |
//! | [`Dialect::ConsulElection`] | Consul's leader-election guide | `a/b` itself, flags 0, the leader's value | the key's `Session` | the same |
//!
//! Consul's single-key dialects cannot be herd-free ([`Dialect::herd_free`]): every waiter
//! blocks on the one key and a release wakes them all; they race for it (no first-come
//! order), Consul keeps no list of them (`participants` shows the holder only), and an acquire
//! refused during a lock-delay is retried. `LockIndex` is no fencing token: it counts the
//! acquisitions of one key, not store-wide.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::kernel::{Session, WriteOp, WriteResult};
use crate::path::Path;
use crate::recipes::election::LeaderInfo;
use crate::recipes::queue::{HoldState, Layout, SuspendPolicy};

/// Whose protocol an election or lock speaks. [`Dialect::Coord`] (the default) runs on every
/// backend; each other dialect runs on one backend (a typed error before any I/O elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// coord's own herd-free layout (`c-<nonce>-<seq>` nodes).
    #[default]
    Coord,
    /// Curator's `InterProcessMutex` and `LeaderSelector` (`_c_<uuid>-lock-<seq>`), ZooKeeper.
    CuratorLock,
    /// Curator's `LeaderLatch` (`_c_<uuid>-latch-<seq>`), ZooKeeper.
    CuratorLatch,
    /// kazoo's `Lock` and `Election` (`<uuid hex>__lock__<seq>`), ZooKeeper.
    Kazoo,
    /// etcd's `concurrency` `Election` and `Mutex` (`<prefix>/<lease id hex>`), etcd.
    EtcdConcurrency,
    /// Consul's `api.Lock` and `consul lock` (one key with the lock flags), Consul.
    ConsulLock,
    /// Consul's leader-election guide (one key acquired by a session, flags 0), Consul.
    ConsulElection,
}

impl Dialect {
    /// Every dialect, in a stable order.
    pub const ALL: [Dialect; 7] = [
        Dialect::Coord,
        Dialect::CuratorLock,
        Dialect::CuratorLatch,
        Dialect::Kazoo,
        Dialect::EtcdConcurrency,
        Dialect::ConsulLock,
        Dialect::ConsulElection,
    ];

    /// The dialect's name, as [`Dialect::parse`] and coordctl's `--dialect` take it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Coord => "coord",
            Dialect::CuratorLock => "curator-lock",
            Dialect::CuratorLatch => "curator-latch",
            Dialect::Kazoo => "kazoo",
            Dialect::EtcdConcurrency => "etcd-concurrency",
            Dialect::ConsulLock => "consul-lock",
            Dialect::ConsulElection => "consul-election",
        }
    }

    /// The backend that serves the dialect (its [`crate::Capabilities::backend`] name), `None`
    /// for every backend.
    pub fn backend(self) -> Option<&'static str> {
        match self {
            Dialect::Coord => None,
            Dialect::CuratorLock | Dialect::CuratorLatch | Dialect::Kazoo => Some("zk"),
            Dialect::EtcdConcurrency => Some("etcd"),
            Dialect::ConsulLock | Dialect::ConsulElection => Some("consul"),
        }
    }

    /// Whether one change of holder wakes one waiting candidate whatever their number (no
    /// herd effect). Consul's single-key dialects cannot be: every waiter blocks on the one key.
    pub fn herd_free(self) -> bool {
        !matches!(self, Dialect::ConsulLock | Dialect::ConsulElection)
    }

    /// The candidate-queue layout of a dialect served by the generic queue; `None` for the
    /// dialects an adapter's [`DialectDriver`] serves.
    pub(crate) fn layout(self) -> Option<Layout> {
        match self {
            Dialect::Coord => Some(Layout::Coord),
            Dialect::CuratorLock => Some(Layout::Curator("lock-")),
            Dialect::CuratorLatch => Some(Layout::Curator("latch-")),
            Dialect::Kazoo => Some(Layout::Kazoo),
            _ => None,
        }
    }

    /// The dialect named `name` ([`Error::InvalidArgument`] listing the names otherwise).
    pub fn parse(name: &str) -> Result<Dialect> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Dialect::ALL.iter().map(|d| d.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown dialect {name:?}; the dialects are {}",
                    names.join(", ")
                ))
            })
    }

    /// [`Error::Unsupported`] when `backend` cannot serve this dialect (checked before any
    /// I/O).
    pub fn check_backend(self, backend: &str) -> Result<()> {
        match self.backend() {
            Some(b) if b != backend => Err(Error::Unsupported(format!(
                "the {} dialect runs on {b}, not on {backend}",
                self.name()
            ))),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An election or lock protocol that an adapter serves for a dialect whose layout lies outside
/// coord's tree. `name` is the election's or lock's path; how it maps to the peer's keys is
/// the driver's to document (for example the etcd prefix `name` without its leading `/`).
#[async_trait]
pub trait DialectDriver: Send + Sync + 'static {
    /// The dialect served.
    fn dialect(&self) -> Dialect;

    /// Joins the election or lock with the candidacy `c` and waits until this candidate holds
    /// it; with [`Candidacy::try_only`], `Ok(None)` at once when somebody else holds it (and
    /// nothing is left behind). Cancel-safe: dropping the future leaves no key behind. Fails
    /// with [`Error::SessionExpired`] if the session ends while waiting.
    async fn acquire(&self, c: Candidacy<'_>) -> Result<Option<Box<dyn DialectHold>>>;

    /// Every candidate, in the order the peer gives the role (the first holds it), with its
    /// value and token.
    async fn participants(&self, name: &Path) -> Result<Vec<LeaderInfo>>;

    /// The holder after each change (deduplicated), starting with the current one.
    async fn observe(&self, name: &Path) -> Result<BoxStream<'static, Result<Option<LeaderInfo>>>>;

    /// Gives up the role held at `node` with `token` on `session` now, if it is still that
    /// one: what a supervisor does after the leader's work, which owned the hold, dropped it
    /// (the drop releases only in the background). Default: nothing.
    async fn resign(&self, _session: &dyn Session, _node: &Path, _token: u64) -> Result<()> {
        Ok(())
    }
}

/// A candidate asking a [`DialectDriver`] for the role.
pub struct Candidacy<'a> {
    /// The candidate's session.
    pub session: Arc<dyn Session>,
    /// The election's or lock's path.
    pub name: &'a Path,
    /// The candidate's value (empty for a lock).
    pub value: &'a [u8],
    /// Whether to give up at once when somebody else holds the role.
    pub try_only: bool,
    /// What a suspension of the session means for the holder.
    pub policy: SuspendPolicy,
    /// Counts each time the waiting candidate is woken by a watch (what
    /// [`crate::election::Election::wakeups`] reports: one per change of holder when the
    /// dialect is herd-free).
    pub wakeups: &'a AtomicU64,
}

impl Candidacy<'_> {
    /// What every driver checks before any I/O: the value against `caps`, and that the
    /// session has not ended.
    pub fn check(&self, caps: &crate::Capabilities) -> Result<()> {
        crate::adapter::check_value(caps, self.value)?;
        let state = self.session.state();
        if state.is_final() {
            return Err(Error::session_gone(self.session.id(), state));
        }
        Ok(())
    }
}

/// A role held through a [`DialectDriver`]. Dropping it without [`DialectHold::release`] must
/// release it in the background (like the coord dialect's leaderships and lock guards).
#[async_trait]
pub trait DialectHold: Send + Sync + 'static {
    /// The fencing token (durable and store-global, as for the coord dialect).
    fn token(&self) -> u64;
    /// The key that holds the role, as a path ([`crate::election::Leadership::guard`] is
    /// `Guard::created(node, token)`: a path the backend's `write_if` can check where possible).
    fn node(&self) -> &Path;
    /// The session the role is held on.
    fn session(&self) -> Arc<dyn Session>;
    /// The state now (reads the session directly, like the coord dialect).
    fn state(&self) -> HoldState;
    /// The state after each change; ends in [`HoldState::Lost`].
    fn states(&self) -> watch::Receiver<HoldState>;
    /// Changes the holder's value without giving the role up (etcd's `Proclaim`).
    async fn proclaim(&self, value: &[u8]) -> Result<()>;
    /// Runs `op` only while the role is held, atomically in the store
    /// ([`Error::GuardFailed`] otherwise).
    async fn write_if_held(&self, op: &WriteOp) -> Result<WriteResult>;
    /// Gives the role up (the next candidate goes on) and reports Lost.
    async fn release(&mut self) -> Result<()>;
}
