//! Leader and workers: an elected leader splits a job among the workers it discovers in the
//! service registry, over HTTP, and survives the death of a worker and of itself.
//!
//! ```text
//! cargo run --example leader_workers                      # 5 nodes in one process, in memory
//! cargo run --example leader_workers -- ./some/folder     # count the words of your own texts
//! cargo run --example leader_workers -- --nodes 4 --no-chaos
//! cargo run --features zk --example leader_workers -- --url zk://127.0.0.1:2181/demo
//! ```
//!
//! Every node starts as a worker: it serves a tiny HTTP/1.1 endpoint on 127.0.0.1 (`POST
//! /count` with a text; the answer is one `word count` line per word) and registers it in the
//! service registry (`/services/wordcount/<node>`, ephemeral). Every node also campaigns for
//! leadership. The leader leaves the registry (it no longer works as a worker), lists the
//! job's parts (one per text file), and splits them over the registered workers with a
//! partitioner (`coord::partitioner`: a consistent-hash ring over the registry group's
//! members, part i being partition i). Each worker gets the parts the partitioner assigns it;
//! each result is stored in coord under the job (`/jobs/<job>/results/<part>`), so that a new
//! leader carries on where the old one stopped. When a worker dies, its registration goes
//! with its session, the partitioner's assignment changes, and its unfinished parts move to
//! the others (a reassignment; only the dead worker's parts move). A part in flight when it
//! moves may be sent twice: storing a result is idempotent (the second create finds it).
//!
//! The demo's chaos (off with `--no-chaos`): the last node dies while it serves its second
//! part, and the first leader crashes once half of the parts are done; the next candidate takes
//! over. At the end the leader merges the results and prints a summary; the program exits 0
//! when the merged counts equal a count made in a single process.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::election::Leadership;
use coord::mem::MemSession;
use coord::partitioner::{Assignment, Partitioner};
use coord::registry::Instance;
use coord::{Client, CreateMode, Error, Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

const SERVICE: &str = "wordcount";
const DEFAULT_URL: &str = "mem://leader-workers/demo?session_ttl=1s";

struct Args {
    url: String,
    nodes: usize,
    folder: Option<PathBuf>,
    chaos: bool,
    work_ms: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: leader_workers [--url URL] [--nodes N] [--no-chaos] [--work-ms MS] [FOLDER]\n\
         FOLDER: a folder of text files (default: a built-in set written to a temp folder)\n\
         default URL: {DEFAULT_URL}"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: DEFAULT_URL.into(),
        nodes: 5,
        folder: None,
        chaos: true,
        work_ms: 150,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--url" => a.url = val(),
            "--nodes" => a.nodes = val().parse().unwrap_or_else(|_| usage()),
            "--work-ms" => a.work_ms = val().parse().unwrap_or_else(|_| usage()),
            "--no-chaos" => a.chaos = false,
            s if s.starts_with("--") => usage(),
            s => a.folder = Some(PathBuf::from(s)),
        }
    }
    // The chaos kills two nodes: keep a leader and a worker after that.
    if a.nodes < 2 || (a.chaos && a.nodes < 4) {
        eprintln!("need at least 2 nodes (4 with the chaos on)");
        usage()
    }
    a
}

// ---- the job: word counts --------------------------------------------------------------------

type Counts = BTreeMap<String, u64>;

fn count_words(text: &str) -> Counts {
    let mut c = Counts::new();
    for w in text
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *c.entry(w.to_lowercase()).or_default() += 1;
    }
    c
}

fn encode(counts: &Counts) -> String {
    counts.iter().map(|(w, n)| format!("{w} {n}\n")).collect()
}

fn decode(text: &str) -> Option<Counts> {
    let mut c = Counts::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (w, n) = line.rsplit_once(' ')?;
        c.insert(w.to_owned(), n.parse().ok()?);
    }
    Some(c)
}

fn merge(into: &mut Counts, from: &Counts) {
    for (w, n) in from {
        *into.entry(w.clone()).or_default() += n;
    }
}

const TEXTS: &[(&str, &str)] = &[
    ("01-overview.txt", "A distributed system is a system of several processes running on different computers, communicating with each other through the network, sharing a state or working together to achieve a common goal."),
    ("02-centralized.txt", "The problems of a centralized system: limited vertical scaling, a single point of failure, high latency and a poor user experience, security and privacy."),
    ("03-node.txt", "A node is a process running on a dedicated machine. A cluster is a collection of nodes connected to each other; the nodes of a cluster work on the same task and typically run the same code."),
    ("04-leader.txt", "The leader distributes the work among the worker nodes and collects the results. If the leader goes down, the remaining nodes elect a new leader automatically."),
    ("05-election.txt", "Each node submits its candidacy by adding an ephemeral sequential node under the election parent. The node with the smallest sequence number is the leader; every other node watches only its predecessor."),
    ("06-herd.txt", "The herd effect: a large number of nodes wait for an event; when it happens all of them wake up although only one can succeed. Watching only the predecessor avoids it."),
    ("07-registry.txt", "Workers register themselves in the service registry with their address. The leader discovers the workers, and a new leader removes itself from the registry."),
    ("08-failure.txt", "In a large distributed system failure is not a question of if but a question of when. Failure detection triggers a new election and the work goes on."),
    ("09-znodes.txt", "Persistent nodes stay between sessions; ephemeral nodes are deleted when the session ends, so an ephemeral node tells us that a process is alive."),
    ("10-watch.txt", "A watcher gives a notification when a change happens: when the children of a node change, when the data of a node changes, when a node is created or deleted."),
    ("11-scale.txt", "Horizontal scalability means that we can add nodes to the cluster on demand, and fault tolerance means that the cluster keeps working when some nodes fail."),
    ("12-autohealer.txt", "The autohealer keeps a fixed number of workers alive: when a worker dies its ephemeral node disappears and the autohealer starts a new worker in its place."),
];

/// The job's parts: (part name, file text), one per text file, sorted by file name.
fn load_parts(folder: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut parts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue; // not text: skip
        };
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A valid path segment: keep letters, digits, '-', '_' and '.'.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        parts.push((format!("p{i:03}-{safe}"), text));
    }
    Ok(parts)
}

// ---- tiny HTTP/1.1 ---------------------------------------------------------------------------

/// Reads one request (head and Content-Length body). `None` on a malformed request.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    Some((request_line, body))
}

async fn respond(s: &mut TcpStream, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// POSTs `body` to `http://addr/count` and returns the answer's body (status 200 only).
async fn post_count(addr: &str, body: &str) -> Result<String, String> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "POST /count HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("connection closed before an answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "answer {:?}",
                head.lines().next().unwrap_or_default()
            ));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

// ---- shared demo bookkeeping (all nodes run in this process) --------------------------------

#[derive(Default)]
struct Record {
    leaders: Vec<(String, u64)>,
    reassignments: Vec<String>,
    crashes: Vec<String>,
    /// The final merge: (counts, part -> worker), set by the leader that finished the job.
    done: Option<(Counts, BTreeMap<String, String>)>,
}

struct Shared {
    record: Mutex<Record>,
    finished: Notify,
    leader_crash_armed: Mutex<bool>,
    started: Instant,
}

impl Shared {
    fn t(&self) -> String {
        format!("[{:>6.2}s]", self.started.elapsed().as_secs_f64())
    }
    fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let shared = Arc::new(Shared {
        record: Mutex::default(),
        finished: Notify::new(),
        leader_crash_armed: Mutex::new(args.chaos),
        started: Instant::now(),
    });
    let (folder, temp) = match &args.folder {
        Some(f) => (f.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("coord-wordcount-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| {
                TEXTS
                    .iter()
                    .try_for_each(|(n, t)| std::fs::write(dir.join(n), t))
            }) {
                eprintln!(
                    "error: cannot write the built-in texts to {}: {e}",
                    dir.display()
                );
                std::process::exit(1);
            }
            (dir.clone(), Some(dir))
        }
    };
    let parts = match load_parts(&folder) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            eprintln!(
                "error: no text file in {} (give a folder of .txt files)",
                folder.display()
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e} (give a folder of text files)",
                folder.display()
            );
            std::process::exit(2);
        }
    };
    let job = format!(
        "wordcount-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    println!(
        "{} {} nodes on {}: count the words of {} files in {} (job {job})",
        shared.t(),
        args.nodes,
        args.url,
        parts.len(),
        folder.display()
    );
    let parts = Arc::new(parts);
    let mut handles = Vec::new();
    for i in 1..=args.nodes {
        let client = match coord::connect(&args.url).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot connect to {}: {e}", args.url);
                std::process::exit(1);
            }
        };
        // The last node dies while serving its second part (when the chaos is on).
        let die_on = (args.chaos && i == args.nodes).then_some(2);
        handles.push(tokio::spawn(node(
            format!("node-{i}"),
            client,
            job.clone(),
            parts.clone(),
            shared.clone(),
            die_on,
            args.work_ms,
        )));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = tokio::time::timeout(Duration::from_secs(60), shared.finished.notified()).await;
    for h in &handles {
        h.abort();
    }
    if let Some(dir) = temp {
        let _ = std::fs::remove_dir_all(dir);
    }
    if finished.is_err() {
        eprintln!("error: the job did not finish within 60 s");
        std::process::exit(1);
    }
    let ok = summary(&shared.rec(), &parts);
    std::process::exit(if ok { 0 } else { 1 });
}

fn summary(r: &Record, parts: &[(String, String)]) -> bool {
    let Some((merged, by)) = &r.done else {
        return false;
    };
    let mut single = Counts::new();
    for (_, text) in parts {
        merge(&mut single, &count_words(text));
    }
    let mut top: Vec<(&String, &u64)> = merged.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!();
    println!("== summary ==");
    println!(
        "leaders, in order:      {}",
        r.leaders
            .iter()
            .map(|(n, t)| format!("{n}(token {t})"))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    println!(
        "crashes:                {}",
        if r.crashes.is_empty() {
            "none".into()
        } else {
            r.crashes.join("; ")
        }
    );
    println!("top 10 words:");
    for (w, n) in top.iter().take(10) {
        println!("  {n:>4}  {w}");
    }
    let mut per_worker: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (part, w) in by {
        per_worker
            .entry(w.as_str())
            .or_default()
            .push(part.as_str());
    }
    println!("who did what:");
    for (w, ps) in &per_worker {
        println!("  {w}: {} part(s): {}", ps.len(), ps.join(", "));
    }
    println!("reassignments:          {}", r.reassignments.len());
    for x in &r.reassignments {
        println!("  {x}");
    }
    let equal = *merged == single;
    println!(
        "merged counts equal a single-process count: {} ({} distinct words, {} words)",
        if equal { "yes" } else { "NO" },
        merged.len(),
        merged.values().sum::<u64>()
    );
    equal && by.len() == parts.len()
}

// ---- a node: worker until elected, then leader ----------------------------------------------

async fn node(
    name: String,
    client: Client,
    job: String,
    parts: Arc<Vec<(String, String)>>,
    shared: Arc<Shared>,
    die_on: Option<usize>,
    work_ms: u64,
) {
    if let Err(e) = node_inner(&name, &client, &job, &parts, &shared, die_on, work_ms).await {
        println!("{} {name}: stopped: {e}", shared.t());
    }
}

async fn crash_session(client: &Client) {
    if let Some(s) = client.current_session().await {
        match s.as_any().downcast_ref::<MemSession>() {
            Some(ms) => ms.crash(),
            None => {
                let _ = client.close().await; // real backends: the closest in one process
            }
        }
    }
}

async fn node_inner(
    name: &str,
    client: &Client,
    job: &str,
    parts: &Arc<Vec<(String, String)>>,
    shared: &Arc<Shared>,
    die_on: Option<usize>,
    work_ms: u64,
) -> coord::Result<()> {
    // The worker side: an HTTP endpoint, registered in the service registry.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::InvalidArgument(format!("bind: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::InvalidArgument(format!("local address: {e}")))?
        .port();
    let (died_tx, died) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, name.to_owned(), die_on, work_ms, died_tx));
    let registration = client
        .registry()
        .register(&Instance::new(SERVICE, name, "127.0.0.1", port))
        .await?;
    println!(
        "{} {name}: worker at http://127.0.0.1:{port}/count, registered; campaigning",
        shared.t()
    );
    let election = client.election(SERVICE)?;
    let leadership = tokio::select! {
        l = election.campaign(name.as_bytes()) => l?,
        _ = died => {
            // A crashed process: its server is gone, its session stops heartbeating.
            crash_session(client).await;
            drop(registration);
            shared.rec().crashes.push(format!("worker {name} died mid-request"));
            println!("{} {name}: CRASHED while serving a part (its session will expire)", shared.t());
            return Ok(());
        }
    };
    // Leader: stop being a worker.
    server.abort();
    registration.deregister().await?;
    let token = leadership.fencing_token();
    shared.rec().leaders.push((name.to_owned(), token));
    println!(
        "{} {name}: elected LEADER (fencing token {token}); left the registry, taking over the job",
        shared.t()
    );
    lead(name, client, job, parts, shared, leadership).await
}

/// Serves `POST /count`. With `die_on = Some(n)`, the n-th request kills the "process": the
/// connection is dropped without an answer and the server stops.
async fn serve(
    listener: TcpListener,
    name: String,
    die_on: Option<usize>,
    work_ms: u64,
    died: oneshot::Sender<()>,
) {
    let served = Arc::new(AtomicUsize::new(0));
    let mut died = Some(died);
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        if die_on == Some(n) {
            // Read the request, then die without answering.
            let _ = read_request(&mut s).await;
            drop(s);
            if let Some(tx) = died.take() {
                let _ = tx.send(());
            }
            return;
        }
        let name = name.clone();
        tokio::spawn(async move {
            match read_request(&mut s).await {
                Some((line, body)) if line.starts_with("POST /count ") => {
                    tokio::time::sleep(Duration::from_millis(work_ms)).await; // "work"
                    let counts = count_words(&String::from_utf8_lossy(&body));
                    respond(&mut s, "200 OK", &encode(&counts)).await;
                }
                Some(_) => respond(&mut s, "404 Not Found", "try POST /count\n").await,
                None => respond(&mut s, "400 Bad Request", "malformed request\n").await,
            }
            let _ = name;
        });
    }
}

/// A worker's driver: its task (which returns false when its worker failed a request) and
/// when that happened.
struct Driver {
    task: tokio::task::JoinHandle<bool>,
    failed_at: Option<Instant>,
}

/// How long the leader leaves a worker that failed a request alone before it tries again (if
/// the partitioner still assigns it parts: a dead worker leaves the registry when its
/// session expires, and its parts move to the others).
const RETRY_FAILED_WORKER: Duration = Duration::from_secs(2);

/// The leader's work: the partitioner splits the parts over the registered workers (part i is
/// partition i, so every node computes the same split); one driver per worker sends it the
/// parts the partitioner gives it now that are not done yet. When a worker joins or leaves (a
/// dead worker's registration goes with its session), the assignment changes and the
/// drivers follow it: the parts of a worker that left are reassigned (rebalanced) to the
/// others. Results are stored, and merged at the end.
async fn lead(
    name: &str,
    client: &Client,
    job: &str,
    parts: &Arc<Vec<(String, String)>>,
    shared: &Arc<Shared>,
    leadership: Leadership,
) -> coord::Result<()> {
    let results = Path::new("/jobs")?.join(job)?.join("results")?;
    coord::create_parents(&**client.backend(), &results).await?;
    let stored: Vec<String> = client.children(&results).await?;
    let done: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(
        parts.iter().map(|(p, _)| stored.contains(p)).collect(),
    ));
    let count_done = |d: &Mutex<Vec<bool>>| {
        d.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|x| **x)
            .count()
    };
    println!(
        "{} {name}: {} of {} parts already done by an earlier leader; {} to go",
        shared.t(),
        stored.len(),
        parts.len(),
        parts.len() - stored.len()
    );
    let progress = Arc::new(Notify::new());
    // The workers are the service's registered instances.
    let partitioner = client
        .registry()
        .partitioner(SERVICE, parts.len() as u32)
        .await?;
    let mut assignment = partitioner.assignment();
    let cache = client.registry().cache(SERVICE).await?;
    let mut drivers: HashMap<String, Driver> = HashMap::new();
    loop {
        // One driver per worker of the current assignment.
        drivers.retain(|w, d| {
            let member = assignment.members().iter().any(|(m, _)| m == w);
            if !member {
                d.task.abort();
            }
            member
        });
        for (worker, _) in assignment.members() {
            if let Some(d) = drivers.get_mut(worker) {
                if !d.task.is_finished() {
                    continue;
                }
                let failed_at = *d.failed_at.get_or_insert_with(Instant::now);
                if failed_at.elapsed() < RETRY_FAILED_WORKER {
                    continue;
                }
            }
            let Some(inst) = cache.instances().iter().find(|i| i.id == *worker).cloned() else {
                continue; // not in the registry cache yet: next round
            };
            if !drivers.contains_key(worker) {
                println!(
                    "{} {name}: worker {} at {}:{} gets parts {:?}",
                    shared.t(),
                    inst.id,
                    inst.address,
                    inst.port,
                    assignment.partitions_of(worker)
                );
            }
            drivers.insert(
                worker.clone(),
                Driver {
                    task: tokio::spawn(drive(
                        name.to_owned(),
                        inst,
                        partitioner.clone(),
                        client.clone(),
                        results.clone(),
                        parts.clone(),
                        done.clone(),
                        progress.clone(),
                        shared.clone(),
                    )),
                    failed_at: None,
                },
            );
        }
        if count_done(&done) == parts.len() {
            break;
        }
        // The demo's chaos: the first leader crashes once half of the parts are done.
        if count_done(&done) >= parts.len() / 2 {
            let crash = {
                let mut armed = shared
                    .leader_crash_armed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *armed, false)
            };
            if crash {
                for d in drivers.values() {
                    d.task.abort();
                }
                println!(
                    "{} {name} (leader) CRASHES with {} of {} parts done",
                    shared.t(),
                    count_done(&done),
                    parts.len()
                );
                shared
                    .rec()
                    .crashes
                    .push(format!("leader {name} crashed mid-job"));
                crash_session(client).await;
                leadership.lost().await;
                println!(
                    "{} {name}'s session expired: another node takes over",
                    shared.t()
                );
                return Ok(());
            }
        }
        tokio::select! {
            _ = partitioner.changed() => {
                let next = partitioner.assignment();
                report_rebalance(name, &assignment, &next, parts, &done, shared);
                assignment = next;
            }
            _ = progress.notified() => {}
            _ = cache.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = leadership.lost() => {
                for d in drivers.values() { d.task.abort(); }
                println!("{} {name}: LOST the leadership; stops handing out work", shared.t());
                return Ok(());
            }
        }
    }
    for d in drivers.values() {
        d.task.abort();
    }
    // Merge every stored result (the ones of earlier leaders too).
    let mut merged = Counts::new();
    let mut by = BTreeMap::new();
    for part in client.children(&results).await? {
        let n = client.get(&results.join(&part)?).await?;
        let text = String::from_utf8_lossy(&n.value).into_owned();
        let (worker, counts) = text.split_once('\n').unwrap_or(("?", ""));
        let counts = decode(counts).ok_or_else(|| Error::MalformedData {
            path: results.to_string(),
            reason: format!("part {part}"),
        })?;
        merge(&mut merged, &counts);
        by.insert(part, worker.trim_start_matches("worker=").to_owned());
    }
    println!(
        "{} {name}: all {} parts done; merged the results",
        shared.t(),
        by.len()
    );
    shared.rec().done = Some((merged, by));
    shared.finished.notify_one();
    // Keep leading until the program stops, so that nobody starts the job over.
    leadership.lost().await;
    Ok(())
}

/// Prints how the assignment changed; a part not done yet that moved away from a worker
/// that left is a reassignment.
fn report_rebalance(
    name: &str,
    before: &Assignment,
    after: &Assignment,
    parts: &[(String, String)],
    done: &Mutex<Vec<bool>>,
    shared: &Shared,
) {
    let ids =
        |a: &Assignment| -> Vec<String> { a.members().iter().map(|(w, _)| w.clone()).collect() };
    let (old, new) = (ids(before), ids(after));
    let moved = after.moved_from(before);
    for joined in new.iter().filter(|w| !old.contains(w)) {
        println!(
            "{} {name}: {joined} joined: {} of {} parts move to it",
            shared.t(),
            moved
                .iter()
                .filter(|p| after.owner_of(**p) == Some(joined))
                .count(),
            parts.len()
        );
    }
    let done = done.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for left in old.iter().filter(|w| !new.contains(w)) {
        for p in moved.iter().filter(|p| before.owner_of(**p) == Some(left)) {
            if done[*p as usize] {
                continue;
            }
            let to = after.owner_of(*p).unwrap_or("nobody");
            let what = format!(
                "{}: {left} -> {to} (rebalanced: {left} left)",
                parts[*p as usize].0
            );
            println!("{}   REASSIGN {what}", shared.t());
            shared.rec().reassignments.push(what);
        }
    }
}

/// Sends `worker` the parts the partitioner assigns it now and that are not done yet, one at
/// a time, storing each result; follows the assignment as it changes. Returns false at the
/// first failed request (the worker may be dead: its parts move once its registration goes,
/// or the leader tries it again later), true if the partitioner stopped.
#[allow(clippy::too_many_arguments)]
async fn drive(
    leader: String,
    worker: Instance,
    partitioner: Partitioner,
    client: Client,
    results: Path,
    parts: Arc<Vec<(String, String)>>,
    done: Arc<Mutex<Vec<bool>>>,
    progress: Arc<Notify>,
    shared: Arc<Shared>,
) -> bool {
    let addr = format!("{}:{}", worker.address, worker.port);
    loop {
        let next = {
            let d = done.lock().unwrap_or_else(|p| p.into_inner());
            partitioner
                .assignment()
                .partitions_of(&worker.id)
                .into_iter()
                .map(|p| p as usize)
                .find(|p| !d[*p])
        };
        let Some(i) = next else {
            // Nothing to do now: wait for the assignment to change.
            if !partitioner.changed().await {
                return true;
            }
            continue;
        };
        let (part, text) = &parts[i];
        println!("{}   {leader} -> {}: part {part}", shared.t(), worker.id);
        match post_count(&addr, text).await {
            Ok(body) => {
                let value = format!("worker={}\n{body}", worker.id);
                let stored = match results.join(part) {
                    Ok(p) => client.create(&p, value.as_bytes(), CreateMode::Exact).await,
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(_) | Err(Error::AlreadyExists { .. }) => {
                        done.lock().unwrap_or_else(|p| p.into_inner())[i] = true;
                        println!("{}   {} finished {part}", shared.t(), worker.id);
                        progress.notify_one();
                    }
                    Err(e) => {
                        println!("{}   could not store {part}: {e}; will retry", shared.t());
                        progress.notify_one();
                        return false;
                    }
                }
            }
            Err(e) => {
                println!(
                    "{}   {} failed {part} ({e}); its parts wait for a rebalance",
                    shared.t(),
                    worker.id
                );
                progress.notify_one();
                return false;
            }
        }
    }
}
