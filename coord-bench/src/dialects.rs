//! Item 10 (ZooKeeper only): handovers in each peer dialect, next to the peer's own handover
//! between two of its processes, measured in the same run (issue 15).
//!
//! For each ZooKeeper dialect, three pairs of members take turns in one election: two peer
//! processes (Curator's LeaderLatch or LeaderSelector, kazoo's Lock, from coord-testkit's
//! `peers`), two coord candidates in the dialect, and one coord candidate with one peer (both
//! directions). A clean handover runs from the holder's release (coord: the call to `resign`;
//! a peer: its `releasing` line) to the successor's grant (coord: `campaign` returns; a peer:
//! the recipe says it leads, before it reads its node's czxid); a crash handover from the
//! holder's death (coord: the session's client aborted; a peer: `SIGKILL`) to the successor's
//! grant, dominated by the 2 s session timeout. Times are wall-clock microseconds on one
//! machine, so that both sides' stamps compare. The herd: 20 coord candidates in the dialect,
//! wake-ups per leadership change.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coord::dialect::Dialect;
use coord::election::{Election, Leadership};
use coord::{Client, SessionOptions};
use coord_testkit::peers::{curator_peer, kazoo_peer, PeerProcess};
use tokio::sync::mpsc;

use crate::cx::{crash, within, Cx, STEP};
use crate::stats::{ms, ratio, Res, Row, Stats, Verdict};

const ITEM: u8 = 10;
const SESSION: Duration = Duration::from_secs(2);
const PEER_INTERVAL: Duration = Duration::from_millis(20);
/// A new candidate's node is in place (and its predecessor watched) after this.
const SETTLE: Duration = Duration::from_millis(100);

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

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

/// What one dialect's run needs.
struct Setup<'a> {
    cx: &'a Cx,
    dialect: Dialect,
    /// The peers' connect string (with the namespace as chroot).
    zk: String,
}

type Elected = (u64, coord::Result<Leadership>);

enum Member {
    Coord {
        client: Client,
        election: Election,
        rx: mpsc::UnboundedReceiver<Elected>,
        task: Option<tokio::task::JoinHandle<()>>,
        held: Option<Leadership>,
    },
    Peer {
        proc: PeerProcess,
        seen: usize,
    },
}

impl Member {
    fn kind(&self) -> Kind {
        match self {
            Member::Coord { .. } => Kind::Coord,
            Member::Peer { .. } => Kind::Peer,
        }
    }

    /// A new member campaigning in `name`.
    fn start(s: &Setup<'_>, kind: Kind, name: &str, id: &str) -> Res<Member> {
        match kind {
            Kind::Coord => {
                let client = Client::with_session_options(
                    s.cx.backend.clone(),
                    SessionOptions::new().ttl(SESSION),
                )
                .with_default_dialect(s.dialect);
                let election = client.election(name)?;
                let (tx, rx) = mpsc::unbounded_channel();
                let mut m = Member::Coord {
                    client,
                    election,
                    rx,
                    task: None,
                    held: None,
                };
                m.campaign(tx);
                Ok(m)
            }
            Kind::Peer => {
                let path = format!("/elections/{name}");
                let (i, t) = (PEER_INTERVAL, SESSION);
                let cmd = match s.dialect {
                    Dialect::CuratorLatch => curator_peer("latch", &s.zk, &path, id, "-", i, t),
                    Dialect::CuratorLock => curator_peer("selector", &s.zk, &path, id, "-", i, t),
                    _ => kazoo_peer("election", &s.zk, &path, id, "-", i, t),
                }?;
                Ok(Member::Peer {
                    proc: PeerProcess::spawn(cmd)?,
                    seen: 0,
                })
            }
        }
    }

    fn campaign(&mut self, tx: mpsc::UnboundedSender<Elected>) {
        if let Member::Coord { election, task, .. } = self {
            let e = election.clone();
            *task = Some(tokio::spawn(async move {
                let r = e.campaign(b"coord").await;
                let _ = tx.send((now_us(), r));
            }));
        }
    }

    /// Waits until this member holds the role; when (µs).
    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        match self {
            Member::Coord { rx, held, .. } => {
                let (t, r) = within(bound, "coord elected", rx.recv())
                    .await?
                    .ok_or("the campaign ended")?;
                *held = Some(r?);
                Ok(t)
            }
            Member::Peer { proc, seen } => {
                let (i, t) = peer_event(proc, *seen, "granted", bound).await?;
                *seen = i + 1;
                Ok(t)
            }
        }
    }

    /// Gives the role up and campaigns again; when the release started (µs).
    async fn resign(&mut self) -> Res<u64> {
        match self {
            Member::Coord { held, .. } => {
                let l = held.take().ok_or("coord does not hold the role")?;
                let t = now_us();
                l.resign().await?;
                let (tx, rx) = mpsc::unbounded_channel();
                if let Member::Coord { rx: old, .. } = self {
                    *old = rx;
                }
                self.campaign(tx);
                Ok(t)
            }
            Member::Peer { proc, seen } => {
                proc.send("resign");
                let (i, t) = peer_event(proc, *seen, "releasing", STEP).await?;
                *seen = i + 1;
                Ok(t)
            }
        }
    }

    /// Dies without releasing; when (µs), and what must outlive the successor's grant (a
    /// coord leadership dropped now would delete its node through the live backend, which a
    /// dead process cannot do).
    async fn crash(self) -> Res<(u64, Option<Leadership>)> {
        match self {
            Member::Coord {
                client, held, task, ..
            } => {
                let l = held.ok_or("coord does not hold the role")?;
                // The member's own client: its session is the leadership's.
                let session = client
                    .current_session()
                    .await
                    .ok_or("the leader has no session")?;
                let t = now_us();
                crash(&session)?;
                if let Some(t) = task {
                    t.abort();
                }
                Ok((t, Some(l)))
            }
            Member::Peer { mut proc, .. } => {
                let t = now_us();
                proc.kill();
                Ok((t, None))
            }
        }
    }

    fn quit(self) {
        match self {
            Member::Coord { held, task, .. } => {
                drop(held);
                if let Some(t) = task {
                    t.abort();
                }
            }
            Member::Peer { mut proc, .. } => proc.quit(Duration::from_secs(5)),
        }
    }
}

/// The first `ev` event of the peer after line `from`: its index and its `t_us`.
async fn peer_event(
    p: &mut PeerProcess,
    from: usize,
    ev: &str,
    bound: Duration,
) -> Res<(usize, u64)> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let lines = p.lines();
        for (i, l) in lines.iter().enumerate().skip(from) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            if v["ev"] == ev {
                let t = v["t_us"].as_u64().ok_or("a peer line without t_us")?;
                return Ok((i, t));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the peer reported no {ev:?} within {bound:?}: {}",
                p.stderr()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the election has `n` candidates, then lets the last one arm its watch.
async fn queued(s: &Setup<'_>, name: &str, n: usize) -> Res<()> {
    let watcher = Client::new(s.cx.backend.clone())
        .with_default_dialect(s.dialect)
        .election(name)?;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if watcher.participants().await?.len() >= n {
            tokio::time::sleep(SETTLE).await;
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{name}: {n} candidates not queued within {STEP:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples by direction (from kind, to kind).
#[derive(Default)]
struct Samples {
    clean: Vec<((Kind, Kind), Duration)>,
    crash: Vec<((Kind, Kind), Duration)>,
}

impl Samples {
    fn of(list: &[((Kind, Kind), Duration)], dir: (Kind, Kind)) -> Option<Stats> {
        let d: Vec<Duration> = list
            .iter()
            .filter(|(k, _)| *k == dir)
            .map(|(_, d)| *d)
            .collect();
        Stats::of(&d)
    }
}

/// Two members of kinds `a` and `b` take turns: `clean` resigns, then `crashes` deaths (each
/// dead member replaced by a new one of its kind).
async fn pair(
    s: &Setup<'_>,
    a: Kind,
    b: Kind,
    clean: usize,
    crashes: usize,
    out: &mut Samples,
) -> Res<()> {
    let name = format!("d-{}-{}-{}", s.dialect, a.name(), b.name());
    let mut next_id = 0;
    let mut id = |k: Kind| {
        next_id += 1;
        format!("{}{next_id}", k.name())
    };
    let mut holder = Member::start(s, a, &name, &id(a))?;
    holder.granted(STEP).await?;
    let mut waiter = Member::start(s, b, &name, &id(b))?;
    queued(s, &name, 2).await?;
    let result = async {
        for _ in 0..clean {
            let t0 = holder.resign().await?;
            let t1 = waiter.granted(STEP).await?;
            out.clean
                .push(((holder.kind(), waiter.kind()), since(t0, t1)));
            std::mem::swap(&mut holder, &mut waiter);
            queued(s, &name, 2).await?;
        }
        for _ in 0..crashes {
            let dead = holder.kind();
            let replacement = Member::start(s, dead, &name, &id(dead))?;
            let (t0, corpse) = std::mem::replace(&mut holder, replacement).crash().await?;
            let t1 = waiter.granted(SESSION * 3 + Duration::from_secs(5)).await?;
            out.crash.push(((dead, waiter.kind()), since(t0, t1)));
            drop(corpse);
            // The replacement queues behind the new holder.
            std::mem::swap(&mut holder, &mut waiter);
            queued(s, &name, 2).await?;
        }
        Ok::<(), crate::stats::BoxError>(())
    }
    .await;
    holder.quit();
    waiter.quit();
    result
}

/// `n` coord candidates in the dialect: wake-ups per leadership change, and one handover.
async fn herd(s: &Setup<'_>, n: usize, changes: usize) -> Res<(f64, Stats)> {
    let name = format!("d-herd-{}", s.dialect);
    let clients: Vec<Client> = (0..n)
        .map(|_| Client::new(s.cx.backend.clone()).with_default_dialect(s.dialect))
        .collect();
    let elections: Vec<Election> = clients
        .iter()
        .map(|c| c.election(&name))
        .collect::<Result<_, _>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, coord::Result<Leadership>)>();
    let mut tasks = Vec::new();
    for e in &elections {
        let (e, tx) = (e.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = e.campaign(b"c").await;
            let _ = tx.send((now_us(), r));
        }));
    }
    queued(s, &name, n).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wakeups = || elections.iter().map(Election::wakeups).sum::<u64>();
    let (_, first) = within(STEP, "a leader", rx.recv())
        .await?
        .ok_or("no leader")?;
    let mut leader = first?;
    let w0 = wakeups();
    let mut d = Vec::new();
    for _ in 0..changes {
        tokio::time::sleep(Duration::from_millis(30)).await;
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
    drop(leader);
    for t in tasks {
        t.abort();
    }
    for c in &clients {
        let _ = c.close().await;
    }
    Ok((per, Stats::of(&d).ok_or("no samples")?))
}

/// Item 10 for one dialect.
async fn one(s: &Setup<'_>) -> Res<Vec<Row>> {
    let (clean, crashes) = (
        s.cx.sizes.clean_rounds.max(4),
        s.cx.sizes.crash_rounds.clamp(2, 4),
    );
    let mut out = Samples::default();
    pair(s, Kind::Peer, Kind::Peer, clean, crashes, &mut out).await?;
    pair(s, Kind::Coord, Kind::Coord, clean, crashes, &mut out).await?;
    // Both directions: clean and crash rounds alternate between coord and the peer.
    pair(s, Kind::Coord, Kind::Peer, clean * 2, crashes * 2, &mut out).await?;
    let d = s.dialect;
    let mut rows = Vec::new();
    for (what, list) in [("clean", &out.clean), ("crash", &out.crash)] {
        let base = Samples::of(list, (Kind::Peer, Kind::Peer)).ok_or("no peer samples")?;
        rows.push(Row::new(
            ITEM,
            format!("{d}: {what} handover peer → peer (n={})", base.n),
            base.show(),
            "",
            "",
            "",
            Verdict::Info,
        ));
        for dir in [
            (Kind::Peer, Kind::Coord),
            (Kind::Coord, Kind::Peer),
            (Kind::Coord, Kind::Coord),
        ] {
            let Some(st) = Samples::of(list, dir) else {
                continue;
            };
            let (x, xs) = ratio(st.median, base.median);
            rows.push(Row::new(
                ITEM,
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
    let (per, st) = herd(s, 20, s.cx.sizes.herd_changes.max(4)).await?;
    rows.push(Row::new(
        ITEM,
        format!(
            "{d}: herd, 20 coord candidates: wake-ups per change ({} changes)",
            st.n
        ),
        format!("{per:.2}"),
        "",
        "",
        "= 1",
        Verdict::check((per - 1.0).abs() < 1e-9),
    ));
    rows.push(Row::new(
        ITEM,
        format!("{d}: herd, 20 coord candidates: one handover"),
        st.show(),
        "",
        "",
        "",
        Verdict::Info,
    ));
    Ok(rows)
}

/// Item 10: every ZooKeeper dialect (nothing on the other backends).
pub async fn dialects(cx: &Cx) -> Vec<Row> {
    if cx.name != "zk" {
        return Vec::new();
    }
    let endpoint = cx
        .url
        .trim_start_matches("zk://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let zk = format!("{endpoint}{}", cx.backend.namespace());
    let mut rows = Vec::new();
    for dialect in [Dialect::CuratorLatch, Dialect::CuratorLock, Dialect::Kazoo] {
        let s = Setup {
            cx,
            dialect,
            zk: zk.clone(),
        };
        match one(&s).await {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(Row::failed(ITEM, &format!("{dialect}: handovers"), &e)),
        }
    }
    rows
}
