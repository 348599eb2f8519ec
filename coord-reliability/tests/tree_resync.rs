//! The tree cache and the partitioner across real watch resyncs (issue 18, items 5 and 6): the
//! situations of `resync.rs` (an etcd history compacted past a cut connection's watches; a
//! restarted Consul `-dev` agent whose index went back and whose data is gone; a ZooKeeper main
//! session that expired during a server pause). Changes are made while the cache's connection
//! cannot see them; afterwards the mirror must equal a fresh read of the subtree, a `Resynced`
//! event must have been sent, the cache must be Following again, and a partitioner on the same
//! connection must compute the assignment of the true membership. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{namespace, own_server};
use coord::group::Membership;
use coord::partitioner::{Assignment, Partitioner};
use coord::registry::CacheState;
use coord::tree_cache::{TreeCache, TreeEvent};
use coord::{Backend, Client, CreateMode, Error, Path, SessionOptions};
use coord_testkit::Proxy;
use futures::{Stream, StreamExt};

/// A bound that only catches a hang.
const BOUND: Duration = Duration::from_secs(30);
const PARTITIONS: u32 = 32;

type Events = std::pin::Pin<Box<dyn Stream<Item = TreeEvent> + Send>>;

fn p(s: &str) -> Path {
    Path::new(s).expect("path")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}

/// The subtree at `root` as `path → value`, read now (the truth).
async fn read_tree(b: &dyn Backend, root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.clone()];
    while let Some(at) = todo.pop() {
        let node = match b.get(&at).await {
            Ok(n) => n,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => panic!("read {at}: {e}"),
        };
        out.insert(at.to_string(), node.value);
        match b.children(&at).await {
            Ok(kids) => todo.extend(kids.iter().map(|k| at.join(k).expect("path"))),
            Err(Error::NotFound { .. }) => {}
            Err(e) => panic!("children of {at}: {e}"),
        }
    }
    out
}

fn mirror(cache: &TreeCache) -> BTreeMap<String, Vec<u8>> {
    cache
        .nodes()
        .into_iter()
        .map(|n| (n.path.to_string(), n.value))
        .collect()
}

/// Waits until the mirror equals the store's subtree and the cache is Following.
async fn converge(label: &str, cache: &TreeCache, truth: &dyn Backend) -> Duration {
    let t0 = Instant::now();
    loop {
        let want = read_tree(truth, cache.root()).await;
        if mirror(cache) == want && cache.state() == CacheState::Following {
            return t0.elapsed();
        }
        if t0.elapsed() > BOUND {
            panic!(
                "{label}: the tree cache did not converge within {BOUND:?} ({:?}): it shows \
                 {:?}, the store has {want:?}",
                cache.state(),
                mirror(cache)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `parts` computes the assignment of the group's members as read from `truth`.
async fn partitions_converge(label: &str, parts: &Partitioner, truth: &Client) {
    let t0 = Instant::now();
    loop {
        let members = truth
            .group("pool")
            .expect("name")
            .members()
            .await
            .expect("members");
        let want = Assignment::new(&members, PARTITIONS).expect("assignment");
        if *parts.assignment() == want && parts.state() == CacheState::Following {
            return;
        }
        if t0.elapsed() > BOUND {
            panic!(
                "{label}: the partitioner did not converge within {BOUND:?} ({:?}): it has \
                 {:?}, the group {:?}",
                parts.state(),
                parts.assignment().members(),
                want.members()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads events until a `Resynced`.
async fn resynced(label: &str, events: &mut Events) {
    within(&format!("{label}: a Resynced event"), async {
        while let Some(ev) = events.next().await {
            if matches!(ev, TreeEvent::Resynced(_)) {
                return;
            }
        }
        panic!("{label}: the event stream ended");
    })
    .await
}

async fn put(b: &dyn Backend, path: &str, value: &[u8]) {
    within("create", b.create(&p(path), value, CreateMode::Exact))
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

/// The subtree before the fault: `/cfg` with two levels.
async fn seed(b: &dyn Backend) {
    put(b, "/cfg", b"root").await;
    put(b, "/cfg/db", b"").await;
    put(b, "/cfg/db/url", b"postgres://a").await;
    put(b, "/cfg/db/pool", b"8").await;
    put(b, "/cfg/old", b"going").await;
}

/// The changes made while the cache cannot see them: an add at depth 2, a removal, a write.
async fn change(b: &dyn Backend) {
    put(b, "/cfg/db/replica", b"postgres://b").await;
    within("delete", b.delete(&p("/cfg/old"), None))
        .await
        .expect("delete");
    within("set", b.set(&p("/cfg/db/pool"), b"16", None))
        .await
        .expect("set");
}

async fn join(c: &Client, id: &str) -> Membership {
    within("join", c.group("pool").expect("name").join(id, b""))
        .await
        .unwrap_or_else(|e| panic!("join {id}: {e}"))
}

/// etcd: the cache's connection goes through a proxy that is cut while the subtree and the
/// group change and the history is compacted past its watches' revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_tree_cache_and_partitioner_converge() {
    let Some(server) = own_server(coord_testkit::Kind::Etcd).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("tree-etcd");
    let proxy = Proxy::start(&ep).expect("proxy");
    let raw = coord_etcd::EtcdBackend::connect(&format!("etcd://{ep}{ns}?timeout=2s"))
        .await
        .expect("connect");
    let etcd = raw.etcd_client().clone();
    let direct: Arc<dyn Backend> = Arc::new(raw);
    let cut: Arc<dyn Backend> =
        coord::connect_backend(&format!("etcd://{}{ns}?timeout=1s", proxy.addr()))
            .await
            .expect("connect through the proxy");
    let opts = SessionOptions::new().ttl(Duration::from_secs(15));
    let members: Vec<Client> = (0..3)
        .map(|_| Client::with_session_options(direct.clone(), opts.clone()))
        .collect();
    let truth = Client::new(direct.clone());
    let watcher = Client::new(cut.clone());

    seed(&*direct).await;
    let m0 = join(&members[0], "m0").await;
    let m1 = join(&members[1], "m1").await;
    let cache = within("tree cache", watcher.tree_cache(&p("/cfg")))
        .await
        .expect("tree cache");
    let mut events: Events = Box::pin(cache.events());
    let parts = within(
        "partitioner",
        watcher.group("pool").expect("name").partitioner(PARTITIONS),
    )
    .await
    .expect("partitioner");
    converge("etcd before", &cache, &*direct).await;
    partitions_converge("etcd before", &parts, &truth).await;

    proxy.disable();
    change(&*direct).await;
    within("leave", m1.leave()).await.expect("leave");
    let m2 = join(&members[2], "m2").await;
    let mut last = 0;
    for i in 0..20 {
        let v = format!("{i}");
        last = match direct.set(&p("/filler"), v.as_bytes(), None).await {
            Ok(st) => st.version.0,
            Err(Error::NotFound { .. }) => {
                direct
                    .create(&p("/filler"), v.as_bytes(), CreateMode::Exact)
                    .await
                    .expect("create filler")
                    .stat
                    .version
                    .0
            }
            Err(e) => panic!("filler: {e}"),
        };
    }
    etcd.kv_client()
        .compact(last as i64, None)
        .await
        .expect("compact");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    proxy.enable();

    resynced("etcd", &mut events).await;
    let took = converge("etcd after the compaction", &cache, &*direct).await;
    partitions_converge("etcd after the compaction", &parts, &truth).await;
    println!(
        "etcd: tree cache and partitioner converged {:?} after the proxy came back (the \
         mirror {took:?} after the Resynced event)",
        t0.elapsed()
    );
    // Changes after the resync are followed too.
    put(&*direct, "/cfg/after", b"x").await;
    converge("etcd after the resync", &cache, &*direct).await;
    drop((m0, m2));
    for c in &members {
        let _ = within("close", c.close()).await;
    }
}

/// Consul: a `-dev` agent restart loses every key and session and resets the index: the mirror
/// empties (the subtree is gone), then follows the subtree written again; the partitioner
/// follows the members, which join again on new sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_agent_restart_tree_cache_and_partitioner_converge() {
    let Some(mut server) = own_server(coord_testkit::Kind::Consul).await else {
        return;
    };
    let ns = namespace("tree-consul");
    let url = format!(
        "consul://{}{ns}?session_ttl=2s&timeout=1s&wait=1s",
        server.endpoint()
    );
    let backend: Arc<dyn Backend> = coord::connect_backend(&url).await.expect("connect");
    let members: Vec<Client> = (0..2).map(|_| Client::new(backend.clone())).collect();
    let truth = Client::new(backend.clone());
    let watcher = Client::new(backend.clone());

    // Raise the index well above what the fresh agent reaches by itself after the restart,
    // before the subtree is written: only an index that goes backwards tells the adapter
    // that the history is gone (with a new index above the old one it reports plain
    // deletions, which the mirror follows too, but without a Resync).
    put(&*backend, "/filler", b"").await;
    for i in 0..100 {
        within(
            "filler",
            backend.set(&p("/filler"), format!("{i}").as_bytes(), None),
        )
        .await
        .expect("filler");
    }
    seed(&*backend).await;
    let m0 = join(&members[0], "m0").await;
    let m1 = join(&members[1], "m1").await;
    let cache = within("tree cache", watcher.tree_cache(&p("/cfg")))
        .await
        .expect("tree cache");
    let mut events: Events = Box::pin(cache.events());
    let parts = within(
        "partitioner",
        watcher.group("pool").expect("name").partitioner(PARTITIONS),
    )
    .await
    .expect("partitioner");
    converge("consul before", &cache, &*backend).await;
    partitions_converge("consul before", &parts, &truth).await;

    let server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart the agent");
        server
    })
    .await
    .expect("restart task");
    let t0 = Instant::now();

    resynced("consul", &mut events).await;
    let took = converge("consul after the restart", &cache, &*backend).await;
    assert!(
        cache.is_empty(),
        "the store lost /cfg: {:?}",
        mirror(&cache)
    );
    println!(
        "consul: the mirror emptied {:?} after the restart ({took:?} after the Resynced event)",
        t0.elapsed()
    );
    // The members join again on new sessions (a membership follows its client's session).
    within("m0 joined again", async {
        while m0.rejoins() == 0 || m1.rejoins() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    partitions_converge("consul after the restart", &parts, &truth).await;
    assert_eq!(parts.assignment().members().len(), 2);
    seed(&*backend).await;
    change(&*backend).await;
    converge("consul after the subtree came back", &cache, &*backend).await;
    println!(
        "consul: tree cache and partitioner converged {:?} after the restart",
        t0.elapsed()
    );
    drop((m0, m1));
    for c in &members {
        let _ = within("close", c.close()).await;
    }
    drop((cache, parts, backend));
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
}

/// ZooKeeper: the cache's backend (main session 2 s) loses its session during a 4 s server
/// pause; every watch re-arms on the new session with `Resync`. The changes are made after the
/// resume through another connection, racing the re-arm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_main_session_expiry_tree_cache_and_partitioner_converge() {
    let Some(mut server) = own_server(coord_testkit::Kind::ZooKeeper).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("tree-zk");
    let watched: Arc<dyn Backend> =
        coord::connect_backend(&format!("zk://{ep}{ns}?timeout=5s&session_timeout=2s"))
            .await
            .expect("connect");
    let writer: Arc<dyn Backend> =
        coord::connect_backend(&format!("zk://{ep}{ns}?timeout=5s&session_timeout=10s"))
            .await
            .expect("connect");
    let opts = SessionOptions::new().ttl(Duration::from_secs(10));
    let members: Vec<Client> = (0..3)
        .map(|_| Client::with_session_options(writer.clone(), opts.clone()))
        .collect();
    let truth = Client::new(writer.clone());
    let watcher = Client::new(watched.clone());

    seed(&*writer).await;
    let m0 = join(&members[0], "m0").await;
    let m1 = join(&members[1], "m1").await;
    let cache = within("tree cache", watcher.tree_cache(&p("/cfg")))
        .await
        .expect("tree cache");
    let mut events: Events = Box::pin(cache.events());
    let parts = within(
        "partitioner",
        watcher.group("pool").expect("name").partitioner(PARTITIONS),
    )
    .await
    .expect("partitioner");
    converge("zk before", &cache, &*writer).await;
    partitions_converge("zk before", &parts, &truth).await;

    tokio::task::block_in_place(|| server.pause());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| server.resume());
    let t0 = Instant::now();
    change(&*writer).await;
    within("leave", m1.leave()).await.expect("leave");
    let m2 = join(&members[2], "m2").await;

    resynced("zk", &mut events).await;
    converge("zk after the resume", &cache, &*writer).await;
    partitions_converge("zk after the resume", &parts, &truth).await;
    println!(
        "zk: tree cache and partitioner converged {:?} after the resume",
        t0.elapsed()
    );
    put(&*writer, "/cfg/after", b"x").await;
    converge("zk after the resync", &cache, &*writer).await;
    drop((m0, m2));
    for c in &members {
        let _ = within("close", c.close()).await;
    }
}
