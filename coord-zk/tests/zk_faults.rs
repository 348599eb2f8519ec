//! ZooKeeper-specific fault tests against real servers from coord-testkit (tickTime 500).
//! Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{p, within};
use coord_core::recipes::{HoldState, SuspendPolicy};
use coord_core::{Backend, Client, CreateMode, Path, Session, SessionOptions, SessionState};
use coord_testkit::{Cluster, Server};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a blocking test-kit call off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A server from the kit, or `None` (skip) when ZooKeeper is unavailable and not required.
async fn server() -> Option<Server> {
    match blocking(Server::zookeeper).await {
        Ok(s) => Some(s),
        Err(e) if coord_testkit::require_backends() => panic!("ZooKeeper required: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: ZooKeeper not available: {e}");
            None
        }
    }
}

async fn backend(endpoints: &str, ns: &str) -> Arc<dyn Backend> {
    coord_zk::connect(&format!("zk://{endpoints}{ns}?timeout=5s"))
        .await
        .unwrap()
}

async fn wait_state(s: &Arc<dyn Session>, want: SessionState) {
    let mut states = s.states();
    within(&format!("session state {want:?}"), async {
        while let Some(st) = states.next().await {
            if st == want {
                return;
            }
        }
        panic!("states ended before {want:?}");
    })
    .await;
}

/// (a) A restart of the only server within the session timeout keeps the session, its
/// ephemerals and a leadership that tolerates suspension; the default policy reports Lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_within_session_timeout_keeps_session() {
    let Some(mut srv) = server().await else {
        return;
    };
    let ep = srv.endpoint();
    let ttl = SessionOptions::new().ttl(Duration::from_secs(15));
    let b = backend(&ep, "/faults/restart").await;
    let client = Client::with_session_options(b.clone(), ttl.clone());
    let tolerant = within(
        "tolerant leadership",
        client
            .election("tolerant")
            .unwrap()
            .with_suspend_policy(SuspendPolicy::TolerateSuspend)
            .campaign(b"a"),
    )
    .await
    .unwrap();
    let strict_client = Client::with_session_options(b.clone(), ttl.clone());
    let strict = within(
        "default-policy leadership",
        strict_client.election("strict").unwrap().campaign(b"s"),
    )
    .await
    .unwrap();
    let session = client.session().await.unwrap();
    let id = session.id().clone();
    session
        .create(&p("/eph"), b"x", CreateMode::Exact)
        .await
        .unwrap();

    let srv = blocking(move || {
        srv.restart().expect("restart");
        srv
    })
    .await;
    wait_state(&session, SessionState::Connected).await;
    assert_eq!(session.id(), &id);
    let check = backend(&ep, "/faults/restart").await;
    let st = check
        .exists(&p("/eph"))
        .await
        .unwrap()
        .expect("ephemeral kept");
    assert_eq!(st.ephemeral_owner.as_ref(), Some(&id));
    assert!(tolerant.is_leading(), "{:?}", tolerant.state());
    assert_eq!(tolerant.state(), HoldState::Holding);
    assert_eq!(
        strict.state(),
        HoldState::Lost,
        "the default policy gives up on Suspended"
    );
    drop(srv);
}

/// Which member of `cluster` serves the session `sid` (from the `cons` four-letter word).
async fn serving_member(cluster: &Cluster, sid: &str) -> Option<usize> {
    for (i, m) in cluster.members.iter().enumerate() {
        let Ok(mut s) = tokio::net::TcpStream::connect(m.endpoint()).await else {
            continue;
        };
        if s.write_all(b"cons").await.is_err() {
            continue;
        }
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
        if out.contains(&format!("sid={sid},")) || out.contains(&format!("sid={sid})")) {
            return Some(i);
        }
    }
    None
}

/// (b) In a 3-node ensemble, killing the server the session is connected to does not lose
/// the session: it moves to another server, its ephemerals remain, it is Connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_member_killed_session_survives() {
    let cluster = match blocking(|| Cluster::zookeeper(3)).await {
        Ok(c) => c,
        Err(e) if coord_testkit::require_backends() => panic!("ZooKeeper required: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: ZooKeeper ensemble not available: {e}");
            return;
        }
    };
    let eps = cluster.endpoints();
    let b = backend(&eps, "/faults/ensemble").await;
    let s = b
        .open_session(SessionOptions::new().ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    s.create(&p("/member"), b"m", CreateMode::Exact)
        .await
        .unwrap();
    let sid = s.id().0.clone();
    let victim = within("the serving member", async {
        loop {
            if let Some(i) = serving_member(&cluster, &sid).await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let mut cluster = cluster;
    cluster.members[victim].kill();
    // The client notices the dead connection, moves to another member, and is Connected.
    within("session connected again", async {
        loop {
            if serving_member(&cluster, &sid).await.is_some()
                && s.state() == SessionState::Connected
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(s.state(), SessionState::Connected);
    let others: Vec<String> = cluster
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, m)| m.endpoint())
        .collect();
    let check = backend(&others.join(","), "/faults/ensemble").await;
    let st = within("read the ephemeral", check.exists(&p("/member")))
        .await
        .unwrap()
        .expect("ephemeral kept");
    assert_eq!(st.ephemeral_owner.as_ref(), Some(s.id()));
    let created = s
        .create(&p("/after"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(created.stat.ephemeral_owner.as_ref(), Some(s.id()));
    blocking(move || drop(cluster)).await;
}

/// (c) Pausing (SIGSTOP) the only server longer than the leader's session timeout: the leader
/// reports Lost (its client declares the session expired), and after resume the waiting
/// candidate of the resumed server is elected with a larger fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_leader_lost_successor_elected() {
    let Some(mut srv) = server().await else {
        return;
    };
    let ep = srv.endpoint();
    let a = Client::with_session_options(
        backend(&ep, "/faults/pause").await,
        SessionOptions::new().ttl(Duration::from_secs(2)),
    );
    let b = Client::with_session_options(
        backend(&ep, "/faults/pause").await,
        SessionOptions::new().ttl(Duration::from_secs(30)),
    );
    let la = within(
        "a elected",
        a.election("p")
            .unwrap()
            .with_suspend_policy(SuspendPolicy::TolerateSuspend)
            .campaign(b"a"),
    )
    .await
    .unwrap();
    let eb = b.election("p").unwrap();
    let eb2 = eb.clone();
    let fb = tokio::spawn(async move { eb2.campaign(b"b").await });
    within("b queued", async {
        while b.children(eb.path()).await.map(|c| c.len()).unwrap_or(0) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    srv.pause();
    // Lost once the client has been cut off for 1.4 × 2 s (Suspended before that).
    let lost = tokio::time::timeout(Duration::from_secs(10), la.lost()).await;
    let state_while_paused = la.state();
    srv.resume();
    assert!(
        lost.is_ok(),
        "leader not Lost while paused: {state_while_paused:?}"
    );
    assert_eq!(la.state(), HoldState::Lost);
    let lb = within("successor elected", fb).await.unwrap().unwrap();
    assert!(lb.is_leading());
    assert!(lb.fencing_token() > la.fencing_token());
    lb.resign().await.unwrap();
    drop(srv);
}

/// (d) When the backend's own main session expires (server paused past its timeout), the
/// backend opens a new one and its watches carry on with a `Resync`, never ending silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_session_expiry_resyncs_watches() {
    use coord_core::{ChildrenEvent, KeyEvent};
    let Some(mut srv) = server().await else {
        return;
    };
    let ep = srv.endpoint();
    let url = format!("zk://{ep}/faults/main?timeout=5s&session_timeout=2s");
    let b = coord_zk::ZkBackend::connect(&url).await.unwrap();
    let before = b.main_session_id();
    b.create(&p("/k"), b"1", CreateMode::Exact).await.unwrap();
    let (_, mut kw) = b.watch(&p("/k")).await.unwrap();
    let (_, mut cw) = b.watch_children(&Path::root()).await.unwrap();
    srv.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    srv.resume();
    let writer = backend(&ep, "/faults/main").await;
    writer.set(&p("/k"), b"2", None).await.unwrap();
    writer
        .create(&p("/k2"), b"", CreateMode::Exact)
        .await
        .unwrap();
    let mut resynced = false;
    within("key watch sees the new value", async {
        while let Some(ev) = kw.next().await {
            match ev.unwrap() {
                KeyEvent::Resync(Some(n)) if n.value == b"2" => {
                    resynced = true;
                    return;
                }
                KeyEvent::Changed(n) if n.value == b"2" => return,
                KeyEvent::Resync(_) => resynced = true,
                other => panic!("{other:?}"),
            }
        }
        panic!("key watch ended");
    })
    .await;
    assert!(resynced, "a Resync after the main session was replaced");
    within("children watch sees k2", async {
        while let Some(ev) = cw.next().await {
            match ev.unwrap() {
                ChildrenEvent::Resync(l) | ChildrenEvent::Changed(l)
                    if l.contains(&"k2".to_owned()) =>
                {
                    return
                }
                ChildrenEvent::Resync(_) | ChildrenEvent::Changed(_) => {}
                other => panic!("{other:?}"),
            }
        }
        panic!("children watch ended");
    })
    .await;
    assert_ne!(b.main_session_id(), before, "a new main session");
    drop(srv);
}

/// (e) A call already sent when the server stops answering (paused) fails as a retryable
/// `ConnectionLost` — its fate is unknown, as after any lost connection — never as a final
/// error: the recipes' clean-ups retry on it (a candidate-node removal that gave up there left
/// a node of a live session behind, and nobody was elected any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cut_off_by_paused_server_is_retryable() {
    let Some(mut srv) = server().await else {
        return;
    };
    let ep = srv.endpoint();
    // The main client gives up on a silent connection after 0.4 × 2 s, well within `timeout`.
    let url = format!("zk://{ep}/faults/cutoff?timeout=5s&session_timeout=2s");
    let b = coord_zk::connect(&url).await.unwrap();
    b.create(&p("/k"), b"", CreateMode::Exact).await.unwrap();
    srv.pause();
    let r = b.children(&Path::root()).await;
    srv.resume();
    let e = r.expect_err("no answer from a paused server");
    assert!(e.is_retryable(), "not retryable: {e:?}");
    within("children after the resume", async {
        loop {
            match b.children(&Path::root()).await {
                Ok(c) => break assert_eq!(c, vec!["k".to_owned()]),
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    drop(srv);
}
