//! What one process shares on ZooKeeper (issue 17): a `Client`'s session is the backend's main
//! ZooKeeper session (one connection), and the watches of one path share one ZooKeeper watch.
//! Against the kit's shared server; every wait is bounded.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use common::{p, within};
use coord_core::{
    Backend, ChildrenEvent, Client, CreateMode, KeyEvent, KeyWatch, SessionOptions, SessionState,
};
use coord_zk::{ZkBackend, ZkSession};
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

/// Panics raised inside zookeeper-client in this test process (counted by a hook that then
/// hands over to the default one).
static CLIENT_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_client_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("zookeeper-client"))
            {
                CLIENT_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// The main session crashes (its client task is dropped, as at a runtime's shutdown) while
/// watchers are armed on it. zookeeper-client 0.11 panics in a watcher polled after that
/// (it unwraps the cancelled channel): the adapter never polls one, and the watches carry on
/// over the new main session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_main_session_panics_nowhere_and_its_watches_carry_on() {
    count_client_panics();
    let Some(zk) = backend("crash-watch").await else {
        return;
    };
    let main = zk.main_session_id();
    let b: Arc<dyn Backend> = zk.clone();
    b.create(&p("/k"), b"1", CreateMode::Exact).await.unwrap();
    b.create(&p("/dir"), b"", CreateMode::Exact).await.unwrap();
    let (_, mut keys) = b.watch(&p("/k")).await.unwrap();
    let (_, mut children) = b.watch_children(&p("/dir")).await.unwrap();
    let client = Client::new(b.clone());
    let s = client.session().await.unwrap();
    assert_eq!(s.id(), &main, "the session rides on the main session");
    let zs = s.as_any().downcast_ref::<ZkSession>().unwrap();
    assert!(zs.crash(), "the main client's task was aborted");
    // Calls in flight on the crashed client fail; the backend opens a new main session.
    within("a new main session", async {
        while zk.main_session_id() == main {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    b.set(&p("/k"), b"2", None).await.unwrap();
    // A resync to the state before the write may come first (the watcher was lost).
    let mut seen = next_value(&mut keys).await;
    if seen == b"1" {
        seen = next_value(&mut keys).await;
    }
    assert_eq!(seen, b"2");
    b.create(&p("/dir/c"), b"", CreateMode::Exact)
        .await
        .unwrap();
    loop {
        match within("the new child", children.next()).await {
            Some(Ok(ChildrenEvent::Changed(list) | ChildrenEvent::Resync(list)))
                if list.iter().any(|c| c == "c") =>
            {
                break
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        CLIENT_PANICS.load(Ordering::SeqCst),
        0,
        "zookeeper-client panicked (see the output above)"
    );
}
