//! Items 1 and 2: kernel overhead against the raw client, and watch latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coord::{create_parents, CreateMode, KeyEvent, Path, Version};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::cx::{path, within, Cx};
use crate::raw::Raw;
use crate::stats::{rate, ratio, Res, Row, Stats, Verdict};

/// The five operations, in the order of one round.
pub const OPS: [&str; 5] = ["create", "get", "set (CAS)", "children", "delete"];

/// The medians the election rows compare with (the "physical floor").
#[derive(Clone, Copy, Debug, Default)]
pub struct Floor {
    /// Median of one read (raw if there is a raw client, else coord).
    pub read: Option<Duration>,
    /// Median of one watch latency (raw if there is a raw client, else coord).
    pub watch: Option<Duration>,
    /// Whether the figures are the raw client's.
    pub raw: bool,
}

const VALUE: &[u8] = b"0123456789abcdef0123456789abcdef";

async fn coord_round(cx: &Cx, parent: &Path, kids: &Path, i: usize) -> Res<[Duration; 5]> {
    let b = &cx.backend;
    let p = parent.join(&format!("k{i}"))?;
    let mut d = [Duration::ZERO; 5];
    let t = Instant::now();
    b.create(&p, VALUE, CreateMode::Exact).await?;
    d[0] = t.elapsed();
    let t = Instant::now();
    let v = b.get(&p).await?.stat.version;
    d[1] = t.elapsed();
    let t = Instant::now();
    b.set(&p, VALUE, Some(v)).await?;
    d[2] = t.elapsed();
    let t = Instant::now();
    let n = b.children(kids).await?.len();
    d[3] = t.elapsed();
    let t = Instant::now();
    b.delete(&p, None).await?;
    d[4] = t.elapsed();
    if n != 10 {
        return Err(format!("coord children: {n} instead of 10").into());
    }
    Ok(d)
}

async fn raw_round(raw: &Raw, parent: &str, kids: &str, i: usize) -> Res<[Duration; 5]> {
    let p = format!("{parent}/k{i}");
    let mut d = [Duration::ZERO; 5];
    let t = Instant::now();
    raw.create(&p, VALUE).await?;
    d[0] = t.elapsed();
    let t = Instant::now();
    let v = raw.get(&p).await?;
    d[1] = t.elapsed();
    let t = Instant::now();
    raw.set(&p, VALUE, v).await?;
    d[2] = t.elapsed();
    let t = Instant::now();
    let n = raw.children(kids).await?;
    d[3] = t.elapsed();
    let t = Instant::now();
    raw.delete(&p).await?;
    d[4] = t.elapsed();
    if n != 10 {
        return Err(format!("raw children: {n} instead of 10").into());
    }
    Ok(d)
}

/// Ops/s of each of the five phases over `m` keys with `c` in flight, through coord.
async fn coord_throughput(
    cx: &Cx,
    parent: &Path,
    kids: &Path,
    m: usize,
    c: usize,
) -> Res<[f64; 5]> {
    let b = &cx.backend;
    let keys: Vec<Path> = (0..m)
        .map(|i| parent.join(&format!("t{i}")))
        .collect::<Result<_, _>>()?;
    let mut out = [0.0; 5];
    let t = Instant::now();
    futures::stream::iter(keys.iter())
        .map(|p| async move { b.create(p, VALUE, CreateMode::Exact).await.map(|_| ()) })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[0] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let versions: Vec<(usize, Version)> = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, p)| async move { b.get(p).await.map(|n| (i, n.stat.version)) })
        .buffer_unordered(c)
        .try_collect()
        .await?;
    out[1] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let keys_ref = &keys;
    futures::stream::iter(versions.iter())
        .map(|(i, v)| async move { b.set(&keys_ref[*i], VALUE, Some(*v)).await.map(|_| ()) })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[2] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(0..m)
        .map(|_| async move { b.children(kids).await.map(|_| ()) })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[3] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(keys.iter())
        .map(|p| async move { b.delete(p, None).await })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[4] = m as f64 / t.elapsed().as_secs_f64();
    Ok(out)
}

/// The same through the raw client.
async fn raw_throughput(raw: &Raw, parent: &str, kids: &str, m: usize, c: usize) -> Res<[f64; 5]> {
    let keys: Vec<String> = (0..m).map(|i| format!("{parent}/t{i}")).collect();
    let mut out = [0.0; 5];
    let t = Instant::now();
    futures::stream::iter(keys.iter())
        .map(|p| raw.create(p, VALUE))
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[0] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let versions: Vec<(usize, u64)> = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, p)| async move { raw.get(p).await.map(|v| (i, v)) })
        .buffer_unordered(c)
        .try_collect()
        .await?;
    out[1] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(versions.iter())
        .map(|(i, v)| raw.set(&keys[*i], VALUE, *v))
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[2] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(0..m)
        .map(|_| async move { raw.children(kids).await.map(|_| ()) })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[3] = m as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(keys.iter())
        .map(|p| raw.delete(p))
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    out[4] = m as f64 / t.elapsed().as_secs_f64();
    Ok(out)
}

/// Item 1: latency (sequential, one op in flight) and throughput of the five operations,
/// through coord and through the raw client, interleaved round by round. Fills `floor.read`.
pub async fn overhead(cx: &Cx, floor: &mut Floor) -> Res<Vec<Row>> {
    let s = &cx.sizes;
    let parent = path("/kv")?;
    let kids = path("/kids")?;
    create_parents(&*cx.backend, &parent).await?;
    create_parents(&*cx.backend, &kids).await?;
    for j in 0..10 {
        cx.backend
            .create(&kids.join(&format!("c{j}"))?, b"", CreateMode::Exact)
            .await?;
    }
    let raw_parent = format!("/bench-raw-{}", cx.uniq);
    let raw_kids = format!("/bench-raw-kids-{}", cx.uniq);
    if let Some(raw) = &cx.raw {
        raw.make_parent(&raw_parent).await?;
        raw.make_parent(&raw_kids).await?;
        for j in 0..10 {
            raw.create(&format!("{raw_kids}/c{j}"), b"").await?;
        }
    }
    // Warm-up (connections, JIT of the server), not counted.
    for i in 0..20 {
        coord_round(cx, &parent, &kids, 1_000_000 + i).await?;
        if let Some(raw) = &cx.raw {
            raw_round(raw, &raw_parent, &raw_kids, 1_000_000 + i).await?;
        }
    }
    let mut lat: BTreeMap<(usize, bool), Vec<Duration>> = BTreeMap::new();
    for i in 0..s.kernel_rounds {
        // Alternate who goes first, so that neither side always runs on a warmer server.
        let coord_first = i % 2 == 0;
        let mut sides = vec![false, true];
        if !coord_first {
            sides.reverse();
        }
        for is_raw in sides {
            let d = if is_raw {
                match &cx.raw {
                    Some(raw) => raw_round(raw, &raw_parent, &raw_kids, i).await?,
                    None => continue,
                }
            } else {
                coord_round(cx, &parent, &kids, i).await?
            };
            for (op, v) in d.iter().enumerate() {
                lat.entry((op, is_raw)).or_default().push(*v);
            }
        }
    }
    let mut rows = Vec::new();
    for (op, name) in OPS.iter().enumerate() {
        let c = Stats::of(lat.get(&(op, false)).map_or(&[][..], |v| v)).ok_or("no samples")?;
        let r = lat.get(&(op, true)).and_then(|v| Stats::of(v));
        if op == 1 {
            floor.read = Some(r.map_or(c.median, |r| r.median));
            floor.raw = r.is_some();
        }
        rows.push(match r {
            Some(r) => {
                let (x, xs) = ratio(c.median, r.median);
                Row::new(
                    1,
                    format!("{name} latency (n={})", c.n),
                    c.show(),
                    r.show(),
                    xs,
                    "≤ 1.05",
                    Verdict::check(x <= 1.05),
                )
            }
            None => Row::new(
                1,
                format!("{name} latency (n={})", c.n),
                c.show(),
                "no raw client",
                "",
                "",
                Verdict::Info,
            ),
        });
    }
    // Throughput: `tput_ops` operations per phase, `tput_concurrency` in flight.
    let (m, conc) = (s.tput_ops, s.tput_concurrency);
    let ct = coord_throughput(cx, &parent, &kids, m, conc).await?;
    let rt = match &cx.raw {
        Some(raw) => Some(raw_throughput(raw, &raw_parent, &raw_kids, m, conc).await?),
        None => None,
    };
    for (op, name) in OPS.iter().enumerate() {
        let (reference, rs) = match rt {
            Some(rt) => (rate(rt[op]), format!("{:.2}", rt[op] / ct[op])),
            None => ("no raw client".into(), String::new()),
        };
        rows.push(Row::new(
            1,
            format!("{name} throughput ({m} ops, {conc} in flight)"),
            rate(ct[op]),
            reference,
            rs,
            "(cost ratio raw/coord ops/s)",
            Verdict::Info,
        ));
    }
    Ok(rows)
}

/// Item 2: from a write to the watcher's event, through coord's watch and through the raw
/// client's watch on the same key, both woken by the same raw write. Fills `floor.watch`.
pub async fn watch_latency(cx: &Cx, floor: &mut Floor) -> Res<Vec<Row>> {
    let b = cx.backend.clone();
    let p = path("/watched")?;
    b.create(&p, b"0", CreateMode::Exact).await?;
    let (ctx, mut crx) = mpsc::unbounded_channel::<Instant>();
    let (_, mut stream) = b.watch(&p).await?;
    let coord_task = tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(KeyEvent::Changed(_)) | Ok(KeyEvent::Created(_)) | Ok(KeyEvent::Resync(_)) => {
                    if ctx.send(now).is_err() {
                        return;
                    }
                }
                Ok(KeyEvent::Deleted) => {}
                Err(_) => return,
            }
        }
    });
    let (rtx, mut rrx) = mpsc::unbounded_channel::<Instant>();
    let (vtx, mut vrx) = mpsc::unbounded_channel::<Instant>();
    let raw_task = match &cx.raw {
        Some(raw) => Some(raw.watch(cx.server_key(&p)?, rtx, vtx).await?),
        None => None,
    };
    let server_path = match &cx.raw {
        Some(_) => Some(String::from_utf8(cx.server_key(&p)?)?),
        None => None,
    };
    let mut dc = Vec::new();
    let mut dr = Vec::new();
    // ZooKeeper only: the raw watcher's re-arming read, i.e. the raw event *with the value*.
    let mut dv = Vec::new();
    let warmup = 5;
    for i in 0..cx.sizes.watch_rounds + warmup {
        // Let both watches re-arm after the previous event.
        tokio::time::sleep(Duration::from_millis(25)).await;
        while crx.try_recv().is_ok() {}
        while rrx.try_recv().is_ok() {}
        while vrx.try_recv().is_ok() {}
        let value = format!("v{i}");
        let t0 = Instant::now();
        match (&cx.raw, &server_path) {
            (Some(raw), Some(sp)) => {
                if cx.name == "etcd" {
                    raw.put_bytes(&cx.server_key(&p)?, value.as_bytes()).await?;
                } else {
                    raw.put(sp, value.as_bytes()).await?;
                }
            }
            _ => {
                b.set(&p, value.as_bytes(), None).await?;
            }
        }
        let tc = within(Duration::from_secs(10), "coord watch event", crx.recv())
            .await?
            .ok_or("the coord watch ended")?;
        if i >= warmup {
            dc.push(tc.saturating_duration_since(t0));
        }
        if raw_task.is_some() {
            let tr = within(Duration::from_secs(10), "raw watch event", rrx.recv())
                .await?
                .ok_or("the raw watch ended")?;
            if i >= warmup {
                dr.push(tr.saturating_duration_since(t0));
            }
            if cx.name == "zk" {
                let tv = within(Duration::from_secs(10), "raw re-read", vrx.recv())
                    .await?
                    .ok_or("the raw watch ended")?;
                if i >= warmup {
                    dv.push(tv.saturating_duration_since(t0));
                }
            }
        }
    }
    coord_task.abort();
    if let Some(t) = raw_task {
        t.abort();
    }
    let c = Stats::of(&dc).ok_or("no samples")?;
    let r = Stats::of(&dr);
    floor.watch = Some(r.map_or(c.median, |r| r.median));
    let measure = format!("watch: write → event (n={})", c.n);
    let mut rows = Vec::new();
    if let Some(v) = Stats::of(&dv) {
        // coord's events carry the value; on ZooKeeper that takes the read the raw watcher
        // also needs to see the value (and to re-arm): the like-for-like comparison.
        let (x, xs) = ratio(c.median, v.median);
        rows.push(Row::new(
            2,
            format!("watch: write → event with the value (n={})", c.n),
            c.show(),
            format!("{} (raw notification + re-arming read)", v.show()),
            xs,
            "≤ 1.10",
            Verdict::check(x <= 1.10),
        ));
    }
    rows.insert(
        0,
        match r {
            Some(r) => {
                let (x, xs) = ratio(c.median, r.median);
                Row::new(
                    2,
                    measure,
                    c.show(),
                    r.show(),
                    xs,
                    "≤ 1.10",
                    Verdict::check(x <= 1.10),
                )
            }
            None => Row::new(2, measure, c.show(), "no raw client", "", "", Verdict::Info),
        },
    );
    Ok(rows)
}
