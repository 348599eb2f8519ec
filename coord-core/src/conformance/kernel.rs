//! Kernel semantics: keys, versions, sequential creation, sessions, ephemerals, watches.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use super::{assert_quiet, eventually, next, within, Harness};
use crate::kernel::*;
use crate::{create_parents, Error, Path};

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

/// Invalid paths are rejected by the parser, so nothing can reach the backend; the backend
/// also holds nothing afterwards.
pub async fn path_rules_reject_before_io(h: &dyn Harness) {
    let c = h.client().await;
    for bad in [
        "", "rel", "/a/", "/a//b", "/..", "/a/.", "/a\0b", "/a\u{1}", "/\u{9f}", "/__coord",
    ] {
        assert!(
            matches!(Path::new(bad), Err(Error::InvalidPath { .. })),
            "{bad:?} accepted"
        );
    }
    let long = format!("/{}", "x".repeat(300));
    assert!(matches!(Path::new(&long), Err(Error::InvalidPath { .. })));
    assert!(matches!(
        Path::root().join("a/b"),
        Err(Error::InvalidPath { .. })
    ));
    assert!(c.children(&Path::root()).await.unwrap().is_empty());
}

/// Checks: create and get.
pub async fn create_and_get(h: &dyn Harness) {
    let c = h.client().await;
    let made = c
        .create(&p("/a"), b"hello", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(made.path, p("/a"));
    assert_eq!(made.sequence, None);
    assert_eq!(made.stat.ephemeral_owner, None);
    let n = c.get(&p("/a")).await.unwrap();
    assert_eq!(n.value, b"hello");
    assert_eq!(n.stat.version, made.stat.version);
    // A second client in the same namespace sees it.
    let c2 = h.client().await;
    assert_eq!(c2.get(&p("/a")).await.unwrap().value, b"hello");
    assert!(matches!(
        c.get(&p("/missing")).await,
        Err(Error::NotFound { .. })
    ));
}

/// Rule: a create needs its parent (NoParent); nothing is written.
pub async fn create_under_missing_parent(h: &dyn Harness) {
    let c = h.client().await;
    let r = c
        .create(&p("/no/such/parent"), b"x", CreateMode::Exact)
        .await;
    assert!(matches!(r, Err(Error::NoParent { .. })), "{r:?}");
    assert!(c.exists(&p("/no")).await.unwrap().is_none());
    assert!(c.exists(&p("/no/such/parent")).await.unwrap().is_none());
}

/// Checks: create duplicate.
pub async fn create_duplicate(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/d"), b"first", CreateMode::Exact)
        .await
        .unwrap();
    let r = c.create(&p("/d"), b"second", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    assert_eq!(c.get(&p("/d")).await.unwrap().value, b"first");
    // Also through a session (ephemeral) over a persistent key.
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    let r = s.create(&p("/d"), b"third", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    assert_eq!(c.get(&p("/d")).await.unwrap().value, b"first");
    s.close().await.unwrap();
}

/// Checks: create parents helper.
pub async fn create_parents_helper(h: &dyn Harness) {
    let c = h.client().await;
    create_parents(&*c, &p("/x/y/z")).await.unwrap();
    assert!(c.exists(&p("/x/y/z")).await.unwrap().is_some());
    // Idempotent.
    create_parents(&*c, &p("/x/y/z")).await.unwrap();
    assert_eq!(c.children(&p("/x")).await.unwrap(), vec!["y".to_owned()]);
}

/// Checks: set with version.
pub async fn set_with_version(h: &dyn Harness) {
    let c = h.client().await;
    let v0 = c
        .create(&p("/s"), b"0", CreateMode::Exact)
        .await
        .unwrap()
        .stat
        .version;
    let v1 = c.set(&p("/s"), b"1", Some(v0)).await.unwrap().version;
    assert_ne!(v0, v1, "a write must change the version");
    let v2 = c.set(&p("/s"), b"2", None).await.unwrap().version;
    assert_ne!(v1, v2);
    let n = c.get(&p("/s")).await.unwrap();
    assert_eq!((n.value.as_slice(), n.stat.version), (&b"2"[..], v2));
}

/// Checks: set missing key.
pub async fn set_missing_key(h: &dyn Harness) {
    let c = h.client().await;
    let r = c.set(&p("/nope"), b"x", None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    assert!(c.exists(&p("/nope")).await.unwrap().is_none());
}

/// Checks: cas mismatch writes nothing.
pub async fn cas_mismatch_writes_nothing(h: &dyn Harness) {
    let c = h.client().await;
    let v0 = c
        .create(&p("/cas"), b"a", CreateMode::Exact)
        .await
        .unwrap()
        .stat
        .version;
    let v1 = c.set(&p("/cas"), b"b", Some(v0)).await.unwrap().version;
    let r = c.set(&p("/cas"), b"c", Some(v0)).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    let n = c.get(&p("/cas")).await.unwrap();
    assert_eq!(n.value, b"b");
    assert_eq!(n.stat.version, v1);
}

/// Checks: delete with stale version.
pub async fn delete_with_stale_version(h: &dyn Harness) {
    let c = h.client().await;
    let v0 = c
        .create(&p("/dv"), b"a", CreateMode::Exact)
        .await
        .unwrap()
        .stat
        .version;
    let v1 = c.set(&p("/dv"), b"b", None).await.unwrap().version;
    let r = c.delete(&p("/dv"), Some(v0)).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    assert!(c.exists(&p("/dv")).await.unwrap().is_some());
    c.delete(&p("/dv"), Some(v1)).await.unwrap();
    assert!(c.exists(&p("/dv")).await.unwrap().is_none());
}

/// Checks: delete non empty.
pub async fn delete_non_empty(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/ne"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/ne/kid"), b"", CreateMode::Exact)
        .await
        .unwrap();
    let r = c.delete(&p("/ne"), None).await;
    assert!(matches!(r, Err(Error::NotEmpty { .. })), "{r:?}");
    assert!(c.exists(&p("/ne/kid")).await.unwrap().is_some());
    c.delete(&p("/ne/kid"), None).await.unwrap();
    c.delete(&p("/ne"), None).await.unwrap();
}

/// Checks: a parent deleted and made again (ephemeral, then gone, then persistent) between
/// two creates under it is judged as it is now, and a node whose children came and went can
/// be deleted (backends may remember what they saw of a parent: this pins that they check it).
pub async fn parent_replaced_between_creates(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/pr"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/pr/a"), b"", CreateMode::Exact).await.unwrap();
    c.delete(&p("/pr/a"), None).await.unwrap();
    c.delete(&p("/pr"), None).await.unwrap();
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/pr"), b"", CreateMode::Exact).await.unwrap();
    let r = c.create(&p("/pr/b"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::EphemeralParent { .. })), "{r:?}");
    s.close().await.unwrap();
    let r = c.create(&p("/pr/c"), b"", CreateMode::Sequential).await;
    assert!(matches!(r, Err(Error::NoParent { .. })), "{r:?}");
    c.create(&p("/pr"), b"v", CreateMode::Exact).await.unwrap();
    // A value write changes the parent's version; creates under it still work.
    c.set(&p("/pr"), b"w", None).await.unwrap();
    c.create(&p("/pr/d"), b"", CreateMode::Exact).await.unwrap();
    assert_eq!(c.children(&p("/pr")).await.unwrap(), vec!["d".to_owned()]);
    c.delete(&p("/pr/d"), None).await.unwrap();
    let stale = c.exists(&p("/pr")).await.unwrap().unwrap().version;
    c.set(&p("/pr"), b"x", None).await.unwrap();
    let r = c.delete(&p("/pr"), Some(stale)).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    c.delete(&p("/pr"), None).await.unwrap();
    let r = c.delete(&p("/pr"), None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
}

/// Checks: a delete racing a child create under a parent that had a child before never lets
/// both succeed (that would leave an orphan), and the tree afterwards matches the outcome.
pub async fn delete_races_child_create(h: &dyn Harness) {
    let c = h.client().await;
    let c2 = h.client().await;
    let (mut deleted, mut created) = (0, 0);
    for i in 0..20 {
        let parent = p(&format!("/race{i}"));
        c.create(&parent, b"", CreateMode::Exact).await.unwrap();
        let first = parent.join("a").unwrap();
        c.create(&first, b"", CreateMode::Exact).await.unwrap();
        c.delete(&first, None).await.unwrap();
        let kid = parent.join("b").unwrap();
        let (d, k) = tokio::join!(
            c.delete(&parent, None),
            c2.create(&kid, b"", CreateMode::Exact)
        );
        assert!(
            !(d.is_ok() && k.is_ok()),
            "round {i}: both the delete and the create succeeded"
        );
        if d.is_ok() {
            deleted += 1;
            assert!(c.exists(&kid).await.unwrap().is_none(), "round {i}: orphan");
            assert!(matches!(k, Err(Error::NoParent { .. })), "round {i}: {k:?}");
        } else {
            created += 1;
            assert!(matches!(d, Err(Error::NotEmpty { .. })), "round {i}: {d:?}");
            c.delete(&kid, None).await.unwrap();
            c.delete(&parent, None).await.unwrap();
        }
    }
    assert_eq!(deleted + created, 20);
}

/// Checks: delete missing.
pub async fn delete_missing(h: &dyn Harness) {
    let c = h.client().await;
    let r = c.delete(&p("/gone"), None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
}

/// Checks: children sorted.
pub async fn children_sorted(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/kids"), b"", CreateMode::Exact).await.unwrap();
    for name in ["b", "a", "c", "a0"] {
        c.create(&p("/kids").join(name).unwrap(), b"", CreateMode::Exact)
            .await
            .unwrap();
    }
    // Grandchildren are not children.
    c.create(&p("/kids/a/deep"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(
        c.children(&p("/kids")).await.unwrap(),
        ["a", "a0", "b", "c"]
    );
    assert!(c.children(&p("/kids/b")).await.unwrap().is_empty());
    assert!(matches!(
        c.children(&p("/nokids")).await,
        Err(Error::NotFound { .. })
    ));
}

/// Checks: exists reports stat.
pub async fn exists_reports_stat(h: &dyn Harness) {
    let c = h.client().await;
    assert!(c.exists(&p("/e")).await.unwrap().is_none());
    let made = c.create(&p("/e"), b"v", CreateMode::Exact).await.unwrap();
    assert_eq!(
        c.exists(&p("/e")).await.unwrap().unwrap().version,
        made.stat.version
    );
}

/// Checks: `sync` is accepted on a missing path and on a present one (a candidate syncs on
/// its own node, which may be gone), and a read after it sees a write another client made.
pub async fn sync_then_read_sees_writes(h: &dyn Harness) {
    let c = h.client().await;
    let other = h.client().await;
    c.sync(&p("/synced/missing")).await.unwrap();
    other
        .create(&p("/synced"), b"v1", CreateMode::Exact)
        .await
        .unwrap();
    c.sync(&p("/synced")).await.unwrap();
    assert_eq!(c.get(&p("/synced")).await.unwrap().value, b"v1");
    other.delete(&p("/synced"), None).await.unwrap();
    c.sync(&p("/synced")).await.unwrap();
    assert!(c.exists(&p("/synced")).await.unwrap().is_none());
}

/// Checks: value too large writes nothing.
pub async fn value_too_large_writes_nothing(h: &dyn Harness) {
    let c = h.client().await;
    let max = c.capabilities().max_value_size;
    let big = vec![7u8; max + 1];
    let r = c.create(&p("/big"), &big, CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
    assert!(c.exists(&p("/big")).await.unwrap().is_none());
    c.create(&p("/big"), b"small", CreateMode::Exact)
        .await
        .unwrap();
    let r = c.set(&p("/big"), &big, None).await;
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
    assert_eq!(c.get(&p("/big")).await.unwrap().value, b"small");
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    let r = s.create(&p("/big2"), &big, CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
    assert!(c.exists(&p("/big2")).await.unwrap().is_none());
    s.close().await.unwrap();
}

/// Checks: empty value roundtrip.
pub async fn empty_value_roundtrip(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/empty"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(c.get(&p("/empty")).await.unwrap().value, b"");
    c.set(&p("/empty"), b"x", None).await.unwrap();
    c.set(&p("/empty"), b"", None).await.unwrap();
    assert_eq!(c.get(&p("/empty")).await.unwrap().value, b"");
}

/// Checks: binary value roundtrip.
pub async fn binary_value_roundtrip(h: &dyn Harness) {
    let c = h.client().await;
    let v: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    c.create(&p("/bin"), &v, CreateMode::Exact).await.unwrap();
    assert_eq!(c.get(&p("/bin")).await.unwrap().value, v);
    // A value of exactly the limit is accepted.
    let max = c.capabilities().max_value_size;
    let edge = vec![1u8; max];
    c.set(&p("/bin"), &edge, None).await.unwrap();
    assert_eq!(c.get(&p("/bin")).await.unwrap().value.len(), max);
}

/// Checks: sequential suffix format.
pub async fn sequential_suffix_format(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/seq"), b"", CreateMode::Exact).await.unwrap();
    let a = c
        .create(&p("/seq/n-"), b"a", CreateMode::Sequential)
        .await
        .unwrap();
    let b = c
        .create(&p("/seq/n-"), b"b", CreateMode::Sequential)
        .await
        .unwrap();
    let (sa, sb) = (a.sequence.unwrap(), b.sequence.unwrap());
    assert!(sb > sa);
    assert_eq!(
        a.path.name(),
        format!("n-{}", crate::path::format_sequence(sa))
    );
    assert_eq!(a.path.name().len(), 2 + crate::path::SEQUENCE_DIGITS);
    assert_eq!(c.get(&a.path).await.unwrap().value, b"a");
    // A different prefix shares the parent's counter: still unique and increasing.
    let x = c
        .create(&p("/seq/x-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    assert!(x.sequence.unwrap() > sb);
    // Sequential under a missing parent follows the parent rule.
    let r = c.create(&p("/noseq/n-"), b"", CreateMode::Sequential).await;
    assert!(matches!(r, Err(Error::NoParent { .. })), "{r:?}");
}

/// N concurrent creators through separate clients: all numbers distinct, each creator's
/// strictly increasing.
pub async fn sequential_concurrent_creators(h: &dyn Harness) {
    const CREATORS: usize = 8;
    const EACH: usize = 10;
    let c = h.client().await;
    c.create(&p("/conc"), b"", CreateMode::Exact).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..CREATORS {
        let cl = h.client().await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut sessions = Vec::new();
            for _ in 0..EACH {
                let mode = CreateMode::Sequential;
                let made = if i % 2 == 0 {
                    cl.create(&p("/conc/n-"), b"", mode).await.unwrap()
                } else {
                    let s = cl.open_session(SessionOptions::new()).await.unwrap();
                    let m = s.create(&p("/conc/e-"), b"", mode).await.unwrap();
                    sessions.push(s);
                    m
                };
                mine.push(made.sequence.unwrap());
            }
            for s in sessions {
                s.close().await.unwrap();
            }
            mine
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        let mine = within(h, "creators", t).await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        for n in mine {
            assert!(all.insert(n), "duplicate sequence {n}");
        }
    }
    assert_eq!(all.len(), CREATORS * EACH);
}

/// Checks: sequential unique after delete.
pub async fn sequential_unique_after_delete(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/sd"), b"", CreateMode::Exact).await.unwrap();
    let a = c
        .create(&p("/sd/n-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    c.delete(&a.path, None).await.unwrap();
    let b = c
        .create(&p("/sd/n-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    assert!(b.sequence > a.sequence, "a number is never reused");
}

/// Checks: ephemeral removed on close.
pub async fn ephemeral_removed_on_close(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/eph"), b"x", CreateMode::Exact).await.unwrap();
    let watcher = h.client().await;
    let (cur, mut w) = watcher.watch(&p("/eph")).await.unwrap();
    assert!(cur.is_some());
    s.close().await.unwrap();
    assert_eq!(s.state(), SessionState::Closed);
    let ev = next(h, "delete after close", &mut w).await.unwrap();
    assert!(
        matches!(ev, KeyEvent::Deleted | KeyEvent::Resync(None)),
        "{ev:?}"
    );
    assert!(c.exists(&p("/eph")).await.unwrap().is_none());
    // Close is idempotent.
    s.close().await.unwrap();
}

/// Checks: ephemeral removed on expiry seen by watch.
pub async fn ephemeral_removed_on_expiry_seen_by_watch(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/exp"), b"x", CreateMode::Exact).await.unwrap();
    let other = h.client().await;
    let (_, mut w) = other.watch(&p("/exp")).await.unwrap();
    let mut states = s.states();
    assert_eq!(
        next(h, "initial state", &mut states).await,
        SessionState::Connected
    );
    h.expire(&s).await;
    let ev = next(h, "delete after expiry", &mut w).await.unwrap();
    assert!(
        matches!(ev, KeyEvent::Deleted | KeyEvent::Resync(None)),
        "{ev:?}"
    );
    // The owner learns Expired (possibly after Suspended).
    loop {
        let st = next(h, "Expired", &mut states).await;
        if st == SessionState::Expired {
            break;
        }
        assert_eq!(st, SessionState::Suspended);
    }
    assert_eq!(s.state(), SessionState::Expired);
    let r = s.create(&p("/exp2"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::SessionExpired { .. })), "{r:?}");
    assert!(other.exists(&p("/exp2")).await.unwrap().is_none());
}

/// Checks: ephemeral removed after crash.
pub async fn ephemeral_removed_after_crash(h: &dyn Harness) {
    let c = h.client().await;
    let s = c
        .open_session(SessionOptions::new().ttl(h.short_ttl()))
        .await
        .unwrap();
    s.create(&p("/crash"), b"x", CreateMode::Exact)
        .await
        .unwrap();
    if !h.crash(&s).await {
        return;
    }
    let other = h.client().await;
    eventually(h, "ephemeral of a crashed client removed", || async {
        other.exists(&p("/crash")).await.unwrap().is_none()
    })
    .await;
}

/// Rule: ephemerals cannot have children.
pub async fn ephemeral_cannot_have_children(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/ep"), b"", CreateMode::Exact).await.unwrap();
    let r = c.create(&p("/ep/kid"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::EphemeralParent { .. })), "{r:?}");
    let r = s.create(&p("/ep/kid"), b"", CreateMode::Exact).await;
    assert!(matches!(r, Err(Error::EphemeralParent { .. })), "{r:?}");
    assert!(c.children(&p("/ep")).await.unwrap().is_empty());
    s.close().await.unwrap();
}

/// Checks: ephemeral owner in stat.
pub async fn ephemeral_owner_in_stat(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    let made = s.create(&p("/own"), b"", CreateMode::Exact).await.unwrap();
    assert_eq!(made.stat.ephemeral_owner.as_ref(), Some(s.id()));
    let st = c.exists(&p("/own")).await.unwrap().unwrap();
    assert_eq!(st.ephemeral_owner.as_ref(), Some(s.id()));
    let seq = s
        .create(&p("/own-"), b"", CreateMode::Sequential)
        .await
        .unwrap();
    assert!(seq.sequence.is_some());
    assert_eq!(
        c.get(&seq.path)
            .await
            .unwrap()
            .stat
            .ephemeral_owner
            .as_ref(),
        Some(s.id())
    );
    s.close().await.unwrap();
}

/// Checks: session states stream.
pub async fn session_states_stream(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    assert_eq!(s.state(), SessionState::Connected);
    let mut states = s.states();
    assert_eq!(
        next(h, "Connected", &mut states).await,
        SessionState::Connected
    );
    s.close().await.unwrap();
    assert_eq!(next(h, "Closed", &mut states).await, SessionState::Closed);
    assert!(within(h, "end of states", states.next()).await.is_none());
    // A stream taken after the end yields the final state and ends.
    let mut late = s.states();
    assert_eq!(
        next(h, "late Closed", &mut late).await,
        SessionState::Closed
    );
    assert!(within(h, "end of late states", late.next()).await.is_none());
}

/// Checks: session create after close fails.
pub async fn session_create_after_close_fails(h: &dyn Harness) {
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.close().await.unwrap();
    let r = s.create(&p("/late"), b"", CreateMode::Exact).await;
    assert!(r.as_ref().is_err_and(Error::is_session_gone), "{r:?}");
    assert!(c.exists(&p("/late")).await.unwrap().is_none());
}

/// Checks: session ttl bounds.
pub async fn session_ttl_bounds(h: &dyn Harness) {
    let c = h.client().await;
    let caps = c.capabilities().clone();
    let too_short = caps.min_session_ttl / 2;
    let r = c.open_session(SessionOptions::new().ttl(too_short)).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{:?}", r.err());
    let r = c
        .open_session(SessionOptions::new().ttl(caps.max_session_ttl * 2))
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{:?}", r.err());
    let s = c
        .open_session(SessionOptions::new().ttl(h.short_ttl()))
        .await
        .unwrap();
    assert!(s.ttl() >= caps.min_session_ttl);
    s.close().await.unwrap();
}

/// A key watch sees create, change and delete in order; a burst of them made without waiting
/// yields every state where the backend does not coalesce ([`Capabilities::watch_coalesces`]),
/// at least the latest one where it does.
pub async fn watch_create_change_delete_order(h: &dyn Harness) {
    let c = h.client().await;
    let (cur, mut w) = c.watch(&p("/w")).await.unwrap();
    assert!(cur.is_none());
    let writer = h.client().await;
    writer
        .create(&p("/w"), b"1", CreateMode::Exact)
        .await
        .unwrap();
    match next(h, "Created", &mut w).await.unwrap() {
        KeyEvent::Created(n) => assert_eq!(n.value, b"1"),
        other => panic!("expected Created, got {other:?}"),
    }
    writer.set(&p("/w"), b"2", None).await.unwrap();
    match next(h, "Changed", &mut w).await.unwrap() {
        KeyEvent::Changed(n) => assert_eq!(n.value, b"2"),
        other => panic!("expected Changed, got {other:?}"),
    }
    writer.delete(&p("/w"), None).await.unwrap();
    let ev = next(h, "Deleted", &mut w).await.unwrap();
    assert_eq!(ev, KeyEvent::Deleted);
    writer
        .create(&p("/w"), b"3", CreateMode::Exact)
        .await
        .unwrap();
    assert!(matches!(
        next(h, "re-Created", &mut w).await.unwrap(),
        KeyEvent::Created(_)
    ));
    // The same without waiting between the writes: every state in order where the backend
    // does not coalesce, the latest one at least where it does.
    let (_, mut w) = c.watch(&p("/wb")).await.unwrap();
    writer
        .create(&p("/wb"), b"a", CreateMode::Exact)
        .await
        .unwrap();
    writer.set(&p("/wb"), b"b", None).await.unwrap();
    writer.delete(&p("/wb"), None).await.unwrap();
    writer
        .create(&p("/wb"), b"c", CreateMode::Exact)
        .await
        .unwrap();
    writer.set(&p("/wb"), b"d", None).await.unwrap();
    let every = [
        "created a",
        "changed b",
        "deleted",
        "created c",
        "changed d",
    ];
    let coalesces = c.capabilities().watch_coalesces;
    expect_burst(h, &mut w, coalesces, &every, Some(b"d")).await;
}

/// A watch event as its kind and value (versions are opaque and differ between backends).
fn shape(ev: &KeyEvent) -> String {
    let text = |n: &Node| String::from_utf8_lossy(&n.value).into_owned();
    match ev {
        KeyEvent::Created(n) => format!("created {}", text(n)),
        KeyEvent::Changed(n) => format!("changed {}", text(n)),
        KeyEvent::Deleted => "deleted".to_owned(),
        KeyEvent::Resync(Some(n)) => format!("resync {}", text(n)),
        KeyEvent::Resync(None) => "resync absent".to_owned(),
    }
}

/// Whether `ev` shows the key holding `value` (`None`: absent).
fn describes(ev: &KeyEvent, value: Option<&[u8]>) -> bool {
    match (ev, value) {
        (KeyEvent::Created(n) | KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)), Some(v)) => {
            n.value == v
        }
        (KeyEvent::Deleted | KeyEvent::Resync(None), None) => true,
        _ => false,
    }
}

/// Reads the events of a burst of writes made without waiting, whose states were `every` (as
/// [`shape`]s, in order) ending with the key holding `latest`.
///
/// Where the backend does not coalesce ([`Capabilities::watch_coalesces`] false) every state
/// arrives, in order, exactly once, and nothing else. Where it does, the documented weaker
/// rule: events arrive until one shows the latest state (intermediate ones may be merged or
/// skipped, never the latest), and any event after that shows the latest state too.
async fn expect_burst(
    h: &dyn Harness,
    w: &mut KeyWatch,
    coalesces: bool,
    every: &[impl AsRef<str>],
    latest: Option<&[u8]>,
) {
    if !coalesces {
        for (i, want) in every.iter().enumerate() {
            let ev = next(h, want.as_ref(), w).await.unwrap();
            assert_eq!(
                shape(&ev),
                want.as_ref(),
                "event {i} of the burst: a backend that does not coalesce delivers every state"
            );
        }
        assert_quiet("event after the burst", w, Duration::from_millis(200)).await;
        return;
    }
    while !describes(&next(h, "the latest state", w).await.unwrap(), latest) {}
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
        let ev = ev.unwrap();
        assert!(
            describes(&ev, latest),
            "an event after the latest state: {ev:?}"
        );
    }
}

/// A change made right after the watch is registered is never missed, and the last event
/// always shows the latest state; a burst of quick writes yields every value in order where
/// the backend does not coalesce ([`Capabilities::watch_coalesces`]).
pub async fn watch_no_gap_after_registration(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/gap"), b"0", CreateMode::Exact).await.unwrap();
    for round in 1..=20u32 {
        let (cur, mut w) = c.watch(&p("/gap")).await.unwrap();
        let before = cur.unwrap().value;
        let v = round.to_string().into_bytes();
        // Immediately after registration.
        c.set(&p("/gap"), &v, None).await.unwrap();
        let ev = next(h, "change right after registration", &mut w)
            .await
            .unwrap();
        match ev {
            KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)) => {
                assert_eq!(n.value, v, "round {round}, before {before:?}")
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    // Many quick writes: whatever is coalesced, the last event carries the last value.
    let (_, mut w) = c.watch(&p("/gap")).await.unwrap();
    for i in 0..50u32 {
        c.set(&p("/gap"), format!("burst-{i}").as_bytes(), None)
            .await
            .unwrap();
    }
    let every: Vec<String> = (0..50u32).map(|i| format!("changed burst-{i}")).collect();
    let coalesces = c.capabilities().watch_coalesces;
    expect_burst(h, &mut w, coalesces, &every, Some(b"burst-49")).await;
}

/// Checks: watch children events.
pub async fn watch_children_events(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/cw"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/cw/a"), b"", CreateMode::Exact).await.unwrap();
    let (cur, mut w) = c.watch_children(&p("/cw")).await.unwrap();
    assert_eq!(cur, ["a"]);
    let writer = h.client().await;
    writer
        .create(&p("/cw/b"), b"", CreateMode::Exact)
        .await
        .unwrap();
    let expect_list = |ev: ChildrenEvent| match ev {
        ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        expect_list(next(h, "add b", &mut w).await.unwrap()),
        ["a", "b"]
    );
    // A value change of a child is not a children change.
    writer.set(&p("/cw/a"), b"new", None).await.unwrap();
    writer.delete(&p("/cw/a"), None).await.unwrap();
    assert_eq!(
        expect_list(next(h, "remove a", &mut w).await.unwrap()),
        ["b"]
    );
    // Grandchildren do not count either.
    writer
        .create(&p("/cw/b/g"), b"", CreateMode::Exact)
        .await
        .unwrap();
    let s = writer.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/cw/e"), b"", CreateMode::Exact).await.unwrap();
    assert_eq!(
        expect_list(next(h, "add e", &mut w).await.unwrap()),
        ["b", "e"]
    );
    s.close().await.unwrap();
    assert_eq!(
        expect_list(next(h, "e gone with session", &mut w).await.unwrap()),
        ["b"]
    );
}

/// Checks: watch children parent deleted.
pub async fn watch_children_parent_deleted(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/pd"), b"", CreateMode::Exact).await.unwrap();
    let (cur, mut w) = c.watch_children(&p("/pd")).await.unwrap();
    assert!(cur.is_empty());
    c.delete(&p("/pd"), None).await.unwrap();
    let ev = next(h, "parent deleted", &mut w).await.unwrap();
    assert!(
        match &ev {
            ChildrenEvent::ParentDeleted => true,
            ChildrenEvent::Resync(l) => l.is_empty(),
            _ => false,
        },
        "{ev:?}"
    );
    // A watch on an absent parent starts empty and sees it appear with children.
    let (cur, mut w) = c.watch_children(&p("/later")).await.unwrap();
    assert!(cur.is_empty());
    c.create(&p("/later"), b"", CreateMode::Exact)
        .await
        .unwrap();
    c.create(&p("/later/k"), b"", CreateMode::Exact)
        .await
        .unwrap();
    loop {
        match next(h, "children of a created parent", &mut w)
            .await
            .unwrap()
        {
            ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l) if l == ["k"] => break,
            ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l) if l.is_empty() => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Checks: watch independent watchers.
pub async fn watch_independent_watchers(h: &dyn Harness) {
    let c = h.client().await;
    let (_, mut w1) = c.watch(&p("/iw")).await.unwrap();
    let other = h.client().await;
    let (_, mut w2) = other.watch(&p("/iw")).await.unwrap();
    let (_, mut unrelated) = other.watch(&p("/iw-other")).await.unwrap();
    c.create(&p("/iw"), b"v", CreateMode::Exact).await.unwrap();
    assert!(matches!(
        next(h, "w1", &mut w1).await.unwrap(),
        KeyEvent::Created(_)
    ));
    assert!(matches!(
        next(h, "w2", &mut w2).await.unwrap(),
        KeyEvent::Created(_)
    ));
    // Dropping one watcher does not affect the other.
    drop(w1);
    c.set(&p("/iw"), b"v2", None).await.unwrap();
    assert!(matches!(
        next(h, "w2 again", &mut w2).await.unwrap(),
        KeyEvent::Changed(_)
    ));
    assert_quiet(
        "event on an unrelated key",
        &mut unrelated,
        Duration::from_millis(200),
    )
    .await;
}

/// Checks: namespaces isolated.
pub async fn namespaces_isolated(h: &dyn Harness) {
    let a = h.client().await;
    let b = h.other_namespace().await;
    let (_, mut wb) = b.watch(&p("/shared-name")).await.unwrap();
    a.create(&p("/shared-name"), b"a", CreateMode::Exact)
        .await
        .unwrap();
    assert!(b.exists(&p("/shared-name")).await.unwrap().is_none());
    assert!(b.children(&Path::root()).await.unwrap().is_empty());
    b.create(&p("/shared-name"), b"b", CreateMode::Exact)
        .await
        .unwrap();
    assert!(
        matches!(next(h, "own namespace create", &mut wb).await.unwrap(), KeyEvent::Created(n) if n.value == b"b")
    );
    assert_eq!(a.get(&p("/shared-name")).await.unwrap().value, b"a");
    assert_eq!(b.get(&p("/shared-name")).await.unwrap().value, b"b");
    a.delete(&p("/shared-name"), None).await.unwrap();
    assert!(b.exists(&p("/shared-name")).await.unwrap().is_some());
    assert_quiet(
        "event from the other namespace",
        &mut wb,
        Duration::from_millis(200),
    )
    .await;
}

/// Checks: root children lists top level.
pub async fn root_children_lists_top_level(h: &dyn Harness) {
    let c = h.client().await;
    c.create(&p("/top1"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/top2"), b"", CreateMode::Exact).await.unwrap();
    c.create(&p("/top1/sub"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(c.children(&Path::root()).await.unwrap(), ["top1", "top2"]);
    assert!(c.exists(&Path::root()).await.unwrap().is_some());
}

/// Checks: the namespace root exists, and cannot be written or deleted.
pub async fn root_is_not_writable(h: &dyn Harness) {
    let c = h.client().await;
    assert!(c.exists(&Path::root()).await.unwrap().is_some());
    let r = c.set(&Path::root(), b"x", None).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let r = c.delete(&Path::root(), None).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    assert!(c.exists(&Path::root()).await.unwrap().is_some());
}
