//! Shared watch streams: every key and children watch of one backend is a watcher (an etcd
//! watch id) on one of a few gRPC watch streams, instead of a stream and a task of its own.
//!
//! - A stream carries up to [`PER_STREAM`] watches; a reader task per stream hands each
//!   response to the watch its id names ([`Entry`]), which applies it with its [`Logic`] and
//!   queues what to deliver in its own bounded queue (`event_queue`; a consumer that falls
//!   behind gets one `Resync` of the newest state, never a silent loss): a slow consumer
//!   delays nobody.
//! - A compaction of the revision a watch needs (or an order its logic cannot trust) resyncs
//!   that watch only: its watchers are cancelled, it re-reads, yields `Resync` and is added
//!   again from the read's revision + 1.
//! - A broken stream moves its watches to a fresh stream, each resuming from its own last
//!   revision + 1 (a compacted one then resyncs that watch as above).
//! - Watches whose consumer is gone are cancelled when an event finds them, and by a sweep
//!   every [`SWEEP`]; a stream left without watches is closed.
//! - Dropping the hub (the backend) ends its tasks, and with them every watch's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use coord_core::adapter::{Backoff, Collapse};
use coord_core::{Error, Result};
use etcd_client::proto::{PbEvent, PbKeyValue, PbWatchResponse};
use etcd_client::{WatchOptions, WatchRequestSender, WatchResponseStream};
use tokio::sync::watch;

use crate::context::{Context, Range, MAX_DECODE};
use crate::error::{bounded, Ctx};
use crate::watch::{event_rev, Logic, Step, Tx};

/// The most watches one stream carries (a compaction or a break touches at most these).
const PER_STREAM: usize = 1000;
/// How often a stream's reader drops the watches whose consumer is gone.
const SWEEP: Duration = Duration::from_secs(5);

/// What the hub needs of a watch, whatever its events' type.
trait Sink: Send {
    /// Applies one event of range `idx`.
    fn on_event(&mut self, idx: usize, ev: &PbEvent) -> Flow;
    /// Delivers the state re-read at `rev`; all ranges go on after it. `false`: consumer gone.
    fn resync(&mut self, snap: &[Vec<PbKeyValue>], rev: i64) -> bool;
    /// Ends the watch with an error.
    fn fail(&mut self, e: Error);
    /// Whether the consumer dropped the watch.
    fn is_closed(&self) -> bool;
    /// The revision range `idx` resumes from.
    fn next(&self, idx: usize) -> i64;
}

/// What an event did to a watch.
enum Flow {
    Go,
    /// The consumer is gone: cancel the watch.
    Closed,
    /// Re-read and resync.
    Resync,
}

/// One watch's logic, its resume point and its queue.
struct Slot<L: Logic> {
    logic: L,
    /// Events at or below it are already reflected in what was delivered.
    floor: i64,
    /// Per range: the revision to resume from.
    next: Vec<i64>,
    tx: Tx<L::Ev>,
}

impl<L: Logic> Sink for Slot<L>
where
    L::Ev: Collapse,
{
    fn on_event(&mut self, idx: usize, ev: &PbEvent) -> Flow {
        let rev = event_rev(ev);
        if let Some(n) = self.next.get_mut(idx) {
            *n = (*n).max(rev + 1);
        }
        if rev <= self.floor {
            return Flow::Go;
        }
        let sent = match self.logic.on_event(idx, ev, rev) {
            Step::None => true,
            Step::Emit(e) => self.tx.send(Ok(e)),
            Step::EmitFloor(e, f) => {
                self.floor = self.floor.max(f);
                self.tx.send(Ok(e))
            }
            Step::Resync => return Flow::Resync,
        };
        if sent {
            Flow::Go
        } else {
            Flow::Closed
        }
    }

    fn resync(&mut self, snap: &[Vec<PbKeyValue>], rev: i64) -> bool {
        let ev = self.logic.resync(snap, rev);
        self.floor = self.floor.max(rev);
        for n in self.next.iter_mut() {
            *n = (*n).max(rev + 1);
        }
        self.tx.send(Ok(ev))
    }

    fn fail(&mut self, e: Error) {
        let _ = self.tx.send(Err(e));
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn next(&self, idx: usize) -> i64 {
        self.next.get(idx).copied().unwrap_or(0)
    }
}

/// One coord watch: its ranges (one etcd watcher each) and its state.
struct Entry {
    ranges: Vec<Range>,
    inner: Mutex<Inner>,
}

struct Inner {
    sink: Box<dyn Sink>,
    /// The watch ids of its ranges on the stream it is on; empty while on none.
    ids: Vec<i64>,
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave the state half-written in a harmful way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The create requests of its ranges under `ids`, from their resume points.
    fn requests(&self, ids: &[i64], inner: &Inner) -> Vec<(String, WatchOptions)> {
        self.ranges
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (r, id))| {
                let mut o = WatchOptions::new()
                    .with_start_revision(inner.sink.next(i))
                    .with_watch_id(*id);
                if r.prefix {
                    o = o.with_prefix();
                }
                (r.key.clone(), o)
            })
            .collect()
    }
}

/// One shared gRPC watch stream.
struct Conn {
    /// The stream's request side (dropping every clone of its channel ends the stream).
    requests: WatchRequestSender,
    table: Mutex<Table>,
}

/// A stream's watches by watch id.
struct Table {
    /// Watch id → the watch and the index of its range.
    by_id: HashMap<i64, (Arc<Entry>, usize)>,
    /// The number of watches (not watch ids) on the stream.
    watches: usize,
    /// The stream broke: its watches have moved (or are moving) elsewhere.
    dead: bool,
}

impl Conn {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends create requests (in order); a failed send means a broken stream, whose reader
    /// moves the watch on.
    async fn create(&self, reqs: Vec<(String, WatchOptions)>) {
        let mut rq = self.sender();
        for (key, o) in reqs {
            if rq.watch(key, Some(o)).await.is_err() {
                return;
            }
        }
    }

    /// A handle on the request side (senders need `&mut`; the channel is shared).
    fn sender(&self) -> WatchRequestSender {
        WatchRequestSender(self.requests.0.clone())
    }

    /// Takes `entry` off this stream (its ids no longer route) and asks etcd to cancel its
    /// watchers, without waiting for the request side (the reader must never block on it).
    /// `false` if it was not on this stream.
    fn detach(&self, entry: &Arc<Entry>) -> bool {
        let ids = std::mem::take(&mut entry.lock().ids);
        {
            let mut t = self.table();
            let mut found = false;
            for id in &ids {
                found |= t.by_id.remove(id).is_some();
            }
            if !found {
                return false;
            }
            t.watches = t.watches.saturating_sub(1);
        }
        let mut rq = self.sender();
        tokio::spawn(async move {
            for id in ids {
                // A broken stream cancels everything anyway.
                let _ = rq.cancel(id).await;
            }
        });
        true
    }
}

/// The shared watch streams of one backend.
pub(crate) struct Hub {
    ctx: Arc<Context>,
    state: Mutex<State>,
    /// Serialises opening streams, so that a burst of new watches opens one.
    opening: tokio::sync::Mutex<()>,
    /// Dropped with the hub: every reader and resync task ends.
    alive: watch::Sender<()>,
    me: Weak<Hub>,
}

struct State {
    /// The stream new watches go to while it has room.
    current: Option<Arc<Conn>>,
    /// The next watch id (unique per hub, so per stream too).
    next_id: i64,
}

impl Hub {
    pub(crate) fn new(ctx: Arc<Context>) -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            ctx,
            state: Mutex::new(State {
                current: None,
                next_id: 1,
            }),
            opening: tokio::sync::Mutex::new(()),
            alive: watch::channel(()).0,
            me: me.clone(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a watch over `ranges` resuming from `start` with `logic`, delivering into `tx`.
    pub(crate) fn add<L: Logic>(&self, ranges: Vec<Range>, start: i64, logic: L, tx: Tx<L::Ev>)
    where
        L::Ev: Collapse,
    {
        let next = vec![start; ranges.len()];
        let slot = Slot {
            logic,
            floor: start - 1,
            next,
            tx,
        };
        let entry = Arc::new(Entry {
            ranges,
            inner: Mutex::new(Inner {
                sink: Box::new(slot),
                ids: Vec::new(),
            }),
        });
        self.spawn_attach(entry, false, false);
    }

    /// Attaches `entry` in a task of its own (after a pause if `pause`; re-reading first if
    /// `resync`), retrying until it is on a stream, the consumer is gone or the hub is dropped.
    fn spawn_attach(&self, entry: Arc<Entry>, resync: bool, pause: bool) {
        let (me, mut gone) = (self.me.clone(), self.alive.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = attach_loop(me, entry, resync, pause) => {}
                _ = async { while gone.changed().await.is_ok() {} } => {}
            }
        });
    }

    /// Puts `entry` on a stream with room (opening one if needed) from its resume points.
    async fn attach(&self, entry: &Arc<Entry>) -> Result<()> {
        loop {
            let conn = self.state().current.clone();
            if let Some(conn) = conn {
                if self.attach_to(&conn, entry).await {
                    return Ok(());
                }
            }
            let _one = self.opening.lock().await;
            let full = !self.state().current.as_ref().is_some_and(|c| {
                let t = c.table();
                !t.dead && t.watches < PER_STREAM
            });
            if full {
                self.open(entry).await?;
                return Ok(());
            }
        }
    }

    /// New watch ids for `entry`'s ranges.
    fn ids(&self, entry: &Entry) -> Vec<i64> {
        let mut st = self.state();
        let first = st.next_id;
        st.next_id += entry.ranges.len() as i64;
        (first..st.next_id).collect()
    }

    /// Adds `entry` to the open stream `conn`; `false` if it is broken or full.
    async fn attach_to(&self, conn: &Arc<Conn>, entry: &Arc<Entry>) -> bool {
        let ids = self.ids(entry);
        // Never a table's lock and then a watch's: a sweep takes them the other way round.
        let opts = {
            let mut inner = entry.lock();
            inner.ids = ids.clone();
            entry.requests(&ids, &inner)
        };
        {
            let mut t = conn.table();
            if t.dead || t.watches >= PER_STREAM {
                return false;
            }
            for (i, id) in ids.iter().enumerate() {
                t.by_id.insert(*id, (entry.clone(), i));
            }
            t.watches += 1;
        }
        conn.create(opts).await;
        true
    }

    /// Opens a stream whose first watch is `entry`, and starts its reader.
    async fn open(&self, entry: &Arc<Entry>) -> Result<()> {
        let ids = self.ids(entry);
        let mut opts = entry.requests(&ids, &entry.lock()).into_iter();
        let Some((key, first)) = opts.next() else {
            return Ok(());
        };
        let store = self.ctx.store();
        let stream = bounded(store.timeout, "watch", Ctx::default(), || {
            let mut wc = store
                .client
                .watch_client()
                .max_decoding_message_size(MAX_DECODE);
            let (key, o) = (key.clone(), first.clone());
            async move { wc.watch(key, Some(o)).await }
        })
        .await?;
        let (rq, responses) = stream.split();
        let mut by_id = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            by_id.insert(*id, (entry.clone(), i));
        }
        entry.lock().ids = ids;
        let conn = Arc::new(Conn {
            requests: rq,
            table: Mutex::new(Table {
                by_id,
                watches: 1,
                dead: false,
            }),
        });
        conn.create(opts.collect()).await;
        self.state().current = Some(conn.clone());
        let (me, mut gone) = (self.me.clone(), self.alive.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = read(me, conn, responses) => {}
                _ = async { while gone.changed().await.is_ok() {} } => {}
            }
        });
        Ok(())
    }

    /// Re-reads `entry`'s ranges and delivers the state. `Ok(false)`: the consumer is gone.
    async fn reread(&self, entry: &Entry) -> Result<bool> {
        let (snap, rev) = self.ctx.store().snapshot(&entry.ranges).await?;
        Ok(entry.lock().sink.resync(&snap, rev))
    }
}

/// Re-reads (if `resync`) and attaches `entry` until done, with backoff between failures.
async fn attach_loop(hub: Weak<Hub>, entry: Arc<Entry>, mut resync: bool, pause: bool) {
    let mut backoff = Backoff::reconnect();
    if pause {
        backoff.wait().await;
    }
    loop {
        let Some(h) = hub.upgrade() else { return };
        if entry.lock().sink.is_closed() {
            return;
        }
        let r = if resync {
            match h.reread(&entry).await {
                Ok(true) => {
                    resync = false;
                    h.attach(&entry).await
                }
                Ok(false) => return,
                Err(e) => Err(e),
            }
        } else {
            h.attach(&entry).await
        };
        match r {
            Ok(()) => return,
            Err(e @ Error::Unauthorized { .. }) => {
                entry.lock().sink.fail(e);
                return;
            }
            Err(e) => tracing::debug!(error = %e, "etcd watch: cannot attach, retrying"),
        }
        drop(h);
        backoff.wait().await;
    }
}

/// Reads one stream until it breaks, routing each response; then moves its watches on.
async fn read(hub: Weak<Hub>, conn: Arc<Conn>, mut responses: WatchResponseStream) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    let refused = loop {
        let msg = tokio::select! {
            m = responses.message() => m,
            _ = sweep.tick() => {
                if prune(&hub, &conn) {
                    // No watch left: closing the request side ends the stream.
                    return;
                }
                continue;
            }
        };
        let resp = match msg {
            Ok(Some(r)) => r.0,
            Ok(None) => break false,
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch stream broke, moving its watches");
                break false;
            }
        };
        let Some(h) = hub.upgrade() else { return };
        if route(&h, &conn, resp).await == Routed::Refused {
            break true;
        }
    };
    move_watches(&hub, &conn, refused);
}

/// What a response means for the stream it came on.
#[derive(PartialEq)]
enum Routed {
    /// Keep reading.
    Read,
    /// The server refused a watch before giving it an id: the stream ends and its watches
    /// move on after a pause, so that a server refusing them is not hammered.
    Refused,
}

/// Hands one response to its watch: events, a cancel (re-attached, re-read first if the
/// revision it needs is compacted), or a refusal of an unknown create.
async fn route(h: &Hub, conn: &Arc<Conn>, resp: PbWatchResponse) -> Routed {
    let Some((entry, idx)) = conn.table().by_id.get(&resp.watch_id).cloned() else {
        if resp.canceled {
            // A create the server refused before giving it an id (etcd answers -1: an auth
            // token lost in a server restart, seen by secrets_in_logs): which watch it was is
            // unknown, so the whole stream moves on, after a pause and with a new token. etcd
            // gives only a reason text here, no code.
            tracing::debug!(reason = %resp.cancel_reason, "etcd refused a watch, reopening");
            if resp.cancel_reason.contains("auth token") {
                let store = h.ctx.store();
                let _ = tokio::time::timeout(store.timeout, store.client.refresh_token()).await;
            }
            return Routed::Refused;
        }
        return Routed::Read;
    };
    if resp.canceled {
        conn.detach(&entry);
        if resp.compact_revision > 0 {
            // The revision it needs is compacted: changes may be lost, say so.
            h.spawn_attach(entry, true, false);
        } else {
            // After a pause: a server that refuses the watch must not be hammered.
            tracing::debug!(reason = %resp.cancel_reason, "etcd watch canceled, re-adding");
            h.spawn_attach(entry, false, true);
        }
        return Routed::Read;
    }
    let mut flow = Flow::Go;
    {
        let mut inner = entry.lock();
        for ev in &resp.events {
            flow = inner.sink.on_event(idx, ev);
            if !matches!(flow, Flow::Go) {
                break;
            }
        }
    }
    match flow {
        Flow::Go => {}
        Flow::Closed => {
            conn.detach(&entry);
        }
        Flow::Resync => {
            conn.detach(&entry);
            h.spawn_attach(entry, true, false);
        }
    }
    Routed::Read
}

/// A broken stream: every watch on it moves to another stream, from its own resume points
/// (after a pause if the server `refused` a watch).
fn move_watches(hub: &Weak<Hub>, conn: &Arc<Conn>, refused: bool) {
    let moved: Vec<Arc<Entry>> = {
        let mut t = conn.table();
        t.dead = true;
        t.watches = 0;
        // Each watch once: by its first range's id.
        t.by_id
            .drain()
            .filter(|(_, (_, idx))| *idx == 0)
            .map(|(_, (e, _))| e)
            .collect()
    };
    let Some(h) = hub.upgrade() else { return };
    {
        let mut st = h.state();
        if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            st.current = None;
        }
    }
    for e in moved {
        e.lock().ids.clear();
        h.spawn_attach(e, false, refused);
    }
}

/// Cancels the watches of `conn` whose consumer is gone; `true` if none is left (the stream
/// is then taken out of use).
fn prune(hub: &Weak<Hub>, conn: &Arc<Conn>) -> bool {
    // Each watch once: by its first range's id.
    let on: Vec<Arc<Entry>> = conn
        .table()
        .by_id
        .values()
        .filter(|(_, idx)| *idx == 0)
        .map(|(e, _)| e.clone())
        .collect();
    let closed: Vec<Arc<Entry>> = on
        .into_iter()
        .filter(|e| e.lock().sink.is_closed())
        .collect();
    for e in &closed {
        conn.detach(e);
    }
    let Some(h) = hub.upgrade() else { return true };
    let mut st = h.state();
    let mut t = conn.table();
    if t.by_id.is_empty() {
        t.dead = true;
        if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            st.current = None;
        }
        return true;
    }
    false
}
