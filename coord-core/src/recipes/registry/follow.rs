//! A registration in a native layout ([`NativeRegistry`]) and the task that keeps it in place,
//! with the guarantees of the generic layout's (group-based) registrations:
//!
//! - when the session ends (expiry, an agent restart that forgot it), it registers again on
//!   the client's next session ([`MembershipState::Rejoining`], then `Joined`);
//! - when its entry vanished while the session lives (an agent restart that forgot the
//!   service but not the session, a deregistration by an operator), it registers again on
//!   the same session; the entry is checked once per session TTL;
//! - when another session (or another tool) holds the id, it ends with
//!   [`MembershipState::Removed`] and does not take the id back;
//! - a failure that retrying cannot fix ends it with [`MembershipState::Failed`];
//! - the client's close or shutdown, [`NativeMembership::leave`] and drop deregister it
//!   ([`MembershipState::Closed`]): a native entry need not go with the session at once (a
//!   Consul service only turns critical), so coord removes it itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::watch;

use crate::adapter::hold::spawn_detached;
use crate::client::{Client, Owned, SHUTDOWN_STEP_TIMEOUT};
use crate::error::{Error, Result};
use crate::kernel::{Session, SessionId};
use crate::path::Path;
use crate::recipes::group::{
    ended_of, error_of, held_by, states_of, wait_for_end, Failure, Following, MembershipState, Stop,
};

use super::native::{Entry, Holder, NativeRegistry};
use super::{IfPresent, Instance};

/// The bounds of the pause between two reads of the entry (one session TTL within them).
const CHECK_EVERY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// What the handle and its task share (the client keeps a weak reference).
struct Shared {
    client: Client,
    native: Arc<dyn NativeRegistry>,
    root: Path,
    instance: Instance,
    following: Following,
    /// The session the entry is registered on now.
    session: Mutex<Arc<dyn Session>>,
}

impl Shared {
    fn session(&self) -> Arc<dyn Session> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Removes our entry (not another session's), bounded by [`SHUTDOWN_STEP_TIMEOUT`].
    async fn deregister(&self) -> Result<()> {
        let session = self.session();
        let removal = self
            .native
            .deregister(Entry::new(&self.root, &session, &self.instance));
        match tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, removal).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "deregistering {} did not finish within {SHUTDOWN_STEP_TIMEOUT:?}",
                self.following.node
            ))),
        }
    }
}

impl Owned for Shared {
    fn node(&self) -> Option<&Path> {
        self.following.holds_node().then_some(&self.following.node)
    }

    /// Deregisters whether or not `remove` asks for it (see the module docs).
    fn end(&self, _remove: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.following.close();
            self.deregister().await
        })
    }
}

/// How following one session ended.
enum Ended {
    /// The session ended, or the entry vanished: register again.
    Again,
    /// Another session or tool holds the id.
    Displaced(Option<SessionId>),
}

/// Registers `instance` on the client's session (once more on a fresh session if the one
/// taken had already ended), honouring `if_present` and never replacing an entry of our own
/// session. Returns the session and its close generation.
pub(super) async fn register(
    client: &Client,
    native: &Arc<dyn NativeRegistry>,
    root: &Path,
    node: &Path,
    instance: &Instance,
    if_present: IfPresent,
) -> Result<(Arc<dyn Session>, u64)> {
    let (mut session, epoch) = client.session_in(None).await?;
    let mut if_present = if_present;
    match native.holder(root, instance).await? {
        // Our own session's entry: a second register of the id while a registration of this
        // client has it, or else a register whose answer was lost after it landed (registered
        // over, as a retry expects).
        Holder::Session(id) if &id == session.id() => {
            if client.follows(node) {
                return Err(held_by(node, Some(&id)));
            }
            if_present = IfPresent::Replace;
        }
        Holder::Session(id) if if_present == IfPresent::Fail => {
            return Err(held_by(node, Some(&id)));
        }
        Holder::Foreign if if_present == IfPresent::Fail => {
            return Err(Error::AlreadyExists {
                path: format!("{node} (held by another tool)"),
            });
        }
        _ => {}
    }
    if let Err(e) = native
        .register(Entry::new(root, &session, instance), if_present)
        .await
    {
        if !(e.is_session_gone() && session.state().is_final()) {
            return Err(e);
        }
        session = client.session_in(Some(epoch)).await?.0;
        native
            .register(Entry::new(root, &session, instance), if_present)
            .await?;
    }
    Ok((session, epoch))
}

/// Keeps the entry registered until the registration ends (see the module docs).
async fn follow(shared: Arc<Shared>, mut session: Arc<dyn Session>, epoch: u64) {
    let following = &shared.following;
    loop {
        if let Ended::Displaced(by) = watch_entry(&shared, &session).await {
            return following.end(Stop::Displaced(by), "registration replaced");
        }
        following.set(MembershipState::Rejoining);
        let previous = session.id().clone();
        let again = following.retry("registering again", session.ttl(), || {
            register_once(&shared, &previous, epoch)
        });
        match again.await {
            Ok(s) => {
                *shared.session.lock().unwrap_or_else(|p| p.into_inner()) = s.clone();
                session = s;
                following.rejoined();
            }
            Err(stop) => return following.end(stop, "registering again"),
        }
    }
}

/// Follows the session, and reads the entry once per session TTL, until the session ends,
/// the entry vanished or somebody else holds it. A failed read is tried again at the next
/// turn.
async fn watch_entry(shared: &Shared, session: &Arc<dyn Session>) -> Ended {
    let every = session.ttl().clamp(CHECK_EVERY.0, CHECK_EVERY.1);
    loop {
        tokio::select! {
            _ = wait_for_end(&**session) => return Ended::Again,
            _ = tokio::time::sleep(every) => {}
        }
        match shared.native.holder(&shared.root, &shared.instance).await {
            Ok(Holder::Session(id)) if &id == session.id() => {}
            Ok(Holder::Nobody) => {
                tracing::info!(node = %shared.following.node, "registration vanished; registering again");
                return Ended::Again;
            }
            Ok(Holder::Session(id)) => return Ended::Displaced(Some(id)),
            Ok(Holder::Foreign) => return Ended::Displaced(None),
            Err(e) => {
                tracing::debug!(node = %shared.following.node, error = %e, "could not read a registration")
            }
        }
    }
}

/// One attempt to register again on the client's current session (a new one if `previous`
/// ended).
async fn register_once(
    shared: &Shared,
    previous: &SessionId,
    epoch: u64,
) -> std::result::Result<Arc<dyn Session>, Failure> {
    let (s, _) = shared
        .client
        .session_in(Some(epoch))
        .await
        .map_err(Failure::of)?;
    let holder = shared
        .native
        .holder(&shared.root, &shared.instance)
        .await
        .map_err(Failure::of)?;
    match holder {
        // Ours already (an answer lost on the way).
        Holder::Session(id) if &id == s.id() => return Ok(s),
        Holder::Session(id) if &id != previous => {
            return Err(Failure::Stop(Stop::Displaced(Some(id))))
        }
        Holder::Foreign => return Err(Failure::Stop(Stop::Displaced(None))),
        _ => {}
    }
    shared
        .native
        .register(
            Entry::new(&shared.root, &s, &shared.instance),
            IfPresent::Replace,
        )
        .await
        .map_err(Failure::of)?;
    Ok(s)
}

/// A live registration in a native layout. Dropping it deregisters in the background.
pub(super) struct NativeMembership {
    shared: Arc<Shared>,
    state: watch::Receiver<MembershipState>,
    left: bool,
}

impl std::fmt::Debug for NativeMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeMembership")
            .field("layout", &self.shared.native.layout().name)
            .field("node", &self.shared.following.node)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl NativeMembership {
    /// Starts following the registration made on `session` by [`register`].
    pub(super) fn start(
        client: &Client,
        native: Arc<dyn NativeRegistry>,
        root: Path,
        node: Path,
        instance: Instance,
        session: Arc<dyn Session>,
        epoch: u64,
    ) -> NativeMembership {
        let (following, state) = Following::new(node);
        let shared = Arc::new(Shared {
            client: client.clone(),
            native,
            root,
            instance,
            following,
            session: Mutex::new(session.clone()),
        });
        let task = tokio::spawn(follow(shared.clone(), session, epoch));
        shared.following.follow_with(task);
        let weak: std::sync::Weak<dyn Owned> = Arc::downgrade(&shared) as _;
        client.track_member(weak);
        NativeMembership {
            shared,
            state,
            left: false,
        }
    }

    pub(super) fn node(&self) -> &Path {
        &self.shared.following.node
    }

    pub(super) fn owner(&self) -> SessionId {
        self.shared.session().id().clone()
    }

    pub(super) fn rejoins(&self) -> u64 {
        self.shared.following.rejoins()
    }

    pub(super) fn state(&self) -> MembershipState {
        self.state.borrow().clone()
    }

    pub(super) fn states(&self) -> impl Stream<Item = MembershipState> + Send {
        states_of(&self.state)
    }

    pub(super) async fn ended(&self) -> MembershipState {
        let node = &self.shared.following.node;
        ended_of(&self.state, || {
            let backend = self.shared.client.capabilities().backend;
            let why = format!("the registration {node} stopped following");
            Error::backend(backend, why, false)
        })
        .await
    }

    pub(super) async fn failed(&self) -> Error {
        error_of(self.ended().await, &self.shared.following.node)
    }

    pub(super) async fn leave(mut self) -> Result<()> {
        self.left = true;
        self.shared.following.leaving();
        self.shared.following.close();
        let r = self.shared.deregister().await;
        self.shared.following.left();
        r
    }
}

impl Drop for NativeMembership {
    fn drop(&mut self) {
        if !self.left {
            self.shared.following.leaving();
        }
        self.shared.following.close();
        if !self.left {
            let shared = self.shared.clone();
            spawn_detached(async move {
                if let Err(e) = shared.deregister().await {
                    tracing::warn!(node = %shared.following.node, error = %e, "could not deregister");
                }
                shared.following.left();
            });
        }
    }
}
