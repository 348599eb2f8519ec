//! Time-dependent behaviour of the in-memory backend and the recipes under faults, on tokio's
//! paused clock: exact and deterministic.

use std::sync::Arc;
use std::time::Duration;

use coord::mem::{MemBackend, MemSession};
use coord::recipes::{HoldState, SuspendPolicy};
use coord::{Backend, Client, CreateMode, Path, Session, SessionOptions, SessionState};
use futures::StreamExt;
use tokio::time::Instant;

fn mem(s: &Arc<dyn Session>) -> &MemSession {
    s.as_any()
        .downcast_ref::<MemSession>()
        .expect("mem session")
}

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn crash_expires_exactly_after_the_ttl() {
    let b = MemBackend::new();
    let ttl = Duration::from_secs(3);
    let s = b
        .open_session(SessionOptions::new().ttl(ttl))
        .await
        .unwrap();
    s.create(&p("/e"), b"", CreateMode::Exact).await.unwrap();
    let (_, mut w) = b.watch(&p("/e")).await.unwrap();
    let t0 = Instant::now();
    mem(&s).crash();
    w.next().await.unwrap().unwrap();
    assert_eq!(t0.elapsed(), ttl);
    assert_eq!(s.state(), SessionState::Expired);
}

#[tokio::test(start_paused = true)]
async fn short_partition_recovers_and_keeps_ephemerals() {
    let b = MemBackend::new();
    let s = b
        .open_session(SessionOptions::new().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    s.create(&p("/keep"), b"", CreateMode::Exact).await.unwrap();
    let mut states = s.states();
    assert_eq!(states.next().await, Some(SessionState::Connected));
    mem(&s).partition(Duration::from_secs(1));
    assert_eq!(states.next().await, Some(SessionState::Suspended));
    // While cut off, writes through the session fail as retryable and write nothing.
    let r = s.create(&p("/during"), b"", CreateMode::Exact).await;
    assert!(r.as_ref().is_err_and(|e| e.is_retryable()), "{r:?}");
    assert!(b.exists(&p("/during")).await.unwrap().is_none());
    assert_eq!(states.next().await, Some(SessionState::Connected));
    assert!(b.exists(&p("/keep")).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn long_partition_expires_at_the_ttl() {
    let b = MemBackend::new();
    let ttl = Duration::from_secs(2);
    let s = b
        .open_session(SessionOptions::new().ttl(ttl))
        .await
        .unwrap();
    let t0 = Instant::now();
    mem(&s).partition(Duration::from_secs(60));
    let mut states = s.states();
    assert_eq!(states.next().await, Some(SessionState::Suspended));
    assert_eq!(states.next().await, Some(SessionState::Expired));
    assert_eq!(t0.elapsed(), ttl);
    assert_eq!(states.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_session_handle_closes_it() {
    let b = MemBackend::new();
    let s = b.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/tmp"), b"", CreateMode::Exact).await.unwrap();
    drop(s);
    assert!(b.exists(&p("/tmp")).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_client_ends_its_watches() {
    let b = MemBackend::new();
    let (_, mut w) = b.watch(&p("/x")).await.unwrap();
    let (_, mut cw) = b.watch_children(&Path::root()).await.unwrap();
    drop(b);
    assert!(w.next().await.is_none());
    assert!(cw.next().await.is_none());
}

/// Under the default policy a suspended leader gives up at once, and its node is removed once
/// contact is back, so the next candidate is elected without waiting for an expiry.
#[tokio::test(start_paused = true)]
async fn suspended_leader_gives_up_and_hands_over_on_reconnect() {
    let store = "mem://suspend-handover?session_ttl=5s";
    let a = coord::connect(store).await.unwrap();
    let b = coord::connect(store).await.unwrap();
    let la = a.election("e").unwrap().campaign(b"a").await.unwrap();
    let eb = b.election("e").unwrap();
    let fb = tokio::spawn(async move { eb.campaign(b"b").await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let sa = a.current_session().await.unwrap();
    let t0 = Instant::now();
    mem(&sa).partition(Duration::from_secs(1));
    assert_eq!(la.state(), HoldState::Lost);
    let lb = fb.await.unwrap().unwrap();
    // Elected when a's contact came back (1 s), not at a's expiry (5 s).
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert!(lb.fencing_token() > la.fencing_token());
    assert_eq!(sa.state(), SessionState::Connected);
}

/// Under TolerateSuspend a short partition keeps the leadership.
#[tokio::test(start_paused = true)]
async fn tolerant_leader_survives_a_short_partition() {
    let c = Client::new(Arc::new(MemBackend::new()));
    let l = c
        .election("e")
        .unwrap()
        .with_suspend_policy(SuspendPolicy::TolerateSuspend)
        .campaign(b"a")
        .await
        .unwrap();
    let mut states = Box::pin(l.states());
    assert_eq!(states.next().await, Some(HoldState::Holding));
    let s = c.current_session().await.unwrap();
    mem(&s).partition(Duration::from_millis(500));
    assert_eq!(l.state(), HoldState::Suspended);
    assert_eq!(states.next().await, Some(HoldState::Suspended));
    assert_eq!(states.next().await, Some(HoldState::Holding));
    assert!(l.is_leading());
}

/// A registration follows its client through a session expiry.
#[tokio::test(start_paused = true)]
async fn registration_comes_back_after_expiry() {
    let c = coord::connect("mem://rereg?session_ttl=1s").await.unwrap();
    let reg = c
        .registry()
        .register(&coord::registry::Instance::new("s", "i", "h", 1))
        .await
        .unwrap();
    for round in 1..=3 {
        let s = c.current_session().await.unwrap();
        mem(&s).crash();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(reg.reregistrations(), round);
        assert_eq!(c.registry().discover("s").await.unwrap().len(), 1);
    }
}
