//! The handover harness of items 10 and 14: members of one dialect — coord candidates and a
//! peer's own processes — take turns holding one election, and the handovers between them are
//! timed in wall-clock microseconds (so that both sides' stamps compare) and reported next to
//! the peer's own peer → peer handover. Each item supplies its [`Fleet`] (how to start a peer
//! process and how long things take on its store).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coord::dialect::Dialect;
use coord::election::{Election, Leadership};
use coord::{Client, SessionOptions};
use tokio::sync::mpsc;

use crate::cx::{crash, within, Cx, STEP};
use crate::stats::{ms, ratio, BoxError, Res, Row, Stats, Verdict};

/// coord's sessions in these items: short, so that crash handovers are short.
pub(crate) const SESSION: Duration = Duration::from_secs(2);

/// Microseconds since the epoch (the peers stamp their lines the same way).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The time from one stamp to a later one (zero if the clock went back).
pub(crate) fn since(from_us: u64, to_us: u64) -> Duration {
    Duration::from_micros(to_us.saturating_sub(from_us))
}

/// coord or the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Coord,
    Peer,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Coord => "coord",
            Kind::Peer => "peer",
        }
    }
}

/// A peer's process in the election.
pub(crate) trait Peer: Send + Sized {
    /// Waits until it holds the role; when (µs).
    fn granted(&mut self, bound: Duration) -> impl Future<Output = Res<u64>> + Send;
    /// Gives the role up; when the release started (µs).
    fn release(&mut self) -> impl Future<Output = Res<u64>> + Send;
    /// Whether it campaigns again by itself after [`Peer::release`] (otherwise a new process
    /// takes its place once the successor holds).
    const REQUEUES_ITSELF: bool;
    /// Dies without releasing; when (µs).
    fn kill(self) -> u64;
    /// Leaves, releasing what it holds (bounded).
    fn quit(self) -> impl Future<Output = ()> + Send;
}

/// What one item's run needs: its store and its peer.
pub(crate) trait Fleet: Sync {
    type Peer: Peer;
    /// The bench item.
    const ITEM: u8;
    fn cx(&self) -> &Cx;
    fn dialect(&self) -> Dialect;
    /// A peer process campaigning in the election `name`, with a unique `id`.
    fn peer(&self, name: &str, id: &str) -> Res<Self::Peer>;
    /// A new candidate is queued (its node in place, its watch armed) this long after it shows.
    fn settle(&self) -> Duration;
    /// Rounds per pair of members: (clean handovers, crashes).
    fn rounds(&self) -> (usize, usize);
    /// The bound on a crash handover (the peer's session TTL and lock-delay).
    fn crash_bound(&self) -> Duration;
}

type Elected = (u64, coord::Result<Leadership>);

/// A coord candidate in the dialect.
struct Candidate {
    client: Client,
    election: Election,
    rx: mpsc::UnboundedReceiver<Elected>,
    task: Option<tokio::task::JoinHandle<()>>,
    held: Option<Leadership>,
}

impl Candidate {
    /// A candidate that has not campaigned yet (no I/O).
    fn new(f: &impl Fleet, name: &str) -> Res<Candidate> {
        let client = Client::with_session_options(
            f.cx().backend.clone(),
            SessionOptions::new().ttl(SESSION),
        )
        .with_default_dialect(f.dialect());
        let election = client.election(name)?;
        Ok(Candidate {
            client,
            election,
            rx: mpsc::unbounded_channel().1,
            task: None,
            held: None,
        })
    }

    fn campaign(&mut self) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.rx = rx;
        let e = self.election.clone();
        self.task = Some(tokio::spawn(async move {
            let r = e.campaign(b"coord").await;
            let _ = tx.send((now_us(), r));
        }));
    }

    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        let (t, r) = within(bound, "coord elected", self.rx.recv())
            .await?
            .ok_or("the campaign ended")?;
        self.held = Some(r?);
        Ok(t)
    }

    async fn release(&mut self) -> Res<u64> {
        let l = self.held.take().ok_or("coord does not hold the role")?;
        let t = now_us();
        l.resign().await?;
        Ok(t)
    }

    /// Dies without releasing: its session's client is aborted. The leadership is returned,
    /// not dropped: a drop would release through the live backend, which a dead process
    /// cannot do; the caller drops it once the role has moved on.
    async fn crash(self) -> Res<(u64, Leadership)> {
        let l = self.held.ok_or("coord does not hold the role")?;
        let session = self
            .client
            .current_session()
            .await
            .ok_or("the leader has no session")?;
        let t = now_us();
        crash(&session)?;
        if let Some(task) = self.task {
            task.abort();
        }
        Ok((t, l))
    }

    async fn quit(self) {
        if let Some(l) = self.held {
            let _ = l.resign().await;
        }
        if let Some(t) = self.task {
            t.abort();
        }
    }
}

enum Member<P> {
    Coord(Box<Candidate>),
    Peer(P),
}

impl<P: Peer> Member<P> {
    fn start<F: Fleet<Peer = P>>(f: &F, kind: Kind, name: &str, id: &str) -> Res<Self> {
        Ok(match kind {
            Kind::Coord => {
                let mut c = Candidate::new(f, name)?;
                c.campaign();
                Member::Coord(Box::new(c))
            }
            Kind::Peer => Member::Peer(f.peer(name, id)?),
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Member::Coord(_) => Kind::Coord,
            Member::Peer(_) => Kind::Peer,
        }
    }

    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        match self {
            Member::Coord(c) => c.granted(bound).await,
            Member::Peer(p) => p.granted(bound).await,
        }
    }

    async fn release(&mut self) -> Res<u64> {
        match self {
            Member::Coord(c) => c.release().await,
            Member::Peer(p) => p.release().await,
        }
    }

    /// Campaigns again only once the successor holds: on a single Consul key a candidate that
    /// campaigns again at once may win the key back (there is no queue).
    fn requeue<F: Fleet<Peer = P>>(&mut self, f: &F, name: &str, id: &str) -> Res<()> {
        match self {
            Member::Coord(c) => c.campaign(),
            Member::Peer(_) if P::REQUEUES_ITSELF => {}
            Member::Peer(p) => *p = f.peer(name, id)?,
        }
        Ok(())
    }

    async fn crash(self) -> Res<(u64, Option<Leadership>)> {
        match self {
            Member::Coord(c) => (*c).crash().await.map(|(t, l)| (t, Some(l))),
            Member::Peer(p) => Ok((p.kill(), None)),
        }
    }

    async fn quit(self) {
        match self {
            Member::Coord(c) => (*c).quit().await,
            Member::Peer(p) => p.quit().await,
        }
    }
}

/// Lets a new candidate queue: until the election shows `n` candidates; a single Consul key
/// shows its holder only, so there a fixed pause.
async fn queued(f: &impl Fleet, name: &str, n: usize) -> Res<()> {
    if !f.dialect().herd_free() {
        tokio::time::sleep(f.settle() * 2).await;
        return Ok(());
    }
    let watcher = Client::new(f.cx().backend.clone())
        .with_default_dialect(f.dialect())
        .election(name)?;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if watcher.participants().await?.len() >= n {
            tokio::time::sleep(f.settle()).await;
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{name}: {n} candidates not queued within {STEP:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Sample = ((Kind, Kind), Duration);

/// The samples of one direction (from kind, to kind).
fn of(list: &[Sample], dir: (Kind, Kind)) -> Option<Stats> {
    let d: Vec<Duration> = list
        .iter()
        .filter(|(k, _)| *k == dir)
        .map(|(_, d)| *d)
        .collect();
    Stats::of(&d)
}

#[derive(Default)]
struct Samples {
    clean: Vec<Sample>,
    crash: Vec<Sample>,
}

/// Two members of kinds `a` and `b` take turns: `clean` releases, then `crashes` deaths (each
/// dead member replaced by a new one of its kind once the successor holds).
async fn pair<F: Fleet>(f: &F, a: Kind, b: Kind, out: &mut Samples) -> Res<()> {
    let (clean, crashes) = f.rounds();
    // Mixed pairs run both directions, so twice the rounds.
    let (clean, crashes) = if a == b {
        (clean, crashes)
    } else {
        (clean * 2, crashes * 2)
    };
    let name = format!("d-{}-{}-{}", f.dialect(), a.name(), b.name());
    let mut next_id = 0;
    let mut id = |k: Kind| {
        next_id += 1;
        format!("{}{next_id}", k.name())
    };
    let mut holder = Member::start(f, a, &name, &id(a))?;
    holder.granted(STEP).await?;
    let mut waiter = Member::start(f, b, &name, &id(b))?;
    queued(f, &name, 2).await?;
    let mut corpses = Vec::new();
    let result = async {
        for _ in 0..clean {
            let t0 = holder.release().await?;
            let t1 = waiter.granted(STEP).await?;
            out.clean
                .push(((holder.kind(), waiter.kind()), since(t0, t1)));
            let kind = holder.kind();
            holder.requeue(f, &name, &id(kind))?;
            std::mem::swap(&mut holder, &mut waiter);
            queued(f, &name, 2).await?;
        }
        for _ in 0..crashes {
            let dead = holder.kind();
            let idle = Member::Coord(Box::new(Candidate::new(f, &name)?));
            let (t0, corpse) = std::mem::replace(&mut holder, idle).crash().await?;
            let t1 = waiter.granted(f.crash_bound()).await?;
            out.crash.push(((dead, waiter.kind()), since(t0, t1)));
            corpses.extend(corpse);
            holder = Member::start(f, dead, &name, &id(dead))?;
            std::mem::swap(&mut holder, &mut waiter);
            queued(f, &name, 2).await?;
        }
        Ok::<(), BoxError>(())
    }
    .await;
    waiter.quit().await;
    holder.quit().await;
    drop(corpses);
    result
}

/// `n` coord candidates in the dialect: wake-ups per leadership change, and one handover.
async fn herd(f: &impl Fleet, n: usize, changes: usize) -> Res<(f64, Stats)> {
    let name = format!("d-herd-{}", f.dialect());
    let clients: Vec<Client> = (0..n)
        .map(|_| Client::new(f.cx().backend.clone()).with_default_dialect(f.dialect()))
        .collect();
    let elections: Vec<Election> = clients
        .iter()
        .map(|c| c.election(&name))
        .collect::<Result<_, _>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Elected>();
    let mut tasks = Vec::new();
    for e in &elections {
        let (e, tx) = (e.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = e.campaign(b"c").await;
            let _ = tx.send((now_us(), r));
        }));
    }
    queued(f, &name, n).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wakeups = || elections.iter().map(Election::wakeups).sum::<u64>();
    let (_, first) = within(STEP, "a leader", rx.recv())
        .await?
        .ok_or("no leader")?;
    let mut leader = first?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w0 = wakeups();
    let mut d = Vec::new();
    for _ in 0..changes {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = now_us();
        leader.resign().await?;
        let (t1, next) = within(STEP, "the successor", rx.recv())
            .await?
            .ok_or("no successor")?;
        d.push(since(t0, t1));
        leader = next?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per = (wakeups() - w0) as f64 / changes.max(1) as f64;
    let _ = leader.resign().await;
    for t in tasks {
        t.abort();
    }
    for c in &clients {
        let _ = c.close().await;
    }
    Ok((per, Stats::of(&d).ok_or("no samples")?))
}

/// One dialect's rows: every direction's handovers next to peer → peer, and the herd.
pub(crate) async fn run<F: Fleet>(f: &F) -> Vec<Row> {
    let d = f.dialect();
    match rows(f).await {
        Ok(r) => r,
        Err(e) => vec![Row::failed(F::ITEM, &format!("{d}: handovers"), &e)],
    }
}

async fn rows<F: Fleet>(f: &F) -> Res<Vec<Row>> {
    let mut out = Samples::default();
    pair(f, Kind::Peer, Kind::Peer, &mut out).await?;
    pair(f, Kind::Coord, Kind::Coord, &mut out).await?;
    // Both directions: clean and crash rounds alternate between coord and the peer.
    pair(f, Kind::Coord, Kind::Peer, &mut out).await?;
    let (item, d) = (F::ITEM, f.dialect());
    let mut rows = Vec::new();
    for (what, list) in [("clean", &out.clean), ("crash", &out.crash)] {
        let base = of(list, (Kind::Peer, Kind::Peer)).ok_or("no peer samples")?;
        rows.push(Row::info(
            item,
            format!("{d}: {what} handover peer → peer (n={})", base.n),
            base.show(),
        ));
        for dir in [
            (Kind::Peer, Kind::Coord),
            (Kind::Coord, Kind::Peer),
            (Kind::Coord, Kind::Coord),
        ] {
            let Some(st) = of(list, dir) else {
                continue;
            };
            let (x, xs) = ratio(st.median, base.median);
            rows.push(Row::new(
                item,
                format!(
                    "{d}: {what} handover {} → {} (n={})",
                    dir.0.name(),
                    dir.1.name(),
                    st.n
                ),
                st.show(),
                format!("peer → peer {}", ms(base.median)),
                xs,
                "median ≤ peer → peer",
                // A crash handover is the session timeout plus noise: 10% of slack.
                Verdict::check(x <= if what == "crash" { 1.1 } else { 1.0 }),
            ));
        }
    }
    let (per, st) = herd(f, 20, f.cx().sizes.herd_changes.max(4)).await?;
    let herd_free = d.herd_free();
    rows.push(Row::new(
        item,
        format!(
            "{d}: herd, 20 coord candidates: wake-ups per change ({} changes)",
            st.n
        ),
        format!("{per:.2}"),
        "",
        "",
        if herd_free {
            "= 1"
        } else {
            "(single key: every waiter)"
        },
        if herd_free {
            Verdict::check((per - 1.0).abs() < 1e-9)
        } else {
            Verdict::Info
        },
    ));
    rows.push(Row::info(
        item,
        format!("{d}: herd, 20 coord candidates: one handover"),
        st.show(),
    ));
    Ok(rows)
}
