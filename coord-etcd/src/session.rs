//! [`EtcdSession`]: a lease, kept alive by coord-core's [`LeaseSession`]; here are etcd's
//! steps ([`EtcdLease`]): grant, one keep-alive, revoke, create with the lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{Lease, LeaseHandle, LeaseSession, Renewal, Timing};
use coord_core::{Capabilities, CreateMode, Created, Path, Result, SessionId};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::context::{lease_sid, Context};
use crate::error::{bounded, map, not_sent, Ctx};

/// The longest pause between two keep-alives, whatever the TTL: a stopped server is noticed
/// (Suspended) within about a second.
const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// An etcd session: a lease (TTL rounded up to whole seconds; the server may raise it to its
/// minimum) renewed by the adapter every TTL/3 (at most every second), each renewal bounded
/// by TTL/2 (at most a second).
///
/// States: Suspended when keep-alives fail, Connected again when one succeeds, Expired when
/// the server answers that the lease is gone or when no renewal succeeded for a whole TTL
/// after the last successful one was sent (then the server has let it expire, or will; the
/// adapter revokes it to be sure), Closed on [`Session::close`](coord_core::Session::close)
/// (the lease is revoked, so ephemerals go at once). Dropping the last handle revokes the
/// lease in the background.
#[derive(Debug)]
pub struct EtcdSession(LeaseSession<EtcdLease>);

impl LeaseHandle for EtcdSession {
    type Lease = EtcdLease;

    fn lease_session(&self) -> &LeaseSession<EtcdLease> {
        &self.0
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
        let granted = u64::try_from(resp.ttl()).unwrap_or(0).max(1);
        let lease = EtcdLease {
            id: resp.id(),
            sid: lease_sid(resp.id()),
            ttl: Duration::from_secs(granted),
            cx,
            keeper: Mutex::new(None),
        };
        Ok(EtcdSession(LeaseSession::start(lease, granted_at)))
    }

    /// The etcd lease id.
    pub fn lease_id(&self) -> i64 {
        self.0.lease().id
    }

    /// Simulates a crashed client (for tests): the keep-alive loop stops without revoking, so
    /// the lease, and with it every ephemeral of the session, expires after its TTL. The
    /// handle's state is left as it is (nobody is left to observe it), and dropping the handle
    /// no longer revokes.
    pub fn crash(&self) {
        self.0.crash();
    }
}

/// etcd's side of an [`EtcdSession`]: the lease and the open keep-alive stream.
pub struct EtcdLease {
    id: i64,
    sid: SessionId,
    ttl: Duration,
    cx: Arc<Context>,
    /// The keep-alive stream, reopened after it broke or a renewal failed.
    keeper: Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl std::fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLease")
            .field("id", &self.sid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl EtcdLease {
    /// One keep-alive over the (re)opened stream: the TTL the server answered (0: gone).
    async fn keep_alive(
        &self,
        keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    ) -> std::result::Result<i64, etcd_client::Error> {
        if let Some((k, s)) = keeper.as_mut() {
            let r = match k.keep_alive().await {
                Ok(()) => s.message().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(Some(resp)) => return Ok(resp.ttl()),
                // The stream broke (its member may be gone): open a new one at once, through
                // any member that answers, within the same renewal.
                Ok(None) | Err(_) => *keeper = None,
            }
        }
        // Opening the stream sends a first keep-alive and reads its answer. A member that
        // cannot be reached is skipped (the renewal as a whole is bounded).
        loop {
            let mut lc = self.cx.store().client.lease_client();
            match lc.keep_alive(self.id).await {
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
}

#[async_trait]
impl Lease for EtcdLease {
    fn id(&self) -> &SessionId {
        &self.sid
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn capabilities(&self) -> &Capabilities {
        &self.cx.caps
    }

    /// Every TTL/3 (at most 1 s), bounded by TTL/2 (at most 1 s); after a failure again in
    /// half an interval (at least 50 ms); the server's deadline is a TTL after the send of the
    /// last successful renewal (or of the grant).
    fn timing(&self) -> Timing {
        let interval = (self.ttl / 3).min(MAX_RENEW_INTERVAL);
        Timing {
            interval,
            retry: (interval / 2).max(Duration::from_millis(50)),
            step_timeout: (self.ttl / 2).min(MAX_RENEW_INTERVAL),
            deadline: Some(self.ttl),
        }
    }

    async fn renew(&self, _recovering: bool) -> Result<Renewal> {
        // Taken out while renewing: a failed or abandoned renewal leaves none (reopened).
        let mut slot = self.keeper.lock().await;
        let mut keeper = slot.take();
        match self.keep_alive(&mut keeper).await {
            Ok(ttl) if ttl > 0 => {
                *slot = keeper;
                Ok(Renewal::Renewed)
            }
            Ok(_) => Ok(Renewal::Gone),
            Err(e) => Err(map(e, Ctx::default())),
        }
    }

    async fn revoke(&self) -> Result<()> {
        let (store, id) = (self.cx.store(), self.id);
        bounded(store.timeout, "lease revoke", Ctx::default(), || {
            let mut lc = store.client.lease_client();
            async move { lc.revoke(id).await }
        })
        .await?;
        Ok(())
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let owner = (&self.id, &self.sid);
        self.cx.tree.create(path, value, mode, Some(owner)).await
    }
}
