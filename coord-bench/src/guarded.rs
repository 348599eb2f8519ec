//! Item 8: the guarded write (`Backend::write_if`) against a plain `set` of the same key.

use std::time::{Duration, Instant};

use coord::{create_parents, Client};

use crate::cx::{path, within, Cx, STEP};
use crate::stats::{ratio, Res, Row, Stats, Verdict};

/// 32 bytes, like item 1's value; the round number makes every write distinct.
fn value(tag: char, i: usize) -> Vec<u8> {
    format!("{tag}{i:031}").into_bytes()
}

/// How the backend runs a guarded write with a creation stamp (the row's note).
fn how(backend: &str) -> &'static str {
    match backend {
        "zk" => "read of the guard, then a multi: 2 round trips",
        "etcd" => "one txn comparing the guard's create revision",
        "consul" => "one /v1/txn with a check-index of the guard",
        _ => "under the store's lock",
    }
}

/// Item 8: latency of a set guarded by a leader's candidate node (`Leadership::guarded_set`,
/// i.e. `Backend::write_if(Guard::created(node, token), WriteOp::Set)`) and of a plain `set`
/// of the same key through the same backend, sequentially, interleaved round by round.
pub async fn guarded_set(cx: &Cx) -> Res<Vec<Row>> {
    let key = path("/fenced/plan")?;
    // Makes `/fenced` and the key itself.
    create_parents(&*cx.backend, &key).await?;
    // The guard: a leader's candidate node, as it was created. The leader's client shares the
    // bench's backend (its writes go over the same connection as the plain sets).
    let client = Client::new(cx.backend.clone());
    let leader = within(
        STEP,
        "campaign",
        client.election("guarded")?.campaign(b"me"),
    )
    .await??;
    let guard = leader.guard();
    let node = cx
        .backend
        .exists(leader.node())
        .await?
        .ok_or("the leader's candidate node does not exist")?;
    if guard.path != *leader.node()
        || guard.created != Some(leader.fencing_token())
        || node.created != leader.fencing_token()
    {
        return Err(format!(
            "the leader's guard {guard:?} is not its node {} created at {}",
            leader.node(),
            node.created
        )
        .into());
    }
    let guarded = |i: usize| {
        let v = value('g', i);
        let leader = &leader;
        let key = &key;
        async move {
            let t = Instant::now();
            leader.guarded_set(key, &v, None).await?;
            Ok::<Duration, coord::Error>(t.elapsed())
        }
    };
    let plain = |i: usize| {
        let v = value('p', i);
        let key = &key;
        async move {
            let t = Instant::now();
            cx.backend.set(key, &v, None).await?;
            Ok::<Duration, coord::Error>(t.elapsed())
        }
    };
    // Warm-up, not counted.
    for i in 0..20 {
        guarded(1_000_000 + i).await?;
        plain(1_000_000 + i).await?;
    }
    let (mut dg, mut dp) = (Vec::new(), Vec::new());
    for i in 0..cx.sizes.kernel_rounds {
        // Alternate who goes first, as in item 1.
        if i % 2 == 0 {
            dg.push(guarded(i).await?);
            dp.push(plain(i).await?);
        } else {
            dp.push(plain(i).await?);
            dg.push(guarded(i).await?);
        }
    }
    // The guarded writes landed: one more, read back.
    let last = value('z', 0);
    leader.guarded_set(&key, &last, None).await?;
    if cx.backend.get(&key).await?.value != last {
        return Err("a guarded set did not land".into());
    }
    leader.resign().await?;
    let g = Stats::of(&dg).ok_or("no samples")?;
    let p = Stats::of(&dp).ok_or("no samples")?;
    let (_, xs) = ratio(g.median, p.median);
    Ok(vec![Row::new(
        8,
        format!(
            "guarded set (guard: the leader's node + creation stamp; {}) vs plain set, same key (n={})",
            how(cx.name),
            g.n
        ),
        g.show(),
        format!("{} (plain set)", p.show()),
        xs,
        "(guarded ÷ plain, median)",
        Verdict::Info,
    )])
}
