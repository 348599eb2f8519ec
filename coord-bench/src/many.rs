//! Item 7, extended (issue 17): one process holding 10 × N key watches, N children watches and
//! N idle sessions (N = the memory phases' size: 1,000 in a full run), in a child process of
//! its own so that its memory is clean: errors, final states delivered, memory per key watch
//! and per idle session, TCP connections to the server (the Consul agent's limit), watch
//! latency coord/raw with all those watches open, and the time to set up the key watches next
//! to the raw client doing the same.

use std::time::{Duration, Instant};

use coord::{
    create_parents, ChildrenEvent, CreateMode, Error, KeyEvent, Path, Session, SessionOptions,
};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::cx::{Cx, Sizes};
use crate::kernel::Floor;
use crate::raw::Raw;
use crate::scale::{heap_in_use, kib, proc_status};
use crate::stats::{ms, ratio, thousands, Res, Row, Verdict};

/// Keys per watched parent.
const PER_PARENT: usize = 10;
/// Calls in flight while setting up.
const AT_ONCE: usize = 32;
/// Sessions opened at once (a Consul agent registers a check per session).
const SESSIONS_AT_ONCE: usize = 8;
/// The bound of the drain after the changes.
const DRAIN: Duration = Duration::from_secs(120);

fn key(i: usize) -> Res<Path> {
    Ok(Path::new(format!(
        "/many/p{:05}/k{}",
        i / PER_PARENT,
        i % PER_PARENT
    ))?)
}

fn parent(i: usize) -> Res<Path> {
    Ok(Path::new(format!("/many/p{i:05}"))?)
}

/// A key's state as a watch knows it (`None`: absent).
type State = Option<(Vec<u8>, coord::Version)>;

enum Item {
    Key(usize, Option<coord::Result<KeyEvent>>),
    Kids(usize, Option<coord::Result<ChildrenEvent>>),
}

/// TCP state codes of `/proc/net/tcp`.
const ESTABLISHED: &str = "01";
const TIME_WAIT: &str = "06";

/// The TCP sockets to `port` in `state`: this process's own (`own`), or all of its network
/// namespace's (a socket in TIME_WAIT has no process any more). `/proc/self/net/tcp` lists the
/// whole namespace: without the filter, a full bench run counted the parent process's
/// connections to the agent too (35 where the child held 20).
fn sockets_to(port: u16, state: &str, own: bool) -> usize {
    let want = format!("{port:04X}");
    let mine: std::collections::HashSet<String> = if own {
        std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                let l = l.to_str()?;
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect()
    } else {
        Default::default()
    };
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|s| {
            s.lines()
                .skip(1)
                .filter(|l| {
                    // sl local remote state … inode: the remote end is the server's port.
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 9
                        && f[3] == state
                        && f[2].rsplit(':').next() == Some(want.as_str())
                        && (!own || mine.contains(f[9]))
                })
                .count()
        })
        .sum()
}

/// Samples the established connections to `port` every 100 ms until dropped; `peak` is the
/// most seen (a snapshot at a quiet moment misses the bursts the bound is about).
struct PeakSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    fn start(port: u16) -> PeakSampler {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let n = tokio::task::spawn_blocking(move || sockets_to(port, ESTABLISHED, true))
                    .await
                    .unwrap_or(0);
                p.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PeakSampler { peak, task }
    }

    fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RSS and heap in use (KiB) once background tasks (keep-alives, watch re-arms) settled.
async fn settle() -> (u64, Option<u64>) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (proc_status().0, heap_in_use())
}

/// The row of the heap in use per item between two [`settle`]s (nothing off glibc).
fn heap_row(what: &str, before: Option<u64>, after: Option<u64>, n: usize) -> Option<Row> {
    let grown = after?.saturating_sub(before?);
    Some(row(
        format!("one process: heap in use per {what}"),
        format!("{:.2} KiB (+{})", grown as f64 / n as f64, kib(grown)),
        "report (RSS minus what the allocator keeps)",
        Verdict::Info,
    ))
}

fn row(measure: String, coord: String, target: &str, verdict: Verdict) -> Row {
    Row::new(7, measure, coord, "", "", target, verdict)
}

/// One row per line on stdout, fields separated by tabs.
fn print_row(r: &Row) {
    let v = match r.verdict {
        Verdict::Met => "met",
        Verdict::Missed => "missed",
        Verdict::Info => "info",
    };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    println!(
        "ROW\t{}\t{}\t{}\t{}\t{}\t{}",
        clean(&r.measure),
        clean(&r.coord),
        clean(&r.reference),
        clean(&r.ratio),
        clean(&r.target),
        v
    );
}

fn parse_row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.strip_prefix("ROW\t")?.split('\t').collect();
    let [measure, coord, reference, ratio, target, v] = f[..] else {
        return None;
    };
    let verdict = match v {
        "met" => Verdict::Met,
        "missed" => Verdict::Missed,
        _ => Verdict::Info,
    };
    Some(Row::new(
        7, measure, coord, reference, ratio, target, verdict,
    ))
}

/// Creates every path of `paths` with `value`, [`AT_ONCE`] at a time.
async fn create_all(
    b: &dyn coord::Backend,
    paths: impl Iterator<Item = Res<Path>>,
    value: &[u8],
) -> Res<()> {
    stream::iter(paths)
        .map(|p| async move {
            b.create(&p?, value, CreateMode::Exact).await?;
            Res::Ok(())
        })
        .buffer_unordered(AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The child process: `name` at `url` (its own namespace), the raw client at `endpoint`.
/// Prints its rows; a failed step is a failed row, and the steps after it still run where
/// they can.
pub async fn child(name: &str, url: &str, endpoint: &str, quick: bool) -> Res<()> {
    let sizes = if quick { Sizes::quick() } else { Sizes::full() };
    let backend = coord::connect_backend(url).await?;
    let raw = match name {
        "mem" => None,
        other => Some(Raw::connect(other, endpoint).await?),
    };
    let cx = Cx {
        name: crate::static_name(name),
        url: url.to_owned(),
        backend,
        raw,
        uniq: String::new(),
        sizes,
    };
    for r in one_process(&cx, endpoint).await {
        print_row(&r);
    }
    Ok(())
}

async fn one_process(cx: &Cx, endpoint: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = cx.sizes.mem_n;
    let keys = n * PER_PARENT;
    let b = &*cx.backend;
    let port: Option<u16> = endpoint.rsplit(':').next().and_then(|p| p.parse().ok());

    // Setup: the parents and two thirds of the keys.
    let setup = async {
        create_parents(b, &parent(0)?).await?;
        create_all(b, (1..n).map(parent), b"").await?;
        create_all(b, (0..keys).filter(|i| i % 3 != 0).map(key), b"init").await
    };
    if let Err(e) = setup.await {
        rows.push(Row::failed(7, "one process: setup", &e));
        return rows;
    }
    let (rss0, heap0) = settle().await;
    let sampler = port.map(PeakSampler::start);

    let sessions: Vec<std::sync::Arc<dyn Session>> = match stream::iter(0..n)
        .map(|_| b.open_session(SessionOptions::new()))
        .buffer_unordered(SESSIONS_AT_ONCE)
        .try_collect()
        .await
    {
        Ok(s) => s,
        Err(e) => {
            rows.push(Row::failed(
                7,
                &format!("one process: open {} sessions", thousands(n as u64)),
                &e.into(),
            ));
            Vec::new()
        }
    };
    let (rss1, heap1) = settle().await;
    if !sessions.is_empty() {
        let each = rss1.saturating_sub(rss0) as f64 / n as f64;
        let (target, verdict) = if cx.name == "zk" {
            ("report", Verdict::Info)
        } else {
            ("≤ 4 KiB", Verdict::check(each <= 4.0))
        };
        rows.push(row(
            format!(
                "one process: memory per idle session ({} sessions)",
                thousands(n as u64)
            ),
            format!("{each:.1} KiB (+{})", kib(rss1.saturating_sub(rss0))),
            target,
            verdict,
        ));
        rows.extend(heap_row("idle session", heap0, heap1, n));
    }

    let t = Instant::now();
    let key_watches = stream::iter(0..keys)
        .map(|i| async move { Ok::<_, crate::stats::BoxError>(b.watch(&key(i)?).await?) })
        .buffered(AT_ONCE)
        .try_collect::<Vec<_>>()
        .await;
    let coord_setup = t.elapsed();
    let key_watches = match key_watches {
        Ok(w) => w,
        Err(e) => {
            rows.push(Row::failed(
                7,
                &format!("one process: {} key watches", thousands(keys as u64)),
                &e,
            ));
            return rows;
        }
    };
    let (rss2, heap2) = settle().await;
    let each = rss2.saturating_sub(rss1) as f64 / keys as f64;
    rows.push(row(
        format!(
            "one process: memory per key watch ({} watches)",
            thousands(keys as u64)
        ),
        format!("{each:.2} KiB (+{})", kib(rss2.saturating_sub(rss1))),
        "≤ 2 KiB",
        Verdict::check(each <= 2.0),
    ));
    rows.extend(heap_row("key watch", heap1, heap2, keys));
    let kid_watches =
        match stream::iter(0..n)
            .map(|i| async move {
                Ok::<_, crate::stats::BoxError>(b.watch_children(&parent(i)?).await?)
            })
            .buffered(AT_ONCE)
            .try_collect::<Vec<_>>()
            .await
        {
            Ok(w) => w,
            Err(e) => {
                rows.push(Row::failed(
                    7,
                    &format!("one process: {} children watches", thousands(n as u64)),
                    &e,
                ));
                return rows;
            }
        };
    let target = |c: usize| {
        if cx.name == "consul" {
            ("≤ 32", Verdict::check(c <= 32))
        } else {
            ("report", Verdict::Info)
        }
    };
    if let Some(port) = port {
        let c = sockets_to(port, ESTABLISHED, true);
        let (target, verdict) = target(c);
        rows.push(row(
            "one process: TCP connections to the server with every watch and session open".into(),
            c.to_string(),
            target,
            verdict,
        ));
    }

    match changes_seen(cx, key_watches, kid_watches).await {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(Row::failed(7, "one process: final states", &e)),
    }
    if let (Some(port), Some(s)) = (port, &sampler) {
        let c = s.peak();
        let (target, verdict) = target(c);
        rows.push(row(
            "one process: TCP connections to the server, the most seen from the first session \
             to the last change seen (sampled every 100 ms)"
                .into(),
            c.to_string(),
            target,
            verdict,
        ));
        // Connections closed within the last minute: churn (each costs a local port).
        rows.push(row(
            "one process: sockets to the server in TIME_WAIT after the changes (the host's: such a socket has no process)".into(),
            sockets_to(port, TIME_WAIT, false).to_string(),
            "report",
            Verdict::Info,
        ));
    }
    drop(sampler);

    rows.extend(latency(cx, keys).await);

    if let Some(raw) = &cx.raw {
        match raw_setup(cx, raw, keys).await {
            Ok(d) => {
                let (_, xs) = ratio(coord_setup, d);
                rows.push(Row::new(
                    7,
                    format!(
                        "time to set up {} key watches ({AT_ONCE} at a time)",
                        thousands(keys as u64)
                    ),
                    ms(coord_setup),
                    format!("{} (raw client, a watch per key)", ms(d)),
                    xs,
                    "report",
                    Verdict::Info,
                ));
            }
            // The raw client may not manage at all (a blocking query per key against the
            // Consul agent's default limit of 200 connections): that is the figure.
            Err(e) => rows.push(Row::new(
                7,
                format!("time to set up {} key watches", thousands(keys as u64)),
                ms(coord_setup),
                format!("raw client failed: {}", e.to_string().replace('|', "/")),
                "",
                "report",
                Verdict::Info,
            )),
        }
    } else {
        rows.push(row(
            format!("time to set up {} key watches", thousands(keys as u64)),
            ms(coord_setup),
            "report",
            Verdict::Info,
        ));
    }
    for s in &sessions {
        let _ = s.close().await;
    }
    rows
}

/// Changes a sample of keys (N/2; sets, creates, deletes) and drains every watch until it
/// shows the store's final state of its key or list.
async fn changes_seen(
    cx: &Cx,
    key_watches: Vec<(Option<coord::Node>, coord::KeyWatch)>,
    kid_watches: Vec<(Vec<String>, coord::ChildrenWatch)>,
) -> Res<Row> {
    let b = &*cx.backend;
    let keys = key_watches.len();
    let parents = kid_watches.len();
    let mut have: Vec<State> = Vec::with_capacity(keys);
    let mut kids: Vec<Vec<String>> = Vec::with_capacity(parents);
    let mut streams: Vec<BoxStream<'static, Item>> = Vec::with_capacity(keys + parents);
    for (i, (n, w)) in key_watches.into_iter().enumerate() {
        have.push(n.map(|n| (n.value, n.stat.version)));
        let end = stream::once(async { None });
        streams.push(w.map(Some).chain(end).map(move |e| Item::Key(i, e)).boxed());
    }
    for (i, (l, w)) in kid_watches.into_iter().enumerate() {
        kids.push(l);
        let end = stream::once(async { None });
        streams.push(
            w.map(Some)
                .chain(end)
                .map(move |e| Item::Kids(i, e))
                .boxed(),
        );
    }
    let mut all = stream::select_all(streams);

    let changes = (cx.sizes.mem_n / 2).max(1);
    let stride = (keys / changes).max(1);
    stream::iter(0..changes)
        .map(|s| async move {
            let i = (s * stride + s % PER_PARENT.min(stride)).min(keys - 1);
            let k = key(i)?;
            let v = |n: usize| format!("v{s}-{n}").into_bytes();
            match (s % 4, i % 3 != 0) {
                (3, true) => b.delete(&k, None).await?,
                (_, true) => {
                    b.set(&k, &v(0), None).await?;
                    b.set(&k, &v(1), None).await?;
                }
                (_, false) => {
                    b.create(&k, &v(0), CreateMode::Exact).await?;
                    b.set(&k, &v(1), None).await?;
                }
            }
            Res::Ok(())
        })
        .buffer_unordered(AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    let want: Vec<State> = stream::iter(0..keys)
        .map(|i| async move {
            match b.get(&key(i)?).await {
                Ok(n) => Ok(Some((n.value, n.stat.version))),
                Err(Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(crate::stats::BoxError::from(e)),
            }
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await?;
    let want_kids: Vec<Vec<String>> = stream::iter(0..parents)
        .map(|i| async move {
            let mut l = b.children(&parent(i)?).await?;
            l.sort();
            Res::Ok(l)
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await?;

    let mut errors = 0usize;
    let mut first_error = None;
    let off = |have: &[State], kids: &[Vec<String>]| {
        (0..keys).filter(|&i| have[i] != want[i]).count()
            + (0..parents).filter(|&i| kids[i] != want_kids[i]).count()
    };
    let mut missing = off(&have, &kids);
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + DRAIN;
    while missing > 0 {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, all.next()).await else {
            break;
        };
        let (was, is) = match item {
            Item::Key(i, ev) => {
                let was = have[i] == want[i];
                match ev {
                    Some(Ok(KeyEvent::Created(n) | KeyEvent::Changed(n))) => {
                        have[i] = Some((n.value, n.stat.version))
                    }
                    Some(Ok(KeyEvent::Resync(n))) => have[i] = n.map(|n| (n.value, n.stat.version)),
                    Some(Ok(KeyEvent::Deleted)) => have[i] = None,
                    Some(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                    None => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "a watch ended".into());
                    }
                }
                (was, have[i] == want[i])
            }
            Item::Kids(i, ev) => {
                let was = kids[i] == want_kids[i];
                match ev {
                    Some(Ok(ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l))) => kids[i] = l,
                    Some(Ok(ChildrenEvent::ParentDeleted)) => kids[i].clear(),
                    Some(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                    None => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "a children watch ended".into());
                    }
                }
                (was, kids[i] == want_kids[i])
            }
        };
        match (was, is) {
            (true, false) => missing += 1,
            (false, true) => missing -= 1,
            _ => {}
        }
    }
    let took = t.elapsed();
    let total = keys + parents;
    let coord = format!(
        "{} of {} watches on the final state ({} changed keys; after {}), {errors} errors{}",
        thousands((total - missing) as u64),
        thousands(total as u64),
        changes,
        ms(took),
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(row(
        format!(
            "one process: {} key + {} children watches + {} sessions, final states",
            thousands(keys as u64),
            thousands(parents as u64),
            thousands(cx.sizes.mem_n as u64)
        ),
        coord,
        "all, no errors",
        Verdict::check(missing == 0 && errors == 0),
    ))
}

/// Item 2's watch latency while every watch is still open.
async fn latency(cx: &Cx, keys: usize) -> Vec<Row> {
    match crate::kernel::watch_latency(cx, &mut Floor::default()).await {
        Ok(rows) => rows
            .into_iter()
            .map(|mut r| {
                r.item = 7;
                r.measure = format!(
                    "{} with {} other watches open",
                    r.measure,
                    thousands(keys as u64)
                );
                r
            })
            .collect(),
        Err(e) => vec![Row::failed(7, "watch latency with the watches open", &e)],
    }
}

/// The raw client arms a watch on every key (as a user without coord would: a watch stream,
/// a blocking query or a one-shot watch per key, with the key's current value); returns how
/// long that took.
async fn raw_setup(cx: &Cx, raw: &Raw, keys: usize) -> Res<Duration> {
    let t = Instant::now();
    if let Raw::Zk(c) = raw {
        // A read with a watch; an absent key's watch is an exists-watch.
        let watchers = stream::iter(0..keys)
            .map(|i| async move {
                let p = String::from_utf8(cx.server_key(&key(i)?)?)?;
                match c.get_and_watch_data(&p).await {
                    Ok((_, _, w)) => Res::Ok(w),
                    Err(zookeeper_client::Error::NoNode) => Ok(c.check_and_watch_stat(&p).await?.1),
                    Err(e) => Err(e.into()),
                }
            })
            .buffered(AT_ONCE)
            .try_collect::<Vec<_>>()
            .await?;
        let d = t.elapsed();
        drop(watchers);
        return Ok(d);
    }
    let mut arming = stream::iter(0..keys)
        .map(|i| async move {
            let (tx, _) = mpsc::unbounded_channel();
            let (vtx, _) = mpsc::unbounded_channel();
            raw.watch(cx.server_key(&key(i)?)?, tx, vtx).await
        })
        .buffered(AT_ONCE);
    // Every watch armed so far is aborted, after a failure too: a dropped JoinHandle would
    // leave its blocking query running against the agent's connection limit.
    let mut armed = Vec::with_capacity(keys);
    let mut failed = None;
    while let Some(r) = arming.next().await {
        match r {
            Ok(h) => armed.push(h),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(arming);
    let d = t.elapsed();
    for h in &armed {
        h.abort();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

/// Runs [`child`] in a child process of this binary for `cx`'s backend (a namespace of its
/// own) and returns its rows.
pub async fn rows(cx: &Cx) -> Vec<Row> {
    // `scheme://endpoint/namespace` (mem: `mem://store/namespace`, no endpoint).
    let endpoint = match cx.name {
        "mem" => "",
        _ => cx
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or(""),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return vec![Row::failed(7, "one process", &e.into())],
    };
    let url = format!("{}-many", cx.url);
    let quick = if cx.sizes.mem_n < Sizes::full().mem_n {
        "quick"
    } else {
        "full"
    };
    let out = tokio::process::Command::new(exe)
        .args(["--child-scale", cx.name, &url, endpoint, quick])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(900), out).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return vec![Row::failed(7, "one process", &e.into())],
        Err(_) => {
            return vec![Row::failed(
                7,
                "one process",
                &"no answer within 900 s".into(),
            )]
        }
    };
    let rows: Vec<Row> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_row)
        .collect();
    if rows.is_empty() || !out.status.success() {
        let mut rows = rows;
        rows.push(Row::failed(
            7,
            "one process",
            &format!(
                "child exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into(),
        ));
        return rows;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_the_pipe() {
        let r = Row::new(7, "m", "c", "r", "1.00", "≤ 2 KiB", Verdict::Met);
        let line = format!(
            "ROW\t{}\t{}\t{}\t{}\t{}\tmet",
            r.measure, r.coord, r.reference, r.ratio, r.target
        );
        let back = parse_row(&line).expect("row");
        assert_eq!(back.coord, "c");
        assert_eq!(back.verdict, Verdict::Met);
        assert!(parse_row("MEM 1 2 3").is_none());
    }
}
