//! The herd-free candidate queue shared by election and lock.
//!
//! Each candidate creates an ephemeral sequential node `<dir>/c-<nonce>-<seq>`; the smallest
//! sequence holds the role; every other candidate watches only its immediate predecessor and,
//! when that one goes, lists again and decides (the predecessor may have left without ever
//! holding the role). The random `<nonce>` lets a candidate find its own node after a create
//! whose answer was lost (a timeout, a dropped future), so that no orphan is left behind and no
//! duplicate is created by a retry.
//!
//! The read-write lock and the semaphore share the queue with other [`Rule`]s: a candidate's
//! node name starts with a tag (`c` for election and lock, `r`/`w` for readers and writers,
//! `s<k>` for a semaphore waiter taking `k` leases), and the rule says, from the entries ahead,
//! whether the candidate holds and otherwise which of them it watches.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::adapter::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{
    create_parents, Backend, CreateMode, Created, Guard, GuardFailure, KeyEvent, Session,
    SessionState, SessionStates, WriteOp, WriteResult,
};
use crate::path::{parse_sequence, Path};

/// What counts as losing the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SuspendPolicy {
    /// A suspended session ends the role at once (safety first: the session may be expiring
    /// and a successor may be elected). The holder's node is removed once contact is back.
    #[default]
    LoseOnSuspend,
    /// A suspended session reports `Suspended`; the role is kept if the session recovers and
    /// lost only when it expires.
    TolerateSuspend,
}

/// The state of a held role (leadership or lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldState {
    /// The role is held.
    Holding,
    /// Contact lost; the role may be lost (only under [`SuspendPolicy::TolerateSuspend`]).
    Suspended,
    /// Final: the role is gone (resigned, session expired or closed, node deleted, or suspended
    /// under [`SuspendPolicy::LoseOnSuspend`]). Stop acting on it.
    Lost,
}

/// Counters the tests and benchmarks read (shared by all candidates of one handle).
#[derive(Debug, Default)]
pub(crate) struct Instruments {
    /// Times a waiting candidate was woken by its predecessor watch.
    pub(crate) wakeups: AtomicU64,
}

fn nonce() -> String {
    // Random enough to tell candidates apart (the toolkit's one random source).
    format!("{:016x}", crate::adapter::random_u64())
}

/// 128 random bits with the version-4 UUID layout (what Curator and kazoo put in their node
/// names to find their own node again).
fn uuid4() -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&crate::adapter::random_u64().to_be_bytes());
    b[8..].copy_from_slice(&crate::adapter::random_u64().to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the candidates of one dialect name their nodes and in which order they hold the role:
/// coord's own layout, or a peer's (Curator, kazoo) matched exactly so that coord and the peer
/// agree on the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `c-<nonce>-<seq>`, ordered by the sequence; names without one are not candidates.
    Coord,
    /// Curator's `_c_<uuid>-<lock name><seq>` (`lock-` for InterProcessMutex and
    /// LeaderSelector, `latch-` for LeaderLatch). Every child is a candidate, ordered by the
    /// text after the last `<lock name>` (the whole name without one), as
    /// `StandardLockInternalsDriver.fixForSorting` orders them.
    Curator(&'static str),
    /// kazoo's `<uuid4 hex>__lock__<seq>`. The candidates are the names matching
    /// `__lock__(-?\d{10})$`, ordered by that text (`Lock._get_predecessor`, `contenders()`).
    Kazoo,
}

/// The order of a candidate in its directory (only compared within one layout).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SortKey {
    /// coord: the sequence number.
    Seq(u64),
    /// Curator, kazoo: the text they sort by.
    Text(String),
}

impl Layout {
    /// A fresh name prefix for our node (the store appends the sequence). It is unique to us,
    /// so it also finds our node after a create whose answer was lost. `tag` starts coord's
    /// names (`c`, `r`, `w`, `s<k>`: see [`Rule`]); the peers' layouts have no tags.
    fn marker(self, tag: &str) -> String {
        match self {
            Layout::Coord => format!("{tag}-{}-", nonce()),
            Layout::Curator(lock_name) => {
                let u = hex(&uuid4());
                format!(
                    "_c_{}-{}-{}-{}-{}-{lock_name}",
                    &u[..8],
                    &u[8..12],
                    &u[12..16],
                    &u[16..20],
                    &u[20..]
                )
            }
            Layout::Kazoo => format!("{}__lock__", hex(&uuid4())),
        }
    }

    /// The order of the child `name`, `None` if it is not a candidate in this layout.
    pub(crate) fn sort_key(self, name: &str) -> Option<SortKey> {
        match self {
            Layout::Coord => Some(SortKey::Seq(parse_sequence(name)?.1)),
            Layout::Curator(lock_name) => Some(SortKey::Text(match name.rfind(lock_name) {
                Some(i) => name[i + lock_name.len()..].to_owned(),
                None => name.to_owned(),
            })),
            Layout::Kazoo => {
                let i = name.rfind("__lock__")?;
                let seq = &name[i + "__lock__".len()..];
                let digits = seq.strip_prefix('-').unwrap_or(seq);
                (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| SortKey::Text(seq.to_owned()))
            }
        }
    }
}

/// One candidate entry in a queue directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) key: SortKey,
}

impl Entry {
    /// The tag of the name: what comes before the first `-` (`c`, `r`, `w`, `s3`).
    pub(crate) fn tag(&self) -> &str {
        self.name.split('-').next().unwrap_or("")
    }

    /// The leases a semaphore entry takes (its tag `s<k>`); an entry that does not say takes
    /// them all (`limit`), so that a foreign node can only make waiters wait, never overbook.
    pub(crate) fn leases(&self, limit: u64) -> u64 {
        self.tag()
            .strip_prefix('s')
            .and_then(|k| k.parse::<u64>().ok())
            .filter(|k| (1..=limit).contains(k))
            .unwrap_or(limit)
    }
}

/// The tag of a reader's node (every other tag counts as a writer).
pub(crate) const READER_TAG: &str = "r";

/// The value a semaphore candidate writes to its node once it holds: the next waiter watches
/// its predecessor for this write (see [`Rule::Leases`]).
pub(crate) const HELD_MARK: &[u8] = b"held";

/// When a candidate holds, given the entries ahead of it, and what it watches otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// One holder at a time (election, lock, writer): holds when nobody is ahead; watches its
    /// immediate predecessor.
    Exclusive,
    /// Shared with other readers (tag [`READER_TAG`]): holds when no writer is ahead; watches
    /// the last writer ahead (readers ahead do not matter to it).
    Shared,
    /// Up to `limit` leases, of which this candidate takes `weight`: holds when the leases
    /// taken by the entries ahead plus its own fit in the limit (holders are a prefix of the
    /// queue: FIFO, nobody overtakes). The first waiter watches every holder ahead (any release
    /// may free enough); every later waiter watches only its predecessor, for its deletion or
    /// its [`HELD_MARK`] (the predecessor holding makes it the first waiter). A release thus
    /// wakes the first waiter, and each candidate that gets a lease wakes one more: wake-ups
    /// per release are the leases freed plus one.
    Leases {
        /// The semaphore's limit.
        limit: u64,
        /// The leases this candidate takes (1..=limit).
        weight: u64,
    },
}

/// What a candidate does next (see [`Rule`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It holds the role.
    Hold,
    /// It waits for one of `nodes` to go; with `on_held`, also for the (one) node to write
    /// [`HELD_MARK`].
    Watch { nodes: Vec<Entry>, on_held: bool },
}

impl Rule {
    /// The decision for a candidate with `ahead` (sorted) in front of it.
    pub(crate) fn decide(&self, ahead: &[Entry]) -> Decision {
        let watch = |e: &Entry| Decision::Watch {
            nodes: vec![e.clone()],
            on_held: false,
        };
        match *self {
            Rule::Exclusive => ahead.last().map_or(Decision::Hold, watch),
            Rule::Shared => ahead
                .iter()
                .rev()
                .find(|e| e.tag() != READER_TAG)
                .map_or(Decision::Hold, watch),
            Rule::Leases { limit, weight } => {
                let taken: u64 = ahead.iter().map(|e| e.leases(limit)).sum();
                if taken.saturating_add(weight) <= limit {
                    Decision::Hold
                } else if taken <= limit {
                    Decision::Watch {
                        nodes: ahead.to_vec(),
                        on_held: false,
                    }
                } else {
                    Decision::Watch {
                        nodes: ahead.last().into_iter().cloned().collect(),
                        on_held: true,
                    }
                }
            }
        }
    }
}

/// The candidate entries of `dir` in `layout`'s order (the first holds the role).
pub(crate) async fn entries(
    backend: &dyn Backend,
    dir: &Path,
    layout: Layout,
) -> Result<Vec<Entry>> {
    let names = match backend.children(dir).await {
        Ok(n) => n,
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Entry> = names
        .into_iter()
        .filter_map(|name| {
            let key = layout.sort_key(&name)?;
            Some(Entry { name, key })
        })
        .collect();
    // A stable sort of the sorted listing: equal keys (only possible between foreign names)
    // keep the name order.
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The entries of `dir` ahead of `me`, in order; `None` if `me` is not there.
async fn entries_ahead(
    backend: &dyn Backend,
    dir: &Path,
    layout: Layout,
    me: &str,
) -> Result<Option<Vec<Entry>>> {
    let mut list = entries(backend, dir, layout).await?;
    Ok(list.iter().position(|e| e.name == me).map(|pos| {
        list.truncate(pos);
        list
    }))
}

/// How long the removal of a node whose create is in doubt (it failed with a retryable error,
/// or its future was dropped while the request ran, and the node was not found) keeps looking
/// for it. A store may apply a request after its client stopped waiting: a Consul agent holds
/// an RPC through a server outage (7 s by default) and its servers apply it when they can;
/// etcd applies a proposal that is already in its log. Found later, such a node would sit in
/// the queue under a live session that never waits on it, and block every later candidate.
const IN_DOUBT_HORIZON: Duration = Duration::from_secs(120);

/// Removes a candidate node in the background (used on drop, where we cannot await).
pub(crate) fn remove_in_background(
    backend: Arc<dyn Backend>,
    session: Arc<dyn Session>,
    dir: Path,
    marker: String,
) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(
            async move { remove_until_gone(&*backend, &*session, &dir, &marker, false).await },
        );
    }
}

/// Removes our node, retrying transient failures for as long as the session lives: a node left
/// behind by a live session would block every later candidate. Once the session has ended
/// the node is gone with it, so that bounds the retries. `in_doubt`: the node may not exist
/// yet, but its create may still take effect; a removal that finds nothing looks again until
/// [`IN_DOUBT_HORIZON`].
async fn remove_until_gone(
    backend: &dyn Backend,
    session: &dyn Session,
    dir: &Path,
    marker: &str,
    in_doubt: bool,
) -> bool {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    let mut looking = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match remove_marked(backend, dir, marker).await {
            Ok(found) => {
                let done = found > 0
                    || !in_doubt
                    || session.state().is_final()
                    || started.elapsed() >= IN_DOUBT_HORIZON;
                if done {
                    if found > 0 && in_doubt {
                        tracing::debug!(%dir, "removed a candidate node whose create was in doubt");
                    }
                    return found > 0;
                }
                looking.wait().await;
            }
            Err(e) if e.is_retryable() && !session.state().is_final() => {
                tracing::debug!(%dir, error = %e, "retrying the removal of a candidate node");
                backoff.wait().await;
            }
            Err(e) => {
                if !session.state().is_final() {
                    tracing::warn!(%dir, error = %e, "could not remove a candidate node");
                }
                return false;
            }
        }
    }
}

/// Deletes every child of `dir` whose name starts with `marker` (our own candidate node);
/// returns how many there were.
async fn remove_marked(backend: &dyn Backend, dir: &Path, marker: &str) -> Result<usize> {
    let names = match backend.children(dir).await {
        Ok(n) => n,
        Err(Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut found = 0;
    for name in names {
        if name.starts_with(marker) {
            found += 1;
            match backend.delete(&dir.join(&name)?, None).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(found)
}

/// The markers of one client's candidate nodes whose create is in doubt and that the clean-up
/// has not found (yet): a node that lands after [`IN_DOUBT_HORIZON`] is removed by the next
/// acquire of the same client in that directory, which finds it ahead of its own node. Only
/// the last [`Leftovers::KEPT`] are remembered.
#[derive(Debug, Default)]
pub(crate) struct Leftovers(std::sync::Mutex<std::collections::VecDeque<(Path, String)>>);

impl Leftovers {
    /// How many markers are remembered (in doubt creates are rare: a lost answer each).
    const KEPT: usize = 64;

    fn list(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(Path, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, dir: &Path, marker: &str) {
        let mut l = self.list();
        if !l.iter().any(|(_, m)| m == marker) {
            if l.len() >= Self::KEPT {
                l.pop_front();
            }
            l.push_back((dir.clone(), marker.to_owned()));
        }
    }

    fn forget(&self, marker: &str) {
        self.list().retain(|(_, m)| m != marker);
    }

    /// Our markers in doubt under `dir` (almost always none).
    fn markers_in(&self, dir: &Path) -> Vec<String> {
        self.list()
            .iter()
            .filter(|(d, _)| d == dir)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// Removes from `ahead` (and from the store) the nodes of our creates that were in doubt.
/// One look at the client's markers per acquire; nothing more when there are none.
async fn drop_leftovers(
    backend: &dyn Backend,
    leftovers: &Leftovers,
    dir: &Path,
    ahead: &mut Vec<Entry>,
) -> Result<()> {
    let markers = leftovers.markers_in(dir);
    if markers.is_empty() {
        return Ok(());
    }
    let ours: Vec<(String, &String)> = ahead
        .iter()
        .filter_map(|e| {
            let m = markers.iter().find(|m| e.name.starts_with(m.as_str()))?;
            Some((e.name.clone(), m))
        })
        .collect();
    for (name, marker) in &ours {
        match backend.delete(&dir.join(name)?, None).await {
            Ok(()) | Err(Error::NotFound { .. }) => {
                tracing::debug!(%dir, %name, "removed a candidate node left by a create in doubt");
                leftovers.forget(marker);
            }
            Err(err) => return Err(err),
        }
    }
    ahead.retain(|e| !ours.iter().any(|(name, _)| *name == e.name));
    Ok(())
}

/// Our sequential node `<dir>/<marker><seq>`, from before its create until the caller keeps it
/// ([`Pending::keep`]): every other exit path (an error, a dropped future) removes it in the
/// background. The create runs as its own task, so that a dropped acquire does not lose the
/// answer of a create already sent: the removal waits for that answer instead of listing
/// while the create may still be applied after the listing.
pub(crate) struct Pending {
    backend: Arc<dyn Backend>,
    session: Arc<dyn Session>,
    dir: Path,
    marker: String,
    armed: bool,
    /// The create's task while it runs.
    inflight: Option<tokio::task::JoinHandle<Result<Created>>>,
    /// The create failed retryably and its node was not found: it may still appear.
    in_doubt: bool,
    /// Where a create in doubt is remembered (the client's).
    leftovers: Arc<Leftovers>,
}

impl Pending {
    /// Armed for a node `<dir>/<marker><seq>` created on `session`, a session of `client`.
    pub(crate) fn new(
        client: &Client,
        session: Arc<dyn Session>,
        dir: Path,
        marker: String,
    ) -> Pending {
        Pending {
            backend: client.backend().clone(),
            session,
            dir,
            marker,
            armed: true,
            inflight: None,
            in_doubt: false,
            leftovers: client.leftovers(),
        }
    }

    /// The session the node is (or is to be) created on.
    pub(crate) fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    /// The node is the caller's now (held, or removed by the caller): nothing to clean up.
    pub(crate) fn keep(&mut self) {
        self.armed = false;
    }

    /// Creates the node on the session.
    ///
    /// A session that had already ended when we took it (the server knew before the client
    /// did) created nothing: we start once more on a fresh session of `client` (the pending
    /// node follows it). A session that ends later, while we wait, fails the caller as
    /// documented. After a retryable failure the create may have happened: we look for our
    /// node by its marker, and never retry blindly (that could leave a duplicate); not found,
    /// it is in doubt, and the removal on drop keeps looking for it for a while.
    pub(crate) async fn create(&mut self, client: &Client, value: &[u8]) -> Result<Created> {
        let prefix = self.dir.join(&self.marker)?;
        let mut fresh_session_tried = false;
        loop {
            match self.create_once(&prefix, value).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if e.is_session_gone()
                        && self.session.state().is_final()
                        && !fresh_session_tried =>
                {
                    fresh_session_tried = true;
                    self.session = client.session().await?;
                }
                Err(e) if e.is_retryable() => {
                    return match find_created(&*self.backend, &self.dir, &self.marker).await {
                        Ok(Some(c)) => Ok(c),
                        Ok(None) => {
                            self.in_doubt = true;
                            Err(e)
                        }
                        Err(find) => {
                            self.in_doubt = true;
                            Err(find)
                        }
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One sequential create, in its own task when there is a runtime to spawn it on.
    async fn create_once(&mut self, prefix: &Path, value: &[u8]) -> Result<Created> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return self
                .session
                .create(prefix, value, CreateMode::Sequential)
                .await;
        };
        let (session, prefix, value) = (self.session.clone(), prefix.clone(), value.to_vec());
        let task = self.inflight.insert(handle.spawn(async move {
            session
                .create(&prefix, &value, CreateMode::Sequential)
                .await
        }));
        let answer = task.await;
        self.inflight = None;
        answer.unwrap_or_else(|e| Err(create_task_failed(&*self.backend, &e)))
    }
}

/// The create's task panicked or was cancelled (its runtime is shutting down): whether the
/// create happened is unknown (retryable, so that the caller looks for the node).
fn create_task_failed(backend: &dyn Backend, e: &tokio::task::JoinError) -> Error {
    Error::backend(
        backend.capabilities().backend,
        format!("the create of a candidate node did not finish: {e}"),
        true,
    )
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (backend, session, dir, marker) = (
            self.backend.clone(),
            self.session.clone(),
            self.dir.clone(),
            self.marker.clone(),
        );
        let inflight = self.inflight.take();
        let mut in_doubt = self.in_doubt;
        let leftovers = self.leftovers.clone();
        handle.spawn(async move {
            if let Some(task) = inflight {
                // The caller went away while the create ran: its answer says what to remove.
                match task.await {
                    // By its path first: a listing may come from a replica that has not seen
                    // the create yet (a ZooKeeper follower).
                    Ok(Ok(c)) => match backend.delete(&c.path, None).await {
                        Ok(()) | Err(Error::NotFound { .. }) => return,
                        Err(e) => tracing::debug!(%dir, error = %e, "retrying a removal"),
                    },
                    Ok(Err(e)) => in_doubt |= e.is_retryable(),
                    Err(_) => in_doubt = true,
                }
            }
            if in_doubt {
                leftovers.note(&dir, &marker);
            }
            if remove_until_gone(&*backend, &*session, &dir, &marker, in_doubt).await {
                leftovers.forget(&marker);
            }
        });
    }
}

/// A held role: the node, its token, and a monitor that reports loss.
pub(crate) struct Held {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) session: Arc<dyn Session>,
    pub(crate) dir: Path,
    pub(crate) node: Path,
    pub(crate) token: u64,
    pub(crate) policy: SuspendPolicy,
    state: watch::Receiver<HoldState>,
    monitor: tokio::task::JoinHandle<()>,
    released: bool,
}

/// Candidates ahead checked with concurrent reads after a wake-up; with more left, one listing
/// is cheaper.
const WALK_MAX: usize = 8;

/// How an acquire ends.
pub(crate) enum Acquire<H = Held> {
    /// Acquired.
    Held(H),
    /// `try_only` and somebody else holds it (our node was removed).
    Busy,
}

/// Creates our candidate node and waits until it is the first (or returns `Busy` at once with
/// `try_only`). Cancel-safe: dropping the future removes the node.
pub(crate) async fn acquire(
    client: &Client,
    dir: &Path,
    layout: Layout,
    value: &[u8],
    policy: SuspendPolicy,
    try_only: bool,
    instruments: &Instruments,
) -> Result<Acquire> {
    let exclusive = Kind {
        tag: "c",
        rule: Rule::Exclusive,
    };
    acquire_in(
        client,
        dir,
        layout,
        value,
        policy,
        try_only,
        instruments,
        exclusive,
    )
    .await
}

/// A candidate's tag (the start of its node's name) and its rule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind<'a> {
    pub(crate) tag: &'a str,
    pub(crate) rule: Rule,
}

/// [`acquire`] for a candidate of `kind`: its node is `<dir>/<tag>-<nonce>-<seq>` and it holds
/// when its rule says so. A [`Rule::Leases`] candidate writes [`HELD_MARK`] to its node before
/// it returns holding.
pub(crate) async fn acquire_as(
    client: &Client,
    dir: &Path,
    value: &[u8],
    policy: SuspendPolicy,
    try_only: bool,
    instruments: &Instruments,
    kind: Kind<'_>,
) -> Result<Acquire> {
    acquire_in(
        client,
        dir,
        Layout::Coord,
        value,
        policy,
        try_only,
        instruments,
        kind,
    )
    .await
}

/// [`acquire_as`] in `layout` (the peers' layouts take only [`Rule::Exclusive`]).
#[allow(clippy::too_many_arguments)]
async fn acquire_in(
    client: &Client,
    dir: &Path,
    layout: Layout,
    value: &[u8],
    policy: SuspendPolicy,
    try_only: bool,
    instruments: &Instruments,
    kind: Kind<'_>,
) -> Result<Acquire> {
    let backend = client.backend().clone();
    let session = client.session().await?;
    // Refuse an oversized value before any write (not even the parents).
    crate::adapter::check_value(backend.capabilities(), value)?;
    create_parents(&*backend, dir).await?;
    // Armed until we hold the role or our node is removed: every other exit path (an error, a
    // dropped future) removes the node in the background.
    let mut pending = Pending::new(client, session, dir.clone(), layout.marker(kind.tag));
    let created = pending.create(client, value).await?;
    let session = pending.session().clone();
    let me = created.path.name().to_owned();
    let token = token_of(&*backend, &created)?;
    let mut states = session.states();
    let Some(mut ahead) = entries_ahead(&*backend, dir, layout, &me).await? else {
        return Err(own_node_gone(&*session, &mut states, &created.path).await);
    };
    drop_leftovers(&*backend, &client.leftovers(), dir, &mut ahead).await?;
    if try_only && kind.rule.decide(&ahead) != Decision::Hold {
        withdraw(&*backend, &created.path, &mut pending).await;
        return Ok(Acquire::Busy);
    }
    let mut waiting = Waiting {
        backend: &*backend,
        session: &*session,
        dir,
        layout,
        me: &me,
        node: &created.path,
        states,
        ahead,
        seen_gone: HashSet::new(),
        seen_held: None,
    };
    waiting.until_first(kind.rule, instruments).await?;
    if let Rule::Leases { .. } = kind.rule {
        // Wakes the waiter behind us (it watches for this mark); on failure `pending` removes
        // our node, which wakes it too.
        backend.set(&created.path, HELD_MARK, None).await?;
    }
    pending.keep();
    Ok(Acquire::Held(Held::start(
        backend.clone(),
        session.clone(),
        dir.clone(),
        created.path.clone(),
        token,
        policy,
    )))
}

/// Our node after a create whose answer was lost, found by its marker; `None` if the create
/// did not happen.
async fn find_created(backend: &dyn Backend, dir: &Path, marker: &str) -> Result<Option<Created>> {
    let names = match backend.children(dir).await {
        Ok(n) => n,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some((name, seq)) = names.iter().find_map(|name| {
        let (prefix, seq) = parse_sequence(name)?;
        (prefix == marker).then_some((name, seq))
    }) else {
        return Ok(None);
    };
    let path = dir.join(name)?;
    Ok(Some(Created {
        stat: backend.get(&path).await?.stat,
        path,
        sequence: Some(seq),
    }))
}

/// The fencing token of our node: the store's creation stamp of it ([`Stat::created`]), which
/// is never 0 and grows with every later candidate, also after the directory was deleted and
/// created again (a sequence number would start over).
///
/// [`Stat::created`]: crate::Stat::created
fn token_of(backend: &dyn Backend, created: &Created) -> Result<u64> {
    match created.stat.created {
        0 => Err(Error::backend(
            backend.capabilities().backend,
            format!("the create of {} returned no creation stamp", created.path),
            false,
        )),
        stamp => Ok(stamp),
    }
}

/// A try-acquire found candidates ahead: removes our node now, or leaves it to `pending`
/// (which retries in the background when dropped) if that fails.
async fn withdraw(backend: &dyn Backend, node: &Path, pending: &mut Pending) {
    match backend.delete(node, None).await {
        Ok(()) | Err(Error::NotFound { .. }) => pending.keep(),
        // Dropping `pending` retries in the background.
        Err(e) => tracing::debug!(error = %e, "try-acquire cleanup deferred"),
    }
}

/// A candidate waiting for its turn: our node and the candidates ahead of it, in order.
///
/// Every later candidate gets a larger number, so `ahead` only shrinks, and a name once gone
/// never comes back. When the one we watch goes, the rest are checked at once (one round trip,
/// however many went while we watched only our neighbour) instead of listing every candidate
/// again: O(1) per wake-up, not O(candidates). With many left, one listing is cheaper; it
/// drops the names already seen gone, so that a listing and a read that disagree cannot make
/// us spin. (Adapters never answer from a state older than one they answered from before:
/// coord-zk syncs a replacement connection before it serves reads.)
struct Waiting<'a> {
    backend: &'a dyn Backend,
    session: &'a dyn Session,
    dir: &'a Path,
    layout: Layout,
    /// Our node's name.
    me: &'a str,
    /// Our node.
    node: &'a Path,
    states: SessionStates,
    ahead: Vec<Entry>,
    seen_gone: HashSet<String>,
    /// The predecessor whose [`HELD_MARK`] we already acted on: seen again with our decision
    /// unchanged, only its deletion wakes us (no spinning on a mark).
    seen_held: Option<String>,
}

/// How the wait for a watched candidate ended.
enum Watched {
    /// This one is gone: the rest ahead need checking.
    Went(String),
    /// It wrote [`HELD_MARK`]: the rest ahead need checking.
    Held(String),
    /// The watch ended without telling: look again.
    Ended,
}

impl Waiting<'_> {
    /// Waits until `rule` says we hold and our node is still there. Errors: our session
    /// ended, our node went, a watch failed, or a read failed.
    async fn until_first(&mut self, rule: Rule, instruments: &Instruments) -> Result<()> {
        // Set when a watched candidate went (or holds): the rest ahead need checking.
        let mut went = false;
        loop {
            if std::mem::take(&mut went) && !self.ahead.is_empty() {
                self.recheck_ahead().await?;
            }
            let (nodes, on_held) = match rule.decide(&self.ahead) {
                Decision::Hold => {
                    // One read confirms our own node is still there, after a sync: our
                    // server may lag (a ZooKeeper member back from a partition it did not
                    // notice still shows a node whose session its leader already ended).
                    self.backend.sync(self.node).await?;
                    if self.backend.exists(self.node).await?.is_none() {
                        return Err(self.own_node_gone().await);
                    }
                    return Ok(());
                }
                Decision::Watch { nodes, on_held } => (nodes, on_held),
            };
            if nodes.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: a candidate that cannot hold waits for nobody ({rule:?})",
                    self.dir
                )));
            }
            match self.watch_any(&nodes, on_held, instruments).await? {
                Watched::Went(name) => {
                    self.candidate_gone(name);
                    went = true;
                }
                Watched::Held(name) => {
                    self.seen_held = Some(name);
                    went = true;
                }
                Watched::Ended => {}
            }
        }
    }

    /// Watches `nodes` until one goes (or, `on_held`, writes [`HELD_MARK`]).
    async fn watch_any(
        &mut self,
        nodes: &[Entry],
        on_held: bool,
        instruments: &Instruments,
    ) -> Result<Watched> {
        let mut streams = Vec::with_capacity(nodes.len());
        for e in nodes {
            let (current, events) = self.backend.watch(&self.dir.join(&e.name)?).await?;
            match current {
                None => return Ok(Watched::Went(e.name.clone())),
                Some(n) if on_held && self.marked_held(&e.name, &n.value) => {
                    return Ok(Watched::Held(e.name.clone()));
                }
                Some(_) => {}
            }
            let name = e.name.clone();
            streams.push(events.map(move |ev| (name.clone(), ev)).boxed());
        }
        let mut events = futures::stream::select_all(streams);
        self.await_candidate(&mut events, on_held, instruments)
            .await
    }

    /// Whether `value` of the watched `name` is a fresh [`HELD_MARK`] (one not acted on yet).
    fn marked_held(&self, name: &str, value: &[u8]) -> bool {
        value == HELD_MARK && self.seen_held.as_deref() != Some(name)
    }

    /// A candidate ahead is gone for good.
    fn candidate_gone(&mut self, name: String) {
        self.ahead.retain(|e| e.name != name);
        self.seen_gone.insert(name);
    }

    /// Checks which candidates ahead are still there: one listing if many are left,
    /// concurrent reads otherwise.
    async fn recheck_ahead(&mut self) -> Result<()> {
        if self.ahead.len() > WALK_MAX {
            let Some(mut listed) =
                entries_ahead(self.backend, self.dir, self.layout, self.me).await?
            else {
                return Err(self.own_node_gone().await);
            };
            listed.retain(|e| !self.seen_gone.contains(&e.name));
            self.ahead = listed;
            return Ok(());
        }
        let paths = self
            .ahead
            .iter()
            .map(|e| self.dir.join(&e.name))
            .collect::<Result<Vec<Path>>>()?;
        let present =
            futures::future::try_join_all(paths.iter().map(|p| self.backend.exists(p))).await?;
        let mut rest = Vec::with_capacity(self.ahead.len());
        for (e, st) in self.ahead.drain(..).zip(present) {
            if st.is_some() {
                rest.push(e);
            } else {
                self.seen_gone.insert(e.name);
            }
        }
        self.ahead = rest;
        Ok(())
    }

    /// Waits for a watched candidate to go (or hold, with `on_held`), or for our session to
    /// end (an error). Every event counts as a wake-up.
    async fn await_candidate(
        &mut self,
        events: &mut (impl futures::Stream<Item = (String, Result<KeyEvent>)> + Unpin),
        on_held: bool,
        instruments: &Instruments,
    ) -> Result<Watched> {
        loop {
            tokio::select! {
                ev = events.next() => {
                    instruments.wakeups.fetch_add(1, Ordering::Relaxed);
                    match ev {
                        // Gone for good: sequence numbers are never reused.
                        Some((name, Ok(KeyEvent::Deleted | KeyEvent::Resync(None)))) => {
                            return Ok(Watched::Went(name));
                        }
                        Some((name, Ok(KeyEvent::Changed(n) | KeyEvent::Created(n) | KeyEvent::Resync(Some(n)))))
                            if on_held && self.marked_held(&name, &n.value) =>
                        {
                            return Ok(Watched::Held(name));
                        }
                        // Every watch ended without telling: look again.
                        None => return Ok(Watched::Ended),
                        Some((_, Ok(_))) => continue,
                        Some((_, Err(e))) => return Err(e),
                    }
                }
                st = self.states.next() => {
                    match st {
                        Some(s) if s.is_final() => return Err(gone(self.session, s)),
                        Some(_) => continue,
                        None => return Err(gone(self.session, self.session.state())),
                    }
                }
            }
        }
    }

    /// The error for our node missing (see [`own_node_gone`]).
    async fn own_node_gone(&mut self) -> Error {
        own_node_gone(self.session, &mut self.states, self.node).await
    }
}

/// How long past its TTL a session whose node is gone may take to report its end: a
/// reconnect's round (the TTL alone was too short for a 2 s ZooKeeper session in a container:
/// `double_barrier_member_session_expiry` got `NotFound`).
pub(crate) const REPORT_GRACE: Duration = Duration::from_secs(3);

/// Our candidate node is missing: the session ended (the server removed it) or someone
/// deleted it. The client may learn of its session's end a while after it sees the node gone
/// (a restarted Consul agent: the watches resync before the session observer reports
/// Expired; a ZooKeeper client learns it only on reconnecting), so a session that still looks
/// alive gets up to its TTL plus [`REPORT_GRACE`] to report its end: the error is then the
/// documented `SessionExpired`, not `NotFound`.
pub(crate) async fn own_node_gone(
    session: &dyn Session,
    states: &mut SessionStates,
    path: &Path,
) -> Error {
    let ended = tokio::time::timeout(session.ttl() + REPORT_GRACE, async {
        loop {
            match states.next().await {
                Some(s) if s.is_final() => return s,
                Some(_) => {}
                None => return session.state(),
            }
        }
    })
    .await;
    let st = ended.unwrap_or_else(|_| session.state());
    if st.is_final() {
        gone(session, st)
    } else {
        Error::NotFound {
            path: path.to_string(),
        }
    }
}

fn gone(session: &dyn Session, st: SessionState) -> Error {
    Error::session_gone(session.id(), st)
}

impl Held {
    fn start(
        backend: Arc<dyn Backend>,
        session: Arc<dyn Session>,
        dir: Path,
        node: Path,
        token: u64,
        policy: SuspendPolicy,
    ) -> Held {
        let (tx, rx) = watch::channel(HoldState::Holding);
        let monitor = tokio::spawn(monitor(
            backend.clone(),
            session.clone(),
            node.clone(),
            policy,
            tx,
        ));
        Held {
            backend,
            session,
            dir,
            node,
            token,
            policy,
            state: rx,
            monitor,
            released: false,
        }
    }

    /// The state now. Reads the session directly, so a loss is seen the moment the session
    /// reports it, before any successor can be chosen.
    pub(crate) fn state(&self) -> HoldState {
        let own = *self.state.borrow();
        if own == HoldState::Lost || self.released {
            return HoldState::Lost;
        }
        match (self.session.state(), self.policy) {
            (s, _) if s.is_final() => HoldState::Lost,
            (SessionState::Suspended, SuspendPolicy::LoseOnSuspend) => HoldState::Lost,
            (SessionState::Suspended, SuspendPolicy::TolerateSuspend) => HoldState::Suspended,
            _ => own,
        }
    }

    pub(crate) fn states(&self) -> watch::Receiver<HoldState> {
        self.state.clone()
    }

    /// The guard on our own node as it was created: holds exactly while the node lives (it
    /// goes when we release, when the session ends, or when someone deletes it).
    pub(crate) fn guard(&self) -> Guard {
        Guard::created(self.node.clone(), self.token)
    }

    /// Runs `op` only while we hold the role: refused without a call if this handle already
    /// knows the role is lost ([`GuardFailure::Released`]), else guarded by our node in the
    /// store, so that a holder that has not noticed its loss yet is refused too.
    pub(crate) async fn write_if_held(&self, op: &WriteOp) -> Result<WriteResult> {
        let guard = self.guard();
        if self.state() == HoldState::Lost {
            return Err(guard.error(GuardFailure::Released));
        }
        self.backend.write_if(&guard, op).await
    }

    pub(crate) async fn lost(&self) {
        let mut rx = self.state.clone();
        // The monitor always ends in Lost; if it is gone the role is gone too.
        let _ = rx.wait_for(|s| *s == HoldState::Lost).await;
    }

    /// Gives the role up: deletes our node (so the next candidate goes on) and reports Lost.
    pub(crate) async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.monitor.abort();
        match self.backend.delete(&self.node, None).await {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => {
                // Leave it to the background (and, at worst, to the session's end).
                remove_in_background(
                    self.backend.clone(),
                    self.session.clone(),
                    self.dir.clone(),
                    self.node.name().to_owned(),
                );
                Err(e)
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.released {
            self.monitor.abort();
            remove_in_background(
                self.backend.clone(),
                self.session.clone(),
                self.dir.clone(),
                self.node.name().to_owned(),
            );
        }
    }
}

/// Watches our own node, retrying transient errors (with a bounded back-off) for as long as
/// the session lives. `None`: the node is gone or the session ended.
async fn watch_own(
    backend: &dyn Backend,
    session: &dyn Session,
    node: &Path,
) -> Option<crate::kernel::KeyWatch> {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        match backend.watch(node).await {
            Ok((Some(_), ev)) => return Some(ev),
            Ok((None, _)) => return None,
            Err(e) if e.is_retryable() && !session.state().is_final() => {
                tracing::debug!(%node, error = %e, "re-watching a held node");
                backoff.wait().await;
            }
            Err(_) => return None,
        }
    }
}

/// Follows the session and our node; ends in Lost. Under LoseOnSuspend, removes the node when
/// contact comes back so that the next candidate is not blocked by a holder that gave up.
async fn monitor(
    backend: Arc<dyn Backend>,
    session: Arc<dyn Session>,
    node: Path,
    policy: SuspendPolicy,
    tx: watch::Sender<HoldState>,
) {
    // Every state of our node counts as ours: only its deletion (or the session) ends the role.
    crate::adapter::hold::monitor_key(
        session.clone(),
        policy,
        || watch_own(&*backend, &*session, &node),
        |_| true,
        || handover(&*backend, &*session, &node),
        tx,
    )
    .await
}

/// We stopped acting as the holder and contact is back: hand over now, not at our expiry.
async fn handover(backend: &dyn Backend, session: &dyn Session, node: &Path) {
    if let Some(dir) = node.parent() {
        remove_until_gone(backend, session, &dir, node.name(), false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(layout: Layout, names: &[&str]) -> Vec<String> {
        let mut v: Vec<(SortKey, String)> = names
            .iter()
            .filter_map(|n| Some((layout.sort_key(n)?, n.to_string())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Each layout's marker, with the store's sequence appended, is found again by its marker
    /// (what `find_created` does after a lost create answer) and is a candidate of its layout.
    #[test]
    fn markers_round_trip() {
        for layout in [
            Layout::Coord,
            Layout::Curator("lock-"),
            Layout::Curator("latch-"),
            Layout::Kazoo,
        ] {
            let m = layout.marker("c");
            assert_ne!(m, layout.marker("c"), "markers are unique");
            let name = format!("{m}0000000042");
            assert_eq!(parse_sequence(&name), Some((m.as_str(), 42)));
            assert!(layout.sort_key(&name).is_some(), "{name}");
            assert!(
                Path::root().join(&name).is_ok(),
                "{name} is a valid node name"
            );
        }
        // Curator: `_c_` + a 36-character UUID + `-lock-`; kazoo: 32 hex digits + `__lock__`.
        let c = Layout::Curator("lock-").marker("c");
        assert!(
            c.starts_with("_c_") && c.ends_with("-lock-") && c.len() == 3 + 36 + 6,
            "{c}"
        );
        assert_eq!(c.as_bytes()[3 + 14], b'4', "a version-4 UUID: {c}");
        let k = Layout::Kazoo.marker("c");
        assert!(k.ends_with("__lock__") && k.len() == 32 + 8, "{k}");
    }

    /// Curator's order: the text after the last `lock-`, a name without it compared whole
    /// (so coord's own names sort after every Curator node, as Curator sees them).
    #[test]
    fn curator_order() {
        let names = [
            "_c_b-lock-0000000003",
            "c-0123-0000000001",
            "_c_a-lock-0000000002",
            "x-latch-0000000000",
            "lock-0000000004",
        ];
        assert_eq!(
            sorted(Layout::Curator("lock-"), &names),
            [
                "_c_a-lock-0000000002",
                "_c_b-lock-0000000003",
                "lock-0000000004",
                "c-0123-0000000001",
                "x-latch-0000000000",
            ]
        );
        assert_eq!(
            sorted(Layout::Curator("latch-"), &names)[0],
            "x-latch-0000000000"
        );
    }

    /// kazoo's contenders: names matching `__lock__(-?\d{10})$`, by that text; others ignored.
    #[test]
    fn kazoo_order() {
        let names = [
            "bb__lock__0000000003",
            "aa__lock__0000000007",
            "cc__rlock__0000000001",
            "c-0123-0000000000",
            "dd__lock__12",
            "ee__lock__0000000005",
        ];
        assert_eq!(
            sorted(Layout::Kazoo, &names),
            [
                "bb__lock__0000000003",
                "ee__lock__0000000005",
                "aa__lock__0000000007"
            ]
        );
        // coord's own layout ignores names without a sequence suffix, orders by the number.
        assert_eq!(
            sorted(Layout::Coord, &["c-b-0000000002", "junk", "c-a-0000000001"]),
            ["c-a-0000000001", "c-b-0000000002"]
        );
    }

    fn q(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: format!("{n}-0123456789abcdef-{i:010}"),
                key: SortKey::Seq(i as u64),
            })
            .collect()
    }

    fn watched(d: Decision) -> (Vec<u64>, bool) {
        match d {
            Decision::Hold => panic!("holds"),
            Decision::Watch { nodes, on_held } => (
                nodes
                    .iter()
                    .map(|e| match e.key {
                        SortKey::Seq(n) => n,
                        SortKey::Text(_) => panic!("a coord entry"),
                    })
                    .collect(),
                on_held,
            ),
        }
    }

    #[test]
    fn exclusive_watches_its_predecessor() {
        assert_eq!(Rule::Exclusive.decide(&[]), Decision::Hold);
        assert_eq!(
            watched(Rule::Exclusive.decide(&q(&["r", "w", "r"]))),
            (vec![2], false)
        );
    }

    #[test]
    fn a_reader_waits_only_for_the_last_writer_ahead() {
        assert_eq!(Rule::Shared.decide(&q(&["r", "r"])), Decision::Hold);
        assert_eq!(
            watched(Rule::Shared.decide(&q(&["w", "r", "w", "r"]))),
            (vec![2], false)
        );
        // Any tag but a reader's counts as a writer.
        assert_eq!(watched(Rule::Shared.decide(&q(&["c"]))), (vec![0], false));
    }

    #[test]
    fn leases_fit_in_fifo_order() {
        let one = Rule::Leases {
            limit: 3,
            weight: 1,
        };
        let two = Rule::Leases {
            limit: 3,
            weight: 2,
        };
        assert_eq!(one.decide(&q(&["s1", "s1"])), Decision::Hold);
        // The first waiter watches every holder ahead.
        assert_eq!(watched(two.decide(&q(&["s1", "s1"]))), (vec![0, 1], false));
        assert_eq!(watched(one.decide(&q(&["s3"]))), (vec![0], false));
        // A later waiter watches its predecessor, for its held mark too.
        assert_eq!(
            watched(one.decide(&q(&["s1", "s2", "s2"]))),
            (vec![2], true)
        );
        // A node that does not say how many it takes counts as the whole limit.
        assert_eq!(watched(one.decide(&q(&["x"]))), (vec![0], false));
        assert_eq!(watched(one.decide(&q(&["s9", "s1"]))), (vec![1], true));
    }

    /// A store that applies a session's first create `landing` after it was asked, whatever
    /// the client does meanwhile (as a Consul agent does with an RPC it holds through an
    /// outage). `answer_late`: the client is answered when the create lands; otherwise it is
    /// told a retryable timeout after 20 ms. Its reads of the `frozen` paths lag: they answer
    /// what they answered when frozen until a `sync` (a ZooKeeper member back from a partition
    /// it did not notice).
    mod late {
        use std::any::Any;
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use async_trait::async_trait;

        use crate::error::{Error, Result};
        use crate::kernel::*;
        use crate::path::Path;

        pub(super) struct LateBackend {
            pub(super) inner: Arc<dyn Backend>,
            pub(super) answer_late: bool,
            /// When a session's first create lands (its later creates are on time).
            pub(super) landing: Duration,
            pub(super) frozen: Mutex<HashMap<String, Option<Stat>>>,
        }

        impl LateBackend {
            pub(super) fn new(
                inner: Arc<dyn Backend>,
                answer_late: bool,
                landing: Duration,
            ) -> Self {
                LateBackend {
                    inner,
                    answer_late,
                    landing,
                    frozen: Mutex::default(),
                }
            }

            /// From now until the next sync, reads of `path` answer what they answer now.
            pub(super) async fn freeze(&self, path: &Path) {
                let st = self.inner.exists(path).await.unwrap();
                self.frozen.lock().unwrap().insert(path.to_string(), st);
            }
        }

        struct LateSession {
            inner: Arc<dyn Session>,
            answer_late: bool,
            landing: Duration,
            used: AtomicBool,
        }

        #[async_trait]
        impl Session for LateSession {
            fn id(&self) -> &SessionId {
                self.inner.id()
            }
            fn ttl(&self) -> Duration {
                self.inner.ttl()
            }
            fn state(&self) -> SessionState {
                self.inner.state()
            }
            fn states(&self) -> SessionStates {
                self.inner.states()
            }
            async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
                if self.used.swap(true, Ordering::Relaxed) {
                    return self.inner.create(path, value, mode).await;
                }
                let (inner, path, value) = (self.inner.clone(), path.clone(), value.to_vec());
                let delay = self.landing;
                let landing = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.create(&path, &value, mode).await
                });
                if self.answer_late {
                    landing
                        .await
                        .unwrap_or_else(|e| Err(Error::backend("mem", e.to_string(), false)))
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(Error::timeout("the create's answer was lost"))
                }
            }
            async fn close(&self) -> Result<()> {
                self.inner.close().await
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        #[async_trait]
        impl Backend for LateBackend {
            fn capabilities(&self) -> &Capabilities {
                self.inner.capabilities()
            }
            fn namespace(&self) -> &str {
                self.inner.namespace()
            }
            async fn open_session(&self, options: SessionOptions) -> Result<Arc<dyn Session>> {
                Ok(Arc::new(LateSession {
                    inner: self.inner.open_session(options).await?,
                    answer_late: self.answer_late,
                    landing: self.landing,
                    used: AtomicBool::new(false),
                }))
            }
            async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
                self.inner.create(path, value, mode).await
            }
            async fn get(&self, path: &Path) -> Result<Node> {
                self.inner.get(path).await
            }
            async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
                let frozen = self.frozen.lock().unwrap().get(path.as_str()).cloned();
                match frozen {
                    Some(st) => Ok(st),
                    None => self.inner.exists(path).await,
                }
            }
            async fn set(&self, path: &Path, value: &[u8], v: Option<Version>) -> Result<Stat> {
                self.inner.set(path, value, v).await
            }
            async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
                self.inner.delete(path, expected).await
            }
            async fn children(&self, path: &Path) -> Result<Vec<String>> {
                self.inner.children(path).await
            }
            async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
                self.inner.watch(path).await
            }
            async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
                self.inner.watch_children(path).await
            }
            async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
                self.inner.write_if(guard, op).await
            }
            async fn sync(&self, _path: &Path) -> Result<()> {
                // A replica's catch-up takes a round trip.
                tokio::time::sleep(Duration::from_millis(1)).await;
                self.frozen.lock().unwrap().clear();
                Ok(())
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
    }

    /// A candidate whose create lands after its acquire went away (dropped while the create
    /// ran, or told a timeout) is removed once it lands: otherwise it would sit first in the
    /// queue under a live session, and nobody would ever hold the lock again. Found by the
    /// Consul partition test (two candidates of one contender, the older one nobody's).
    #[tokio::test(start_paused = true)]
    async fn a_create_that_lands_after_its_acquire_went_is_removed() {
        for answer_late in [true, false] {
            let mem: Arc<dyn Backend> = Arc::new(crate::mem::MemBackend::new());
            let late = Client::new(Arc::new(late::LateBackend::new(
                mem.clone(),
                answer_late,
                Duration::from_millis(200),
            )));
            let lock = late.lock("l").unwrap();
            let dropped_or_failed = tokio::time::timeout(Duration::from_millis(50), lock.lock())
                .await
                .map(|r| r.err());
            match dropped_or_failed {
                // Dropped while the create ran.
                Err(_) => assert!(answer_late),
                // Told a timeout.
                Ok(e) => assert!(!answer_late && e.is_some_and(|e| e.is_retryable())),
            }
            // The create lands at 200 ms; the other client must get the lock.
            let other = Client::new(mem.clone());
            let dir = Path::new("/locks/l").unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got =
                tokio::time::timeout(Duration::from_secs(30), other.lock("l").unwrap().lock())
                    .await;
            let left = mem.children(&dir).await.unwrap();
            assert!(
                matches!(got, Ok(Ok(_))),
                "answer_late {answer_late}: the lock was not free; candidates {left:?}"
            );
            assert_eq!(left.len(), 1, "answer_late {answer_late}: {left:?}");
        }
    }

    /// A candidate whose predecessor went decides on a read of its own node: from a server
    /// that lags, that read can still show a node the store already removed (ZooKeeper,
    /// `partitions_zookeeper`: two live holders for 226 ms after a heal, see RELIABILITY.md
    /// (h)). The grant must follow a sync, so that the stale read cannot grant it.
    #[tokio::test(start_paused = true)]
    async fn a_grant_is_not_decided_on_a_stale_read_of_our_own_node() {
        let mem: Arc<dyn Backend> = Arc::new(crate::mem::MemBackend::new());
        let lagging = Arc::new(late::LateBackend::new(mem.clone(), true, Duration::ZERO));
        let first = Client::new(mem.clone());
        let held = first.lock("l").unwrap().lock().await.unwrap();
        let waiter = Client::new(lagging.clone());
        let lock = waiter.lock("l").unwrap();
        let task = tokio::spawn(async move { lock.lock().await });
        let dir = Path::new("/locks/l").unwrap();
        let mut names = Vec::new();
        for _ in 0..100 {
            names = mem.children(&dir).await.unwrap();
            if names.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(names.len(), 2, "the waiter's candidate: {names:?}");
        // The waiter's node is the newer one.
        let mut mine = None;
        for p in names.iter().map(|n| dir.join(n).unwrap()) {
            let created = mem.exists(&p).await.unwrap().unwrap().created;
            if mine.as_ref().is_none_or(|(c, _)| created > *c) {
                mine = Some((created, p));
            }
        }
        let (_, mine) = mine.unwrap();
        // The store removes the waiter's node; its lagging server does not know yet.
        lagging.freeze(&mine).await;
        mem.delete(&mine, None).await.unwrap();
        // Its predecessor goes: the waiter decides.
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the waiter decided")
            .expect("the waiter did not panic");
        assert!(
            got.is_err(),
            "granted on a stale read of its own node (gone from the store)"
        );
    }

    /// A create in doubt that lands after the clean-up stopped looking for it (2 minutes) is
    /// removed by the next acquire of the same client, which finds it ahead of its own node.
    #[tokio::test(start_paused = true)]
    async fn a_create_that_lands_after_the_horizon_is_removed_by_the_next_acquire() {
        let mem: Arc<dyn Backend> = Arc::new(crate::mem::MemBackend::new());
        let late = Client::new(Arc::new(late::LateBackend::new(
            mem.clone(),
            false,
            IN_DOUBT_HORIZON * 2,
        )));
        let lock = late.lock("l").unwrap();
        let e = lock.lock().await.err();
        assert!(e.is_some_and(|e| e.is_retryable()));
        tokio::time::sleep(IN_DOUBT_HORIZON * 3).await;
        let dir = Path::new("/locks/l").unwrap();
        assert_eq!(
            mem.children(&dir).await.unwrap().len(),
            1,
            "the create landed"
        );
        let got = tokio::time::timeout(Duration::from_secs(30), lock.lock()).await;
        let left = mem.children(&dir).await.unwrap();
        assert!(
            matches!(got, Ok(Ok(_))),
            "blocked by its own leftover: {left:?}"
        );
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
