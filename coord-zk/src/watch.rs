//! Key and children watches over ZooKeeper's one-shot watches.
//!
//! Each watch is a task: it holds one armed one-shot watcher; when it fires, the task reads
//! the current state while arming the next watcher (one call: `get_and_watch_data`,
//! `check_and_watch_stat`, `get_and_watch_children`), and derives the events from the
//! previous and the new state. Quick changes between two reads are coalesced into one event
//! that shows the latest state.
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

use coord_core::kernel::{ChildrenWatch, KeyWatch};
use coord_core::{ChildrenEvent, KeyEvent, Node, Path, Result};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::backend::{stat_of, Epoch, MainConn, Shared};
use crate::error::{Op, ZkResult};

/// An armed watcher: resolves to `true` on a node event, `false` when the watcher was lost
/// (the session ended).
type Fired = Pin<Box<dyn Future<Output = bool> + Send>>;

fn fired(w: zk::OneshotWatcher) -> Fired {
    Box::pin(async move {
        match AssertUnwindSafe(w.changed()).catch_unwind().await {
            Ok(ev) => ev.event_type != zk::EventType::Session,
            Err(_) => false,
        }
    })
}

/// What a kind of watch reads and reports.
trait WatchKind: Send + 'static {
    type Snap: Clone + Send + Sync + 'static;
    type Event: Send + 'static;

    /// Reads the state and arms a watcher, atomically.
    fn arm(
        c: zk::Client,
        path: String,
    ) -> impl Future<Output = ZkResult<(Option<Self::Snap>, zk::OneshotWatcher)>> + Send;
    /// Whether two states differ.
    fn differs(prev: &Option<Self::Snap>, new: &Option<Self::Snap>) -> bool;
    /// The events from `prev` to `new`.
    fn derive(prev: &Option<Self::Snap>, new: &Option<Self::Snap>) -> Vec<Self::Event>;
    /// The resync event for the state `new`.
    fn resync(new: &Option<Self::Snap>) -> Self::Event;
}

#[derive(Clone)]
struct KeySnap {
    czxid: i64,
    mzxid: i64,
    node: Node,
}

struct KeyKind;

impl WatchKind for KeyKind {
    type Snap = KeySnap;
    type Event = KeyEvent;

    async fn arm(c: zk::Client, path: String) -> ZkResult<(Option<KeySnap>, zk::OneshotWatcher)> {
        let p = Path::new(&path).map_err(|e| zk::Error::UnexpectedError(e.to_string()))?;
        loop {
            match c.get_and_watch_data(&path).await {
                Ok((value, stat, w)) => {
                    let snap = KeySnap {
                        czxid: stat.czxid,
                        mzxid: stat.mzxid,
                        node: Node {
                            path: p,
                            value,
                            stat: stat_of(&stat),
                        },
                    };
                    return Ok((Some(snap), w));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            match c.check_and_watch_stat(&path).await? {
                (None, w) => return Ok((None, w)),
                // Created in between: read it with its data.
                (Some(_), _) => continue,
            }
        }
    }

    fn differs(prev: &Option<KeySnap>, new: &Option<KeySnap>) -> bool {
        match (prev, new) {
            (None, None) => false,
            (Some(a), Some(b)) => a.czxid != b.czxid || a.mzxid != b.mzxid,
            _ => true,
        }
    }

    fn derive(prev: &Option<KeySnap>, new: &Option<KeySnap>) -> Vec<KeyEvent> {
        match (prev, new) {
            (None, None) => vec![],
            (None, Some(b)) => vec![KeyEvent::Created(b.node.clone())],
            (Some(_), None) => vec![KeyEvent::Deleted],
            (Some(a), Some(b)) if a.czxid != b.czxid => {
                vec![KeyEvent::Deleted, KeyEvent::Created(b.node.clone())]
            }
            (Some(a), Some(b)) if a.mzxid != b.mzxid => vec![KeyEvent::Changed(b.node.clone())],
            _ => vec![],
        }
    }

    fn resync(new: &Option<KeySnap>) -> KeyEvent {
        KeyEvent::Resync(new.as_ref().map(|s| s.node.clone()))
    }
}

#[derive(Clone)]
struct ChildrenSnap {
    czxid: i64,
    list: Vec<String>,
}

struct ChildrenKind;

impl WatchKind for ChildrenKind {
    type Snap = ChildrenSnap;
    type Event = ChildrenEvent;

    async fn arm(
        c: zk::Client,
        path: String,
    ) -> ZkResult<(Option<ChildrenSnap>, zk::OneshotWatcher)> {
        loop {
            match c.get_and_watch_children(&path).await {
                Ok((mut list, stat, w)) => {
                    list.sort();
                    let snap = ChildrenSnap {
                        czxid: stat.czxid,
                        list,
                    };
                    return Ok((Some(snap), w));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            match c.check_and_watch_stat(&path).await? {
                (None, w) => return Ok((None, w)),
                (Some(_), _) => continue,
            }
        }
    }

    fn differs(prev: &Option<ChildrenSnap>, new: &Option<ChildrenSnap>) -> bool {
        match (prev, new) {
            (None, None) => false,
            (Some(a), Some(b)) => a.czxid != b.czxid || a.list != b.list,
            _ => true,
        }
    }

    fn derive(prev: &Option<ChildrenSnap>, new: &Option<ChildrenSnap>) -> Vec<ChildrenEvent> {
        match (prev, new) {
            (None, None) => vec![],
            (Some(_), None) => vec![ChildrenEvent::ParentDeleted],
            (None, Some(b)) if b.list.is_empty() => vec![],
            (None, Some(b)) => vec![ChildrenEvent::Changed(b.list.clone())],
            (Some(a), Some(b)) if a.czxid != b.czxid => {
                let mut v = vec![ChildrenEvent::ParentDeleted];
                if !b.list.is_empty() {
                    v.push(ChildrenEvent::Changed(b.list.clone()));
                }
                v
            }
            (Some(a), Some(b)) if a.list != b.list => vec![ChildrenEvent::Changed(b.list.clone())],
            _ => vec![],
        }
    }

    fn resync(new: &Option<ChildrenSnap>) -> ChildrenEvent {
        ChildrenEvent::Resync(new.as_ref().map(|s| s.list.clone()).unwrap_or_default())
    }
}

/// Reads `path` and watches it (see the module docs).
pub(crate) async fn watch_key(
    shared: &Shared,
    alive: watch::Receiver<()>,
    path: &Path,
) -> Result<(Option<Node>, KeyWatch)> {
    let (snap, rx) = start::<KeyKind>(shared, alive, path).await?;
    Ok((snap.map(|s| s.node), rx))
}

/// Lists `path`'s children and watches the list (see the module docs).
pub(crate) async fn watch_children(
    shared: &Shared,
    alive: watch::Receiver<()>,
    path: &Path,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let (snap, rx) = start::<ChildrenKind>(shared, alive, path).await?;
    Ok((snap.map(|s| s.list).unwrap_or_default(), rx))
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E>> + Send>>;

async fn start<K: WatchKind>(
    shared: &Shared,
    alive: watch::Receiver<()>,
    path: &Path,
) -> Result<(Option<K::Snap>, EventStream<K::Event>)> {
    let p = path.as_str().to_owned();
    let ((snap, w), epoch) = shared
        .with_main("watch", &p, Op::Other, |c| K::arm(c, p.clone()))
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut conns = shared.conns();
    // Compare the epoch at once: the main client may have changed since the read.
    conns.mark_changed();
    let task = Task::<K> {
        conns,
        alive,
        timeout: shared.cfg.timeout,
        path: p,
        prev: snap.clone(),
        seen: epoch,
        tx,
    };
    tokio::spawn(task.run(fired(w)));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed();
    Ok((snap, stream))
}

struct Task<K: WatchKind> {
    conns: watch::Receiver<MainConn>,
    alive: watch::Receiver<()>,
    timeout: Duration,
    path: String,
    prev: Option<K::Snap>,
    seen: Epoch,
    tx: mpsc::UnboundedSender<Result<K::Event>>,
}

enum Trigger {
    Stop,
    Fired(bool),
    Conn,
    Retry,
}

impl<K: WatchKind> Task<K> {
    async fn run(mut self, first: Fired) {
        let mut armed = Some(first);
        let mut force_resync = false;
        let mut backoff = Duration::from_millis(50);
        loop {
            let trigger = match armed.as_mut() {
                Some(f) => tokio::select! {
                    _ = self.tx.closed() => Trigger::Stop,
                    _ = self.alive.changed() => Trigger::Stop,
                    ok = f => Trigger::Fired(ok),
                    r = self.conns.changed() => if r.is_err() { Trigger::Stop } else { Trigger::Conn },
                },
                None => tokio::select! {
                    _ = self.tx.closed() => Trigger::Stop,
                    _ = self.alive.changed() => Trigger::Stop,
                    _ = tokio::time::sleep(backoff) => Trigger::Retry,
                    r = self.conns.changed() => if r.is_err() { Trigger::Stop } else { Trigger::Conn },
                },
            };
            match trigger {
                Trigger::Stop => return,
                Trigger::Fired(true) => {}
                Trigger::Fired(false) => {
                    armed = None;
                    force_resync = true;
                    continue;
                }
                Trigger::Conn => {
                    if armed.is_some() && self.conns.borrow().epoch == self.seen {
                        continue;
                    }
                }
                Trigger::Retry => backoff = (backoff * 2).min(Duration::from_secs(1)),
            }
            let conn = self.conns.borrow_and_update().clone();
            let read =
                tokio::time::timeout(self.timeout, K::arm(conn.client.clone(), self.path.clone()))
                    .await;
            match read {
                Ok(Ok((snap, w))) => {
                    armed = Some(fired(w));
                    backoff = Duration::from_millis(50);
                    let new_session = force_resync || conn.epoch.generation != self.seen.generation;
                    let reconnected = conn.epoch != self.seen;
                    self.seen = conn.epoch;
                    force_resync = false;
                    let events = if new_session || (reconnected && K::differs(&self.prev, &snap)) {
                        vec![K::resync(&snap)]
                    } else if reconnected {
                        vec![]
                    } else {
                        K::derive(&self.prev, &snap)
                    };
                    self.prev = snap;
                    for ev in events {
                        if self.tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!("zk: re-arming the watch on {} failed: {e}", self.path);
                    armed = None;
                }
                Err(_) => {
                    tracing::debug!("zk: re-arming the watch on {} timed out", self.path);
                    armed = None;
                }
            }
        }
    }
}
