//! Leader election by "watch your predecessor" (no herd effect).
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let election = client.election("scheduler")?;
//! let leadership = election.campaign(b"node-1").await?; // waits until elected
//! println!("leading with fencing token {}", leadership.fencing_token());
//! leadership.lost().await; // the session is gone or suspended: stop acting
//! # Ok(()) }
//! ```
//!
//! Candidates are ephemeral sequential nodes under the election path; the smallest is the
//! leader; each other candidate watches only its immediate predecessor, so one leadership
//! change wakes one candidate whatever their number. The fencing token is the store's creation
//! stamp of the leader's candidate node ([`crate::Stat::created`]): never 0, strictly
//! increasing across successive leaders of one election, also after its directory was deleted
//! and created again. [`Leadership::guarded`] writes only while the candidate node lives.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::client::Client;
use crate::dialect::{Candidacy, Dialect, DialectDriver};
use crate::error::{Error, Result};
use crate::kernel::{create_parents, ChildrenEvent, KeyEvent, KeyWatch};
use crate::path::Path;
use crate::recipes::hold::Hold;
use crate::recipes::queue::{self, Acquire, HoldState, Instruments, Layout, SuspendPolicy};

mod cache;
pub use cache::{CacheState, LeaderCache};

/// One election, identified by its path. Cheap to clone; clones share the instruments.
#[derive(Clone)]
pub struct Election {
    client: Client,
    path: Path,
    policy: SuspendPolicy,
    dialect: Dialect,
    instruments: Arc<Instruments>,
}

/// Who leads an election (or one candidate of it, see [`Election::participants`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The value the leader campaigned with (or proclaimed since).
    pub value: Vec<u8>,
    /// The leader's fencing token.
    pub token: u64,
    /// The leader's candidate node.
    pub node: Path,
}

/// How a dialect is served: the generic queue with a layout, or an adapter's driver.
pub(crate) enum Protocol {
    Queue(Layout),
    Driver(Arc<dyn DialectDriver>),
}

/// The protocol of `dialect` on `client`'s backend: [`Error::Unsupported`] (before any I/O)
/// when the backend cannot serve it.
pub(crate) fn protocol(client: &Client, dialect: Dialect) -> Result<Protocol> {
    let backend = client.backend();
    dialect.check_backend(backend.capabilities().backend)?;
    if let Some(layout) = dialect.layout() {
        return Ok(Protocol::Queue(layout));
    }
    backend
        .dialect_driver(dialect)
        .map(Protocol::Driver)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "the {} backend has no driver for the {dialect} dialect",
                backend.capabilities().backend
            ))
        })
}

impl Election {
    /// The election stored at `path`, in the client's default dialect
    /// ([`Client::with_default_dialect`]; coord's own unless set).
    pub fn new(client: &Client, path: Path) -> Election {
        Election {
            client: client.clone(),
            path,
            policy: SuspendPolicy::default(),
            dialect: client.default_dialect(),
            instruments: Arc::default(),
        }
    }

    /// Sets what a suspended session means for a leadership won by this handle.
    pub fn with_suspend_policy(mut self, policy: SuspendPolicy) -> Election {
        self.policy = policy;
        self
    }

    /// Speaks `dialect`'s protocol, to share the election with that peer's candidates (see
    /// [`crate::dialect`]). A dialect the backend cannot serve fails every call with
    /// [`Error::Unsupported`] before any I/O.
    pub fn with_dialect(mut self, dialect: Dialect) -> Election {
        self.dialect = dialect;
        self
    }

    /// The dialect spoken.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The election's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The client the election runs on.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Joins the election with `value` and waits until elected.
    ///
    /// Cancel-safe: dropping the future removes the candidate node. Fails with
    /// [`Error::SessionExpired`] if the client's session ends while waiting.
    pub async fn campaign(&self, value: &[u8]) -> Result<Leadership> {
        let hold = match protocol(&self.client, self.dialect)? {
            Protocol::Queue(layout) => match queue::acquire(
                &self.client,
                &self.path,
                layout,
                value,
                self.policy,
                false,
                &self.instruments,
            )
            .await?
            {
                Acquire::Held(held) => Some(Hold::Queue(held)),
                Acquire::Busy => None,
            },
            Protocol::Driver(driver) => {
                let session = self.client.session().await?;
                driver
                    .acquire(Candidacy {
                        session,
                        name: &self.path,
                        value,
                        try_only: false,
                        policy: self.policy,
                        wakeups: &self.instruments.wakeups,
                    })
                    .await?
                    .map(Hold::Driver)
            }
        };
        match hold {
            Some(held) => Ok(Leadership { held }),
            None => Err(Error::backend(
                self.client.capabilities().backend,
                "campaign ended without leadership",
                true,
            )),
        }
    }

    /// The current leader, `None` if there is no candidate.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        match protocol(&self.client, self.dialect)? {
            Protocol::Queue(layout) => leader_of(&self.client, &self.path, layout).await,
            Protocol::Driver(d) => Ok(d.participants(&self.path).await?.into_iter().next()),
        }
    }

    /// Every candidate, in the order they get the leadership (the first leads), with the
    /// value each campaigned with.
    pub async fn participants(&self) -> Result<Vec<LeaderInfo>> {
        match protocol(&self.client, self.dialect)? {
            Protocol::Queue(layout) => participants_of(&self.client, &self.path, layout).await,
            Protocol::Driver(d) => d.participants(&self.path).await,
        }
    }

    /// The leader after each change (deduplicated), starting with the current one: a new
    /// leader, or the leader's new value ([`Leadership::proclaim`]). Does not campaign.
    pub async fn observe(&self) -> Result<impl Stream<Item = Result<Option<LeaderInfo>>> + Send> {
        let stream: BoxStream<'static, Result<Option<LeaderInfo>>> =
            match protocol(&self.client, self.dialect)? {
                Protocol::Queue(layout) => observe_queue(&self.client, &self.path, layout)
                    .await?
                    .boxed(),
                Protocol::Driver(d) => d.observe(&self.path).await?,
            };
        Ok(stream)
    }

    /// How many times waiting candidates of this handle (and its clones) were woken by their
    /// predecessor's watch: one per leadership change when there is no herd effect.
    pub fn wakeups(&self) -> u64 {
        self.instruments.wakeups.load(Ordering::Relaxed)
    }
}

/// What [`observe_queue`] carries from one item to the next.
struct Observing {
    client: Client,
    path: Path,
    layout: Layout,
    children: crate::kernel::ChildrenWatch,
    /// The watch of the leader's node (its value may change), if there is a leader.
    leader: Option<KeyWatch>,
    last: Option<LeaderInfo>,
}

/// The queue dialects' observation: the children of the directory (a new first candidate)
/// and the leader's node (a proclaimed value).
async fn observe_queue(
    client: &Client,
    path: &Path,
    layout: Layout,
) -> Result<impl Stream<Item = Result<Option<LeaderInfo>>> + Send> {
    create_parents(&**client.backend(), path).await?;
    let (_, children) = client.watch_children(path).await?;
    let (first, leader) = watched_leader(client, path, layout).await?;
    let state = Observing {
        client: client.clone(),
        path: path.clone(),
        layout,
        children,
        leader,
        last: first.clone(),
    };
    let rest = futures::stream::unfold(state, |mut st| async move {
        loop {
            let changed = tokio::select! {
                ev = st.children.next() => match ev? {
                    Ok(ChildrenEvent::Changed(_) | ChildrenEvent::Resync(_) | ChildrenEvent::ParentDeleted) => true,
                    Err(e) => return Some((Err(e), st)),
                },
                ev = next_key_event(&mut st.leader) => match ev {
                    Some(Ok(KeyEvent::Changed(_) | KeyEvent::Created(_) | KeyEvent::Resync(_) | KeyEvent::Deleted)) => true,
                    Some(Err(e)) => return Some((Err(e), st)),
                    // The leader's watch ended: look again.
                    None => true,
                },
            };
            if !changed {
                continue;
            }
            match watched_leader(&st.client, &st.path, st.layout).await {
                Ok((now, watch)) => {
                    st.leader = watch;
                    if now == st.last {
                        continue;
                    }
                    st.last = now.clone();
                    return Some((Ok(now), st));
                }
                Err(e) => return Some((Err(e), st)),
            }
        }
    });
    Ok(futures::stream::once(async move { Ok(first) }).chain(rest))
}

/// The next event of the leader's watch; pending forever without one.
async fn next_key_event(w: &mut Option<KeyWatch>) -> Option<Result<KeyEvent>> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The leader, read through a watch of its node (so that no later change of its value is
/// missed), and that watch.
async fn watched_leader(
    client: &Client,
    path: &Path,
    layout: Layout,
) -> Result<(Option<LeaderInfo>, Option<KeyWatch>)> {
    // The first candidate may leave between the listing and the read: list again (bounded).
    for _ in 0..16 {
        let list = queue::entries(&**client.backend(), path, layout).await?;
        let Some(first) = list.first() else {
            return Ok((None, None));
        };
        let node = path.join(&first.name)?;
        match client.watch(&node).await? {
            (Some(n), watch) => {
                return Ok((
                    Some(LeaderInfo {
                        value: n.value,
                        token: n.stat.created,
                        node,
                    }),
                    Some(watch),
                ))
            }
            (None, _) => continue,
        }
    }
    Err(Error::timeout(format!(
        "the leader of {path} kept changing"
    )))
}

pub(crate) async fn leader_of(
    client: &Client,
    path: &Path,
    layout: Layout,
) -> Result<Option<LeaderInfo>> {
    // The first candidate may leave between the listing and the read: list again (bounded).
    for _ in 0..16 {
        let list = queue::entries(&**client.backend(), path, layout).await?;
        let Some(first) = list.first() else {
            return Ok(None);
        };
        let node = path.join(&first.name)?;
        match client.get(&node).await {
            Ok(n) => {
                return Ok(Some(LeaderInfo {
                    value: n.value,
                    token: n.stat.created,
                    node,
                }))
            }
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::timeout(format!(
        "the leader of {path} kept changing"
    )))
}

/// Every candidate of a queue directory in order, with its value (those gone between the
/// listing and their read are left out).
pub(crate) async fn participants_of(
    client: &Client,
    path: &Path,
    layout: Layout,
) -> Result<Vec<LeaderInfo>> {
    let list = queue::entries(&**client.backend(), path, layout).await?;
    let nodes = list
        .iter()
        .map(|e| path.join(&e.name))
        .collect::<Result<Vec<Path>>>()?;
    let reads = futures::future::join_all(nodes.iter().map(|n| client.get(n))).await;
    let mut out = Vec::with_capacity(nodes.len());
    for (node, read) in nodes.into_iter().zip(reads) {
        match read {
            Ok(n) => out.push(LeaderInfo {
                value: n.value,
                token: n.stat.created,
                node,
            }),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Held leadership. Dropping it resigns (in the background).
pub struct Leadership {
    pub(crate) held: Hold,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("node", self.held.node())
            .field("token", &self.held.token())
            .field("state", &self.state())
            .finish()
    }
}

impl Leadership {
    /// The fencing token: the store's creation stamp of the candidate node (never 0), strictly
    /// increasing across successive leaders of this election for the life of the store's data.
    /// Pass it to the resources you write to, and have them reject smaller tokens.
    pub fn fencing_token(&self) -> u64 {
        self.held.token()
    }

    /// The candidate node that holds the leadership.
    pub fn node(&self) -> &Path {
        self.held.node()
    }

    /// The queue node to delete to resign at once (`None` for a driver's dialect).
    pub(crate) fn queue_node(&self) -> Option<&Path> {
        self.held.queue_node()
    }

    /// The session the leadership is bound to.
    pub(crate) fn session(&self) -> Arc<dyn crate::kernel::Session> {
        self.held.session()
    }

    /// Changes the value the leader is seen with ([`Election::leader`],
    /// [`Election::observe`], the peers' views) without a new election: the fencing token
    /// stays. [`Error::GuardFailed`] once the leadership is lost.
    pub async fn proclaim(&self, value: &[u8]) -> Result<()> {
        self.held.proclaim(value).await
    }

    /// The leadership's state now (see [`HoldState`]).
    pub fn state(&self) -> HoldState {
        self.held.state()
    }

    /// Whether this is still the leader.
    pub fn is_leading(&self) -> bool {
        self.state() == HoldState::Holding
    }

    /// The state after each change, starting with the current one; ends after Lost.
    pub fn states(&self) -> impl Stream<Item = HoldState> + Send {
        hold_states(self.held.states())
    }

    /// Resolves when the leadership is lost (see [`HoldState::Lost`]).
    pub async fn lost(&self) {
        self.held.lost().await
    }

    /// Gives the leadership up: the next candidate is elected.
    pub async fn resign(mut self) -> Result<()> {
        self.held.release().await
    }
}

/// Turns the holder's state channel into a stream ending after Lost.
pub(crate) fn hold_states(
    rx: tokio::sync::watch::Receiver<HoldState>,
) -> impl Stream<Item = HoldState> + Send {
    futures::stream::unfold((rx, false, true), |(mut rx, done, first)| async move {
        if done {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return Some((HoldState::Lost, (rx, true, false)));
        }
        let s = *rx.borrow_and_update();
        Some((s, (rx, s == HoldState::Lost, false)))
    })
}
