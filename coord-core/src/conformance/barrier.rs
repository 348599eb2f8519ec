//! Barrier, double barrier and shared counter — on every backend.

use std::sync::Arc;
use std::time::Duration;

use super::{client, eventually, next, short_client, within, Harness};
use crate::barrier::BarrierMode;
use crate::double_barrier::MAX_MEMBERS;
use crate::kernel::CreateMode;
use crate::{Client, Error, Path, Session};

/// How long something that must not happen yet is given to happen anyway.
const QUIET: Duration = Duration::from_millis(300);

async fn current(c: &Client) -> Arc<dyn Session> {
    c.current_session().await.expect("a session is open")
}

/// Whether `fut` is still pending after [`QUIET`] (it is polled in place, not dropped).
async fn still_pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    tokio::time::timeout(QUIET, fut).await.is_err()
}

/// Checks: a barrier set by one client holds waiters until it is removed; set/remove report
/// whether they changed anything; wait on a barrier not set returns at once; wait_timeout is a
/// typed timeout; a dropped wait leaves nothing.
pub async fn barrier_set_wait_remove(h: &dyn Harness) {
    let a = client(h).await;
    let b = client(h).await;
    let ba = a.barrier("gate").unwrap();
    let bb = b.barrier("gate").unwrap();
    within(h, "wait on an unset barrier", bb.wait())
        .await
        .unwrap();
    assert!(!bb.remove().await.unwrap(), "nothing to remove");
    assert!(ba.set().await.unwrap());
    assert!(!bb.set().await.unwrap(), "already set");
    assert!(bb.is_set().await.unwrap());
    let r = bb.wait_timeout(QUIET).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let mut waiting = Box::pin(bb.wait());
    assert!(still_pending(&mut waiting).await, "released while set");
    let other = client(h).await.barrier("gate").unwrap();
    let third = tokio::spawn(async move { other.wait().await });
    assert!(ba.remove().await.unwrap());
    within(h, "waiter released", waiting).await.unwrap();
    within(h, "second waiter released", third)
        .await
        .unwrap()
        .unwrap();
    assert!(!ba.is_set().await.unwrap());
    // Waiting wrote nothing: the barriers directory is empty.
    let dir = Path::new("/barriers").unwrap();
    assert_eq!(a.children(&dir).await.unwrap(), Vec::<String>::new());
}

/// Checks: a session-bound barrier is released when its setter's session expires (nobody is
/// stuck behind a dead setter); a persistent one outlives it until removed.
pub async fn barrier_setter_session_expiry(h: &dyn Harness) {
    let a = short_client(h).await;
    let b = client(h).await;
    assert!(a.barrier("tied").unwrap().set().await.unwrap());
    let persistent = a
        .barrier("kept")
        .unwrap()
        .with_mode(BarrierMode::Persistent);
    assert!(persistent.set().await.unwrap());
    let tied = b.barrier("tied").unwrap();
    let mut waiting = Box::pin(tied.wait());
    assert!(still_pending(&mut waiting).await, "released while set");
    h.expire(&current(&a).await).await;
    within(h, "released by the setter's expiry", waiting)
        .await
        .unwrap();
    let kept = b.barrier("kept").unwrap();
    let r = kept.wait_timeout(QUIET).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        kept.is_set().await.unwrap(),
        "a persistent barrier outlives its setter"
    );
    // The setter's client carries on with a new session: it can set the barrier again.
    assert!(a.barrier("tied").unwrap().set().await.unwrap());
    assert!(kept.remove().await.unwrap());
    within(h, "persistent barrier removed", kept.wait())
        .await
        .unwrap();
}

/// Checks: a double barrier's enter returns only when N have entered, leave only when all
/// have left, and nothing is left behind afterwards.
pub async fn double_barrier_enter_leave(h: &dyn Harness) {
    const N: usize = 3;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(client(h).await);
    }
    let barriers: Vec<_> = clients
        .iter()
        .map(|c| c.double_barrier("step", N).unwrap())
        .collect();
    // Tasks, so that both make progress while we look.
    let (b0, b1) = (barriers[0].clone(), barriers[1].clone());
    let first = tokio::spawn(async move { b0.enter().await });
    let second = tokio::spawn(async move { b1.enter().await });
    eventually(h, "two members in", || async {
        barriers[2].entered().await.unwrap().len() == 2
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert!(!first.is_finished(), "entered with 2 of {N}");
    assert!(!second.is_finished(), "entered with 2 of {N}");
    let third = within(h, "third enters", barriers[2].enter())
        .await
        .unwrap();
    let first = within(h, "first enters", first).await.unwrap().unwrap();
    let second = within(h, "second enters", second).await.unwrap().unwrap();
    assert_eq!(first.round(), third.round());
    assert_eq!(second.round(), third.round());
    let mut leave1 = Box::pin(first.leave());
    assert!(still_pending(&mut leave1).await, "left with 2 inside");
    let mut leave2 = Box::pin(second.leave());
    assert!(still_pending(&mut leave2).await, "left with 1 inside");
    within(h, "third leaves", third.leave()).await.unwrap();
    within(h, "first leaves", leave1).await.unwrap();
    within(h, "second leaves", leave2).await.unwrap();
    let dir = Path::new("/double-barriers/step").unwrap();
    eventually(h, "nothing left in the barrier", || async {
        clients[0].children(&dir).await.unwrap().is_empty()
    })
    .await;
}

/// Checks: members that loop enter/leave over several rounds all pass every round (a quick
/// member's next enter neither joins the previous round nor strands a slow one).
pub async fn double_barrier_rounds(h: &dyn Harness) {
    const N: usize = 3;
    const ROUNDS: usize = 3;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = client(h).await;
        let barrier = c.double_barrier("rounds", N).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut rounds = Vec::new();
            for r in 0..ROUNDS {
                let entered = barrier.enter().await.unwrap();
                rounds.push(entered.round());
                if (i + r) % N == 0 {
                    // One slow member per round.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                entered.leave().await.unwrap();
            }
            rounds
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(
            tokio::time::timeout(h.patience() * 2, t)
                .await
                .expect("rounds finish")
                .unwrap(),
        );
    }
    for member in &all[1..] {
        assert_eq!(member, &all[0], "every member saw the same rounds");
    }
    assert!(all[0].windows(2).all(|w| w[0] < w[1]), "{all:?}");
}

/// Checks: a dropped or timed-out enter leaves no node and does not count; typed errors for
/// a member count of 0 or above the maximum, with nothing written, and for a count that
/// disagrees with the one stored.
pub async fn double_barrier_cancel_and_bad_counts(h: &dyn Harness) {
    let a = client(h).await;
    for n in [0, MAX_MEMBERS + 1, usize::MAX] {
        let r = a.double_barrier("bad", n);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{n}: {r:?}");
    }
    assert_eq!(
        a.children(&Path::root()).await.unwrap(),
        Vec::<String>::new()
    );
    let barrier = a.double_barrier("cancel", 2).unwrap();
    let r = barrier.enter_timeout(QUIET).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    eventually(h, "timed-out member removed", || async {
        barrier.entered().await.unwrap().is_empty()
    })
    .await;
    {
        let mut dropped = Box::pin(barrier.enter());
        assert!(still_pending(&mut dropped).await);
    }
    eventually(h, "cancelled members removed", || async {
        barrier.entered().await.unwrap().is_empty()
    })
    .await;
    // A member that disagrees about N is refused and leaves nothing.
    let r = a.double_barrier("cancel", 3).unwrap().enter().await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    assert!(barrier.entered().await.unwrap().is_empty());
    // Two later members make a round of their own: nothing cancelled counted.
    let b = client(h).await;
    let other = b.double_barrier("cancel", 2).unwrap();
    let mut first = Box::pin(other.enter());
    assert!(
        still_pending(&mut first).await,
        "a cancelled member counted"
    );
    let second = within(h, "second enters", barrier.enter()).await.unwrap();
    let first = within(h, "first enters", first).await.unwrap();
    // An entered member dropped without leave is removed; the other's leave completes.
    drop(second);
    within(h, "leave after a dropped member", first.leave())
        .await
        .unwrap();
}

/// Checks: a member whose session expires is removed: one waiting in enter fails with
/// SessionExpired and does not count; one inside the round does not hold up the others'
/// leave.
pub async fn double_barrier_member_session_expiry(h: &dyn Harness) {
    // Expiry while waiting in enter.
    let x = short_client(h).await;
    let y = client(h).await;
    let z = client(h).await;
    let bx = x.double_barrier("expiry", 2).unwrap();
    let watcher = bx.clone();
    let waiting = tokio::spawn(async move { bx.enter().await });
    eventually(h, "x in", || async {
        watcher.entered().await.unwrap().len() == 1
    })
    .await;
    h.expire(&current(&x).await).await;
    let r = within(h, "enter fails on expiry", waiting).await.unwrap();
    assert!(matches!(r, Err(Error::SessionExpired { .. })), "{r:?}");
    let by = y.double_barrier("expiry", 2).unwrap();
    let mut ey = Box::pin(by.enter());
    assert!(still_pending(&mut ey).await, "the expired member counted");
    let bz = z.double_barrier("expiry", 2).unwrap();
    let ez = within(h, "z enters", bz.enter()).await.unwrap();
    let ey = within(h, "y enters", ey).await.unwrap();
    within(h, "y and z leave", async {
        let (a, b) = tokio::join!(ey.leave(), ez.leave());
        a.and(b)
    })
    .await
    .unwrap();
    // Expiry of a member inside the round, while the others wait in leave.
    let a = short_client(h).await;
    let b = client(h).await;
    let c = client(h).await;
    let (da, db, dc) = (
        a.double_barrier("held", 3).unwrap(),
        b.double_barrier("held", 3).unwrap(),
        c.double_barrier("held", 3).unwrap(),
    );
    let (ea, eb, ec) = within(h, "three enter", async {
        tokio::join!(da.enter(), db.enter(), dc.enter())
    })
    .await;
    let (ea, eb, ec) = (ea.unwrap(), eb.unwrap(), ec.unwrap());
    let mut leaving = Box::pin(async { tokio::join!(eb.leave(), ec.leave()) });
    assert!(still_pending(&mut leaving).await, "left while a is inside");
    h.expire(&current(&a).await).await;
    let (lb, lc) = within(h, "leave after a's expiry", leaving).await;
    lb.unwrap();
    lc.unwrap();
    drop(ea);
}

/// Checks: counter get/add/compare_and_set, overflow as a typed error that writes nothing,
/// and a malformed stored value as MalformedData that is never overwritten.
pub async fn counter_basics(h: &dyn Harness) {
    let c = client(h).await;
    let counter = c.counter("basics").unwrap();
    assert_eq!(counter.get().await.unwrap(), 0, "absent reads as 0");
    assert_eq!(counter.add(5).await.unwrap(), 5);
    assert_eq!(counter.add(-7).await.unwrap(), -2);
    assert_eq!(
        c.get(counter.path()).await.unwrap().value,
        b"-2",
        "stored as decimal text"
    );
    assert!(counter.compare_and_set(-2, 10).await.unwrap());
    assert!(!counter.compare_and_set(-2, 11).await.unwrap());
    assert_eq!(counter.get().await.unwrap(), 10);
    assert!(counter.compare_and_set(10, i64::MAX).await.unwrap());
    let r = counter.add(1).await;
    assert!(
        matches!(
            r,
            Err(Error::Overflow {
                value: i64::MAX,
                delta: 1,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(!r.unwrap_err().is_retryable());
    assert_eq!(
        counter.get().await.unwrap(),
        i64::MAX,
        "overflow wrote nothing"
    );
    assert_eq!(counter.add(i64::MIN).await.unwrap(), -1);
    let r = counter.add(i64::MIN).await;
    assert!(matches!(r, Err(Error::Overflow { .. })), "{r:?}");
    // A counter that starts at a compare-and-set of its absent (0) value.
    let fresh = c.counter("fresh").unwrap();
    assert!(!fresh.compare_and_set(1, 2).await.unwrap());
    assert!(fresh.compare_and_set(0, 7).await.unwrap());
    assert_eq!(fresh.get().await.unwrap(), 7);
    // Malformed stored values: typed errors, and the bytes stay as they are.
    for bad in [
        &b"abc"[..],
        b"1.5",
        b"\x00\x00\x00\x07",
        b"99999999999999999999",
    ] {
        c.set(fresh.path(), bad, None).await.unwrap();
        let r = fresh.get().await;
        assert!(
            matches!(r, Err(Error::MalformedData { .. })),
            "{bad:?}: {r:?}"
        );
        let r = fresh.add(1).await;
        assert!(
            matches!(r, Err(Error::MalformedData { .. })),
            "{bad:?}: {r:?}"
        );
        let r = fresh.compare_and_set(0, 1).await;
        assert!(
            matches!(r, Err(Error::MalformedData { .. })),
            "{bad:?}: {r:?}"
        );
        assert_eq!(c.get(fresh.path()).await.unwrap().value, bad);
    }
}

/// Checks: 8 clients × 500 adds under contention give exactly 4,000.
pub async fn counter_exact_under_contention(h: &dyn Harness) {
    const CLIENTS: usize = 8;
    const ADDS: usize = 500;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let counter = client(h).await.counter("contended").unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ADDS {
                counter.add(1).await.unwrap();
            }
        }));
    }
    // A liveness bound, not a speed check: 4,000 contended compare-and-sets take tens of
    // seconds on a loaded machine (etcd), so the bound is generous and shared by all tasks.
    let all = futures::future::join_all(tasks);
    for r in tokio::time::timeout(h.patience() * 10, all)
        .await
        .expect("adds finish")
    {
        r.unwrap();
    }
    let c = client(h).await;
    let total = c.counter("contended").unwrap().get().await.unwrap();
    assert_eq!(total, (CLIENTS * ADDS) as i64, "adds lost or doubled");
}

/// Checks: the change stream starts with the current value, follows adds (the last value is
/// always delivered), reports a malformed value as an error item and goes on, and reads a
/// deleted counter as 0.
pub async fn counter_changes_stream(h: &dyn Harness) {
    let c = client(h).await;
    let counter = c.counter("stream").unwrap();
    let mut changes = Box::pin(counter.changes().await.unwrap());
    assert_eq!(next(h, "first value", &mut changes).await, Ok(0));
    counter.add(1).await.unwrap();
    assert_eq!(next(h, "after add", &mut changes).await, Ok(1));
    counter.add(2).await.unwrap();
    counter.add(3).await.unwrap();
    loop {
        let v = next(h, "value 6", &mut changes).await.unwrap();
        assert!(v == 3 || v == 6, "unexpected {v}");
        if v == 6 {
            break;
        }
    }
    c.set(counter.path(), b"garbage", None).await.unwrap();
    let r = next(h, "malformed", &mut changes).await;
    assert!(matches!(r, Err(Error::MalformedData { .. })), "{r:?}");
    c.set(counter.path(), b"42", None).await.unwrap();
    assert_eq!(next(h, "repaired", &mut changes).await, Ok(42));
    c.delete(counter.path(), None).await.unwrap();
    assert_eq!(next(h, "deleted", &mut changes).await, Ok(0));
    c.create(counter.path(), b"9", CreateMode::Exact)
        .await
        .unwrap();
    assert_eq!(next(h, "recreated", &mut changes).await, Ok(9));
}
