//! What one process shares on ZooKeeper (issue 17): a `Client`'s session is the backend's main
//! ZooKeeper session (one connection), and the watches of one path share one ZooKeeper watch.
//! Against the kit's shared server; every wait is bounded.

mod common;

use std::sync::Arc;

use common::{p, within};
use coord_core::{Backend, Client, CreateMode, KeyEvent, KeyWatch, SessionOptions, SessionState};
use coord_zk::ZkBackend;
use futures::StreamExt;

/// A backend in a fresh namespace of the shared server (`None`: skipped, not required).
async fn backend(test: &str) -> Option<Arc<ZkBackend>> {
    let ep = coord_zk::testing::endpoints().await?;
    let ns = format!("/coordtest/{test}-{}", coord_zk::testing::unique_suffix());
    let url = format!("zk://{ep}{ns}?timeout=5s");
    Some(Arc::new(ZkBackend::connect(&url).await.unwrap()))
}

/// The next value a key watch reports (skipping nothing: the event must carry a node).
async fn next_value(w: &mut KeyWatch) -> Vec<u8> {
    match within("a key event", w.next()).await {
        Some(Ok(KeyEvent::Created(n) | KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)))) => {
            n.value
        }
        other => panic!("{other:?}"),
    }
}

/// The client's session is the main session: same id, its ephemerals are owned by it. A
/// second session has its own. Closing the first removes its ephemeral at once and moves the
/// backend to a new main session; the backend's watches carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_session_rides_on_the_main_session() {
    let Some(zk) = backend("rides").await else {
        return;
    };
    let main = zk.main_session_id();
    let b: Arc<dyn Backend> = zk.clone();
    let client = Client::new(b.clone());
    let s = client.session().await.unwrap();
    assert_eq!(s.id(), &main, "the client's session is the main session");
    let made = s.create(&p("/eph"), b"1", CreateMode::Exact).await.unwrap();
    assert_eq!(made.stat.ephemeral_owner.as_ref(), Some(&main));
    let other = b.open_session(SessionOptions::new()).await.unwrap();
    assert_ne!(other.id(), &main, "a second session has its own connection");
    other.close().await.unwrap();

    b.create(&p("/k"), b"a", CreateMode::Exact).await.unwrap();
    let (_, mut w) = b.watch(&p("/k")).await.unwrap();
    client.close().await.unwrap();
    assert_eq!(s.state(), SessionState::Closed);
    assert!(
        b.exists(&p("/eph")).await.unwrap().is_none(),
        "ephemeral gone"
    );
    assert_ne!(zk.main_session_id(), main, "a new main session");
    b.set(&p("/k"), b"b", None).await.unwrap();
    assert_eq!(next_value(&mut w).await, b"b");

    // The next session rides on the new main session.
    let s2 = client.session().await.unwrap();
    assert_eq!(s2.id(), &zk.main_session_id());
    client.close().await.unwrap();
}

/// Watches of one path share its ZooKeeper watch: a watch made after a write starts from it;
/// each watch gets every change; dropping one does not disturb the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_one_path_share_one_zookeeper_watch() {
    let Some(zk) = backend("shared-watch").await else {
        return;
    };
    let b: Arc<dyn Backend> = zk;
    b.create(&p("/k"), b"1", CreateMode::Exact).await.unwrap();
    let (first, mut w1) = b.watch(&p("/k")).await.unwrap();
    assert_eq!(first.unwrap().value, b"1");
    b.set(&p("/k"), b"2", None).await.unwrap();
    let (now, mut w2) = b.watch(&p("/k")).await.unwrap();
    assert_eq!(
        now.unwrap().value,
        b"2",
        "a new watch starts after the write"
    );
    assert_eq!(next_value(&mut w1).await, b"2");
    let mut many = Vec::new();
    for _ in 0..100 {
        many.push(b.watch(&p("/k")).await.unwrap().1);
    }
    b.set(&p("/k"), b"3", None).await.unwrap();
    assert_eq!(next_value(&mut w1).await, b"3");
    assert_eq!(next_value(&mut w2).await, b"3");
    for w in many.iter_mut() {
        assert_eq!(next_value(w).await, b"3");
    }
    drop(w1);
    drop(many);
    b.delete(&p("/k"), None).await.unwrap();
    let ev = within("delete", w2.next()).await;
    assert!(matches!(ev, Some(Ok(KeyEvent::Deleted))), "{ev:?}");
    b.create(&p("/k"), b"4", CreateMode::Exact).await.unwrap();
    assert_eq!(next_value(&mut w2).await, b"4");
}
