//! Recipes: read-write lock and semaphore — on every backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{client, eventually, short_client, within, Harness};
use crate::kernel::CreateMode;
use crate::path::parse_sequence;
use crate::recipes::HoldState;
use crate::{Client, Error, GuardFailure, Path};

const QUIET: Duration = Duration::from_millis(300);

/// The candidate nodes in `dir` (the semaphore's `limit` key is not one).
async fn queued(c: &Client, dir: &Path) -> usize {
    match c.children(dir).await {
        Ok(v) => v.iter().filter(|n| parse_sequence(n).is_some()).count(),
        Err(Error::NotFound { .. }) => 0,
        Err(err) => panic!("{err}"),
    }
}

async fn wait_queued(h: &dyn Harness, c: &Client, dir: &Path, n: usize) {
    eventually(h, &format!("{n} candidate nodes in {dir}"), || async {
        queued(c, dir).await == n
    })
    .await;
}

async fn current(c: &Client) -> Arc<dyn crate::Session> {
    c.current_session().await.expect("a session is open")
}

/// Waits until `n` of `tasks` have finished, returning their indices.
async fn finished<T>(
    h: &dyn Harness,
    tasks: &[tokio::task::JoinHandle<T>],
    n: usize,
) -> Vec<usize> {
    let mut done = Vec::new();
    eventually(h, &format!("{n} tasks finished"), || {
        done = (0..tasks.len())
            .filter(|i| tasks[*i].is_finished())
            .collect();
        let ok = done.len() >= n;
        async move { ok }
    })
    .await;
    done
}

/// Checks: a read-write lock admits many readers or one writer, never both.
pub async fn rwlock_readers_share_writer_excludes(h: &dyn Harness) {
    const TASKS: usize = 6;
    const EACH: usize = 4;
    let c = client(h).await;
    // Two readers hold together.
    let l = c.rwlock("rw").unwrap();
    let r1 = l.read().await.unwrap();
    let other = client(h).await;
    let r2 = within(h, "second reader", other.rwlock("rw").unwrap().read())
        .await
        .unwrap();
    assert!(r1.is_held() && r2.is_held());
    assert!(other
        .rwlock("rw")
        .unwrap()
        .try_write()
        .await
        .unwrap()
        .is_none());
    r1.unlock().await.unwrap();
    r2.unlock().await.unwrap();
    // Mixed load: a writer is always alone.
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let lock = client(h).await.rwlock("rw").unwrap();
        let (readers, writers) = (readers.clone(), writers.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                if (t + i) % 3 == 0 {
                    let g = lock.write().await.unwrap();
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "a writer with readers");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    assert_eq!(
                        readers.load(Ordering::SeqCst),
                        0,
                        "a reader joined a writer"
                    );
                    writers.fetch_sub(1, Ordering::SeqCst);
                    g.unlock().await.unwrap();
                } else {
                    let g = lock.read().await.unwrap();
                    readers.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "a reader with a writer");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    g.unlock().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(h.patience() * 4, t)
            .await
            .expect("read-write lock tasks")
            .unwrap();
    }
    wait_queued(h, &c, l.path(), 0).await;
}

/// Checks: FIFO fairness: a waiting writer blocks later readers; the fencing tokens follow
/// the queue.
pub async fn rwlock_waiting_writer_blocks_readers(h: &dyn Harness) {
    let a = client(h).await;
    let b = client(h).await;
    let c = client(h).await;
    let la = a.rwlock("fair").unwrap();
    let ra = la.read().await.unwrap();
    let lb = b.rwlock("fair").unwrap();
    let wb = tokio::spawn(async move { lb.write().await });
    wait_queued(h, &a, la.path(), 2).await;
    // A reader behind the waiting writer waits, although only a reader holds.
    let lc = c.rwlock("fair").unwrap();
    assert!(lc.try_read().await.unwrap().is_none());
    let lc2 = lc.clone();
    let rc = tokio::spawn(async move { lc2.read().await });
    wait_queued(h, &a, la.path(), 3).await;
    let cands = la.candidates().await.unwrap();
    let holding: Vec<bool> = cands.iter().map(|c| c.holding).collect();
    assert_eq!(holding, [true, false, false], "{cands:?}");
    tokio::time::sleep(QUIET).await;
    assert!(!wb.is_finished() && !rc.is_finished());
    let ra_token = ra.fencing_token();
    ra.unlock().await.unwrap();
    let wb = within(h, "the writer", wb).await.unwrap().unwrap();
    assert!(wb.fencing_token() > ra_token);
    tokio::time::sleep(QUIET).await;
    assert!(!rc.is_finished(), "a reader got in with the writer");
    let wb_token = wb.fencing_token();
    wb.unlock().await.unwrap();
    let rc = within(h, "the later reader", rc).await.unwrap().unwrap();
    assert!(rc.fencing_token() > wb_token);
    rc.unlock().await.unwrap();
}

/// Checks: herd-freedom: a writer's release wakes only the readers it lets in (not the writer
/// behind them); the release of the last reader wakes only that writer.
pub async fn rwlock_release_wakes_only_those_let_in(h: &dyn Harness) {
    const READERS: usize = 10;
    let c = client(h).await;
    let lock = c.rwlock("herd").unwrap();
    let w1 = lock.write().await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let l = lock.clone();
        readers.push(tokio::spawn(async move { l.read().await }));
    }
    wait_queued(h, &c, lock.path(), 1 + READERS).await;
    let l = lock.clone();
    let w2 = tokio::spawn(async move { l.write().await });
    wait_queued(h, &c, lock.path(), 2 + READERS).await;
    tokio::time::sleep(QUIET).await;
    let before = lock.wakeups();
    w1.unlock().await.unwrap();
    finished(h, &readers, READERS).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        lock.wakeups() - before,
        READERS as u64,
        "wake-ups when a writer lets {READERS} readers in"
    );
    assert!(!w2.is_finished());
    let mut guards = Vec::new();
    for r in readers {
        guards.push(r.await.unwrap().unwrap());
    }
    // The writer watches only the last reader ahead: the others' releases do not wake it...
    // The last reader in the queue: the largest token (tasks may queue out of spawn order).
    guards.sort_by_key(|g| g.fencing_token());
    let last = guards.pop().unwrap();
    let before = lock.wakeups();
    for g in guards {
        g.unlock().await.unwrap();
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        lock.wakeups() - before,
        0,
        "readers released behind the watched one"
    );
    assert!(!w2.is_finished());
    // ...the last one's does, once.
    last.unlock().await.unwrap();
    let w2 = within(h, "the second writer", w2).await.unwrap().unwrap();
    assert_eq!(lock.wakeups() - before, 1);
    w2.unlock().await.unwrap();
}

/// Checks: try/timeout variants, and cancel safety: a dropped or timed-out wait leaves no
/// node behind.
pub async fn rwlock_try_timeout_and_cancel(h: &dyn Harness) {
    let a = client(h).await;
    let b = client(h).await;
    let la = a.rwlock("try").unwrap();
    let lb = b.rwlock("try").unwrap();
    let w = la.try_write().await.unwrap().expect("a free lock");
    assert!(lb.try_read().await.unwrap().is_none());
    assert!(lb.try_write().await.unwrap().is_none());
    let r = lb.read_timeout(Duration::from_millis(200)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let r = lb.write_timeout(Duration::from_millis(200)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    // A dropped pending wait.
    let mut pending: BoxFuture<'_, _> = lb.read().boxed();
    assert!(tokio::time::timeout(QUIET, &mut pending).await.is_err());
    drop(pending);
    wait_queued(h, &a, la.path(), 1).await;
    w.unlock().await.unwrap();
    wait_queued(h, &a, la.path(), 0).await;
    let r = within(h, "a read after the cancellations", lb.read())
        .await
        .unwrap();
    let r2 = la.try_read().await.unwrap().expect("readers share");
    r.unlock().await.unwrap();
    r2.unlock().await.unwrap();
}

/// Checks: a holder's session expiry loses the lock (and its guarded writes are refused); a
/// waiter's session expiry fails its wait and leaves no node.
pub async fn rwlock_session_expiry(h: &dyn Harness) {
    let a = short_client(h).await;
    let b = short_client(h).await;
    let c = client(h).await;
    let plan = Path::new("/rw-plan").unwrap();
    c.create(&plan, b"0", CreateMode::Exact).await.unwrap();
    let w = a.rwlock("exp").unwrap().write().await.unwrap();
    w.guarded_set(&plan, b"a", None).await.unwrap();
    let lb = b.rwlock("exp").unwrap();
    let rb = tokio::spawn(async move { lb.read().await });
    let lc = c.rwlock("exp").unwrap();
    let lc2 = lc.clone();
    let rc = tokio::spawn(async move { lc2.read().await });
    wait_queued(h, &c, lc.path(), 3).await;
    // The waiting reader's session expires: its wait fails.
    h.expire(&current(&b).await).await;
    let r = within(h, "the waiter's error", rb).await.unwrap();
    assert!(r.as_ref().is_err_and(Error::is_session_gone), "{r:?}");
    // The holder's session expires: the lock is lost, the next reader gets in.
    h.expire(&current(&a).await).await;
    within(h, "the writer's loss", w.lost()).await;
    assert_eq!(w.state(), HoldState::Lost);
    let r = w.guarded_set(&plan, b"stale", None).await;
    assert!(matches!(r, Err(Error::GuardFailed { .. })), "{r:?}");
    let rc = within(h, "the reader", rc).await.unwrap().unwrap();
    assert!(rc.fencing_token() > w.fencing_token());
    assert_eq!(c.get(&plan).await.unwrap().value, b"a");
    rc.guarded_set(&plan, b"c", None).await.unwrap();
    wait_queued(h, &c, lc.path(), 1).await;
    rc.unlock().await.unwrap();
    assert_eq!(c.get(&plan).await.unwrap().value, b"c");
}

/// Checks: at most `limit` leases are held at once under contention.
pub async fn semaphore_limit_respected(h: &dyn Harness) {
    const LIMIT: u64 = 2;
    const TASKS: usize = 6;
    const EACH: usize = 4;
    let holders = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let sem = client(h).await.semaphore("slots", LIMIT).unwrap();
        let (holders, most) = (holders.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let lease = sem.acquire().await.unwrap();
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now as u64 <= LIMIT, "{now} holders of {LIMIT} leases");
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                lease.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(h.patience() * 4, t)
            .await
            .expect("semaphore tasks")
            .unwrap();
    }
    let c = client(h).await;
    let sem = c.semaphore("slots", LIMIT).unwrap();
    wait_queued(h, &c, sem.path(), 0).await;
    assert_eq!(sem.stored_limit().await.unwrap(), Some(LIMIT));
    // Two leases are held together when free.
    let l1 = sem.acquire().await.unwrap();
    let l2 = within(h, "a second lease", sem.acquire()).await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());
    l1.release().await.unwrap();
    l2.release().await.unwrap();
}

/// Checks: FIFO with `acquire_many`: a waiter for several leases is not overtaken by later
/// waiters that would fit.
pub async fn semaphore_acquire_many_fifo(h: &dyn Harness) {
    let a = client(h).await;
    let b = client(h).await;
    let sa = a.semaphore("many", 3).unwrap();
    let sb = b.semaphore("many", 3).unwrap();
    let one = sa.acquire().await.unwrap();
    assert_eq!(one.leases(), 1);
    let sb2 = sb.clone();
    let three = tokio::spawn(async move { sb2.acquire_many(3).await });
    wait_queued(h, &a, sa.path(), 2).await;
    // Two leases are free, but the waiter for three is ahead.
    assert!(sa.try_acquire().await.unwrap().is_none());
    let sa2 = sa.clone();
    let later = tokio::spawn(async move { sa2.acquire().await });
    wait_queued(h, &a, sa.path(), 3).await;
    tokio::time::sleep(QUIET).await;
    assert!(!three.is_finished() && !later.is_finished());
    let cands = sa.candidates().await.unwrap();
    let view: Vec<(u64, bool)> = cands.iter().map(|c| (c.leases, c.holding)).collect();
    assert_eq!(view, [(1, true), (3, false), (1, false)]);
    one.release().await.unwrap();
    let three = within(h, "three leases", three).await.unwrap().unwrap();
    assert_eq!(three.leases(), 3);
    tokio::time::sleep(QUIET).await;
    assert!(!later.is_finished());
    let three_token = three.fencing_token();
    three.release().await.unwrap();
    let later = within(h, "the later waiter", later).await.unwrap().unwrap();
    assert!(later.fencing_token() > three_token);
    let two = within(h, "two more", sb.acquire_many(2)).await.unwrap();
    assert!(sb.try_acquire().await.unwrap().is_none());
    two.release().await.unwrap();
    later.release().await.unwrap();
}

/// Checks: herd-freedom: a release wakes no more waiters than the leases freed plus one.
pub async fn semaphore_release_wakes_few(h: &dyn Harness) {
    const LIMIT: u64 = 3;
    const WAITERS: usize = 20;
    let c = client(h).await;
    let sem = c.semaphore("herd", LIMIT).unwrap();
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(sem.acquire().await.unwrap());
    }
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let s = sem.clone();
        waiters.push(tokio::spawn(async move { s.acquire().await }));
    }
    wait_queued(h, &c, sem.path(), LIMIT as usize + WAITERS).await;
    tokio::time::sleep(QUIET).await;
    // Out of order: the middle holder first.
    for (round, idx) in [1usize, 0].into_iter().enumerate() {
        let before = sem.wakeups();
        held.remove(idx).release().await.unwrap();
        finished(h, &waiters, round + 1).await;
        tokio::time::sleep(QUIET).await;
        let woken = sem.wakeups() - before;
        assert!(
            woken <= 2,
            "{woken} wake-ups for one lease freed with {WAITERS} waiters"
        );
        assert_eq!(
            waiters.iter().filter(|t| t.is_finished()).count(),
            round + 1,
            "one waiter let in per lease freed"
        );
    }
    // Aborted waits and dropped leases leave nothing behind.
    for t in waiters {
        t.abort();
    }
    drop(held);
    wait_queued(h, &c, sem.path(), 0).await;
}

/// Checks: try/timeout, cancel safety, and bad arguments: limits 0 or above the maximum,
/// leases 0 or above the limit, and a limit that disagrees with the stored one are typed
/// errors that write nothing.
pub async fn semaphore_try_timeout_cancel_and_bad_input(h: &dyn Harness) {
    let c = client(h).await;
    for bad in [0, crate::semaphore::MAX_LIMIT + 1] {
        assert!(matches!(
            c.semaphore("bad", bad),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        c.semaphore("a/../b", 1),
        Err(Error::InvalidPath { .. })
    ));
    let sem = c.semaphore("try", 1).unwrap();
    for bad in [0, 2] {
        let r = sem.acquire_many(bad).await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
    assert!(
        matches!(c.exists(sem.path()).await, Ok(None)),
        "bad input wrote nothing"
    );
    let lease = sem.try_acquire().await.unwrap().expect("a free lease");
    let other = client(h).await.semaphore("try", 1).unwrap();
    assert!(other.try_acquire().await.unwrap().is_none());
    let r = other.acquire_timeout(Duration::from_millis(200)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let mut pending: BoxFuture<'_, _> = other.acquire().boxed();
    assert!(tokio::time::timeout(QUIET, &mut pending).await.is_err());
    drop(pending);
    wait_queued(h, &c, sem.path(), 1).await;
    // Another limit: refused before queueing.
    let wrong = c.semaphore("try", 2).unwrap();
    let r = wrong.acquire().await;
    assert!(
        matches!(
            r,
            Err(Error::LimitMismatch {
                stored: 1,
                requested: 2,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(queued(&c, sem.path()).await, 1);
    lease.release().await.unwrap();
    let l2 = within(h, "the lease after the cancellations", other.acquire())
        .await
        .unwrap();
    l2.release().await.unwrap();
}

/// Checks: a lease is lost with its session (its guarded writes refused, a waiter let in); a
/// waiter's session expiry fails its wait and leaves no node.
pub async fn semaphore_session_expiry(h: &dyn Harness) {
    let a = short_client(h).await;
    let b = short_client(h).await;
    let c = client(h).await;
    let plan = Path::new("/sem-plan").unwrap();
    c.create(&plan, b"0", CreateMode::Exact).await.unwrap();
    let lease = a.semaphore("exp", 1).unwrap().acquire().await.unwrap();
    lease.guarded_set(&plan, b"a", None).await.unwrap();
    let sb = b.semaphore("exp", 1).unwrap();
    let wb = tokio::spawn(async move { sb.acquire().await });
    let sc = c.semaphore("exp", 1).unwrap();
    let sc2 = sc.clone();
    let wc = tokio::spawn(async move { sc2.acquire().await });
    wait_queued(h, &c, sc.path(), 3).await;
    h.expire(&current(&b).await).await;
    let r = within(h, "the waiter's error", wb).await.unwrap();
    assert!(r.as_ref().is_err_and(Error::is_session_gone), "{r:?}");
    h.expire(&current(&a).await).await;
    within(h, "the lease's loss", lease.lost()).await;
    let r = lease.guarded_set(&plan, b"stale", None).await;
    assert!(
        matches!(
            r,
            Err(Error::GuardFailed {
                reason: GuardFailure::Released | GuardFailure::Absent,
                ..
            })
        ),
        "{r:?}"
    );
    let lc = within(h, "the next holder", wc).await.unwrap().unwrap();
    assert!(lc.fencing_token() > lease.fencing_token());
    assert_eq!(c.get(&plan).await.unwrap().value, b"a");
    wait_queued(h, &c, sc.path(), 1).await;
    lc.release().await.unwrap();
}
