//! [`EtcdSession`]: a lease, kept alive by coord-core's [`LeaseSession`]; here are etcd's
//! steps ([`EtcdLease`]): grant, one keep-alive, revoke, create with the lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{Lease, LeaseSession, Renewal, Timing};
use coord_core::{CreateMode, Created, Path, Result};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::context::{lease_sid, Context};
use crate::error::{bounded, map, not_sent, Ctx};

/// The longest pause between two keep-alives, whatever the TTL: a stopped server is noticed
/// (Suspended) within about a second.
const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(1);

coord_core::lease_session_type! {
    /// An etcd session: a lease (TTL rounded up to whole seconds; the server may raise it to its
    /// minimum) with the lifecycle of [`LeaseSession`]: renewed every TTL/3 (at most every
    /// second); Expired when the server answers that the lease is gone or a TTL after the last
    /// successful renewal was sent; closing or dropping it revokes the lease (ephemerals go at once).
    pub struct EtcdSession(EtcdLease);
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
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0).max(1));
        let (id, caps) = (resp.id(), cx.tree.caps.clone());
        let keeper = Mutex::new(None);
        let lease = EtcdLease {
            id,
            ttl,
            cx,
            keeper,
        };
        let s = LeaseSession::start(lease, lease_sid(id), ttl, caps, granted_at);
        Ok(EtcdSession(s))
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
    ttl: Duration,
    cx: Arc<Context>,
    /// The keep-alive stream, reopened after it broke or a renewal failed.
    keeper: Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

#[async_trait]
impl Lease for EtcdLease {
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
        if let Some((mut k, mut s)) = slot.take() {
            let r = match k.keep_alive().await {
                Ok(()) => s.message().await,
                Err(e) => Err(e),
            };
            // A broken stream (its member may be gone) is reopened at once, through any
            // member that answers, within the same renewal.
            if let Ok(Some(resp)) = r {
                if resp.ttl() <= 0 {
                    return Ok(Renewal::Gone);
                }
                *slot = Some((k, s));
                return Ok(Renewal::Renewed);
            }
        }
        // Opening the stream sends a first keep-alive and reads its answer. A member that
        // cannot be reached is skipped (the renewal as a whole is bounded).
        loop {
            let mut lc = self.cx.store().client.lease_client();
            match lc.keep_alive(self.id).await {
                Ok(pair) => {
                    *slot = Some(pair);
                    return Ok(Renewal::Renewed);
                }
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    return Ok(Renewal::Gone)
                }
                Err(e) if not_sent(&e) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(map(e, Ctx::default())),
            }
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
        let owner = (&self.id, &lease_sid(self.id));
        self.cx.tree.create(path, value, mode, Some(owner)).await
    }
}
