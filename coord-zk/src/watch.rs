//! Key and children watches over ZooKeeper's one-shot watches.
//!
//! Each watch is a task: it holds one armed one-shot watcher; when it fires, the task reads
//! the current state while arming the next watcher (one call: `get_and_watch_data`,
//! `check_and_watch_stat`, `get_and_watch_children`), and derives the events from the
//! previous and the new snapshot ([`KeySnapshot`] / [`ChildrenSnapshot`]: czxid is the
//! creation stamp, mzxid the modification stamp). Quick changes between two reads are
//! coalesced into one event that shows the latest state.
//!
//! After a reconnect of the main client the task re-reads at once and yields `Resync` if the
//! state differs from what it last reported (events may have been missed during the gap).
//! When the main session expired (the backend opens a new one) or a watcher was lost, the
//! task re-arms on the new client and always yields `Resync`. A watch ends only when its
//! stream or the backend is dropped.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use coord_core::adapter::{Backoff, ChildrenSnapshot, KeySnapshot, WatchScope};
use coord_core::kernel::{ChildrenWatch, KeyWatch};
use coord_core::{ChildrenEvent, KeyEvent, Node, Path, Result};
use futures::{FutureExt, Stream};
use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::context::{stat_of, Context, Epoch, MainConn};
use crate::error::{Op, ZkResult};

/// Reads `path` and watches it (see the module docs).
pub(crate) async fn watch_key(
    ctx: &Context,
    scope: &WatchScope,
    path: &Path,
) -> Result<(Option<Node>, KeyWatch)> {
    let (snap, rx) = start::<KeyKind>(ctx, scope, path).await?;
    Ok((snap.map(|s| s.node), rx))
}

/// Lists `path`'s children and watches the list (see the module docs).
pub(crate) async fn watch_children(
    ctx: &Context,
    scope: &WatchScope,
    path: &Path,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let (snap, rx) = start::<ChildrenKind>(ctx, scope, path).await?;
    Ok((snap.visible(), rx))
}

/// An armed watcher: resolves to `true` on a node event, `false` when the watcher was lost
/// (the session ended).
type Fired = Pin<Box<dyn Future<Output = bool> + Send>>;

fn fired(w: zk::OneshotWatcher) -> Fired {
    Box::pin(async move {
        // zookeeper-client 0.11 unwraps the watcher's channel: a watcher whose client task
        // is gone panics instead of resolving. That is a lost watcher too.
        match AssertUnwindSafe(w.changed()).catch_unwind().await {
            Ok(ev) => ev.event_type != zk::EventType::Session,
            Err(_) => false,
        }
    })
}

/// A zxid as a snapshot stamp: the stamps are only compared, and the cast keeps them distinct.
fn stamp(zxid: i64) -> u64 {
    zxid as u64
}

/// After a read found no node: arms a watcher on its creation (`Some`), or `None` if it was
/// created in between (read it again, with its data).
async fn watch_absent(c: &zk::Client, path: &str) -> ZkResult<Option<zk::OneshotWatcher>> {
    match c.check_and_watch_stat(path).await? {
        (None, w) => Ok(Some(w)),
        (Some(_), _) => Ok(None),
    }
}

/// What a kind of watch reads and reports.
trait WatchKind: Send + 'static {
    type Snap: Clone + PartialEq + Send + Sync + 'static;
    type Event: Send + 'static;

    /// Reads the state and arms a watcher, atomically.
    fn arm(
        c: zk::Client,
        path: Path,
    ) -> impl Future<Output = ZkResult<(Self::Snap, zk::OneshotWatcher)>> + Send;
    /// The events from `prev` to `new`.
    fn events(prev: &Self::Snap, new: &Self::Snap) -> Vec<Self::Event>;
    /// The resync event for the state `new`.
    fn resync(new: &Self::Snap) -> Self::Event;
}

struct KeyKind;

impl WatchKind for KeyKind {
    type Snap = Option<KeySnapshot>;
    type Event = KeyEvent;

    async fn arm(c: zk::Client, path: Path) -> ZkResult<(Self::Snap, zk::OneshotWatcher)> {
        loop {
            match c.get_and_watch_data(path.as_str()).await {
                Ok((value, stat, w)) => {
                    let snap = KeySnapshot {
                        created: stamp(stat.czxid),
                        modified: stamp(stat.mzxid),
                        node: Node {
                            path,
                            value,
                            stat: stat_of(&stat),
                        },
                    };
                    return Ok((Some(snap), w));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            if let Some(w) = watch_absent(&c, path.as_str()).await? {
                return Ok((None, w));
            }
        }
    }

    fn events(prev: &Self::Snap, new: &Self::Snap) -> Vec<KeyEvent> {
        KeySnapshot::events(prev.as_ref(), new.as_ref())
    }

    fn resync(new: &Self::Snap) -> KeyEvent {
        KeySnapshot::resync(new.as_ref())
    }
}

struct ChildrenKind;

impl WatchKind for ChildrenKind {
    type Snap = ChildrenSnapshot;
    type Event = ChildrenEvent;

    async fn arm(c: zk::Client, path: Path) -> ZkResult<(ChildrenSnapshot, zk::OneshotWatcher)> {
        loop {
            match c.get_and_watch_children(path.as_str()).await {
                Ok((mut list, stat, w)) => {
                    list.sort();
                    let snap = ChildrenSnapshot {
                        parent: Some(stamp(stat.czxid)),
                        list,
                    };
                    return Ok((snap, w));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            if let Some(w) = watch_absent(&c, path.as_str()).await? {
                return Ok((ChildrenSnapshot::default(), w));
            }
        }
    }

    fn events(prev: &ChildrenSnapshot, new: &ChildrenSnapshot) -> Vec<ChildrenEvent> {
        ChildrenSnapshot::events(prev, new)
    }

    fn resync(new: &ChildrenSnapshot) -> ChildrenEvent {
        ChildrenSnapshot::resync(new)
    }
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E>> + Send>>;

/// Reads and arms through the main client, then hands the watcher to a task of `scope` (it
/// ends with the backend or the stream).
async fn start<K: WatchKind>(
    ctx: &Context,
    scope: &WatchScope,
    path: &Path,
) -> Result<(K::Snap, EventStream<K::Event>)> {
    let ((snap, w), epoch) = ctx
        .with_main("watch", path.as_str(), Op::Other, |c| {
            K::arm(c, path.clone())
        })
        .await?;
    let mut conns = ctx.conns();
    // Compare the epoch at once: the main client may have changed since the read.
    conns.mark_changed();
    let (timeout, prev) = (ctx.cfg.timeout, snap.clone());
    let rx = scope.spawn(|tx| {
        let task = Task::<K> {
            conns,
            timeout,
            path: path.clone(),
            prev,
            seen: epoch,
            tx,
            armed: Some(fired(w)),
            force_resync: false,
            backoff: Backoff::reconnect(),
        };
        task.run()
    });
    Ok((snap, rx))
}

/// One watch's task (see the module docs).
struct Task<K: WatchKind> {
    conns: watch::Receiver<MainConn>,
    timeout: Duration,
    path: Path,
    /// The state last reported.
    prev: K::Snap,
    /// The main client `prev` was read from.
    seen: Epoch,
    tx: mpsc::UnboundedSender<Result<K::Event>>,
    /// The armed watcher; `None` after a failed re-arm (retried after `backoff`).
    armed: Option<Fired>,
    /// Set when a watcher was lost: the next read is reported as a `Resync`.
    force_resync: bool,
    backoff: Backoff,
}

/// Why the task woke up.
enum Trigger {
    /// The main client is gone (the backend with it).
    Stop,
    /// The watcher fired.
    Fired,
    /// The watcher was lost with its session.
    Lost,
    /// The main client reconnected or was replaced.
    Conn,
    /// Time to retry a failed re-arm.
    Retry,
}

impl<K: WatchKind> Task<K> {
    async fn run(mut self) {
        loop {
            match self.trigger().await {
                Trigger::Stop => return,
                Trigger::Lost => {
                    self.armed = None;
                    self.force_resync = true;
                    continue;
                }
                // Nothing was missed while the watcher stays armed on the same connection.
                Trigger::Conn if self.armed.is_some() && self.conns.borrow().epoch == self.seen => {
                    continue
                }
                Trigger::Fired | Trigger::Conn | Trigger::Retry => {}
            }
            if !self.rearm().await {
                return;
            }
        }
    }

    async fn trigger(&mut self) -> Trigger {
        match self.armed.as_mut() {
            Some(f) => tokio::select! {
                ok = f => if ok { Trigger::Fired } else { Trigger::Lost },
                r = self.conns.changed() => if r.is_err() { Trigger::Stop } else { Trigger::Conn },
            },
            None => tokio::select! {
                _ = self.backoff.wait() => Trigger::Retry,
                r = self.conns.changed() => if r.is_err() { Trigger::Stop } else { Trigger::Conn },
            },
        }
    }

    /// Reads the state and arms the next watcher on the current main client, and sends the
    /// events since the last read. `false` when the stream is gone.
    async fn rearm(&mut self) -> bool {
        let conn = self.conns.borrow_and_update().clone();
        let read = K::arm(conn.client, self.path.clone());
        let (snap, w) = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!("zk: re-arming the watch on {} failed: {e}", self.path);
                self.armed = None;
                return true;
            }
            Err(_) => {
                tracing::debug!("zk: re-arming the watch on {} timed out", self.path);
                self.armed = None;
                return true;
            }
        };
        self.armed = Some(fired(w));
        self.backoff.reset();
        let events = self.events(conn.epoch, &snap);
        self.prev = snap;
        events.into_iter().all(|ev| self.tx.send(Ok(ev)).is_ok())
    }

    /// The events from the last reported state to `snap`, read from the client at `epoch`.
    fn events(&mut self, epoch: Epoch, snap: &K::Snap) -> Vec<K::Event> {
        let new_session = self.force_resync || epoch.generation != self.seen.generation;
        let reconnected = epoch != self.seen;
        self.seen = epoch;
        self.force_resync = false;
        if new_session || (reconnected && self.prev != *snap) {
            vec![K::resync(snap)]
        } else if reconnected {
            // The same state: nothing to report, and no event can have been missed.
            vec![]
        } else {
            K::events(&self.prev, snap)
        }
    }
}
