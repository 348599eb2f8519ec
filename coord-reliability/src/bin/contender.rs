//! One contender process for coord's fault tests.
//!
//! ```text
//! contender --url URL --id ID [--election NAME] [--fence ADDR]
//!           [--lock NAME --lock-fence ADDR] [--register SERVICE]
//!           [--rwlock NAME [--rwlock-fence ADDR]] [--semaphore NAME --semaphore-limit N]
//!           [--write-interval-ms 100] [--zombie-writes 0] [--dialect coord]
//!           [--suspend-policy lose|tolerate]
//! ```
//!
//! With `--rwlock` it also loops on a read-write lock (one hold in three a write, fenced
//! writes as a writer), with `--semaphore` on one lease of a semaphore.
//!
//! Campaigns in the election (and loops on the lock, and registers an instance) and prints
//! every event as one JSON line on stdout (see `coord_reliability::history::Event`). While
//! leading (holding the lock) it writes to the fenced resource with its fencing token every
//! interval, without checking its own state first: the resource is the defence. After a loss,
//! `--zombie-writes N` sends N more writes with the old token, as a process that missed the
//! loss would. Commands on stdin: `resign`, `unlock`, `quit`, `policy lose|tolerate` (the
//! election's and the lock's suspend policy from the next campaign on; a leader resigns to
//! campaign again under it); end of stdin also quits (the test process holds the other end, so
//! contenders never outlive it). Under either policy the election's holder prints its
//! `Suspended`/`Holding` changes (`HoldState`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coord::recipes::{HoldState, SuspendPolicy};
use coord::registry::Instance;
use coord::{Client, Result};
use coord_reliability::history::{Event, Record};
use coord_reliability::now_us;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};

#[derive(Clone, Debug, Default)]
struct Args {
    url: String,
    id: String,
    election: Option<String>,
    fence: Option<String>,
    lock: Option<String>,
    lock_fence: Option<String>,
    register: Option<String>,
    rwlock: Option<String>,
    rwlock_fence: Option<String>,
    semaphore: Option<String>,
    semaphore_limit: u64,
    interval: Duration,
    zombie_writes: u32,
    /// The dialect of the election and the lock (`--dialect`, coord's own by default).
    dialect: coord::dialect::Dialect,
    /// `TolerateSuspend` instead of the default `LoseOnSuspend` (`--suspend-policy`, and the
    /// `policy` command, which changes it for every loop).
    tolerate: Arc<AtomicBool>,
}

impl Args {
    fn policy(&self) -> SuspendPolicy {
        if self.tolerate.load(Ordering::Relaxed) {
            SuspendPolicy::TolerateSuspend
        } else {
            SuspendPolicy::LoseOnSuspend
        }
    }
}

/// `lose` or `tolerate`: whether the policy tolerates a suspension.
fn parse_policy(v: &str) -> std::result::Result<bool, String> {
    match v {
        "lose" => Ok(false),
        "tolerate" => Ok(true),
        _ => Err(format!("bad suspend policy {v} (lose or tolerate)")),
    }
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        interval: Duration::from_millis(100),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?,
            "--id" => a.id = val()?,
            "--election" => a.election = Some(val()?),
            "--fence" => a.fence = Some(val()?),
            "--lock" => a.lock = Some(val()?),
            "--lock-fence" => a.lock_fence = Some(val()?),
            "--register" => a.register = Some(val()?),
            "--rwlock" => a.rwlock = Some(val()?),
            "--rwlock-fence" => a.rwlock_fence = Some(val()?),
            "--semaphore" => a.semaphore = Some(val()?),
            "--semaphore-limit" => {
                let v = val()?;
                a.semaphore_limit = v.parse().map_err(|_| format!("bad {v}"))?
            }
            "--write-interval-ms" => {
                let v = val()?;
                a.interval = Duration::from_millis(v.parse().map_err(|_| format!("bad {v}"))?)
            }
            "--dialect" => {
                a.dialect = coord::dialect::Dialect::parse(&val()?).map_err(|e| e.to_string())?
            }
            "--suspend-policy" => a.tolerate.store(parse_policy(&val()?)?, Ordering::Relaxed),
            "--zombie-writes" => {
                let v = val()?;
                a.zombie_writes = v.parse().map_err(|_| format!("bad {v}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.url.is_empty() || a.id.is_empty() {
        return Err("--url and --id are required".into());
    }
    Ok(a)
}

fn emit(id: &str, event: Event) {
    let r = Record {
        t_us: now_us(),
        id: id.to_owned(),
        event,
    };
    match serde_json::to_string(&r) {
        // println! would panic on a closed stdout; a contender whose test went away just exits.
        Ok(line) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                std::process::exit(0);
            }
        }
        Err(e) => eprintln!("cannot serialize an event: {e}"),
    }
}

fn error(id: &str, what: &str, e: impl std::fmt::Display) {
    emit(
        id,
        Event::Error {
            what: what.into(),
            msg: e.to_string(),
        },
    );
}

/// A connection to a fenced resource, reopened after any error.
struct Fence {
    addr: String,
    conn: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )>,
}

impl Fence {
    async fn write(&mut self, id: &str, token: u64) -> std::io::Result<bool> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            let (r, w) = s.into_split();
            self.conn = Some((BufReader::new(r), w));
        }
        let res = async {
            let (r, w) = self.conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
            w.write_all(format!("W {id} {token}\n").as_bytes()).await?;
            let mut line = String::new();
            r.read_line(&mut line).await?;
            Ok::<bool, std::io::Error>(line.starts_with("OK"))
        };
        let res = tokio::time::timeout(Duration::from_secs(5), res)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        if res.is_err() {
            self.conn = None;
        }
        res
    }
}

async fn fenced_write(fence: &mut Option<Fence>, id: &str, role: &str, token: u64, zombie: bool) {
    if let Some(f) = fence.as_mut() {
        match f.write(id, token).await {
            Ok(ok) => emit(
                id,
                Event::Write {
                    role: role.into(),
                    token,
                    ok,
                    zombie,
                },
            ),
            Err(e) => error(id, "fence write", e),
        }
    }
}

async fn election_loop(
    a: Args,
    client: Client,
    name: String,
    mut cmds: broadcast::Receiver<String>,
) -> Result<()> {
    let mut fence = a.fence.clone().map(|addr| Fence { addr, conn: None });
    let role = "election";
    loop {
        let election = client
            .election_with(&name, a.dialect)?
            .with_suspend_policy(a.policy());
        emit(&a.id, Event::Campaigning { role: role.into() });
        let leadership = tokio::select! {
            r = election.campaign(a.id.as_bytes()) => r,
            c = cmds.recv() => {
                if matches!(c.as_deref(), Ok("quit") | Err(broadcast::error::RecvError::Closed)) {
                    return Ok(());
                }
                continue;
            }
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                error(&a.id, "campaign", e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = leadership.fencing_token();
        emit(
            &a.id,
            Event::Granted {
                role: role.into(),
                token,
            },
        );
        let mut tick = tokio::time::interval(a.interval);
        let mut states = Box::pin(leadership.states());
        let quit = loop {
            tokio::select! {
                Some(st) = states.next() => {
                    if matches!(st, HoldState::Suspended | HoldState::Holding) {
                        let state = format!("{st:?}");
                        emit(&a.id, Event::HoldState { role: role.into(), token, state });
                    }
                }
                _ = leadership.lost() => {
                    emit(&a.id, Event::Lost { role: role.into(), token });
                    for _ in 0..a.zombie_writes {
                        fenced_write(&mut fence, &a.id, role, token, true).await;
                    }
                    break false;
                }
                c = cmds.recv() => match c.as_deref() {
                    Ok("resign") | Ok("quit") | Err(broadcast::error::RecvError::Closed) => {
                        let quit = !matches!(c.as_deref(), Ok("resign"));
                        emit(&a.id, Event::Releasing { role: role.into(), token });
                        if let Err(e) = leadership.resign().await {
                            error(&a.id, "resign", e);
                        }
                        if quit {
                            return Ok(());
                        }
                        break false;
                    }
                    _ => {}
                },
                _ = tick.tick() => fenced_write(&mut fence, &a.id, role, token, false).await,
            }
        };
        if quit {
            return Ok(());
        }
    }
}

async fn lock_loop(
    a: Args,
    client: Client,
    name: String,
    mut cmds: broadcast::Receiver<String>,
) -> Result<()> {
    let mut fence = a.lock_fence.clone().map(|addr| Fence { addr, conn: None });
    let role = "lock";
    loop {
        let lock = client
            .lock_with(&name, a.dialect)?
            .with_suspend_policy(a.policy());
        emit(&a.id, Event::Campaigning { role: role.into() });
        let guard = tokio::select! {
            r = lock.lock_timeout(Duration::from_secs(3)) => r,
            c = cmds.recv() => {
                if matches!(c.as_deref(), Ok("quit") | Err(broadcast::error::RecvError::Closed)) {
                    return Ok(());
                }
                continue;
            }
        };
        let guard = match guard {
            Ok(g) => g,
            Err(coord::Error::Timeout { .. }) => continue,
            Err(e) => {
                error(&a.id, "lock", e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = guard.fencing_token();
        emit(
            &a.id,
            Event::Granted {
                role: role.into(),
                token,
            },
        );
        // Hold it for a few writes, then unlock (or stop at a loss / command).
        let mut tick = tokio::time::interval(a.interval);
        let mut writes = 0;
        let release = loop {
            tokio::select! {
                _ = guard.lost() => {
                    emit(&a.id, Event::Lost { role: role.into(), token });
                    for _ in 0..a.zombie_writes {
                        fenced_write(&mut fence, &a.id, role, token, true).await;
                    }
                    break None;
                }
                c = cmds.recv() => match c.as_deref() {
                    Ok("unlock") => break Some(false),
                    Ok("quit") | Err(broadcast::error::RecvError::Closed) => break Some(true),
                    _ => {}
                },
                _ = tick.tick() => {
                    fenced_write(&mut fence, &a.id, role, token, false).await;
                    writes += 1;
                    if writes >= 3 {
                        break Some(false);
                    }
                }
            }
        };
        if let Some(quit) = release {
            emit(
                &a.id,
                Event::Releasing {
                    role: role.into(),
                    token,
                },
            );
            if let Err(e) = guard.unlock().await {
                error(&a.id, "unlock", e);
            }
            if quit {
                return Ok(());
            }
            tokio::time::sleep(a.interval).await;
        }
    }
}

/// A held read lock, write lock or lease.
enum Shared {
    Read(coord::rwlock::ReadGuard),
    Write(coord::rwlock::WriteGuard),
    Lease(coord::semaphore::Lease),
}

impl Shared {
    fn token(&self) -> u64 {
        match self {
            Shared::Read(g) => g.fencing_token(),
            Shared::Write(g) => g.fencing_token(),
            Shared::Lease(l) => l.fencing_token(),
        }
    }

    async fn lost(&self) {
        match self {
            Shared::Read(g) => g.lost().await,
            Shared::Write(g) => g.lost().await,
            Shared::Lease(l) => l.lost().await,
        }
    }

    async fn release(self) -> Result<()> {
        match self {
            Shared::Read(g) => g.unlock().await,
            Shared::Write(g) => g.unlock().await,
            Shared::Lease(l) => l.release().await,
        }
    }
}

/// What `shared_loop` takes: the read-write lock or the semaphore.
#[derive(Clone)]
enum SharedRole {
    RwLock(coord::rwlock::RwLock),
    Semaphore(coord::semaphore::Semaphore),
}

impl SharedRole {
    /// Waits (at most 3 s) for a hold: `n`-th attempt; one in three of the rwlock's is a write.
    async fn take(&self, n: u64) -> Result<(&'static str, Shared)> {
        let wait = Duration::from_secs(3);
        Ok(match self {
            SharedRole::RwLock(l) if n % 3 == 0 => (
                coord_reliability::history::RWLOCK_WRITE,
                Shared::Write(l.write_timeout(wait).await?),
            ),
            SharedRole::RwLock(l) => (
                coord_reliability::history::RWLOCK_READ,
                Shared::Read(l.read_timeout(wait).await?),
            ),
            SharedRole::Semaphore(s) => (
                coord_reliability::history::SEMAPHORE,
                Shared::Lease(
                    tokio::time::timeout(wait, s.acquire())
                        .await
                        .map_err(|_| coord::Error::timeout("no lease within 3 s"))??,
                ),
            ),
        })
    }
}

/// Like `lock_loop`, for the read-write lock or the semaphore: holds for a few intervals
/// (fenced writes while writing, with `fence`), releases, again.
async fn shared_loop(
    a: Args,
    role_of: SharedRole,
    fence: Option<String>,
    mut cmds: broadcast::Receiver<String>,
) -> Result<()> {
    let mut fence = fence.map(|addr| Fence { addr, conn: None });
    let mut n: u64 = a.id.bytes().map(u64::from).sum();
    loop {
        n += 1;
        let taken = tokio::select! {
            r = role_of.take(n) => r,
            c = cmds.recv() => {
                if matches!(c.as_deref(), Ok("quit") | Err(broadcast::error::RecvError::Closed)) {
                    return Ok(());
                }
                continue;
            }
        };
        let (role, held) = match taken {
            Ok(t) => t,
            Err(coord::Error::Timeout { .. }) => continue,
            Err(e) => {
                error(&a.id, "shared", e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = held.token();
        emit(
            &a.id,
            Event::Granted {
                role: role.into(),
                token,
            },
        );
        let writer = role == coord_reliability::history::RWLOCK_WRITE;
        let mut tick = tokio::time::interval(a.interval);
        let mut ticks = 0;
        let release = loop {
            tokio::select! {
                _ = held.lost() => {
                    emit(&a.id, Event::Lost { role: role.into(), token });
                    if writer {
                        for _ in 0..a.zombie_writes {
                            fenced_write(&mut fence, &a.id, role, token, true).await;
                        }
                    }
                    break None;
                }
                c = cmds.recv() => match c.as_deref() {
                    Ok("unlock") => break Some(false),
                    Ok("quit") | Err(broadcast::error::RecvError::Closed) => break Some(true),
                    _ => {}
                },
                _ = tick.tick() => {
                    if writer {
                        fenced_write(&mut fence, &a.id, role, token, false).await;
                    }
                    ticks += 1;
                    if ticks >= 3 {
                        break Some(false);
                    }
                }
            }
        };
        if let Some(quit) = release {
            emit(
                &a.id,
                Event::Releasing {
                    role: role.into(),
                    token,
                },
            );
            if let Err(e) = held.release().await {
                error(&a.id, "release", e);
            }
            if quit {
                return Ok(());
            }
            tokio::time::sleep(a.interval).await;
        }
    }
}

/// Answers `observe`: the election's leader and candidates as coord sees them (ids are the
/// values the candidates campaigned with).
async fn observe(a: &Args, client: &Client) {
    let Some(name) = a.election.as_deref() else {
        return error(&a.id, "observe", "no --election");
    };
    let seen = async {
        let e = client.election_with(name, a.dialect)?;
        let all = e.participants().await?;
        // The first item of `observe` is the current leader (as `leader()` answers it).
        let mut stream = Box::pin(e.observe().await?);
        let leader = match futures::StreamExt::next(&mut stream).await {
            Some(l) => l?,
            None => e.leader().await?,
        };
        Ok::<_, coord::Error>((leader, all))
    };
    match seen.await {
        Ok((leader, all)) => emit(
            &a.id,
            Event::Observed {
                leader: leader
                    .map(|l| String::from_utf8_lossy(&l.value).into_owned())
                    .unwrap_or_default(),
                participants: all
                    .iter()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned())
                    .collect(),
            },
        ),
        Err(e) => error(&a.id, "observe", e),
    }
}

async fn run(a: Args) -> Result<()> {
    let client = coord::connect(&a.url).await?;
    let (tx, _) = broadcast::channel::<String>(16);
    let (done_tx, done_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(name) = a.election.clone() {
        tasks.spawn(election_loop(
            a.clone(),
            client.clone(),
            name,
            tx.subscribe(),
        ));
    }
    if let Some(name) = a.lock.clone() {
        tasks.spawn(lock_loop(a.clone(), client.clone(), name, tx.subscribe()));
    }
    if let Some(name) = a.rwlock.clone() {
        let role = SharedRole::RwLock(client.rwlock(&name)?);
        let fence = a.rwlock_fence.clone();
        tasks.spawn(shared_loop(a.clone(), role, fence, tx.subscribe()));
    }
    if let Some(name) = a.semaphore.clone() {
        let role = SharedRole::Semaphore(client.semaphore(&name, a.semaphore_limit)?);
        tasks.spawn(shared_loop(a.clone(), role, None, tx.subscribe()));
    }
    // Registers in the background, retrying until it works (a server may be down right now).
    let registration = a.register.clone().map(|service| {
        let (client, id) = (client.clone(), a.id.clone());
        tokio::spawn(async move {
            let inst = Instance::new(&service, &id, "127.0.0.1", 1);
            loop {
                match client.registry().register(&inst).await {
                    Ok(r) => {
                        emit(
                            &id,
                            Event::Registered {
                                service: service.clone(),
                            },
                        );
                        // Diagnostics: a registration that ends for good while we run (the
                        // library re-registers after a session's end by itself).
                        let mut states = r.states().boxed();
                        let watcher = id.clone();
                        tokio::spawn(async move {
                            while let Some(st) = states.next().await {
                                if st.is_final() && st != coord::group::MembershipState::Closed {
                                    error(&watcher, "registration", format!("ended: {st:?}"));
                                }
                            }
                        });
                        return r;
                    }
                    Err(e) => {
                        error(&id, "register", e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    });
    // Diagnostics: every state of every session the client opens, as the session reports it
    // (a new session is found within 50 ms; its states are followed as they change, so a
    // short Suspended between two Connected is printed too).
    {
        let (client, id) = (client.clone(), a.id.clone());
        // The session being followed: a replaced session's late states are not printed as
        // the client's (the records' last session is the current one).
        let current = Arc::new(std::sync::Mutex::new(String::new()));
        tokio::spawn(async move {
            loop {
                if let Some(s) = client.current_session().await {
                    let session = s.id().to_string();
                    let new = match current.lock() {
                        Ok(mut c) if *c != session => {
                            *c = session.clone();
                            true
                        }
                        _ => false,
                    };
                    if new {
                        let (mut states, id, current) = (s.states(), id.clone(), current.clone());
                        tokio::spawn(async move {
                            while let Some(st) = states.next().await {
                                if current.lock().map_or(true, |c| *c != session) {
                                    break;
                                }
                                let state = format!("{st:?}");
                                emit(
                                    &id,
                                    Event::Session {
                                        session: session.clone(),
                                        state,
                                    },
                                );
                            }
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    // Commands from stdin; EOF means quit.
    let stdin_tx = tx.clone();
    let (obs_args, obs_client) = (a.clone(), client.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    let l = l.trim().to_owned();
                    if l == "observe" {
                        observe(&obs_args, &obs_client).await;
                        continue;
                    }
                    if let Some(p) = l.strip_prefix("policy ") {
                        match parse_policy(p.trim()) {
                            Ok(t) => obs_args.tolerate.store(t, Ordering::Relaxed),
                            Err(e) => error(&obs_args.id, "policy", e),
                        }
                        // Waiting loops campaign again at any command; the leader resigns.
                        let _ = stdin_tx.send("resign".into());
                        continue;
                    }
                    let quit = l == "quit";
                    let _ = stdin_tx.send(l);
                    if quit {
                        break;
                    }
                }
                _ => {
                    let _ = stdin_tx.send("quit".into());
                    break;
                }
            }
        }
        let _ = done_tx.send(true);
    });
    let mut done_rx = done_rx;
    let _ = done_rx.wait_for(|d| *d).await;
    // Bounded shutdown: the loops release their roles, then the registration and session go.
    let shutdown = async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Err(e)) => error(&a.id, "task", e),
                Err(e) => error(&a.id, "task join", e),
                Ok(Ok(())) => {}
            }
        }
        if let Some(task) = registration {
            if task.is_finished() {
                match task.await {
                    Ok(r) => {
                        if let Err(e) = r.deregister().await {
                            error(&a.id, "deregister", e);
                        }
                    }
                    Err(e) => error(&a.id, "register task", e),
                }
            } else {
                task.abort();
            }
        }
        if let Err(e) = client.close().await {
            error(&a.id, "close", e);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .is_err()
    {
        error(&a.id, "shutdown", "timed out after 10 s");
    }
    emit(&a.id, Event::Exiting);
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("contender: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("contender: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    emit(
        &args.id,
        Event::Started {
            pid: std::process::id(),
        },
    );
    let id = args.id.clone();
    if let Err(e) = rt.block_on(run(args)) {
        error(&id, "fatal", &e);
        eprintln!("contender {id}: {e}");
        std::process::exit(1);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}
