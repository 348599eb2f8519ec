//! etcd-specific behaviour against real servers started by the test kit: the O(children) key
//! layout, server restart, cluster member loss, a paused server, compaction under a watch, and
//! a stopped server. Every wait is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::election::Leadership;
use coord_core::recipes::{HoldState, SuspendPolicy};
use coord_core::{
    Backend, ChildrenEvent, Client, CreateMode, Error, KeyEvent, Path, SessionOptions, SessionState,
};
use coord_etcd::testing::fresh_namespace;
use coord_etcd::EtcdBackend;
use coord_testkit::{require_backends, Cluster, Proxy, Server};
use futures::{Stream, StreamExt};

/// A bound that only catches a hang; timings are measured, not asserted.
const HANG: Duration = Duration::from_secs(15);

const PATIENCE: Duration = Duration::from_secs(20);

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

fn skip_or_panic(what: &str, e: impl std::fmt::Display) {
    if require_backends() {
        panic!("etcd is required (COORD_REQUIRE_BACKENDS=1) but {what} failed: {e}");
    }
    eprintln!("SKIPPED: etcd not available ({what}: {e})");
}

fn server() -> Option<Server> {
    match tokio::task::block_in_place(Server::etcd) {
        Ok(s) => Some(s),
        Err(e) => {
            skip_or_panic("Server::etcd()", e);
            None
        }
    }
}

async fn connect(endpoints: &str, ns: &str, opts: &str) -> EtcdBackend {
    EtcdBackend::connect(&format!("etcd://{endpoints}{ns}{opts}"))
        .await
        .expect("connect")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

async fn next<S: Stream + Unpin>(what: &str, s: &mut S) -> S::Item {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

async fn wait_hold(l: &Leadership, want: HoldState) {
    let mut states = Box::pin(l.states());
    within(&format!("leadership {want:?}"), async {
        while let Some(s) = states.next().await {
            if s == want {
                return;
            }
        }
        panic!("leadership states ended before {want:?}");
    })
    .await;
}

async fn wait_session(c: &Client, want: SessionState) {
    let s = c.current_session().await.expect("a session");
    let mut states = s.states();
    within(&format!("session {want:?}"), async {
        while let Some(st) = states.next().await {
            if st == want {
                return;
            }
        }
        panic!("session states ended before {want:?} (now {:?})", s.state());
    })
    .await;
}

/// The children of a parent are one key range without grandchildren: listing 10 children
/// fetches 10 keys however large the subtree below them is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_listing_is_o_children() {
    const CHILDREN: usize = 10;
    const GRANDCHILDREN_EACH: usize = 300;
    let Some(endpoints) = coord_testkit::shared_endpoints(coord_testkit::Kind::Etcd) else {
        return;
    };
    let c = Arc::new(connect(&endpoints, &fresh_namespace("o_children"), "").await);
    c.create(&p("/big"), b"", CreateMode::Exact).await.unwrap();
    for i in 0..CHILDREN {
        c.create(&p(&format!("/big/c{i:02}")), b"", CreateMode::Exact)
            .await
            .unwrap();
    }
    let t0 = Instant::now();
    let paths: Vec<Path> = (0..CHILDREN)
        .flat_map(|i| (0..GRANDCHILDREN_EACH).map(move |j| p(&format!("/big/c{i:02}/g{j:04}"))))
        .collect();
    futures::stream::iter(paths)
        .map(|path| {
            let c = c.clone();
            async move { c.create(&path, b"grandchild", CreateMode::Exact).await }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
    eprintln!(
        "created {} grandchildren in {:?}",
        CHILDREN * GRANDCHILDREN_EACH,
        t0.elapsed()
    );

    // The raw range request of a children listing returns exactly the children.
    let prefix = c.layout().children_prefix(&p("/big"));
    let mut kv = c.etcd_client().kv_client();
    let resp = kv
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(resp.kvs().len(), CHILDREN, "keys fetched for the listing");
    assert_eq!(resp.count(), CHILDREN as i64, "keys in the children range");

    let rounds = 20;
    let t0 = Instant::now();
    for _ in 0..rounds {
        assert_eq!(c.children(&p("/big")).await.unwrap().len(), CHILDREN);
    }
    let per_children = t0.elapsed() / rounds;
    // For comparison: one child's listing (300 grandchildren) and the whole subtree range.
    let t0 = Instant::now();
    for _ in 0..rounds {
        assert_eq!(
            c.children(&p("/big/c00")).await.unwrap().len(),
            GRANDCHILDREN_EACH
        );
    }
    let per_300 = t0.elapsed() / rounds;
    eprintln!(
        "children(/big): {CHILDREN} keys fetched of a {}-node subtree, {per_children:?} per \
         listing; children(/big/c00) with {GRANDCHILDREN_EACH} children: {per_300:?}",
        CHILDREN * (GRANDCHILDREN_EACH + 1)
    );
}

/// A server restart (shorter than the TTL) keeps the lease, its ephemerals and a leadership
/// held under `TolerateSuspend`: Suspended while the server is down, Holding again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_lease_and_leadership() {
    let Some(mut server) = server() else { return };
    let ns = fresh_namespace("restart");
    let backend = connect(&server.endpoint(), &ns, "?timeout=1s").await;
    let client = Client::with_session_options(
        Arc::new(backend),
        SessionOptions::new().ttl(Duration::from_secs(8)),
    );
    let election = client
        .election("restart")
        .unwrap()
        .with_suspend_policy(SuspendPolicy::TolerateSuspend);
    let leader = within("campaign", election.campaign(b"me")).await.unwrap();
    let session = client.current_session().await.unwrap();
    let id = session.id().clone();

    // Let the leadership's monitor set up its watch first: the recipe treats an error of that
    // first watch as a loss (see the README, "contract notes").
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    eprintln!("etcd restarted in {:?}", t0.elapsed());
    // Contact comes back; the role and the session are the same.
    wait_session(&client, SessionState::Connected).await;
    wait_hold(&leader, HoldState::Holding).await;
    assert!(leader.is_leading());
    assert_eq!(session.state(), SessionState::Connected);
    assert_eq!(client.current_session().await.unwrap().id(), &id);
    let node = client.get(leader.node()).await.unwrap();
    assert_eq!(node.stat.ephemeral_owner.as_ref(), Some(&id));
    // Over more than a TTL after the restart the lease is still kept alive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(session.state(), SessionState::Connected);
    leader.resign().await.unwrap();
    session.close().await.unwrap();
}

/// In a 3-member cluster, killing members one after the other (so certainly the one the
/// client's keep-alive stream talks to) loses neither the session nor its ephemeral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_kill_keeps_session() {
    let mut cluster = match tokio::task::block_in_place(|| Cluster::etcd(3)) {
        Ok(c) => c,
        Err(e) => return skip_or_panic("Cluster::etcd(3)", e),
    };
    let ns = fresh_namespace("cluster");
    let c = connect(&cluster.endpoints(), &ns, "?timeout=2s").await;
    let s = c
        .open_session(SessionOptions::new().ttl(Duration::from_secs(4)))
        .await
        .unwrap();
    s.create(&p("/eph"), b"x", CreateMode::Exact).await.unwrap();
    let mut states = s.states();
    assert_eq!(
        next("Connected", &mut states).await,
        SessionState::Connected
    );
    let expired = Arc::new(AtomicBool::new(false));
    let seen = expired.clone();
    let watcher = tokio::spawn(async move {
        while let Some(st) = states.next().await {
            if st.is_final() {
                seen.store(true, Ordering::SeqCst);
            }
        }
    });
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.members[i].kill());
        // Two TTL/3 renewal rounds and a leader election later, all is still well.
        let t0 = Instant::now();
        within("a write with a member down", async {
            loop {
                let path = p(&format!("/k{i}"));
                match c.create(&path, b"", CreateMode::Exact).await {
                    Ok(_) | Err(Error::AlreadyExists { .. }) => break,
                    Err(e) => {
                        assert!(e.is_retryable(), "{e:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .await;
        eprintln!(
            "member {i} killed: writes work again after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !expired.load(Ordering::SeqCst),
            "session lost after killing member {i}"
        );
        assert_eq!(s.state(), SessionState::Connected, "member {i}");
        assert!(c.exists(&p("/eph")).await.unwrap().is_some(), "member {i}");
        tokio::task::block_in_place(|| cluster.members[i].restart()).expect("member restart");
        tokio::task::block_in_place(|| cluster.wait_ready(Duration::from_secs(30)))
            .expect("cluster ready");
    }
    s.close().await.unwrap();
    assert!(c.exists(&p("/eph")).await.unwrap().is_none());
    within("states end", watcher).await.unwrap();
}

/// A server paused for longer than the TTL: the leader reports Lost while the server is
/// still paused (Suspended under the default policy, then Expired at the TTL), and after the
/// resume the old session stays Expired and its node is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_longer_than_ttl_loses_leadership() {
    let Some(mut server) = server() else { return };
    let ns = fresh_namespace("pause");
    let backend = Arc::new(connect(&server.endpoint(), &ns, "?timeout=1s").await);
    let client = Client::with_session_options(
        backend.clone(),
        SessionOptions::new().ttl(Duration::from_secs(1)),
    );
    let leader = within(
        "campaign",
        client.election("pause").unwrap().campaign(b"me"),
    )
    .await
    .unwrap();
    let session = client.current_session().await.unwrap();
    let node = leader.node().clone();

    let t0 = Instant::now();
    tokio::task::block_in_place(|| server.pause());
    within("leadership lost", leader.lost()).await;
    let lost_after = t0.elapsed();
    wait_session(&client, SessionState::Expired).await;
    let expired_after = t0.elapsed();
    // Both were seen while the server is still paused (it is resumed below); the figures are
    // printed, not asserted: wall-clock limits belong to the benchmarks.
    eprintln!("paused: Lost after {lost_after:?}, Expired after {expired_after:?}");
    assert_eq!(leader.state(), HoldState::Lost);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| server.resume());

    // After the resume the lease is gone on the server too.
    within("node gone after resume", async {
        loop {
            match backend.exists(&node).await {
                Ok(None) => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(session.state(), SessionState::Expired);
    let r = session.create(&p("/late"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::SessionExpired { .. })), "{r:?}");
}

/// A watch whose stream is cut while its key changes and the history is compacted resumes
/// with `Resync` carrying the current state (never a silent gap), then goes on normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_across_compaction_resyncs() {
    let Some(server) = server() else { return };
    let ns = fresh_namespace("compaction");
    let proxy = Proxy::start(&server.endpoint()).expect("proxy");
    let writer = connect(&server.endpoint(), &ns, "").await;
    let watcher = connect(proxy.addr(), &ns, "?timeout=1s").await;
    writer
        .create(&p("/k"), b"0", CreateMode::Exact)
        .await
        .unwrap();
    let (cur, mut w) = watcher.watch(&p("/k")).await.unwrap();
    assert_eq!(cur.unwrap().value, b"0");
    let (kids, mut cw) = watcher.watch_children(&Path::root()).await.unwrap();
    assert_eq!(kids, ["k"]);
    writer.set(&p("/k"), b"1", None).await.unwrap();
    assert!(
        matches!(next("Changed 1", &mut w).await.unwrap(), KeyEvent::Changed(n) if n.value == b"1")
    );

    proxy.disable();
    writer.set(&p("/k"), b"2", None).await.unwrap();
    writer
        .create(&p("/c1"), b"", CreateMode::Exact)
        .await
        .unwrap();
    let last = writer.set(&p("/k"), b"3", None).await.unwrap().version;
    let mut kv = writer.etcd_client().kv_client();
    kv.compact(
        last.0 as i64,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.enable();

    match next("Resync after compaction", &mut w).await.unwrap() {
        KeyEvent::Resync(Some(n)) => assert_eq!(n.value, b"3"),
        other => panic!("expected Resync(3), got {other:?}"),
    }
    match next("children Resync", &mut cw).await.unwrap() {
        ChildrenEvent::Resync(l) => assert_eq!(l, ["c1", "k"]),
        other => panic!("expected a children Resync, got {other:?}"),
    }
    // And it goes on from there.
    writer.set(&p("/k"), b"4", None).await.unwrap();
    assert!(
        matches!(next("Changed 4", &mut w).await.unwrap(), KeyEvent::Changed(n) if n.value == b"4")
    );
    writer
        .create(&p("/c2"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(
        next("child c2", &mut cw).await.unwrap(),
        ChildrenEvent::Changed(vec!["c1".into(), "c2".into(), "k".into()])
    );
}

/// A stopped server: calls fail with Timeout/ConnectionLost within a few seconds, never hang;
/// a session reports Suspended within about a second; after a restart all works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_fails_fast() {
    let Some(mut server) = server() else { return };
    let ns = fresh_namespace("stopped");
    let c = connect(&server.endpoint(), &ns, "?timeout=2s").await;
    let s = c
        .open_session(SessionOptions::new().ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut states = s.states();
    assert_eq!(
        next("Connected", &mut states).await,
        SessionState::Connected
    );
    tokio::task::block_in_place(|| server.stop());
    let t0 = Instant::now();
    assert_eq!(
        next("Suspended", &mut states).await,
        SessionState::Suspended
    );
    let suspended_after = t0.elapsed();
    let t1 = Instant::now();
    let r = c.get(&p("/x")).await;
    let failed_after = t1.elapsed();
    eprintln!(
        "stopped: Suspended after {suspended_after:?}; get failed after {failed_after:?}: {r:?}"
    );
    assert!(
        matches!(r, Err(Error::Timeout { .. } | Error::ConnectionLost { .. })),
        "{r:?}"
    );
    // "Not never": generous bounds that only catch a hang (the figures are printed).
    eprintln!(
        "stopped server: Suspended after {suspended_after:?}, call failed after {failed_after:?}"
    );
    assert!(suspended_after < HANG, "{suspended_after:?}");
    assert!(failed_after < HANG, "{failed_after:?}");
    let r = c.open_session(SessionOptions::new()).await;
    assert!(r.as_ref().is_err_and(|e| e.is_retryable()), "{:?}", r.err());
    // A connect to a stopped server fails too, bounded.
    let r = EtcdBackend::connect(&format!("etcd://{}{ns}?timeout=1s", server.endpoint())).await;
    assert!(r.as_ref().is_err_and(|e| e.is_retryable()), "{:?}", r.err());

    tokio::task::block_in_place(|| server.restart()).expect("restart");
    assert_eq!(
        next("Connected again", &mut states).await,
        SessionState::Connected
    );
    within("a write after the restart", async {
        loop {
            match c.create(&p("/after"), b"", CreateMode::Exact).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    s.close().await.unwrap();
}

/// User/password authentication: the right credentials work (also for sessions and
/// watches), wrong or missing ones give `Unauthorized`, and the password is never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_auth() {
    let Some(server) = server() else { return };
    let ep = server.endpoint();
    let ns = fresh_namespace("auth");
    let admin = connect(&ep, "", "").await;
    let c = connect(&ep, &ns, "").await;
    let mut auth = admin.etcd_client().auth_client();
    auth.user_add("root", "s3cr3t-pw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.auth_enable().await.unwrap();

    let url = format!("etcd://root:s3cr3t-pw@{ep}{ns}");
    let good = EtcdBackend::connect(&url)
        .await
        .expect("connect with credentials");
    assert!(!format!("{good:?}").contains("s3cr3t"));
    let (_, mut w) = good.watch(&p("/a")).await.unwrap();
    let s = good.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/a"), b"x", CreateMode::Exact).await.unwrap();
    assert!(matches!(
        next("Created", &mut w).await.unwrap(),
        KeyEvent::Created(_)
    ));
    s.close().await.unwrap();
    assert!(matches!(
        next("Deleted", &mut w).await.unwrap(),
        KeyEvent::Deleted
    ));

    let bad = EtcdBackend::connect(&format!("etcd://root:wrong-pw@{ep}{ns}")).await;
    let e = bad.expect_err("wrong password refused");
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-pw"));
    // The client connected before auth was enabled has no token now.
    let r = c.get(&p("/a")).await;
    assert!(matches!(r, Err(Error::Unauthorized { .. })), "{r:?}");
}

/// Bad URLs are rejected before any I/O.
#[tokio::test]
async fn url_errors() {
    for bad in [
        "etcd://",
        "etcd://h:1/ns?nope=1",
        "etcd://h:1?session_ttl=500ms",
        "consul://h:1",
    ] {
        let r = coord_etcd::connect(bad).await;
        assert!(
            matches!(r, Err(Error::InvalidUrl { .. })),
            "{bad}: {:?}",
            r.err()
        );
    }
}

/// An etcd server started by this test with TLS and client-certificate auth, a
/// `coord_testkit::CustomServer` (a container with `COORD_TESTKIT=containers`); stopped on drop.
#[cfg(feature = "tls")]
struct TlsEtcd {
    server: Option<coord_testkit::CustomServer>,
    dir: std::path::PathBuf,
    port: u16,
}

#[cfg(feature = "tls")]
impl Drop for TlsEtcd {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "tls")]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a CA, a server and a client certificate with `openssl` and starts etcd with TLS.
#[cfg(feature = "tls")]
fn tls_etcd() -> Result<TlsEtcd, String> {
    use std::process::Command;
    let etcd = std::env::var_os("COORD_ETCD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| coord_testkit::tools_dir().join("bin/etcd"));
    if !etcd.exists() {
        return Err(format!("no etcd binary at {}", etcd.display()));
    }
    let dir = std::env::temp_dir().join(format!("coord-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sh = |script: &str| -> Result<(), String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 1 \
        -subj /CN=coord-test-ca 2>/dev/null
        for who in server client; do
          openssl req -newkey rsa:2048 -nodes -keyout $who-key.pem -out $who.csr \
            -subj /CN=127.0.0.1 2>/dev/null
          printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext.cnf
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -out $who.pem -days 1 -extfile ext.cnf 2>/dev/null || exit 1
        done",
    )?;
    let (port, peer) = (free_port(), free_port());
    // Relative paths: the server runs in `dir` (also in a container, where it is mounted).
    let args: Vec<std::ffi::OsString> = [
        "--name=tls".to_string(),
        "--data-dir=data".to_string(),
        format!("--listen-client-urls=https://127.0.0.1:{port}"),
        format!("--advertise-client-urls=https://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=tls=http://127.0.0.1:{peer}"),
        "--cert-file=server.pem".to_string(),
        "--key-file=server-key.pem".to_string(),
        "--client-cert-auth".to_string(),
        "--trusted-ca-file=ca.pem".to_string(),
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let server = coord_testkit::CustomServer::start(
        coord_testkit::Kind::Etcd,
        &etcd,
        &args,
        &dir,
        &dir.join("etcd.log"),
    )
    .map_err(|e| e.to_string())?;
    Ok(TlsEtcd {
        server: Some(server),
        dir,
        port,
    })
}

/// TLS with a private CA and a client certificate (`ca=`, `cert=`, `key=`).
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate() {
    let openssl = std::process::Command::new("openssl")
        .arg("version")
        .output();
    if !openssl.is_ok_and(|o| o.status.success()) {
        // Not a backend: a missing tool is a loud skip even when backends are required.
        eprintln!("SKIPPED: tls_with_client_certificate needs the `openssl` command");
        return;
    }
    let srv = match tls_etcd() {
        Ok(s) => s,
        Err(e) => return skip_or_panic("TLS etcd with openssl certificates", e),
    };
    let d = srv.dir.display();
    let url = format!(
        "etcd://127.0.0.1:{}/tls?timeout=1s&ca={d}/ca.pem&cert={d}/client.pem&key={d}/client-key.pem",
        srv.port
    );
    let c = within("the TLS server answers", async {
        loop {
            match EtcdBackend::connect(&url).await {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/e"), b"tls", CreateMode::Exact).await.unwrap();
    assert_eq!(c.get(&p("/e")).await.unwrap().value, b"tls");
    s.close().await.unwrap();
    // Without a client certificate the server refuses the handshake.
    let no_cert = format!("etcd://127.0.0.1:{}/tls?timeout=1s&ca={d}/ca.pem", srv.port);
    let r = EtcdBackend::connect(&no_cert).await;
    assert!(r.is_err(), "connected without a client certificate");
}

/// A sequence counter that is not a number is an error on every flat store (it was read as 0
/// on etcd, so numbers — and fencing tokens — could go backwards); nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sequence_counter_is_malformed_data() {
    let Some(h) = coord_etcd::testing::harness("bad_counter").await else {
        return;
    };
    let c = h.client().await;
    c.create(&p("/q"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/q/n-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    let etcd = c.as_any().downcast_ref::<EtcdBackend>().unwrap();
    let counter = etcd.layout().sequence(&p("/q"));
    let mut kv = etcd.etcd_client().kv_client();
    within("raw put", kv.put(counter, "not-a-number", None))
        .await
        .unwrap();
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

/// One of etcd's gauges from its `/metrics` page (plain HTTP on the client port).
async fn gauge(endpoint: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("metrics");
    let req = format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    within("metrics", s.read_to_string(&mut body))
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge {name} in etcd's metrics"))
}

/// Issue 17: every key and children watch of a backend rides a few shared etcd watch streams
/// (etcd's own gauges count them), and a consumer that does not read delays nobody: another
/// watch sees every change in order meanwhile, and the slow one later gets a bounded queue
/// whose collapse (a `Resync`) ends on the latest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_share_streams_and_a_slow_consumer_delays_nobody() {
    const WATCHES: usize = 1500;
    const WRITES: usize = 300;
    let Some(server) = server() else { return };
    let ns = fresh_namespace("shared");
    let b = connect(&server.endpoint(), &ns, "").await;
    let streams0 = gauge(&server.endpoint(), "etcd_debugging_mvcc_watch_stream_total").await;
    let watchers0 = gauge(&server.endpoint(), "etcd_debugging_mvcc_watcher_total").await;
    let mut many = Vec::new();
    for i in 0..WATCHES {
        many.push(b.watch(&p(&format!("/w{i}"))).await.unwrap().1);
    }
    let (_, _kids) = b.watch_children(&Path::root()).await.unwrap();
    b.create(&p("/slow"), b"0", CreateMode::Exact)
        .await
        .unwrap();
    b.create(&p("/fast"), b"0", CreateMode::Exact)
        .await
        .unwrap();
    let (_, mut slow) = b.watch(&p("/slow")).await.unwrap();
    let (_, mut fast) = b.watch(&p("/fast")).await.unwrap();
    // Every watcher is registered with etcd (bounded wait; registration is asynchronous).
    let want = watchers0 + (WATCHES + 2 + 2) as f64;
    within("watchers registered", async {
        while gauge(&server.endpoint(), "etcd_debugging_mvcc_watcher_total").await < want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let streams = gauge(&server.endpoint(), "etcd_debugging_mvcc_watch_stream_total").await;
    assert!(
        streams - streams0 <= 2.0,
        "{} watches took {} watch streams",
        WATCHES + 3,
        streams - streams0
    );

    for i in 1..=WRITES {
        let v = i.to_string();
        b.set(&p("/slow"), v.as_bytes(), None).await.unwrap();
        b.set(&p("/fast"), v.as_bytes(), None).await.unwrap();
        // The fast consumer keeps up while the slow one reads nothing.
        match next("fast change", &mut fast).await.unwrap() {
            KeyEvent::Changed(n) => assert_eq!(n.value, v.as_bytes(), "in order, none missed"),
            other => panic!("expected Changed({v}), got {other:?}"),
        }
    }
    let mut seen = Vec::new();
    let last = WRITES.to_string();
    while !matches!(seen.last(), Some(KeyEvent::Changed(n) | KeyEvent::Resync(Some(n))) if n.value == last.as_bytes())
    {
        seen.push(next("slow consumer's queue", &mut slow).await.unwrap());
    }
    assert!(
        seen.len() <= coord_core::adapter::WATCH_BUFFER,
        "bounded: {} events queued",
        seen.len()
    );
    assert!(
        seen.iter().any(|e| matches!(e, KeyEvent::Resync(_))),
        "falling behind is said (Resync), never silent: {seen:?}"
    );
    drop(many);
}
