//! Scale in one process (issue 17): one backend client opens 1,000 sessions, 10,000 key
//! watches and 1,000 children watches (1,000 parents with 10 watched keys each; a third of the
//! keys absent at first) against a server with its default limits, changes a sample of 500
//! keys (set several times, created, deleted, re-created, ephemerals of the sessions), and
//! checks that every watch ends on the store's final state of its key or children list: no
//! error, no ended stream, no missed final state. The watches are drained together until each
//! one's last event equals a fresh read, then for a quiet while to catch late stale events.
//! Every wait is bounded.
//!
//! Sizes for a quick local run: `COORD_SCALE_SESSIONS`, `COORD_SCALE_KEYS` (10 per parent),
//! `COORD_SCALE_CHANGES`; `COORD_SCALE_BOUND_SECS` bounds the drain (default 180).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{namespace, own_server};
use coord::{
    Backend, ChildrenEvent, ChildrenWatch, CreateMode, Error, KeyEvent, KeyWatch, Node, Path,
    Session, SessionOptions, SessionState,
};
use coord_testkit::Kind;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};

/// Keys per parent.
const PER_PARENT: usize = 10;
/// How many calls run at once during setup and changes.
const CONCURRENCY: usize = 32;
/// How many sessions are opened at once.
const SESSIONS_AT_ONCE: usize = 4;
/// After every watch showed its final state, it is drained this long more: a late event must
/// not take it away from the final state.
const QUIET: Duration = Duration::from_secs(2);
/// One backend's scenario at a time: four runs of 1,000 sessions at once on a 2-core machine
/// would test the machine, not the backends (sessions' keep-alives miss their TTL).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Sizes {
    sessions: usize,
    keys: usize,
    changes: usize,
    bound: Duration,
}

fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Sizes {
    fn from_env() -> Sizes {
        let keys = env_or("COORD_SCALE_KEYS", 10_000).max(PER_PARENT);
        Sizes {
            sessions: env_or("COORD_SCALE_SESSIONS", 1_000).max(1),
            keys,
            changes: env_or("COORD_SCALE_CHANGES", 500).clamp(1, keys),
            bound: Duration::from_secs(env_or("COORD_SCALE_BOUND_SECS", 180) as u64),
        }
    }

    fn parents(&self) -> usize {
        self.keys.div_ceil(PER_PARENT)
    }
}

fn parent_path(i: usize) -> Path {
    Path::new(format!("/p{i:05}")).expect("path")
}

fn key_path(i: usize) -> Path {
    parent_path(i / PER_PARENT)
        .join(&format!("k{}", i % PER_PARENT))
        .expect("path")
}

/// Whether key `i` exists before the changes.
fn initially_present(i: usize) -> bool {
    i % 3 != 0
}

/// A key's state as a watch can know it: value and version, `None` when absent.
type KeyState = Option<(Vec<u8>, coord::Version)>;

fn state_of(n: Option<Node>) -> KeyState {
    n.map(|n| (n.value, n.stat.version))
}

/// One item of the merged watch streams; `None` is the end of that stream.
enum Item {
    Key(usize, Option<coord::Result<KeyEvent>>),
    Children(usize, Option<coord::Result<ChildrenEvent>>),
}

fn tagged_key(i: usize, w: KeyWatch) -> BoxStream<'static, Item> {
    w.map(Some)
        .chain(stream::once(async { None }))
        .map(move |e| Item::Key(i, e))
        .boxed()
}

fn tagged_children(i: usize, w: ChildrenWatch) -> BoxStream<'static, Item> {
    w.map(Some)
        .chain(stream::once(async { None }))
        .map(move |e| Item::Children(i, e))
        .boxed()
}

async fn create_ok(b: &dyn Backend, p: &Path, v: &[u8]) -> coord::Result<()> {
    b.create(p, v, CreateMode::Exact).await.map(|_| ())
}

/// Runs `n` futures made by `f`, `CONCURRENCY` at a time, in order of their index.
async fn each<T, F, Fut>(what: &str, n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = coord::Result<T>>,
{
    each_by(what, n, CONCURRENCY, f).await
}

/// [`each`] with `at_once` calls at a time.
async fn each_by<T, F, Fut>(what: &str, n: usize, at_once: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = coord::Result<T>>,
{
    let t = Instant::now();
    let out = stream::iter(0..n)
        .map(f)
        .buffered(at_once)
        .try_collect::<Vec<T>>()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("scale: {what}: {n} in {:?}", t.elapsed());
    out
}

/// The changes of sampled key `i` (the `s`-th of the sample), by a pattern that depends on
/// `s`: several sets, a create or a delete, a delete and re-create, an ephemeral of a session.
async fn change(
    b: &dyn Backend,
    sessions: &[Arc<dyn Session>],
    s: usize,
    i: usize,
) -> coord::Result<()> {
    let k = key_path(i);
    let present = initially_present(i);
    let v = |n: usize| format!("v{s}-{n}").into_bytes();
    match (s % 5, present) {
        (0, true) => {
            for n in 0..3 {
                b.set(&k, &v(n), None).await?;
            }
        }
        (0, false) => {
            create_ok(b, &k, &v(0)).await?;
            for n in 1..4 {
                b.set(&k, &v(n), None).await?;
            }
        }
        (1, true) => b.delete(&k, None).await?,
        (1, false) => create_ok(b, &k, &v(0)).await?,
        (2, true) => {
            b.delete(&k, None).await?;
            create_ok(b, &k, &v(1)).await?;
        }
        (2, false) => {
            create_ok(b, &k, &v(0)).await?;
            b.delete(&k, None).await?;
        }
        (3, present) => {
            if present {
                b.delete(&k, None).await?;
            }
            let owner = &sessions[s % sessions.len()];
            owner.create(&k, &v(0), CreateMode::Exact).await?;
        }
        (_, present) => {
            if !present {
                create_ok(b, &k, &v(0)).await?;
            }
            b.set(&k, &v(1), None).await?;
            b.set(&k, &v(2), None).await?;
        }
    }
    Ok(())
}

/// Watch states against the truth: how many differ.
struct Tracker {
    keys: Vec<KeyState>,
    want_keys: Vec<KeyState>,
    kids: Vec<Vec<String>>,
    want_kids: Vec<Vec<String>>,
    mismatched: usize,
    errors: Vec<String>,
}

impl Tracker {
    fn count(&mut self) {
        self.mismatched = (0..self.keys.len())
            .filter(|&i| self.keys[i] != self.want_keys[i])
            .count()
            + (0..self.kids.len())
                .filter(|&i| self.kids[i] != self.want_kids[i])
                .count();
    }

    fn apply(&mut self, item: Item) {
        let before;
        let after;
        match item {
            Item::Key(i, ev) => {
                before = self.keys[i] == self.want_keys[i];
                match ev {
                    Some(Ok(KeyEvent::Created(n) | KeyEvent::Changed(n))) => {
                        self.keys[i] = state_of(Some(n))
                    }
                    Some(Ok(KeyEvent::Deleted)) => self.keys[i] = None,
                    Some(Ok(KeyEvent::Resync(n))) => self.keys[i] = state_of(n),
                    Some(Err(e)) => self.errors.push(format!("watch {}: {e}", key_path(i))),
                    None => self.errors.push(format!("watch {} ended", key_path(i))),
                }
                after = self.keys[i] == self.want_keys[i];
            }
            Item::Children(i, ev) => {
                before = self.kids[i] == self.want_kids[i];
                match ev {
                    Some(Ok(ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l))) => {
                        self.kids[i] = l
                    }
                    Some(Ok(ChildrenEvent::ParentDeleted)) => self.kids[i].clear(),
                    Some(Err(e)) => self
                        .errors
                        .push(format!("children watch {}: {e}", parent_path(i))),
                    None => self
                        .errors
                        .push(format!("children watch {} ended", parent_path(i))),
                }
                after = self.kids[i] == self.want_kids[i];
            }
        }
        match (before, after) {
            (true, false) => self.mismatched += 1,
            (false, true) => self.mismatched -= 1,
            _ => {}
        }
    }

    fn report(&self) -> String {
        let keys = (0..self.keys.len())
            .filter(|&i| self.keys[i] != self.want_keys[i])
            .take(5)
            .map(|i| {
                format!(
                    "{}: watch {:?}, store {:?}",
                    key_path(i),
                    self.keys[i],
                    self.want_keys[i]
                )
            });
        let kids = (0..self.kids.len())
            .filter(|&i| self.kids[i] != self.want_kids[i])
            .take(5)
            .map(|i| {
                format!(
                    "{}: watch {:?}, store {:?}",
                    parent_path(i),
                    self.kids[i],
                    self.want_kids[i]
                )
            });
        let errors = self.errors.iter().take(10).cloned();
        format!(
            "{} watches not on their final state, {} errors:\n  {}",
            self.mismatched,
            self.errors.len(),
            keys.chain(kids)
                .chain(errors)
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    }
}

/// The whole scenario on `backend` (a fresh namespace).
async fn scale(backend: Arc<dyn Backend>) {
    let sz = Sizes::from_env();
    let b = &*backend;
    let parents = sz.parents();
    eprintln!(
        "scale on {}: {} sessions, {} key watches, {} children watches, {} changed keys",
        b.capabilities().backend,
        sz.sessions,
        sz.keys,
        parents,
        sz.changes
    );

    each("create parents", parents, |i| async move {
        create_ok(b, &parent_path(i), b"").await
    })
    .await;
    each("create keys", sz.keys, |i| async move {
        if initially_present(i) {
            create_ok(b, &key_path(i), b"init").await?;
        }
        Ok(())
    })
    .await;
    // Fewer at once: a service opens its sessions over time, not in one burst (a Consul
    // agent registers each session's check and syncs it to the catalog).
    let sessions: Vec<Arc<dyn Session>> = each_by(
        "open sessions",
        sz.sessions,
        SESSIONS_AT_ONCE,
        |_| async move { b.open_session(SessionOptions::new()).await },
    )
    .await;

    let key_watches = each("key watches", sz.keys, |i| async move {
        b.watch(&key_path(i)).await
    })
    .await;
    let children_watches = each("children watches", parents, |i| async move {
        b.watch_children(&parent_path(i)).await
    })
    .await;
    let mut streams = Vec::with_capacity(sz.keys + parents);
    let mut keys = Vec::with_capacity(sz.keys);
    for (i, (n, w)) in key_watches.into_iter().enumerate() {
        keys.push(state_of(n));
        streams.push(tagged_key(i, w));
    }
    let mut kids = Vec::with_capacity(parents);
    for (i, (l, w)) in children_watches.into_iter().enumerate() {
        kids.push(l);
        streams.push(tagged_children(i, w));
    }
    let mut all = stream::select_all(streams);

    // The sample: `changes` keys spread over the whole range and over the key names.
    let stride = (sz.keys / sz.changes).max(1);
    let sample: Vec<usize> = (0..sz.changes)
        .map(|s| (s * stride + s % stride.min(PER_PARENT)).min(sz.keys - 1))
        .collect();
    let sessions_ref = &sessions;
    let sample_ref = &sample;
    each("change the sample", sample.len(), |s| async move {
        change(b, sessions_ref, s, sample_ref[s]).await
    })
    .await;

    // The truth after the changes.
    let want_keys = each("read final keys", sz.keys, |i| async move {
        match b.get(&key_path(i)).await {
            Ok(n) => Ok(state_of(Some(n))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await;
    let want_kids = each("read final children", parents, |i| async move {
        let mut l = b.children(&parent_path(i)).await?;
        l.sort();
        Ok(l)
    })
    .await;
    let mut t = Tracker {
        keys,
        want_keys,
        kids,
        want_kids,
        mismatched: 0,
        errors: Vec::new(),
    };
    t.count();

    // Drain until every watch shows its final state (bounded), then a quiet while more.
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + sz.bound;
    let mut events = 0u64;
    while t.mismatched > 0 {
        match tokio::time::timeout_at(deadline, all.next()).await {
            Ok(Some(item)) => {
                events += 1;
                t.apply(item);
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let converged = t0.elapsed();
    let quiet_end = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(item)) = tokio::time::timeout_at(quiet_end, all.next()).await {
        events += 1;
        t.apply(item);
    }
    eprintln!(
        "scale: {events} events; every watch on its final state after {converged:?} \
         (mismatched now: {})",
        t.mismatched
    );
    assert!(
        events >= sample.len() as u64,
        "{events} events for {} changed keys: the changes did not reach the watches",
        sample.len()
    );
    assert!(
        t.mismatched == 0 && t.errors.is_empty(),
        "within {:?}: {}",
        sz.bound,
        t.report()
    );

    // The sessions lived through it all.
    let not_connected: Vec<String> = sessions
        .iter()
        .filter(|s| s.state() != SessionState::Connected)
        .map(|s| format!("{}: {:?}", s.id(), s.state()))
        .take(10)
        .collect();
    assert!(
        not_connected.is_empty(),
        "sessions not Connected: {not_connected:?}"
    );
    each("close sessions", sessions.len(), |i| {
        let s = sessions[i].clone();
        async move { s.close().await }
    })
    .await;
}

async fn on_server(kind: Kind, scheme: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = own_server(kind).await else {
        return;
    };
    let ns = namespace(&format!("scale-{scheme}"));
    let url = format!("{scheme}://{}{ns}", server.endpoint());
    let backend = coord::connect_backend(&url).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(1800), scale(backend))
        .await
        .expect("the scale scenario finished within 30 minutes");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_10k_watches_1k_sessions_one_process() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = coord::connect_backend("mem://").await.expect("mem");
    scale(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_10k_watches_1k_sessions_one_process() {
    on_server(Kind::ZooKeeper, "zk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_10k_watches_1k_sessions_one_process() {
    on_server(Kind::Etcd, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_10k_watches_1k_sessions_one_process() {
    on_server(Kind::Consul, "consul").await;
}
