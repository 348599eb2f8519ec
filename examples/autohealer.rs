//! The autohealer: keeps N workers alive, starting a new one whenever one dies.
//!
//! ```text
//! cargo run --example autohealer                          # in memory, workers are tasks
//! cargo run --example autohealer -- --workers 4 --kill-every 1.5 --rounds 5
//! cargo run --features zk --example autohealer -- --url zk://127.0.0.1:2181/demo
//! ```
//!
//! Each worker registers an ephemeral node under `/autohealer/workers` (group membership) and
//! does dummy work. The autohealer watches that folder's children: when a worker's node goes
//! away (its process died, so its session ended), it starts a replacement. Every
//! `--kill-every` seconds the demo kills a random worker; after `--rounds` kills it stops
//! everything and prints a summary, and exits 0 if every kill was healed.
//!
//! With a real backend the workers are real processes (this same program, re-run with
//! `--worker`), killed with SIGKILL (kill -9): a replacement runs within a session timeout.
//! On `mem://`, whose store lives inside one process, the workers are tasks of this process and
//! a "kill" crashes a worker's session (it stops heartbeating and expires after its TTL).
//! Every worker process is stopped when the autohealer exits, Ctrl-C included (and a worker
//! also exits by itself when its autohealer dies: its standard input closes).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coord::mem::MemSession;
use coord::{ChildrenEvent, Client, CreateMode, Path};
use futures::StreamExt;
use tokio::sync::oneshot;

const DEFAULT_URL: &str = "mem://autohealer/demo?session_ttl=1s";
const WORKERS: &str = "/autohealer/workers";

struct Args {
    url: String,
    workers: usize,
    kill_every: Duration,
    rounds: usize,
    worker: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: autohealer [--url URL] [--workers N] [--kill-every SECS] [--rounds R]\n\
         default URL: {DEFAULT_URL} (workers are tasks of this process; real worker \
         processes need a real backend such as zk://127.0.0.1:2181/demo)"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: DEFAULT_URL.into(),
        workers: 3,
        kill_every: Duration::from_secs(2),
        rounds: 3,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = val(),
            "--workers" => a.workers = val().parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = val().parse().unwrap_or_else(|_| usage()),
            "--kill-every" => {
                let s: f64 = val().parse().unwrap_or_else(|_| usage());
                a.kill_every = Duration::try_from_secs_f64(s).unwrap_or_else(|_| usage());
            }
            "--worker" => a.worker = Some(val()),
            _ => usage(),
        }
    }
    if a.workers == 0 || a.kill_every.is_zero() {
        usage()
    }
    a
}

/// A random index below `n` (no extra dependency for it).
fn random_below(n: usize) -> usize {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % n.max(1) as u64) as usize
}

/// A worker as the autohealer holds it.
enum Worker {
    /// A child process; its stdin is a pipe whose closing tells it the autohealer is gone.
    Process(tokio::process::Child),
    /// A task of this process (on mem://); sending on `crash` makes it crash its session.
    Task {
        crash: Option<oneshot::Sender<()>>,
        handle: tokio::task::JoinHandle<()>,
    },
}

impl Worker {
    fn kill(&mut self) {
        match self {
            Worker::Process(c) => {
                let _ = c.start_kill(); // SIGKILL, like kill -9
            }
            Worker::Task { crash, .. } => {
                if let Some(tx) = crash.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    async fn stop(&mut self) {
        match self {
            Worker::Process(c) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            Worker::Task { handle, .. } => handle.abort(),
        }
    }
}

struct Kill {
    victim: String,
    at: Instant,
    gone: Option<Instant>,
    replacement: Option<String>,
    healed: Option<Instant>,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if let Some(id) = args.worker.clone() {
        std::process::exit(worker_process(&args.url, &id).await);
    }
    let started = Instant::now();
    let t = move || format!("[{:>6.2}s]", started.elapsed().as_secs_f64());
    let client = match coord::connect(&args.url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot connect to {}: {e}", args.url);
            std::process::exit(1);
        }
    };
    let in_process = client.capabilities().backend == "mem";
    let ttl = client.capabilities().default_session_ttl;
    println!(
        "{} autohealer: keeping {} workers alive on {} (a random worker is killed every {:?}, {} kills)",
        t(),
        args.workers,
        args.url,
        args.kill_every,
        args.rounds
    );
    if in_process {
        println!(
            "{} mem:// lives inside this process: the workers are tasks here, and a kill crashes \
             a worker's session (it expires after {ttl:?}). Real worker processes need a real \
             backend, e.g. --url zk://127.0.0.1:2181/demo",
            t()
        );
    } else {
        println!(
            "{} workers are child processes ({} --worker ID --url …); a kill is SIGKILL",
            t(),
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let code = match autoheal(&args, &client, in_process, ttl, &t).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    let _ = client.close().await;
    std::process::exit(code);
}

async fn autoheal(
    args: &Args,
    client: &Client,
    in_process: bool,
    ttl: Duration,
    t: &impl Fn() -> String,
) -> coord::Result<i32> {
    let parent = Path::new(WORKERS)?;
    coord::create_parents(&**client.backend(), &parent).await?;
    // Watch the workers' folder: registered atomically with the listing, so no death is missed.
    let (now, mut events) = client.watch_children(&parent).await?;
    if !now.is_empty() {
        println!(
            "{} (nodes of an earlier run still there, ignored: {now:?})",
            t()
        );
    }
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let mut alive: BTreeSet<String> = BTreeSet::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut restarts = 0usize;
    let mut next_id = 0u64;
    let mut failed_starts = 0;
    let mut start = |workers: &mut BTreeMap<String, Worker>, why: &str| -> coord::Result<String> {
        next_id += 1;
        let id = format!("worker-{next_id}");
        let w = if in_process {
            let (tx, rx) = oneshot::channel();
            let url = args.url.clone();
            let wid = id.clone();
            let handle = tokio::spawn(async move {
                if let Err(e) = worker_task(&url, &wid, rx).await {
                    println!("  {wid}: stopped: {e}");
                }
            });
            Worker::Task {
                crash: Some(tx),
                handle,
            }
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| coord::Error::InvalidArgument(format!("own executable: {e}")))?;
            let child = tokio::process::Command::new(exe)
                .args(["--worker", &id, "--url", &args.url])
                .stdin(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    coord::Error::InvalidArgument(format!("cannot start a worker: {e}"))
                })?;
            Worker::Process(child)
        };
        println!("{} starting {id} ({why})", t());
        workers.insert(id.clone(), w);
        Ok(id)
    };
    for _ in 0..args.workers {
        start(&mut workers, "initial")?;
    }
    let mut chaos = tokio::time::interval(args.kill_every);
    chaos.tick().await; // the first tick is immediate: skip it
    let mut chaos_on = false;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let deadline_after_last_kill = ttl * 3 + Duration::from_secs(10);
    let mut last_kill_at: Option<Instant> = None;
    let outcome = loop {
        if kills.len() >= args.rounds && kills.iter().all(|k| k.healed.is_some()) {
            break 0;
        }
        if let Some(at) = last_kill_at {
            if kills.len() >= args.rounds && at.elapsed() > deadline_after_last_kill {
                println!("{} giving up: not every kill was healed in time", t());
                break 1;
            }
        }
        tokio::select! {
            ev = events.next() => {
                let list = match ev {
                    Some(Ok(ChildrenEvent::Changed(l))) | Some(Ok(ChildrenEvent::Resync(l))) => l,
                    Some(Ok(ChildrenEvent::ParentDeleted)) => Vec::new(),
                    Some(Err(e)) => return Err(e),
                    None => break 1,
                };
                let now: BTreeSet<String> = list.into_iter().filter(|n| workers.contains_key(n)).collect();
                for gone in alive.difference(&now).cloned().collect::<Vec<_>>() {
                    alive.remove(&gone);
                    if let Some(mut w) = workers.remove(&gone) {
                        w.stop().await;
                    }
                    println!("{} {gone}'s node is gone: the worker died ({} of {} alive)", t(), alive.len(), args.workers);
                    let id = start(&mut workers, &format!("replacing {gone}"))?;
                    restarts += 1;
                    if let Some(k) = kills.iter_mut().find(|k| k.victim == gone && k.gone.is_none()) {
                        k.gone = Some(Instant::now());
                        k.replacement = Some(id);
                    }
                }
                for new in now.difference(&alive).cloned().collect::<Vec<_>>() {
                    alive.insert(new.clone());
                    failed_starts = 0;
                    let healed = kills.iter_mut().find(|k| k.replacement.as_deref() == Some(&new));
                    let note = match healed {
                        Some(k) => {
                            k.healed = Some(Instant::now());
                            format!(": {} healed {:.2}s after the kill", k.victim, k.at.elapsed().as_secs_f64())
                        }
                        None => String::new(),
                    };
                    println!("{} {new} registered ({} of {} alive){note}", t(), alive.len(), args.workers);
                }
                if !chaos_on && alive.len() >= args.workers {
                    chaos_on = true;
                    chaos.reset();
                }
            }
            _ = chaos.tick(), if chaos_on && kills.len() < args.rounds => {
                let candidates: Vec<String> = alive
                    .iter()
                    .filter(|id| !kills.iter().any(|k| &k.victim == *id))
                    .cloned()
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let victim = candidates[random_below(candidates.len())].clone();
                if let Some(w) = workers.get_mut(&victim) {
                    match w {
                        Worker::Process(c) => println!("{} chaos: kill -9 {victim} (pid {})", t(), c.id().unwrap_or(0)),
                        Worker::Task { .. } => println!("{} chaos: {victim} crashes (stops heartbeating; its session expires in {ttl:?})", t()),
                    }
                    w.kill();
                    kills.push(Kill { victim, at: Instant::now(), gone: None, replacement: None, healed: None });
                    last_kill_at = Some(Instant::now());
                }
            }
            _ = check.tick() => {
                // A worker process that exited before registering is started again.
                let mut dead = Vec::new();
                for (id, w) in workers.iter_mut() {
                    if let Worker::Process(c) = w {
                        if !alive.contains(id) && matches!(c.try_wait(), Ok(Some(_))) {
                            dead.push(id.clone());
                        }
                    }
                }
                for id in dead {
                    workers.remove(&id);
                    failed_starts += 1;
                    if failed_starts > 5 {
                        println!("{} workers keep failing to start; stopping", t());
                        return stop_all(workers, 1).await;
                    }
                    println!("{} {id} exited before registering", t());
                    start(&mut workers, &format!("replacing {id}"))?;
                    restarts += 1;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                println!("{} Ctrl-C: stopping every worker", t());
                return stop_all(workers, 130).await;
            }
        }
    };
    println!("{} stopping every worker", t());
    let code = stop_all(workers, outcome).await?;
    println!();
    println!("== summary ==");
    println!("workers kept alive:      {}", args.workers);
    println!("kills:                   {}", kills.len());
    println!("restarts:                {restarts}");
    for (i, k) in kills.iter().enumerate() {
        let secs = |x: Option<Instant>| {
            x.map(|x| format!("{:.2}s", x.duration_since(k.at).as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        };
        println!(
            "  kill {}: {} — node gone after {}, replaced by {} registered after {}",
            i + 1,
            k.victim,
            secs(k.gone),
            k.replacement.as_deref().unwrap_or("nobody"),
            secs(k.healed)
        );
    }
    let healed = kills.iter().all(|k| k.healed.is_some()) && kills.len() >= args.rounds;
    println!(
        "every kill was healed:   {}",
        if healed { "yes" } else { "NO" }
    );
    Ok(if healed { code } else { 1 })
}

async fn stop_all(workers: BTreeMap<String, Worker>, code: i32) -> coord::Result<i32> {
    for (_, mut w) in workers {
        w.stop().await;
    }
    Ok(code)
}

/// A worker inside this process (mem://): registers, works, and crashes when told to.
async fn worker_task(url: &str, id: &str, crash: oneshot::Receiver<()>) -> coord::Result<()> {
    let client = coord::connect(url).await?;
    let session = client.session().await?;
    let node = Path::new(WORKERS)?.join(id)?;
    session.create(&node, b"task", CreateMode::Exact).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    let mut crash = crash;
    let mut units = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                units += 1;
                if units % 3 == 0 {
                    println!("  {id}: did {units} units of work");
                }
            }
            _ = &mut crash => {
                match session.as_any().downcast_ref::<MemSession>() {
                    Some(ms) => ms.crash(),
                    None => session.close().await?,
                }
                // A crashed worker does nothing more; its node goes when the session expires.
                futures::future::pending::<()>().await;
            }
        }
    }
}

/// A worker process (`--worker ID`): registers, works, exits when its session ends or when
/// the autohealer goes away (its standard input closes).
async fn worker_process(url: &str, id: &str) -> i32 {
    let pid = std::process::id();
    let run = async {
        let client = coord::connect(url).await?;
        let session = client.session().await?;
        let parent = Path::new(WORKERS)?;
        coord::create_parents(&**client.backend(), &parent).await?;
        session
            .create(
                &parent.join(id)?,
                pid.to_string().as_bytes(),
                CreateMode::Exact,
            )
            .await?;
        println!("  {id} (pid {pid}): registered, working");
        let mut states = session.states();
        // The autohealer holds the other end of our stdin: EOF means it is gone.
        let (eof_tx, mut eof) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(std::io::Read::read(&mut stdin, &mut buf), Ok(n) if n > 0) {}
            let _ = eof_tx.send(());
        });
        let mut tick = tokio::time::interval(Duration::from_millis(700));
        let mut units = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    units += 1;
                    if units % 3 == 0 {
                        println!("  {id} (pid {pid}): did {units} units of work");
                    }
                }
                _ = &mut eof => {
                    // The autohealer is gone: stop too.
                    let _ = client.close().await;
                    return Ok::<i32, coord::Error>(0);
                }
                s = states.next() => match s {
                    Some(s) if !s.is_final() => {}
                    _ => {
                        println!("  {id} (pid {pid}): session ended; exiting");
                        return Ok(1);
                    }
                },
                _ = tokio::signal::ctrl_c() => {
                    let _ = client.close().await;
                    return Ok(0);
                }
            }
        }
    };
    match run.await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("  {id} (pid {pid}): error: {e}");
            1
        }
    }
}
