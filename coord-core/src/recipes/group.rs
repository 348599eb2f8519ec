//! Group membership: members join with data under a group path, as ephemeral nodes, and
//! everybody can list and watch the members.
//!
//! A [`Membership`] follows the client's session: when the session expires, it joins again on
//! the client's next session, so a member that lost contact for a while comes back by itself.
//! Failures that may pass (a lost connection, a timeout, a session that ended again) are
//! retried with a bounded exponential back-off and logged as warnings. A failure that retrying
//! cannot fix (refused credentials, a parent that cannot hold the node, the id taken by
//! another live member) ends the membership visibly: [`Membership::state`] becomes
//! [`MembershipState::Failed`] with the error, [`Membership::states`] yields it and ends, and
//! [`Membership::failed`] resolves with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::watch;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, ChildrenEvent, CreateMode, Session, SessionId};
use crate::path::Path;

/// A group, identified by its path. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Group {
    client: Client,
    path: Path,
}

/// A member as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id (its node name).
    pub id: String,
    /// The data it joined with.
    pub data: Vec<u8>,
}

impl Group {
    /// The group stored at `path`.
    pub fn new(client: &Client, path: Path) -> Group {
        Group {
            client: client.clone(),
            path,
        }
    }

    /// The group's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins as member `id` (one path segment) with `data`. Fails with
    /// [`Error::AlreadyExists`] if a live member already has that id.
    pub async fn join(&self, id: &str, data: &[u8]) -> Result<Membership> {
        let node = self.path.join(id)?;
        crate::adapter::check_value(self.client.capabilities(), data)?;
        create_parents(&**self.client.backend(), &self.path).await?;
        let mut session = self.client.session().await?;
        if let Err(e) = session.create(&node, data, CreateMode::Exact).await {
            // A session that had already ended when we took it created nothing: join once more
            // on a fresh one.
            if !(e.is_session_gone() && session.state().is_final()) {
                return Err(e);
            }
            session = self.client.session().await?;
            session.create(&node, data, CreateMode::Exact).await?;
        }
        let rejoins = Arc::new(AtomicU64::new(0));
        let owner = Arc::new(Mutex::new(session.id().clone()));
        let (state_tx, state) = watch::channel(MembershipState::Joined);
        let task = tokio::spawn(follow(
            self.client.clone(),
            session,
            node.clone(),
            data.to_vec(),
            rejoins.clone(),
            owner.clone(),
            state_tx,
        ));
        Ok(Membership {
            client: self.client.clone(),
            node,
            task,
            rejoins,
            owner,
            state,
            left: false,
        })
    }

    /// The members now, sorted by id.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let ids = match self.client.children(&self.path).await {
            Ok(ids) => ids,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        read_members(&self.client, &self.path, ids).await
    }

    /// The member list after each change, starting with the current one.
    pub async fn watch(&self) -> Result<impl Stream<Item = Result<Vec<Member>>> + Send> {
        create_parents(&**self.client.backend(), &self.path).await?;
        let (ids, events) = self.client.watch_children(&self.path).await?;
        let client = self.client.clone();
        let path = self.path.clone();
        let first = read_members(&client, &path, ids).await;
        let rest = futures::stream::unfold(
            (client, path, events),
            |(client, path, mut events)| async move {
                let ids = match events.next().await? {
                    Ok(ChildrenEvent::Changed(ids)) | Ok(ChildrenEvent::Resync(ids)) => ids,
                    Ok(ChildrenEvent::ParentDeleted) => Vec::new(),
                    Err(e) => return Some((Err(e), (client, path, events))),
                };
                let members = read_members(&client, &path, ids).await;
                Some((members, (client, path, events)))
            },
        );
        Ok(futures::stream::once(async move { first }).chain(rest))
    }
}

/// Reads the data of each listed member, up to 32 reads in flight (one round trip each on the
/// real backends); members that left meanwhile are skipped. The order of `ids` is kept.
async fn read_members(client: &Client, path: &Path, ids: Vec<String>) -> Result<Vec<Member>> {
    let reads = ids.into_iter().map(|id| async move {
        match client.get(&path.join(&id)?).await {
            Ok(n) => Ok(Some(Member { id, data: n.value })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    });
    let found: Vec<Option<Member>> = futures::stream::iter(reads)
        .buffered(32)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// The first pause between two re-join attempts; it doubles after each failure.
const REJOIN_FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two re-join attempts.
const REJOIN_MAX_PAUSE: Duration = Duration::from_secs(2);

/// The state of a [`Membership`].
///
/// A membership starts [`Joined`](MembershipState::Joined). When its session ends it is
/// [`Rejoining`](MembershipState::Rejoining) until it is in the group again on a new session
/// (back to `Joined`), retrying what may succeed later (a lost connection, a timeout, a session
/// that ended again) for as long as it takes. A failure that retrying cannot fix (the server
/// refused the credentials, the group's parent cannot hold the node, another live member took
/// the id) makes it [`Failed`](MembershipState::Failed): final, the member is not in the group
/// and the membership stops following. Join again once the cause is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipState {
    /// The member joined on its current session, and that session has not ended. (The
    /// membership follows the session, not the node: a node deleted by somebody else is not
    /// noticed.)
    Joined,
    /// The session ended; joining again on a new one.
    Rejoining,
    /// Final: a re-join failed with this error, and the membership stopped following.
    Failed(Error),
}

impl MembershipState {
    /// Whether the state is final ([`MembershipState::Failed`]).
    pub fn is_final(&self) -> bool {
        matches!(self, MembershipState::Failed(_))
    }
}

/// Why a re-join attempt failed.
enum Failure {
    /// Trying again later may succeed.
    Retry(Error),
    /// Retrying cannot fix it.
    Fatal(Error),
}

impl Failure {
    /// Classifies an error of a re-join step. A session that is gone is retried: the next
    /// attempt takes a new one.
    fn of(e: Error) -> Failure {
        if e.is_retryable() || e.is_session_gone() {
            Failure::Retry(e)
        } else {
            Failure::Fatal(e)
        }
    }
}

/// Re-joins on each new session after the current one ends, until the membership is dropped
/// or a re-join fails for good (reported as [`MembershipState::Failed`]).
async fn follow(
    client: Client,
    mut session: Arc<dyn Session>,
    node: Path,
    data: Vec<u8>,
    rejoins: Arc<AtomicU64>,
    owner: Arc<Mutex<SessionId>>,
    state: watch::Sender<MembershipState>,
) {
    loop {
        wait_for_end(&*session).await;
        state.send_replace(MembershipState::Rejoining);
        let previous = session.id().clone();
        match rejoin(&client, &node, &data, &previous).await {
            Ok(s) => {
                *owner.lock().unwrap_or_else(|p| p.into_inner()) = s.id().clone();
                session = s;
                rejoins.fetch_add(1, Ordering::Relaxed);
                state.send_replace(MembershipState::Joined);
            }
            Err(e) => {
                tracing::error!(%node, error = %e, "re-join failed for good: not in the group");
                state.send_replace(MembershipState::Failed(e));
                return;
            }
        }
    }
}

/// Waits until `session` reaches a final state (or its state stream ends).
async fn wait_for_end(session: &dyn Session) {
    let mut states = session.states();
    while let Some(s) = states.next().await {
        if s.is_final() {
            break;
        }
    }
}

/// Joins again on a fresh session, retrying what may succeed later with a bounded exponential
/// back-off (each retry logged as a warning). `Err`: a failure that retrying cannot fix.
async fn rejoin(
    client: &Client,
    node: &Path,
    data: &[u8],
    previous: &SessionId,
) -> Result<Arc<dyn Session>> {
    let mut pause = REJOIN_FIRST_PAUSE;
    loop {
        match rejoin_once(client, node, data, previous).await {
            Ok(s) => return Ok(s),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::warn!(%node, error = %e, retry_in = ?pause, "re-join failed, retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REJOIN_MAX_PAUSE);
            }
        }
    }
}

/// One re-join attempt: a session (the current one, or a new one if it ended), the parents,
/// the node.
async fn rejoin_once(
    client: &Client,
    node: &Path,
    data: &[u8],
    previous: &SessionId,
) -> std::result::Result<Arc<dyn Session>, Failure> {
    let s = client.session().await.map_err(Failure::of)?;
    if let Some(parent) = node.parent() {
        create_parents(&**client.backend(), &parent)
            .await
            .map_err(Failure::of)?;
    }
    match s.create(node, data, CreateMode::Exact).await {
        Ok(_) => Ok(s),
        Err(e @ Error::AlreadyExists { .. }) => {
            // Whose node is it? The ended session's (not cleaned up yet) or one gone meanwhile:
            // try again. Ours (an answer lost on the way): joined. Anybody else's: the id is
            // taken, and waiting for it would be waiting in silence.
            let owner = client
                .exists(node)
                .await
                .map_err(Failure::of)?
                .map(|st| st.ephemeral_owner);
            match owner {
                None => Err(Failure::Retry(e)),
                Some(Some(id)) if &id == s.id() => Ok(s),
                Some(Some(id)) if &id == previous => Err(Failure::Retry(e)),
                Some(_) => Err(Failure::Fatal(e)),
            }
        }
        Err(e) => Err(Failure::of(e)),
    }
}

/// A live membership. Dropping it leaves the group (in the background).
pub struct Membership {
    client: Client,
    node: Path,
    task: tokio::task::JoinHandle<()>,
    rejoins: Arc<AtomicU64>,
    /// The session that owns the node now: we only ever delete our own node, never one
    /// another member made under the same id after our session ended.
    owner: Arc<Mutex<SessionId>>,
    state: watch::Receiver<MembershipState>,
    left: bool,
}

/// Deletes `node` if it is still the one `owner` created.
async fn delete_own(client: &Client, node: &Path, owner: &SessionId) -> Result<()> {
    let Some(stat) = client.exists(node).await? else {
        return Ok(());
    };
    if stat.ephemeral_owner.as_ref() != Some(owner) {
        return Ok(());
    }
    match client.delete(node, Some(stat.version)).await {
        Ok(()) | Err(Error::NotFound { .. }) | Err(Error::VersionMismatch { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Membership {
    /// The member's node.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// How many times the membership joined again on a new session.
    pub fn rejoins(&self) -> u64 {
        self.rejoins.load(Ordering::Relaxed)
    }

    /// The state now (see [`MembershipState`]).
    pub fn state(&self) -> MembershipState {
        self.state.borrow().clone()
    }

    /// The state after each change, starting with the current one; ends after
    /// [`MembershipState::Failed`]. Quick successive changes may be merged, but the last
    /// item is always the current state.
    pub fn states(&self) -> impl Stream<Item = MembershipState> + Send {
        futures::stream::unfold(
            (self.state.clone(), false, true),
            |(mut rx, done, first)| async move {
                if done || (!first && rx.changed().await.is_err()) {
                    return None;
                }
                let s = rx.borrow_and_update().clone();
                let done = s.is_final();
                Some((s, (rx, done, false)))
            },
        )
    }

    /// Resolves with the error when the membership fails for good
    /// ([`MembershipState::Failed`]): the member is no longer in the group and will not join
    /// again by itself. Pending for as long as the membership follows its sessions.
    pub async fn failed(&self) -> Error {
        let mut rx = self.state.clone();
        let failed = match rx.wait_for(MembershipState::is_final).await {
            Ok(s) => match &*s {
                MembershipState::Failed(e) => Some(e.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        match failed {
            Some(e) => e,
            // The follower ended without a verdict (it panicked): the membership is not
            // followed any more, which is a failure too.
            None => Error::backend(
                self.client.capabilities().backend,
                format!(
                    "the membership of {} stopped following its session",
                    self.node
                ),
                false,
            ),
        }
    }

    /// Leaves the group now.
    pub async fn leave(mut self) -> Result<()> {
        self.left = true;
        self.task.abort();
        let owner = self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        delete_own(&self.client, &self.node, &owner).await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
        if self.left {
            return;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let node = self.node.clone();
            let owner = self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone();
            h.spawn(async move {
                if let Err(e) = delete_own(&client, &node, &owner).await {
                    tracing::warn!(%node, error = %e, "could not leave the group");
                }
            });
        }
    }
}
