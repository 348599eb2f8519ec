//! Service registry and discovery, on top of [group membership](crate::group).
//!
//! An instance is an ephemeral node `/services/<service>/<id>` holding JSON:
//!
//! ```json
//! {"service":"api","id":"api-1","address":"10.0.0.7","port":8080,"metadata":{"zone":"a"}}
//! ```
//!
//! `metadata` and `tags` are optional (empty when absent); unknown fields are ignored so that
//! newer writers stay readable.
//!
//! # Layouts
//!
//! That is the **generic** layout, the same on every backend. A backend may also have a
//! **native** layout that its own tools see ([`NativeRegistry`]): Consul's service catalog
//! (health API, DNS, `consul catalog services`). The layout is chosen with
//! [`Registry::with_layout`] / [`Client::registry_with`], or the URL option
//! `registry=default|generic|native`. The default ([`RegistryLayout::Default`]) is the
//! native layout where the backend says so ([`NativeLayout::is_default`]: Consul) and the
//! generic one elsewhere (ZooKeeper, etcd, mem). `native` on a backend without one is
//! [`Error::Unsupported`] before any I/O. The API and the guarantees below are the same in
//! every layout; a native registration also registers again when its entry vanished while
//! its session lives (an agent restart), and is deregistered by coord on a clean close.
//!
//! # A registration's life
//!
//! - **Expiry**: a [`Registration`] re-registers on the client's next session; if that fails
//!   for good, [`Registration::state`] says so ([`MembershipState::Failed`]).
//! - **Close**: [`Client::close`] ends every registration of the client
//!   ([`MembershipState::Closed`]); nothing is registered again on a later session, so a
//!   draining process is not discoverable. [`Client::shutdown`] deletes the nodes first.
//! - **Drop**: deregisters in the background. If that task cannot run (the runtime is shutting
//!   down), the node is ephemeral and goes with its session: at once when the session is
//!   closed, at the latest one session TTL after the process stopped keeping it alive.
//! - **One id, two sessions**: [`Registry::register`] replaces an entry held by another
//!   session (after a crash its dead session holds the id for up to one TTL) unless asked
//!   not to ([`IfPresent::Fail`]). The later registration wins: the earlier one, if still
//!   alive, sees its node gone and ends with [`MembershipState::Removed`] — it does not take
//!   the id back, so two live instances with one id never fight over it. Of two registrants
//!   racing to replace the same entry, one wins and the other gets [`Error::AlreadyExists`].
//!   An id held by a live registration of this client is never replaced (a second register
//!   of it fails). An entry of the client's own session that no registration follows is one
//!   whose register was answered by an error after it landed (a timeout while a server was
//!   cut off): registering again takes it over, so a retry loop around `register` works.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::adapter::Backoff;
use crate::client::{delete_at, Client, Owned};
use crate::error::{Error, Result};
use crate::kernel::SessionId;
use crate::path::Path;
use crate::recipes::group::{held_by, Follow, Group, Member, Membership, MembershipState};

pub mod codec;
mod follow;
mod native;
use follow::NativeMembership;
pub use native::{
    decode_entries, scalar_members, Entry, Holder, NativeLayout, NativeRegistry, RegistryLayout,
    Replacing, REPLACE_ATTEMPTS,
};

/// What [`Registry::register_with`] does when another session holds the instance's id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IfPresent {
    /// Delete the other session's entry and register (the default; what a restarted instance
    /// needs after a crash, whose dead session holds the id for up to one TTL).
    #[default]
    Replace,
    /// Fail with [`Error::AlreadyExists`] naming the session that holds the id.
    Fail,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name (one path segment).
    pub service: String,
    /// The instance's id, unique within the service (one path segment).
    pub id: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Tags (Consul's service tags; kept in the JSON of the other layouts). Absent in the
    /// JSON of older writers: empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Instance {
    /// An instance without metadata.
    pub fn new(service: &str, id: &str, address: &str, port: u16) -> Instance {
        Instance {
            service: service.to_owned(),
            id: id.to_owned(),
            address: address.to_owned(),
            port,
            metadata: BTreeMap::new(),
            tags: Vec::new(),
        }
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: &str, value: &str) -> Instance {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: &str) -> Instance {
        self.tags.push(tag.to_owned());
        self
    }
}

/// The registry, rooted at a path (`/services` by default), in one layout. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    client: Client,
    root: Path,
    layout: RegistryLayout,
}

/// Where a registry's operations go.
enum Resolved {
    Generic,
    Native(Arc<dyn NativeRegistry>),
}

fn decode(path: &Path, m: &Member) -> Result<Instance> {
    serde_json::from_slice(&m.data).map_err(|e| Error::MalformedData {
        path: path.join(&m.id).map(|p| p.to_string()).unwrap_or_default(),
        reason: e.to_string(),
    })
}

impl Registry {
    /// The registry rooted at `root`, in the layout the client's URL chose (option
    /// `registry`; [`RegistryLayout::Default`] without it).
    pub fn new(client: &Client, root: Path) -> Registry {
        Registry {
            client: client.clone(),
            root,
            layout: client.capabilities().registry_layout,
        }
    }

    /// The same registry in `layout`. [`RegistryLayout::Native`] on a backend without a
    /// native layout is [`Error::Unsupported`] (no I/O).
    pub fn with_layout(mut self, layout: RegistryLayout) -> Result<Registry> {
        self.layout = layout;
        self.resolve()?;
        Ok(self)
    }

    /// The layout in use: `generic`, or the native layout's name (such as `consul-catalog`).
    /// [`Error::Unsupported`] for [`RegistryLayout::Native`] on a backend without one.
    pub fn layout_name(&self) -> Result<&'static str> {
        Ok(match self.resolve()? {
            Resolved::Generic => "generic",
            Resolved::Native(n) => n.layout().name,
        })
    }

    /// The layout's implementation; errors before any I/O.
    fn resolve(&self) -> Result<Resolved> {
        let native = self.client.backend().native_registry();
        match (self.layout, native) {
            (RegistryLayout::Generic, _) => Ok(Resolved::Generic),
            (RegistryLayout::Native, Some(n)) => Ok(Resolved::Native(n)),
            (RegistryLayout::Native, None) => Err(Error::Unsupported(format!(
                "{} has no native registry layout (use the generic one)",
                self.client.capabilities().backend
            ))),
            (RegistryLayout::Default, Some(n)) if n.layout().is_default => Ok(Resolved::Native(n)),
            (RegistryLayout::Default, _) => Ok(Resolved::Generic),
        }
    }

    fn group(&self, service: &str) -> Result<Group> {
        Ok(Group::new(&self.client, self.root.join(service)?))
    }

    /// Registers `instance` (ephemeral; re-registered after a session expiry), replacing an
    /// entry of another session with the same id: [`Registry::register_with`] with
    /// [`IfPresent::Replace`].
    pub async fn register(&self, instance: &Instance) -> Result<Registration> {
        self.register_with(instance, IfPresent::Replace).await
    }

    /// Registers `instance`; `if_present` says what to do when another session holds its id.
    ///
    /// Errors: [`Error::AlreadyExists`] (its `path` names the holding session) with
    /// [`IfPresent::Fail`], for an id a live registration of this client holds, or when
    /// another registrant took the id while we replaced a stale entry (it won the race);
    /// [`Error::Contended`] if the entry kept coming back.
    pub async fn register_with(
        &self,
        instance: &Instance,
        if_present: IfPresent,
    ) -> Result<Registration> {
        match self.resolve()? {
            Resolved::Native(native) => self.register_native(native, instance, if_present).await,
            Resolved::Generic => self.register_generic(instance, if_present).await,
        }
    }

    /// [`Self::register_with`] in the backend's native registry.
    async fn register_native(
        &self,
        native: Arc<dyn NativeRegistry>,
        instance: &Instance,
        if_present: IfPresent,
    ) -> Result<Registration> {
        let node = self.group(&instance.service)?.path().join(&instance.id)?;
        native.check(instance)?;
        let (session, epoch) = follow::register(
            &self.client,
            &native,
            &self.root,
            &node,
            instance,
            if_present,
        )
        .await?;
        let membership = NativeMembership::start(
            &self.client,
            native,
            self.root.clone(),
            node,
            instance.clone(),
            session,
            epoch,
        );
        Ok(Registration {
            inner: Inner::Native(membership),
        })
    }

    /// [`Self::register_with`] in the generic layout: a group member, replacing (or keeping)
    /// an entry another session holds.
    async fn register_generic(
        &self,
        instance: &Instance,
        if_present: IfPresent,
    ) -> Result<Registration> {
        let data =
            serde_json::to_vec(instance).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let group = self.group(&instance.service)?;
        let mut replacing = Replacing::default();
        for _ in 0..REPLACE_ATTEMPTS {
            match group
                .join_following(&instance.id, &data, Follow::Node)
                .await
            {
                Ok(membership) => {
                    return Ok(Registration {
                        inner: Inner::Generic(membership),
                    })
                }
                Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            let node = group.path().join(&instance.id)?;
            let Some(stat) = self.client.exists(&node).await? else {
                continue; // gone meanwhile: register again
            };
            let holder = stat.ephemeral_owner.clone();
            let ours = match self.client.current_session().await {
                Some(s) => holder.as_ref() == Some(s.id()),
                None => false,
            };
            if ours && !self.client.follows(&node) {
                // Our own session's entry that no registration of this client follows: a
                // register whose answer was lost after its create landed (a timeout while a
                // server was cut off). A retry takes it over; with other data it goes, and
                // the next round creates ours.
                if let Some(m) = group.adopt(&node, &data, Follow::Node).await? {
                    return Ok(Registration {
                        inner: Inner::Generic(m),
                    });
                }
                delete_at(&*self.client, &node, stat.version).await?;
                continue;
            }
            if replacing.keeps(if_present, ours, &holder) {
                return Err(held_by(&node, holder.as_ref()));
            }
            tracing::info!(%node, holder = ?holder, "replacing a registration held by another session");
            delete_at(&*self.client, &node, stat.version).await?;
            replacing.replaced(holder);
        }
        Err(replacing.contended(group.path().join(&instance.id)?.to_string()))
    }

    /// The instances of `service` now. A stored entry that is not the documented JSON gives
    /// [`Error::MalformedData`].
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>> {
        let g = self.group(service)?;
        if let Resolved::Native(native) = self.resolve()? {
            return native.discover(&self.root, service).await;
        }
        g.members()
            .await?
            .iter()
            .map(|m| decode(g.path(), m))
            .collect()
    }

    /// A [`Partitioner`](crate::partitioner::Partitioner) of `partitions` partitions over the
    /// instances of `service` (a weight from each instance's `weight` metadata entry; see
    /// [`crate::partitioner`]).
    pub async fn partitioner(
        &self,
        service: &str,
        partitions: u32,
    ) -> Result<crate::partitioner::Partitioner> {
        crate::partitioner::check_partitions(partitions)?;
        self.group(service)?.partitioner(partitions).await
    }

    /// The names of the registered services (those with a node, possibly without instances).
    pub async fn services(&self) -> Result<Vec<String>> {
        if let Resolved::Native(native) = self.resolve()? {
            return native.services(&self.root).await;
        }
        match self.client.children(&self.root).await {
            Ok(v) => Ok(v),
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The full instance list of `service` after each change, starting with the current one.
    /// Malformed entries are skipped (and logged); use [`Registry::discover`] to see them as
    /// errors.
    pub async fn watch(
        &self,
        service: &str,
    ) -> Result<impl Stream<Item = Result<Vec<Instance>>> + Send> {
        let g = self.group(service)?;
        if let Resolved::Native(native) = self.resolve()? {
            let stream: InstanceStream = native.watch(&self.root, service).await?;
            return Ok(stream);
        }
        let path = g.path().clone();
        Ok(Box::pin(g.watch().await?.map(move |r| {
            r.map(|members| {
                members
                    .iter()
                    .filter_map(|m| match decode(&path, m) {
                        Ok(i) => Some(i),
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping a malformed registry entry");
                            None
                        }
                    })
                    .collect()
            })
        })))
    }

    /// A cache of `service`'s instances that follows changes in the background: lookups do
    /// no I/O. Clones share the cache. A watch that fails transiently is set up again with a
    /// back-off ([`CacheState::Retrying`]); the cache never goes stale silently: when it stops
    /// following, [`ServiceCache::state`] says so ([`CacheState::Stopped`]). The client's
    /// [`Client::shutdown`] stops it.
    pub async fn cache(&self, service: &str) -> Result<ServiceCache> {
        let mut stream: InstanceStream = Box::pin(self.watch(service).await?);
        let first = match stream.next().await {
            Some(r) => r?,
            None => Vec::new(),
        };
        let (tx, rx) = watch::channel(Snapshot {
            version: 0,
            instances: Arc::new(first),
            state: CacheState::Following,
        });
        let tx = Arc::new(tx);
        let task = tokio::spawn(follow_cache(
            self.clone(),
            service.to_owned(),
            stream,
            tx.clone(),
        ));
        let shared = Arc::new(CacheShared { tx, task });
        let weak: std::sync::Weak<dyn Owned> = Arc::downgrade(&shared) as _;
        self.client.track_cache(weak);
        Ok(ServiceCache {
            shared,
            rx,
            seen: AtomicU64::new(0),
        })
    }
}

/// The boxed stream of [`Registry::watch`].
type InstanceStream = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<Instance>>> + Send>>;

/// Feeds a cache from `stream`; on a transient error, watches again with a back-off.
async fn follow_cache(
    registry: Registry,
    service: String,
    mut stream: InstanceStream,
    tx: Arc<watch::Sender<Snapshot>>,
) {
    let mut backoff = Backoff::reconnect();
    loop {
        let mut error = match stream.next().await {
            Some(Ok(list)) => {
                backoff.reset();
                publish(&tx, Some(list), CacheState::Following);
                continue;
            }
            Some(Err(e)) => e,
            // A watch ends only with its backend.
            None => Error::Closed,
        };
        stream = loop {
            if !error.is_retryable() {
                tracing::warn!(%service, error = %error, "service cache stopped following");
                publish(&tx, None, CacheState::Stopped(error));
                return;
            }
            tracing::debug!(%service, error = %error, "service cache watching again");
            publish(&tx, None, CacheState::Retrying(error));
            backoff.wait().await;
            match registry.watch(&service).await {
                Ok(s) => break Box::pin(s),
                Err(e) => error = e,
            }
        };
    }
}

/// Publishes a new list (if any) and state, unless the cache already stopped.
fn publish(tx: &watch::Sender<Snapshot>, list: Option<Vec<Instance>>, state: CacheState) {
    tx.send_if_modified(|s| {
        if s.state.is_stopped() {
            return false;
        }
        s.version += 1;
        if let Some(list) = list {
            s.instances = Arc::new(list);
        }
        s.state = state;
        true
    });
}

/// A live registration. Dropping it deregisters (in the background; see the
/// [module docs](self) for what is guaranteed when that cannot run).
#[derive(Debug)]
pub struct Registration {
    inner: Inner,
}

/// A registration in the generic layout (a group member) or a native one.
#[derive(Debug)]
enum Inner {
    Generic(Membership),
    Native(NativeMembership),
}

impl Registration {
    /// Deregisters now.
    pub async fn deregister(self) -> Result<()> {
        match self.inner {
            Inner::Generic(m) => m.leave().await,
            Inner::Native(m) => m.leave().await,
        }
    }

    /// How many times it registered again: on a new session, or (native layouts) after its
    /// entry vanished.
    pub fn reregistrations(&self) -> u64 {
        match &self.inner {
            Inner::Generic(m) => m.rejoins(),
            Inner::Native(m) => m.rejoins(),
        }
    }

    /// The instance's node (`<root>/<service>/<id>`; in a native layout, the name of the
    /// entry rather than a key of coord's tree).
    pub fn node(&self) -> &Path {
        match &self.inner {
            Inner::Generic(m) => m.node(),
            Inner::Native(m) => m.node(),
        }
    }

    /// The session that owns the instance's entry now.
    pub fn owner(&self) -> SessionId {
        match &self.inner {
            Inner::Generic(m) => m.owner(),
            Inner::Native(m) => m.owner(),
        }
    }

    /// The registration's state now: registered, registering again after a session expiry,
    /// or ended (failed, closed with its client, removed or replaced by another session; see
    /// [`MembershipState`]).
    pub fn state(&self) -> MembershipState {
        match &self.inner {
            Inner::Generic(m) => m.state(),
            Inner::Native(m) => m.state(),
        }
    }

    /// The state after each change, starting with the current one; ends after a final state.
    pub fn states(&self) -> impl Stream<Item = MembershipState> + Send {
        match &self.inner {
            Inner::Generic(m) => m.states().boxed(),
            Inner::Native(m) => m.states().boxed(),
        }
    }

    /// Resolves with the final state once the instance is no longer discoverable and will not
    /// register again by itself (see [`Membership::ended`]).
    pub async fn ended(&self) -> MembershipState {
        match &self.inner {
            Inner::Generic(m) => m.ended().await,
            Inner::Native(m) => m.ended().await,
        }
    }

    /// Resolves with an error once the instance is no longer discoverable and will not
    /// register again by itself (see [`Membership::failed`]).
    pub async fn failed(&self) -> Error {
        match &self.inner {
            Inner::Generic(m) => m.failed().await,
            Inner::Native(m) => m.failed().await,
        }
    }
}

/// Whether a [`ServiceCache`] follows its service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheState {
    /// Following: the instances are current (up to the watch's latency).
    Following,
    /// The watch failed with this transient error and is being set up again with a back-off:
    /// the instances are the last seen and may be stale.
    Retrying(Error),
    /// Final: the cache stopped following, after an error that retrying cannot fix, its
    /// backend's end, or its client's [`Client::shutdown`] ([`Error::Closed`]). The instances
    /// are the last seen: stale.
    Stopped(Error),
}

impl CacheState {
    /// Whether the cache stopped following ([`CacheState::Stopped`]).
    pub fn is_stopped(&self) -> bool {
        matches!(self, CacheState::Stopped(_))
    }
}

/// What a cache publishes.
struct Snapshot {
    /// Counts changes (of the list or the state).
    version: u64,
    instances: Arc<Vec<Instance>>,
    state: CacheState,
}

/// The cache's background task, shared by its clones (the client keeps a weak reference).
struct CacheShared {
    tx: Arc<watch::Sender<Snapshot>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CacheShared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Owned for CacheShared {
    fn end(&self, _remove: bool) -> BoxFuture<'_, Result<()>> {
        self.task.abort();
        publish(&self.tx, None, CacheState::Stopped(Error::Closed));
        Box::pin(async { Ok(()) })
    }
}

/// Instances of one service kept up to date by a background watch. Clones share the cache
/// (one watch); each handle has its own notion of the last change [`ServiceCache::changed`]
/// returned for. The watch stops when the last clone is dropped.
pub struct ServiceCache {
    shared: Arc<CacheShared>,
    rx: watch::Receiver<Snapshot>,
    /// The version the last `changed` of this handle returned for.
    seen: AtomicU64,
}

impl Clone for ServiceCache {
    fn clone(&self) -> ServiceCache {
        ServiceCache {
            shared: self.shared.clone(),
            rx: self.rx.clone(),
            seen: AtomicU64::new(self.seen.load(Ordering::Acquire)),
        }
    }
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.rx.borrow();
        f.debug_struct("ServiceCache")
            .field("instances", &s.instances.len())
            .field("state", &s.state)
            .finish()
    }
}

impl ServiceCache {
    /// The instances as last seen (no I/O). Check [`ServiceCache::state`] to know whether
    /// they are current.
    pub fn instances(&self) -> Arc<Vec<Instance>> {
        self.rx.borrow().instances.clone()
    }

    /// Whether the cache follows its service now.
    pub fn state(&self) -> CacheState {
        self.rx.borrow().state.clone()
    }

    /// Waits for the next change (of the instances or the state) after the last one this
    /// handle's `changed` returned for; `false` once the cache stopped following.
    pub async fn changed(&self) -> bool {
        let seen = self.seen.load(Ordering::Acquire);
        let mut rx = self.rx.clone();
        let now = match rx
            .wait_for(|s| s.version != seen || s.state.is_stopped())
            .await
        {
            Ok(s) => (s.version, s.state.is_stopped()),
            Err(_) => return false,
        };
        self.seen.fetch_max(now.0, Ordering::AcqRel);
        !now.1
    }
}
