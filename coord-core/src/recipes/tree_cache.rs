//! A tree cache: a live mirror of a subtree (keys, values, stats) kept in memory by watches,
//! with an event stream; lookups do no I/O.
//!
//! [`Client::tree_cache`] loads the subtree, then follows it: every node of the mirror has a
//! key watch (its value) and a children watch (its children), set up when the node is first
//! listed and dropped when its parent stops listing it. Nodes that are listed but absent (a
//! deleted node whose parent's list has not caught up) are not part of the mirror.
//!
//! # Correct across resyncs
//!
//! A watch that cannot prove it missed nothing (etcd compaction, a Consul index reset, a
//! ZooKeeper reconnect or session expiry) yields a `Resync` with the current state
//! ([`crate::kernel::KeyEvent::Resync`]): the cache compares it with the mirror, sends the
//! [`TreeEvent::Added`] / [`TreeEvent::Updated`] / [`TreeEvent::Removed`] events it implies,
//! then [`TreeEvent::Resynced`] for that path. A watch that fails is set up again with a
//! back-off (the cache is [`CacheState::Retrying`] meanwhile); its fresh read is handled as a
//! resync. An error that retrying cannot fix, or a subtree grown past
//! [`TreeCacheOptions::max_nodes`], stops the cache ([`CacheState::Stopped`]): it never goes
//! stale silently. [`Client::shutdown`] stops it too.
//!
//! # Cost
//!
//! Two watches per node (on Consul each is a blocking query, on ZooKeeper two server-side
//! watches, on etcd two watchers on the client's stream): bound the mirror with
//! [`TreeCacheOptions::max_depth`] and [`TreeCacheOptions::max_nodes`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};

use crate::adapter::Backoff;
use crate::client::{Client, Owned};
use crate::error::{Error, Result};
use crate::kernel::{Backend, ChildrenEvent, KeyEvent, Node};
use crate::path::Path;
use crate::registry::CacheState;

/// The default [`TreeCacheOptions::max_nodes`].
pub const DEFAULT_MAX_NODES: usize = 10_000;
/// How many events a slow [`TreeCache::events`] reader may fall behind before it gets a
/// [`TreeEvent::Resynced`] of the root instead of the events it missed.
/// (Small in unit tests, so that a test can overrun it quickly.)
const EVENT_BUFFER: usize = if cfg!(test) { 64 } else { 4096 };

/// Bounds of a [`TreeCache`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeCacheOptions {
    /// How deep below the root to mirror: `Some(0)` is the root alone, `Some(1)` the root
    /// and its children; `None` (the default) the whole subtree.
    pub max_depth: Option<usize>,
    /// The most nodes (the root included) the mirror holds: a larger subtree fails the
    /// creation, and a subtree that grows past it later stops the cache, both with
    /// [`Error::InvalidArgument`]. Default [`DEFAULT_MAX_NODES`]; at least 1.
    pub max_nodes: usize,
}

impl Default for TreeCacheOptions {
    fn default() -> Self {
        TreeCacheOptions {
            max_depth: None,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

impl TreeCacheOptions {
    /// The defaults: the whole subtree, up to [`DEFAULT_MAX_NODES`] nodes.
    pub fn new() -> TreeCacheOptions {
        TreeCacheOptions::default()
    }

    /// Sets [`TreeCacheOptions::max_depth`].
    pub fn max_depth(mut self, depth: usize) -> TreeCacheOptions {
        self.max_depth = Some(depth);
        self
    }

    /// Sets [`TreeCacheOptions::max_nodes`].
    pub fn max_nodes(mut self, nodes: usize) -> TreeCacheOptions {
        self.max_nodes = nodes;
        self
    }
}

/// A change of the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeEvent {
    /// A node appeared (created, or found by a resync).
    Added(Node),
    /// A node's value or stat changed; its new state.
    Updated(Node),
    /// A node went away; its last known state.
    Removed(Node),
    /// Changes at this path may have been missed (a watch resynced or was set up again, or
    /// this reader fell behind: then the path is the root); the mirror is current again and
    /// the events it implied were sent before this one.
    Resynced(Path),
}

/// One node as published to lookups.
struct Published {
    node: Node,
    /// The names of the children present in the mirror.
    children: BTreeSet<String>,
}

/// What lookups read.
type Mirror = Arc<RwLock<BTreeMap<Path, Published>>>;

/// The status the cache's handles observe.
#[derive(Clone)]
struct Status {
    loaded: bool,
    state: CacheState,
}

impl Client {
    /// A [`TreeCache`] of the subtree at `root` with the default options.
    pub async fn tree_cache(&self, root: &Path) -> Result<TreeCache> {
        self.tree_cache_with(root, TreeCacheOptions::default())
            .await
    }

    /// A [`TreeCache`] of the subtree at `root`: returns once the whole subtree is loaded.
    /// Fails with the first error of the load, or [`Error::InvalidArgument`] (before any I/O
    /// for a `max_nodes` of 0) when the subtree has more than `max_nodes` nodes. Writes
    /// nothing; `root` need not exist. Dropping the future stops the load.
    pub async fn tree_cache_with(
        &self,
        root: &Path,
        options: TreeCacheOptions,
    ) -> Result<TreeCache> {
        if options.max_nodes == 0 {
            return Err(Error::InvalidArgument(
                "tree cache max_nodes must be at least 1".into(),
            ));
        }
        let mirror: Mirror = Arc::default();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (status_tx, mut status) = watch::channel(Status {
            loaded: false,
            state: CacheState::Following,
        });
        let status_tx = Arc::new(status_tx);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tree = Tree {
            backend: self.backend().clone(),
            root: root.clone(),
            options,
            entries: HashMap::new(),
            mirror: mirror.clone(),
            events: events.clone(),
            status: status_tx.clone(),
            tx,
            next_gen: 0,
            pending: 0,
            troubled: HashMap::new(),
        };
        tree.add_entry(root.clone(), 0);
        // The task belongs to `shared` from here on: dropping this future aborts it.
        let shared = Arc::new(Shared {
            status: status_tx,
            task: tokio::spawn(tree.run(rx)),
        });
        let loaded = status
            .wait_for(|s| s.loaded || s.state.is_stopped())
            .await
            .map(|s| s.clone());
        match loaded {
            Ok(Status { loaded: true, .. }) => {}
            Ok(Status {
                state: CacheState::Stopped(e),
                ..
            }) => return Err(e),
            _ => return Err(Error::Closed),
        }
        let weak: std::sync::Weak<dyn Owned> = Arc::downgrade(&shared) as _;
        self.track_cache(weak);
        Ok(TreeCache {
            _shared: shared,
            root: root.clone(),
            mirror,
            events,
            status,
        })
    }
}

/// A live mirror of a subtree (see the [module docs](self)). Clones share it; the watches
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct TreeCache {
    /// Keeps the task running while a handle lives.
    _shared: Arc<Shared>,
    root: Path,
    mirror: Mirror,
    events: broadcast::Sender<TreeEvent>,
    status: watch::Receiver<Status>,
}

impl std::fmt::Debug for TreeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeCache")
            .field("root", &self.root)
            .field("nodes", &self.len())
            .field("state", &self.state())
            .finish()
    }
}

impl TreeCache {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Path, Published>> {
        self.mirror.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The mirrored subtree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node at `path` as last seen (no I/O); `None` if absent or outside the mirror.
    pub fn get(&self, path: &Path) -> Option<Node> {
        self.read().get(path).map(|p| p.node.clone())
    }

    /// The names of the children of `path` in the mirror, sorted (no I/O); `None` if `path`
    /// is absent or outside the mirror.
    pub fn children(&self, path: &Path) -> Option<Vec<String>> {
        self.read()
            .get(path)
            .map(|p| p.children.iter().cloned().collect())
    }

    /// Every node of the mirror, sorted by path (no I/O).
    pub fn nodes(&self) -> Vec<Node> {
        self.read().values().map(|p| p.node.clone()).collect()
    }

    /// How many nodes the mirror holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the mirror is empty (the root is absent).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether the cache follows its subtree now.
    pub fn state(&self) -> CacheState {
        self.status.borrow().state.clone()
    }

    /// The changes from now on. Ends when the cache stops; a reader that falls more than
    /// 4096 events behind gets [`TreeEvent::Resynced`] of the root in their place.
    pub fn events(&self) -> impl Stream<Item = TreeEvent> + Send + 'static {
        let rx = self.events.subscribe();
        let root = self.root.clone();
        let status = self.status.clone();
        futures::stream::unfold(
            (rx, root, status),
            |(mut rx, root, mut status)| async move {
                let ev = tokio::select! {
                    biased;
                    r = rx.recv() => match r {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => TreeEvent::Resynced(root.clone()),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = status.wait_for(|s| s.state.is_stopped()) => return None,
                };
                Some((ev, (rx, root, status)))
            },
        )
    }

    /// Waits until the cache stops; its final error.
    pub async fn stopped(&self) -> Error {
        let mut status = self.status.clone();
        let state = match status.wait_for(|s| s.state.is_stopped()).await {
            Ok(s) => s.state.clone(),
            Err(_) => return Error::Closed,
        };
        match state {
            CacheState::Stopped(e) => e,
            _ => Error::Closed,
        }
    }
}

/// The cache's task, shared by its handles (the client keeps a weak reference).
struct Shared {
    status: Arc<watch::Sender<Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Owned for Shared {
    fn end(&self, _remove: bool) -> BoxFuture<'_, Result<()>> {
        self.task.abort();
        stop(&self.status, Error::Closed);
        Box::pin(async { Ok(()) })
    }
}

/// Moves the status to `Stopped(error)` unless it already stopped.
fn stop(status: &watch::Sender<Status>, error: Error) {
    status.send_if_modified(|s| {
        if s.state.is_stopped() {
            return false;
        }
        s.state = CacheState::Stopped(error);
        true
    });
}

/// Aborts a watcher task when its entry goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which watch of a node a message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Key,
    Children,
}

/// What a watcher task reports.
enum Report {
    /// A key watch's read (`resync`: after a failure, or the initial one).
    KeyRead(Option<Node>, bool),
    /// A key watch's event.
    Key(KeyEvent),
    /// A children watch's read.
    ChildrenRead(Vec<String>, bool),
    /// A children watch's event.
    Children(ChildrenEvent),
    /// The watch failed; it is set up again after a back-off if the error is retryable.
    Failed(Error),
}

/// A message to the cache's task: the entry's path and generation, and the report.
struct Msg {
    path: Path,
    generation: u64,
    kind: Kind,
    report: Report,
}

/// A node the cache follows (listed by its parent, or the root).
struct Entry {
    generation: u64,
    depth: usize,
    node: Option<Node>,
    /// The names the children watch lists.
    listed: BTreeSet<String>,
    /// Whether the key and children watches delivered their first read.
    key_ready: bool,
    children_ready: bool,
    _key: AbortOnDrop,
    _children: Option<AbortOnDrop>,
}

/// The cache's task state: only the task touches it.
struct Tree {
    backend: Arc<dyn Backend>,
    root: Path,
    options: TreeCacheOptions,
    entries: HashMap<Path, Entry>,
    mirror: Mirror,
    events: broadcast::Sender<TreeEvent>,
    status: Arc<watch::Sender<Status>>,
    tx: mpsc::UnboundedSender<Msg>,
    next_gen: u64,
    /// First reads not delivered yet (the load is done at 0).
    pending: usize,
    /// The watches that failed and are being set up again.
    troubled: HashMap<(Path, Kind), Error>,
}

impl Tree {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = self.handle(msg) {
                tracing::warn!(root = %self.root, error = %e, "tree cache stopped following");
                stop(&self.status, e);
                return;
            }
            self.publish_state();
        }
    }

    fn loaded(&self) -> bool {
        self.status.borrow().loaded
    }

    /// Publishes `loaded` and Following/Retrying.
    fn publish_state(&self) {
        let loaded = self.pending == 0;
        let state = match self.troubled.values().next() {
            Some(e) => CacheState::Retrying(e.clone()),
            None => CacheState::Following,
        };
        self.status.send_if_modified(|s| {
            // `loaded` only ever turns on (a later first read of a new node is not a load).
            let newly_loaded = loaded && !s.loaded;
            if s.state.is_stopped() || (s.state == state && !newly_loaded) {
                return false;
            }
            s.loaded |= loaded;
            s.state = state;
            true
        });
    }

    fn emit(&self, ev: TreeEvent) {
        if self.loaded() {
            let _ = self.events.send(ev); // no reader: nothing to do
        }
    }

    /// Starts following `path` (not yet followed).
    fn add_entry(&mut self, path: Path, depth: usize) {
        self.next_gen += 1;
        let generation = self.next_gen;
        let with_children = self.options.max_depth.map_or(true, |m| depth < m);
        let key = self.spawn(path.clone(), generation, Kind::Key);
        let children = with_children.then(|| self.spawn(path.clone(), generation, Kind::Children));
        self.pending += 1 + usize::from(with_children);
        self.entries.insert(
            path,
            Entry {
                generation,
                depth,
                node: None,
                listed: BTreeSet::new(),
                key_ready: false,
                children_ready: !with_children,
                _key: key,
                _children: children,
            },
        );
    }

    fn spawn(&self, path: Path, generation: u64, kind: Kind) -> AbortOnDrop {
        let backend = self.backend.clone();
        let tx = self.tx.clone();
        AbortOnDrop(tokio::spawn(watcher(backend, path, generation, kind, tx)))
    }

    fn handle(&mut self, msg: Msg) -> Result<()> {
        let Some(entry) = self.entries.get_mut(&msg.path) else {
            return Ok(()); // from a watcher of a node no longer followed
        };
        if entry.generation != msg.generation {
            return Ok(());
        }
        let loading = !self.status.borrow().loaded;
        let path = msg.path;
        match msg.report {
            Report::Failed(e) => {
                if loading || !e.is_retryable() {
                    return Err(e);
                }
                self.troubled.insert((path, msg.kind), e);
            }
            Report::KeyRead(node, resync) => {
                if !std::mem::replace(&mut entry.key_ready, true) {
                    self.pending -= 1;
                }
                self.troubled.remove(&(path.clone(), Kind::Key));
                self.set_node(&path, node);
                if resync {
                    self.emit(TreeEvent::Resynced(path));
                }
            }
            Report::Key(ev) => match ev {
                KeyEvent::Created(n) | KeyEvent::Changed(n) => self.set_node(&path, Some(n)),
                KeyEvent::Deleted => self.set_node(&path, None),
                KeyEvent::Resync(n) => {
                    self.set_node(&path, n);
                    self.emit(TreeEvent::Resynced(path));
                }
            },
            Report::ChildrenRead(list, resync) => {
                if !std::mem::replace(&mut entry.children_ready, true) {
                    self.pending -= 1;
                }
                self.troubled.remove(&(path.clone(), Kind::Children));
                self.set_children(&path, list)?;
                if resync {
                    self.emit(TreeEvent::Resynced(path));
                }
            }
            Report::Children(ev) => match ev {
                ChildrenEvent::Changed(list) => self.set_children(&path, list)?,
                ChildrenEvent::ParentDeleted => self.set_children(&path, Vec::new())?,
                ChildrenEvent::Resync(list) => {
                    self.set_children(&path, list)?;
                    self.emit(TreeEvent::Resynced(path));
                }
            },
        }
        Ok(())
    }

    fn mirror(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Path, Published>> {
        self.mirror.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The node at `path` is now `node` (`None`: absent): updates the mirror and emits.
    fn set_node(&mut self, path: &Path, node: Option<Node>) {
        let Some(entry) = self.entries.get_mut(path) else {
            return;
        };
        let old = std::mem::replace(&mut entry.node, node.clone());
        let listed = entry.listed.clone();
        let ev = match (old, node) {
            (None, Some(n)) => {
                let children = listed
                    .into_iter()
                    .filter(|c| {
                        path.join(c)
                            .ok()
                            .and_then(|p| self.entries.get(&p))
                            .is_some_and(|e| e.node.is_some())
                    })
                    .collect();
                let mut m = self.mirror();
                m.insert(
                    path.clone(),
                    Published {
                        node: n.clone(),
                        children,
                    },
                );
                if let Some(p) = path.parent().filter(|_| *path != self.root) {
                    if let Some(parent) = m.get_mut(&p) {
                        parent.children.insert(path.name().to_owned());
                    }
                }
                TreeEvent::Added(n)
            }
            (Some(o), Some(n)) => {
                if o == n {
                    return;
                }
                if let Some(p) = self.mirror().get_mut(path) {
                    p.node = n.clone();
                }
                TreeEvent::Updated(n)
            }
            (Some(o), None) => {
                self.unpublish(path);
                TreeEvent::Removed(o)
            }
            (None, None) => return,
        };
        self.emit(ev);
    }

    /// Removes `path` from the mirror and from its parent's children there.
    fn unpublish(&self, path: &Path) {
        let mut m = self.mirror();
        m.remove(path);
        if let Some(p) = path.parent().filter(|_| *path != self.root) {
            if let Some(parent) = m.get_mut(&p) {
                parent.children.remove(path.name());
            }
        }
    }

    /// `path` lists `list` now: follows the new names, drops the subtrees of the gone ones.
    fn set_children(&mut self, path: &Path, list: Vec<String>) -> Result<()> {
        let Some(entry) = self.entries.get_mut(path) else {
            return Ok(());
        };
        let depth = entry.depth;
        let new: BTreeSet<String> = list.into_iter().collect();
        let old = std::mem::replace(&mut entry.listed, new.clone());
        for gone in old.difference(&new) {
            if let Ok(child) = path.join(gone) {
                self.drop_subtree(&child);
            }
        }
        let added: Vec<&String> = new.difference(&old).collect();
        if self.entries.len() + added.len() > self.options.max_nodes {
            return Err(Error::InvalidArgument(format!(
                "the subtree at {} has more than {} nodes (TreeCacheOptions::max_nodes)",
                self.root, self.options.max_nodes
            )));
        }
        for name in added {
            if let Ok(child) = path.join(name) {
                self.add_entry(child, depth + 1);
            }
        }
        Ok(())
    }

    /// Stops following `path` and everything under it; emits `Removed` for what was present.
    fn drop_subtree(&mut self, path: &Path) {
        let Some(entry) = self.entries.remove(path) else {
            return;
        };
        for name in &entry.listed {
            if let Ok(child) = path.join(name) {
                self.drop_subtree(&child);
            }
        }
        self.pending -= usize::from(!entry.key_ready) + usize::from(!entry.children_ready);
        self.troubled.remove(&(path.clone(), Kind::Key));
        self.troubled.remove(&(path.clone(), Kind::Children));
        if let Some(node) = entry.node {
            self.unpublish(path);
            self.emit(TreeEvent::Removed(node));
        }
    }
}

/// Follows one watch of one node, reporting to the cache's task; after a failure, sets it up
/// again with a back-off (and reports the fresh read as a resync). Ends when the cache's task
/// is gone, when aborted (its node is no longer followed), or after an error that retrying
/// cannot fix.
async fn watcher(
    backend: Arc<dyn Backend>,
    path: Path,
    generation: u64,
    kind: Kind,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let send = |report: Report| {
        tx.send(Msg {
            path: path.clone(),
            generation,
            kind,
            report,
        })
        .is_ok()
    };
    let mut backoff = Backoff::reconnect();
    let mut again = false;
    loop {
        let failure = match kind {
            Kind::Key => match backend.watch(&path).await {
                Ok((node, mut events)) => {
                    backoff.reset();
                    if !send(Report::KeyRead(node, again)) {
                        return;
                    }
                    loop {
                        match events.next().await {
                            Some(Ok(ev)) => {
                                if !send(Report::Key(ev)) {
                                    return;
                                }
                            }
                            Some(Err(e)) => break e,
                            None => break Error::Closed,
                        }
                    }
                }
                Err(e) => e,
            },
            Kind::Children => match backend.watch_children(&path).await {
                Ok((list, mut events)) => {
                    backoff.reset();
                    if !send(Report::ChildrenRead(list, again)) {
                        return;
                    }
                    loop {
                        match events.next().await {
                            Some(Ok(ev)) => {
                                if !send(Report::Children(ev)) {
                                    return;
                                }
                            }
                            Some(Err(e)) => break e,
                            None => break Error::Closed,
                        }
                    }
                }
                Err(e) => e,
            },
        };
        let retry = failure.is_retryable();
        tracing::debug!(%path, error = %failure, "tree cache watch failed");
        if !send(Report::Failed(failure)) || !retry {
            return;
        }
        again = true;
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::CreateMode;

    /// A reader that falls more than the buffer behind gets `Resynced(root)` in place of the
    /// events it missed, then the events that follow; the mirror itself is complete.
    #[tokio::test(start_paused = true)]
    async fn a_lagging_reader_gets_resynced() {
        let client = Client::new(Arc::new(crate::mem::MemBackend::new()));
        let root = Path::new("/lag").unwrap();
        client.create(&root, b"", CreateMode::Exact).await.unwrap();
        let cache = client.tree_cache(&root).await.unwrap();
        let mut events = Box::pin(cache.events());
        let n = EVENT_BUFFER + 100;
        for i in 0..n {
            let k = root.join(&format!("k{i:05}")).unwrap();
            client.create(&k, b"", CreateMode::Exact).await.unwrap();
        }
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while cache.len() < n + 1 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(done.is_ok(), "the mirror holds {} nodes", cache.len());
        assert_eq!(events.next().await, Some(TreeEvent::Resynced(root.clone())));
        let last = root.join(&format!("k{:05}", n - 1)).unwrap();
        match events.next().await {
            Some(TreeEvent::Added(node)) => assert!(node.path <= last),
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.children(&root).unwrap().len(), n);
    }
}
