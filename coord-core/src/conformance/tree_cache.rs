//! The tree cache — on every backend.

use std::pin::Pin;

use futures::{Stream, StreamExt};

use super::{client, eventually, next, short_client, within, Harness};
use crate::registry::CacheState;
use crate::tree_cache::{TreeCache, TreeCacheOptions, TreeEvent};
use crate::{Client, CreateMode, Error, Path};

type Events = Pin<Box<dyn Stream<Item = TreeEvent> + Send>>;

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

async fn put(c: &Client, path: &str, value: &[u8]) {
    c.create(&p(path), value, CreateMode::Exact).await.unwrap();
}

/// The mirror as `(path, value)` pairs.
fn contents(cache: &TreeCache) -> Vec<(String, Vec<u8>)> {
    cache
        .nodes()
        .into_iter()
        .map(|n| (n.path.to_string(), n.value))
        .collect()
}

/// Reads events until one satisfies `want` (others are allowed in between: watches may
/// coalesce); returns it.
async fn until(
    h: &dyn Harness,
    what: &str,
    events: &mut Events,
    want: impl Fn(&TreeEvent) -> bool,
) -> TreeEvent {
    within(h, what, async {
        loop {
            let ev = next(h, what, events).await;
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
}

fn added(path: &str) -> impl Fn(&TreeEvent) -> bool + '_ {
    move |ev| matches!(ev, TreeEvent::Added(n) if n.path.as_str() == path)
}

fn removed(path: &str) -> impl Fn(&TreeEvent) -> bool + '_ {
    move |ev| matches!(ev, TreeEvent::Removed(n) if n.path.as_str() == path)
}

/// The cache loads a subtree (values, stats, children), then follows creates, writes and
/// deletes at every depth with Added / Updated / Removed events; lookups agree with the
/// store. Nothing outside the root is mirrored.
pub async fn tree_cache_mirrors_subtree(h: &dyn Harness) {
    let c = client(h).await;
    put(&c, "/cfg", b"root").await;
    put(&c, "/cfg/a", b"1").await;
    put(&c, "/cfg/a/x", b"deep").await;
    put(&c, "/cfg/b", b"2").await;
    put(&c, "/cfg-sibling", b"not mine").await;
    let cache = c.tree_cache(&p("/cfg")).await.unwrap();
    assert_eq!(cache.state(), CacheState::Following);
    assert_eq!(
        contents(&cache),
        [
            ("/cfg".to_owned(), b"root".to_vec()),
            ("/cfg/a".to_owned(), b"1".to_vec()),
            ("/cfg/a/x".to_owned(), b"deep".to_vec()),
            ("/cfg/b".to_owned(), b"2".to_vec()),
        ]
    );
    assert_eq!(cache.children(&p("/cfg")).unwrap(), ["a", "b"]);
    let stored = c.get(&p("/cfg/a/x")).await.unwrap();
    assert_eq!(cache.get(&p("/cfg/a/x")).unwrap(), stored);
    assert_eq!(cache.get(&p("/cfg-sibling")), None);

    let mut events: Events = Box::pin(cache.events());
    let other = client(h).await;
    put(&other, "/cfg/a/y", b"new").await;
    until(h, "Added /cfg/a/y", &mut events, added("/cfg/a/y")).await;
    let stat = other.set(&p("/cfg/b"), b"3", None).await.unwrap();
    let ev = until(
        h,
        "Updated /cfg/b",
        &mut events,
        |ev| matches!(ev, TreeEvent::Updated(n) if n.path.as_str() == "/cfg/b"),
    )
    .await;
    let TreeEvent::Updated(n) = ev else {
        unreachable!()
    };
    assert_eq!((n.value.as_slice(), &n.stat), (&b"3"[..], &stat));
    other.delete(&p("/cfg/a/x"), None).await.unwrap();
    until(h, "Removed /cfg/a/x", &mut events, removed("/cfg/a/x")).await;
    assert_eq!(cache.children(&p("/cfg/a")).unwrap(), ["y"]);
    assert_eq!(cache.get(&p("/cfg/b")).unwrap().value, b"3");
    assert_eq!(cache.get(&p("/cfg/a/x")), None);
    assert_eq!(cache.len(), 4);
}

/// The root may be absent: the cache is empty, then follows the root's creation, its
/// deletion (everything under it goes, with Removed events) and its re-creation.
pub async fn tree_cache_root_comes_and_goes(h: &dyn Harness) {
    let c = client(h).await;
    let cache = c.tree_cache(&p("/later")).await.unwrap();
    assert!(cache.is_empty());
    let mut events: Events = Box::pin(cache.events());
    put(&c, "/later", b"").await;
    put(&c, "/later/k", b"v").await;
    until(h, "Added /later/k", &mut events, added("/later/k")).await;
    // The root mirrored too before it goes: a watch may coalesce a create and a delete that
    // fall between two of its answers (Consul: a watcher that joined while its shared query
    // was in flight catches up at the next one), and then no Removed is owed.
    eventually(h, "/later mirrored", || async { cache.len() == 2 }).await;
    c.delete(&p("/later/k"), None).await.unwrap();
    c.delete(&p("/later"), None).await.unwrap();
    until(h, "Removed /later", &mut events, removed("/later")).await;
    eventually(h, "the mirror empties", || async { cache.is_empty() }).await;
    put(&c, "/later", b"again").await;
    until(h, "Added /later again", &mut events, added("/later")).await;
    assert_eq!(contents(&cache), [("/later".to_owned(), b"again".to_vec())]);
}

/// The resync case every harness can provoke: ephemeral nodes in the subtree whose session
/// the server expires disappear from the mirror (with Removed events), while persistent ones
/// stay; nodes created afterwards are followed as before.
pub async fn tree_cache_follows_session_expiry(h: &dyn Harness) {
    let c = client(h).await;
    put(&c, "/live", b"").await;
    put(&c, "/live/config", b"keep").await;
    let owner = short_client(h).await;
    let session = owner.session().await.unwrap();
    for name in ["e1", "e2"] {
        session
            .create(&p(&format!("/live/{name}")), b"alive", CreateMode::Exact)
            .await
            .unwrap();
    }
    let cache = c.tree_cache(&p("/live")).await.unwrap();
    assert_eq!(cache.children(&p("/live")).unwrap(), ["config", "e1", "e2"]);
    let mut events: Events = Box::pin(cache.events());
    h.expire(&session).await;
    until(h, "Removed /live/e1", &mut events, removed("/live/e1")).await;
    eventually(h, "both ephemerals gone", || async {
        cache.children(&p("/live")).unwrap() == ["config"]
    })
    .await;
    assert_eq!(cache.get(&p("/live/config")).unwrap().value, b"keep");
    assert_eq!(cache.state(), CacheState::Following);
    put(&c, "/live/after", b"x").await;
    until(h, "Added /live/after", &mut events, added("/live/after")).await;
}

/// Bounds: `max_depth` limits what is mirrored (and watched); a subtree larger than
/// `max_nodes` fails the creation with a typed error, and one that grows past it later stops
/// the cache visibly. `max_nodes` 0 is refused. The cache never writes.
pub async fn tree_cache_bounds_are_typed(h: &dyn Harness) {
    let c = client(h).await;
    put(&c, "/big", b"").await;
    for i in 0..4 {
        put(&c, &format!("/big/n{i}"), b"").await;
        put(&c, &format!("/big/n{i}/leaf"), b"").await;
    }
    let shallow = c
        .tree_cache_with(&p("/big"), TreeCacheOptions::new().max_depth(1))
        .await
        .unwrap();
    assert_eq!(shallow.len(), 5);
    assert_eq!(
        shallow.children(&p("/big/n0")).unwrap(),
        Vec::<String>::new()
    );
    let only_root = c
        .tree_cache_with(&p("/big"), TreeCacheOptions::new().max_depth(0))
        .await
        .unwrap();
    assert_eq!(only_root.len(), 1);

    let r = c
        .tree_cache_with(&p("/big"), TreeCacheOptions::new().max_nodes(5))
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let r = c
        .tree_cache_with(&p("/nothing"), TreeCacheOptions::new().max_nodes(0))
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

    let capped = c
        .tree_cache_with(&p("/big"), TreeCacheOptions::new().max_nodes(9))
        .await
        .unwrap();
    assert_eq!(capped.len(), 9);
    put(&c, "/big/n0/one-too-many", b"").await;
    let err = within(h, "the capped cache stops", capped.stopped()).await;
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(capped.state().is_stopped());
    assert!(c.exists(&p("/nothing")).await.unwrap().is_none());
}

/// Dropping a pending `tree_cache` (at its first await or mid-load) writes nothing and
/// leaves the store as it was; the last clone's drop ends the event stream; and
/// `Client::shutdown` stops a cache visibly (`Stopped(Closed)`), keeping the last contents
/// readable.
pub async fn tree_cache_cancel_and_shutdown(h: &dyn Harness) {
    let c = client(h).await;
    put(&c, "/cc", b"").await;
    put(&c, "/cc/a", b"1").await;
    for polls in [1usize, 3] {
        let root = p("/cc");
        let mut fut = Box::pin(c.tree_cache(&root));
        for _ in 0..polls {
            if futures::poll!(fut.as_mut()).is_ready() {
                break; // a fast backend finished: dropping the result is the cancel then
            }
        }
        drop(fut);
    }
    assert_eq!(c.children(&p("/cc")).await.unwrap(), ["a"]);
    assert!(c.exists(&p("/nothing-here")).await.unwrap().is_none());

    let dropped = c.tree_cache(&p("/cc")).await.unwrap();
    let mut ended: Events = Box::pin(dropped.events());
    drop(dropped);
    assert_eq!(
        within(h, "the end of a dropped cache's events", ended.next()).await,
        None
    );

    let cache = c.tree_cache(&p("/cc")).await.unwrap();
    let copy = cache.clone();
    let mut events: Events = Box::pin(copy.events());
    c.shutdown().await.unwrap();
    assert_eq!(cache.state(), CacheState::Stopped(Error::Closed));
    assert_eq!(within(h, "the end of events", events.next()).await, None);
    assert_eq!(within(h, "stopped()", copy.stopped()).await, Error::Closed);
    assert_eq!(cache.get(&p("/cc/a")).unwrap().value, b"1");
}
