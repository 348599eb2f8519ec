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

use futures::{Stream, StreamExt};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, ChildrenEvent};
use crate::path::Path;
use crate::recipes::queue::{self, Acquire, Held, HoldState, Instruments, SuspendPolicy};

mod cache;
pub use cache::{CacheState, LeaderCache};

/// One election, identified by its path. Cheap to clone; clones share the instruments.
#[derive(Clone)]
pub struct Election {
    client: Client,
    path: Path,
    policy: SuspendPolicy,
    instruments: Arc<Instruments>,
}

/// Who leads an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The value the leader campaigned with.
    pub value: Vec<u8>,
    /// The leader's fencing token.
    pub token: u64,
    /// The leader's candidate node.
    pub node: Path,
}

impl Election {
    /// The election stored at `path`.
    pub fn new(client: &Client, path: Path) -> Election {
        Election {
            client: client.clone(),
            path,
            policy: SuspendPolicy::default(),
            instruments: Arc::default(),
        }
    }

    /// Sets what a suspended session means for a leadership won by this handle.
    pub fn with_suspend_policy(mut self, policy: SuspendPolicy) -> Election {
        self.policy = policy;
        self
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
        match queue::acquire(
            &self.client,
            &self.path,
            value,
            self.policy,
            false,
            &self.instruments,
        )
        .await?
        {
            Acquire::Held(held) => Ok(Leadership { held }),
            Acquire::Busy => Err(Error::backend(
                self.client.capabilities().backend,
                "campaign ended without leadership",
                true,
            )),
        }
    }

    /// The current leader, `None` if there is no candidate.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        leader_of(&self.client, &self.path).await
    }

    /// The leader after each change (deduplicated), starting with the current one. Does not
    /// campaign.
    pub async fn observe(&self) -> Result<impl Stream<Item = Result<Option<LeaderInfo>>> + Send> {
        create_parents(&**self.client.backend(), &self.path).await?;
        let (_, events) = self.client.watch_children(&self.path).await?;
        let client = self.client.clone();
        let path = self.path.clone();
        let first = leader_of(&client, &path).await?;
        let state = (client, path, events, Some(first.clone()));
        let rest = futures::stream::unfold(state, |(client, path, mut events, last)| async move {
            loop {
                match events.next().await? {
                    Ok(ChildrenEvent::Changed(_))
                    | Ok(ChildrenEvent::Resync(_))
                    | Ok(ChildrenEvent::ParentDeleted) => match leader_of(&client, &path).await {
                        Ok(now) if Some(&now) == last.as_ref() => continue,
                        Ok(now) => {
                            return Some((Ok(now.clone()), (client, path, events, Some(now))))
                        }
                        Err(e) => return Some((Err(e), (client, path, events, last))),
                    },
                    Err(e) => return Some((Err(e), (client, path, events, last))),
                }
            }
        });
        Ok(futures::stream::once(async move { Ok(first) }).chain(rest))
    }

    /// How many times waiting candidates of this handle (and its clones) were woken by their
    /// predecessor's watch: one per leadership change when there is no herd effect.
    pub fn wakeups(&self) -> u64 {
        self.instruments.wakeups.load(Ordering::Relaxed)
    }
}

pub(crate) async fn leader_of(client: &Client, path: &Path) -> Result<Option<LeaderInfo>> {
    // The first candidate may leave between the listing and the read: list again (bounded).
    for _ in 0..16 {
        let list = queue::entries(&**client.backend(), path).await?;
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

/// Held leadership. Dropping it resigns (in the background).
pub struct Leadership {
    pub(crate) held: Held,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("node", &self.held.node)
            .field("token", &self.held.token)
            .field("state", &self.state())
            .finish()
    }
}

impl Leadership {
    /// The fencing token: the store's creation stamp of the candidate node (never 0), strictly
    /// increasing across successive leaders of this election for the life of the store's data.
    /// Pass it to the resources you write to, and have them reject smaller tokens.
    pub fn fencing_token(&self) -> u64 {
        self.held.token
    }

    /// The candidate node that holds the leadership.
    pub fn node(&self) -> &Path {
        &self.held.node
    }

    /// The session the leadership is bound to.
    pub(crate) fn session(&self) -> Arc<dyn crate::kernel::Session> {
        self.held.session.clone()
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
