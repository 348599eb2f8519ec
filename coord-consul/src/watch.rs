//! Watches as shared blocking queries.
//!
//! Every watch first reads its key or list (returned to the caller), then joins the backend's
//! [`Watches`]: a set of *groups*, each one recursive blocking query on a key prefix whose
//! answers (every entry under the prefix, with its `ModifyIndex`) are fanned out to the
//! watchers of the keys and children lists under it. Watchers of one parent's children, or of
//! keys under one parent, share one group (its prefix is that parent's depth-encoded children
//! prefix, which holds no grandchildren). When the groups would outnumber the budget (the
//! connections [`Limits`](crate::api::Limits) allots to blocking queries, minus a few for the
//! session observers, the catalog and the dialects), the two groups with the longest common
//! key prefix are merged into one query on that prefix, until they fit: a coarser query costs
//! a larger answer, never a connection more.
//!
//! Each watcher keeps what it last delivered (a key's create and modify index, a list's
//! names) and turns the differences to a newer answer into events: nothing is lost between two
//! answers, quick changes may be coalesced (`watch_coalesces = true`). An answer reaches the
//! watchers that joined before its request was sent, and the others when its index shows it
//! is not older than their first read (see `Since`); a group that had to skip a watcher asks
//! again at once instead of blocking. An index
//! that goes backwards (a restarted `-dev` agent, a restored snapshot) makes the answer a
//! `Resync` for every watcher of the group. Transient errors are retried after a jittered
//! back-off (the watchers see nothing meanwhile; the next answer carries the latest state); a
//! permanent error is yielded once to each watcher of the group and ends their streams. Events
//! go through coord-core's bounded [`event_queue`]: a consumer that falls behind gets one
//! `Resync` of the newest state. A watch ends when its backend is dropped or its stream is
//! (its watcher is pruned at its group's next answer).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use coord_core::adapter::{
    event_queue, Backoff, ChildrenSnapshot, Collapse, EventSender, KeySnapshot, WatchScope,
    WATCH_BUFFER,
};
use coord_core::{ChildrenEvent, ChildrenWatch, Error, KeyEvent, KeyWatch, Node, Path, Result};

use crate::api::{Api, KvEntry};
use crate::context::node_of;

/// Blocking-query slots left to others than the shared KV queries: the session observer,
/// catalog watches and dialect waiters.
const OTHER_POLLS: usize = 4;

/// The least time between two requests of a group that does not block (a re-read for
/// watchers that joined while its request ran).
const REREAD_PAUSE: Duration = Duration::from_millis(50);

/// Back-off after consecutive errors of one query: 100 ms doubling up to 5 s, jittered.
fn error_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).jittered()
}

/// The delay before the next query after `e`, or `e` itself if it ends the watch.
fn retry_delay(errors: &mut Backoff, e: Error) -> Result<Duration> {
    if e.is_retryable() {
        tracing::debug!(error = %e, "watch query failed; retrying");
        Ok(errors.next_delay())
    } else {
        Err(e)
    }
}

/// One queued item of a watch: an event or the error that ends it.
struct Item<E>(Result<E>);

impl<E: Collapse> Collapse for Item<E> {
    fn collapse(newest: &Self) -> Self {
        Item(match &newest.0 {
            Ok(e) => Ok(E::collapse(e)),
            Err(e) => Err(e.clone()),
        })
    }
}

/// A watch's stream as the kernel types it.
type Events<E> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<E>> + Send>>;

/// A watch's queue and its stream.
fn queue<E: Collapse + Send + 'static>() -> (EventSender<Item<E>>, Events<E>) {
    let (tx, rx) = event_queue::<Item<E>>(WATCH_BUFFER);
    (tx, Box::pin(rx.map(|Item(r)| r)))
}

/// A key's identity and version as a watcher last delivered it: (create, modify index).
type Seen = Option<(u64, u64)>;

fn seen(e: Option<&KvEntry>) -> Seen {
    e.map(|e| (e.create_index, e.modify_index))
}

/// The events from `old` to the entry `new` of the key of `path`.
fn key_events(old: Seen, new: Option<&KvEntry>, path: &Path) -> Result<Vec<KeyEvent>> {
    let node = |e: &KvEntry| node_of(path, e);
    Ok(match (old, new) {
        (None, None) => vec![],
        (None, Some(n)) => vec![KeyEvent::Created(node(n)?)],
        (Some(_), None) => vec![KeyEvent::Deleted],
        (Some((c, _)), Some(n)) if c != n.create_index => {
            vec![KeyEvent::Deleted, KeyEvent::Created(node(n)?)]
        }
        (Some((_, m)), Some(n)) if m != n.modify_index => vec![KeyEvent::Changed(node(n)?)],
        _ => vec![],
    })
}

/// A children watch's state, shared by its two interests (the list and the parent key, which
/// may be served by different groups).
struct ChildWatch {
    tx: EventSender<Item<ChildrenEvent>>,
    /// What was last delivered, and the state the answers so far add up to.
    state: Mutex<ChildState>,
}

/// What a children watch last delivered (`shown`), the state its answers add up to (`now`),
/// and whether the last event was a `Resync` (both of its queries see an index reset: one
/// `Resync` is enough).
struct ChildState {
    shown: ChildrenSnapshot,
    now: ChildrenSnapshot,
    resynced: bool,
}

impl ChildWatch {
    fn lock(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to the current state and sends the events (one `Resync` after an
    /// index reset); false when the consumer is gone.
    fn update(&self, reset: bool, change: impl FnOnce(&mut ChildrenSnapshot)) -> bool {
        let mut st = self.lock();
        change(&mut st.now);
        let events = if reset {
            if st.resynced && st.shown.visible() == st.now.visible() {
                vec![]
            } else {
                vec![ChildrenSnapshot::resync(&st.now)]
            }
        } else {
            ChildrenSnapshot::events(&st.shown, &st.now)
        };
        if !events.is_empty() {
            st.resynced = reset;
        }
        st.shown = st.now.clone();
        drop(st);
        events.into_iter().all(|ev| self.tx.send(Item(Ok(ev))))
    }
}

/// From which answer of its group a watcher takes answers: those of requests sent after it
/// joined (`seq` and later), and any answer whose index reaches its first read's (`index`).
///
/// An answer of a request sent before the join may be older than the watcher's first read,
/// and would show it a state going backwards. But `X-Consul-Index` never exceeds the Raft
/// index the answer was read at, and the first read's index is at least that of the last
/// change to what it read (a key's `ModifyIndex`; a list's or a missing key's highest index
/// under it, tombstones included): an answer whose index reaches it is not older for this
/// watcher. So a watcher sits out only answers that carry no change it has not seen, and
/// never loses a change (a create and a delete between two answers) to its catch-up re-read.
#[derive(Clone, Copy, Debug)]
struct Since {
    seq: u64,
    index: u64,
}

impl Since {
    /// Every answer from now on (a watcher moved to a new group).
    const ANY: Since = Since { seq: 0, index: 0 };

    /// Whether the answer of request `seq` at `index` must skip this watcher.
    fn skips(self, seq: u64, index: u64) -> bool {
        seq < self.seq && index < self.index
    }
}

/// What a watcher of one key wants.
enum KeyInterest {
    /// A key watch and what it last delivered.
    Key {
        tx: EventSender<Item<KeyEvent>>,
        last: Seen,
        /// The last event was a `Resync` (a second reset of the same state sends nothing).
        resynced: bool,
        /// The answers that may reach it.
        from: Since,
    },
    /// The parent of a children watch (its create index).
    Parent { watch: Arc<ChildWatch>, from: Since },
}

/// A children list's watcher.
struct ListInterest {
    watch: Arc<ChildWatch>,
    from: Since,
}

/// One shared blocking query and its watchers.
#[derive(Default)]
struct Group {
    /// Distinguishes this group from an earlier one on the same prefix (its task's ticket).
    id: u64,
    keys: HashMap<String, Vec<KeyInterest>>,
    /// Children prefix → its watchers.
    lists: HashMap<String, Vec<ListInterest>>,
    /// Requests sent so far.
    sent: u64,
    /// Another group saw the agent's index go backwards: the next answer is a reset too.
    reset_next: bool,
    task: Option<AbortHandle>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.lists.is_empty()
    }

    /// Makes every interest eligible for the next answer (after a move to a new group).
    fn reset_from(&mut self) {
        for v in self.keys.values_mut() {
            for i in v {
                match i {
                    KeyInterest::Key { from, .. } | KeyInterest::Parent { from, .. } => {
                        *from = Since::ANY
                    }
                }
            }
        }
        for v in self.lists.values_mut() {
            for i in v {
                i.from = Since::ANY;
            }
        }
    }

    fn absorb(&mut self, other: Group) {
        if let Some(t) = other.task {
            t.abort();
        }
        for (k, v) in other.keys {
            self.keys.entry(k).or_default().extend(v);
        }
        for (k, v) in other.lists {
            self.lists.entry(k).or_default().extend(v);
        }
    }

    /// Fans an answer of request `seq` at index `index` out; whether a watcher had to be
    /// skipped (it joined after the request was sent), and whether the index went backwards
    /// (`reset`, or seen by a watcher: the answer is older than what it knows, which a group's
    /// first answer cannot tell otherwise).
    fn deliver(
        &mut self,
        layout_base: usize,
        seq: u64,
        (entries, index): (&[KvEntry], u64),
        reset: bool,
    ) -> (bool, bool) {
        let forced = std::mem::take(&mut self.reset_next);
        let behind = |known: Option<u64>| known.is_some_and(|k| index < k);
        let mut detected = reset;
        if !forced && !detected {
            detected = self.keys.values().flatten().any(|i| match i {
                KeyInterest::Key { last, from, .. } => {
                    !from.skips(seq, index) && behind(last.map(|l| l.1))
                }
                KeyInterest::Parent { watch, from } => {
                    !from.skips(seq, index) && behind(watch.lock().now.parent)
                }
            });
        }
        let reset = forced || detected;
        // A forced reset is not passed on again (no ping-pong between groups).
        let detected = detected && !forced;
        let skipped_key = self.deliver_keys(layout_base, seq, (entries, index), reset);
        let skipped_list = self.deliver_lists(seq, (entries, index), reset);
        (skipped_key || skipped_list, detected)
    }

    /// [`Self::deliver`]'s key watchers (and children watchers' parents); whether one was
    /// skipped.
    fn deliver_keys(
        &mut self,
        layout_base: usize,
        seq: u64,
        (entries, index): (&[KvEntry], u64),
        reset: bool,
    ) -> bool {
        let by_key: HashMap<&str, &KvEntry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
        let mut skipped = false;
        self.keys.retain(|key, interests| {
            let e = by_key.get(key.as_str()).copied();
            interests.retain_mut(|i| match i {
                KeyInterest::Key { from, .. } | KeyInterest::Parent { from, .. }
                    if from.skips(seq, index) =>
                {
                    skipped = true;
                    true
                }
                KeyInterest::Key {
                    tx, last, resynced, ..
                } => {
                    if tx.is_closed() {
                        return false;
                    }
                    if reset && *resynced && seen(e) == *last {
                        return true;
                    }
                    if reset || seen(e) != *last {
                        *resynced = reset;
                    }
                    deliver_key(tx, last, key, layout_base, e, reset)
                }
                KeyInterest::Parent { watch, .. } => {
                    !watch.tx.is_closed()
                        && watch.update(reset, |now| now.parent = e.map(|e| e.create_index))
                }
            });
            !interests.is_empty()
        });
        skipped
    }

    /// [`Self::deliver`]'s children watchers; whether one was skipped.
    fn deliver_lists(
        &mut self,
        seq: u64,
        (entries, index): (&[KvEntry], u64),
        reset: bool,
    ) -> bool {
        if self.lists.is_empty() {
            return false;
        }
        let mut kids: HashMap<&str, Vec<String>> = HashMap::new();
        for e in entries {
            if let Some(cut) = e.key.rfind('/') {
                let (prefix, name) = e.key.split_at(cut + 1);
                if !name.is_empty() && self.lists.contains_key(prefix) {
                    kids.entry(prefix).or_default().push(name.to_owned());
                }
            }
        }
        let mut skipped = false;
        self.lists.retain(|prefix, interests| {
            let mut list = kids.remove(prefix.as_str()).unwrap_or_default();
            list.sort();
            interests.retain(|i| {
                if i.from.skips(seq, index) {
                    skipped = true;
                    return true;
                }
                !i.watch.tx.is_closed() && i.watch.update(reset, |now| now.list = list.clone())
            });
            !interests.is_empty()
        });
        skipped
    }

    /// Ends every watcher with `e`.
    fn fail(self, e: &Error) {
        for i in self.keys.into_values().flatten() {
            match i {
                KeyInterest::Key { tx, .. } => drop(tx.send(Item(Err(e.clone())))),
                KeyInterest::Parent { watch, .. } => drop(watch.tx.send(Item(Err(e.clone())))),
            }
        }
        for i in self.lists.into_values().flatten() {
            i.watch.tx.send(Item(Err(e.clone())));
        }
    }
}

/// Sends a key watcher the events from what it last saw to `e`; false when it is done.
fn deliver_key(
    tx: &EventSender<Item<KeyEvent>>,
    last: &mut Seen,
    key: &str,
    layout_base: usize,
    e: Option<&KvEntry>,
    reset: bool,
) -> bool {
    let now = seen(e);
    if !reset && now == *last {
        return true;
    }
    // The node key is `<base>nDDD<path>`.
    let path = key
        .get(layout_base + 4..)
        .ok_or_else(|| Error::MalformedData {
            path: key.to_owned(),
            reason: "the key holds no path".into(),
        })
        .and_then(Path::new);
    let events = path.and_then(|p| match reset {
        true => Ok(vec![KeyEvent::Resync(
            e.map(|e| node_of(&p, e)).transpose()?,
        )]),
        false => key_events(*last, e, &p),
    });
    *last = now;
    match events {
        Ok(evs) => evs.into_iter().all(|ev| tx.send(Item(Ok(ev)))),
        Err(e) => {
            tx.send(Item(Err(e)));
            false
        }
    }
}

/// The prefix that holds `key`'s siblings: `key` up to its last `/`.
fn siblings_prefix(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    &a[..n]
}

#[derive(Default)]
struct Plan {
    /// Group prefix → group. Prefixes never nest (a nested one is absorbed).
    groups: BTreeMap<String, Group>,
    next_id: u64,
}

/// The shared queries of one backend (see the module docs).
pub(crate) struct Hub {
    api: Api,
    /// The length of the namespace's key prefix (`<ns>/__coord/`).
    base: usize,
    /// The most groups (queries) at once.
    budget: usize,
    plan: Mutex<Plan>,
}

/// The backend's handle on its [`Hub`]: dropping it stops every query and ends every watch.
pub(crate) struct Watches(Arc<Hub>);

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("queries", &self.0.lock().groups.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        let groups = std::mem::take(&mut self.0.lock().groups);
        for g in groups.into_values() {
            if let Some(t) = g.task {
                t.abort();
            }
        }
    }
}

impl Watches {
    /// The shared queries over `api` for keys under `namespace_prefix`.
    pub(crate) fn new(api: Api, namespace_prefix: &str) -> Watches {
        let budget = api.limits.poll_slots.saturating_sub(OTHER_POLLS).max(1);
        Watches(Arc::new(Hub {
            api,
            base: namespace_prefix.len(),
            budget,
            plan: Mutex::new(Plan::default()),
        }))
    }

    /// How many shared queries run (for tests and metrics).
    pub(crate) fn queries(&self) -> usize {
        self.0.lock().groups.len()
    }

    /// Reads `key` (of `path`) and watches it.
    pub(crate) async fn watch_key(
        &self,
        path: &Path,
        key: String,
    ) -> Result<(Option<Node>, KeyWatch)> {
        let (first, index) = self.0.api.kv_get(&key, None).await?;
        let node = first.as_ref().map(|e| node_of(path, e)).transpose()?;
        let (tx, rx) = queue::<KeyEvent>();
        let last = seen(first.as_ref());
        let base = siblings_prefix(&key).to_owned();
        self.0.join(&base, |g| {
            let from = Since {
                seq: g.sent + 1,
                index,
            };
            g.keys.entry(key).or_default().push(KeyInterest::Key {
                tx,
                last,
                resynced: false,
                from,
            });
        });
        Ok((node, rx))
    }

    /// Lists the children under `prefix` (empty if the parent at `parent_key` is absent;
    /// `None`: the root, which always exists) and watches the list.
    pub(crate) async fn watch_children(
        &self,
        parent_key: Option<String>,
        prefix: String,
    ) -> Result<(Vec<String>, ChildrenWatch)> {
        let api = &self.0.api;
        let (parent, parent_index) = match &parent_key {
            Some(k) => {
                let (e, index) = api.kv_get(k, None).await?;
                (e.map(|e| e.create_index), index)
            }
            // The root always exists.
            None => (Some(0), 0),
        };
        let (list, list_index) = api.kv_children(&prefix, None).await?;
        let shown = ChildrenSnapshot { parent, list };
        let visible = shown.visible();
        let (tx, rx) = queue::<ChildrenEvent>();
        let watch = Arc::new(ChildWatch {
            tx,
            state: Mutex::new(ChildState {
                shown: shown.clone(),
                now: shown,
                resynced: false,
            }),
        });
        if let Some(k) = parent_key {
            let watch = watch.clone();
            let base = siblings_prefix(&k).to_owned();
            self.0.join(&base, |g| {
                let from = Since {
                    seq: g.sent + 1,
                    index: parent_index,
                };
                g.keys
                    .entry(k)
                    .or_default()
                    .push(KeyInterest::Parent { watch, from });
            });
        }
        self.0.join(&prefix.clone(), |g| {
            let from = Since {
                seq: g.sent + 1,
                index: list_index,
            };
            g.lists
                .entry(prefix)
                .or_default()
                .push(ListInterest { watch, from });
        });
        Ok((visible, rx))
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an interest (`add`) to the group covering `base`, creating and coarsening groups
    /// as needed, and starts the queries of new groups.
    fn join(self: &Arc<Hub>, base: &str, add: impl FnOnce(&mut Group)) {
        let mut plan = self.lock();
        let covering = plan
            .groups
            .keys()
            .find(|p| base.starts_with(p.as_str()))
            .cloned();
        let prefix = match covering {
            Some(p) => p,
            None => {
                plan.next_id += 1;
                let mut g = Group {
                    id: plan.next_id,
                    ..Group::default()
                };
                // Groups this one covers (a children watch on an ancestor's prefix) move in.
                let nested: Vec<String> = plan
                    .groups
                    .keys()
                    .filter(|p| p.starts_with(base))
                    .cloned()
                    .collect();
                for p in nested {
                    if let Some(old) = plan.groups.remove(&p) {
                        g.absorb(old);
                    }
                }
                g.reset_from();
                plan.groups.insert(base.to_owned(), g);
                base.to_owned()
            }
        };
        if let Some(g) = plan.groups.get_mut(&prefix) {
            add(g);
        }
        self.coarsen(&mut plan);
        self.start(&mut plan);
    }

    /// Merges the two groups with the longest common prefix until the budget holds.
    fn coarsen(&self, plan: &mut Plan) {
        while plan.groups.len() > self.budget {
            let keys: Vec<&String> = plan.groups.keys().collect();
            let Some(common) = keys
                .windows(2)
                .map(|w| common_prefix(w[0], w[1]))
                .max_by_key(|c| c.len())
                .map(str::to_owned)
            else {
                return;
            };
            let members: Vec<String> = plan
                .groups
                .keys()
                .filter(|p| p.starts_with(&common))
                .cloned()
                .collect();
            plan.next_id += 1;
            let mut g = Group {
                id: plan.next_id,
                ..Group::default()
            };
            for p in members {
                if let Some(old) = plan.groups.remove(&p) {
                    g.absorb(old);
                }
            }
            g.reset_from();
            tracing::debug!(prefix = %common, "watch queries coarsened");
            plan.groups.insert(common, g);
        }
    }

    /// Starts the query of every group that has none.
    fn start(self: &Arc<Hub>, plan: &mut Plan) {
        for (prefix, g) in plan.groups.iter_mut() {
            if g.task.is_none() {
                let task = tokio::spawn(run(Arc::downgrade(self), prefix.clone(), g.id));
                g.task = Some(task.abort_handle());
            }
        }
    }

    /// The number of the request the group `(prefix, id)` sends next, `None` if it is gone.
    fn begin(&self, prefix: &str, id: u64) -> Option<u64> {
        let mut plan = self.lock();
        let g = plan.groups.get_mut(prefix).filter(|g| g.id == id)?;
        if g.is_empty() {
            plan.groups.remove(prefix);
            return None;
        }
        g.sent += 1;
        Some(g.sent)
    }

    /// Takes an answer; whether the next request must not block (a watcher was skipped),
    /// and whether it was a reset.
    fn answered(
        &self,
        prefix: &str,
        (id, seq): (u64, u64),
        answer: (&[KvEntry], u64),
        reset: bool,
    ) -> (bool, bool) {
        let mut plan = self.lock();
        match plan.groups.get_mut(prefix).filter(|g| g.id == id) {
            Some(g) => g.deliver(self.base, seq, answer, reset),
            None => (false, false),
        }
    }

    /// The agent's index went backwards (seen by `prefix`'s query): every other group
    /// starts over from index 0 and takes its next answer as a reset too.
    fn reset_others(self: &Arc<Hub>, prefix: &str) {
        let mut plan = self.lock();
        for (p, g) in plan.groups.iter_mut() {
            if p != prefix {
                g.reset_next = true;
                if let Some(t) = g.task.take() {
                    t.abort();
                }
            }
        }
        self.start(&mut plan);
    }

    /// Ends the group with a permanent error.
    fn failed(&self, prefix: &str, id: u64, e: &Error) {
        let mut plan = self.lock();
        if plan.groups.get(prefix).is_some_and(|g| g.id == id) {
            if let Some(g) = plan.groups.remove(prefix) {
                g.fail(e);
            }
        }
    }
}

/// The query loop of the group `(prefix, id)`, until the group is gone or empty.
async fn run(hub: Weak<Hub>, prefix: String, id: u64) {
    let Some(api) = hub.upgrade().map(|h| h.api.clone()) else {
        return;
    };
    let mut errors = error_backoff();
    let mut index = 0u64;
    // The first answer comes at once: it is the baseline every watcher compares with.
    let mut immediate = true;
    let now = tokio::time::Instant::now();
    let mut last_sent = now.checked_sub(REREAD_PAUSE).unwrap_or(now);
    loop {
        if immediate {
            // Watchers joining in a burst are served together, not one re-read each.
            tokio::time::sleep_until(last_sent + REREAD_PAUSE).await;
        }
        last_sent = tokio::time::Instant::now();
        let Some(seq) = hub.upgrade().and_then(|h| h.begin(&prefix, id)) else {
            return;
        };
        let block = (!immediate).then_some((index, api.wait));
        let r = api.kv_list(&prefix, block).await;
        let Some(h) = hub.upgrade() else { return };
        match r {
            Ok((entries, i)) => {
                errors.reset();
                let reset = i < index;
                // Consul's advice: an index that went backwards starts over from 0.
                index = if reset { 0 } else { i };
                let (again, reset) = h.answered(&prefix, (id, seq), (&entries, i), reset);
                immediate = again;
                if reset {
                    index = 0;
                    h.reset_others(&prefix);
                }
                drop(h);
                // The consumers just woken run before this task sets up its next request (a
                // task woken here runs when this one yields): the events come first.
                tokio::task::yield_now().await;
            }
            Err(e) if e.is_retryable() => {
                drop(h);
                tracing::debug!(error = %e, %prefix, "watch query failed; retrying");
                errors.wait().await;
                immediate = false;
            }
            Err(e) => return h.failed(&prefix, id, &e),
        }
    }
}

fn snapshot(path: &Path, e: Option<&KvEntry>) -> Result<Option<KeySnapshot>> {
    e.map(|e| {
        Ok(KeySnapshot {
            created: e.create_index,
            modified: e.modify_index,
            node: node_of(path, e)?,
        })
    })
    .transpose()
}

/// Reads `key` and watches it with a blocking query of its own: for the dialects' keys,
/// which lie outside coord's layout (a few per process).
pub(crate) async fn watch_key(
    scope: &WatchScope,
    api: Api,
    path: Path,
    key: String,
) -> Result<(Option<Node>, KeyWatch)> {
    let (first, index) = api.kv_get(&key, None).await?;
    let last = snapshot(&path, first.as_ref())?;
    let current = last.as_ref().map(|s| s.node.clone());
    let rx = scope.spawn(|tx| key_loop(api, path, key, last, index, tx));
    Ok((current, rx))
}

async fn key_loop(
    api: Api,
    path: Path,
    key: String,
    mut last: Option<KeySnapshot>,
    mut index: u64,
    tx: mpsc::UnboundedSender<Result<KeyEvent>>,
) {
    let mut errors = error_backoff();
    loop {
        let answer = api.kv_get(&key, Some((index, api.wait))).await;
        let (now, new_index) = match answer {
            Ok(a) => a,
            Err(e) => match retry_delay(&mut errors, e) {
                Ok(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Err(e) => return drop(tx.send(Err(e))),
            },
        };
        errors.reset();
        let now = match snapshot(&path, now.as_ref()) {
            Ok(s) => s,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let events = if new_index < index {
            // Index reset: what happened in between is unknown.
            vec![KeySnapshot::resync(now.as_ref())]
        } else {
            KeySnapshot::events(last.as_ref(), now.as_ref())
        };
        index = new_index;
        last = now;
        for ev in events {
            if tx.send(Ok(ev)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watcher that joined while its group's request was in flight takes that request's
    /// answer when the answer's index reaches its first read's, and sits it out otherwise
    /// (the case that lost a create and delete: the tree cache's root on Consul in CI).
    #[tokio::test]
    async fn a_late_watcher_takes_an_answer_not_older_than_its_read() {
        let base = "ns/__coord/";
        let key = "ns/__coord/n001/later".to_owned();
        let entry = KvEntry {
            key: key.clone(),
            value: None,
            session: None,
            create_index: 12,
            modify_index: 12,
            flags: 0,
        };
        let mut group = Group::default();
        let (tx, mut rx) = queue::<KeyEvent>();
        // Joined (read the key as missing at table index 11) after request 1 was sent.
        group.keys.entry(key).or_default().push(KeyInterest::Key {
            tx,
            last: None,
            resynced: false,
            from: Since { seq: 2, index: 11 },
        });
        let older = (std::slice::from_ref(&entry), 10);
        assert_eq!(group.deliver(base.len(), 1, older, false), (true, false));
        let newer = (std::slice::from_ref(&entry), 12);
        assert_eq!(group.deliver(base.len(), 1, newer, false), (false, false));
        match rx.next().await {
            Some(Ok(KeyEvent::Created(n))) => assert_eq!(n.path.as_str(), "/later"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            group.deliver(base.len(), 2, (&[], 13), false),
            (false, false)
        );
        assert!(matches!(rx.next().await, Some(Ok(KeyEvent::Deleted))));
    }

    #[test]
    fn prefixes() {
        assert_eq!(siblings_prefix("ns/__coord/n002/a/b"), "ns/__coord/n002/a/");
        assert_eq!(common_prefix("ns/n003/p1/", "ns/n003/p12/"), "ns/n003/p1");
        assert_eq!(common_prefix("ab", "abc"), "ab");
    }
}
