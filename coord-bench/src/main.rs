//! coord-bench: measures coord on every backend against the limits that matter (issue 8).
//!
//! ```text
//! cargo run --release -p coord-bench -- [--quick] [--backends mem,zk,etcd,consul]
//! ```
//!
//! Starts its own servers through coord-testkit (or uses `COORD_ZK_ENDPOINTS`,
//! `COORD_ETCD_ENDPOINTS`, `COORD_CONSUL_ENDPOINTS`), runs every measurement on one backend
//! after the other, and prints a markdown table per backend. The method is in
//! `docs/BENCHMARKS.md`. These are measurements, not tests: nothing here fails on a figure.
#![warn(missing_docs)]

mod consul_agent;
mod counter;
mod cx;
mod dialects;
mod dialects_kv;
mod guarded;
mod handover;
mod idle;
mod kernel;
mod many;
mod partition;
mod raw;
mod recipes;
mod rwsem;
mod scale;
mod stats;

use std::process::ExitCode;
use std::time::Instant;

use coord_testkit::{Kind, Server};

use crate::cx::{Cx, Sizes};
use crate::kernel::Floor;
use crate::raw::Raw;
use crate::stats::{Res, Row};

const USAGE: &str = "usage: coord-bench [--quick] [--backends mem,zk,etcd,consul] [--only 1,2,...]

Measures coord on each backend (kernel overhead against the raw client, watch latency,
election handover clean and crash, herd, registry, scale and memory, guarded write against a
plain set, read-write lock and semaphore handovers, counter adds under contention, partitioner
moved fraction, tree cache lookups) and prints a markdown table per backend. Servers are started
through coord-testkit unless COORD_ZK_ENDPOINTS, COORD_ETCD_ENDPOINTS or COORD_CONSUL_ENDPOINTS
name running ones.
  --quick       smaller sizes (herd 10/100, 2,000 grandchildren, ...): under two minutes
  --backends    comma-separated subset (default: all four)
  --only        comma-separated item numbers 1-14 to measure (default: all; 10, the
                ZooKeeper dialects next to Curator and kazoo processes, runs on zk only;
                14, the dialects next to etcdctl lock and consul lock, on etcd and consul)
ZooKeeper is started with tickTime=50 ms (its session-expiry granularity; COORD_ZK_TICK_MS
overrides).";

/// The item numbers `--only` accepts (see docs/BENCHMARKS.md for what each measures).
const ITEMS: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

struct Options {
    quick: bool,
    backends: Vec<String>,
    /// Items to measure (empty: all).
    only: Vec<u8>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        backends: ["mem", "zk", "etcd", "consul"].map(String::from).to_vec(),
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--backends" => {
                let v = it.next().ok_or("--backends needs a value")?;
                o.backends = v.split(',').map(|s| s.trim().to_owned()).collect();
            }
            s if s.starts_with("--backends=") => {
                o.backends = s["--backends=".len()..]
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
            }
            "--only" => {
                let v = it.next().ok_or("--only needs a value")?;
                o.only = v
                    .split(',')
                    .map(|s| match s.trim().parse::<u8>() {
                        Ok(n) if ITEMS.contains(&n) => Ok(n),
                        _ => Err(format!("--only takes item numbers {ITEMS:?}, not {s:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for b in &o.backends {
        if !["mem", "zk", "etcd", "consul"].contains(&b.as_str()) {
            return Err(format!("unknown backend {b}"));
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before any thread exists: ZooKeeper expires sessions on tick boundaries, and the kit's
    // default tick (500 ms) would dominate the crash handover (item 4).
    if std::env::var_os("COORD_ZK_TICK_MS").is_none() {
        std::env::set_var("COORD_ZK_TICK_MS", "50");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coord-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.first().map(String::as_str) == Some("--child-mem") {
        let (phase, n, url) = match (
            args.get(1),
            args.get(2).and_then(|n| n.parse().ok()),
            args.get(3),
        ) {
            (Some(p), Some(n), Some(u)) => (p.clone(), n, u.clone()),
            _ => {
                eprintln!("usage: coord-bench --child-mem PHASE N URL");
                return ExitCode::from(2);
            }
        };
        return child_exit(rt.block_on(scale::child_phase(&phase, n, &url)));
    }
    if args.first().map(String::as_str) == Some("--child-scale") {
        let [_, name, url, endpoint, size] = &args[..] else {
            eprintln!("usage: coord-bench --child-scale NAME URL ENDPOINT quick|full");
            return ExitCode::from(2);
        };
        return child_exit(rt.block_on(many::child(name, url, endpoint, size == "quick")));
    }
    if args.first().map(String::as_str) == Some("--child-candidate") {
        let [_, url, leader] = &args[..] else {
            eprintln!("usage: coord-bench --child-candidate URL own-leader|''");
            return ExitCode::from(2);
        };
        return child_exit(rt.block_on(idle::child(url, leader == "own-leader")));
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("coord-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(opts))
}

/// The exit code of a child process's phase; its error on stderr.
fn child_exit(r: Res<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "zk" => Some(Kind::ZooKeeper),
        "etcd" => Some(Kind::Etcd),
        "consul" => Some(Kind::Consul),
        _ => None,
    }
}

/// The endpoint of a running server from the environment, or a server started now.
async fn endpoint(kind: Kind) -> Res<(String, Keep)> {
    if let Ok(v) = std::env::var(kind.endpoints_env()) {
        if let Some(first) = v.split(',').map(str::trim).find(|s| !s.is_empty()) {
            return Ok((first.trim_start_matches("http://").to_owned(), Keep::None));
        }
    }
    if kind == Kind::Consul {
        let agent = consul_agent::start().await?;
        return Ok((agent.endpoint.clone(), Keep::Agent(agent)));
    }
    let server = tokio::task::spawn_blocking(move || Server::start(kind)).await??;
    Ok((server.endpoint(), Keep::Server(server)))
}

/// What keeps a backend's server running until the backend is done.
#[allow(dead_code)] // the fields are held, not read: dropping them stops the server
enum Keep {
    None,
    Server(Server),
    Agent(consul_agent::Agent),
}

/// The backend name as a `&'static str` (the `Cx` field).
pub(crate) fn static_name(name: &str) -> &'static str {
    match name {
        "zk" => "zk",
        "etcd" => "etcd",
        "consul" => "consul",
        _ => "mem",
    }
}

async fn setup(name: &str, sizes: Sizes, uniq: &str) -> Res<(Cx, Keep)> {
    let ns = format!("bench-{uniq}");
    let (endpoint, server) = match kind_of(name) {
        Some(k) => endpoint(k).await?,
        None => (String::new(), Keep::None),
    };
    let url = match name {
        "mem" => format!("mem://bench-{uniq}/{ns}"),
        other => format!("{other}://{endpoint}/{ns}"),
    };
    let backend = coord::connect_backend(&url).await?;
    let raw = match name {
        "mem" => None,
        other => Some(Raw::connect(other, &endpoint).await?),
    };
    Ok((
        Cx {
            name: static_name(name),
            url,
            backend,
            raw,
            uniq: uniq.to_owned(),
            sizes,
        },
        server,
    ))
}

fn progress(name: &str, what: &str, start: Instant) {
    eprintln!("[{:>6.1}s] {name}: {what}", start.elapsed().as_secs_f64());
}

async fn bench_backend(name: &str, sizes: Sizes, only: &[u8], start: Instant) -> Res<Vec<Row>> {
    let uniq = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    progress(name, "starting", start);
    let (cx, server) = setup(name, sizes, &uniq).await?;
    progress(name, &format!("connected to {}", cx.url), start);
    let mut rows = Vec::new();
    let mut floor = Floor::default();
    let wanted = |item: u8| only.is_empty() || only.contains(&item);
    macro_rules! section {
        ($item:expr, $what:expr, $e:expr) => {{
            if wanted($item) {
                progress(name, $what, start);
                match $e.await {
                    Ok(r) => rows.extend(r),
                    Err(e) => rows.push(Row::failed($item, $what, &e)),
                }
            }
        }};
    }
    section!(1, "kernel overhead", kernel::overhead(&cx, &mut floor));
    section!(2, "watch latency", kernel::watch_latency(&cx, &mut floor));
    section!(
        3,
        "election handover, clean",
        recipes::clean_handover(&cx, &floor)
    );
    section!(4, "election handover, crash", recipes::crash_handover(&cx));
    if wanted(5) {
        progress(name, "herd", start);
        rows.extend(recipes::herd(&cx).await);
    }
    section!(6, "registry", recipes::registry(&cx));
    section!(7, "children above grandchildren", scale::grandchildren(&cx));
    if wanted(7) {
        progress(name, "memory", start);
        rows.extend(scale::memory(&cx).await);
        progress(name, "one process: watches, sessions, connections", start);
        rows.extend(many::rows(&cx).await);
        let secs = if cx.sizes.mem_n < cx::Sizes::full().mem_n {
            3
        } else {
            10
        };
        section!(7, "idle waiting candidate", idle::idle_candidate(&cx, secs));
    }
    section!(8, "guarded write", guarded::guarded_set(&cx));
    if wanted(9) {
        progress(name, "read-write lock and semaphore", start);
        rows.extend(rwsem::rwlock_and_semaphore(&cx).await);
    }
    if wanted(10) && cx.name == "zk" {
        progress(name, "dialects (Curator, kazoo)", start);
        rows.extend(dialects::dialects(&cx).await);
    }
    section!(11, "counter adds", counter::adds_per_second(&cx));
    section!(
        12,
        "partitioner moved fraction",
        partition::moved_fraction(&cx)
    );
    section!(13, "tree cache lookups", partition::tree_cache_lookups(&cx));
    if wanted(14) && (cx.name == "etcd" || cx.name == "consul") {
        progress(name, "dialects (etcdctl lock, consul lock)", start);
        rows.extend(dialects_kv::dialects(&cx).await);
    }
    if let Some(raw) = &cx.raw {
        // Best-effort cleanup on servers that outlive the run (etcd, Consul prefixes).
        let ns = format!("bench-{uniq}");
        let _ = raw.delete_prefix(format!("{ns}/").as_bytes()).await;
        let _ = raw.delete_prefix(format!("/{ns}\0").as_bytes()).await;
        let _ = raw
            .delete_prefix(format!("bench-raw-{uniq}").as_bytes())
            .await;
    }
    drop(cx);
    if let Keep::Server(_) | Keep::Agent(_) = &server {
        drop(server);
    }
    progress(name, "done", start);
    Ok(rows)
}

fn title(name: &str) -> &'static str {
    match name {
        "mem" => "mem — in-process backend (no server, no raw client)",
        "zk" => "zk — ZooKeeper 3.8 (raw client: zookeeper-client 0.11)",
        "etcd" => "etcd — etcd 3.4 (raw client: etcd-client 0.21)",
        _ => "consul — Consul 1.8.7 -dev agent (raw client: HTTP API over reqwest 0.12)",
    }
}

async fn run(opts: Options) -> ExitCode {
    let start = Instant::now();
    let sizes = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let mode = if opts.quick { "--quick" } else { "full" };
    println!("# coord-bench ({mode})\n");
    println!(
        "Release build: {}. Times are median / p99 over n samples (p99 is the maximum when n < 100).\n",
        !cfg!(debug_assertions)
    );
    let mut failed = false;
    for name in &opts.backends {
        let sizes = sizes.clone();
        let rows = match bench_backend(name, sizes, &opts.only, start).await {
            Ok(rows) => rows,
            Err(e) => {
                failed = true;
                vec![Row::failed(0, "setup", &e)]
            }
        };
        println!("## {}\n", title(name));
        println!("{}", stats::table(&rows));
    }
    println!(
        "Total run time: {:.0} s ({mode}).",
        start.elapsed().as_secs_f64()
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&a(&["--quick", "--backends", "mem,zk"])).unwrap();
        assert!(o.quick);
        assert_eq!(o.backends, vec!["mem", "zk"]);
        assert!(parse(&a(&["--backends", "foo"])).is_err());
        assert!(parse(&a(&["--nope"])).is_err());
        assert_eq!(parse(&a(&["--only", "1,4"])).unwrap().only, vec![1, 4]);
        assert_eq!(parse(&a(&["--only", "8"])).unwrap().only, vec![8]);
        assert_eq!(parse(&a(&["--only", "9"])).unwrap().only, vec![9]);
        assert_eq!(parse(&a(&["--only", "10"])).unwrap().only, vec![10]);
        assert_eq!(parse(&a(&["--only", "11"])).unwrap().only, vec![11]);
        assert_eq!(
            parse(&a(&["--only", "12,13,14"])).unwrap().only,
            vec![12, 13, 14]
        );
        assert!(parse(&a(&["--only", "15"])).is_err());
        assert_eq!(parse(&a(&[])).unwrap().backends.len(), 4);
    }
}
