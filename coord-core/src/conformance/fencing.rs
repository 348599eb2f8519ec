//! Fencing: creation stamps, fencing tokens that survive the re-creation of their directory,
//! and guarded writes — on every backend.

use std::sync::Arc;

use futures::StreamExt;

use super::{client, eventually, short_client, within, Harness};
use crate::election::Election;
use crate::kernel::{
    Backend, CreateMode, Guard, GuardFailure, KeyEvent, SessionOptions, Version, WriteOp,
    WriteResult,
};
use crate::lock::Lock;
use crate::{Client, Error, Path};

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

async fn value(b: &dyn Backend, path: &Path) -> Vec<u8> {
    b.get(path).await.unwrap().value
}

fn assert_guard_failed<T: std::fmt::Debug>(r: crate::Result<T>, reason: Option<GuardFailure>) {
    match r {
        Err(Error::GuardFailed { reason: got, .. }) if reason.is_none() || reason == Some(got) => {}
        other => panic!("expected GuardFailed {reason:?}, got {other:?}"),
    }
}

async fn current(c: &Client) -> Arc<dyn crate::Session> {
    c.current_session().await.expect("a session is open")
}

/// Waits for the node's creation stamp `created` in the events of `w` (a coalescing backend
/// may merge the events before it).
async fn await_created(h: &dyn Harness, w: &mut crate::KeyWatch, created: u64) {
    within(h, "an event with the new creation stamp", async {
        loop {
            match w.next().await {
                Some(Ok(
                    KeyEvent::Created(n) | KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)),
                )) if n.stat.created == created => return,
                Some(Ok(_)) => {}
                other => panic!("watch ended: {other:?}"),
            }
        }
    })
    .await
}

/// `Stat::created`: never 0, the same in every read of a node (create answer, get, exists,
/// set answer, watch), unchanged by writes, larger for every later create (also of the same
/// path after a delete, of an ephemeral, and in another namespace of the same store).
pub async fn stat_created_stamps(h: &dyn Harness) {
    let b = h.client().await;
    let k = p("/stamps");
    let c1 = b.create(&k, b"x", CreateMode::Exact).await.unwrap();
    let stamp = c1.stat.created;
    assert!(stamp > 0, "creation stamp 0");
    assert_eq!(b.get(&k).await.unwrap().stat.created, stamp);
    assert_eq!(b.exists(&k).await.unwrap().unwrap().created, stamp);
    assert_eq!(b.set(&k, b"y", None).await.unwrap().created, stamp);
    let (now, mut w) = b.watch(&k).await.unwrap();
    assert_eq!(now.unwrap().stat.created, stamp);
    b.set(&k, b"z", None).await.unwrap();
    await_created(h, &mut w, stamp).await;
    assert_eq!(b.get(&k).await.unwrap().stat.created, stamp);
    b.delete(&k, None).await.unwrap();
    let c2 = b.create(&k, b"x", CreateMode::Exact).await.unwrap();
    assert!(c2.stat.created > stamp, "{} after {stamp}", c2.stat.created);
    assert_eq!(b.get(&k).await.unwrap().stat.created, c2.stat.created);
    await_created(h, &mut w, c2.stat.created).await;
    let seq = b
        .create(&k.join("s-").unwrap(), b"", CreateMode::Sequential)
        .await
        .unwrap();
    assert!(seq.stat.created > c2.stat.created);
    assert_eq!(
        b.get(&seq.path).await.unwrap().stat.created,
        seq.stat.created
    );
    let s = b.open_session(SessionOptions::new()).await.unwrap();
    let eph = s
        .create(&p("/stamps-eph"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert!(eph.stat.created > seq.stat.created);
    assert_eq!(
        b.get(&eph.path).await.unwrap().stat.created,
        eph.stat.created
    );
    let other = h.other_namespace().await;
    let o = other
        .create(&p("/stamps"), b"", CreateMode::Exact)
        .await
        .unwrap();
    assert!(o.stat.created > eph.stat.created, "stamps are store-wide");
    s.close().await.unwrap();
}

/// Fencing tokens of an election and of a lock are never 0 and grow across every holder, also
/// after the emptied directory was deleted and created again (a per-directory sequence number
/// would start over and a fenced resource would refuse every later holder).
pub async fn fencing_tokens_survive_directory_recreation(h: &dyn Harness) {
    let c = client(h).await;
    let e = Election::new(&c, p("/fence/election"));
    let mut last = 0;
    for round in 0..3 {
        let l = within(h, "campaign", e.campaign(b"a")).await.unwrap();
        let t = l.fencing_token();
        assert!(t > last, "round {round}: token {t} after {last}");
        assert_eq!(e.leader().await.unwrap().unwrap().token, t);
        // A driver dialect's keys are the peer's, outside coord's tree (no directory there).
        let in_tree = h.dialect().layout().is_some();
        if in_tree {
            assert_eq!(c.get(l.node()).await.unwrap().stat.created, t);
        }
        last = t;
        l.resign().await.unwrap();
        if in_tree {
            c.delete(e.path(), None).await.unwrap();
        }
    }
    let lock_path = p("/fence/lock");
    let lock = Lock::new(&c, lock_path.clone());
    for round in 0..3 {
        let g = within(h, "lock", lock.lock()).await.unwrap();
        let t = g.fencing_token();
        assert!(t > last, "lock round {round}: token {t} after {last}");
        last = t;
        g.unlock().await.unwrap();
        if h.dialect().layout().is_some() {
            c.delete(&lock_path, None).await.unwrap();
        }
    }
}

/// `Backend::write_if`: the op runs while the guard holds (a creation-stamp guard survives
/// writes of the guard node, a version guard does not); a guard absent, replaced or at
/// another version fails with `GuardFailed` and writes nothing, before the op's own rules;
/// the op's own failures keep their variants; the root cannot guard.
pub async fn guarded_write_rules(h: &dyn Harness) {
    let b = h.client().await;
    let (g, t) = (p("/gw-guard"), p("/gw-target"));
    let cg = b.create(&g, b"", CreateMode::Exact).await.unwrap();
    b.create(&t, b"0", CreateMode::Exact).await.unwrap();
    let guard = Guard::created(g.clone(), cg.stat.created);
    let r = b
        .write_if(&guard, &WriteOp::set(t.clone(), "1"))
        .await
        .unwrap();
    let WriteResult::Set(st) = r else {
        panic!("{r:?}")
    };
    assert_eq!(b.get(&t).await.unwrap().stat.version, st.version);
    b.set(&g, b"moved", None).await.unwrap();
    b.write_if(&guard, &WriteOp::set(t.clone(), "2"))
        .await
        .unwrap();
    let gv = b.exists(&g).await.unwrap().unwrap().version;
    let stale = Guard::exists(g.clone()).with_version(Version(gv.0 + 1000));
    let r = b.write_if(&stale, &WriteOp::set(t.clone(), "x")).await;
    assert_guard_failed(r, Some(GuardFailure::Changed));
    assert_eq!(value(&*b, &t).await, b"2");
    let fresh = guard.clone().with_version(gv);
    b.write_if(&fresh, &WriteOp::set(t.clone(), "3"))
        .await
        .unwrap();
    let made = p("/gw-made");
    let r = b
        .write_if(&guard, &WriteOp::create(made.clone(), "n"))
        .await;
    let Ok(WriteResult::Created(c)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (c.path.clone(), c.stat.created > cg.stat.created),
        (made.clone(), true)
    );
    assert_eq!(b.get(&made).await.unwrap().stat.created, c.stat.created);
    let r = b.write_if(&guard, &WriteOp::delete(made.clone())).await;
    assert_eq!(r, Ok(WriteResult::Deleted));
    assert_eq!(b.exists(&made).await.unwrap(), None);
    // The op's own failures, under a guard that holds.
    let r = b
        .write_if(&guard, &WriteOp::set(p("/gw-missing"), "x"))
        .await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    let r = b.write_if(&guard, &WriteOp::create(t.clone(), "x")).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    let op = WriteOp::Set {
        path: t.clone(),
        value: b"x".to_vec(),
        expected: Some(Version(gv.0 + 1000)),
    };
    let r = b.write_if(&guard, &op).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    guard_failures(&*b, &guard, &made).await;
}

/// The second half of [`guarded_write_rules`]: guards that fail write nothing (`guard` is on
/// `/gw-guard`, created earlier; `/gw-target` holds "3").
async fn guard_failures(b: &dyn Backend, guard: &Guard, made: &Path) {
    let (g, t) = (p("/gw-guard"), p("/gw-target"));
    // Replaced: the guard node deleted and created again.
    b.delete(&g, None).await.unwrap();
    let cg2 = b.create(&g, b"", CreateMode::Exact).await.unwrap();
    let r = b.write_if(guard, &WriteOp::set(t.clone(), "4")).await;
    assert_guard_failed(r, Some(GuardFailure::Replaced));
    // Absent: nothing written, and the guard wins over the op's own failure.
    b.delete(&g, None).await.unwrap();
    let r = b.write_if(guard, &WriteOp::create(made.clone(), "n")).await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    assert_eq!(b.exists(made).await.unwrap(), None);
    let r = b
        .write_if(guard, &WriteOp::set(p("/gw-missing"), "x"))
        .await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    let r = b
        .write_if(&Guard::exists(g.clone()), &WriteOp::delete(t.clone()))
        .await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    assert_eq!(value(b, &t).await, b"3");
    let r = b
        .write_if(&Guard::exists(Path::root()), &WriteOp::set(t.clone(), "x"))
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    // A guard on the node written: holds across its own writes, until it is deleted.
    let cg3 = b.create(&g, b"", CreateMode::Exact).await.unwrap();
    assert!(cg3.stat.created > cg2.stat.created);
    let own = Guard::created(g.clone(), cg3.stat.created);
    for v in ["a", "b"] {
        b.write_if(&own, &WriteOp::set(g.clone(), v)).await.unwrap();
    }
    let r = b.write_if(&own, &WriteOp::delete(g.clone())).await;
    assert_eq!(r, Ok(WriteResult::Deleted));
    let r = b.write_if(&own, &WriteOp::set(t.clone(), "5")).await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    assert_eq!(value(b, &t).await, b"3");
}

/// A leadership's (and a lock's) guarded writes succeed while it is held and are refused,
/// with nothing written, once its candidate node is gone: after a resign (the store refuses
/// its guard), and after the harness expired its session (refused by the handle or the
/// store; the store refuses its guard even for a process that has not noticed).
pub async fn guarded_write_refused_after_loss(h: &dyn Harness) {
    let c = client(h).await;
    let t = p("/gl-target");
    c.create(&t, b"0", CreateMode::Exact).await.unwrap();
    let e = Election::new(&c, p("/gl/election"));
    let l = within(h, "campaign", e.campaign(b"a")).await.unwrap();
    l.guarded_set(&t, b"1", None).await.unwrap();
    let made = l.guarded_create(&p("/gl-made"), b"").await.unwrap();
    assert!(made.stat.created > l.fencing_token());
    l.guarded_delete(&made.path, None).await.unwrap();
    let guard = l.guard();
    assert_eq!(
        (&guard.path, guard.created),
        (l.node(), Some(l.fencing_token()))
    );
    l.resign().await.unwrap();
    let r = c.write_if(&guard, &WriteOp::set(t.clone(), "2")).await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    let s = short_client(h).await;
    let l2 = within(
        h,
        "campaign",
        Election::new(&s, p("/gl/election")).campaign(b"b"),
    )
    .await
    .unwrap();
    l2.guarded_set(&t, b"3", None).await.unwrap();
    h.expire(&current(&s).await).await;
    eventually(h, "the expired leader's node gone", || async {
        c.exists(l2.node()).await.unwrap().is_none()
    })
    .await;
    assert_guard_failed(l2.guarded_set(&t, b"4", None).await, None);
    let r = c.write_if(&l2.guard(), &WriteOp::set(t.clone(), "4")).await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    let lock = Lock::new(&c, p("/gl/lock"));
    let g = within(h, "lock", lock.lock()).await.unwrap();
    g.guarded_set(&t, b"5", None).await.unwrap();
    let lock_guard = g.guard();
    g.unlock().await.unwrap();
    let r = c.write_if(&lock_guard, &WriteOp::set(t.clone(), "6")).await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    assert_eq!(value(&**c.backend(), &t).await, b"5");
}

/// A deposed leader racing its successor: the old leader keeps writing under its leadership
/// while the harness expires its session; a successor is elected and writes. Every write of
/// the old leader after that is refused (by its handle or by the store), so the successor's
/// write is the last one: zero stale writes accepted.
pub async fn deposed_leader_cannot_write(h: &dyn Harness) {
    let a = short_client(h).await;
    let b = client(h).await;
    let t = p("/race-target");
    b.create(&t, b"none", CreateMode::Exact).await.unwrap();
    let dir = p("/race/election");
    let la = within(h, "campaign", Election::new(&a, dir.clone()).campaign(b"a"))
        .await
        .unwrap();
    la.guarded_set(&t, b"a-first", None).await.unwrap();
    let guard_a = la.guard();
    let eb = Election::new(&b, dir.clone());
    let fb = tokio::spawn(async move { eb.campaign(b"b").await });
    super::recipes::wait_candidates(h, &b, &Election::new(&b, dir.clone()), 2).await;
    let target = t.clone();
    let writer = tokio::spawn(async move {
        let mut accepted = 0u64;
        loop {
            let v = format!("a-{accepted}");
            match la.guarded_set(&target, v.as_bytes(), None).await {
                Ok(_) => accepted += 1,
                Err(e) => return (accepted, e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    h.expire(&current(&a).await).await;
    let lb = within(h, "successor", fb).await.unwrap().unwrap();
    assert!(lb.fencing_token() > guard_a.created.unwrap_or(0));
    lb.guarded_set(&t, b"b", None).await.unwrap();
    let (_, err) = within(h, "the deposed writer refused", writer)
        .await
        .unwrap();
    assert!(matches!(err, Error::GuardFailed { .. }), "{err:?}");
    let r = b
        .write_if(&guard_a, &WriteOp::set(t.clone(), "stale"))
        .await;
    assert_guard_failed(r, Some(GuardFailure::Absent));
    assert_eq!(
        value(&**b.backend(), &t).await,
        b"b",
        "a stale write was accepted"
    );
    lb.resign().await.unwrap();
}
