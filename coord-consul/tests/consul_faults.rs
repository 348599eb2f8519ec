//! Consul-specific fault tests against real `consul agent -dev` processes started by the test
//! kit. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_consul::testing::ConsulHarness;
use coord_consul::{ConsulBackend, ConsulSession};
use coord_core::recipes::HoldState;
use coord_core::{
    Backend, ChildrenEvent, Client, CreateMode, Error, KeyEvent, Path, Session, SessionOptions,
    SessionState,
};
use coord_testkit::{require_backends, Server};
use futures::StreamExt;

const BOUND: Duration = Duration::from_secs(30);

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

/// A private dev agent, or `None` (loud skip) when Consul is not installed and not required.
async fn own_agent(test: &str) -> Option<Server> {
    let r = tokio::task::spawn_blocking(Server::consul).await.unwrap();
    match r {
        Ok(s) => Some(s),
        Err(e) if e.is_not_installed() && !require_backends() => {
            eprintln!("SKIPPED: Consul not available for {test}: {e} (COORD_REQUIRE_BACKENDS=1 makes this a failure)");
            None
        }
        Err(e) => panic!("Consul did not start: {e}"),
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}

async fn wait_state(s: &dyn Session, want: SessionState, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut states = s.states();
    tokio::time::timeout(within, async {
        while let Some(st) = states.next().await {
            if st == want {
                return;
            }
        }
        panic!("session states ended before {want:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} within {within:?}; now {:?}", s.state()));
    t0.elapsed()
}

/// Runs a blocking test-kit call (start/stop/restart) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The crash failover with the minimum TTL (1 s): the leader's check passes stop; Consul
/// invalidates its session within the TTL (+ margin), the leadership reports Lost and the next
/// candidate is elected. Prints the measured times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_failover_within_check_ttl() {
    let Some(h) = coord_consul::testing::harness("crash_failover").await else {
        return;
    };
    let ttl = Duration::from_secs(1);
    // Alone the failover takes ≈ TTL; the margin covers a loaded 2-core CI machine.
    let margin = Duration::from_secs(2);
    let a = Client::with_session_options(h.client().await, SessionOptions::new().ttl(ttl));
    let b = Client::new(h.client().await);
    let la = bounded("a elected", a.election("failover").unwrap().campaign(b"a"))
        .await
        .unwrap();
    let eb = b.election("failover").unwrap();
    let fb = tokio::spawn(async move { eb.campaign(b"b").await });
    let dir = p("/elections/failover");
    bounded("two candidates", async {
        while b.children(&dir).await.unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let sa = a.current_session().await.unwrap();
    let t0 = Instant::now();
    sa.as_any()
        .downcast_ref::<ConsulSession>()
        .expect("a Consul session")
        .crash();
    bounded("old leader lost", la.lost()).await;
    let lost_after = t0.elapsed();
    let lb = bounded("successor", fb).await.unwrap().unwrap();
    let elected_after = t0.elapsed();
    wait_state(&*sa, SessionState::Expired, margin).await;
    println!(
        "consul crash failover (check TTL {ttl:?}): leader Lost after {lost_after:?}, \
         successor elected after {elected_after:?}"
    );
    assert_eq!(la.state(), HoldState::Lost);
    assert!(lb.is_leading());
    assert!(lb.fencing_token() > la.fencing_token());
    assert!(
        elected_after <= ttl + margin,
        "failover took {elected_after:?} (TTL {ttl:?})"
    );
    assert!(lost_after <= ttl + margin, "loss seen after {lost_after:?}");
}

/// A children listing costs the number of children, not the subtree: count keys fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_listing_is_o_children() {
    let Some(h) = coord_consul::testing::harness("o_children").await else {
        return;
    };
    let c = h.client().await;
    let backend = c.as_any().downcast_ref::<ConsulBackend>().unwrap();
    c.create(&p("/a"), b"", CreateMode::Exact).await.unwrap();
    for kid in ["k1", "k2", "k3"] {
        c.create(&p("/a").join(kid).unwrap(), b"", CreateMode::Exact)
            .await
            .unwrap();
    }
    // A big subtree under /a/k1: 2 levels x 30 nodes.
    for i in 0..30 {
        let n = p("/a/k1").join(&format!("g{i}")).unwrap();
        c.create(&n, b"", CreateMode::Exact).await.unwrap();
        c.create(&n.join("deep").unwrap(), b"", CreateMode::Exact)
            .await
            .unwrap();
    }
    // A sequential create adds internal counters: they must not show either.
    c.create(&p("/a/k2/s-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    let before = backend.listed_keys();
    assert_eq!(c.children(&p("/a")).await.unwrap(), ["k1", "k2", "k3"]);
    let fetched = backend.listed_keys() - before;
    println!("children(/a) with 3 children and a 61-node subtree fetched {fetched} keys");
    assert_eq!(fetched, 3, "a listing must fetch only the children");
    let before = backend.listed_keys();
    assert_eq!(c.children(&p("/a/k1")).await.unwrap().len(), 30);
    assert_eq!(backend.listed_keys() - before, 30);
    // The key layout: the depth is in the key.
    assert!(backend.key_of(&p("/a/k1")).ends_with("/__coord/n002/a/k1"));
}

/// Values: over the capability (and over Consul's 512 KiB) → ValueTooLarge before any I/O;
/// exactly the capability works for create and set; a server-side 413 (a client configured
/// above what the agent accepts) is ValueTooLarge too, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_limits() {
    let Some(h) = coord_consul::testing::harness("value_limits").await else {
        return;
    };
    let c = h.client().await;
    let max = c.capabilities().max_value_size;
    assert_eq!(max, coord_consul::DEFAULT_MAX_VALUE_SIZE);
    let over_consul = vec![3u8; 512 * 1024 + 1];
    let r = c.create(&p("/huge"), &over_consul, CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
    assert!(c.exists(&p("/huge")).await.unwrap().is_none());
    // Exactly the limit, through both write paths (create and set) and a session.
    let edge: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    c.create(&p("/edge"), &edge, CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(c.get(&p("/edge")).await.unwrap().value, edge);
    c.set(&p("/edge"), &edge, None).await.unwrap();
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/edge-eph"), &edge, CreateMode::Sequential)
        .await
        .unwrap();
    s.close().await.unwrap();
    // A client told the agent takes more: the agent's 413 comes back as ValueTooLarge.
    let h2 = ConsulHarness::new(
        &std::env::var("COORD_CONSUL_ENDPOINTS")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                coord_testkit::shared_endpoints(coord_testkit::Kind::Consul).unwrap()
            }),
        "value_limits_413",
    );
    let big = ConsulBackend::connect(&h2.url("/coordtest/value-413", "max_value_size=600000"))
        .await
        .unwrap();
    let v = vec![9u8; 500 * 1024];
    let _ = big.delete(&p("/v"), None).await;
    let r = big.create(&p("/v"), &v, CreateMode::Exact).await;
    assert!(
        matches!(r, Err(Error::ValueTooLarge { size, max }) if size == v.len() && max == 600000),
        "{r:?}"
    );
    assert!(big.exists(&p("/v")).await.unwrap().is_none());
}

/// Pausing the agent shorter than the TTL: Suspended while passes fail, Connected again
/// after; the session and its ephemeral survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_suspends_then_reconnects() {
    let Some(mut server) = own_agent("pause_suspends_then_reconnects").await else {
        return;
    };
    let url = format!(
        "consul://{}/pause?session_ttl=10s&timeout=1s",
        server.endpoint()
    );
    let c = ConsulBackend::connect(&url).await.unwrap();
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/e"), b"x", CreateMode::Exact).await.unwrap();
    server.pause();
    let suspended_after = wait_state(&*s, SessionState::Suspended, Duration::from_secs(10)).await;
    // A call while paused fails within the timeout, it does not hang.
    let t0 = Instant::now();
    let r = c.get(&p("/e")).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    // Only a hang is a failure here: the figure itself is the benchmarks' business.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.resume();
    let back_after = wait_state(&*s, SessionState::Connected, Duration::from_secs(10)).await;
    println!("pause: Suspended after {suspended_after:?}, Connected {back_after:?} after that");
    assert_eq!(
        c.get(&p("/e")).await.unwrap().stat.ephemeral_owner.as_ref(),
        Some(s.id())
    );
    s.close().await.unwrap();
    assert!(c.exists(&p("/e")).await.unwrap().is_none());
    blocking(move || drop(server));
}

/// A restarted `-dev` agent forgets everything (KV, sessions, checks) and its indexes start
/// over: the session reports Expired, blocking queries see the index go backwards and yield
/// Resync, a stopped agent gives quick errors (no hang), and the same client works after the
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_resyncs_and_recovers() {
    let Some(mut server) = own_agent("agent_restart").await else {
        return;
    };
    let url = format!(
        "consul://{}/restart?session_ttl=2s&timeout=1s&wait=1s",
        server.endpoint()
    );
    let c: Arc<dyn Backend> = Arc::new(ConsulBackend::connect(&url).await.unwrap());
    c.create(&p("/dir"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/dir/k"), b"", CreateMode::Exact)
        .await
        .unwrap();
    // Push the index well above what a fresh agent will have.
    for i in 0..60 {
        c.set(&p("/dir/k"), i.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/eph"), b"x", CreateMode::Exact).await.unwrap();
    let (cur, mut kw) = c.watch(&p("/dir/k")).await.unwrap();
    assert_eq!(cur.unwrap().value, b"59");
    let (kids, mut cw) = c.watch_children(&p("/dir")).await.unwrap();
    assert_eq!(kids, ["k"]);

    blocking(|| server.stop());
    // A stopped agent: errors come back quickly.
    let t0 = Instant::now();
    let r = c.get(&p("/dir/k")).await;
    assert!(
        matches!(
            r,
            Err(Error::ConnectionLost { .. }) | Err(Error::Timeout { .. })
        ),
        "{r:?}"
    );
    // Only a hang is a failure here: the figure itself is the benchmarks' business.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let st = wait_state(&*s, SessionState::Suspended, Duration::from_secs(5)).await;
    println!("agent stopped: session Suspended after {st:?}");

    blocking(|| server.restart()).expect("restart the agent");
    let t0 = Instant::now();
    let exp = wait_state(&*s, SessionState::Expired, Duration::from_secs(15)).await;
    println!("agent restarted (-dev, state lost): session Expired after {exp:?}");
    let r = s.create(&p("/eph2"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::SessionExpired { .. })), "{r:?}");

    // The key watch: index went backwards → Resync with the current state (gone).
    let ev = bounded("key Resync", kw.next()).await.unwrap().unwrap();
    assert_eq!(ev, KeyEvent::Resync(None), "{ev:?}");
    // One Resync for the children watch, although both of its queries saw the reset.
    let ev = bounded("children Resync", cw.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, ChildrenEvent::Resync(vec![]), "{ev:?}");
    println!("watches resynced {:?} after the restart", t0.elapsed());

    // The same client and the same watches carry on.
    c.create(&p("/dir"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/dir/k"), b"again", CreateMode::Exact)
        .await
        .unwrap();
    let ev = bounded("key Created after restart", kw.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&ev, KeyEvent::Created(n) if n.value == b"again"),
        "{ev:?}"
    );
    loop {
        match bounded("children after restart", cw.next())
            .await
            .unwrap()
            .unwrap()
        {
            ChildrenEvent::Changed(l) if l == ["k"] => break,
            ChildrenEvent::Changed(l) if l.is_empty() => {}
            other => panic!("{other:?}"),
        }
    }
    let s2 = c.open_session(SessionOptions::new()).await.unwrap();
    s2.create(&p("/eph"), b"y", CreateMode::Exact)
        .await
        .unwrap();
    s2.close().await.unwrap();
    blocking(move || drop(server));
}

/// Names with characters that URLs treat specially survive the HTTP path encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_roundtrip() {
    let Some(h) = coord_consul::testing::harness("odd_names").await else {
        return;
    };
    let c = h.client().await;
    c.create(&p("/odd"), b"", CreateMode::Exact).await.unwrap();
    let names = [
        "a b",
        "q?x=1&y",
        "h#frag",
        "pct%2F%zz",
        "ünï 日本",
        "+plus",
        "semi;colon",
    ];
    for n in names {
        let path = p("/odd").join(n).unwrap();
        c.create(&path, n.as_bytes(), CreateMode::Exact)
            .await
            .unwrap();
        assert_eq!(c.get(&path).await.unwrap().value, n.as_bytes(), "{n}");
    }
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(c.children(&p("/odd")).await.unwrap(), want);
    for n in names {
        c.delete(&p("/odd").join(n).unwrap(), None).await.unwrap();
    }
    c.delete(&p("/odd"), None).await.unwrap();
}

/// A sequence counter that is not a decimal number (foreign or damaged data) makes a
/// sequential create fail with `MalformedData`, and nothing is written: it is never read as 0
/// (numbers, and so fencing tokens, would go backwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sequence_counter_is_malformed_data() {
    let Some(h) = coord_consul::testing::harness("bad_counter").await else {
        return;
    };
    let c = h.client().await;
    c.create(&p("/q"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/q/n-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    let cfg = c.as_any().downcast_ref::<ConsulBackend>().unwrap().config();
    let counter = coord_core::adapter::flat::Layout::new(c.namespace()).sequence(&p("/q"));
    let r = reqwest::Client::new()
        .put(format!("http://{}:{}/v1/kv/{counter}", cfg.host, cfg.port))
        .body("not-a-number")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "raw KV write: {}", r.status());
    for _ in 0..2 {
        let r = c.create(&p("/q/n-"), b"", CreateMode::Sequential).await;
        assert!(matches!(r, Err(Error::MalformedData { .. })), "{r:?}");
    }
    assert_eq!(c.children(&p("/q")).await.unwrap(), ["n-0000000000"]);
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    let r = s.create(&p("/q/e-"), b"", CreateMode::Sequential).await;
    assert!(matches!(r, Err(Error::MalformedData { .. })), "{r:?}");
    s.close().await.unwrap();
}
