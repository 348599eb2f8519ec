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
//!
//! A membership never outlives its client's close: after [`Client::close`] or
//! [`Client::shutdown`] it is [`MembershipState::Closed`] and does not join again, even if
//! its session was already being replaced when the client closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::watch;

use crate::adapter::hold::spawn_detached;
use crate::adapter::Backoff;
use crate::client::{Client, Owned};
use crate::error::{Error, Result};
use crate::kernel::{
    create_parents, ChildrenEvent, CreateMode, KeyEvent, KeyWatch, Session, SessionId,
    SessionState, Stat,
};
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

    /// The client the group works through.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Joins as member `id` (one path segment) with `data`. Fails with
    /// [`Error::AlreadyExists`] if a live member already has that id.
    pub async fn join(&self, id: &str, data: &[u8]) -> Result<Membership> {
        self.join_following(id, data, Follow::Session).await
    }

    /// Joins as member `id`, following the session and, with [`Follow::Node`], the node.
    pub(crate) async fn join_following(
        &self,
        id: &str,
        data: &[u8],
        follow: Follow,
    ) -> Result<Membership> {
        let node = self.path.join(id)?;
        crate::adapter::check_value(self.client.capabilities(), data)?;
        create_parents(&**self.client.backend(), &self.path).await?;
        let (session, epoch) = self.create_node(&node, data).await?;
        Ok(Membership::start(
            &self.client,
            node,
            data.to_vec(),
            session,
            epoch,
            follow,
        ))
    }

    /// Takes over member `node`, an entry of the client's current session with `data` that no
    /// membership of this client follows (a join whose answer was lost after its create
    /// landed): a membership following it, or `None` if the entry is not that (any more).
    pub(crate) async fn adopt(
        &self,
        node: &Path,
        data: &[u8],
        follow: Follow,
    ) -> Result<Option<Membership>> {
        let (session, epoch) = self.client.session_in(None).await?;
        let found = match self.client.get(node).await {
            Ok(n) => n,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !is_ours(Some(&found.stat), &*session) || found.value != data {
            return Ok(None);
        }
        Ok(Some(Membership::start(
            &self.client,
            node.clone(),
            data.to_vec(),
            session,
            epoch,
            follow,
        )))
    }

    /// Creates `node` on the client's session; the session and its close generation.
    async fn create_node(&self, node: &Path, data: &[u8]) -> Result<(Arc<dyn Session>, u64)> {
        let (mut session, epoch) = self.client.session_in(None).await?;
        if let Err(e) = session.create(node, data, CreateMode::Exact).await {
            // A session that had already ended when we took it created nothing: join once more
            // on a fresh one (unless the client was closed meanwhile).
            if !(e.is_session_gone() && session.state().is_final()) {
                return Err(e);
            }
            session = self.client.session_in(Some(epoch)).await?.0;
            session.create(node, data, CreateMode::Exact).await?;
        }
        Ok((session, epoch))
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
/// The longest pause between two re-join attempts, and at most a quarter of the session's
/// TTL: a member comes back within a fraction of a TTL once its store serves again, however
/// long the outage was (RELIABILITY.md (n)).
const REJOIN_MAX_PAUSE: Duration = Duration::from_secs(2);

/// What a membership follows besides its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Only the session (a group member): a node deleted by somebody else is not noticed.
    Session,
    /// The node too (a registration): a node deleted or replaced by another session while
    /// ours lives ends the membership ([`MembershipState::Removed`]); it is not taken back.
    Node,
}

/// The state of a [`Membership`].
///
/// A membership starts [`Joined`](MembershipState::Joined). When its session ends it is
/// [`Rejoining`](MembershipState::Rejoining) until it is in the group again on a new session
/// (back to `Joined`), retrying what may succeed later (a lost connection, a timeout, a session
/// that ended again) for as long as it takes. A failure that retrying cannot fix (the server
/// refused the credentials, the group's parent cannot hold the node, another live member took
/// the id) makes it [`Failed`](MembershipState::Failed): final, the member is not in the group
/// and the membership stops following. Join again once the cause is fixed. The other final
/// states: [`Closed`](MembershipState::Closed) (ended by its owner or its client's close) and,
/// for registrations, [`Removed`](MembershipState::Removed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipState {
    /// The member joined on its current session, and that session has not ended. (A group
    /// membership follows the session, not the node: a node deleted by somebody else is not
    /// noticed. A registration follows its node too.)
    Joined,
    /// The session ended; joining again on a new one.
    Rejoining,
    /// Final: a re-join failed with this error, and the membership stopped following.
    Failed(Error),
    /// Final: ended by its owner — it left or was dropped, or its client was closed
    /// ([`Client::close`]) or shut down ([`Client::shutdown`]). It never joins again.
    Closed,
    /// Final (registrations only): while our session lived, our node was deleted by somebody
    /// else, or another session registered the same id (`by`: that session, when known). The
    /// newer registration wins: this one does not take the id back.
    Removed {
        /// The session holding the id now, if any.
        by: Option<SessionId>,
    },
}

impl MembershipState {
    /// Whether the state is final ([`Failed`](MembershipState::Failed),
    /// [`Closed`](MembershipState::Closed) or [`Removed`](MembershipState::Removed)).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MembershipState::Failed(_) | MembershipState::Closed | MembershipState::Removed { .. }
        )
    }
}

/// The error for `node` held by `session` (`None`: a persistent node): [`Error::AlreadyExists`],
/// whose `path` names the holder after the key (`<key> (held by session <id>)`).
pub fn held_by(node: &Path, session: Option<&SessionId>) -> Error {
    let holder = match session {
        Some(id) => format!("session {id}"),
        None => "a persistent node".to_owned(),
    };
    Error::AlreadyExists {
        path: format!("{node} (held by {holder})"),
    }
}

/// Why following ends (a group membership or a registration, generic or native).
pub(crate) enum Stop {
    /// The client was closed.
    Closed,
    /// Another session (`Some`) or tool (`None`) holds the id (registrations).
    Displaced(Option<SessionId>),
    /// A failure that retrying cannot fix.
    Failed(Error),
}

/// Why a re-join attempt failed.
pub(crate) enum Failure {
    /// Trying again later may succeed.
    Retry(Error),
    /// Following ends.
    Stop(Stop),
}

impl Failure {
    /// Classifies an error of a re-join step. A session that is gone is retried: the next
    /// attempt takes a new one (unless the client was closed: [`Error::Closed`]).
    pub(crate) fn of(e: Error) -> Failure {
        match e {
            Error::Closed => Failure::Stop(Stop::Closed),
            e if e.is_retryable() || e.is_session_gone() => Failure::Retry(e),
            e => Failure::Stop(Stop::Failed(e)),
        }
    }
}

/// How following one session (and node) ended.
enum Ended {
    /// The session ended: join again.
    Session,
    /// Our node was deleted or replaced while our session lived.
    Displaced(Option<SessionId>),
}

/// The state of a membership (a group member, or a registration in any layout) and its
/// follower task: what the follower and the handle share.
pub(crate) struct Following {
    /// The member's node (a native registration's entry name).
    pub(crate) node: Path,
    rejoins: AtomicU64,
    state: watch::Sender<MembershipState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Leaves (deletions of the node) running now.
    leaving: AtomicU64,
}

impl Following {
    /// Joined at `node`; the receiver observes the state.
    pub(crate) fn new(node: Path) -> (Following, watch::Receiver<MembershipState>) {
        let (tx, rx) = watch::channel(MembershipState::Joined);
        let following = Following {
            node,
            rejoins: AtomicU64::new(0),
            state: tx,
            task: Mutex::new(None),
            leaving: AtomicU64::new(0),
        };
        (following, rx)
    }

    /// Whether the node is still this membership's: it follows it, or is removing it now (a
    /// register of the same id on the same client must not take it over meanwhile).
    pub(crate) fn holds_node(&self) -> bool {
        !self.state.borrow().is_final() || self.leaving.load(Ordering::SeqCst) > 0
    }

    /// Marks a leave as running, until [`Following::left`].
    pub(crate) fn leaving(&self) {
        self.leaving.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks a leave marked by [`Following::leaving`] as done.
    pub(crate) fn left(&self) {
        self.leaving.fetch_sub(1, Ordering::SeqCst);
    }

    /// Moves to `s` unless the state is already final.
    pub(crate) fn set(&self, s: MembershipState) {
        self.state.send_if_modified(|cur| {
            if cur.is_final() {
                return false;
            }
            *cur = s;
            true
        });
    }

    /// Keeps the follower task, to stop it with [`Following::stop`].
    pub(crate) fn follow_with(&self, task: tokio::task::JoinHandle<()>) {
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops the follower. A follower running on another thread at this moment stops at its
    /// next await; a re-join it starts meanwhile fails on the closed client's generation.
    pub(crate) fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    /// Ends the membership by its owner: stops the follower, Closed.
    pub(crate) fn close(&self) {
        self.stop();
        self.set(MembershipState::Closed);
    }

    /// Counts a re-join and goes back to Joined.
    pub(crate) fn rejoined(&self) {
        self.rejoins.fetch_add(1, Ordering::Relaxed);
        self.set(MembershipState::Joined);
    }

    /// How many times the membership joined again.
    pub(crate) fn rejoins(&self) -> u64 {
        self.rejoins.load(Ordering::Relaxed)
    }

    /// Ends following for `stop` (visibly: logged, and the final state), after `what` (the
    /// step that stopped, such as "re-join").
    pub(crate) fn end(&self, stop: Stop, what: &str) {
        let node = &self.node;
        self.set(match stop {
            Stop::Closed => MembershipState::Closed,
            Stop::Displaced(by) => {
                tracing::warn!(%node, ?by, "{what}: the id is held by another session or tool; not taking it back");
                MembershipState::Removed { by }
            }
            Stop::Failed(e) => {
                tracing::error!(%node, error = %e, "{what} failed for good");
                MembershipState::Failed(e)
            }
        });
    }

    /// Runs `attempt` until it succeeds or stops, pausing with an exponential back-off bounded
    /// by [`REJOIN_MAX_PAUSE`] and a quarter of `ttl` after each failure that may pass (logged
    /// as a warning naming `what`).
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        ttl: Duration,
        mut attempt: F,
    ) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let longest = (ttl / 4).clamp(REJOIN_FIRST_PAUSE, REJOIN_MAX_PAUSE);
        let mut backoff = Backoff::new(REJOIN_FIRST_PAUSE, longest);
        loop {
            match attempt().await {
                Ok(s) => return Ok(s),
                Err(Failure::Stop(stop)) => return Err(stop),
                Err(Failure::Retry(e)) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(node = %self.node, error = %e, retry_in = ?pause, "{what} failed, retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// The states of `rx` after each change, starting with the current one; ends after a final
/// state.
pub(crate) fn states_of(
    rx: &watch::Receiver<MembershipState>,
) -> impl Stream<Item = MembershipState> + Send {
    futures::stream::unfold(
        (rx.clone(), false, true),
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

/// The final state of `rx` once reached; `unfollowed()` if the follower ended without one
/// (it panicked).
pub(crate) async fn ended_of(
    rx: &watch::Receiver<MembershipState>,
    unfollowed: impl FnOnce() -> Error,
) -> MembershipState {
    let mut rx = rx.clone();
    let end = match rx.wait_for(MembershipState::is_final).await {
        Ok(s) => Some(s.clone()),
        Err(_) => None,
    };
    end.unwrap_or_else(|| MembershipState::Failed(unfollowed()))
}

/// The error of the final state `end` of the membership at `node` (see [`Membership::failed`]).
pub(crate) fn error_of(end: MembershipState, node: &Path) -> Error {
    match end {
        MembershipState::Failed(e) => e,
        MembershipState::Removed { by: Some(by) } => held_by(node, Some(&by)),
        MembershipState::Removed { by: None } => Error::NotFound {
            path: node.to_string(),
        },
        _ => Error::Closed,
    }
}

/// What a membership's follower and its handle share (the client keeps a weak reference).
struct Shared {
    client: Client,
    following: Following,
    /// The session that owns the node now: we only ever delete our own node, never one
    /// another member made under the same id after our session ended.
    owner: Mutex<SessionId>,
}

impl Shared {
    fn owner(&self) -> SessionId {
        self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Owned for Shared {
    fn node(&self) -> Option<&Path> {
        self.following.holds_node().then_some(&self.following.node)
    }

    fn end(&self, remove: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.following.close();
            if remove {
                delete_own(&self.client, &self.following.node, &self.owner()).await
            } else {
                Ok(())
            }
        })
    }
}

/// Re-joins on each new session after the current one ends, until the membership is dropped
/// or ends (a final [`MembershipState`]).
async fn follow(
    shared: Arc<Shared>,
    mut session: Arc<dyn Session>,
    epoch: u64,
    data: Vec<u8>,
    mode: Follow,
) {
    loop {
        let ended = match mode {
            Follow::Session => {
                wait_for_end(&*session).await;
                Ended::Session
            }
            Follow::Node => watch_node(&shared, &*session).await,
        };
        let following = &shared.following;
        if let Ended::Displaced(by) = ended {
            return following.end(Stop::Displaced(by), "registration removed or replaced");
        }
        following.set(MembershipState::Rejoining);
        // Every session this re-join goes through: a create of one of them may land after
        // its answer was lost and the session ended, and its node is then ours, not another
        // process's (it goes with that session).
        let tried = Mutex::new(vec![session.id().clone()]);
        let again = following.retry("re-join", session.ttl(), || {
            rejoin_once(&shared, &data, &tried, epoch, mode)
        });
        match again.await {
            Ok(s) => {
                *shared.owner.lock().unwrap_or_else(|p| p.into_inner()) = s.id().clone();
                session = s;
                following.rejoined();
            }
            Err(stop) => return following.end(stop, "re-join"),
        }
    }
}

/// Waits until `session` reaches a final state (or its state stream ends).
pub(crate) async fn wait_for_end(session: &dyn Session) {
    let mut states = session.states();
    while let Some(s) = states.next().await {
        if s.is_final() {
            break;
        }
    }
}

/// Whether `stat` is a node of `session`.
fn is_ours(stat: Option<&Stat>, session: &dyn Session) -> bool {
    stat.is_some_and(|st| st.ephemeral_owner.as_ref() == Some(session.id()))
}

/// Follows the session and the node (registrations) until the session ends or the node is
/// deleted or replaced while the session lives. A watch that fails is set up again with a
/// back-off.
async fn watch_node(shared: &Shared, session: &dyn Session) -> Ended {
    let mut backoff = Backoff::reconnect();
    loop {
        let watched = tokio::select! {
            _ = wait_for_end(session) => return Ended::Session,
            w = shared.client.watch(&shared.following.node) => w,
        };
        let ended = match watched {
            Ok((current, events)) => {
                backoff.reset();
                if is_ours(current.as_ref().map(|n| &n.stat), session) {
                    follow_events(shared, session, events).await
                } else {
                    settle(shared, session).await
                }
            }
            Err(e) => {
                tracing::debug!(node = %shared.following.node, error = %e, "watching a registration again");
                tokio::select! {
                    _ = wait_for_end(session) => return Ended::Session,
                    _ = backoff.wait() => None,
                }
            }
        };
        if let Some(ended) = ended {
            return ended;
        }
    }
}

/// Follows the events of our node. `None`: the watch ended, set it up again.
async fn follow_events(
    shared: &Shared,
    session: &dyn Session,
    mut events: KeyWatch,
) -> Option<Ended> {
    loop {
        let ev = tokio::select! {
            _ = wait_for_end(session) => return Some(Ended::Session),
            ev = events.next() => ev,
        };
        let stat = match ev {
            Some(Ok(KeyEvent::Created(n) | KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)))) => {
                Some(n.stat)
            }
            Some(Ok(KeyEvent::Deleted | KeyEvent::Resync(None))) => None,
            Some(Err(_)) | None => return None,
        };
        if !is_ours(stat.as_ref(), session) {
            return settle(shared, session).await;
        }
    }
}

/// Our node is missing or not ours while our session looks alive. It may have gone with the
/// session before the client learned of the session's end: the session gets up to its TTL to
/// report that (then we join again), unless another session holds the id first (then it is
/// displaced). After the TTL with the node still missing, [`confirm_removed`] decides.
/// `None`: the node is ours after all (follow it again).
async fn settle(shared: &Shared, session: &dyn Session) -> Option<Ended> {
    let look = async {
        let mut backoff = Backoff::reconnect();
        loop {
            match shared.client.exists(&shared.following.node).await {
                Ok(Some(st)) if is_ours(Some(&st), session) => return None,
                Ok(Some(st)) => return Some(Ended::Displaced(st.ephemeral_owner)),
                Ok(None) | Err(_) => backoff.wait().await,
            }
        }
    };
    let decided = tokio::time::timeout(session.ttl(), async {
        tokio::select! {
            _ = wait_for_end(session) => Some(Ended::Session),
            r = look => r,
        }
    })
    .await;
    match decided {
        Ok(d) => d,
        Err(_) => confirm_removed(shared, session).await,
    }
}

/// Our node is still missing a TTL after we saw it go, and our session has not reported an
/// end. A client can learn of its session's end much later than its node went: a ZooKeeper
/// client only on reconnecting, after its server caught up with the leader (partition tests,
/// RELIABILITY.md (k)). So the node counts as removed by somebody else only once the session
/// is connected, a synced read still misses the node, and the session then stays alive for
/// its TTL plus a reconnect's round; otherwise the session ended and we join again.
async fn confirm_removed(shared: &Shared, session: &dyn Session) -> Option<Ended> {
    let node = &shared.following.node;
    let mut backoff = Backoff::reconnect();
    loop {
        let mut states = session.states();
        loop {
            match states.next().await {
                Some(SessionState::Connected) => break,
                Some(s) if s.is_final() => return Some(Ended::Session),
                Some(_) => {}
                None => return Some(Ended::Session),
            }
        }
        let read = async {
            shared.client.backend().sync(node).await?;
            shared.client.exists(node).await
        };
        match read.await {
            Ok(Some(st)) if is_ours(Some(&st), session) => return None,
            Ok(Some(st)) => return Some(Ended::Displaced(st.ephemeral_owner)),
            Ok(None) => break,
            Err(_) => backoff.wait().await,
        }
    }
    let grace = session.ttl() + crate::recipes::queue::REPORT_GRACE;
    match tokio::time::timeout(grace, wait_for_end(session)).await {
        Ok(()) => Some(Ended::Session),
        Err(_) => Some(Ended::Displaced(None)),
    }
}

/// One re-join attempt: a session (the current one, or a new one if it ended, unless the
/// client was closed), the parents, the node. `tried`: the sessions of this re-join so far
/// (the ended one first); this attempt's is added.
async fn rejoin_once(
    shared: &Shared,
    data: &[u8],
    tried: &Mutex<Vec<SessionId>>,
    epoch: u64,
    mode: Follow,
) -> std::result::Result<Arc<dyn Session>, Failure> {
    let client = &shared.client;
    let node = &shared.following.node;
    let (s, _) = client.session_in(Some(epoch)).await.map_err(Failure::of)?;
    let earlier = {
        let mut t = tried.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = t.clone();
        if !t.contains(s.id()) {
            t.push(s.id().clone());
        }
        earlier
    };
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
                Some(Some(id)) if earlier.contains(&id) => Err(Failure::Retry(e)),
                Some(Some(id)) if mode == Follow::Node => {
                    Err(Failure::Stop(Stop::Displaced(Some(id))))
                }
                Some(owner) => Err(Failure::Stop(Stop::Failed(held_by(node, owner.as_ref())))),
            }
        }
        Err(e) => Err(Failure::of(e)),
    }
}

/// A live membership. Dropping it leaves the group (in the background; see
/// [`Membership::leave`] for what is guaranteed when that cannot run).
pub struct Membership {
    shared: Arc<Shared>,
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
    crate::client::delete_at(&**client, node, stat.version).await
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.shared.following.node)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Membership {
    /// Starts following `session` (and, with [`Follow::Node`], the node); the client keeps a
    /// weak reference so that its close and shutdown end the membership.
    fn start(
        client: &Client,
        node: Path,
        data: Vec<u8>,
        session: Arc<dyn Session>,
        epoch: u64,
        mode: Follow,
    ) -> Membership {
        let (following, state) = Following::new(node);
        let shared = Arc::new(Shared {
            client: client.clone(),
            following,
            owner: Mutex::new(session.id().clone()),
        });
        let task = tokio::spawn(follow(shared.clone(), session, epoch, data, mode));
        shared.following.follow_with(task);
        let weak: std::sync::Weak<dyn Owned> = Arc::downgrade(&shared) as _;
        client.track_member(weak);
        Membership {
            shared,
            state,
            left: false,
        }
    }

    /// The member's node.
    pub fn node(&self) -> &Path {
        &self.shared.following.node
    }

    /// The session that owns the member's node now.
    pub fn owner(&self) -> SessionId {
        self.shared.owner()
    }

    /// How many times the membership joined again on a new session.
    pub fn rejoins(&self) -> u64 {
        self.shared.following.rejoins()
    }

    /// The state now (see [`MembershipState`]).
    pub fn state(&self) -> MembershipState {
        self.state.borrow().clone()
    }

    /// The state after each change, starting with the current one; ends after a final state.
    /// Quick successive changes may be merged, but the last item is always the current state.
    pub fn states(&self) -> impl Stream<Item = MembershipState> + Send {
        states_of(&self.state)
    }

    /// Resolves with the final state once the membership has ended (see
    /// [`MembershipState::is_final`]). Pending for as long as it follows its sessions.
    pub async fn ended(&self) -> MembershipState {
        // The follower ended without a verdict (it panicked): not followed any more.
        ended_of(&self.state, || {
            Error::backend(
                self.shared.client.capabilities().backend,
                format!(
                    "the membership of {} stopped following its session",
                    self.shared.following.node
                ),
                false,
            )
        })
        .await
    }

    /// Resolves with an error once the member is no longer in the group and will not join
    /// again by itself (any final state): the error of [`MembershipState::Failed`];
    /// [`Error::Closed`] after [`MembershipState::Closed`]; after
    /// [`MembershipState::Removed`], [`Error::AlreadyExists`] naming the session that holds
    /// the id now, or [`Error::NotFound`] if nobody does. Pending for as long as the membership
    /// follows its sessions.
    pub async fn failed(&self) -> Error {
        error_of(self.ended().await, &self.shared.following.node)
    }

    /// Leaves the group now.
    ///
    /// Dropping a membership leaves in the background instead, if a tokio runtime is running.
    /// Whether or not that task gets to run (a runtime shutting down drops it), the node is
    /// ephemeral: it goes with its session, at once when the session is closed (as the
    /// client's last handle goes, on mem and ZooKeeper) and at the latest one session TTL after
    /// the process stopped keeping it alive.
    pub async fn leave(mut self) -> Result<()> {
        self.left = true;
        let following = &self.shared.following;
        following.leaving();
        following.close();
        let r = delete_own(&self.shared.client, &following.node, &self.shared.owner()).await;
        following.left();
        r
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.left {
            self.shared.following.close();
            return;
        }
        self.shared.following.leaving();
        self.shared.following.close();
        let shared = self.shared.clone();
        spawn_detached(async move {
            let owner = shared.owner();
            let node = &shared.following.node;
            if let Err(e) = delete_own(&shared.client, node, &owner).await {
                tracing::warn!(%node, error = %e, "could not leave the group");
            }
            shared.following.left();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::MembershipState;
    use crate::kernel::Backend;
    use crate::mem::{MemBackend, MemSession};
    use crate::registry::Instance;
    use crate::Client;

    /// The store removed our node with our session, but the client learns of the session's
    /// end only later than one TTL (a ZooKeeper client reconnecting to a member that caught up
    /// late: the 3-member partition test's 10-minute flap, RELIABILITY.md (k)). The
    /// registration must come back on a new session, not end as removed by somebody.
    #[tokio::test(start_paused = true)]
    async fn a_registration_whose_session_reports_its_end_late_comes_back() {
        let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let client = Client::new(mem.clone());
        let r = client
            .registry()
            .register(&Instance::new("svc", "i1", "127.0.0.1", 1))
            .await
            .unwrap();
        let first = r.owner();
        let session = client.current_session().await.unwrap();
        let ttl = session.ttl();
        mem.delete(r.node(), None).await.unwrap();
        // The session learns of its end one and a half TTLs after its node went.
        tokio::time::sleep(ttl + ttl / 2).await;
        session
            .as_any()
            .downcast_ref::<MemSession>()
            .unwrap()
            .expire_now();
        let mut back = false;
        for _ in 0..600 {
            if r.state() == MembershipState::Joined && r.owner() != first {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "not back: {:?}", r.state());
        let st = mem.exists(r.node()).await.unwrap();
        assert_eq!(st.and_then(|s| s.ephemeral_owner), Some(r.owner()));
        assert_eq!(r.reregistrations(), 1);
    }

    /// A register answered by an error after its create landed (a timeout while a server was
    /// cut off: the Consul 3-member partition test, RELIABILITY.md (n)) leaves an entry of the
    /// client's own session that nothing follows. Retrying must take it over (with other data:
    /// replace it), not fail with `AlreadyExists` until that session ends; a second register
    /// while a registration lives still fails.
    #[tokio::test]
    async fn a_register_retried_after_a_lost_answer_takes_its_entry_over() {
        use crate::kernel::{create_parents, CreateMode};
        use crate::Error;
        let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let client = Client::new(mem.clone());
        let inst = Instance::new("svc", "i1", "127.0.0.1", 1);
        let other = Instance::new("svc", "i1", "127.0.0.1", 2);
        // Where and what the register writes: learnt from a registration, then removed.
        let first = client.registry().register(&inst).await.unwrap();
        let node = first.node().clone();
        first.deregister().await.unwrap();
        let (session, _) = client.session_in(None).await.unwrap();
        for (written, label) in [(&inst, "same data"), (&other, "other data")] {
            let data = serde_json::to_vec(written).unwrap();
            create_parents(&*mem, &node.parent().unwrap())
                .await
                .unwrap();
            session
                .create(&node, &data, CreateMode::Exact)
                .await
                .unwrap();
            let r = client.registry().register(&inst).await;
            let r = r.unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(r.owner(), *session.id(), "{label}");
            assert_eq!(r.state(), MembershipState::Joined, "{label}");
            let found = client.registry().discover("svc").await.unwrap();
            assert_eq!(found, vec![inst.clone()], "{label}");
            let again = client.registry().register(&inst).await;
            assert!(
                matches!(again, Err(Error::AlreadyExists { .. })),
                "{label}: a second register while one lives: {again:?}"
            );
            r.deregister().await.unwrap();
        }
    }
}
