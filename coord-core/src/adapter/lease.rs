//! The lifecycle of a session that the client keeps alive itself (etcd leases, Consul sessions
//! bound to an agent TTL check), written once: [`LeaseSession`] over a [`Lease`], the few steps
//! each store supplies.
//!
//! - **Keep-alive**: a task renews every [`Timing::interval`] (a steady rate: a late renewal
//!   does not shift the later ones), each renewal bounded by [`Timing::step_timeout`]. A
//!   failure makes the session `Suspended` and the next try comes [`Timing::retry`] later; a
//!   success makes it `Connected` again. `Expired` when the store says the session is gone
//!   ([`Renewal::Gone`], [`Error::SessionExpired`], or [`Lease::ended`] for a store that can
//!   observe it), or when no renewal succeeded for [`Timing::deadline`] after the last
//!   successful one was sent; the lease is then revoked in the background to be sure.
//! - **Close**: `Closed` first (owners learn it before their ephemerals go), then the lease is
//!   revoked; idempotent, `Ok` if the session had already expired.
//! - **Drop** of the last handle: `Closed` and a revoke in the background (if a tokio runtime
//!   is there), unless the session was crashed or had expired.
//! - **Crash** (for tests): renewing stops, nothing is revoked, the store ends the session
//!   after its TTL; the end is still observed ([`Lease::ended`]) where the store can.
//! - **Create** goes through the store's tree with the session as owner; the store's "owner
//!   gone" ([`Error::SessionExpired`]) makes the session `Expired`.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::state::wait_until;
use super::{RawSession, StateCell};
use crate::error::{Error, Result};
use crate::kernel::{Capabilities, CreateMode, Created, SessionId, SessionState, SessionStates};
use crate::path::Path;

/// The keep-alive cadence of a [`Lease`] (each store's tuned figures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Between the starts of two renewals while they succeed.
    pub interval: Duration,
    /// Between the start of a failed renewal and the next try.
    pub retry: Duration,
    /// The bound of one renewal: one that takes longer has failed.
    pub step_timeout: Duration,
    /// How long after the last successful renewal was sent the store ends the session at the
    /// earliest: with no success for that long the session is reported `Expired` (and never a
    /// retry is scheduled past it). `None`: the store's word only ([`Renewal::Gone`],
    /// [`Lease::ended`]).
    pub deadline: Option<Duration>,
}

/// What one renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The session lives on.
    Renewed,
    /// The store no longer knows the session.
    Gone,
}

/// What a store does for a [`LeaseSession`]: the single steps of its lifecycle, on the
/// session the store granted. The lifecycle itself (states, the keep-alive task, close,
/// drop, crash) is [`LeaseSession`]'s.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// The keep-alive cadence.
    fn timing(&self) -> Timing;
    /// One keep-alive. `recovering`: the last one failed (the session is Suspended), so a
    /// store that can lose the session while renewals fail checks that it still exists. An
    /// error is transient (Suspended), except [`Error::SessionExpired`] (gone).
    async fn renew(&self, recovering: bool) -> Result<Renewal>;
    /// Ends the session in the store now (its ephemerals go). An already ended session is
    /// fine (`Ok` or [`Error::SessionExpired`]).
    async fn revoke(&self) -> Result<()>;
    /// Resolves when the store reports that the session ended (a blocking query on it).
    /// Runs once, beside the renewals, until the session is final. The default never
    /// resolves: a store that cannot observe the end learns it from [`Lease::renew`].
    async fn ended(&self) {
        std::future::pending::<()>().await
    }
    /// Creates `path` through the store's tree, owned by this session. The store answers
    /// [`Error::SessionExpired`] when it no longer knows the session.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created>;
}

/// What the background task still does: renew and observe, only observe (crashed), nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Run {
    All,
    ObserveOnly,
    Nothing,
}

/// A [`Run`] that only winds down, and a wake-up for the task when it does. An atomic and a
/// `Notify` inside the session's allocation, not a `watch` channel: that would be one more
/// allocation of ~340 bytes per session (bench item 7, 1,000 idle sessions).
struct RunCell {
    run: AtomicU8,
    changed: Notify,
}

impl RunCell {
    fn new() -> RunCell {
        RunCell {
            run: AtomicU8::new(Run::All as u8),
            changed: Notify::new(),
        }
    }

    fn get(&self) -> Run {
        match self.run.load(Ordering::SeqCst) {
            0 => Run::All,
            1 => Run::ObserveOnly,
            _ => Run::Nothing,
        }
    }

    /// Winds down to `to` (never back up).
    fn stop(&self, to: Run) {
        if self.run.fetch_max(to as u8, Ordering::SeqCst) < to as u8 {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once `done` holds for the current [`Run`].
    async fn until(&self, done: impl Fn(Run) -> bool) {
        wait_until(&self.changed, || done(self.get())).await
    }
}

/// What a handle and its background task share.
struct Shared<L> {
    lease: L,
    id: SessionId,
    ttl: Duration,
    caps: Capabilities,
    state: StateCell,
    run: RunCell,
    crashed: AtomicBool,
    /// Whether the lease has been revoked (held during a revoke: one at a time).
    revoked: Mutex<bool>,
}

impl<L: Lease> Shared<L> {
    /// Winds the task down to `to` (never back up).
    fn stop(&self, to: Run) {
        self.run.stop(to);
    }

    /// The store ended the session (or will): Expired, the task stops, and the lease is
    /// revoked in the background to be sure (and to clean up what the store keeps for it).
    fn expire(self: &Arc<Self>, why: &str) {
        if self.state.advance(SessionState::Expired) {
            tracing::info!(session = %self.id, "session expired: {why}");
            self.stop(Run::Nothing);
            self.revoke_in_background();
        }
    }

    /// Revokes unless already done; the store's "already gone" counts as done.
    async fn revoke_once(&self) -> Result<()> {
        let mut revoked = self.revoked.lock().await;
        if *revoked {
            return Ok(());
        }
        match self.lease.revoke().await {
            Ok(()) | Err(Error::SessionExpired { .. }) => {
                *revoked = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn revoke_in_background(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let sh = self.clone();
            rt.spawn(async move {
                if let Err(e) = sh.revoke_once().await {
                    tracing::debug!(session = %sh.id, error = %e, "revoke failed (the store ends the session after its TTL)");
                }
            });
        }
    }
}

/// A session kept alive by the client: the lifecycle of the module docs over the store's
/// [`Lease`]. An adapter names it with a type of its own ([`LeaseHandle`]).
pub struct LeaseSession<L: Lease> {
    shared: Arc<Shared<L>>,
}

impl<L: Lease> std::fmt::Debug for LeaseSession<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSession")
            .field("id", &self.shared.id)
            .field("ttl", &self.shared.ttl)
            .field("state", &self.shared.state.get())
            .finish()
    }
}

impl<L: Lease> LeaseSession<L> {
    /// A Connected session `id` of `ttl` on `lease`, granted by a request sent at
    /// `granted_at` (the deadline and the renewals count from there), with its keep-alive
    /// task started.
    /// Needs a tokio runtime.
    pub fn start(
        lease: L,
        id: SessionId,
        ttl: Duration,
        caps: Capabilities,
        granted_at: Instant,
    ) -> LeaseSession<L> {
        let shared = Arc::new(Shared {
            lease,
            id,
            ttl,
            caps,
            state: StateCell::new(SessionState::Connected),
            run: RunCell::new(),
            crashed: AtomicBool::new(false),
            revoked: Mutex::new(false),
        });
        tokio::spawn(background(shared.clone(), granted_at));
        LeaseSession { shared }
    }

    /// The store's lease.
    pub fn lease(&self) -> &L {
        &self.shared.lease
    }

    /// Simulates a crashed client (for tests): renewing stops without a revoke, so the store
    /// ends the session, and with it every ephemeral, after its TTL. The state is left as it
    /// is unless the store's end is observed ([`Lease::ended`]); dropping the handle no
    /// longer revokes.
    pub fn crash(&self) {
        self.shared.crashed.store(true, Ordering::SeqCst);
        self.shared.stop(Run::ObserveOnly);
    }
}

/// The keep-alive and the observer of one session, until it is final or stopped.
async fn background<L: Lease>(sh: Arc<Shared<L>>, granted_at: Instant) {
    let observe = async {
        sh.lease.ended().await;
        sh.expire("the store ended it");
    };
    let renew = async {
        keep_alive(&sh, granted_at).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = sh.run.until(|r| r == Run::Nothing) => {}
        _ = observe => {}
        _ = renew => {}
    }
}

/// Renews at the lease's cadence; returns when crashed or final.
async fn keep_alive<L: Lease>(sh: &Arc<Shared<L>>, granted_at: Instant) {
    let t = sh.lease.timing();
    let mut deadline = t.deadline.map(|d| granted_at + d);
    // A cadence after the grant, not after the start: opening can take a good part of the
    // TTL (Consul: the session is created while its check is already counting down), and a
    // first renewal a whole interval later could come after the store gave up on the lease.
    let mut slot = granted_at + t.interval;
    loop {
        tokio::select! {
            _ = sh.run.until(|r| r != Run::All) => return,
            _ = tokio::time::sleep_until(slot) => {}
        }
        if sh.state.get().is_final() {
            return;
        }
        let sent = Instant::now();
        let recovering = sh.state.get() == SessionState::Suspended;
        let r = tokio::select! {
            _ = sh.run.until(|r| r != Run::All) => return,
            r = tokio::time::timeout(t.step_timeout, sh.lease.renew(recovering)) => r,
        };
        let pause = match r {
            Ok(Ok(Renewal::Renewed)) => {
                deadline = t.deadline.map(|d| sent + d);
                sh.state.advance(SessionState::Connected);
                t.interval
            }
            Ok(Ok(Renewal::Gone)) | Ok(Err(Error::SessionExpired { .. })) => {
                sh.expire("the store no longer knows it");
                return;
            }
            Ok(Err(_)) | Err(_) => {
                if let Ok(Err(e)) = &r {
                    tracing::debug!(session = %sh.id, error = %e, "keep-alive failed");
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    sh.expire("no renewal succeeded within the deadline");
                    return;
                }
                if sh.state.advance(SessionState::Suspended) {
                    tracing::warn!(session = %sh.id, "session suspended: keep-alive failed");
                }
                t.retry
            }
        };
        // A steady rate; after a late wake-up, start again from now.
        slot += pause;
        if slot < sent {
            slot = sent + pause;
        }
        if let Some(d) = deadline {
            slot = slot.min(d);
        }
    }
}

/// An adapter's session type: a [`LeaseSession`] under a name of its own, so that it can
/// have methods of its own (`EtcdSession::lease_id`) and users can downcast to it. It is a
/// [`RawSession`] (and so a [`Session`](crate::Session)) through the session it wraps;
/// `as_any` gives the handle itself.
pub trait LeaseHandle: Send + Sync + 'static {
    /// The store's lease.
    type Lease: Lease;
    /// The wrapped session.
    fn lease_session(&self) -> &LeaseSession<Self::Lease>;
}

/// Declares an adapter's session type: a newtype over [`LeaseSession`] that is a
/// [`LeaseHandle`] (so a `Session`), with the attributes and doc comments given.
#[macro_export]
macro_rules! lease_session_type {
    ($(#[$m:meta])* $vis:vis struct $name:ident($lease:ty);) => {
        $(#[$m])*
        #[derive(Debug)]
        $vis struct $name($crate::adapter::LeaseSession<$lease>);

        impl $crate::adapter::LeaseHandle for $name {
            type Lease = $lease;

            fn lease_session(&self) -> &$crate::adapter::LeaseSession<$lease> {
                &self.0
            }
        }
    };
}

impl<L: Lease> LeaseHandle for LeaseSession<L> {
    type Lease = L;

    fn lease_session(&self) -> &LeaseSession<L> {
        self
    }
}

#[async_trait]
impl<H: LeaseHandle> RawSession for H {
    fn capabilities(&self) -> &Capabilities {
        &self.lease_session().shared.caps
    }

    fn id(&self) -> &SessionId {
        &self.lease_session().shared.id
    }

    fn ttl(&self) -> Duration {
        self.lease_session().shared.ttl
    }

    fn state(&self) -> SessionState {
        self.lease_session().shared.state.get()
    }

    fn states(&self) -> SessionStates {
        self.lease_session().shared.state.states()
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let sh = &self.lease_session().shared;
        let r = sh.lease.create(path, value, mode).await;
        if let Err(Error::SessionExpired { .. }) = &r {
            sh.expire("the store refused it as an owner");
            return Err(Error::session_gone(&sh.id, sh.state.get()));
        }
        r
    }

    async fn close(&self) -> Result<()> {
        let sh = &self.lease_session().shared;
        // Owners learn it first, then the ephemerals go.
        sh.state.advance(SessionState::Closed);
        sh.stop(Run::Nothing);
        if sh.state.get() == SessionState::Expired {
            // Revoked (or being revoked) by the expiry.
            return Ok(());
        }
        sh.revoke_once().await
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<L: Lease> Drop for LeaseSession<L> {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.stop(Run::Nothing);
        if sh.crashed.load(Ordering::SeqCst) || sh.state.get() == SessionState::Expired {
            return;
        }
        sh.state.advance(SessionState::Closed);
        // Not when a close revoked it already, nor while one is revoking it.
        if sh.revoked.try_lock().is_ok_and(|done| !*done) {
            sh.revoke_in_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use tokio::time::sleep;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What the fake store was asked, and how it answers.
    #[derive(Debug, Default)]
    struct Probe {
        renews: AtomicUsize,
        revokes: AtomicUsize,
        creates: AtomicUsize,
        fail: AtomicBool,
        gone: AtomicBool,
        end: tokio::sync::Notify,
    }

    struct Fake {
        probe: Arc<Probe>,
    }

    #[async_trait]
    impl Lease for Fake {
        /// etcd's figures for a 1 s TTL.
        fn timing(&self) -> Timing {
            Timing {
                interval: ms(333),
                retry: ms(166),
                step_timeout: ms(500),
                deadline: Some(ms(1000)),
            }
        }
        async fn renew(&self, _recovering: bool) -> Result<Renewal> {
            self.probe.renews.fetch_add(1, Ordering::SeqCst);
            if self.probe.gone.load(Ordering::SeqCst) {
                return Ok(Renewal::Gone);
            }
            if self.probe.fail.load(Ordering::SeqCst) {
                return Err(Error::timeout("renew"));
            }
            Ok(Renewal::Renewed)
        }
        async fn revoke(&self) -> Result<()> {
            self.probe.revokes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn ended(&self) {
            self.probe.end.notified().await
        }
        async fn create(&self, path: &Path, _: &[u8], _: CreateMode) -> Result<Created> {
            self.probe.creates.fetch_add(1, Ordering::SeqCst);
            if self.probe.gone.load(Ordering::SeqCst) {
                return Err(Error::SessionExpired {
                    session: "fake".into(),
                });
            }
            Ok(Created {
                path: path.clone(),
                sequence: None,
                stat: crate::kernel::Stat::new(crate::kernel::Version(1), None),
            })
        }
    }

    fn open() -> (LeaseSession<Fake>, Arc<Probe>) {
        open_granted_at(Instant::now())
    }

    fn open_granted_at(granted_at: Instant) -> (LeaseSession<Fake>, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        let lease = Fake {
            probe: probe.clone(),
        };
        let (id, caps) = (SessionId("fake".into()), Capabilities::new("fake"));
        let s = LeaseSession::start(lease, id, ms(1000), caps, granted_at);
        (s, probe)
    }

    fn count(c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }

    async fn create(s: &LeaseSession<Fake>) -> Result<Created> {
        // Through the kernel trait: with the shared checks (a final session is refused).
        crate::kernel::Session::create(s, &Path::new("/e").unwrap(), b"", CreateMode::Exact).await
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_suspend_then_expire_and_revoke() {
        let (s, p) = open();
        sleep(ms(1100)).await;
        assert_eq!(s.state(), SessionState::Connected);
        assert_eq!(count(&p.renews), 3, "every 333 ms");
        // A short outage: Suspended, then Connected at the next success.
        p.fail.store(true, Ordering::SeqCst);
        sleep(ms(300)).await; // 1400: the renewal at 1333 failed
        assert_eq!(s.state(), SessionState::Suspended);
        p.fail.store(false, Ordering::SeqCst);
        sleep(ms(150)).await; // 1550: the retry at 1499 succeeded
        assert_eq!(s.state(), SessionState::Connected);
        // A long one: the last success was sent at 1499; Expired at 2499, not before.
        p.fail.store(true, Ordering::SeqCst);
        sleep(ms(900)).await; // 2450
        assert_eq!(s.state(), SessionState::Suspended);
        assert_eq!(count(&p.revokes), 0);
        sleep(ms(100)).await; // 2550
        assert_eq!(s.state(), SessionState::Expired);
        assert_eq!(count(&p.revokes), 1, "revoked to be sure");
        // No more renewals, creates refused before reaching the store, close is a no-op.
        let renews = count(&p.renews);
        sleep(ms(5000)).await;
        assert_eq!(count(&p.renews), renews);
        assert!(matches!(
            create(&s).await,
            Err(Error::SessionExpired { .. })
        ));
        assert_eq!(count(&p.creates), 0);
        s.close().await.unwrap();
        drop(s);
        sleep(ms(10)).await;
        assert_eq!(count(&p.revokes), 1);
    }

    /// The renewals keep the grant's cadence, not the start's: a session whose opening took
    /// most of the first interval renews at once (Consul: its check counts down from its
    /// registration, and a session started late lost it before its first pass).
    #[tokio::test(start_paused = true)]
    async fn renewals_count_from_the_grant() {
        let granted_at = Instant::now();
        sleep(ms(300)).await;
        let (s, probe) = open_granted_at(granted_at);
        sleep(ms(40)).await; // 340: the first renewal was due at 333, not at 633
        assert_eq!(count(&probe.renews), 1);
        sleep(ms(300)).await; // 640
        assert_eq!(
            count(&probe.renews),
            1,
            "then every 333 ms: the next at 666"
        );
        sleep(ms(40)).await; // 680
        assert_eq!(count(&probe.renews), 2);
        assert_eq!(s.state(), SessionState::Connected);
    }

    #[tokio::test(start_paused = true)]
    async fn close_is_closed_first_and_revokes_once() {
        let (s, p) = open();
        create(&s).await.unwrap();
        let mut states = s.states();
        assert_eq!(
            futures::StreamExt::next(&mut states).await,
            Some(SessionState::Connected)
        );
        s.close().await.unwrap();
        assert_eq!(s.state(), SessionState::Closed);
        assert_eq!(
            futures::StreamExt::next(&mut states).await,
            Some(SessionState::Closed)
        );
        s.close().await.unwrap();
        assert!(matches!(create(&s).await, Err(Error::SessionClosed { .. })));
        let renews = count(&p.renews);
        sleep(ms(5000)).await;
        assert_eq!(count(&p.renews), renews, "no renewal after close");
        drop(s);
        sleep(ms(10)).await;
        assert_eq!(count(&p.revokes), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_closes_and_revokes_in_the_background() {
        let (s, p) = open();
        let mut states = s.states();
        drop(s);
        sleep(ms(10)).await;
        assert_eq!(count(&p.revokes), 1);
        let mut last = None;
        while let Some(st) = futures::StreamExt::next(&mut states).await {
            last = Some(st);
        }
        assert_eq!(last, Some(SessionState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn crash_stops_renewing_without_revoking() {
        let (s, p) = open();
        sleep(ms(500)).await;
        s.crash();
        let renews = count(&p.renews);
        sleep(ms(5000)).await;
        assert_eq!(count(&p.renews), renews);
        assert_eq!(
            s.state(),
            SessionState::Connected,
            "nobody is left to notice"
        );
        drop(s);
        sleep(ms(10)).await;
        assert_eq!(count(&p.revokes), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_ending_it_expires_at_once() {
        // A renewal answering "gone".
        let (s, p) = open();
        p.gone.store(true, Ordering::SeqCst);
        sleep(ms(400)).await;
        assert_eq!(s.state(), SessionState::Expired);
        assert_eq!(count(&p.revokes), 1);
        // A create refused because the owner is gone.
        let (s, p) = open();
        p.gone.store(true, Ordering::SeqCst);
        assert!(matches!(
            create(&s).await,
            Err(Error::SessionExpired { .. })
        ));
        assert_eq!(s.state(), SessionState::Expired);
        sleep(ms(10)).await;
        assert_eq!((count(&p.revokes), count(&p.renews)), (1, 0));
        // The store's end, observed (even after a crash: the observer keeps watching).
        let (s, p) = open();
        s.crash();
        p.end.notify_one();
        sleep(ms(10)).await;
        assert_eq!(s.state(), SessionState::Expired);
        assert_eq!(count(&p.revokes), 1);
    }
}
