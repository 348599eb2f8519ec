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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use coord_core::adapter::check_value;
use coord_core::{
    CreateMode, Created, Error, Path, Result, Session, SessionId, SessionState, SessionStates,
};

use crate::api::{backend_err, Pass};
use crate::core::{jitter, random_u64, Core};

struct Shared {
    core: Arc<Core>,
    id: SessionId,
    check: String,
    ttl: Duration,
    state: watch::Sender<SessionState>,
    /// Set by `close` before the session is destroyed, so that the observer does not report
    /// our own destroy as an expiry.
    closing: AtomicBool,
    /// The check has been deregistered (once is enough).
    cleaned: AtomicBool,
}

impl Shared {
    fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// Moves to `to` unless the state is final (or `to` is Expired while closing).
    fn set(&self, to: SessionState) -> bool {
        let closing = self.closing.load(Ordering::SeqCst);
        self.state.send_if_modified(|s| {
            if s.is_final() || *s == to || (to == SessionState::Expired && closing) {
                return false;
            }
            *s = to;
            true
        })
    }

    async fn cleanup(&self) {
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.core.api.deregister_check(&self.check).await {
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

    fn gone_error(&self) -> Error {
        Error::session_gone(&self.id, self.state())
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
            .field("state", &self.shared.state())
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
    pub(crate) async fn open(core: Arc<Core>, ttl: Duration) -> Result<ConsulSession> {
        let check = format!("coord-{:016x}{:016x}", random_u64(), random_u64());
        core.api.register_check(&check, ttl).await?;
        let created = async {
            let id = create_session(&core, &check).await?;
            let (_, index) = core.api.session_exists(&id, None).await?;
            Ok::<_, Error>((id, index))
        }
        .await;
        let (id, index) = match created {
            Ok(v) => v,
            Err(e) => {
                let _ = core.api.deregister_check(&check).await;
                return Err(e);
            }
        };
        let (state, _) = watch::channel(SessionState::Connected);
        let shared = Arc::new(Shared {
            core,
            id: SessionId(id),
            check,
            ttl,
            state,
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
}

/// Creates the session. On a client agent the check reaches the servers' catalog by
/// anti-entropy shortly after its registration: until then Consul answers "Missing check"
/// (HTTP 500), so that answer is retried for up to the request timeout.
async fn create_session(core: &Core, check: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + core.api.timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        match core.api.create_session(check).await {
            Err(Error::Backend { message, .. })
                if message.contains("Missing check")
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(jitter(pause)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

/// Passes the check every TTL/3 (fixed rate), each pass bounded by TTL/3 and the request
/// timeout.
async fn keepalive(shared: Arc<Shared>) {
    let period = shared.ttl / 3;
    let pass_timeout = period.min(shared.core.api.timeout);
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        next += period;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now + period;
        }
        if shared.state().is_final() {
            return;
        }
        let api = &shared.core.api;
        match api.pass_check(&shared.check, pass_timeout).await {
            Ok(Pass::Passed) => {
                if shared.state() == SessionState::Suspended {
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
    let api = &shared.core.api;
    let mut errors = 0u32;
    loop {
        if shared.state().is_final() {
            return;
        }
        match api
            .session_exists(&shared.id.0, Some((index, api.wait)))
            .await
        {
            Ok((true, i)) => {
                errors = 0;
                index = i;
            }
            Ok((false, _)) => {
                shared.expired().await;
                return;
            }
            Err(_) => {
                let d = Duration::from_millis(100u64 << errors.min(5)).min(shared.ttl / 3);
                tokio::time::sleep(jitter(d)).await;
                errors += 1;
            }
        }
    }
}

#[async_trait]
impl Session for ConsulSession {
    fn id(&self) -> &SessionId {
        &self.shared.id
    }

    fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    fn state(&self) -> SessionState {
        self.shared.state()
    }

    fn states(&self) -> SessionStates {
        coord_core::adapter::states_of(self.shared.state.subscribe())
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let core = &self.shared.core;
        check_value(&core.caps, value)?;
        if self.shared.state().is_final() || self.shared.closing.load(Ordering::SeqCst) {
            return Err(self.shared.gone_error());
        }
        match core
            .create(path, value, mode, Some(&self.shared.id.0))
            .await
        {
            Err(Error::SessionExpired { .. }) => {
                // Consul refused the lock: the session is invalid. Confirm and report.
                if self.shared.closing.load(Ordering::SeqCst) {
                    return Err(Error::SessionClosed {
                        session: self.shared.id.0.clone(),
                    });
                }
                match core.api.session_exists(&self.shared.id.0, None).await? {
                    (false, _) => {
                        self.shared.expired().await;
                        Err(self.shared.gone_error())
                    }
                    (true, _) => Err(backend_err(
                        format!(
                            "Consul refused a lock by the live session {}",
                            self.shared.id
                        ),
                        true,
                    )),
                }
            }
            r => r,
        }
    }

    async fn close(&self) -> Result<()> {
        if self.shared.state().is_final() {
            return Ok(());
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        abort(&self.keepalive);
        abort(&self.observer);
        let r = self
            .shared
            .core
            .api
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
        if self.shared.state().is_final() {
            return;
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let _ = shared.core.api.destroy_session(&shared.id.0).await;
                    shared.cleanup().await;
                    shared.set(SessionState::Closed);
                });
            }
            // No runtime: the check is no longer passed, the session expires after its TTL.
            Err(_) => {
                self.shared.set(SessionState::Closed);
            }
        }
    }
}
