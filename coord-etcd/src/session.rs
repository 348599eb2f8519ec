//! [`EtcdSession`]: a lease kept alive by the adapter's own loop.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{RawSession, StateCell};
use coord_core::{
    Capabilities, CreateMode, Created, Error, Path, Result, SessionId, SessionState, SessionStates,
};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::context::{lease_sid, Context, EtcdStore};
use crate::error::{bounded, map, not_sent, Ctx};

/// The longest pause between two keep-alives, whatever the TTL: a stopped server is noticed
/// (Suspended) within about a second.
const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// State shared by a session handle and its keep-alive task.
struct Inner {
    lease: i64,
    sid: SessionId,
    ttl: Duration,
    state: StateCell,
    /// Set to stop the keep-alive task (close, crash, drop, expiry).
    stop: watch::Sender<bool>,
    crashed: AtomicBool,
    revoked: AtomicBool,
}

impl Inner {
    fn transition(&self, to: SessionState) -> bool {
        self.state.advance(to)
    }

    fn current(&self) -> SessionState {
        self.state.get()
    }

    fn gone_error(&self, state: SessionState) -> Error {
        Error::session_gone(&self.sid, state)
    }
}

/// An etcd session: a lease (TTL rounded up to whole seconds; the server may raise it to its
/// minimum) renewed by the adapter every TTL/3 (at most every second).
///
/// States: Suspended when keep-alives fail, Connected again when one succeeds, Expired when
/// the server answers that the lease is gone or when no renewal succeeded for a whole TTL
/// (then the server has let it expire, or will; the adapter revokes it to be sure), Closed on
/// [`Session::close`] (the lease is revoked, so ephemerals go at once). Dropping the last
/// handle revokes the lease in the background.
pub struct EtcdSession {
    cx: Arc<Context>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSession")
            .field("id", &self.inner.sid)
            .field("ttl", &self.inner.ttl)
            .field("state", &self.inner.current())
            .finish_non_exhaustive()
    }
}

impl EtcdSession {
    /// Grants a lease of `ttl` and starts keeping it alive.
    pub(crate) async fn open(cx: Arc<Context>, ttl: Duration) -> Result<EtcdSession> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let granted_at = Instant::now();
        let store = cx.store();
        let resp = bounded(store.timeout, "lease grant", Ctx::default(), || {
            let mut lc = store.client.lease_client();
            async move { lc.grant(secs, None).await }
        })
        .await?;
        let lease = resp.id();
        let granted = u64::try_from(resp.ttl()).unwrap_or(0).max(1);
        let state = StateCell::new(SessionState::Connected);
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            lease,
            sid: lease_sid(lease),
            ttl: Duration::from_secs(granted),
            state,
            stop,
            crashed: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        });
        tokio::spawn(keep_alive_loop(
            cx.clone(),
            inner.clone(),
            stop_rx,
            granted_at,
        ));
        Ok(EtcdSession { cx, inner })
    }

    /// The etcd lease id.
    pub fn lease_id(&self) -> i64 {
        self.inner.lease
    }

    /// Simulates a crashed client (for tests): the keep-alive loop stops without revoking, so
    /// the lease, and with it every ephemeral of the session, expires after its TTL. The
    /// handle's state is left as it is (nobody is left to observe it), and dropping the handle
    /// no longer revokes.
    pub fn crash(&self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        self.inner.stop.send_replace(true);
    }

    async fn revoke(&self) -> Result<()> {
        let lease = self.inner.lease;
        let store = self.cx.store();
        let r = bounded(store.timeout, "lease revoke", Ctx::default(), || {
            let mut lc = store.client.lease_client();
            async move { lc.revoke(lease).await }
        })
        .await;
        match r {
            // Already gone is what we want.
            Ok(_) | Err(Error::SessionExpired { .. }) => {
                self.inner.revoked.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// One renewal over the (re)opened keep-alive stream: the TTL the server answered (0: gone).
async fn renew(
    store: &EtcdStore,
    lease: i64,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> std::result::Result<i64, etcd_client::Error> {
    if let Some((k, s)) = keeper.as_mut() {
        let r = match k.keep_alive().await {
            Ok(()) => s.message().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(Some(resp)) => return Ok(resp.ttl()),
            // The stream broke (its member may be gone): open a new one at once, through any
            // member that answers, within the same renewal.
            Ok(None) | Err(_) => *keeper = None,
        }
    }
    // Opening the stream sends a first keep-alive and reads its answer. A member that cannot
    // be reached is skipped (the caller bounds the whole renewal).
    loop {
        let mut lc = store.client.lease_client();
        match lc.keep_alive(lease).await {
            Ok(pair) => {
                *keeper = Some(pair);
                return Ok(1);
            }
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                return Ok(0)
            }
            Err(e) if not_sent(&e) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(e),
        }
    }
}

async fn keep_alive_loop(
    cx: Arc<Context>,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
    granted_at: Instant,
) {
    let interval = (inner.ttl / 3).min(MAX_RENEW_INTERVAL);
    let step_timeout = (inner.ttl / 2).min(MAX_RENEW_INTERVAL);
    // The server's deadline is at least a TTL after the moment a successful renewal was sent.
    let mut deadline = granted_at + inner.ttl;
    let mut keeper = None;
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if inner.current().is_final() {
            return;
        }
        let sent = Instant::now();
        let r = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = tokio::time::timeout(step_timeout, renew(cx.store(), inner.lease, &mut keeper)) => r,
        };
        match r {
            Ok(Ok(ttl)) if ttl > 0 => {
                deadline = sent + inner.ttl;
                wait = interval;
                inner.transition(SessionState::Connected);
            }
            Ok(Ok(_)) => {
                tracing::debug!(session = %inner.sid, "etcd lease gone: session expired");
                inner.transition(SessionState::Expired);
                return;
            }
            other => {
                if let Ok(Err(e)) = other {
                    let e = map(e, Ctx::default());
                    if matches!(e, Error::SessionExpired { .. }) {
                        inner.transition(SessionState::Expired);
                        return;
                    }
                    tracing::debug!(session = %inner.sid, error = %e, "etcd keep-alive failed");
                }
                keeper = None;
                if Instant::now() >= deadline {
                    // No renewal for a whole TTL: the server has expired the lease (or will,
                    // unless a leader change extended it). Report it, and make sure of it.
                    inner.transition(SessionState::Expired);
                    revoke_in_background(cx.clone(), inner.lease);
                    return;
                }
                inner.transition(SessionState::Suspended);
                // Retry soon, but never sleep past the deadline.
                wait = (interval / 2)
                    .max(Duration::from_millis(50))
                    .min(deadline.saturating_duration_since(Instant::now()));
            }
        }
    }
}

/// Revokes `lease` without waiting (a drop, or a lease given up for lost).
fn revoke_in_background(cx: Arc<Context>, lease: i64) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let store = cx.store();
            let mut lc = store.client.lease_client();
            let _ = tokio::time::timeout(store.timeout, lc.revoke(lease)).await;
        });
    }
}

#[async_trait]
impl RawSession for EtcdSession {
    fn capabilities(&self) -> &Capabilities {
        &self.cx.tree.caps
    }

    fn id(&self) -> &SessionId {
        &self.inner.sid
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    fn state(&self) -> SessionState {
        self.inner.current()
    }

    fn states(&self) -> SessionStates {
        self.inner.state.states()
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let owner = (&self.inner.lease, &self.inner.sid);
        let r = self.cx.tree.create(path, value, mode, Some(owner)).await;
        if let Err(Error::SessionExpired { .. }) = &r {
            // The server does not know the lease any more.
            self.inner.transition(SessionState::Expired);
            self.inner.stop.send_replace(true);
            return Err(self.inner.gone_error(self.inner.current()));
        }
        r
    }

    async fn close(&self) -> Result<()> {
        // Owners learn it first, then the ephemerals go.
        self.inner.transition(SessionState::Closed);
        self.inner.stop.send_replace(true);
        if self.inner.revoked.load(Ordering::SeqCst)
            || self.inner.current() == SessionState::Expired
        {
            return Ok(());
        }
        self.revoke().await
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        self.inner.stop.send_replace(true);
        let inner = &self.inner;
        if inner.crashed.load(Ordering::SeqCst)
            || inner.revoked.load(Ordering::SeqCst)
            || inner.current() == SessionState::Expired
        {
            return;
        }
        inner.transition(SessionState::Closed);
        revoke_in_background(self.cx.clone(), inner.lease);
    }
}
