//! [`ZkSession`]: a coord session is one ZooKeeper session: the backend's main one (the
//! first session a backend opens with its default TTL rides on the main connection) or one
//! of its own (one more connection).

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{RawSession, StateCell};
use coord_core::{
    Capabilities, CreateMode, Created, Error, Path, Result, SessionId, SessionState, SessionStates,
};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::client::{self, Capture};
use crate::context::{created, session_name, Context};
use crate::error::{self, Op, ZkResult};

/// A coord session backed by a ZooKeeper session. The first session a backend opens with its
/// default TTL is the backend's main ZooKeeper session (one connection per process in the
/// common case, as with Curator); its expiry is the main session's expiry, after which the
/// backend opens a new main session and its watches resync. Any further session (or one with
/// another TTL) has its own connection; the backend's main client syncs before a create
/// through it returns, so that reads through the backend see it (read-your-writes across the
/// two connections).
///
/// Closing or dropping the last handle closes the ZooKeeper session (its ephemerals go at
/// once); a session on the main connection first hands the backend over to a new main
/// session.
pub struct ZkSession {
    ctx: Arc<Context>,
    client: Mutex<Option<zk::Client>>,
    /// It is the backend's main ZooKeeper session (`client` is a clone of the main client).
    rides: AtomicBool,
    info: zk::SessionInfo,
    id: SessionId,
    ttl: Duration,
    state: Arc<StateCell>,
    /// Dropped with the session: ends the state followers (a crashed client's state watcher
    /// never ends by itself).
    stop: watch::Sender<()>,
    capture: Capture,
}

impl std::fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkSession")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

fn coord_state(s: zk::SessionState) -> SessionState {
    match s {
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
            SessionState::Connected
        }
        zk::SessionState::Disconnected => SessionState::Suspended,
        zk::SessionState::Closed => SessionState::Closed,
        _ => SessionState::Expired,
    }
}

/// Waits until the client behind `sw` has ended (closed or expired).
async fn terminated(mut sw: zk::StateWatcher) {
    let mut st = sw.peek_state();
    while !st.is_terminated() {
        st = sw.changed().await;
    }
}

impl ZkSession {
    /// Claims the backend's main ZooKeeper session if nobody rides on it and `ttl` is its TTL;
    /// else opens a ZooKeeper session of its own, asking for `ttl` (the server may clamp it).
    pub(crate) async fn open(ctx: Arc<Context>, ttl: Duration) -> Result<ZkSession> {
        if let Some(main) = ctx.claim_main(ttl) {
            return Ok(ZkSession::new(ctx, main, true, Capture::default()));
        }
        let capture = Capture::default();
        let client = client::connect(&ctx.cfg, ttl, false, Some(&capture)).await?;
        Ok(ZkSession::new(ctx, client, false, capture))
    }

    fn new(ctx: Arc<Context>, client: zk::Client, rides: bool, capture: Capture) -> ZkSession {
        let sw = client.state_watcher();
        let session = ZkSession {
            info: client.session().clone(),
            id: SessionId(session_name(client.session_id().0)),
            ttl: client.session_timeout(),
            client: Mutex::new(Some(client)),
            rides: AtomicBool::new(rides),
            state: Arc::new(StateCell::new(SessionState::Connected)),
            stop: watch::channel(()).0,
            ctx,
            capture,
        };
        session.follow(sw);
        session
    }

    /// Whether this is the backend's main ZooKeeper session.
    fn rides(&self) -> bool {
        self.rides.load(Ordering::Relaxed)
    }

    fn slot(&self) -> MutexGuard<'_, Option<zk::Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the server end this session, for tests: the classic trick of attaching a second
    /// client to the session (same id and password) and closing it.
    ///
    /// Our own client is cut off first (its task aborted): otherwise it reconnects within
    /// milliseconds, the server hands the session back to it and closes the second client's
    /// connection before that one is established, and the two fight until one gives up.
    /// Then the owner reattaches with the session's credentials, as its client would after a
    /// disconnect, and learns the server's verdict (Expired).
    pub async fn expire_on_server(&self) {
        self.crash();
        self.state.advance(SessionState::Suspended);
        self.close_from_elsewhere().await;
        let capture = Capture::default();
        match tokio::time::timeout(self.ctx.cfg.timeout, capture.scope(self.attach())).await {
            Ok(Ok(client)) => {
                // Still alive (the close did not take): carry on with the new connection.
                tracing::warn!("zk: session {} survived the expiry attempt", self.id);
                if let Ok(c) = client::chroot(&self.ctx.cfg, client) {
                    self.rides.store(false, Ordering::Relaxed);
                    self.follow(c.state_watcher());
                    *self.slot() = Some(c);
                    self.capture.adopt(capture);
                }
            }
            _ => {
                self.state.advance(SessionState::Expired);
            }
        }
    }

    /// A new connection to this session (its id and password).
    fn attach(&self) -> impl Future<Output = ZkResult<zk::Client>> + '_ {
        zk::Client::connector()
            .with_session(self.info.clone())
            .with_session_timeout(self.ttl)
            .connect(&self.ctx.cfg.connect_string)
    }

    /// Attaches a second client to this session and closes it: the server ends the session.
    async fn close_from_elsewhere(&self) {
        let after = self.ctx.cfg.timeout;
        match tokio::time::timeout(after, self.attach()).await {
            Ok(Ok(other)) => {
                let sw = other.state_watcher();
                drop(other);
                let _ = tokio::time::timeout(after, terminated(sw)).await;
            }
            Ok(Err(e)) => tracing::warn!("zk: attaching to session {} failed: {e}", self.id),
            Err(_) => tracing::warn!("zk: attaching to session {} timed out", self.id),
        }
    }

    /// Follows the ZooKeeper client's states into ours, until the client ends or the session
    /// is dropped.
    fn follow(&self, mut sw: zk::StateWatcher) {
        let state = self.state.clone();
        let mut stop = self.stop.subscribe();
        state.advance(coord_state(sw.state()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    st = sw.changed() => {
                        state.advance(coord_state(st));
                        if st.is_terminated() {
                            return;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Stops keeping the session alive without closing it, like a crashed process: the
    /// client's background task is aborted and its connection dropped. The server expires
    /// the session after its TTL. The local state is left as it was. If it is the backend's
    /// main session, the backend carries on with a new one (its watches resync).
    pub fn crash(&self) -> bool {
        let client = self.slot().take();
        let aborted = match &client {
            Some(c) if self.rides() => self.ctx.crash_main(c.session_id().0),
            _ => self.capture.abort(),
        };
        // Nothing may use the client any more; with its task gone, dropping it sends nothing.
        drop(client);
        aborted
    }
}

#[async_trait]
impl RawSession for ZkSession {
    fn capabilities(&self) -> &Capabilities {
        &self.ctx.caps
    }

    fn id(&self) -> &SessionId {
        &self.id
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> SessionState {
        self.state.get()
    }

    fn states(&self) -> SessionStates {
        self.state.states()
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let Some(client) = self.slot().clone() else {
            return Err(Error::connection_lost(format!(
                "session {} no longer has a client",
                self.id
            )));
        };
        let zmode = match mode {
            CreateMode::Exact => zk::CreateMode::Ephemeral,
            CreateMode::Sequential => zk::CreateMode::EphemeralSequential,
        };
        let opts = zmode.with_acls(self.ctx.acls());
        let after = self.ctx.cfg.timeout;
        let p = path.as_str();
        let r = tokio::time::timeout(after, client.create(p, value, &opts)).await;
        // Only the session may hold its client: a clone left behind would keep it open.
        drop(client);
        let (stat, seq) = match r {
            Err(_) => return Err(error::timeout("create", p, after)),
            Ok(Err(e @ (zk::Error::SessionExpired | zk::Error::SessionMoved))) => {
                self.state.advance(SessionState::Expired);
                return Err(error::map(e, p, Op::Create, Some(&self.id.0)));
            }
            Ok(Err(zk::Error::ClientClosed)) => {
                return Err(Error::session_gone(&self.id, self.state.get()))
            }
            Ok(Err(e)) => return Err(error::map(e, p, Op::Create, Some(&self.id.0))),
            Ok(Ok(v)) => v,
        };
        let made = created(path, mode, &stat, seq)?;
        if !self.rides() {
            self.ctx.sync(made.path.as_str()).await;
        }
        Ok(made)
    }

    async fn close(&self) -> Result<()> {
        let Some(client) = self.slot().take() else {
            self.state.advance(SessionState::Closed);
            return Ok(());
        };
        let sw = client.state_watcher();
        if self.rides() {
            // The backend's own clone must go too: it moves to a new main session first.
            self.ctx.release_main(client.session_id().0).await;
        }
        // The last clone gone, the client sends closeSession and waits for the answer.
        drop(client);
        let after = self.ctx.cfg.timeout;
        let done = tokio::time::timeout(after, terminated(sw)).await;
        self.state.advance(SessionState::Closed);
        if done.is_err() {
            tracing::warn!(
                "zk: closing session {} got no answer within {after:?}; the server will expire it",
                self.id
            );
        }
        self.ctx.sync("/").await;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for ZkSession {
    fn drop(&mut self) {
        self.state.advance(SessionState::Closed);
        if self.rides() {
            if let Some(c) = self.slot().take() {
                // The session closes once the backend has moved to a new main session.
                self.ctx.retire_main(c.session_id().0, false);
            }
        }
    }
}
