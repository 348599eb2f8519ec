//! Watches: the logic of key and children watches ([`Logic`]), run by the backend's shared
//! streams ([`Hub`]). The dialects' and the naming registry's few watches keep a task and a
//! stream each ([`drive`]): resumed from the last seen revision after a break, re-read +
//! `Resync` when the revision they need was compacted. Events are delivered one by one (no
//! coalescing).

use std::collections::BTreeSet;
use std::sync::Arc;

use coord_core::adapter::flat::Layout;
use coord_core::adapter::{event_queue, Backoff, Collapse, EventSender, WatchScope, WATCH_BUFFER};
use coord_core::{ChildrenEvent, ChildrenWatch, Error, KeyEvent, KeyWatch, Node, Path, Result};
use etcd_client::proto::{PbEvent, PbKeyValue};
use etcd_client::{WatchOptions, WatchStream};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::context::{children_ranges, names, stat_of, Context, Range, MAX_DECODE};
use crate::error::{bounded, Ctx};
use crate::hub::Hub;

/// etcd's event type numbers.
pub(crate) const PUT: i32 = 0;
pub(crate) const DELETE: i32 = 1;

/// What a watch does with the events of its ranges.
pub(crate) trait Logic: Send + 'static {
    type Ev: Send + 'static;
    /// Handles one event of range `idx` at revision `rev`.
    fn on_event(&mut self, idx: usize, ev: &PbEvent, rev: i64) -> Step<Self::Ev>;
    /// The state re-read at revision `rev` after changes may have been missed.
    fn resync(&mut self, snap: &[Vec<PbKeyValue>], rev: i64) -> Self::Ev;
}

pub(crate) enum Step<E> {
    /// Nothing to deliver.
    None,
    /// Deliver this event.
    Emit(E),
    /// Deliver this event; every event at or below `rev` is already accounted for.
    EmitFloor(E, i64),
    /// The order of the ranges' events cannot be trusted: re-read and resync.
    Resync,
}

pub(crate) fn event_rev(ev: &PbEvent) -> i64 {
    ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

struct KeyLogic {
    path: Path,
}

impl KeyLogic {
    fn node(&self, kv: &PbKeyValue) -> Node {
        Node {
            path: self.path.clone(),
            value: kv.value.clone(),
            stat: stat_of(kv),
        }
    }
}

impl Logic for KeyLogic {
    type Ev = KeyEvent;

    fn on_event(&mut self, _idx: usize, ev: &PbEvent, _rev: i64) -> Step<KeyEvent> {
        match (ev.r#type, ev.kv.as_ref()) {
            (PUT, Some(kv)) if kv.version <= 1 => Step::Emit(KeyEvent::Created(self.node(kv))),
            (PUT, Some(kv)) => Step::Emit(KeyEvent::Changed(self.node(kv))),
            (DELETE, _) => Step::Emit(KeyEvent::Deleted),
            _ => Step::None,
        }
    }

    fn resync(&mut self, snap: &[Vec<PbKeyValue>], _rev: i64) -> KeyEvent {
        KeyEvent::Resync(snap.first().and_then(|k| k.first()).map(|kv| self.node(kv)))
    }
}

struct ChildrenLogic {
    ranges: Vec<Range>,
    set: BTreeSet<String>,
    /// The revision of the last children event applied.
    last_child: i64,
}

impl ChildrenLogic {
    fn list(&self) -> Vec<String> {
        self.set.iter().cloned().collect()
    }
}

impl Logic for ChildrenLogic {
    type Ev = ChildrenEvent;

    fn on_event(&mut self, idx: usize, ev: &PbEvent, rev: i64) -> Step<ChildrenEvent> {
        match idx {
            0 => {
                let Some(kv) = ev.kv.as_ref() else {
                    return Step::None;
                };
                let Some(range) = self.ranges.first() else {
                    return Step::None;
                };
                let key = std::str::from_utf8(&kv.key).unwrap_or_default();
                let Some(name) = Layout::child_name(&range.key, key) else {
                    return Step::None;
                };
                self.last_child = self.last_child.max(rev);
                let changed = match ev.r#type {
                    // A value write of a child is not a children change.
                    PUT if kv.version <= 1 => self.set.insert(name.to_owned()),
                    DELETE => self.set.remove(name),
                    _ => false,
                };
                if changed {
                    Step::Emit(ChildrenEvent::Changed(self.list()))
                } else {
                    Step::None
                }
            }
            _ if ev.r#type == DELETE => {
                if self.last_child > rev {
                    // Children events after the deletion were delivered first.
                    return Step::Resync;
                }
                // A parent is deleted only without children: at `rev` the list was empty, so
                // children events still on their way from before `rev` are obsolete.
                self.set.clear();
                self.last_child = rev;
                Step::EmitFloor(ChildrenEvent::ParentDeleted, rev)
            }
            _ => Step::None,
        }
    }

    fn resync(&mut self, snap: &[Vec<PbKeyValue>], rev: i64) -> ChildrenEvent {
        let kids = snap.first().map(Vec::as_slice).unwrap_or_default();
        let prefix = self
            .ranges
            .first()
            .map(|r| r.key.as_str())
            .unwrap_or_default();
        self.set = names(prefix, kids).into_iter().collect();
        self.last_child = rev;
        ChildrenEvent::Resync(self.list())
    }
}

/// One item of a watch's queue: an event or the error that ends the watch.
pub(crate) struct Item<E>(Result<E>);

impl<E: Collapse> Collapse for Item<E> {
    fn collapse(newest: &Self) -> Self {
        Item(match &newest.0 {
            Ok(e) => Ok(E::collapse(e)),
            Err(e) => Err(e.clone()),
        })
    }
}

/// The sending side of one watch's bounded queue ([`event_queue`]): a consumer that falls
/// [`WATCH_BUFFER`] events behind gets one `Resync` of the newest state instead.
pub(crate) struct Tx<E>(EventSender<Item<E>>);

impl<E: Collapse> Tx<E> {
    /// Queues `ev`; `false` if the consumer dropped the watch.
    pub(crate) fn send(&self, ev: Result<E>) -> bool {
        self.0.send(Item(ev))
    }

    /// Whether the consumer dropped the watch.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A new watch queue: its sending side and the consumer's stream.
fn queue<E: Collapse + Send + 'static>() -> (Tx<E>, BoxStream<'static, Result<E>>) {
    let (tx, rx) = event_queue(WATCH_BUFFER);
    (Tx(tx), rx.map(|Item(r)| r).boxed())
}

/// Reads `path` and watches it from the revision after the read (on the shared streams).
pub(crate) async fn watch_key(
    hub: &Hub,
    ctx: &Context,
    path: &Path,
) -> Result<(Option<Node>, KeyWatch)> {
    let ranges = vec![Range {
        key: ctx.layout().node(path),
        prefix: false,
        keys_only: false,
    }];
    let (snap, rev) = ctx.store().snapshot(&ranges).await?;
    let mut logic = KeyLogic { path: path.clone() };
    let current = match logic.resync(&snap, rev) {
        KeyEvent::Resync(n) => n,
        _ => None,
    };
    // The root always exists, stored or not.
    let current = current.or_else(|| {
        path.is_root().then(|| Node {
            path: path.clone(),
            value: Vec::new(),
            stat: coord_core::Stat::new(coord_core::Version(0), None),
        })
    });
    let (tx, rx) = queue();
    hub.add(ranges, rev + 1, logic, tx);
    Ok((current, rx))
}

/// Lists `path`'s children and watches the list from the revision after the read (on the
/// shared streams).
pub(crate) async fn watch_children(
    hub: &Hub,
    ctx: &Context,
    path: &Path,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let ranges = children_ranges(ctx.layout(), path);
    let (snap, rev) = ctx.store().snapshot(&ranges).await?;
    let mut logic = ChildrenLogic {
        ranges: ranges.clone(),
        set: BTreeSet::new(),
        last_child: 0,
    };
    let current = match logic.resync(&snap, rev) {
        ChildrenEvent::Resync(l) => l,
        _ => Vec::new(),
    };
    let (tx, rx) = queue();
    hub.add(ranges, rev + 1, logic, tx);
    Ok((current, rx))
}

/// Opens one etcd watch stream with a watcher per range (watch id = range index + 1).
async fn open(ctx: &Context, ranges: &[Range], next: &[i64]) -> Result<WatchStream> {
    let opts = |i: usize| {
        let mut o = WatchOptions::new()
            .with_start_revision(next.get(i).copied().unwrap_or(0))
            .with_watch_id(i as i64 + 1);
        if ranges.get(i).is_some_and(|s| s.prefix) {
            o = o.with_prefix();
        }
        o
    };
    let first = ranges.first().map(|s| s.key.clone()).unwrap_or_default();
    let store = ctx.store();
    let mut stream = bounded(store.timeout, "watch", Ctx::default(), || {
        let mut wc = store
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE);
        let (key, o) = (first.clone(), opts(0));
        async move { wc.watch(key, Some(o)).await }
    })
    .await?;
    for (i, s) in ranges.iter().enumerate().skip(1) {
        // A request on the open stream (a local channel send): no retry.
        tokio::time::timeout(store.timeout, stream.watch(s.key.clone(), Some(opts(i))))
            .await
            .map_err(|_| Error::timeout("etcd watch: request not sent in time"))?
            .map_err(|e| crate::error::map(e, Ctx::default()))?;
    }
    Ok(stream)
}

/// Why the inner loop stopped.
enum Break {
    /// The consumer or the backend is gone.
    Done,
    /// Reopen the stream after a pause.
    Reopen,
    /// Changes may have been missed: re-read (yield `Resync`), then reopen.
    Resync,
}

/// Runs a watch until its consumer drops the stream or the backend is dropped.
pub(crate) async fn drive<L: Logic>(
    ctx: Arc<Context>,
    ranges: Vec<Range>,
    start: i64,
    mut logic: L,
    tx: mpsc::UnboundedSender<Result<L::Ev>>,
) {
    let mut next = vec![start; ranges.len()];
    // Events at or below `floor` are already reflected in what was delivered.
    let mut floor = start - 1;
    let mut backoff = Backoff::reconnect();
    let mut need_resync = false;
    // The scope drops this future when the backend or the stream is dropped.
    loop {
        if need_resync {
            if resync(&ctx, &ranges, &mut next, &mut floor, &mut logic, &tx).await {
                need_resync = false;
            } else {
                backoff.wait().await;
                continue;
            }
        }
        let brk = match open(&ctx, &ranges, &next).await {
            Ok(mut stream) => {
                backoff.reset();
                run_stream(
                    &ctx,
                    &ranges,
                    &mut stream,
                    &mut next,
                    &mut floor,
                    &mut logic,
                    &tx,
                )
                .await
            }
            Err(e @ Error::Unauthorized { .. }) => {
                let _ = tx.send(Err(e));
                Break::Done
            }
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch: cannot open, retrying");
                Break::Reopen
            }
        };
        match brk {
            Break::Done => return,
            Break::Resync => need_resync = true,
            Break::Reopen => {}
        }
        backoff.wait().await;
    }
}

/// Re-reads after changes may have been missed and yields `Resync`; all ranges go on after the
/// read's revision. `false` if the read failed (the caller retries).
async fn resync<L: Logic>(
    ctx: &Context,
    ranges: &[Range],
    next: &mut [i64],
    floor: &mut i64,
    logic: &mut L,
    tx: &mpsc::UnboundedSender<Result<L::Ev>>,
) -> bool {
    match ctx.store().snapshot(ranges).await {
        Ok((snap, rev)) => {
            let ev = logic.resync(&snap, rev);
            let _ = tx.send(Ok(ev));
            *floor = (*floor).max(rev);
            for n in next.iter_mut() {
                *n = (*n).max(rev + 1);
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "etcd watch: re-read failed, retrying");
            false
        }
    }
}

async fn run_stream<L: Logic>(
    ctx: &Context,
    ranges: &[Range],
    stream: &mut WatchStream,
    next: &mut [i64],
    floor: &mut i64,
    logic: &mut L,
    tx: &mpsc::UnboundedSender<Result<L::Ev>>,
) -> Break {
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r.0,
            Ok(None) => return Break::Reopen,
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch stream broke, resuming");
                return Break::Reopen;
            }
        };
        if resp.canceled {
            if resp.compact_revision > 0 {
                // The revision we need is compacted: changes may be lost, say so.
                return Break::Resync;
            }
            tracing::debug!(reason = %resp.cancel_reason, "etcd watch canceled, reopening");
            return Break::Reopen;
        }
        let Some(idx) = usize::try_from(resp.watch_id - 1)
            .ok()
            .filter(|i| *i < ranges.len())
        else {
            continue;
        };
        for ev in &resp.events {
            let rev = event_rev(ev);
            if let Some(n) = next.get_mut(idx) {
                *n = (*n).max(rev + 1);
            }
            if rev <= *floor {
                continue;
            }
            match logic.on_event(idx, ev, rev) {
                Step::None => {}
                Step::Emit(e) => {
                    let _ = tx.send(Ok(e));
                }
                Step::EmitFloor(e, f) => {
                    let _ = tx.send(Ok(e));
                    *floor = (*floor).max(f);
                }
                Step::Resync => {
                    if !resync(ctx, ranges, next, floor, logic, tx).await {
                        return Break::Resync;
                    }
                }
            }
        }
    }
}

/// Reads the raw key `key` (outside the layout; `path` names it in events) and watches it
/// from the revision after the read: for the dialects' keys.
pub(crate) async fn watch_raw_key(
    scope: &WatchScope,
    ctx: Arc<Context>,
    key: String,
    path: &Path,
) -> Result<(Option<Node>, KeyWatch)> {
    let ranges = vec![Range {
        key,
        prefix: false,
        keys_only: false,
    }];
    let (snap, rev) = ctx.store().snapshot(&ranges).await?;
    let mut logic = KeyLogic { path: path.clone() };
    let current = match logic.resync(&snap, rev) {
        KeyEvent::Resync(n) => n,
        _ => None,
    };
    let rx = scope.spawn(|tx| drive(ctx, ranges, rev + 1, logic, tx));
    Ok((current, rx))
}

/// Something under a raw prefix changed (or may have: a re-read after a gap).
struct PokeLogic;

impl Logic for PokeLogic {
    type Ev = ();

    fn on_event(&mut self, _idx: usize, _ev: &PbEvent, _rev: i64) -> Step<()> {
        Step::Emit(())
    }

    fn resync(&mut self, _snap: &[Vec<PbKeyValue>], _rev: i64) {}
}

/// Watches every key under the raw prefix `prefix` from revision `start`: one item per change
/// (the dialects' `observe` re-reads the holder on each).
pub(crate) fn watch_raw_prefix(
    scope: &WatchScope,
    ctx: Arc<Context>,
    prefix: String,
    start: i64,
) -> futures::stream::BoxStream<'static, Result<()>> {
    let ranges = vec![Range {
        key: prefix,
        prefix: true,
        keys_only: true,
    }];
    scope.spawn(|tx| drive(ctx, ranges, start, PokeLogic, tx))
}
