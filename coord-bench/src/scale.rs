//! Item 7: children listing above many grandchildren, and memory (in child processes).

use std::time::{Duration, Instant};

use coord::registry::{Instance, RegistryLayout};
use coord::{create_parents, Client, CreateMode, SessionOptions};
use futures::{StreamExt, TryStreamExt};

use crate::cx::{path, Cx};
use crate::stats::{ms, ratio, thousands, Res, Row, Stats, Verdict};

async fn list_times(cx: &Cx, parent: &coord::Path, rounds: usize) -> Res<Stats> {
    let mut d = Vec::new();
    for r in 0..rounds + 5 {
        let t = Instant::now();
        let n = cx.backend.children(parent).await?.len();
        if r >= 5 {
            d.push(t.elapsed());
        }
        if n != 10 {
            return Err(format!("{n} children instead of 10").into());
        }
    }
    Stats::of(&d).ok_or_else(|| "no samples".into())
}

/// Lists a parent with 10 children before and after adding `grandchildren` below them.
pub async fn grandchildren(cx: &Cx) -> Res<Vec<Row>> {
    let g = cx.sizes.grandchildren;
    let parent = path("/gc")?;
    create_parents(&*cx.backend, &parent).await?;
    let mut kids = Vec::new();
    for j in 0..10 {
        let k = parent.join(&format!("c{j}"))?;
        cx.backend.create(&k, b"", CreateMode::Exact).await?;
        kids.push(k);
    }
    let before = list_times(cx, &parent, cx.sizes.list_rounds).await?;
    let t = Instant::now();
    let paths: Vec<coord::Path> = (0..g)
        .map(|i| kids[i % 10].join(&format!("g{i:06}")))
        .collect::<Result<_, _>>()?;
    match &cx.raw {
        // Written in coord's own key layout by the raw client, in batches (setup speed only).
        Some(raw) if cx.name != "zk" => {
            let keys = paths
                .iter()
                .map(|p| cx.server_key(p))
                .collect::<Res<Vec<_>>>()?;
            raw.bulk_create(keys).await?;
        }
        _ => {
            let b = &cx.backend;
            futures::stream::iter(paths.iter())
                .map(|p| async move { b.create(p, b"", CreateMode::Exact).await.map(|_| ()) })
                .buffer_unordered(128)
                .try_collect::<Vec<()>>()
                .await?;
        }
    }
    let setup = t.elapsed();
    // The subtree really is there: one child holds a tenth of it.
    let under = cx.backend.children(&kids[0]).await?.len();
    if under != g / 10 {
        return Err(format!("{under} grandchildren under c0, expected {}", g / 10).into());
    }
    let after = list_times(cx, &parent, cx.sizes.list_rounds).await?;
    let (x, xs) = ratio(after.median, before.median);
    Ok(vec![Row::new(
        7,
        format!(
            "children of a parent with 10 children and {} grandchildren (n={}; writing them took {})",
            thousands(g as u64),
            after.n,
            ms(setup)
        ),
        after.show(),
        format!("0 grandchildren: {}", before.show()),
        xs,
        "no growth (≤ 1.5×)",
        Verdict::check(x <= 1.5),
    )])
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub(crate) fn proc_status() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The heap in use in KiB: every arena's allocated chunks and the mmapped blocks (glibc's
/// `mallinfo2`). Unlike RSS it leaves out what the allocator keeps for reuse after a burst
/// of requests, so next to RSS it tells retention from what is really held. `None` off glibc.
pub(crate) fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) / 1024) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The memory phase run in a child process: `phase` (`sessions`, `watches`,
/// `registrations`) with `n` of them on one backend connected to `url`. Prints one line
/// `MEM <rss before> <rss after> <hwm after>` (KiB).
pub async fn child_phase(phase: &str, n: usize, url: &str) -> Res<()> {
    let backend = coord::connect_backend(url).await?;
    let dir = path("/mem")?;
    create_parents(&*backend, &dir).await?;
    let mut keep_sessions = Vec::new();
    let mut keep_watches = Vec::new();
    let mut keep_regs = Vec::new();
    let mut keep_clients = Vec::new();
    if phase == "watches" {
        let b = &backend;
        let dir = &dir;
        futures::stream::iter(0..n)
            .map(|i| async move {
                b.create(&dir.join(&format!("w{i}"))?, b"x", CreateMode::Exact)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = proc_status();
    match phase {
        "sessions" => {
            let b = &backend;
            keep_sessions = futures::stream::iter(0..n)
                .map(|_| async move { b.open_session(SessionOptions::new()).await })
                .buffer_unordered(16)
                .try_collect()
                .await?;
        }
        "watches" => {
            let b = &backend;
            let dir = &dir;
            keep_watches = futures::stream::iter(0..n)
                .map(|i| async move { b.watch(&dir.join(&format!("w{i}"))?).await })
                .buffer_unordered(32)
                .try_collect()
                .await?;
        }
        "registrations" => {
            keep_clients = (0..n).map(|_| Client::new(backend.clone())).collect();
            keep_regs = futures::stream::iter(keep_clients.iter().enumerate())
                .map(|(i, c)| async move {
                    // The generic layout on every backend, so that the figure stays comparable
                    // (Consul's default is its catalog).
                    c.registry_with(RegistryLayout::Generic)?
                        .register(&Instance::new("mem", &format!("i{i}"), "10.0.0.1", 80))
                        .await
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
        }
        other => return Err(format!("unknown memory phase {other}").into()),
    }
    // Let background tasks (keep-alives, watch re-arms) settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss1, hwm1) = proc_status();
    println!("MEM {rss0} {rss1} {hwm1}");
    for s in &keep_sessions {
        let _ = s.close().await;
    }
    for c in &keep_clients {
        let _ = c.close().await;
    }
    drop((keep_watches, keep_regs));
    Ok(())
}

/// Runs one memory phase in a child process of this binary (a clean peak) and returns
/// (steady delta, peak delta) in KiB.
async fn run_child(phase: &str, n: usize, url: &str) -> Res<(u64, u64)> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(["--child-mem", phase, &n.to_string(), url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .map_err(|_| format!("memory phase {phase}: no answer within 300 s"))??;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("MEM "))
        .ok_or_else(|| {
            format!(
                "memory phase {phase} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let [rss0, rss1, hwm1] = v[..] else {
        return Err(format!("bad memory line {line:?}").into());
    };
    Ok((rss1.saturating_sub(rss0), hwm1.saturating_sub(rss0)))
}

pub(crate) fn kib(k: u64) -> String {
    if k >= 10 * 1024 {
        format!("{:.1} MiB", k as f64 / 1024.0)
    } else {
        format!("{k} KiB")
    }
}

/// Memory of one client: `n` idle sessions, `n` watches, `n` registrations (each on its own
/// session), each phase in a fresh child process.
pub async fn memory(cx: &Cx) -> Vec<Row> {
    let n = cx.sizes.mem_n;
    let mut rows = Vec::new();
    for (phase, what) in [
        ("sessions", "idle sessions"),
        ("watches", "key watches"),
        ("registrations", "registrations (each with its own session)"),
    ] {
        let measure = format!("memory: one client holding {} {what}", thousands(n as u64));
        match run_child(phase, n, &cx.url).await {
            Ok((steady, peak)) => rows.push(Row::new(
                7,
                measure,
                format!(
                    "peak +{}, steady +{} ({:.1} KiB each)",
                    kib(peak),
                    kib(steady),
                    steady as f64 / n as f64
                ),
                "",
                "",
                "",
                Verdict::Info,
            )),
            Err(e) => rows.push(Row::failed(7, &measure, &e)),
        }
    }
    rows
}
