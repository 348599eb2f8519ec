//! The in-memory backend (`mem://`): the complete kernel semantics in one process.
//!
//! - `mem://` gives a private store; `mem://name` shares one store among all clients of that
//!   name in the process (an in-process cluster). The store lives while a client of it does.
//! - Options: `session_ttl` (default 10 s, bounds 10 ms – 1 h), `max_value_size` (bytes,
//!   default 1 MiB), named as on every backend; an unknown option is `InvalidUrl` naming the
//!   closest of these. A namespace path separates clients of one store.
//! - Time comes from tokio: under a paused clock TTLs elapse instantly and deterministically.
//! - Sessions are kept alive by the client implicitly; [`MemSession`] offers fault injection
//!   for tests: [`MemSession::expire_now`], [`MemSession::crash`] (stop keeping alive: expires
//!   after its TTL) and [`MemSession::partition`] (Suspended, and expired if the partition
//!   outlasts the TTL).
//! - On expiry the session's state becomes Expired *before* its ephemerals are deleted, under
//!   one lock: an owner that watches its session learns the loss no later than any watcher of
//!   its keys.
//! - Creation stamps ([`Stat::created`]) come from one counter of the store (all its
//!   namespaces), starting at 1; they last as long as the store does.
//! - A guarded write ([`Backend::write_if`]) checks its guard and
//!   writes under the store's one lock.
//! - A watch is a small bounded queue ([`event_queue`] of [`WATCH_BUFFER`] events) in the
//!   store's map of watchers, with no task of its own; a consumer that falls that far behind
//!   gets one `Resync` with the latest state instead of the queued events. Watchers whose
//!   stream was dropped are pruned when their key changes and by a sweep whose cost is spread
//!   over the registrations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;

use crate::adapter::{
    check_ttl, event_queue, Collapse, EventSender, RawBackend, RawSession, WATCH_BUFFER,
};
use crate::error::{Error, Result};
use crate::kernel::*;
use crate::path::{format_sequence, Path};
use crate::url::ConnectUrl;

const DEFAULT_MAX_VALUE: usize = 1024 * 1024;

/// Stores shared by name (`mem://name`), held weakly so that a store dies with its last client.
fn registry() -> &'static Mutex<HashMap<String, Weak<Store>>> {
    static REG: OnceLock<Mutex<HashMap<String, Weak<Store>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

#[derive(Default)]
struct MemNode {
    value: Vec<u8>,
    version: u64,
    owner: Option<u64>,
    children: BTreeSet<String>,
    next_seq: u64,
    /// The store's stamp of the node's creation (0: a namespace root, never created).
    created: u64,
}

struct SessionEntry {
    state: watch::Sender<SessionState>,
    /// (namespace, path) of the session's ephemerals.
    ephemerals: BTreeSet<(String, String)>,
    /// Bumped by every fault so that a stale timer does not act.
    epoch: u64,
}

struct Watcher<E> {
    client: u64,
    tx: EventSender<E>,
}

/// A map of watchers by (namespace, path).
type Watchers<E> = HashMap<(String, String), Vec<Watcher<E>>>;

/// Registrations between two sweeps of dropped watchers, at least.
const SWEEP_MIN: usize = 256;

#[derive(Default)]
struct Inner {
    /// namespace -> path -> node. Each namespace's root `/` always exists.
    trees: HashMap<String, BTreeMap<String, MemNode>>,
    sessions: HashMap<u64, SessionEntry>,
    key_watchers: Watchers<KeyEvent>,
    child_watchers: Watchers<ChildrenEvent>,
    /// Watch registrations since the last sweep of dropped watchers.
    registered_since_sweep: usize,
    /// Watchers left by the last sweep: the next one comes after as many registrations
    /// (amortised O(1) per registration; at most about twice the live watchers are kept).
    live_after_sweep: usize,
    /// The last creation stamp given (store-wide; the next create takes the one after).
    last_created: u64,
}

struct Store {
    inner: Mutex<Inner>,
    ids: AtomicU64,
}

impl Store {
    fn new() -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::new(Inner::default()),
            ids: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied operation behind (every
        // operation validates before it mutates), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn send_all<E: Clone + Collapse>(list: Option<&mut Vec<Watcher<E>>>, ev: E) {
    if let Some(list) = list {
        list.retain(|w| w.tx.send(ev.clone()));
    }
}

/// Drops the watchers that `keep` refuses, and the keys left without any; returns how many
/// are left.
fn prune<E>(map: &mut Watchers<E>, keep: impl Fn(&Watcher<E>) -> bool) -> usize {
    map.retain(|_, l| {
        l.retain(&keep);
        !l.is_empty()
    });
    map.values().map(Vec::len).sum()
}

/// Adds a watcher of (`ns`, `path`) to `map`, dropping those of the same key whose stream is
/// gone.
fn register<E>(map: &mut Watchers<E>, ns: &str, path: &Path, w: Watcher<E>) {
    let list = map
        .entry((ns.to_owned(), path.as_str().to_owned()))
        .or_default();
    list.retain(|w| !w.tx.is_closed());
    list.push(w);
}

impl Inner {
    /// Counts a registration and sweeps the dropped watchers of every key when due.
    fn registered(&mut self) {
        self.registered_since_sweep += 1;
        if self.registered_since_sweep > self.live_after_sweep.max(SWEEP_MIN) {
            self.live_after_sweep = prune(&mut self.key_watchers, |w| !w.tx.is_closed())
                + prune(&mut self.child_watchers, |w| !w.tx.is_closed());
            self.registered_since_sweep = 0;
        }
    }

    fn tree(&mut self, ns: &str) -> &mut BTreeMap<String, MemNode> {
        self.trees.entry(ns.to_owned()).or_insert_with(|| {
            let mut t = BTreeMap::new();
            t.insert("/".to_owned(), MemNode::default());
            t
        })
    }

    fn node(&self, ns: &str, path: &str) -> Option<&MemNode> {
        self.trees.get(ns).and_then(|t| t.get(path)).or_else(|| {
            // The root of a namespace exists before anything is written in it.
            (path == "/").then_some(&EMPTY_ROOT)
        })
    }

    fn stat_of(node: &MemNode) -> Stat {
        Stat::new(
            Version(node.version),
            node.owner.map(|o| SessionId(o.to_string())),
        )
        .with_created(node.created)
    }

    fn notify_key(&mut self, ns: &str, path: &str, ev: KeyEvent) {
        send_all(
            self.key_watchers.get_mut(&(ns.to_owned(), path.to_owned())),
            ev,
        );
    }

    fn notify_children(&mut self, ns: &str, parent: &str) {
        let key = (ns.to_owned(), parent.to_owned());
        // Building the list costs O(children): only do it for a watched parent.
        if !self.child_watchers.get(&key).is_some_and(|l| !l.is_empty()) {
            return;
        }
        let list: Vec<String> = match self.trees.get(ns).and_then(|t| t.get(parent)) {
            Some(n) => n.children.iter().cloned().collect(),
            None => return,
        };
        send_all(
            self.child_watchers.get_mut(&key),
            ChildrenEvent::Changed(list),
        );
    }

    fn create(
        &mut self,
        ns: &str,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
        owner: Option<u64>,
    ) -> Result<Created> {
        let parent = path.parent().ok_or_else(|| Error::AlreadyExists {
            path: path.to_string(),
        })?;
        let tree = self.tree(ns);
        let pnode = tree
            .get_mut(parent.as_str())
            .ok_or_else(|| Error::NoParent {
                path: path.to_string(),
            })?;
        if pnode.owner.is_some() {
            return Err(Error::EphemeralParent {
                path: parent.to_string(),
            });
        }
        let (full, sequence) = match mode {
            CreateMode::Exact => (path.clone(), None),
            CreateMode::Sequential => {
                let n = pnode.next_seq;
                let name = format!("{}{}", path.name(), format_sequence(n));
                (parent.join(&name)?, Some(n))
            }
        };
        if tree.contains_key(full.as_str()) {
            return Err(Error::AlreadyExists {
                path: full.to_string(),
            });
        }
        let pnode = tree
            .get_mut(parent.as_str())
            .ok_or_else(|| Error::NoParent {
                path: path.to_string(),
            })?;
        if sequence.is_some() {
            pnode.next_seq += 1;
        }
        pnode.children.insert(full.name().to_owned());
        self.last_created += 1;
        let node = MemNode {
            value: value.to_vec(),
            owner,
            created: self.last_created,
            ..MemNode::default()
        };
        let tree = self.tree(ns);
        let stat = Inner::stat_of(&node);
        let ev = KeyEvent::Created(Node {
            path: full.clone(),
            value: node.value.clone(),
            stat: stat.clone(),
        });
        tree.insert(full.as_str().to_owned(), node);
        if let Some(o) = owner {
            if let Some(s) = self.sessions.get_mut(&o) {
                s.ephemerals
                    .insert((ns.to_owned(), full.as_str().to_owned()));
            }
        }
        self.notify_key(ns, full.as_str(), ev);
        self.notify_children(ns, parent.as_str());
        Ok(Created {
            path: full,
            sequence,
            stat,
        })
    }

    fn delete(&mut self, ns: &str, path: &str, expected: Option<Version>) -> Result<()> {
        if path == "/" {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be deleted".into(),
            ));
        }
        let tree = self.tree(ns);
        let node = tree.get(path).ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })?;
        if let Some(v) = expected {
            if node.version != v.0 {
                return Err(Error::VersionMismatch {
                    path: path.to_owned(),
                    expected: v,
                });
            }
        }
        if !node.children.is_empty() {
            return Err(Error::NotEmpty {
                path: path.to_owned(),
            });
        }
        let owner = node.owner;
        tree.remove(path);
        let p = Path::new(path)?;
        let parent = p.parent().unwrap_or_else(Path::root);
        if let Some(pn) = tree.get_mut(parent.as_str()) {
            pn.children.remove(p.name());
        }
        if let Some(o) = owner {
            if let Some(s) = self.sessions.get_mut(&o) {
                s.ephemerals.remove(&(ns.to_owned(), path.to_owned()));
            }
        }
        self.notify_key(ns, path, KeyEvent::Deleted);
        send_all(
            self.child_watchers
                .get_mut(&(ns.to_owned(), path.to_owned())),
            ChildrenEvent::ParentDeleted,
        );
        self.notify_children(ns, parent.as_str());
        Ok(())
    }

    fn set(
        &mut self,
        ns: &str,
        path: &Path,
        value: &[u8],
        expected: Option<Version>,
    ) -> Result<Stat> {
        let node = self
            .tree(ns)
            .get_mut(path.as_str())
            .ok_or_else(|| Error::NotFound {
                path: path.to_string(),
            })?;
        if let Some(v) = expected {
            if node.version != v.0 {
                return Err(Error::VersionMismatch {
                    path: path.to_string(),
                    expected: v,
                });
            }
        }
        node.version += 1;
        node.value = value.to_vec();
        let stat = Inner::stat_of(node);
        let ev = KeyEvent::Changed(Node {
            path: path.clone(),
            value: value.to_vec(),
            stat: stat.clone(),
        });
        self.notify_key(ns, path.as_str(), ev);
        Ok(stat)
    }

    /// Checks `guard` and runs `op`, under the one lock the caller holds.
    fn write_if(&mut self, ns: &str, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        let stat = self.node(ns, guard.path.as_str()).map(Inner::stat_of);
        if let Some(reason) = guard.failure(stat.as_ref()) {
            return Err(guard.error(reason));
        }
        Ok(match op {
            WriteOp::Create { path, value, mode } => {
                WriteResult::Created(self.create(ns, path, value, *mode, None)?)
            }
            WriteOp::Set {
                path,
                value,
                expected,
            } => WriteResult::Set(self.set(ns, path, value, *expected)?),
            WriteOp::Delete { path, expected } => {
                self.delete(ns, path.as_str(), *expected)?;
                WriteResult::Deleted
            }
        })
    }

    /// Ends a session: the state first, then the ephemerals (see the module docs).
    fn end_session(&mut self, id: u64, final_state: SessionState) {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return;
        };
        if entry.state.borrow().is_final() {
            return;
        }
        entry.epoch += 1;
        entry.state.send_replace(final_state);
        let ephemerals = std::mem::take(&mut entry.ephemerals);
        // Deepest first is not needed (ephemerals have no children), but keep a stable order.
        for (ns, path) in ephemerals.into_iter().rev() {
            // The node may have been deleted explicitly meanwhile; ignore NotFound.
            let _ = self.delete(&ns, &path, None);
        }
        self.sessions.remove(&id);
    }
}

static EMPTY_ROOT: MemNode = MemNode {
    value: Vec::new(),
    version: 0,
    owner: None,
    children: BTreeSet::new(),
    next_seq: 0,
    created: 0,
};

/// A client of an in-memory store, in one namespace.
pub struct MemBackend {
    store: Arc<Store>,
    ns: String,
    caps: Capabilities,
    client_id: u64,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend")
            .field("namespace", &self.ns)
            .finish_non_exhaustive()
    }
}

impl MemBackend {
    /// A client of a new private store, in the root namespace, with default options.
    pub fn new() -> MemBackend {
        MemBackend::with_store(Store::new(), String::new(), default_caps())
    }

    /// A client from a `mem://[name][/namespace][?session_ttl=…&max_value_size=…&registry=…]`
    /// URL (mem has no native registry layout: `registry=native` fails at the first registry
    /// call).
    pub fn from_url(url: &str) -> Result<MemBackend> {
        let mut u = ConnectUrl::parse(url)?;
        u.expect_scheme(&["mem"])?;
        if u.username.is_some() {
            return Err(Error::InvalidUrl {
                reason: "mem:// takes no credentials".into(),
            });
        }
        let mut caps = default_caps();
        if let Some(ttl) = u.take_duration("session_ttl")? {
            caps.default_session_ttl = ttl;
            check_ttl(&caps, None).map_err(|e| Error::InvalidUrl {
                reason: e.to_string(),
            })?;
        }
        caps.max_value_size = u.take_size("max_value_size", caps.max_value_size, usize::MAX)?;
        caps.registry_layout = u.take_registry_layout()?;
        u.finish()?;
        let store = match u.hosts.as_slice() {
            [] => Store::new(),
            [name] => {
                let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
                reg.retain(|_, w| w.strong_count() > 0);
                match reg.get(name).and_then(Weak::upgrade) {
                    Some(s) => s,
                    None => {
                        let s = Store::new();
                        reg.insert(name.clone(), Arc::downgrade(&s));
                        s
                    }
                }
            }
            _ => {
                return Err(Error::InvalidUrl {
                    reason: "mem:// takes one store name, not a host list".into(),
                })
            }
        };
        Ok(MemBackend::with_store(store, u.namespace, caps))
    }

    fn with_store(store: Arc<Store>, ns: String, caps: Capabilities) -> MemBackend {
        let client_id = store.ids.fetch_add(1, Ordering::Relaxed);
        MemBackend {
            store,
            ns,
            caps,
            client_id,
        }
    }

    /// Another client of the same store in namespace `ns` (`""` for the root namespace).
    pub fn with_namespace(&self, ns: &str) -> Result<MemBackend> {
        if !ns.is_empty() {
            Path::new(ns)?;
        }
        Ok(MemBackend::with_store(
            self.store.clone(),
            ns.to_owned(),
            self.caps.clone(),
        ))
    }
}

impl Default for MemBackend {
    fn default() -> Self {
        MemBackend::new()
    }
}

impl Drop for MemBackend {
    fn drop(&mut self) {
        // Watches belong to the client: end them with it.
        let mut inner = self.store.lock();
        let me = self.client_id;
        prune(&mut inner.key_watchers, |w| w.client != me);
        prune(&mut inner.child_watchers, |w| w.client != me);
    }
}

fn default_caps() -> Capabilities {
    Capabilities::new("mem")
        .with_max_value_size(DEFAULT_MAX_VALUE)
        .with_min_session_ttl(Duration::from_millis(10))
        .with_max_session_ttl(Duration::from_secs(3600))
        .with_default_session_ttl(Duration::from_secs(10))
        .with_watch_coalesces(false)
}

#[async_trait]
impl RawBackend for MemBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn namespace(&self) -> &str {
        &self.ns
    }

    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>> {
        let id = self.store.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(SessionState::Connected);
        self.store.lock().sessions.insert(
            id,
            SessionEntry {
                state: tx,
                ephemerals: BTreeSet::new(),
                epoch: 0,
            },
        );
        Ok(Arc::new(MemSession {
            store: self.store.clone(),
            ns: self.ns.clone(),
            caps: self.caps.clone(),
            id,
            sid: SessionId(id.to_string()),
            ttl,
            state: rx,
        }))
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        self.store.lock().create(&self.ns, path, value, mode, None)
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        let inner = self.store.lock();
        let n = inner
            .node(&self.ns, path.as_str())
            .ok_or_else(|| Error::NotFound {
                path: path.to_string(),
            })?;
        Ok(Node {
            path: path.clone(),
            value: n.value.clone(),
            stat: Inner::stat_of(n),
        })
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        Ok(self
            .store
            .lock()
            .node(&self.ns, path.as_str())
            .map(Inner::stat_of))
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        self.store.lock().set(&self.ns, path, value, expected)
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        self.store.lock().write_if(&self.ns, guard, op)
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        self.store.lock().delete(&self.ns, path.as_str(), expected)
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let inner = self.store.lock();
        let n = inner
            .node(&self.ns, path.as_str())
            .ok_or_else(|| Error::NotFound {
                path: path.to_string(),
            })?;
        Ok(n.children.iter().cloned().collect())
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        let (tx, rx) = event_queue(WATCH_BUFFER);
        let mut inner = self.store.lock();
        let current = inner.node(&self.ns, path.as_str()).map(|n| Node {
            path: path.clone(),
            value: n.value.clone(),
            stat: Inner::stat_of(n),
        });
        let w = Watcher {
            client: self.client_id,
            tx,
        };
        register(&mut inner.key_watchers, &self.ns, path, w);
        inner.registered();
        Ok((current, Box::pin(rx.map(Ok))))
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        let (tx, rx) = event_queue(WATCH_BUFFER);
        let mut inner = self.store.lock();
        let current = inner
            .node(&self.ns, path.as_str())
            .map(|n| n.children.iter().cloned().collect())
            .unwrap_or_default();
        let w = Watcher {
            client: self.client_id,
            tx,
        };
        register(&mut inner.child_watchers, &self.ns, path, w);
        inner.registered();
        Ok((current, Box::pin(rx.map(Ok))))
    }
}

/// A session of the in-memory backend, with fault injection for tests.
pub struct MemSession {
    store: Arc<Store>,
    ns: String,
    caps: Capabilities,
    id: u64,
    sid: SessionId,
    ttl: Duration,
    state: watch::Receiver<SessionState>,
}

impl std::fmt::Debug for MemSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSession")
            .field("id", &self.id)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl MemSession {
    /// Expires the session now, as the server would after its TTL.
    pub fn expire_now(&self) {
        self.store
            .lock()
            .end_session(self.id, SessionState::Expired);
    }

    /// The client stops keeping the session alive (a crashed process that did not close):
    /// the state stays as it is (nobody is left to see it) and the session expires after its
    /// TTL.
    pub fn crash(&self) {
        let epoch = self.bump_epoch();
        self.expire_after(self.ttl, epoch);
    }

    /// Cuts the client off the server for `duration`: Suspended now; Connected again after
    /// `duration` if that is shorter than the TTL, else Expired when the TTL runs out.
    pub fn partition(&self, duration: Duration) {
        let epoch = {
            let mut inner = self.store.lock();
            let Some(e) = inner.sessions.get_mut(&self.id) else {
                return;
            };
            e.epoch += 1;
            e.state.send_replace(SessionState::Suspended);
            e.epoch
        };
        if duration < self.ttl {
            let store = self.store.clone();
            let id = self.id;
            tokio::spawn(async move {
                tokio::time::sleep(duration).await;
                let mut inner = store.lock();
                if let Some(e) = inner.sessions.get_mut(&id) {
                    if e.epoch == epoch {
                        e.state.send_replace(SessionState::Connected);
                    }
                }
            });
        } else {
            self.expire_after(self.ttl, epoch);
        }
    }

    fn bump_epoch(&self) -> u64 {
        let mut inner = self.store.lock();
        match inner.sessions.get_mut(&self.id) {
            Some(e) => {
                e.epoch += 1;
                e.epoch
            }
            None => 0,
        }
    }

    fn expire_after(&self, after: Duration, epoch: u64) {
        let store = self.store.clone();
        let id = self.id;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut inner = store.lock();
            if inner.sessions.get(&id).is_some_and(|e| e.epoch == epoch) {
                inner.end_session(id, SessionState::Expired);
            }
        });
    }

    fn gone_error(&self, state: SessionState) -> Error {
        Error::session_gone(&self.sid, state)
    }
}

#[async_trait]
impl RawSession for MemSession {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn id(&self) -> &SessionId {
        &self.sid
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    fn states(&self) -> SessionStates {
        crate::adapter::states_of(self.state.clone())
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let mut inner = self.store.lock();
        match *self.state.borrow() {
            SessionState::Connected => {}
            SessionState::Suspended => {
                return Err(Error::connection_lost("session suspended (mem partition)"))
            }
            s => return Err(self.gone_error(s)),
        }
        inner.create(&self.ns, path, value, mode, Some(self.id))
    }

    async fn close(&self) -> Result<()> {
        self.store.lock().end_session(self.id, SessionState::Closed);
        Ok(())
    }
}

impl Drop for MemSession {
    fn drop(&mut self) {
        // The last handle gone is like a client closing: ephemerals go now.
        self.store.lock().end_session(self.id, SessionState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::new(s).expect("path")
    }

    #[tokio::test]
    async fn a_slow_watch_gets_one_resync_with_the_latest_state() {
        let b = MemBackend::new();
        RawBackend::create(&b, &p("/k"), b"0", CreateMode::Exact)
            .await
            .unwrap();
        let (_, mut slow) = RawBackend::watch(&b, &p("/k")).await.unwrap();
        let n = WATCH_BUFFER + 10;
        for i in 1..=n {
            let v = i.to_string();
            RawBackend::set(&b, &p("/k"), v.as_bytes(), None)
                .await
                .unwrap();
        }
        // The full queue collapsed into a Resync; the events after it follow in order.
        let mut last = None;
        let mut resyncs = 0;
        for _ in 0..n {
            match futures::FutureExt::now_or_never(slow.next()) {
                Some(Some(Ok(KeyEvent::Resync(Some(node))))) => {
                    resyncs += 1;
                    last = Some(node.value)
                }
                Some(Some(Ok(KeyEvent::Changed(node)))) => last = Some(node.value),
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        assert_eq!(resyncs, 1);
        assert_eq!(last, Some(n.to_string().into_bytes()));
    }

    #[tokio::test]
    async fn dropped_watches_are_swept() {
        let b = MemBackend::new();
        for i in 0..(3 * SWEEP_MIN) {
            let path = p(&format!("/k{i}"));
            drop(RawBackend::watch(&b, &path).await.unwrap());
            drop(RawBackend::watch_children(&b, &path).await.unwrap());
        }
        let (_, _kept) = RawBackend::watch(&b, &p("/kept")).await.unwrap();
        let inner = b.store.lock();
        let left = inner.key_watchers.len() + inner.child_watchers.len();
        assert!(left <= SWEEP_MIN + 1, "{left} watcher keys left");
        assert!(inner
            .key_watchers
            .contains_key(&(String::new(), "/kept".to_owned())));
    }
}
