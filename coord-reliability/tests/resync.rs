//! Watch resyncs at the recipe level (issue 9): the adapter tests show that a raw watch yields
//! `Resync` when its history is gone (etcd compaction past a cut watcher's revision; a
//! restarted Consul `-dev` agent whose index went backwards; a replaced ZooKeeper main
//! session). Here the recipes built on those watches run through the same situations: an
//! election with three candidates (the waiting candidates watch their predecessors, an
//! observer watches the candidates), and a registry cache. After the resync the election
//! must still hand over correctly (resign → the next candidate is elected, exactly one leader,
//! larger token) and the cache must converge to the true instance set, also for changes made
//! after the resync. A raw witness watch on the same connection proves the resync happened.
//! Every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{namespace, own_server};
use coord::election::Leadership;
use coord::recipes::{HoldState, SuspendPolicy};
use coord::registry::{Instance, Registration, ServiceCache};
use coord::{
    Backend, ChildrenEvent, ChildrenWatch, Client, Error, Path, SessionOptions, SessionState,
};
use coord_testkit::Proxy;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// A bound that only catches a hang.
const BOUND: Duration = Duration::from_secs(30);

fn p(s: &str) -> Path {
    Path::new(s).expect("path")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}

fn ids(list: &[Instance]) -> BTreeSet<String> {
    list.iter().map(|i| i.id.clone()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Waits until the cache shows exactly `want`; returns how long that took.
async fn converge(cache: &ServiceCache, want: &[&str]) -> Duration {
    let t0 = Instant::now();
    let want = set(want);
    loop {
        if ids(&cache.instances()) == want {
            return t0.elapsed();
        }
        if t0.elapsed() > BOUND {
            panic!(
                "the registry cache did not converge to {want:?} within {BOUND:?}: it shows {:?}",
                ids(&cache.instances())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn register(c: &Client, id: &str) -> Registration {
    within(
        "register",
        c.registry()
            .register(&Instance::new("api", id, "127.0.0.1", 8080)),
    )
    .await
    .unwrap_or_else(|e| panic!("register {id}: {e}"))
}

/// Waits until the election directory lists `n` candidates.
async fn wait_candidates(b: &dyn Backend, n: usize) {
    within(&format!("{n} candidates"), async {
        loop {
            match b.children(&p("/elections/e")).await {
                Ok(l) if l.len() == n => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

/// Reads the witness watch until a `Resync`; returns its list.
async fn witness_resync(w: &mut ChildrenWatch) -> Vec<String> {
    within("the witness watch's Resync", async {
        loop {
            match w.next().await {
                Some(Ok(ChildrenEvent::Resync(l))) => return l,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("witness watch failed: {e}"),
                None => panic!("witness watch ended"),
            }
        }
    })
    .await
}

fn campaign(c: &Client, value: &'static [u8]) -> JoinHandle<coord::Result<Leadership>> {
    let e = c
        .election("e")
        .expect("name")
        .with_suspend_policy(SuspendPolicy::TolerateSuspend);
    tokio::spawn(async move { e.campaign(value).await })
}

async fn elected(what: &str, h: JoinHandle<coord::Result<Leadership>>) -> Leadership {
    within(what, h)
        .await
        .expect("campaign task")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn wait_holding(l: &Leadership) {
    let mut states = Box::pin(l.states());
    within("Holding", async {
        while let Some(s) = states.next().await {
            if s == HoldState::Holding {
                return;
            }
        }
        panic!("leadership ended before Holding again");
    })
    .await
}

async fn wait_connected(c: &Client) {
    let s = c.current_session().await.expect("a session");
    let mut states = s.states();
    within("session Connected", async {
        while let Some(st) = states.next().await {
            if st == SessionState::Connected {
                return;
            }
        }
        panic!("session ended: {:?}", s.state());
    })
    .await
}

/// Leader tokens seen by an `observe()` stream, in order.
type Seen = Arc<Mutex<Vec<Option<u64>>>>;

async fn observer(c: &Client) -> (Seen, JoinHandle<()>) {
    let stream = within("observe", c.election("e").expect("name").observe())
        .await
        .expect("observe");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        while let Some(r) = stream.next().await {
            match r {
                Ok(l) => s
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(l.map(|l| l.token)),
                // A transient error of one read: the stream goes on.
                Err(e) => eprintln!("observer: {e}"),
            }
        }
    });
    (seen, task)
}

async fn observed(seen: &Seen, token: u64) {
    within(
        &format!("the observer reports leader token {token}"),
        async {
            loop {
                let last = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last()
                    .copied();
                if last == Some(Some(token)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await
}

/// Resigns `from` and checks the handover to `next` (already campaigning): exactly one
/// leader, a larger token, the election's leader read and the observer agree.
async fn hand_over(
    label: &str,
    from: Leadership,
    next: JoinHandle<coord::Result<Leadership>>,
    others: &[&JoinHandle<coord::Result<Leadership>>],
    reader: &Client,
    seen: &Seen,
) -> Leadership {
    let old = from.fencing_token();
    let t0 = Instant::now();
    within("resign", from.resign()).await.expect("resign");
    let l = elected(&format!("{label}: successor"), next).await;
    let took = t0.elapsed();
    assert!(l.is_leading(), "{label}: {:?}", l.state());
    assert!(
        l.fencing_token() > old,
        "{label}: token {} after {old}",
        l.fencing_token()
    );
    for h in others {
        assert!(!h.is_finished(), "{label}: another candidate finished too");
    }
    let info = within("leader", reader.election("e").expect("name").leader())
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!(info.token, l.fencing_token(), "{label}");
    assert_eq!(&info.node, l.node(), "{label}");
    observed(seen, l.fencing_token()).await;
    println!(
        "{label}: resign → successor elected after {took:?} (token {old} → {})",
        l.fencing_token()
    );
    l
}

// ---- etcd: compaction past a cut watcher's revision ----------------------------------------

/// etcd: two waiting candidates, an election observer and a registry cache use a connection
/// that is cut while instances change and the history is compacted past their watches'
/// revisions; their watches resume with `Resync`. The leader (on a direct connection) keeps
/// leading; afterwards resign hands over twice in order with larger tokens, and the cache shows
/// the changes made during the cut and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_resync_recipes_recover() {
    let Some(server) = own_server(coord_testkit::Kind::Etcd).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("resync-etcd");
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
    // Sessions outlive the cut (a few seconds): only the watches lose their history.
    let opts = SessionOptions::new().ttl(Duration::from_secs(15));
    let a = Client::with_session_options(direct.clone(), opts.clone());
    let b = Client::with_session_options(cut.clone(), opts.clone());
    let c = Client::with_session_options(cut.clone(), opts.clone());
    let reg = Client::with_session_options(direct.clone(), opts.clone());
    let watcher = Client::new(cut.clone());
    let reader = Client::new(direct.clone());

    let la = elected("a elected", campaign(&a, b"a")).await;
    let fb = campaign(&b, b"b");
    wait_candidates(&*direct, 2).await;
    let fc = campaign(&c, b"c");
    wait_candidates(&*direct, 3).await;
    let (seen, obs) = observer(&watcher).await;
    observed(&seen, la.fencing_token()).await;

    let r1 = register(&reg, "api-1").await;
    let r2 = register(&reg, "api-2").await;
    let cache = within("cache", watcher.registry().cache("api"))
        .await
        .expect("cache");
    converge(&cache, &["api-1", "api-2"]).await;
    let (_, mut witness) = cut
        .watch_children(&p("/services/api"))
        .await
        .expect("witness watch");

    // The cut: instances change, other keys are written, the history is compacted.
    proxy.disable();
    let r3 = register(&reg, "api-3").await;
    within("deregister", r2.deregister())
        .await
        .expect("deregister api-2");
    let mut last = 0;
    for i in 0..20 {
        let v = format!("{i}");
        last = match direct.set(&p("/filler"), v.as_bytes(), None).await {
            Ok(n) => n.version.0,
            Err(Error::NotFound { .. }) => {
                direct
                    .create(&p("/filler"), v.as_bytes(), coord::CreateMode::Exact)
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

    let list = witness_resync(&mut witness).await;
    println!(
        "etcd: witness Resync {list:?} {:?} after the proxy came back",
        t0.elapsed()
    );
    let took = converge(&cache, &["api-1", "api-3"]).await;
    println!(
        "etcd: registry cache converged to the changes made during the cut {:?} after the \
         proxy came back",
        t0.elapsed()
    );
    let _ = took;
    // The candidates' sessions (through the proxy) were Suspended during the cut: they come
    // back (their leases outlived the cut).
    for cl in [&b, &c] {
        wait_connected(cl).await;
    }
    println!(
        "etcd: the candidates' sessions Connected again {:?} after the proxy came back",
        t0.elapsed()
    );
    assert!(la.is_leading(), "{:?}", la.state());
    assert!(!fb.is_finished() && !fc.is_finished());

    // The election still hands over in order, with larger tokens.
    let lb = hand_over("etcd a→b", la, fb, &[&fc], &reader, &seen).await;
    let lc = hand_over("etcd b→c", lb, fc, &[], &reader, &seen).await;

    // Changes after the resync show up too.
    let r4 = register(&reg, "api-4").await;
    within("deregister", r1.deregister())
        .await
        .expect("deregister api-1");
    let took = converge(&cache, &["api-3", "api-4"]).await;
    println!("etcd: cache saw add+remove after the resync within {took:?}");

    within("resign", lc.resign()).await.expect("resign");
    obs.abort();
    drop(cache);
    for r in [r3, r4] {
        within("deregister", r.deregister())
            .await
            .expect("deregister");
    }
    for cl in [&a, &b, &c, &reg] {
        let _ = within("close", cl.close()).await;
    }
}

// ---- Consul: a restarted -dev agent (index reset, all data lost) ---------------------------

/// Consul: a `-dev` agent restart forgets everything (KV, sessions, checks) and resets the
/// index, so every blocking query resyncs. The documented behaviour (coord-consul/README.md):
/// sessions report `Expired`, so the leader reports `Lost` and the waiting candidates' campaigns
/// fail with `SessionExpired` ("a session ending during the wait fails it"); registrations
/// register again on a fresh session and the cache converges to them; new campaigns on the
/// same clients work and hand over in order. Tokens restart with the lost store (documented in
/// docs/RELIABILITY.md: a Consul datacenter that loses its data loses token monotonicity), so
/// only the leaders after the restart are compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_agent_restart_resync_recipes_recover() {
    let Some(mut server) = own_server(coord_testkit::Kind::Consul).await else {
        return;
    };
    let ns = namespace("resync-consul");
    let url = format!(
        "consul://{}{ns}?session_ttl=2s&timeout=1s&wait=1s",
        server.endpoint()
    );
    let backend: Arc<dyn Backend> = coord::connect_backend(&url).await.expect("connect");
    let a = Client::new(backend.clone());
    let b = Client::new(backend.clone());
    let c = Client::new(backend.clone());
    let reg = Client::new(backend.clone());
    let watcher = Client::new(backend.clone());

    let la = elected("a elected", campaign(&a, b"a")).await;
    let fb = campaign(&b, b"b");
    wait_candidates(&*backend, 2).await;
    let fc = campaign(&c, b"c");
    wait_candidates(&*backend, 3).await;
    let (seen, obs) = observer(&watcher).await;
    observed(&seen, la.fencing_token()).await;
    let r1 = register(&reg, "api-1").await;
    let r2 = register(&reg, "api-2").await;
    let cache = within("cache", watcher.registry().cache("api"))
        .await
        .expect("cache");
    converge(&cache, &["api-1", "api-2"]).await;
    let (_, mut witness) = backend
        .watch_children(&p("/services/api"))
        .await
        .expect("witness watch");
    let old_token = la.fencing_token();

    let mut server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart the agent");
        server
    })
    .await
    .expect("restart task");
    let t0 = Instant::now();

    within("the leader reports Lost", la.lost()).await;
    assert_eq!(la.state(), HoldState::Lost);
    let lost_after = t0.elapsed();
    for (who, f) in [("b", fb), ("c", fc)] {
        let r = within("a waiting candidate ends", f)
            .await
            .expect("campaign task");
        match r {
            Err(Error::SessionExpired { .. }) => {}
            other => panic!("candidate {who}: expected SessionExpired, got {other:?}"),
        }
    }
    println!(
        "consul: after the restart: leader Lost after {lost_after:?}, both waiting campaigns \
         failed with SessionExpired after {:?}",
        t0.elapsed()
    );
    let list = witness_resync(&mut witness).await;
    println!(
        "consul: witness Resync {list:?} {:?} after the restart",
        t0.elapsed()
    );
    // The counters move once the registration has returned (in the catalog layout, once the
    // health API shows it), which may be just after the cache shows the instances: wait for
    // them first, then for the cache and a fresh read to show the re-registered instances.
    within("both registrations registered again", async {
        while r1.reregistrations() == 0 || r2.reregistrations() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = converge(&cache, &["api-1", "api-2"]).await;
    println!(
        "consul: registry cache converged to the re-registered instances {:?} after the \
         restart (re-registrations: {} + {})",
        t0.elapsed(),
        r1.reregistrations(),
        r2.reregistrations()
    );
    let _ = took;
    let fresh = within("discover", watcher.registry().discover("api"))
        .await
        .expect("discover");
    assert_eq!(ids(&fresh), set(&["api-1", "api-2"]));

    // New campaigns on the same clients (fresh sessions) hand over in order.
    let lb = elected("b elected after the restart", campaign(&b, b"b")).await;
    observed(&seen, lb.fencing_token()).await;
    println!(
        "consul: first leader after the restart has token {} (before: {old_token}; the store \
         was lost)",
        lb.fencing_token()
    );
    let fc = campaign(&c, b"c");
    wait_candidates(&*backend, 2).await;
    let fa = campaign(&a, b"a");
    wait_candidates(&*backend, 3).await;
    let lc = hand_over("consul b→c", lb, fc, &[&fa], &a, &seen).await;
    let la = hand_over("consul c→a", lc, fa, &[], &a, &seen).await;

    let r3 = register(&reg, "api-3").await;
    within("deregister", r1.deregister())
        .await
        .expect("deregister api-1");
    let took = converge(&cache, &["api-2", "api-3"]).await;
    println!("consul: cache saw add+remove after the resync within {took:?}");

    within("resign", la.resign()).await.expect("resign");
    obs.abort();
    drop(cache);
    for r in [r2, r3] {
        within("deregister", r.deregister())
            .await
            .expect("deregister");
    }
    for cl in [&a, &b, &c, &reg] {
        let _ = within("close", cl.close()).await;
    }
    drop(backend);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

// ---- ZooKeeper: the main session expires and is replaced -----------------------------------

/// ZooKeeper: the backend's main session (2 s) expires during a 4 s server pause, a new one is
/// opened and every watch on it (predecessor watches, the observer, the cache) re-arms with
/// `Resync`; the recipe sessions (10 s, the server's maximum) survive. Instances change after the
/// resume; the cache converges; the election hands over in order with larger tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_main_session_expiry_recipes_recover() {
    let Some(mut server) = own_server(coord_testkit::Kind::ZooKeeper).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("resync-zk");
    let backend: Arc<dyn Backend> =
        coord::connect_backend(&format!("zk://{ep}{ns}?timeout=5s&session_timeout=2s"))
            .await
            .expect("connect");
    let writer: Arc<dyn Backend> =
        coord::connect_backend(&format!("zk://{ep}{ns}?timeout=5s&session_timeout=10s"))
            .await
            .expect("connect");
    let opts = SessionOptions::new().ttl(Duration::from_secs(10));
    let a = Client::with_session_options(backend.clone(), opts.clone());
    let b = Client::with_session_options(backend.clone(), opts.clone());
    let c = Client::with_session_options(backend.clone(), opts.clone());
    let reg = Client::with_session_options(writer.clone(), opts.clone());
    let watcher = Client::new(backend.clone());
    let reader = Client::new(writer.clone());

    let la = elected("a elected", campaign(&a, b"a")).await;
    let fb = campaign(&b, b"b");
    wait_candidates(&*writer, 2).await;
    let fc = campaign(&c, b"c");
    wait_candidates(&*writer, 3).await;
    let (seen, obs) = observer(&watcher).await;
    observed(&seen, la.fencing_token()).await;
    let r1 = register(&reg, "api-1").await;
    let r2 = register(&reg, "api-2").await;
    let cache = within("cache", watcher.registry().cache("api"))
        .await
        .expect("cache");
    converge(&cache, &["api-1", "api-2"]).await;
    let (_, mut witness) = backend
        .watch_children(&p("/services/api"))
        .await
        .expect("witness watch");

    tokio::task::block_in_place(|| server.pause());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| server.resume());
    let t0 = Instant::now();
    let r3 = register(&reg, "api-3").await;
    within("deregister", r2.deregister())
        .await
        .expect("deregister api-2");

    let list = witness_resync(&mut witness).await;
    println!(
        "zk: witness Resync {list:?} {:?} after the resume",
        t0.elapsed()
    );
    let took = converge(&cache, &["api-1", "api-3"]).await;
    println!("zk: registry cache converged {took:?} after the changes");
    wait_holding(&la).await;
    assert!(la.is_leading(), "{:?}", la.state());
    assert!(!fb.is_finished() && !fc.is_finished());

    let lb = hand_over("zk a→b", la, fb, &[&fc], &reader, &seen).await;
    let lc = hand_over("zk b→c", lb, fc, &[], &reader, &seen).await;

    let r4 = register(&reg, "api-4").await;
    within("deregister", r1.deregister())
        .await
        .expect("deregister api-1");
    let took = converge(&cache, &["api-3", "api-4"]).await;
    println!("zk: cache saw add+remove after the resync within {took:?}");

    within("resign", lc.resign()).await.expect("resign");
    obs.abort();
    drop(cache);
    for r in [r3, r4] {
        within("deregister", r.deregister())
            .await
            .expect("deregister");
    }
    for cl in [&a, &b, &c, &reg] {
        let _ = within("close", cl.close()).await;
    }
}
