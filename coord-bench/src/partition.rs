//! Item 12: the partitioner's moved fraction on a join and a leave (and how long until an
//! observer sees the new assignment). Item 13: tree cache lookups against a plain `get`.

use std::time::Instant;

use coord::partitioner::{Assignment, Partitioner};
use coord::tree_cache::TreeCache;
use coord::{create_parents, Client, CreateMode};

use crate::cx::{path, within, Cx, STEP};
use crate::stats::{rate, Res, Row, Stats, Verdict};

/// Partitions of the measured partitioner.
const PARTITIONS: u32 = 1024;
/// Members before each join (the leave takes the joiner out again).
const MEMBERS: usize = 8;
/// Join/leave rounds.
const ROUNDS: usize = 5;
/// Children of the cached tree.
const TREE_NODES: usize = 100;

/// Waits until `p` sees `n` members; the assignment then.
async fn members(p: &Partitioner, n: usize) -> Res<std::sync::Arc<Assignment>> {
    within(STEP, "the partitioner to see the members", async {
        loop {
            let a = p.assignment();
            if a.members().len() == n {
                return Ok(a);
            }
            if !p.changed().await {
                return Err(format!("the partitioner stopped: {:?}", p.state()).into());
            }
        }
    })
    .await?
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// Item 12: `MEMBERS` members, each on its own client (session); an observer's partitioner
/// of `PARTITIONS` partitions. Each round a member joins, then leaves (its client closes):
/// the fraction of partitions whose owner changed, and the time from the join/close call's
/// return to the observer's new assignment.
pub async fn moved_fraction(cx: &Cx) -> Res<Vec<Row>> {
    let group = format!("bench-partition-{}", cx.uniq);
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for i in 0..MEMBERS {
        let c = Client::new(cx.backend.clone());
        held.push(c.group(&group)?.join(&format!("m{i:02}"), b"").await?);
        clients.push(c);
    }
    let observer = Client::new(cx.backend.clone())
        .group(&group)?
        .partitioner(PARTITIONS)
        .await?;
    let mut base = members(&observer, MEMBERS).await?;
    let (mut join_frac, mut leave_frac) = (Vec::new(), Vec::new());
    let (mut join_seen, mut leave_seen) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let c = Client::new(cx.backend.clone());
        let _m = c.group(&group)?.join(&format!("late-{r}"), b"").await?;
        let t = Instant::now();
        let joined = members(&observer, MEMBERS + 1).await?;
        join_seen.push(t.elapsed());
        join_frac.push(joined.moved_from(&base).len() as f64 / f64::from(PARTITIONS));
        c.close().await?;
        let t = Instant::now();
        let left = members(&observer, MEMBERS).await?;
        leave_seen.push(t.elapsed());
        leave_frac.push(left.moved_from(&joined).len() as f64 / f64::from(PARTITIONS));
        if *left != *base {
            return Err(
                "the assignment after the leave differs from the one before the join".into(),
            );
        }
        base = left;
    }
    for c in &clients {
        c.close().await?;
    }
    drop(held);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let ideal = 1.0 / (MEMBERS + 1) as f64;
    let mut rows = Vec::new();
    for (what, frac, seen) in [
        ("join", &join_frac, &join_seen),
        ("leave", &leave_frac, &leave_seen),
    ] {
        let st = Stats::of(seen).ok_or("no samples")?;
        rows.push(Row::new(
            12,
            format!(
                "partitioner: partitions moved on a {what} ({MEMBERS}↔{} members, {PARTITIONS} partitions, n={ROUNDS}; mean, max)",
                MEMBERS + 1
            ),
            format!("{}, {}", pct(mean(frac)), pct(max(frac))),
            format!("{} (ideal 1/{})", pct(ideal), MEMBERS + 1),
            format!("{:.2}", mean(frac) / ideal),
            "≈ 1/N",
            Verdict::check(max(frac) <= 1.5 * ideal),
        ));
        rows.push(Row::info(
            12,
            format!("partitioner: {what} seen by an observer (n={})", st.n),
            st.show(),
        ));
    }
    Ok(rows)
}

/// Item 13: lookups of a tree cache of `TREE_NODES` children (no I/O) against plain `get`s
/// of the same keys, sequential.
pub async fn tree_cache_lookups(cx: &Cx) -> Res<Vec<Row>> {
    let dir = path(&format!("/bench-tree-{}", cx.uniq))?;
    create_parents(&*cx.backend, &dir).await?;
    let mut keys = Vec::new();
    for i in 0..TREE_NODES {
        let k = dir.join(&format!("k{i:03}"))?;
        cx.backend.create(&k, b"value", CreateMode::Exact).await?;
        keys.push(k);
    }
    let client = Client::new(cx.backend.clone());
    let t = Instant::now();
    let cache: TreeCache = client.tree_cache(&dir).await?;
    let load = t.elapsed();
    if cache.len() != TREE_NODES + 1 {
        return Err(format!("the cache holds {} nodes", cache.len()).into());
    }
    let lookups = cx.sizes.cache_lookups;
    let t = Instant::now();
    let mut found = 0usize;
    for i in 0..lookups {
        found += usize::from(std::hint::black_box(cache.get(&keys[i % TREE_NODES])).is_some());
    }
    let per = lookups as f64 / t.elapsed().as_secs_f64();
    if found != lookups {
        return Err("a cached lookup missed".into());
    }
    let mut gets = Vec::new();
    for i in 0..cx.sizes.kernel_rounds {
        let t = Instant::now();
        cx.backend.get(&keys[i % TREE_NODES]).await?;
        gets.push(t.elapsed());
    }
    let g = Stats::of(&gets).ok_or("no samples")?;
    let get_rate = 1.0 / g.median.as_secs_f64().max(1e-9);
    drop(cache);
    client.close().await?;
    Ok(vec![
        Row::new(
            13,
            format!("tree cache: lookups of {TREE_NODES} cached nodes (no I/O) vs sequential get"),
            rate(per),
            format!("{} (get, 1 / median {})", rate(get_rate), g.show()),
            format!("{:.0}×", per / get_rate),
            "",
            Verdict::Info,
        ),
        Row::new(
            13,
            format!(
                "tree cache: initial load of {} nodes (2 watches each)",
                TREE_NODES + 1
            ),
            crate::stats::ms(load),
            "",
            "",
            "",
            Verdict::Info,
        ),
    ])
}
