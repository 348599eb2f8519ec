//! Consul sessions bound to an agent TTL check ("Consul fast failover").
//!
//! Opening a session registers, on the agent, a per-session service `coord-session` whose TTL
//! check (TTL = the session TTL) starts passing, then creates a Consul session with
//! `Checks = ["serfHealth", <check>]`, `Behavior = "delete"`, `LockDelay = "0s"` and no TTL of
//! its own. A keep-alive task passes the check every TTL/3. If the passes stop (crash, hang,
//! partition), the check turns critical after the TTL and Consul invalidates the session at
//! once, deleting its ephemerals: failover ≈ the TTL (Consul's own session TTL would take up
//! to 2 × TTL, at least 20 s). The agent reaps the service of a client that never came back
//! after a minute critical.
//!
//! States: `Suspended` when a pass fails; `Connected` when a pass succeeds again and the
//! session still exists; `Expired` when Consul reports the session gone (a blocking query on
//! `/v1/session/info` sees it the moment it is invalidated or destroyed, or an acquire is
//! refused, or the agent no longer knows the check); `Closed` after [`Session::close`].

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use coord_core::adapter::{random_u64, Backoff, RawSession, StateCell};
use coord_core::{
    Capabilities, CreateMode, Created, Error, Path, Result, SessionId, SessionState, SessionStates,
};

use crate::api::{Pass, SessionCreate};
use crate::context::Context;
use crate::error::backend_err;

struct Shared {
    ctx: Arc<Context>,
    id: SessionId,
    check: String,
    ttl: Duration,
    state: StateCell,
    /// Set by `close` before the session is destroyed, so that the observer does not report
    /// our own destroy as an expiry.
    closing: AtomicBool,
    /// The check has been deregistered (once is enough).
    cleaned: AtomicBool,
}

impl Shared {
    /// Moves to `to` unless the state is final (or `to` is Expired while closing).
    fn set(&self, to: SessionState) -> bool {
        let closing = self.closing.load(Ordering::SeqCst);
        self.state
            .advance_if(to, |_| !(to == SessionState::Expired && closing))
    }

    async fn cleanup(&self) {
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.ctx.api().deregister_check(&self.check).await {
                tracing::debug!(session = %self.id, error = %e, "could not deregister the session's check (the agent reaps it after 1 min critical)");
            }
        }
    }

    /// Consul says the session is gone: Expired, and the check is removed.
    async fn expired(&self) {
        if self.set(SessionState::Expired) {
            tracing::info!(session = %self.id, "Consul session expired");
        }
        self.cleanup().await;
    }

    /// Destroys the session (its ephemerals go with it) and its check: Closed.
    async fn shut_down(&self) -> Result<()> {
        let r = self.ctx.api().destroy_session(&self.id.0).await;
        self.cleanup().await;
        self.set(SessionState::Closed);
        r
    }

    fn gone_error(&self) -> Error {
        Error::session_gone(&self.id, self.state.get())
    }
}

/// A Consul session (see the module docs). Dropping the last handle closes it in the
/// background.
pub struct ConsulSession {
    shared: Arc<Shared>,
    keepalive: Mutex<Option<JoinHandle<()>>>,
    observer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ConsulSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSession")
            .field("id", &self.shared.id)
            .field("check", &self.shared.check)
            .field("ttl", &self.shared.ttl)
            .field("state", &self.shared.state.get())
            .finish()
    }
}

fn abort(slot: &Mutex<Option<JoinHandle<()>>>) {
    let h = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(h) = h {
        h.abort();
    }
}

impl ConsulSession {
    pub(crate) async fn open(ctx: Arc<Context>, ttl: Duration) -> Result<ConsulSession> {
        let check = format!("coord-{:016x}{:016x}", random_u64(), random_u64());
        let api = ctx.api();
        api.register_check(&check, ttl).await?;
        let created = async {
            let id = create_session(&ctx, &check).await?;
            let (_, index) = api.session_exists(&id, None).await?;
            Ok::<_, Error>((id, index))
        }
        .await;
        let (id, index) = match created {
            Ok(v) => v,
            Err(e) => {
                let _ = api.deregister_check(&check).await;
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            ctx,
            id: SessionId(id),
            check,
            ttl,
            state: StateCell::new(SessionState::Connected),
            closing: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
        });
        let keepalive = tokio::spawn(keepalive(shared.clone()));
        let observer = tokio::spawn(observe(shared.clone(), index));
        Ok(ConsulSession {
            shared,
            keepalive: Mutex::new(Some(keepalive)),
            observer: Mutex::new(Some(observer)),
        })
    }

    /// For tests: stops passing the check without closing, like a client that hung or was
    /// cut off. The session is invalidated by Consul after its TTL and then reports Expired
    /// (the observer that watches it server-side keeps running, as the owner would see it
    /// once it is back).
    pub fn crash(&self) {
        abort(&self.keepalive);
    }

    /// The id of the agent check (and service) that keeps this session alive.
    pub fn check_id(&self) -> &str {
        &self.shared.check
    }

    /// Consul refused a lock by this session: expired if Consul no longer knows it.
    async fn lock_refused(&self) -> Result<Created> {
        let sh = &self.shared;
        if sh.closing.load(Ordering::SeqCst) {
            return Err(Error::SessionClosed {
                session: sh.id.0.clone(),
            });
        }
        match sh.ctx.api().session_exists(&sh.id.0, None).await? {
            (false, _) => {
                sh.expired().await;
                Err(sh.gone_error())
            }
            (true, _) => Err(backend_err(
                format!("Consul refused a lock by the live session {}", sh.id),
                true,
            )),
        }
    }
}

/// Creates the session. On a client agent the check reaches the servers' catalog by
/// anti-entropy shortly after its registration: until then Consul refuses the check
/// ([`SessionCreate::CheckNotKnownYet`]), so that answer is retried for up to the request
/// timeout.
async fn create_session(ctx: &Context, check: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + ctx.api().timeout;
    let mut backoff =
        Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).jittered();
    loop {
        match ctx.api().create_session(check).await? {
            SessionCreate::Created(id) => return Ok(id),
            SessionCreate::CheckNotKnownYet => {
                let pause = backoff.next_delay();
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(backend_err(
                        format!("Consul did not learn the check {check} within the timeout"),
                        true,
                    ));
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Passes the check every TTL/3 (fixed rate), each pass bounded by TTL/3 and the request
/// timeout.
async fn keepalive(shared: Arc<Shared>) {
    let period = shared.ttl / 3;
    let pass_timeout = period.min(shared.ctx.api().timeout);
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        next += period;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now + period;
        }
        if shared.state.get().is_final() {
            return;
        }
        let api = shared.ctx.api();
        match api.pass_check(&shared.check, pass_timeout).await {
            Ok(Pass::Passed) => {
                if shared.state.get() == SessionState::Suspended {
                    match api.session_exists(&shared.id.0, None).await {
                        Ok((true, _)) => {
                            if shared.set(SessionState::Connected) {
                                tracing::info!(session = %shared.id, "Consul session reconnected");
                            }
                        }
                        Ok((false, _)) => {
                            shared.expired().await;
                            return;
                        }
                        Err(_) => {}
                    }
                }
            }
            Ok(Pass::UnknownCheck) => {
                // Without its check the session is invalid (Consul invalidates it when the
                // check goes; a restarted dev agent forgot both). Make sure and report it.
                let _ = api.destroy_session(&shared.id.0).await;
                shared.expired().await;
                return;
            }
            Err(e) => {
                if shared.set(SessionState::Suspended) {
                    tracing::warn!(session = %shared.id, error = %e, "Consul session suspended");
                }
            }
        }
    }
}

/// Follows the session server-side with blocking queries: reports Expired the moment Consul
/// invalidates or destroys it.
async fn observe(shared: Arc<Shared>, mut index: u64) {
    let api = shared.ctx.api();
    let mut errors = Backoff::new(Duration::from_millis(100), shared.ttl / 3).jittered();
    loop {
        if shared.state.get().is_final() {
            return;
        }
        match api
            .session_exists(&shared.id.0, Some((index, api.wait)))
            .await
        {
            Ok((true, i)) => {
                errors.reset();
                index = i;
            }
            Ok((false, _)) => {
                shared.expired().await;
                return;
            }
            Err(_) => errors.wait().await,
        }
    }
}

#[async_trait]
impl RawSession for ConsulSession {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.ctx.tree.caps
    }

    fn id(&self) -> &SessionId {
        &self.shared.id
    }

    fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    fn state(&self) -> SessionState {
        self.shared.state.get()
    }

    fn states(&self) -> SessionStates {
        self.shared.state.states()
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let sh = &self.shared;
        if sh.closing.load(Ordering::SeqCst) {
            return Err(sh.gone_error());
        }
        match sh
            .ctx
            .tree
            .create(path, value, mode, Some((&sh.id, &sh.id)))
            .await
        {
            // Consul refused the lock: the session is invalid. Confirm and report.
            Err(Error::SessionExpired { .. }) => self.lock_refused().await,
            r => r,
        }
    }

    async fn close(&self) -> Result<()> {
        if self.shared.state.get().is_final() {
            return Ok(());
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        abort(&self.keepalive);
        abort(&self.observer);
        let r = self
            .shared
            .ctx
            .api()
            .destroy_session(&self.shared.id.0)
            .await;
        self.shared.cleanup().await;
        self.shared.set(SessionState::Closed);
        // If the destroy did not reach Consul the check is no longer passed: the session and
        // its ephemerals go within the TTL. Say so.
        r
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for ConsulSession {
    fn drop(&mut self) {
        abort(&self.keepalive);
        abort(&self.observer);
        if self.shared.state.get().is_final() {
            return;
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { shared.shut_down().await });
            }
            // No runtime: the check is no longer passed, the session expires after its TTL.
            Err(_) => {
                self.shared.set(SessionState::Closed);
            }
        }
    }
}
