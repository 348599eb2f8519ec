//! Items 3–6: election handover (clean and crash), the herd, the registry.

use std::time::{Duration, Instant};

use coord::election::{Election, Leadership};
use coord::registry::{Instance, Registration, RegistryLayout};
use coord::{Client, SessionOptions};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::cx::{crash, within, Cx, STEP};
use crate::kernel::Floor;
use crate::stats::{ms, rate, ratio, thousands, Res, Row, Stats, Verdict};

type Elected = (Instant, coord::Result<Leadership>);

/// Starts a campaign in the background; its result and the time it returned come on `tx`.
fn campaign(
    e: &Election,
    value: &'static [u8],
    tx: mpsc::UnboundedSender<Elected>,
) -> tokio::task::JoinHandle<()> {
    let e = e.clone();
    tokio::spawn(async move {
        let r = e.campaign(value).await;
        let _ = tx.send((Instant::now(), r));
    })
}

async fn next_leader(
    rx: &mut mpsc::UnboundedReceiver<Elected>,
    bound: Duration,
) -> Res<(Instant, Leadership)> {
    let (t, r) = within(bound, "the successor's election", rx.recv())
        .await?
        .ok_or("every campaign ended")?;
    Ok((t, r?))
}

/// Item 3: from the leader's resign to the successor's "elected", next to the floor (one
/// watch latency plus one read).
pub async fn clean_handover(cx: &Cx, floor: &Floor) -> Res<Vec<Row>> {
    let a = Client::new(cx.backend.clone());
    let bc = Client::new(cx.backend.clone());
    let ea = a.election("clean")?;
    let eb = bc.election("clean")?;
    let mut d = Vec::new();
    for r in 0..cx.sizes.clean_rounds + 2 {
        let la = within(STEP, "campaign", ea.campaign(b"a")).await??;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = campaign(&eb, b"b", tx);
        cx.wait_children(ea.path(), 2, STEP).await?;
        // Let the successor arm its watch on the predecessor.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        la.resign().await?;
        let (t1, lb) = next_leader(&mut rx, STEP).await?;
        if r >= 2 {
            d.push(t1 - t0);
        }
        lb.resign().await?;
        let _ = task.await;
    }
    let c = Stats::of(&d).ok_or("no samples")?;
    let (Some(w), Some(rd)) = (floor.watch, floor.read) else {
        return Err("the floor was not measured".into());
    };
    let fl = w + rd;
    let (x, xs) = ratio(c.median, fl);
    let who = if floor.raw { "raw" } else { "coord" };
    Ok(vec![Row::new(
        3,
        format!("election handover, clean: resign → elected (n={})", c.n),
        c.show(),
        format!(
            "floor {} ({who} watch {} + {who} read {})",
            ms(fl),
            ms(w),
            ms(rd)
        ),
        xs,
        "≤ 2 × floor",
        Verdict::check(x <= 2.0),
    )])
}

/// Item 4: the leader's client dies without closing; from the death to the successor's
/// "elected", next to the session TTL.
pub async fn crash_handover(cx: &Cx) -> Res<Vec<Row>> {
    let caps = cx.backend.capabilities().clone();
    let ttl = Duration::from_secs(2).max(caps.min_session_ttl);
    let bc = Client::new(cx.backend.clone());
    let eb = bc.election("crash")?;
    let mut d = Vec::new();
    // From the server removing the dead leader's node (seen by a raw watch) to "elected":
    // coord's own share of the crash handover.
    let mut after_server = Vec::new();
    let mut granted = ttl;
    for _ in 0..cx.sizes.crash_rounds {
        let a = Client::with_session_options(cx.backend.clone(), SessionOptions::new().ttl(ttl));
        let la = within(STEP, "campaign", a.election("crash")?.campaign(b"a")).await??;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = campaign(&eb, b"b", tx);
        cx.wait_children(eb.path(), 2, STEP).await?;
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
        let (unused_tx, _unused_rx) = mpsc::unbounded_channel();
        let raw_watch = match &cx.raw {
            Some(raw) => Some(
                raw.watch(cx.server_key(la.node())?, gone_tx, unused_tx)
                    .await?,
            ),
            None => None,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = a
            .current_session()
            .await
            .ok_or("the leader has no session")?;
        granted = s.ttl();
        let t0 = Instant::now();
        crash(&s)?;
        let (t1, lb) = next_leader(&mut rx, granted * 3 + Duration::from_secs(5)).await?;
        d.push(t1 - t0);
        if let Some(w) = raw_watch {
            if let Ok(Some(tg)) = tokio::time::timeout(Duration::from_secs(2), gone_rx.recv()).await
            {
                // Signed: the raw watcher may hear of it after coord's candidate did.
                after_server.push(t1.saturating_duration_since(tg));
            }
            w.abort();
        }
        lb.resign().await?;
        let _ = task.await;
        drop(la);
    }
    let c = Stats::of(&d).ok_or("no samples")?;
    let limit = granted + Duration::from_millis(100);
    let what = if cx.name == "consul" {
        "TTL of the session's check"
    } else {
        "session TTL"
    };
    let mut rows = vec![Row::new(
        4,
        format!("election handover, crash: death → elected (n={})", c.n),
        c.show(),
        format!("{what} {}", ms(granted)),
        format!("{:.2} × TTL", c.p99.as_secs_f64() / granted.as_secs_f64()),
        format!("p99 ≤ TTL + 100 ms = {}", ms(limit)),
        Verdict::check(c.p99 <= limit),
    )];
    if let Some(a) = Stats::of(&after_server) {
        rows.push(Row::new(
            4,
            format!(
                "crash: the server removes the dead leader's node (raw watch) → elected (n={})",
                a.n
            ),
            a.show(),
            "",
            "",
            "",
            Verdict::Info,
        ));
    }
    Ok(rows)
}

/// Item 5: `n` candidates (each its own client and session on one backend); wake-ups per
/// leadership change and the time of one handover.
async fn herd_one(cx: &Cx, n: usize) -> Res<(f64, Stats, Duration)> {
    let name = format!("herd{n}");
    let clients: Vec<Client> = (0..n).map(|_| Client::new(cx.backend.clone())).collect();
    let elections: Vec<Election> = clients
        .iter()
        .map(|c| c.election(&name))
        .collect::<Result<_, _>>()?;
    let dir = elections.first().ok_or("no candidates")?.path().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    let t_setup = Instant::now();
    // Join in batches, so that a thousand sessions are not all opened in the same instant.
    for (i, e) in elections.iter().enumerate() {
        tasks.push(campaign(e, b"c", tx.clone()));
        if (i + 1) % 50 == 0 {
            cx.wait_children(&dir, i + 1, Duration::from_secs(120))
                .await?;
        }
    }
    cx.wait_children(&dir, n, Duration::from_secs(120)).await?;
    let setup = t_setup.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, mut leader) = next_leader(&mut rx, STEP).await?;
    let wakeups = |es: &[Election]| es.iter().map(Election::wakeups).sum::<u64>();
    let w0 = wakeups(&elections);
    let changes = cx.sizes.herd_changes.min(n - 1);
    let mut d = Vec::new();
    for _ in 0..changes {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        leader.resign().await?;
        let (t1, next) = next_leader(&mut rx, STEP).await?;
        d.push(t1 - t0);
        leader = next;
    }
    // Give stray notifications (a herd) time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w1 = wakeups(&elections);
    drop(leader);
    for t in &tasks {
        t.abort();
    }
    futures::stream::iter(clients.iter())
        .map(|c| c.close())
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let per = (w1 - w0) as f64 / changes.max(1) as f64;
    Ok((per, Stats::of(&d).ok_or("no samples")?, setup))
}

/// Item 5 for every size.
pub async fn herd(cx: &Cx) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut first: Option<Duration> = None;
    for &n in &cx.sizes.herd {
        let measure = format!("herd: {} candidates", thousands(n as u64));
        match herd_one(cx, n).await {
            Ok((per, st, setup)) => {
                let base = *first.get_or_insert(st.median);
                let (x, xs) = ratio(st.median, base);
                rows.push(Row::new(
                    5,
                    format!(
                        "{measure}: wake-ups per leadership change ({} changes)",
                        st.n
                    ),
                    format!("{per:.2}"),
                    "",
                    "",
                    "= 1",
                    Verdict::check((per - 1.0).abs() < 1e-9),
                ));
                rows.push(Row::new(
                    5,
                    format!("{measure}: one handover (joining took {})", ms(setup)),
                    st.show(),
                    format!("{} candidates: {}", cx.sizes.herd[0], ms(base)),
                    xs,
                    "no growth (≤ 1.5×)",
                    Verdict::check(x <= 1.5),
                ));
            }
            Err(e) => rows.push(Row::failed(5, &measure, &e)),
        }
    }
    rows
}

/// Item 6: registration → visible in another client's watch; cached lookups; discover — in
/// the generic layout, and in the backend's native layout if it has one (rows named after it).
pub async fn registry(cx: &Cx) -> Res<Vec<Row>> {
    let mut rows = registry_in(cx, RegistryLayout::Generic).await?;
    if cx.backend.native_registry().is_some() {
        rows.extend(registry_in(cx, RegistryLayout::Native).await?);
    }
    Ok(rows)
}

/// Item 6 in one registry layout.
async fn registry_in(cx: &Cx, layout: RegistryLayout) -> Res<Vec<Row>> {
    let s = &cx.sizes;
    let reg = Client::new(cx.backend.clone());
    // The watcher is another client: its own connection to the server.
    let other = Client::new(coord::connect_backend(&cx.url).await?);
    let label = match layout {
        RegistryLayout::Generic => "registry".to_owned(),
        _ => format!("registry ({})", reg.registry_with(layout)?.layout_name()?),
    };
    let mut stream = Box::pin(other.registry_with(layout)?.watch("vis").await?);
    within(STEP, "first watch list", stream.next()).await?;
    let mut d = Vec::new();
    for r in 0..s.reg_rounds + 2 {
        let id = format!("i{r}");
        let t0 = Instant::now();
        let registration = reg
            .registry_with(layout)?
            .register(&Instance::new("vis", &id, "127.0.0.1", 8080))
            .await?;
        loop {
            let list = within(STEP, "registry watch", stream.next())
                .await?
                .ok_or("the registry watch ended")??;
            if list.iter().any(|i| i.id == id) {
                if r >= 2 {
                    d.push(t0.elapsed());
                }
                break;
            }
        }
        registration.deregister().await?;
        loop {
            let list = within(STEP, "registry watch", stream.next())
                .await?
                .ok_or("the registry watch ended")??;
            if !list.iter().any(|i| i.id == id) {
                break;
            }
        }
    }
    let vis = Stats::of(&d).ok_or("no samples")?;
    let mut rows = vec![Row::new(
        6,
        format!(
            "{label}: register → visible in another client's watch (n={})",
            vis.n
        ),
        vis.show(),
        "",
        "",
        "",
        Verdict::Info,
    )];
    // A service with many instances (one session holds them all), each at its own port: in
    // etcd's naming layout an address is one entry.
    let big = s.discover_instances;
    let regs: Vec<Registration> = futures::stream::iter(0..big)
        .map(|i| {
            let r = reg.registry_with(layout);
            let port = u16::try_from(10_000 + i).unwrap_or(u16::MAX);
            async move {
                let r = r?;
                r.register(&Instance::new("big", &format!("i{i:05}"), "10.0.0.1", port))
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    // Cached lookups: no I/O.
    let cache = other.registry_with(layout)?.cache("big").await?;
    let deadline = Instant::now() + STEP;
    while cache.instances().len() < big {
        if Instant::now() > deadline {
            return Err("the cache did not catch up".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let mut total = 0usize;
    for _ in 0..s.cache_lookups {
        total += std::hint::black_box(cache.instances()).len();
    }
    let per = s.cache_lookups as f64 / t.elapsed().as_secs_f64();
    if total != big * s.cache_lookups {
        return Err("the cache changed during the lookups".into());
    }
    rows.push(Row::new(
        6,
        format!(
            "{label}: cached lookups ({} instances, no I/O)",
            thousands(big as u64)
        ),
        rate(per),
        "",
        "",
        "",
        Verdict::Info,
    ));
    let mut dd = Vec::new();
    for r in 0..s.discover_rounds + 1 {
        let t = Instant::now();
        let list = reg.registry_with(layout)?.discover("big").await?;
        if r >= 1 {
            dd.push(t.elapsed());
        }
        if list.len() != big {
            return Err(format!("discover found {} of {big}", list.len()).into());
        }
    }
    let st = Stats::of(&dd).ok_or("no samples")?;
    rows.push(Row::new(
        6,
        format!(
            "{label}: discover a service of {} instances (n={})",
            thousands(big as u64),
            st.n
        ),
        st.show(),
        "",
        "",
        "",
        Verdict::Info,
    ));
    drop(cache);
    reg.close().await?;
    drop(regs);
    Ok(rows)
}
