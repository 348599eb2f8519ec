//! [`LeaderCache`]: who leads an election, kept up to date in the background and readable
//! without I/O.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::{Election, LeaderInfo};
use crate::adapter::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::SessionState;

/// How often the cache looks for the client's next session after the one it followed ended.
const SESSION_POLL: Duration = Duration::from_secs(1);

/// The observation stream of [`Election::observe`], boxed.
type Observed = Pin<Box<dyn Stream<Item = Result<Option<LeaderInfo>>> + Send>>;

/// How the cache's observation of the election is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// Following the election: [`LeaderCache::current`] changes with every leadership change.
    Live,
    /// Following failed with this error (a watch that broke or ended, a read that failed).
    /// The cache keeps the last leader it saw and retries with a back-off (50 ms doubling to
    /// 1 s, jittered); it is [`Live`](CacheState::Live) again after the next successful read.
    Retrying(Error),
}

/// What the background task publishes.
#[derive(Clone, Debug)]
struct Snapshot {
    /// Bumped on every change of the fields below.
    version: u64,
    leader: Option<LeaderInfo>,
    state: CacheState,
    /// The client's session is suspended (contact with the server lost).
    suspended: bool,
}

/// Stops the background task when the last clone of the cache goes.
struct Inner {
    rx: watch::Receiver<Snapshot>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The current leader of an election (value and fencing token), followed in the background
/// with [`Election::observe`] and readable without I/O. Cheap to clone (clones share one
/// background task, stopped when the last clone is dropped).
///
/// **Staleness.** [`LeaderCache::is_stale`] is true exactly when either
/// - the state is [`CacheState::Retrying`]: the watch failed or ended, or a re-read of the
///   leader failed, and no read has succeeded since (a watch that resyncs after a reconnect
///   re-reads the leader as part of the observation; a failure there lands here too), or
/// - the client's current session (if the client has one open; the cache opens none) is
///   [`SessionState::Suspended`]: contact with the server is lost, so changes may be missed
///   until it comes back. When that session ends the cache follows the client's next one.
///
/// A closed client whose watches fail shows as `Retrying` with the error: the cache never
/// stays silently stale.
pub struct LeaderCache {
    inner: Arc<Inner>,
    /// The version this handle last returned or was notified of (per clone).
    seen: AtomicU64,
}

impl Clone for LeaderCache {
    fn clone(&self) -> Self {
        LeaderCache {
            inner: self.inner.clone(),
            seen: AtomicU64::new(self.seen.load(Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Debug for LeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.rx.borrow();
        f.debug_struct("LeaderCache")
            .field("leader", &s.leader)
            .field("state", &s.state)
            .field("suspended", &s.suspended)
            .finish()
    }
}

impl Election {
    /// A [`LeaderCache`] of this election, returned once the current leader has been read.
    /// Does not campaign. Fails if the first read fails (nothing is left running then).
    pub async fn cache(&self) -> Result<LeaderCache> {
        let mut stream: Observed = Box::pin(self.observe().await?);
        let first = match stream.next().await {
            Some(Ok(leader)) => leader,
            Some(Err(e)) => return Err(e),
            None => return Err(watch_ended(self)),
        };
        let (tx, rx) = watch::channel(Snapshot {
            version: 0,
            leader: first,
            state: CacheState::Live,
            suspended: false,
        });
        let election = self.clone();
        let task = tokio::spawn(async move {
            tokio::join!(
                follow_leader(&election, stream, &tx),
                follow_session(election.client(), &tx),
            );
        });
        Ok(LeaderCache {
            inner: Arc::new(Inner { rx, task }),
            seen: AtomicU64::new(0),
        })
    }
}

impl LeaderCache {
    /// The leader as last seen (`None`: nobody leads), without I/O. Check
    /// [`LeaderCache::is_stale`] before trusting it for anything but display.
    pub fn current(&self) -> Option<LeaderInfo> {
        let s = self.inner.rx.borrow();
        self.seen.store(s.version, Ordering::Relaxed);
        s.leader.clone()
    }

    /// How the observation is doing (see [`CacheState`]).
    pub fn state(&self) -> CacheState {
        self.inner.rx.borrow().state.clone()
    }

    /// Whether [`LeaderCache::current`] may be out of date (see the type's documentation for
    /// exactly when).
    pub fn is_stale(&self) -> bool {
        let s = self.inner.rx.borrow();
        s.state != CacheState::Live || s.suspended
    }

    /// Resolves at the next change of the leader, the state or the staleness after the last
    /// one this handle returned from [`LeaderCache::current`] or was notified of here (a
    /// change in between is not missed).
    pub async fn changed(&self) {
        let seen = self.seen.load(Ordering::Relaxed);
        let mut rx = self.inner.rx.clone();
        let version = match rx.wait_for(|s| s.version > seen).await {
            Ok(s) => s.version,
            // The task is gone only with the runtime: nothing will change any more.
            Err(_) => return std::future::pending().await,
        };
        self.seen.fetch_max(version, Ordering::Relaxed);
    }
}

fn watch_ended(election: &Election) -> Error {
    Error::connection_lost(format!("the watch of election {} ended", election.path()))
}

/// Applies `f` and bumps the version if anything changed.
fn publish(tx: &watch::Sender<Snapshot>, f: impl FnOnce(&mut Snapshot)) {
    tx.send_if_modified(|s| {
        let before = (s.leader.clone(), s.state.clone(), s.suspended);
        f(s);
        let changed = before != (s.leader.clone(), s.state.clone(), s.suspended);
        if changed {
            s.version += 1;
        }
        changed
    });
}

/// Follows the leader; after a failure (reported as [`CacheState::Retrying`]) observes again
/// with a back-off, forever.
async fn follow_leader(election: &Election, mut stream: Observed, tx: &watch::Sender<Snapshot>) {
    let mut backoff = Backoff::reconnect().jittered();
    loop {
        let error = loop {
            match stream.next().await {
                Some(Ok(leader)) => {
                    publish(tx, |s| {
                        s.leader = leader;
                        s.state = CacheState::Live;
                    });
                    backoff.reset();
                }
                Some(Err(e)) => break e,
                None => break watch_ended(election),
            }
        };
        stream = reobserve(election, error, &mut backoff, tx).await;
    }
}

/// Reports `error`, then observes again (with a back-off) until that succeeds.
async fn reobserve(
    election: &Election,
    mut error: Error,
    backoff: &mut Backoff,
    tx: &watch::Sender<Snapshot>,
) -> Observed {
    loop {
        tracing::warn!(election = %election.path(), error = %error, "leader cache stale, retrying");
        publish(tx, |s| s.state = CacheState::Retrying(error.clone()));
        backoff.wait().await;
        match election.observe().await {
            Ok(s) => return Box::pin(s),
            Err(e) => error = e,
        }
    }
}

/// Follows the client's current session: `suspended` while it is suspended.
async fn follow_session(client: &Client, tx: &watch::Sender<Snapshot>) {
    loop {
        if let Some(session) = client.current_session().await {
            let mut states = session.states();
            while let Some(st) = states.next().await {
                publish(tx, |s| s.suspended = st == SessionState::Suspended);
                if st.is_final() {
                    break;
                }
            }
        }
        publish(tx, |s| s.suspended = false);
        tokio::time::sleep(SESSION_POLL).await;
    }
}
