//! Key and children watches over ZooKeeper's one-shot watches, shared per path.
//!
//! One driver task per kind (keys, children) serves every watch of a backend. For each
//! watched path it keeps one [`Entry`]: the state last reported, the queues of the coord
//! watches of that path ([`event_queue`]: no task and no channel per watch) and at most one
//! armed one-shot watcher on the main client. When the watcher fires, the driver reads the
//! state while arming the next one (one call: `get_and_watch_data`, `check_and_watch_stat`,
//! `get_and_watch_children`) and derives the events from the previous and the new snapshot
//! ([`KeySnapshot`] / [`ChildrenSnapshot`]: czxid is the creation stamp, mzxid the
//! modification stamp). Quick changes between two reads are coalesced into one event that
//! shows the latest state. Reads of one path never overlap: a trigger during a read asks for
//! one more read after it.
//!
//! A new watch of a path already watched reads the path again (without arming a second
//! watcher) and joins at that state, so that its first state is never older than a write
//! that returned before it; the other watches of the path get the events up to it.
//!
//! After a reconnect of the main client every path is read again and yields `Resync` if the
//! state differs from what was last reported (events may have been missed during the gap).
//! When the main session ended (the backend opens a new one) or a watcher was lost, the path
//! is re-armed on the new client and always yields `Resync`. A watch ends only when its
//! stream or the backend is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use coord_core::adapter::{
    event_queue, Backoff, ChildrenSnapshot, EventSender, KeySnapshot, WatchScope, WATCH_BUFFER,
};
use coord_core::kernel::{ChildrenWatch, KeyWatch};
use coord_core::{ChildrenEvent, Error, KeyEvent, Node, Path, Result};
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::client::Gate;
use crate::context::{stat_of, Context, Epoch, MainConn};
use crate::error::{self, Op, ZkResult};

/// Reads `path` and watches it (see the module docs).
pub(crate) async fn watch_key(ctx: &Context, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
    let hub = &ctx.watches;
    let (snap, rx) = subscribe(&hub.keys, &hub.bounds, path).await?;
    Ok((snap.map(|s| s.node), rx))
}

/// [`children_watch`] for callers that still pass a [`WatchScope`] (the native registry):
/// the watch lives as long as the backend's other watches, whatever the scope.
pub(crate) async fn watch_children(
    ctx: &Context,
    _scope: &WatchScope,
    path: &Path,
) -> Result<(Vec<String>, ChildrenWatch)> {
    children_watch(ctx, path).await
}

/// Lists `path`'s children and watches the list (see the module docs).
pub(crate) async fn children_watch(
    ctx: &Context,
    path: &Path,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let hub = &ctx.watches;
    let (snap, rx) = subscribe(&hub.children, &hub.bounds, path).await?;
    Ok((snap.visible(), rx))
}

/// The watch drivers of one backend. They end, and every watch stream with them, on
/// [`Hub::close`] or when the main client's sender is gone (the context dropped).
pub(crate) struct Hub {
    keys: mpsc::UnboundedSender<Subscribe<KeyKind>>,
    children: mpsc::UnboundedSender<Subscribe<ChildrenKind>>,
    bounds: Bounds,
    stop: watch::Sender<bool>,
}

impl Hub {
    /// Starts the drivers over the main clients `conns` gives.
    pub(crate) fn start(conns: watch::Receiver<MainConn>, timeout: Duration, hosts: &str) -> Hub {
        let bounds = Bounds {
            timeout,
            hosts: hosts.to_owned(),
        };
        let stop = watch::channel(false).0;
        Hub {
            keys: Driver::<KeyKind>::spawn(conns.clone(), bounds.clone(), stop.subscribe()),
            children: Driver::<ChildrenKind>::spawn(conns, bounds.clone(), stop.subscribe()),
            bounds,
            stop,
        }
    }

    /// Ends every watch (the backend is dropped).
    pub(crate) fn close(&self) {
        self.stop.send_replace(true);
    }
}

/// What errors are bounded by and name.
#[derive(Clone)]
struct Bounds {
    timeout: Duration,
    hosts: String,
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E>> + Send>>;
type Reply<K> =
    oneshot::Sender<Result<(<K as WatchKind>::Snap, EventStream<<K as WatchKind>::Event>)>>;

/// A request for a new watch of `path`.
struct Subscribe<K: WatchKind> {
    path: Path,
    reply: Reply<K>,
}

/// Asks the driver for a new watch and waits (within the timeout) for its first state.
async fn subscribe<K: WatchKind>(
    tx: &mpsc::UnboundedSender<Subscribe<K>>,
    bounds: &Bounds,
    path: &Path,
) -> Result<(K::Snap, EventStream<K::Event>)> {
    let (reply, rx) = oneshot::channel();
    let req = Subscribe {
        path: path.clone(),
        reply,
    };
    tx.send(req).map_err(|_| Error::Closed)?;
    match tokio::time::timeout(bounds.timeout, rx).await {
        Err(_) => Err(error::at(
            error::timeout("watch", path.as_str(), bounds.timeout),
            &bounds.hosts,
        )),
        Ok(Err(_)) => Err(Error::Closed),
        Ok(Ok(r)) => r,
    }
}

/// An armed watcher: resolves to `true` on a node event, `false` when the watcher was lost
/// (the session ended, or its client's task is gone).
async fn fired(w: zk::OneshotWatcher, gate: Arc<Gate>) -> bool {
    let mut changed = Box::pin(AssertUnwindSafe(w.changed()).catch_unwind());
    // Through the gate: the client never gets to unwrap a watcher its gone task dropped.
    // Any other panic of the client in there is a lost watcher too.
    match std::future::poll_fn(|cx| gate.poll(&mut changed, cx)).await {
        Some(Ok(ev)) => ev.event_type != zk::EventType::Session,
        Some(Err(_)) | None => false,
    }
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
    type Event: Clone + Send + coord_core::adapter::Collapse + 'static;

    /// Reads the state and arms a watcher, atomically.
    fn arm(
        c: zk::Client,
        path: Path,
    ) -> impl Future<Output = ZkResult<(Self::Snap, zk::OneshotWatcher)>> + Send;
    /// Reads the state without arming a watcher.
    fn read(c: zk::Client, path: Path) -> impl Future<Output = ZkResult<Self::Snap>> + Send;
    /// The events from `prev` to `new`.
    fn events(prev: &Self::Snap, new: &Self::Snap) -> Vec<Self::Event>;
    /// The resync event for the state `new`.
    fn resync(new: &Self::Snap) -> Self::Event;
}

struct KeyKind;

fn key_snapshot(path: Path, value: Vec<u8>, stat: &zk::Stat) -> Option<KeySnapshot> {
    Some(KeySnapshot {
        created: stamp(stat.czxid),
        modified: stamp(stat.mzxid),
        node: Node {
            path,
            value,
            stat: stat_of(stat),
        },
    })
}

impl WatchKind for KeyKind {
    type Snap = Option<KeySnapshot>;
    type Event = KeyEvent;

    async fn arm(c: zk::Client, path: Path) -> ZkResult<(Self::Snap, zk::OneshotWatcher)> {
        loop {
            match c.get_and_watch_data(path.as_str()).await {
                Ok((value, stat, w)) => return Ok((key_snapshot(path, value, &stat), w)),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            if let Some(w) = watch_absent(&c, path.as_str()).await? {
                return Ok((None, w));
            }
        }
    }

    async fn read(c: zk::Client, path: Path) -> ZkResult<Self::Snap> {
        match c.get_data(path.as_str()).await {
            Ok((value, stat)) => Ok(key_snapshot(path, value, &stat)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e),
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

fn children_snapshot(mut list: Vec<String>, stat: &zk::Stat) -> ChildrenSnapshot {
    list.sort();
    ChildrenSnapshot {
        parent: Some(stamp(stat.czxid)),
        list,
    }
}

impl WatchKind for ChildrenKind {
    type Snap = ChildrenSnapshot;
    type Event = ChildrenEvent;

    async fn arm(c: zk::Client, path: Path) -> ZkResult<(ChildrenSnapshot, zk::OneshotWatcher)> {
        loop {
            match c.get_and_watch_children(path.as_str()).await {
                Ok((list, stat, w)) => return Ok((children_snapshot(list, &stat), w)),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            if let Some(w) = watch_absent(&c, path.as_str()).await? {
                return Ok((ChildrenSnapshot::default(), w));
            }
        }
    }

    async fn read(c: zk::Client, path: Path) -> ZkResult<ChildrenSnapshot> {
        match c.get_children(path.as_str()).await {
            Ok((list, stat)) => Ok(children_snapshot(list, &stat)),
            Err(zk::Error::NoNode) => Ok(ChildrenSnapshot::default()),
            Err(e) => Err(e),
        }
    }

    fn events(prev: &ChildrenSnapshot, new: &ChildrenSnapshot) -> Vec<ChildrenEvent> {
        ChildrenSnapshot::events(prev, new)
    }

    fn resync(new: &ChildrenSnapshot) -> ChildrenEvent {
        ChildrenSnapshot::resync(new)
    }
}

/// One watched path.
struct Entry<K: WatchKind> {
    /// The state last reported (`None` before the first read).
    prev: Option<K::Snap>,
    /// The main client `prev` was read from.
    seen: Epoch,
    /// The queues of the watches of this path.
    subs: Vec<EventSender<K::Event>>,
    /// New watches waiting for the read in flight (it started after they asked).
    waiters: Vec<Reply<K>>,
    /// New watches that asked during a read: they wait for the next one (the read in flight
    /// may not show a write that returned before they asked).
    queued: Vec<Reply<K>>,
    /// Cancels the armed watcher (`None`: none is armed).
    armed: Option<AbortHandle>,
    /// A read is in flight.
    reading: bool,
    /// Read again when the read in flight is done.
    again: bool,
    /// A watcher was lost: the next read is reported as a `Resync`.
    force_resync: bool,
}

impl<K: WatchKind> Entry<K> {
    fn new(seen: Epoch) -> Entry<K> {
        Entry {
            prev: None,
            seen,
            subs: Vec::new(),
            waiters: Vec::new(),
            queued: Vec::new(),
            armed: None,
            reading: false,
            again: false,
            force_resync: false,
        }
    }

    /// Nobody watches this path any more.
    fn unused(&self) -> bool {
        self.waiters.is_empty()
            && self.queued.is_empty()
            && self.subs.iter().all(EventSender::is_closed)
    }

    /// Drops the armed watcher (zookeeper-client then forgets it).
    fn disarm(&mut self) {
        if let Some(h) = self.armed.take() {
            h.abort();
        }
    }

    /// The events from the last reported state to `snap`, read from the client at `epoch`.
    fn events(&mut self, epoch: Epoch, snap: &K::Snap) -> Vec<K::Event> {
        let new_session = self.force_resync || epoch.generation != self.seen.generation;
        let reconnected = epoch != self.seen;
        self.seen = epoch;
        self.force_resync = false;
        let Some(prev) = self.prev.as_ref() else {
            return vec![];
        };
        if new_session || (reconnected && prev != snap) {
            vec![K::resync(snap)]
        } else if reconnected {
            // The same state: nothing to report, and no event can have been missed.
            vec![]
        } else {
            K::events(prev, snap)
        }
    }

    /// Sends `events` to every watch of the path, forgetting the watches whose stream is gone.
    fn deliver(&mut self, events: &[K::Event]) {
        if events.is_empty() {
            return;
        }
        self.subs
            .retain(|tx| events.iter().all(|ev| tx.send(ev.clone())));
    }
}

/// An armed watcher of a path: `Some(fired)` (see [`fired`]), `None` if it was disarmed.
type Armed = Pin<Box<dyn Future<Output = Option<(Path, bool)>> + Send>>;
type Reading<K> = Pin<Box<dyn Future<Output = Done<K>> + Send>>;

/// A state read, with the watcher armed by the read if it was asked to arm one.
type Read<K> = (<K as WatchKind>::Snap, Option<zk::OneshotWatcher>);

/// A finished read: the path, the client it was read from, and the state with the watcher
/// it armed (if it was asked to arm one).
struct Done<K: WatchKind> {
    path: Path,
    epoch: Epoch,
    /// The gate of the client it was read from.
    gate: Arc<Gate>,
    /// `Err(bound)`: no answer within the bound.
    result: std::result::Result<ZkResult<Read<K>>, Duration>,
}

/// The task behind every watch of one kind.
struct Driver<K: WatchKind> {
    conns: watch::Receiver<MainConn>,
    bounds: Bounds,
    /// Boxed: an entry is ~230 bytes and the table keeps up to half of its slots empty
    /// (hashbrown grows by doubling), which at 10,000 watches was ~0.1 KiB a watch more
    /// than the boxes cost (bench item 7, heaptrack).
    entries: HashMap<Path, Box<Entry<K>>>,
    armed: FuturesUnordered<Armed>,
    reads: FuturesUnordered<Reading<K>>,
    /// Paths whose read failed, read again at `retry_at`.
    retry: Vec<Path>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// New watches since the last sweep of unused entries.
    since_sweep: usize,
}

impl<K: WatchKind> Driver<K> {
    fn spawn(
        conns: watch::Receiver<MainConn>,
        bounds: Bounds,
        stop: watch::Receiver<bool>,
    ) -> mpsc::UnboundedSender<Subscribe<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver::<K> {
            conns,
            bounds,
            entries: HashMap::new(),
            armed: FuturesUnordered::new(),
            reads: FuturesUnordered::new(),
            retry: Vec::new(),
            retry_at: None,
            backoff: Backoff::reconnect(),
            since_sweep: 0,
        };
        tokio::spawn(driver.run(rx, stop));
        tx
    }

    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Subscribe<K>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                req = requests.recv() => match req {
                    Some(req) => self.subscribe(req),
                    None => return,
                },
                Some(fired) = self.armed.next(), if !self.armed.is_empty() => {
                    if let Some((path, ok)) = fired {
                        self.fired(path, ok)
                    }
                }
                Some(done) = self.reads.next(), if !self.reads.is_empty() => self.done(done),
                r = self.conns.changed() => match r {
                    Ok(()) => self.reconnected(),
                    Err(_) => return,
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    for path in std::mem::take(&mut self.retry) {
                        self.read(&path);
                    }
                }
            }
        }
    }

    fn subscribe(&mut self, req: Subscribe<K>) {
        self.since_sweep += 1;
        if self.since_sweep >= self.entries.len().max(64) {
            self.sweep();
        }
        let seen = self.conns.borrow().epoch;
        let e = self
            .entries
            .entry(req.path.clone())
            .or_insert_with(|| Box::new(Entry::new(seen)));
        if e.reading {
            e.queued.push(req.reply);
        } else {
            e.waiters.push(req.reply);
        }
        self.read(&req.path);
    }

    /// Forgets the paths nobody watches any more (amortized: every time as many new watches
    /// as there are paths came in).
    fn sweep(&mut self) {
        self.since_sweep = 0;
        self.entries.retain(|_, e| {
            let keep = e.reading || !e.unused();
            if !keep {
                e.disarm();
            }
            keep
        });
    }

    /// Reads `path` now, or after the read in flight. Arms a watcher unless one is armed.
    fn read(&mut self, path: &Path) {
        let Some(e) = self.entries.get_mut(path) else {
            return;
        };
        if e.reading {
            e.again = true;
            return;
        }
        e.reading = true;
        let queued = std::mem::take(&mut e.queued);
        e.waiters.extend(queued);
        let arm = e.armed.is_none();
        let conn = self.conns.borrow().clone();
        let timeout = self.bounds.timeout;
        let path = path.clone();
        self.reads.push(Box::pin(async move {
            let gate = conn.gate();
            let c = conn.client;
            let p = path.clone();
            let read = async move {
                if arm {
                    K::arm(c, p).await.map(|(s, w)| (s, Some(w)))
                } else {
                    K::read(c, p).await.map(|s| (s, None))
                }
            };
            let result = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| timeout);
            Done {
                path,
                epoch: conn.epoch,
                gate,
                result,
            }
        }));
    }

    fn fired(&mut self, path: Path, ok: bool) {
        let Some(e) = self.entries.get_mut(&path) else {
            return;
        };
        e.armed = None;
        if !ok {
            e.force_resync = true;
        }
        self.read(&path);
    }

    /// The main client reconnected or was replaced: every path is read again.
    fn reconnected(&mut self) {
        let now = self.conns.borrow_and_update().epoch;
        let paths: Vec<Path> = self
            .entries
            .iter_mut()
            .map(|(p, e)| {
                if e.seen.client != now.client {
                    // The watcher is on the old client: arm a new one.
                    e.disarm();
                }
                p.clone()
            })
            .collect();
        for p in paths {
            self.read(&p);
        }
    }

    fn done(&mut self, done: Done<K>) {
        let Done {
            path,
            epoch,
            gate,
            result,
        } = done;
        let current = self.conns.borrow().epoch;
        let Some(e) = self.entries.get_mut(&path) else {
            return;
        };
        e.reading = false;
        match result {
            Ok(Ok((snap, w))) => {
                if let Some(w) = w {
                    if epoch.client == current.client {
                        let (handle, reg) = AbortHandle::new_pair();
                        let p = path.clone();
                        self.armed.push(Box::pin(async move {
                            Abortable::new(fired(w, gate), reg)
                                .await
                                .ok()
                                .map(|ok| (p, ok))
                        }));
                        e.armed = Some(handle);
                    } else {
                        // Read from a client replaced since: read again on the new one.
                        e.again = true;
                    }
                }
                let events = e.events(epoch, &snap);
                e.deliver(&events);
                for reply in e.waiters.drain(..) {
                    let (tx, rx) = event_queue::<K::Event>(WATCH_BUFFER);
                    let stream: EventStream<K::Event> = Box::pin(rx.map(Ok));
                    if reply.send(Ok((snap.clone(), stream))).is_ok() {
                        e.subs.push(tx);
                    }
                }
                e.prev = Some(snap);
                self.backoff.reset();
            }
            Ok(Err(err)) => {
                tracing::debug!("zk: reading the watched {path} failed: {err}");
                // A session that ended is replaced: new watches wait for it (within their
                // timeout); anything else fails them.
                if !matches!(err, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                    for reply in e.waiters.drain(..) {
                        let mapped = error::map(err.clone(), path.as_str(), Op::Other, None);
                        let _ = reply.send(Err(error::at(mapped, &self.bounds.hosts)));
                    }
                }
                self.retry_later(&path);
            }
            Err(after) => {
                tracing::debug!("zk: reading the watched {path} timed out");
                for reply in e.waiters.drain(..) {
                    let err = error::timeout("watch", path.as_str(), after);
                    let _ = reply.send(Err(error::at(err, &self.bounds.hosts)));
                }
                self.retry_later(&path);
            }
        }
        let Some(e) = self.entries.get_mut(&path) else {
            return;
        };
        if e.unused() && !e.reading {
            e.disarm();
            self.entries.remove(&path);
        } else if std::mem::take(&mut e.again) {
            self.read(&path);
        }
    }

    /// Reads `path` again after the back-off.
    fn retry_later(&mut self, path: &Path) {
        self.retry.push(path.clone());
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }
}
