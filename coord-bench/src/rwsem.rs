//! Item 9: read-write lock and semaphore, handover time and wake-ups per release with 100
//! waiters (each its own client and session on one backend), measured like the herd (item 5).

use std::time::{Duration, Instant};

use coord::rwlock::{RwLock, WriteGuard};
use coord::semaphore::{Lease, Semaphore};
use coord::Client;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::cx::{within, Cx, STEP};
use crate::stats::{Res, Row, Stats, Verdict};

/// Waiters queued behind the holders.
const WAITERS: usize = 100;
/// The semaphore's limit.
const LIMIT: u64 = 4;

type Got<T> = (Instant, coord::Result<T>);

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<Got<T>>) -> Res<(Instant, T)> {
    let (t, r) = within(STEP, "the next holder", rx.recv())
        .await?
        .ok_or("every waiter ended")?;
    Ok((t, r?))
}

async fn close_all(clients: &[Client]) {
    futures::stream::iter(clients.iter())
        .map(|c| c.close())
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Writers: one holds, `WAITERS` queue; each release hands over to the next writer.
async fn rwlock_writers(cx: &Cx) -> Res<(f64, Stats)> {
    let clients: Vec<Client> = (0..=WAITERS)
        .map(|_| Client::new(cx.backend.clone()))
        .collect();
    let locks: Vec<RwLock> = clients
        .iter()
        .map(|c| c.rwlock("bench-rw"))
        .collect::<Result<_, _>>()?;
    let dir = locks[0].path().clone();
    let mut holder = within(STEP, "the first writer", locks[0].write()).await??;
    let (tx, mut rx) = mpsc::unbounded_channel::<Got<WriteGuard>>();
    let mut tasks = Vec::new();
    for (i, l) in locks.iter().enumerate().skip(1) {
        let (l, tx) = (l.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = l.write().await;
            let _ = tx.send((Instant::now(), r));
        }));
        if i % 50 == 0 {
            cx.wait_children(&dir, i + 1, Duration::from_secs(120))
                .await?;
        }
    }
    cx.wait_children(&dir, WAITERS + 1, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wakeups = || locks.iter().map(RwLock::wakeups).sum::<u64>();
    let w0 = wakeups();
    let releases = cx.sizes.herd_changes;
    let mut d = Vec::new();
    for _ in 0..releases {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        holder.unlock().await?;
        let (t1, next_holder) = next(&mut rx).await?;
        d.push(t1 - t0);
        holder = next_holder;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w1 = wakeups();
    drop(holder);
    for t in &tasks {
        t.abort();
    }
    close_all(&clients).await;
    let per = (w1 - w0) as f64 / releases.max(1) as f64;
    Ok((per, Stats::of(&d).ok_or("no samples")?))
}

/// A writer holds with `WAITERS` readers queued behind it: from its release until every
/// reader holds, and the wake-ups of that one release.
async fn rwlock_readers(cx: &Cx) -> Res<(u64, Duration)> {
    let clients: Vec<Client> = (0..=WAITERS)
        .map(|_| Client::new(cx.backend.clone()))
        .collect();
    let locks: Vec<RwLock> = clients
        .iter()
        .map(|c| c.rwlock("bench-rw-readers"))
        .collect::<Result<_, _>>()?;
    let dir = locks[0].path().clone();
    let writer = within(STEP, "the writer", locks[0].write()).await??;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, l) in locks.iter().enumerate().skip(1) {
        let (l, tx) = (l.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = l.read().await;
            let _ = tx.send((Instant::now(), r));
        }));
        if i % 50 == 0 {
            cx.wait_children(&dir, i + 1, Duration::from_secs(120))
                .await?;
        }
    }
    cx.wait_children(&dir, WAITERS + 1, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wakeups = || locks.iter().map(RwLock::wakeups).sum::<u64>();
    let w0 = wakeups();
    let t0 = Instant::now();
    writer.unlock().await?;
    let mut readers = Vec::with_capacity(WAITERS);
    let mut last = t0;
    for _ in 0..WAITERS {
        let (t, g) = next(&mut rx).await?;
        last = last.max(t);
        readers.push(g);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let woken = wakeups() - w0;
    drop(readers);
    for t in &tasks {
        t.abort();
    }
    close_all(&clients).await;
    Ok((woken, last - t0))
}

/// `LIMIT` holders and `WAITERS` waiters of one lease each; each release (the oldest lease)
/// lets the first waiter in.
async fn semaphore(cx: &Cx) -> Res<(f64, Stats)> {
    let n = LIMIT as usize + WAITERS;
    let clients: Vec<Client> = (0..n).map(|_| Client::new(cx.backend.clone())).collect();
    let sems: Vec<Semaphore> = clients
        .iter()
        .map(|c| c.semaphore("bench-sem", LIMIT))
        .collect::<Result<_, _>>()?;
    let dir = sems[0].path().clone();
    let mut held: std::collections::VecDeque<Lease> = Default::default();
    for s in &sems[..LIMIT as usize] {
        held.push_back(within(STEP, "a free lease", s.acquire()).await??);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Got<Lease>>();
    let mut tasks = Vec::new();
    for (i, s) in sems.iter().enumerate().skip(LIMIT as usize) {
        let (s, tx) = (s.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = s.acquire().await;
            let _ = tx.send((Instant::now(), r));
        }));
        if i % 50 == 0 {
            // The directory also holds the `limit` key.
            cx.wait_children(&dir, i + 2, Duration::from_secs(120))
                .await?;
        }
    }
    cx.wait_children(&dir, n + 1, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wakeups = || sems.iter().map(Semaphore::wakeups).sum::<u64>();
    let w0 = wakeups();
    let releases = cx.sizes.herd_changes;
    let mut d = Vec::new();
    for _ in 0..releases {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let oldest = held.pop_front().ok_or("no lease held")?;
        let t0 = Instant::now();
        oldest.release().await?;
        let (t1, lease) = next(&mut rx).await?;
        d.push(t1 - t0);
        held.push_back(lease);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w1 = wakeups();
    drop(held);
    for t in &tasks {
        t.abort();
    }
    close_all(&clients).await;
    let per = (w1 - w0) as f64 / releases.max(1) as f64;
    Ok((per, Stats::of(&d).ok_or("no samples")?))
}

/// Item 9's rows.
pub async fn rwlock_and_semaphore(cx: &Cx) -> Vec<Row> {
    let mut rows = Vec::new();
    let m = format!("rwlock: {WAITERS} writers waiting");
    match rwlock_writers(cx).await {
        Ok((per, st)) => {
            rows.push(Row::new(
                9,
                format!("{m}: wake-ups per release ({} releases)", st.n),
                format!("{per:.2}"),
                "",
                "",
                "= 1",
                Verdict::check((per - 1.0).abs() < 1e-9),
            ));
            rows.push(Row::new(
                9,
                format!("{m}: handover (unlock → next writer holds)"),
                st.show(),
                "",
                "",
                "",
                Verdict::Info,
            ));
        }
        Err(e) => rows.push(Row::failed(9, &m, &e)),
    }
    let m = format!("rwlock: {WAITERS} readers waiting on a writer");
    match rwlock_readers(cx).await {
        Ok((woken, all_in)) => {
            rows.push(Row::new(
                9,
                format!("{m}: wake-ups for the release"),
                woken.to_string(),
                "",
                "",
                format!("= {WAITERS} (the readers let in)"),
                Verdict::check(woken == WAITERS as u64),
            ));
            rows.push(Row::new(
                9,
                format!("{m}: unlock → all {WAITERS} readers hold"),
                crate::stats::ms(all_in),
                "",
                "",
                "",
                Verdict::Info,
            ));
        }
        Err(e) => rows.push(Row::failed(9, &m, &e)),
    }
    let m = format!("semaphore: limit {LIMIT}, {WAITERS} waiting");
    match semaphore(cx).await {
        Ok((per, st)) => {
            rows.push(Row::new(
                9,
                format!("{m}: wake-ups per release of 1 lease ({} releases)", st.n),
                format!("{per:.2}"),
                "",
                "",
                "≤ 2 (leases freed + 1)",
                Verdict::check(per <= 2.0 + 1e-9),
            ));
            rows.push(Row::new(
                9,
                format!("{m}: handover (release → next waiter holds)"),
                st.show(),
                "",
                "",
                "",
                Verdict::Info,
            ));
        }
        Err(e) => rows.push(Row::failed(9, &m, &e)),
    }
    rows
}
