//! Leader election and re-election, the "watch your predecessor" way.
//!
//! ```text
//! cargo run --example election                       # 5 nodes in one process, in memory
//! cargo run --example election -- --nodes 3 --rounds 4
//! cargo run --features zk --example election -- --url zk://127.0.0.1:2181/demo --single
//! ```
//!
//! Every node campaigns; the leader does visible work stamped with its fencing token. Every
//! `--interval` the leader either crashes (stops keeping its session alive: the session expires
//! after its TTL and the next candidate takes over) or resigns (immediate handover). The old
//! leader comes back as a follower. After `--rounds` handovers it prints a summary and exits 0
//! if the tokens were strictly increasing and there was never more than one leader.
//!
//! With `--single` the process runs one node until Ctrl-C: start it in three terminals and kill
//! the leader (Ctrl-C or kill -9) to watch the others take over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::election::Leadership;
use coord::mem::MemSession;
use coord::Client;
use tokio::sync::mpsc;

struct Args {
    url: String,
    nodes: usize,
    rounds: usize,
    interval: Duration,
    single: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: election [--url URL] [--nodes N] [--rounds R] [--interval SECS] [--single]\n\
         default URL: mem://election-demo/demo?session_ttl=1s"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "mem://election-demo/demo?session_ttl=1s".into(),
        nodes: 5,
        rounds: 6,
        interval: Duration::from_millis(1500),
        single: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = val(),
            "--nodes" => a.nodes = val().parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = val().parse().unwrap_or_else(|_| usage()),
            "--interval" => {
                a.interval = Duration::from_secs_f64(val().parse().unwrap_or_else(|_| usage()))
            }
            "--single" => a.single = true,
            _ => usage(),
        }
    }
    if a.nodes == 0 {
        usage()
    }
    a
}

/// What the leader is told to do by the demo's chaos loop.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    Crash,
    Resign,
}

#[derive(Default)]
struct Record {
    /// (node, token, elected at, stopped acting at)
    terms: Vec<(String, u64, Instant, Option<Instant>)>,
    /// Every leadership not yet given up, by node: checked with `is_leading()` (the
    /// leadership's own view, which reads the session) at each election.
    live: HashMap<String, Arc<Leadership>>,
    max_leading: usize,
}

impl Record {
    fn ended(&mut self, name: &str, token: u64) {
        if let Some(term) = self
            .terms
            .iter_mut()
            .rev()
            .find(|x| x.0 == name && x.1 == token)
        {
            term.3.get_or_insert_with(Instant::now);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let started = Instant::now();
    let t = move || format!("[{:>6.2}s]", started.elapsed().as_secs_f64());
    if args.single {
        if let Err(e) = single(&args.url, t).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    println!(
        "{} {} nodes campaign for leadership on {} (crash or resign every {:?}, {} rounds)",
        t(),
        args.nodes,
        args.url,
        args.interval,
        args.rounds
    );
    let record = Arc::new(Mutex::new(Record::default()));
    let mut chaos_tx = HashMap::new();
    let mut handles = Vec::new();
    for i in 1..=args.nodes {
        let client = match coord::connect(&args.url).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot connect to {}: {e}", args.url);
                std::process::exit(1);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        chaos_tx.insert(format!("node-{i}"), tx);
        handles.push(tokio::spawn(node(
            format!("node-{i}"),
            client,
            rx,
            record.clone(),
            t,
        )));
        // Let candidates queue in order, so the handovers are easy to follow.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for round in 1..=args.rounds {
        tokio::time::sleep(args.interval).await;
        let what = if round % 2 == 1 {
            Chaos::Crash
        } else {
            Chaos::Resign
        };
        // Tell the node that leads now (by its leadership's own view). Right after a crash
        // there is none until the crashed session expires: wait for one (bounded).
        let mut leader = None;
        for _ in 0..200 {
            leader = {
                let r = record.lock().unwrap_or_else(|p| p.into_inner());
                r.live
                    .iter()
                    .find(|(_, l)| l.is_leading())
                    .map(|(name, _)| name.clone())
            };
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match leader.and_then(|n| chaos_tx.get(&n)) {
            Some(tx) => {
                let _ = tx.send(what);
            }
            None => println!(
                "{} (no leader for 10s; skipping this round's {what:?})",
                t()
            ),
        }
    }
    tokio::time::sleep(args.interval).await;
    for h in &handles {
        h.abort();
    }
    let ok = summary(
        &record.lock().unwrap_or_else(|p| p.into_inner()),
        args.rounds,
    );
    std::process::exit(if ok { 0 } else { 1 });
}

async fn node(
    name: String,
    client: Client,
    mut chaos: mpsc::UnboundedReceiver<Chaos>,
    record: Arc<Mutex<Record>>,
    t: impl Fn() -> String + Send + 'static,
) {
    let election = match client.election("demo") {
        Ok(e) => e,
        Err(e) => return eprintln!("{name}: {e}"),
    };
    loop {
        println!("{} {name} joins the election as a candidate", t());
        let leadership = match election.campaign(name.as_bytes()).await {
            Ok(l) => l,
            Err(e) => {
                println!("{} {name} campaign failed ({e}); retrying", t());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = leadership.fencing_token();
        let leadership = Arc::new(leadership);
        {
            let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
            r.live.insert(name.clone(), leadership.clone());
            let leading = r.live.values().filter(|l| l.is_leading()).count();
            r.max_leading = r.max_leading.max(leading);
            let gap = r
                .terms
                .last()
                .and_then(|(_, _, _, lost)| *lost)
                .map(|lost| {
                    format!(
                        " after {:.2}s without a leader",
                        lost.elapsed().as_secs_f64()
                    )
                })
                .unwrap_or_default();
            println!(
                "{} {name} is elected LEADER with fencing token {token}{gap}",
                t()
            );
            r.terms.push((name.clone(), token, Instant::now(), None));
        }
        lead(&name, &client, leadership, &mut chaos, &record, &t).await;
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ended(&name, token);
    }
}

/// Works as the leader until the leadership is lost or the chaos loop ends it.
async fn lead(
    name: &str,
    client: &Client,
    leadership: Arc<Leadership>,
    chaos: &mut mpsc::UnboundedReceiver<Chaos>,
    record: &Mutex<Record>,
    t: &impl Fn() -> String,
) {
    // Stops counting this leadership and marks when it stopped acting.
    let stop = |token: u64| {
        let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
        r.ended(name, token);
        r.live.remove(name)
    };
    let token = leadership.fencing_token();
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    let mut job = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                job += 1;
                println!("{}   {name} (leader, token {token}) processes job #{job}", t());
            }
            _ = leadership.lost() => {
                stop(token);
                println!("{} {name} LOST its leadership (session {:?}) and stops working", t(),
                    client.current_session().await.map(|s| s.state()));
                return;
            }
            Some(order) = chaos.recv() => match order {
                Chaos::Resign => {
                    println!("{} {name} resigns: the next candidate takes over at once", t());
                    drop(leadership);
                    if let Some(l) = stop(token).and_then(|l| Arc::try_unwrap(l).ok()) {
                        if let Err(e) = l.resign().await {
                            println!("{} {name} resign failed: {e}", t());
                        }
                    }
                    return;
                }
                Chaos::Crash => {
                    let Some(session) = client.current_session().await else { return };
                    match session.as_any().downcast_ref::<MemSession>() {
                        Some(ms) => {
                            println!("{} {name} CRASHES (stops heartbeating; its session expires in {:?})",
                                t(), session.ttl());
                            ms.crash();
                            stop(token);
                            // A crashed process does no work: just wait for the expiry.
                            leadership.lost().await;
                            println!("{} {name}'s session expired; it restarts and will rejoin as a follower", t());
                        }
                        None => {
                            // Real backends: closing the client is the closest in one process;
                            // run with --single and kill -9 a process for a real crash.
                            println!("{} {name} drops its session (close)", t());
                            stop(token);
                            let _ = client.close().await;
                            leadership.lost().await;
                        }
                    }
                    return;
                }
            }
        }
    }
}

fn summary(r: &Record, rounds: usize) -> bool {
    let tokens: Vec<u64> = r.terms.iter().map(|x| x.1).collect();
    let increasing = tokens.windows(2).all(|w| w[0] < w[1]);
    let longest_gap = r
        .terms
        .windows(2)
        .filter_map(|w| w[0].3.map(|lost| w[1].2.saturating_duration_since(lost)))
        .max()
        .unwrap_or_default();
    let handovers = r.terms.len().saturating_sub(1);
    println!();
    println!("== summary ==");
    println!(
        "leaders, in order:       {}",
        r.terms
            .iter()
            .map(|x| format!("{}(token {})", x.0, x.1))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    println!("handovers:               {handovers} (rounds asked: {rounds})");
    println!(
        "longest time without a leader: {:.2}s",
        longest_gap.as_secs_f64()
    );
    println!(
        "tokens strictly increasing: {}",
        if increasing { "yes" } else { "NO" }
    );
    println!("most leaders at once:    {}", r.max_leading);
    increasing && r.max_leading <= 1 && handovers >= rounds
}

async fn single(url: &str, t: impl Fn() -> String) -> coord::Result<()> {
    let client = coord::connect(url).await?;
    let name = format!("pid-{}", std::process::id());
    let election = client.election("demo")?;
    loop {
        if let Some(l) = election.leader().await? {
            println!(
                "{} {name}: current leader is {} (token {})",
                t(),
                String::from_utf8_lossy(&l.value),
                l.token
            );
        }
        println!("{} {name}: campaigning (watching only my predecessor)", t());
        let leadership = tokio::select! {
            l = election.campaign(name.as_bytes()) => l?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        println!(
            "{} {name}: I am the LEADER, fencing token {}",
            t(),
            leadership.fencing_token()
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => println!("{}   {name} working (token {})", t(), leadership.fencing_token()),
                _ = leadership.lost() => { println!("{} {name}: leadership LOST", t()); break; }
                _ = tokio::signal::ctrl_c() => {
                    // The orderly end: resign (the next candidate is elected now), then close.
                    println!("{} {name}: Ctrl-C, resigning and shutting down", t());
                    client.shutdown().await?;
                    println!("{} {name}: resigned: {}", t(), !leadership.is_leading());
                    return Ok(());
                }
            }
        }
    }
}
