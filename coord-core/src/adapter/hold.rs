//! A role held on one key outside coord's layout (the etcd and Consul dialects'
//! [`DialectHold`]s): the monitor, with the same rules as the coord dialect's holder, over a
//! watch the adapter supplies ([`monitor_key`]), and the whole holder over the store-specific
//! operations of a [`HeldKey`] ([`KeyHold`]); the waiting and observing helpers of the
//! dialect drivers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::adapter::{check_value, Backoff, WatchScope};
use crate::error::{Error, Result};
use crate::kernel::{
    Capabilities, Guard, GuardFailure, KeyEvent, KeyWatch, Node, Session, SessionState,
    SessionStates, WriteOp, WriteResult,
};
use crate::path::Path;
use crate::recipes::dialect::DialectHold;
use crate::recipes::election::LeaderInfo;
use crate::recipes::{HoldState, SuspendPolicy};

/// The state of a held role now: `own` as the monitor last reported it, corrected by the
/// session's state read directly, so that a loss is seen the moment the session reports it.
pub fn hold_state(
    own: HoldState,
    released: bool,
    session: SessionState,
    policy: SuspendPolicy,
) -> HoldState {
    if own == HoldState::Lost || released {
        return HoldState::Lost;
    }
    match (session, policy) {
        (s, _) if s.is_final() => HoldState::Lost,
        (SessionState::Suspended, SuspendPolicy::LoseOnSuspend) => HoldState::Lost,
        (SessionState::Suspended, SuspendPolicy::TolerateSuspend) => HoldState::Suspended,
        _ => own,
    }
}

/// Follows the session and the held key until the role is gone; ends in Lost.
///
/// - `watch_key()` (re)watches the key: `None` when it is gone or no longer ours (or the
///   session ended); it is called again after a retryable watch error.
/// - `ours(node)` says whether a new state of the key still means we hold it (a Consul key
///   released by its session stays, with another holder or none).
/// - `hand_over()` runs when contact comes back after a suspension under
///   [`SuspendPolicy::LoseOnSuspend`]: we stopped acting as the holder, so we give the key up
///   now instead of at the session's expiry.
pub async fn monitor_key<W, WF, O, H, HF>(
    session: Arc<dyn Session>,
    policy: SuspendPolicy,
    watch_key: W,
    ours: O,
    hand_over: H,
    tx: watch::Sender<HoldState>,
) where
    W: Fn() -> WF + Send,
    WF: Future<Output = Option<KeyWatch>> + Send,
    O: Fn(&Node) -> bool + Send,
    H: FnOnce() -> HF + Send,
    HF: Future<Output = ()> + Send,
{
    let mut states = session.states();
    let mut gave_up = false;
    // The first watch follows the session too: a holder cut off right after its grant must
    // not wait for that request's timeout (partitions.rs, leader-side-cut (4|1) on etcd under
    // LoseOnSuspend: Lost came 3.5 s after Suspended, 5 s after the grant, after the successor).
    let mut events =
        match watch_following(watch_key(), &mut states, policy, &tx, &mut gave_up).await {
            Watched::Ready(ev) => ev,
            Watched::Done(Next::Handover) => return hand_over().await,
            Watched::Done(_) => return,
        };
    loop {
        tokio::select! {
            st = states.next() => match on_state(st, policy, &tx, &mut gave_up) {
                Next::Continue => {}
                Next::Handover => return hand_over().await,
                Next::Stop => return,
            },
            ev = events.next() => match ev {
                Some(Ok(KeyEvent::Changed(n) | KeyEvent::Created(n) | KeyEvent::Resync(Some(n))))
                    if ours(&n) => {}
                Some(Err(e)) if e.is_retryable() => {
                    // Watch again while the session lives, following the session meanwhile: a
                    // re-watch against an unreachable server ends only with its request
                    // timeout, and a suspension must not wait for that (a ZooKeeper partition
                    // test saw Lost come 5 s after Suspended, after the successor was elected).
                    match watch_following(watch_key(), &mut states, policy, &tx, &mut gave_up)
                        .await
                    {
                        Watched::Ready(ev) => events = ev,
                        Watched::Done(Next::Handover) => return hand_over().await,
                        Watched::Done(_) => return,
                    }
                }
                _ => {
                    // Deleted, taken over, or the watch ended.
                    tx.send_replace(HoldState::Lost);
                    return;
                }
            },
        }
    }
}

/// What [`watch_following`] ended with.
enum Watched {
    /// The key is watched again.
    Ready(KeyWatch),
    /// The monitor is done (`Stop`: Lost was published) or must hand the key over.
    Done(Next),
}

/// Runs `watch` (a `watch_key()`) while following the session's states; a key that is gone
/// publishes Lost.
async fn watch_following<WF>(
    watch: WF,
    states: &mut crate::kernel::SessionStates,
    policy: SuspendPolicy,
    tx: &watch::Sender<HoldState>,
    gave_up: &mut bool,
) -> Watched
where
    WF: Future<Output = Option<KeyWatch>>,
{
    tokio::pin!(watch);
    loop {
        tokio::select! {
            r = &mut watch => return match r {
                Some(ev) => Watched::Ready(ev),
                None => {
                    tx.send_replace(HoldState::Lost);
                    Watched::Done(Next::Stop)
                }
            },
            st = states.next() => match on_state(st, policy, tx, gave_up) {
                Next::Continue => {}
                done => return Watched::Done(done),
            },
        }
    }
}

/// What the monitor does next after a session state.
enum Next {
    /// Keep following.
    Continue,
    /// Contact is back after we gave the role up: hand the key over and stop.
    Handover,
    /// The session ended: the role is lost.
    Stop,
}

/// Publishes what session state `st` means for the role under `policy`.
fn on_state(
    st: Option<SessionState>,
    policy: SuspendPolicy,
    tx: &watch::Sender<HoldState>,
    gave_up: &mut bool,
) -> Next {
    match st {
        Some(SessionState::Connected) if *gave_up => Next::Handover,
        Some(SessionState::Connected) => {
            tx.send_replace(HoldState::Holding);
            Next::Continue
        }
        Some(SessionState::Suspended) => {
            match policy {
                SuspendPolicy::LoseOnSuspend => {
                    tx.send_replace(HoldState::Lost);
                    *gave_up = true;
                }
                SuspendPolicy::TolerateSuspend => {
                    tx.send_replace(HoldState::Suspended);
                }
            }
            Next::Continue
        }
        _ => {
            tx.send_replace(HoldState::Lost);
            Next::Stop
        }
    }
}

/// Runs `f` in the background if a runtime is there (for `Drop`, which cannot await).
pub fn spawn_detached<F: Future<Output = ()> + Send + 'static>(f: F) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(f);
    }
}

/// The store-specific side of a role held on one key outside coord's layout (a dialect
/// driver's holder key): how to watch the key, recognise it as ours, guard writes on it and
/// give it up. [`KeyHold`] does the rest.
#[async_trait]
pub trait HeldKey: Send + Sync + 'static {
    /// The key as a path (named in errors, [`DialectHold::node`]).
    fn node(&self) -> &Path;
    /// The backend's limits (for the values written to the key).
    fn caps(&self) -> &Capabilities;
    /// The fencing token now.
    fn token(&self) -> u64;
    /// The guard of the key as we last wrote it.
    fn guard(&self) -> Guard;
    /// Reads and watches the key: its node now (`None` if absent) and its later events.
    async fn watch(&self, scope: &WatchScope) -> Result<(Option<Node>, KeyWatch)>;
    /// Whether the key, now `node`, is still ours.
    fn ours(&self, node: &Node) -> bool;
    /// Rewrites the holder's value while the key is ours ([`Error::GuardFailed`] otherwise).
    async fn proclaim(&self, value: &[u8]) -> Result<()>;
    /// Runs `op` only while `guard` holds on the key, atomically in the store.
    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult>;
    /// Gives the key up if it is still ours (nothing otherwise).
    async fn release(&self) -> Result<()>;
}

/// A role held on a [`HeldKey`]: the monitor, the state and the release of every dialect
/// driver's holder, written once.
pub struct KeyHold<K: HeldKey> {
    key: Arc<K>,
    session: Arc<dyn Session>,
    policy: SuspendPolicy,
    state: watch::Receiver<HoldState>,
    monitor: tokio::task::JoinHandle<()>,
    released: bool,
}

impl<K: HeldKey> KeyHold<K> {
    /// Starts following `key`, held by `session` under `policy`.
    pub fn start(key: Arc<K>, session: Arc<dyn Session>, policy: SuspendPolicy) -> KeyHold<K> {
        let (tx, state) = watch::channel(HoldState::Holding);
        let (mkey, msession) = (key.clone(), session.clone());
        let monitor = tokio::spawn(async move {
            // The watch tasks live as long as the monitor.
            let scope = WatchScope::new();
            let watch_key = || watch_own(&*mkey, &scope, &*msession);
            let ours = |n: &Node| mkey.ours(n);
            let hand_over = || release_until_gone(mkey.clone(), msession.clone());
            monitor_key(msession.clone(), policy, watch_key, ours, hand_over, tx).await;
        });
        KeyHold {
            key,
            session,
            policy,
            state,
            monitor,
            released: false,
        }
    }
}

/// Watches `key`, retrying transient errors while the session lives; `None` when it is gone
/// or no longer ours.
async fn watch_own<K: HeldKey>(
    key: &K,
    scope: &WatchScope,
    session: &dyn Session,
) -> Option<KeyWatch> {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        match key.watch(scope).await {
            Ok((Some(n), ev)) if key.ours(&n) => return Some(ev),
            Ok(_) => return None,
            Err(e) if e.is_retryable() && !session.state().is_final() => backoff.wait().await,
            Err(_) => return None,
        }
    }
}

/// Gives `key` up, retrying transient errors while the session lives (a key left behind by a
/// live session blocks every later candidate).
async fn release_until_gone<K: HeldKey>(key: Arc<K>, session: Arc<dyn Session>) {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        match key.release().await {
            Err(e) if e.is_retryable() && !session.state().is_final() => backoff.wait().await,
            _ => return,
        }
    }
}

#[async_trait]
impl<K: HeldKey> DialectHold for KeyHold<K> {
    fn token(&self) -> u64 {
        self.key.token()
    }

    fn node(&self) -> &Path {
        self.key.node()
    }

    fn session(&self) -> Arc<dyn Session> {
        self.session.clone()
    }

    fn state(&self) -> HoldState {
        let own = *self.state.borrow();
        hold_state(own, self.released, self.session.state(), self.policy)
    }

    fn states(&self) -> watch::Receiver<HoldState> {
        self.state.clone()
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        check_value(self.key.caps(), value)?;
        let guard = self.key.guard();
        if self.state() == HoldState::Lost {
            return Err(guard.error(GuardFailure::Released));
        }
        self.key.proclaim(value).await.map_err(|e| match e {
            Error::GuardFailed { reason, .. } => guard.error(reason),
            e => e,
        })
    }

    async fn write_if_held(&self, op: &WriteOp) -> Result<WriteResult> {
        let guard = self.key.guard();
        if self.state() == HoldState::Lost {
            return Err(guard.error(GuardFailure::Released));
        }
        self.key.write_if(&guard, op).await
    }

    async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.monitor.abort();
        // A closed session took its keys with it.
        if self.session.state() == SessionState::Closed {
            return Ok(());
        }
        self.key.release().await.inspect_err(|_| {
            spawn_detached(release_until_gone(self.key.clone(), self.session.clone()))
        })
    }
}

impl<K: HeldKey> Drop for KeyHold<K> {
    fn drop(&mut self) {
        if !self.released {
            self.monitor.abort();
            spawn_detached(release_until_gone(self.key.clone(), self.session.clone()));
        }
    }
}

/// Gives a key up in the background if an acquire is abandoned while armed (cancel safety):
/// armed with the key a request may have made, disarmed once the acquire knows better.
pub struct ReleaseOnDrop<K: HeldKey> {
    session: Arc<dyn Session>,
    key: Option<Arc<K>>,
}

impl<K: HeldKey> ReleaseOnDrop<K> {
    /// Disarmed.
    pub fn new(session: Arc<dyn Session>) -> ReleaseOnDrop<K> {
        ReleaseOnDrop { session, key: None }
    }

    /// Releases `key` if dropped from now on.
    pub fn arm(&mut self, key: Arc<K>) {
        self.key = Some(key);
    }

    /// Releases nothing if dropped from now on.
    pub fn disarm(&mut self) {
        self.key = None;
    }
}

impl<K: HeldKey> Drop for ReleaseOnDrop<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            spawn_detached(release_until_gone(key, self.session.clone()));
        }
    }
}

/// Runs `fut` unless `session` ends first ([`Error::SessionExpired`] or the like, naming the
/// session, then): a waiting candidate learns of its session's end at once.
pub async fn unless_session_ends<F: Future>(
    session: &dyn Session,
    states: &mut SessionStates,
    fut: F,
) -> Result<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            st = states.next() => match st {
                Some(s) if s.is_final() => return Err(Error::session_gone(session.id(), s)),
                Some(_) => {}
                None => return Err(Error::session_gone(session.id(), session.state())),
            },
        }
    }
}

/// A dialect's [`DialectDriver::observe`](crate::recipes::dialect::DialectDriver::observe)
/// stream: `first`, then each holder of `updates` that differs from the last one yielded,
/// ending after the first error.
pub fn holder_stream<S>(first: Option<LeaderInfo>, updates: S) -> HolderStream
where
    S: Stream<Item = Result<Option<LeaderInfo>>> + Send + 'static,
{
    let state = (updates.boxed(), first.clone(), false);
    let rest = futures::stream::unfold(state, |(mut updates, mut last, failed)| async move {
        if failed {
            return None;
        }
        loop {
            match updates.next().await? {
                Err(e) => return Some((Err(e), (updates, last, true))),
                Ok(now) if now != last => {
                    last = now.clone();
                    return Some((Ok(now), (updates, last, false)));
                }
                Ok(_) => {}
            }
        }
    });
    futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed()
}

/// What [`holder_stream`] returns.
pub type HolderStream = BoxStream<'static, Result<Option<LeaderInfo>>>;

/// The raw key of `path` in `namespace` for keys outside coord's layout (a dialect's keys, a
/// native registry's): both joined, without the leading `/` (`/ns` and `/a/b` give `ns/a/b`).
pub fn raw_name(namespace: &str, path: &Path) -> String {
    let ns = namespace.trim_matches('/');
    let p = path.as_str().trim_start_matches('/');
    match (ns.is_empty(), p.is_empty()) {
        (true, _) => p.to_owned(),
        (false, true) => ns.to_owned(),
        (false, false) => format!("{ns}/{p}"),
    }
}
