//! [`Client`]: a backend plus the session the recipes use, renewed after expiry, and the
//! lifecycle of what the recipes hold through it.
//!
//! # Ending a client
//!
//! - [`Client::shutdown`] is the orderly end of a process: it resigns what the client holds
//!   (leaderships, locks, waiting candidates), then removes its registrations and group
//!   memberships, then closes the session, in that order, each step bounded by a timeout. The
//!   instance stops being discoverable and another candidate is elected before the session
//!   goes.
//! - [`Client::close`] closes the session at once. Registrations and memberships alive at that
//!   moment end with [`MembershipState::Closed`](crate::group::MembershipState::Closed): they
//!   never re-register on a later session (a draining process stays invisible).
//!
//! After either, the client can still be used: the next recipe call opens a new session.
//!
//! # What the client knows it holds
//!
//! The client keeps weak references, never strong ones, to what was made through it: the
//! session handles [`Client::session`] handed out that created nodes (the candidates of
//! elections and locks), the memberships and registrations, and the service caches. An entry
//! whose owner was dropped is pruned the next time the list grows past twice its live size,
//! so the list stays proportional to what is alive.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::kernel::{Backend, CreateMode, Created, Session, SessionOptions, SessionState, Version};
use crate::path::Path;
use crate::recipes::dialect::Dialect;
use crate::recipes::queue::Leftovers;
use crate::recipes::{barrier::Barrier, counter::Counter, double_barrier::DoubleBarrier};
use crate::recipes::{election::Election, group::Group, lock::Lock, registry::Registry};

/// How long each step of [`Client::shutdown`] may take.
pub const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The most recent nodes a session handle remembers (a recipe's handle creates one).
const TRACKED_PER_HANDLE: usize = 16;

/// A handle on one backend and namespace, cheap to clone.
///
/// It dereferences to the [`Backend`] for key operations, and hands the recipes a shared
/// session: [`Client::session`] returns the current one while it lives and opens a new one
/// after it expired or was closed. That is how a registration carries on after an expiry (it
/// re-registers on the new session) while a leadership built on the old one reports Lost.
/// See the [module docs](self) for [`Client::shutdown`] and [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The dialect of the elections and locks made through this handle by default.
    dialect: Dialect,
}

struct Inner {
    backend: Arc<dyn Backend>,
    options: SessionOptions,
    slot: tokio::sync::Mutex<Slot>,
    owned: Mutex<Holdings>,
    /// Candidate nodes whose create is in doubt (see [`Leftovers`]).
    leftovers: Arc<Leftovers>,
}

/// The current session and the close generation: each close starts a new one, and what was
/// made in an earlier generation never opens a session again.
struct Slot {
    session: Option<Arc<dyn Session>>,
    epoch: u64,
}

/// Something a client ends when it is closed or shut down (a membership, a cache).
pub(crate) trait Owned: Send + Sync {
    /// Ends it because its client is closing: its state says so and it stops following.
    /// With `remove`, its node is deleted first (awaited).
    fn end(&self, remove: bool) -> BoxFuture<'_, Result<()>>;

    /// The node a membership or registration keeps in place (`None` for a cache).
    fn node(&self) -> Option<&Path> {
        None
    }
}

/// Weak references to what the client handed out; see the module docs.
#[derive(Default)]
struct Holdings {
    roles: Vec<Weak<TrackedSession>>,
    members: Vec<Weak<dyn Owned>>,
    caches: Vec<Weak<dyn Owned>>,
}

/// Pushes `item`, first dropping dead entries when the list has doubled since the last time.
fn push_pruned<T: ?Sized>(list: &mut Vec<Weak<T>>, item: Weak<T>) {
    if list.len() >= 8 && list.len().is_power_of_two() {
        list.retain(|w| w.strong_count() > 0);
    }
    list.push(item);
}

fn live<T: ?Sized>(list: &[Weak<T>]) -> Vec<Arc<T>> {
    list.iter().filter_map(Weak::upgrade).collect()
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.inner.backend.capabilities().backend)
            .field("namespace", &self.inner.backend.namespace())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Wraps a backend; sessions get the backend's default TTL.
    pub fn new(backend: Arc<dyn Backend>) -> Client {
        Client::with_session_options(backend, SessionOptions::default())
    }

    /// Wraps a backend; the client's sessions are opened with `options`.
    pub fn with_session_options(backend: Arc<dyn Backend>, options: SessionOptions) -> Client {
        Client {
            inner: Arc::new(Inner {
                backend,
                options,
                slot: tokio::sync::Mutex::new(Slot {
                    session: None,
                    epoch: 0,
                }),
                owned: Mutex::new(Holdings::default()),
                leftovers: Arc::default(),
            }),
            dialect: Dialect::Coord,
        }
    }

    /// This client (sharing its session and everything it holds) with `dialect` as the
    /// dialect of the elections and locks made through it ([`Client::election`],
    /// [`Client::lock`], [`Election::new`], [`Lock::new`]). Coord's own by default.
    pub fn with_default_dialect(&self, dialect: Dialect) -> Client {
        Client {
            inner: self.inner.clone(),
            dialect,
        }
    }

    /// The dialect of the elections and locks made through this handle.
    pub fn default_dialect(&self) -> Dialect {
        self.dialect
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The client's current session, or a new one if there is none or it is expired or
    /// closed.
    ///
    /// The handle returned is the shared session; the nodes created through it are remembered
    /// (weakly, while the handle lives), so that [`Client::shutdown`] can remove them before it
    /// closes the session: that is how it resigns leaderships and locks.
    pub async fn session(&self) -> Result<Arc<dyn Session>> {
        let (session, _) = self.session_in(None).await?;
        Ok(Arc::new_cyclic(|me| TrackedSession {
            inner: session,
            client: Arc::downgrade(&self.inner),
            me: me.clone(),
            created: Mutex::new(VecDeque::new()),
        }))
    }

    /// The current session (opening one if needed) and the close generation it belongs to.
    /// With `epoch`, fails with [`Error::Closed`] if the client was closed since then: what
    /// was made before a close never opens a new session.
    pub(crate) async fn session_in(&self, epoch: Option<u64>) -> Result<(Arc<dyn Session>, u64)> {
        let mut slot = self.inner.slot.lock().await;
        if epoch.is_some_and(|e| e != slot.epoch) {
            return Err(Error::Closed);
        }
        if let Some(s) = slot.session.as_ref() {
            if !s.state().is_final() {
                return Ok((s.clone(), slot.epoch));
            }
        }
        let s = self
            .inner
            .backend
            .open_session(self.inner.options.clone())
            .await?;
        slot.session = Some(s.clone());
        Ok((s, slot.epoch))
    }

    /// The current session if one is open (without opening one).
    pub async fn current_session(&self) -> Option<Arc<dyn Session>> {
        self.inner.slot.lock().await.session.clone()
    }

    fn owned(&self) -> MutexGuard<'_, Holdings> {
        self.inner.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The markers of this client's candidate nodes whose create is in doubt.
    pub(crate) fn leftovers(&self) -> Arc<Leftovers> {
        self.inner.leftovers.clone()
    }

    /// Remembers a membership or registration (weakly) so that close and shutdown end it.
    pub(crate) fn track_member(&self, member: Weak<dyn Owned>) {
        push_pruned(&mut self.owned().members, member);
    }

    /// Whether a membership or registration of this client (one not dropped yet, or whose
    /// leaving is still running) is at `node`: a register that finds its own session's entry
    /// there is then a second register of the same id, not a retry of one whose answer was lost.
    pub(crate) fn follows(&self, node: &Path) -> bool {
        live(&self.owned().members)
            .iter()
            .any(|m| m.node() == Some(node))
    }

    /// Remembers a service cache (weakly) so that shutdown stops it.
    pub(crate) fn track_cache(&self, cache: Weak<dyn Owned>) {
        push_pruned(&mut self.owned().caches, cache);
    }

    /// Closes the current session now (its ephemerals go with it).
    ///
    /// Registrations and memberships made through this client end: their state becomes
    /// [`MembershipState::Closed`](crate::group::MembershipState::Closed) and they never
    /// register again, not even if the close fails. A registration in a native layout
    /// (Consul's catalog) is deregistered first, each within [`SHUTDOWN_STEP_TIMEOUT`]: its
    /// entry need not go with the session. Leaderships and locks on the session report Lost.
    /// The next recipe call opens a new session. For an orderly end (resign, deregister, then
    /// close) use [`Client::shutdown`].
    pub async fn close(&self) -> Result<()> {
        let session = {
            let mut slot = self.inner.slot.lock().await;
            slot.epoch += 1;
            slot.session.take()
        };
        let members = live(&self.owned().members);
        for m in members {
            // Without removal a member does no I/O (the session's close removes its node); a
            // native registration deregisters itself (its entry need not go with the session).
            let _ = m.end(false).await;
        }
        match session {
            Some(s) => s.close().await,
            None => Ok(()),
        }
    }

    /// The orderly end: [`Client::shutdown_within`] with [`SHUTDOWN_STEP_TIMEOUT`] per step.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(SHUTDOWN_STEP_TIMEOUT).await
    }

    /// The orderly end of everything held through this client, each step bounded by `step`:
    ///
    /// 1. resigns: deletes the nodes the client's session handles created and still own (held
    ///    leaderships and locks report Lost, the next candidate is elected; waiting
    ///    candidates fail);
    /// 2. removes its registrations and memberships (their state becomes
    ///    [`MembershipState::Closed`](crate::group::MembershipState::Closed));
    /// 3. stops its service caches and closes the session (as [`Client::close`]).
    ///
    /// A step that fails or overruns does not stop the next ones: the session's close removes
    /// whatever is left. Returns the first error (an overrun is [`Error::Timeout`]).
    pub async fn shutdown_within(&self, step: Duration) -> Result<()> {
        let roles = live(&self.owned().roles);
        let resigned = bounded("resign", step, resign_all(&*self.inner.backend, roles)).await;
        let members = live(&self.owned().members);
        let removed = bounded("deregister", step, end_all(members, true)).await;
        let caches = live(&self.owned().caches);
        let stopped = end_all(caches, false).await;
        let closed = bounded("close", step, self.close()).await;
        resigned.and(removed).and(stopped).and(closed)
    }

    /// The election `name`, stored under `/elections/<name>`.
    pub fn election(&self, name: &str) -> Result<Election> {
        Ok(Election::new(self, Path::new("/elections")?.join(name)?))
    }

    /// The lock `name`, stored under `/locks/<name>`.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        Ok(Lock::new(self, Path::new("/locks")?.join(name)?))
    }

    /// The read-write lock `name`, stored under `/rwlocks/<name>`.
    pub fn rwlock(&self, name: &str) -> Result<crate::recipes::rwlock::RwLock> {
        Ok(crate::recipes::rwlock::RwLock::new(
            self,
            Path::new("/rwlocks")?.join(name)?,
        ))
    }

    /// The semaphore `name` with `limit` leases, stored under `/semaphores/<name>`.
    /// [`Error::InvalidArgument`] for a limit of 0 or above
    /// [`MAX_LIMIT`](crate::recipes::semaphore::MAX_LIMIT); every user must agree on the limit
    /// ([`Error::LimitMismatch`] at the first acquire otherwise).
    pub fn semaphore(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<crate::recipes::semaphore::Semaphore> {
        crate::recipes::semaphore::Semaphore::new(
            self,
            Path::new("/semaphores")?.join(name)?,
            limit,
        )
    }

    /// The election `name` in `dialect`, to join a peer's election (see [`crate::dialect`]).
    /// A `name` starting with `/` is the election's full path (where the peer keeps it, for
    /// example `/leader/scheduler`); otherwise it is stored under `/elections/<name>`.
    /// A dialect the backend cannot serve fails every call with [`Error::Unsupported`] before
    /// any I/O.
    pub fn election_with(&self, name: &str, dialect: Dialect) -> Result<Election> {
        Ok(Election::new(self, recipe_path("/elections", name)?).with_dialect(dialect))
    }

    /// The lock `name` in `dialect`, to share a peer's lock (see [`crate::dialect`]). A `name`
    /// starting with `/` is the lock's full path; otherwise it is stored under
    /// `/locks/<name>`.
    pub fn lock_with(&self, name: &str, dialect: Dialect) -> Result<Lock> {
        Ok(Lock::new(self, recipe_path("/locks", name)?).with_dialect(dialect))
    }

    /// The group `name`, stored under `/groups/<name>`.
    pub fn group(&self, name: &str) -> Result<Group> {
        Ok(Group::new(self, Path::new("/groups")?.join(name)?))
    }

    /// The barrier `name`, stored at `/barriers/<name>` (tied to the setter's session by
    /// default: see [`crate::barrier`]).
    pub fn barrier(&self, name: &str) -> Result<Barrier> {
        Ok(Barrier::new(self, Path::new("/barriers")?.join(name)?))
    }

    /// The double barrier `name` for `members` members, stored under
    /// `/double-barriers/<name>`: [`Error::InvalidArgument`] unless `1 <= members <=`
    /// [`MAX_MEMBERS`](crate::double_barrier::MAX_MEMBERS).
    pub fn double_barrier(&self, name: &str, members: usize) -> Result<DoubleBarrier> {
        DoubleBarrier::new(self, Path::new("/double-barriers")?.join(name)?, members)
    }

    /// The shared counter `name`, stored at `/counters/<name>`.
    pub fn counter(&self, name: &str) -> Result<Counter> {
        Ok(Counter::new(self, Path::new("/counters")?.join(name)?))
    }

    /// The service registry, stored under `/services`, in the layout the URL chose (option
    /// `registry`; see [`crate::registry::RegistryLayout`]).
    pub fn registry(&self) -> Registry {
        Registry::new(
            self,
            Path::new("/services").unwrap_or_else(|_| Path::root()),
        )
    }

    /// The service registry in `layout` ([`crate::Error::Unsupported`] for
    /// [`RegistryLayout::Native`](crate::registry::RegistryLayout::Native) on a backend
    /// without one, before any I/O).
    pub fn registry_with(&self, layout: crate::registry::RegistryLayout) -> Result<Registry> {
        self.registry().with_layout(layout)
    }
}

impl Deref for Client {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.inner.backend
    }
}

/// `name` under `base`, or `name` itself when it is a full path (starts with `/`).
fn recipe_path(base: &str, name: &str) -> Result<Path> {
    if name.starts_with('/') {
        Path::new(name)
    } else {
        Path::new(base)?.join(name)
    }
}

/// Runs one shutdown step for at most `limit`.
async fn bounded(
    what: &str,
    limit: Duration,
    step: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!(
            "shutdown step {what:?} did not finish within {limit:?}"
        ))),
    }
}

/// Ends every item; the first error, after trying them all.
async fn end_all(items: Vec<Arc<dyn Owned>>, remove: bool) -> Result<()> {
    let results = futures::future::join_all(items.iter().map(|m| m.end(remove))).await;
    results.into_iter().collect()
}

/// Deletes every node the handles created that their session still owns.
async fn resign_all(backend: &dyn Backend, roles: Vec<Arc<TrackedSession>>) -> Result<()> {
    let mut nodes = Vec::new();
    for r in &roles {
        let created = r.created.lock().unwrap_or_else(|p| p.into_inner());
        nodes.extend(created.iter().map(|p| (p.clone(), r.inner.clone())));
    }
    let deletes = nodes
        .iter()
        .map(|(node, session)| delete_if_owned(backend, node, &**session));
    futures::future::join_all(deletes)
        .await
        .into_iter()
        .collect()
}

/// Deletes `node` if `session` owns it (at the version read, so nobody else's node goes).
pub(crate) async fn delete_if_owned(
    backend: &dyn Backend,
    node: &Path,
    session: &dyn Session,
) -> Result<()> {
    let Some(stat) = backend.exists(node).await? else {
        return Ok(());
    };
    if stat.ephemeral_owner.as_ref() != Some(session.id()) {
        return Ok(());
    }
    delete_at(backend, node, stat.version).await
}

/// Deletes `node` if it is still at `version`; gone or changed meanwhile is fine (whoever
/// changed it owns what is there now).
pub(crate) async fn delete_at(backend: &dyn Backend, node: &Path, version: Version) -> Result<()> {
    match backend.delete(node, Some(version)).await {
        Ok(()) | Err(Error::NotFound { .. }) | Err(Error::VersionMismatch { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The session handle [`Client::session`] hands out: the shared session, plus the nodes
/// created through this handle (the last [`TRACKED_PER_HANDLE`]), which the client finds
/// through a weak reference registered at the first create.
struct TrackedSession {
    inner: Arc<dyn Session>,
    client: Weak<Inner>,
    me: Weak<TrackedSession>,
    created: Mutex<VecDeque<Path>>,
}

impl TrackedSession {
    fn remember(&self, node: &Path) {
        let first = {
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            if created.len() == TRACKED_PER_HANDLE {
                created.pop_front();
            }
            created.push_back(node.clone());
            created.len() == 1
        };
        if let (true, Some(client)) = (first, self.client.upgrade()) {
            let mut owned = client.owned.lock().unwrap_or_else(|p| p.into_inner());
            if !owned.roles.iter().any(|w| w.ptr_eq(&self.me)) {
                push_pruned(&mut owned.roles, self.me.clone());
            }
        }
    }
}

#[async_trait]
impl Session for TrackedSession {
    fn id(&self) -> &crate::kernel::SessionId {
        self.inner.id()
    }
    fn ttl(&self) -> Duration {
        self.inner.ttl()
    }
    fn state(&self) -> SessionState {
        self.inner.state()
    }
    fn states(&self) -> crate::kernel::SessionStates {
        self.inner.states()
    }
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let created = self.inner.create(path, value, mode).await?;
        self.remember(&created.path);
        Ok(created)
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }
}
