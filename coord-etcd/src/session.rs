//! [`EtcdSession`]: a lease, kept alive by coord-core's [`LeaseSession`]; here are etcd's
//! steps ([`EtcdLease`]): grant, one keep-alive, revoke, create with the lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{Lease, LeaseSession, Renewal, Timing};
use coord_core::{CreateMode, Created, Error, Path, Result};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::oneshot;
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
    pub(crate) async fn open(ctx: Arc<Context>, ttl: Duration) -> Result<EtcdSession> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let store = ctx.store();
        // A grant is bounded by the lease's own length too, and each attempt by a renewal's
        // bound (half of it, at most 1 s): a member that rejoins after a cut can lose the
        // proposal it forwards, and that answer never comes; sent again, the grant is answered
        // at once (docs/RELIABILITY.md, (n) and (o)). A grant that was applied after all
        // expires on its own.
        let limit = store.timeout.min(Duration::from_secs(secs.unsigned_abs()));
        let attempt = (limit / 2).min(MAX_RENEW_INTERVAL);
        let deadline = Instant::now() + limit;
        let (resp, granted_at) = loop {
            let sent = Instant::now();
            let left = deadline.saturating_duration_since(sent);
            let grant = bounded(attempt.min(left), "lease grant", Ctx::default(), || {
                let mut lc = store.client.lease_client();
                async move { lc.grant(secs, None).await }
            });
            match grant.await {
                Ok(resp) => break (resp, sent),
                Err(Error::Timeout { .. }) if attempt < left => {
                    tracing::debug!("etcd: lease grant unanswered in {attempt:?}, sent again");
                }
                Err(Error::Timeout { .. }) => {
                    return Err(Error::timeout(format!(
                        "etcd lease grant: no answer within {limit:?}"
                    )))
                }
                Err(e) => return Err(e),
            }
        };
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0).max(1));
        let (id, caps) = (resp.id(), ctx.tree.caps.clone());
        let lease = EtcdLease { id, ttl, ctx };
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

/// etcd's side of an [`EtcdSession`]: the lease, renewed over the backend's shared
/// keep-alive stream (`KeepAlives`).
pub struct EtcdLease {
    id: i64,
    ttl: Duration,
    ctx: Arc<Context>,
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
        self.ctx.keep_alives.renew(&self.ctx, self.id).await
    }

    async fn revoke(&self) -> Result<()> {
        let (store, id) = (self.ctx.store(), self.id);
        bounded(store.timeout, "lease revoke", Ctx::default(), || {
            let mut lc = store.client.lease_client();
            async move { lc.revoke(id).await }
        })
        .await?;
        Ok(())
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let owner = (&self.id, &lease_sid(self.id));
        self.ctx.tree.create(path, value, mode, Some(owner)).await
    }
}

/// The answers awaited on a keep-alive stream: per lease, the renewals in the order sent
/// (each gets the TTL etcd answered).
type Waiters = Mutex<HashMap<i64, Vec<oneshot::Sender<i64>>>>;

/// One keep-alive stream and its reader's state.
struct KaConn {
    /// The request side; its lease id is the first lease's, any lease is renewed through it.
    keeper: LeaseKeeper,
    waiters: Arc<Waiters>,
    /// Broken, or a renewal on it got no answer in time: the next renewal opens another.
    dead: Arc<AtomicBool>,
    /// A renewal on it got no answer in time: its connection may be cut off, the next
    /// renewal replaces the connections too.
    stalled: Arc<AtomicBool>,
}

/// The keep-alive stream shared by every lease of a backend (etcd renews any number of
/// leases over one stream), instead of a stream per session: opened by the first renewal
/// that needs it, reopened at once (within the renewal) when it broke, and replaced when a
/// renewal on it timed out (its member may hang). It ends when the backend and its last
/// session are gone.
#[derive(Default)]
pub(crate) struct KeepAlives {
    conn: tokio::sync::Mutex<Option<KaConn>>,
}

/// Marks a stream dead and stalled unless disarmed: a renewal dropped before its answer
/// (timed out).
struct Suspect(Option<(Arc<AtomicBool>, Arc<AtomicBool>)>);

impl Drop for Suspect {
    fn drop(&mut self) {
        if let Some((dead, stalled)) = self.0.take() {
            stalled.store(true, Ordering::SeqCst);
            dead.store(true, Ordering::SeqCst);
        }
    }
}

fn waiters(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<oneshot::Sender<i64>>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeepAlives {
    /// One keep-alive of lease `id`.
    async fn renew(&self, ctx: &Context, id: i64) -> Result<Renewal> {
        loop {
            let (mut keeper, rx, dead, stalled) = {
                let mut slot = self.conn.lock().await;
                let live = slot.as_ref().filter(|c| !c.dead.load(Ordering::SeqCst));
                let Some(c) = live else {
                    if slot
                        .as_ref()
                        .is_some_and(|c| c.stalled.load(Ordering::SeqCst))
                    {
                        ctx.store().reconnect().await;
                    }
                    // Opening sends a first keep-alive of `id` and reads its answer.
                    return match open(ctx, id).await? {
                        Opened::Gone => Ok(Renewal::Gone),
                        Opened::Conn(c) => {
                            *slot = Some(c);
                            Ok(Renewal::Renewed)
                        }
                    };
                };
                let (tx, rx) = oneshot::channel();
                let mut w = waiters(&c.waiters);
                let q = w.entry(id).or_default();
                q.retain(|s| !s.is_closed());
                q.push(tx);
                let keeper = LeaseKeeper {
                    id,
                    sender: c.keeper.sender.clone(),
                };
                (keeper, rx, c.dead.clone(), c.stalled.clone())
            };
            let mut suspect = Suspect(Some((dead.clone(), stalled)));
            let answer = match keeper.keep_alive().await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            suspect.0 = None;
            match answer {
                Some(ttl) if ttl <= 0 => return Ok(Renewal::Gone),
                Some(_) => return Ok(Renewal::Renewed),
                // The stream broke (its member may be gone): reopen at once, through any
                // member that answers, within the same renewal.
                None => dead.store(true, Ordering::SeqCst),
            }
        }
    }
}

enum Opened {
    Conn(KaConn),
    Gone,
}

/// Opens a keep-alive stream with a first keep-alive of lease `id`, and starts its reader. A
/// member that cannot be reached is skipped (the renewal as a whole is bounded).
async fn open(ctx: &Context, id: i64) -> Result<Opened> {
    loop {
        let mut lc = ctx.store().client.lease_client();
        match lc.keep_alive(id).await {
            Ok((keeper, stream)) => {
                let (waiters, dead) = (
                    Arc::new(Waiters::default()),
                    Arc::new(AtomicBool::new(false)),
                );
                tokio::spawn(read(stream, waiters.clone(), dead.clone()));
                return Ok(Opened::Conn(KaConn {
                    keeper,
                    waiters,
                    dead,
                    stalled: Arc::new(AtomicBool::new(false)),
                }));
            }
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                return Ok(Opened::Gone)
            }
            Err(e) if not_sent(&e) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(map(e, Ctx::default())),
        }
    }
}

/// Hands each answer to the oldest renewal of its lease waiting for one, until the stream
/// ends (every clone of its request side dropped, or broken); then fails the waiting ones.
async fn read(mut stream: LeaseKeepAliveStream, w: Arc<Waiters>, dead: Arc<AtomicBool>) {
    while let Ok(Some(resp)) = stream.message().await {
        let mut all = waiters(&w);
        if let Some(q) = all.get_mut(&resp.0.id) {
            if !q.is_empty() {
                let _ = q.remove(0).send(resp.0.ttl);
            }
            if q.is_empty() {
                all.remove(&resp.0.id);
            }
        }
    }
    dead.store(true, Ordering::SeqCst);
    waiters(&w).clear();
}
