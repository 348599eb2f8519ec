//! Consul sessions bound to an agent TTL check ("Consul fast failover"), kept alive by
//! coord-core's [`LeaseSession`]; here are Consul's steps ([`ConsulLease`]).
//!
//! Opening a session registers, on the agent, a per-session service `coord-session` whose TTL
//! check (TTL = the session TTL) starts passing, then creates a Consul session with
//! `Checks = ["serfHealth", <check>]`, `Behavior = "delete"`, `LockDelay = "0s"` and no TTL of
//! its own. The keep-alive passes the check every TTL/3. If the passes stop (crash, hang,
//! partition), the check turns critical after the TTL and Consul invalidates the session at
//! once, deleting its ephemerals: failover ≈ the TTL (Consul's own session TTL would take up
//! to 2 × TTL, at least 20 s). The agent reaps the service of a client that never came back
//! after a minute critical.
//!
//! The lifecycle is [`LeaseSession`]'s; Consul-specific: a pass counts only if the servers
//! answer, within the same bound, that the session still exists — the pass alone is the local
//! agent's word, and a client agent cut off from the servers passes while the servers have
//! invalidated the session (its node's `serfHealth` failed) and granted its locks to others; `Expired` also when a blocking query on
//! `/v1/session/info` sees the session invalidated or destroyed, an acquire is refused by a
//! session Consul no longer knows, or the agent no longer knows the check. The end destroys
//! the session and deregisters the check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{random_u64, Backoff, Lease, LeaseSession, Renewal, Timing};
use coord_core::{CreateMode, Created, Error, Path, Result, SessionId};
use tokio::time::Instant;

use crate::api::{Api, Pass, SessionCreate};
use crate::context::Context;
use crate::error::backend_err;

coord_core::lease_session_type! {
    /// A Consul session (see the module docs). Dropping the last handle closes it in the
    /// background.
    pub struct ConsulSession(ConsulLease);
}

impl ConsulSession {
    pub(crate) async fn open(ctx: Arc<Context>, ttl: Duration) -> Result<ConsulSession> {
        let check = format!("coord-{:016x}{:016x}", random_u64(), random_u64());
        let granted_at = Instant::now();
        let api = ctx.api();
        api.register_check(&check, ttl).await?;
        let created = async {
            let id = SessionId(create_session(api, &check).await?);
            Ok::<_, Error>((api.session_exists(&id.0, None).await?.1, id))
        }
        .await;
        if created.is_err() {
            let _ = api.deregister_check(&check).await;
        }
        let (index, id) = created?;
        let caps = ctx.tree.caps.clone();
        let lease = ConsulLease {
            ctx,
            id: id.clone(),
            check,
            ttl,
            index,
        };
        Ok(ConsulSession(LeaseSession::start(
            lease, id, ttl, caps, granted_at,
        )))
    }

    /// For tests: stops passing the check without closing, like a client that hung or was
    /// cut off. The session is invalidated by Consul after its TTL and then reports Expired
    /// (the observer that watches it server-side keeps running, as the owner would see it
    /// once it is back).
    pub fn crash(&self) {
        self.0.crash();
    }

    /// The id of the agent check (and service) that keeps this session alive.
    pub fn check_id(&self) -> &str {
        &self.0.lease().check
    }
}

/// Creates the session. On a client agent the check reaches the servers' catalog by
/// anti-entropy shortly after its registration: until then Consul refuses the check
/// ([`SessionCreate::CheckNotKnownYet`]), so that answer is retried for up to the request
/// timeout.
async fn create_session(api: &Api, check: &str) -> Result<String> {
    let deadline = Instant::now() + api.timeout;
    let mut backoff =
        Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).jittered();
    loop {
        match api.create_session(check).await? {
            SessionCreate::Created(id) => return Ok(id),
            SessionCreate::CheckNotKnownYet => {
                let pause = backoff.next_delay();
                if Instant::now() + pause >= deadline {
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

/// Consul's side of a [`ConsulSession`]: the session, its agent check, and the index of the
/// session's first read (where the observer's blocking queries start).
pub struct ConsulLease {
    ctx: Arc<Context>,
    id: SessionId,
    check: String,
    ttl: Duration,
    index: u64,
}

impl ConsulLease {
    /// A pass is bounded by TTL/3 and the request timeout.
    fn pass_timeout(&self) -> Duration {
        (self.ttl / 3).min(self.ctx.api().timeout)
    }
}

#[async_trait]
impl Lease for ConsulLease {
    /// A pass every TTL/3, after a failure too. No deadline of its own: Consul decides, and
    /// the observer ([`Lease::ended`]) sees it.
    fn timing(&self) -> Timing {
        Timing {
            interval: self.ttl / 3,
            retry: self.ttl / 3,
            // The pass, and the check that the session still exists after a failed one.
            step_timeout: self.pass_timeout() + self.ctx.api().timeout,
            deadline: None,
        }
    }

    async fn renew(&self, recovering: bool) -> Result<Renewal> {
        let api = self.ctx.api();
        match api.pass_check(&self.check, self.pass_timeout()).await? {
            // Without its check the session is invalid (Consul invalidates it when the check
            // goes; a restarted dev agent forgot both).
            Pass::UnknownCheck => Ok(Renewal::Gone),
            // The servers' word, bounded like the pass: a cut-off agent makes it a failure
            // (Suspended), an invalidated session Gone (partitions.rs, leader-side-cut on Consul
            // with a client agent per side: the old leader stayed Connected for the whole cut).
            Pass::Passed => {
                let bound = self.pass_timeout();
                match tokio::time::timeout(bound, api.session_exists(&self.id.0, None)).await {
                    Ok(Ok((true, _))) => Ok(Renewal::Renewed),
                    Ok(Ok((false, _))) => Ok(Renewal::Gone),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::timeout(format!(
                        "the servers did not confirm the session within {bound:?}{}",
                        if recovering { " (recovering)" } else { "" }
                    ))),
                }
            }
        }
    }

    /// Destroys the session (its ephemerals go with it) and deregisters its check.
    async fn revoke(&self) -> Result<()> {
        let r = self.ctx.api().destroy_session(&self.id.0).await;
        if let Err(e) = self.ctx.api().deregister_check(&self.check).await {
            tracing::debug!(session = %self.id, error = %e, "could not deregister the session's check (the agent reaps it after 1 min critical)");
        }
        r
    }

    /// Follows the session server-side with blocking queries: resolves the moment Consul
    /// invalidates or destroys it.
    async fn ended(&self) {
        let api = self.ctx.api();
        let mut errors = Backoff::new(Duration::from_millis(100), self.ttl / 3).jittered();
        let mut index = self.index;
        loop {
            match api
                .session_exists(&self.id.0, Some((index, api.wait)))
                .await
            {
                Ok((true, i)) => {
                    errors.reset();
                    index = i;
                }
                Ok((false, _)) => return,
                Err(_) => errors.wait().await,
            }
        }
    }

    /// A lock refused by Consul means the session is gone only if Consul no longer knows it.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let owner = Some((&self.id, &self.id));
        match self.ctx.tree.create(path, value, mode, owner).await {
            Err(Error::SessionExpired { .. })
                if self.ctx.api().session_exists(&self.id.0, None).await?.0 =>
            {
                Err(backend_err(
                    format!("Consul refused a lock by the live session {}", self.id),
                    true,
                ))
            }
            r => r,
        }
    }
}
