//! [`ZkSession`]: one ZooKeeper client (one ZooKeeper session) per coord session.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::check_value;
use coord_core::{
    CreateMode, Created, Error, Path, Result, Session, SessionId, SessionState, SessionStates,
};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backend::{connect_client, created, session_name, Shared};
use crate::error::{self, Op};

/// Spawns the ZooKeeper client's background task (it keeps the session alive) on tokio and
/// keeps its abort handle, so that a test can stop it without a close: a crashed process.
#[derive(Default)]
pub(crate) struct Capture {
    handle: Mutex<Option<tokio::task::AbortHandle>>,
}

impl spawns_core::Spawn for Capture {
    fn spawn(&self, task: spawns_core::Task) {
        let h = tokio::spawn(Box::into_pin(task.future));
        *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.abort_handle());
    }
}

impl Capture {
    /// Runs `fut` with this spawner in scope (entered on every poll, as the scope is
    /// thread-local and the future may move between threads).
    pub(crate) fn scope<'a, F: Future + 'a>(
        &'a self,
        fut: F,
    ) -> impl Future<Output = F::Output> + 'a {
        Scoped {
            fut: Box::pin(fut),
            capture: self,
        }
    }

    fn abort(&self) -> bool {
        match self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }
}

struct Scoped<'a, F> {
    fut: Pin<Box<F>>,
    capture: &'a Capture,
}

impl<F: Future> Future for Scoped<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let capture = self.capture;
        let _scope = spawns_core::enter(capture);
        self.fut.as_mut().poll(cx)
    }
}

/// A coord session backed by its own ZooKeeper session (its own connection). Ephemerals are
/// created through it; the backend's main client syncs before a create returns, so that
/// reads through the backend see them (read-your-writes across the two connections).
///
/// Dropping the last handle closes the ZooKeeper session (its ephemerals go at once).
pub struct ZkSession {
    shared: Arc<Shared>,
    client: Mutex<Option<zk::Client>>,
    info: zk::SessionInfo,
    id: SessionId,
    ttl: Duration,
    state: Arc<watch::Sender<SessionState>>,
    /// Keeps the channel open: the state followers stop when the last receiver is gone.
    _state_rx: watch::Receiver<SessionState>,
    capture: Capture,
}

impl std::fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkSession")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("state", &*self.state.borrow())
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

/// Moves `state` to `to` unless it is already final.
fn advance(state: &watch::Sender<SessionState>, to: SessionState) {
    state.send_if_modified(|s| {
        if s.is_final() || *s == to {
            false
        } else {
            *s = to;
            true
        }
    });
}

impl ZkSession {
    pub(crate) async fn open(shared: Arc<Shared>, ttl: Duration) -> Result<ZkSession> {
        let capture = Capture::default();
        let client = connect_client(&shared.cfg, shared.acls(), ttl, false, Some(&capture)).await?;
        let info = client.session().clone();
        let id = SessionId(session_name(client.session_id().0));
        let granted = client.session_timeout();
        let (tx, rx) = watch::channel(SessionState::Connected);
        let sw = client.state_watcher();
        let session = ZkSession {
            shared,
            client: Mutex::new(Some(client)),
            info,
            id,
            ttl: granted,
            state: Arc::new(tx),
            _state_rx: rx,
            capture,
        };
        session.follow(sw);
        Ok(session)
    }

    fn gone(&self, state: SessionState) -> Error {
        Error::session_gone(&self.id, state)
    }

    fn client(&self) -> Option<zk::Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        self.capture.abort();
        drop(self.client.lock().unwrap_or_else(|p| p.into_inner()).take());
        advance(&self.state, SessionState::Suspended);
        let cfg = &self.shared.cfg;
        let attach = zk::Client::connector()
            .with_session(self.info.clone())
            .with_session_timeout(self.ttl)
            .connect(&cfg.connect_string);
        match tokio::time::timeout(cfg.timeout, attach).await {
            Ok(Ok(other)) => {
                let mut sw = other.state_watcher();
                drop(other);
                let _ = tokio::time::timeout(cfg.timeout, async {
                    let mut st = sw.peek_state();
                    while !st.is_terminated() {
                        st = sw.changed().await;
                    }
                })
                .await;
            }
            Ok(Err(e)) => tracing::warn!("zk: attaching to session {} failed: {e}", self.id),
            Err(_) => tracing::warn!("zk: attaching to session {} timed out", self.id),
        }
        let capture = Capture::default();
        let reattach = zk::Client::connector()
            .with_session(self.info.clone())
            .with_session_timeout(self.ttl)
            .connect(&cfg.connect_string);
        match tokio::time::timeout(cfg.timeout, capture.scope(reattach)).await {
            Ok(Ok(client)) => {
                // Still alive (the close did not take): carry on with the new connection.
                tracing::warn!("zk: session {} survived the expiry attempt", self.id);
                if let Ok(c) = client.chroot(cfg.namespace.as_str()) {
                    self.follow(c.state_watcher());
                    *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                    *self
                        .capture
                        .handle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = capture
                        .handle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                }
            }
            _ => advance(&self.state, SessionState::Expired),
        }
    }

    /// Follows the ZooKeeper client's states into ours.
    fn follow(&self, mut sw: zk::StateWatcher) {
        let follower = self.state.clone();
        advance(&follower, coord_state(sw.state()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    st = sw.changed() => {
                        advance(&follower, coord_state(st));
                        if st.is_terminated() {
                            return;
                        }
                    }
                    _ = follower.closed() => return,
                }
            }
        });
    }

    /// Stops keeping the session alive without closing it, like a crashed process: the
    /// client's background task is aborted and its connection dropped. The server expires
    /// the session after its TTL. The local state is left as it was.
    pub fn crash(&self) -> bool {
        let aborted = self.capture.abort();
        // Nothing may use the client any more; with its task gone, dropping it sends nothing.
        drop(self.client.lock().unwrap_or_else(|p| p.into_inner()).take());
        aborted
    }
}

#[async_trait]
impl Session for ZkSession {
    fn id(&self) -> &SessionId {
        &self.id
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    fn states(&self) -> SessionStates {
        coord_core::adapter::states_of(self.state.subscribe())
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        check_value(&self.shared.caps, value)?;
        let st = self.state();
        if st.is_final() {
            return Err(self.gone(st));
        }
        if path.is_root() {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        }
        let Some(client) = self.client() else {
            return Err(Error::connection_lost(format!(
                "session {} no longer has a client",
                self.id
            )));
        };
        let zmode = match mode {
            CreateMode::Exact => zk::CreateMode::Ephemeral,
            CreateMode::Sequential => zk::CreateMode::EphemeralSequential,
        };
        let opts = zmode.with_acls(self.shared.acls());
        let after = self.shared.cfg.timeout;
        let p = path.as_str();
        let r = tokio::time::timeout(after, client.create(p, value, &opts)).await;
        drop(client);
        let (stat, seq) = match r {
            Err(_) => return Err(error::timeout("create", p, after)),
            Ok(Err(e @ (zk::Error::SessionExpired | zk::Error::SessionMoved))) => {
                advance(&self.state, SessionState::Expired);
                return Err(error::map(e, p, Op::Create, Some(&self.id.0)));
            }
            Ok(Err(zk::Error::ClientClosed)) => return Err(self.gone(self.state())),
            Ok(Err(e)) => return Err(error::map(e, p, Op::Create, Some(&self.id.0))),
            Ok(Ok(v)) => v,
        };
        let made = created(path, mode, &stat, seq)?;
        self.shared.sync(made.path.as_str()).await;
        Ok(made)
    }

    async fn close(&self) -> Result<()> {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(client) = client else {
            advance(&self.state, SessionState::Closed);
            return Ok(());
        };
        let mut sw = client.state_watcher();
        // The last clone gone, the client sends closeSession and waits for the answer.
        drop(client);
        let after = self.shared.cfg.timeout;
        let done = tokio::time::timeout(after, async {
            let mut st = sw.peek_state();
            while !st.is_terminated() {
                st = sw.changed().await;
            }
        })
        .await;
        advance(&self.state, SessionState::Closed);
        if done.is_err() {
            tracing::warn!(
                "zk: closing session {} got no answer within {after:?}; the server will expire it",
                self.id
            );
        }
        self.shared.sync("/").await;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for ZkSession {
    fn drop(&mut self) {
        advance(&self.state, SessionState::Closed);
    }
}
