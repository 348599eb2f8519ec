//! Item 14 on etcd and Consul: handovers in the etcd `concurrency` dialect next to `etcdctl lock`
//! processes, and in the Consul `api.Lock` dialect next to `consul lock` processes, measured in
//! the same run (issue 15).
//!
//! Three pairs of members take turns in one lock: two peer processes, two coord candidates in
//! the dialect, and one coord candidate with one peer (both directions). A clean handover runs
//! from the holder's release (coord: the call to `resign`; a peer: its `SIGTERM`, on which it
//! releases and exits — a new peer process then queues again) to the successor's grant (coord:
//! `campaign` returns; a peer: its "held" line is read); a crash handover from the holder's
//! death (coord: its session's keep-alive stopped; a peer: `SIGKILL`) to the successor's
//! grant. coord's sessions have a 2 s TTL; `etcdctl lock --ttl=2` too, while `consul lock`'s
//! sessions have Consul's defaults (15 s TTL, which Consul enforces up to twice over, and a
//! 15 s lock-delay after the invalidation), so its crash rows are few and long. The herd: 20
//! coord candidates in the dialect, wake-ups per leadership change (1 on etcd; every waiter on
//! Consul's single key).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coord::dialect::Dialect;
use coord::election::{Election, Leadership};
use coord::{Client, SessionOptions};
use tokio::sync::mpsc;

use crate::cx::{crash, within, Cx, STEP};
use crate::dialects::{now_us, since, Kind};
use crate::stats::{ms, ratio, Res, Row, Stats, Verdict};

const ITEM: u8 = 14;
const SESSION: Duration = Duration::from_secs(2);
/// A new candidate is queued (its key read or its blocking query parked) after this.
const SETTLE: Duration = Duration::from_millis(200);

struct Setup<'a> {
    cx: &'a Cx,
    dialect: Dialect,
    /// The agent's or member's `host:port`.
    endpoint: String,
    /// The raw prefix of this run's names (the namespace, without the leading `/`).
    ns: String,
}

/// A peer process in its own process group (killed with it when dropped); `held` is stamped
/// when its "I hold it" line is read.
struct Peer {
    child: Child,
    held: Arc<Mutex<Option<u64>>>,
}

impl Peer {
    fn spawn(s: &Setup<'_>, name: &str) -> Res<Peer> {
        use std::os::unix::process::CommandExt;
        let tools = coord_testkit::tools_dir().join("bin");
        // coord's `election(name)` is the path `/elections/<name>`.
        let raw = format!("{}/elections/{name}", s.ns);
        let setpriv = std::path::Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]);
            c
        } else {
            Command::new("env")
        };
        let marker: Box<dyn Fn(&str) -> bool + Send> = if s.dialect == Dialect::EtcdConcurrency {
            cmd.arg(tools.join("etcdctl"))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", s.endpoint))
                .args(["lock", "--ttl=2", &raw]);
            let prefix = format!("{raw}/");
            Box::new(move |l: &str| l.starts_with(&prefix))
        } else {
            cmd.arg(tools.join("consul"))
                .arg("lock")
                .arg(format!("-http-addr={}", s.endpoint))
                .arg(&raw)
                .arg("echo HELD; exec sleep 600");
            Box::new(|l: &str| l == "HELD")
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let held = Arc::new(Mutex::new(None));
        let h = held.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if marker(&line) {
                    let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
                    g.get_or_insert(now_us());
                }
            }
        });
        Ok(Peer { child, held })
    }

    fn held(&self) -> Option<u64> {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM: the peer releases and exits (waited for, bounded).
    async fn terminate(&mut self) {
        self.signal("TERM");
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
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
    Peer(Peer),
}

impl Member {
    fn kind(&self) -> Kind {
        match self {
            Member::Coord { .. } => Kind::Coord,
            Member::Peer(_) => Kind::Peer,
        }
    }

    fn start(s: &Setup<'_>, kind: Kind, name: &str) -> Res<Member> {
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
            Kind::Peer => Ok(Member::Peer(Peer::spawn(s, name)?)),
        }
    }

    /// A placeholder for a member about to be replaced: a coord candidate that has not
    /// campaigned (no I/O).
    fn idle(s: &Setup<'_>, name: &str) -> Res<Member> {
        let client = Client::new(s.cx.backend.clone()).with_default_dialect(s.dialect);
        let election = client.election(name)?;
        let (_, rx) = mpsc::unbounded_channel();
        Ok(Member::Coord {
            client,
            election,
            rx,
            task: None,
            held: None,
        })
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

    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        match self {
            Member::Coord { rx, held, .. } => {
                let (t, r) = within(bound, "coord elected", rx.recv())
                    .await?
                    .ok_or("the campaign ended")?;
                *held = Some(r?);
                Ok(t)
            }
            Member::Peer(p) => {
                within(bound, "the peer holds the lock", async {
                    loop {
                        if let Some(t) = p.held() {
                            return t;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .await
            }
        }
    }

    /// Gives the role up; when the release started. It queues again only once the successor
    /// holds ([`Member::requeue`]): on a single Consul key a candidate that campaigns again at
    /// once may win the key back (there is no queue).
    async fn resign(&mut self) -> Res<u64> {
        match self {
            Member::Coord { held, .. } => {
                let l = held.take().ok_or("coord does not hold the role")?;
                let t = now_us();
                l.resign().await?;
                Ok(t)
            }
            Member::Peer(p) => {
                let t = now_us();
                p.terminate().await;
                Ok(t)
            }
        }
    }

    /// Campaigns again after a resign (a peer: a new process).
    fn requeue(&mut self, s: &Setup<'_>, name: &str) -> Res<()> {
        match self {
            Member::Coord { .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                if let Member::Coord { rx: old, .. } = self {
                    *old = rx;
                }
                self.campaign(tx);
            }
            Member::Peer(p) => *p = Peer::spawn(s, name)?,
        }
        Ok(())
    }

    async fn crash(self) -> Res<u64> {
        match self {
            Member::Coord {
                client, held, task, ..
            } => {
                let l = held.ok_or("coord does not hold the role")?;
                let session = client
                    .current_session()
                    .await
                    .ok_or("the leader has no session")?;
                let t = now_us();
                crash(&session)?;
                if let Some(t) = task {
                    t.abort();
                }
                // Not released: the dead holder's key goes with its session.
                std::mem::forget(l);
                Ok(t)
            }
            Member::Peer(mut p) => {
                let t = now_us();
                p.kill();
                Ok(t)
            }
        }
    }

    async fn quit(self) {
        match self {
            Member::Coord { held, task, .. } => {
                if let Some(l) = held {
                    let _ = l.resign().await;
                }
                if let Some(t) = task {
                    t.abort();
                }
            }
            Member::Peer(mut p) => p.terminate().await,
        }
    }
}

/// Lets a new candidate queue: on etcd until the election shows `n` keys; a single Consul key
/// shows its holder only, so there a fixed pause.
async fn queued(s: &Setup<'_>, name: &str, n: usize) -> Res<()> {
    if !s.dialect.herd_free() {
        tokio::time::sleep(SETTLE * 2).await;
        return Ok(());
    }
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

type Sample = ((Kind, Kind), Duration);

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

/// Two members of kinds `a` and `b` take turns: `clean` releases, then `crashes` deaths.
async fn pair(
    s: &Setup<'_>,
    a: Kind,
    b: Kind,
    clean: usize,
    crashes: usize,
    out: &mut Samples,
) -> Res<()> {
    let name = format!("d-{}-{}-{}", s.dialect, a.name(), b.name());
    let mut holder = Member::start(s, a, &name)?;
    holder.granted(STEP).await?;
    let mut waiter = Member::start(s, b, &name)?;
    queued(s, &name, 2).await?;
    // `consul lock`'s sessions: 15 s TTL (up to 30 s to expire) and a 15 s lock-delay.
    let crash_bound = Duration::from_secs(90);
    let result = async {
        for _ in 0..clean {
            let t0 = holder.resign().await?;
            let t1 = waiter.granted(STEP).await?;
            out.clean
                .push(((holder.kind(), waiter.kind()), since(t0, t1)));
            holder.requeue(s, &name)?;
            std::mem::swap(&mut holder, &mut waiter);
            queued(s, &name, 2).await?;
        }
        for _ in 0..crashes {
            let dead = holder.kind();
            // The replacement joins once the successor holds (see `resign`).
            let idle = Member::idle(s, &name)?;
            let t0 = std::mem::replace(&mut holder, idle).crash().await?;
            let t1 = waiter.granted(crash_bound).await?;
            out.crash.push(((dead, waiter.kind()), since(t0, t1)));
            holder = Member::start(s, dead, &name)?;
            std::mem::swap(&mut holder, &mut waiter);
            queued(s, &name, 2).await?;
        }
        Ok::<(), crate::stats::BoxError>(())
    }
    .await;
    waiter.quit().await;
    holder.quit().await;
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Elected>();
    let mut tasks = Vec::new();
    for e in &elections {
        let (e, tx) = (e.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r = e.campaign(b"c").await;
            let _ = tx.send((now_us(), r));
        }));
    }
    queued(s, &name, n).await?;
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

async fn one(s: &Setup<'_>) -> Res<Vec<Row>> {
    let clean = s.cx.sizes.clean_rounds.clamp(4, 10);
    // `consul lock` crashes take 30-45 s each: one per direction there.
    let crashes = if s.dialect.herd_free() {
        s.cx.sizes.crash_rounds.clamp(2, 4)
    } else {
        1
    };
    let mut out = Samples::default();
    pair(s, Kind::Peer, Kind::Peer, clean, crashes, &mut out).await?;
    pair(s, Kind::Coord, Kind::Coord, clean, crashes, &mut out).await?;
    pair(s, Kind::Coord, Kind::Peer, clean * 2, crashes * 2, &mut out).await?;
    let d = s.dialect;
    let mut rows = Vec::new();
    for (what, list) in [("clean", &out.clean), ("crash", &out.crash)] {
        let base = of(list, (Kind::Peer, Kind::Peer)).ok_or("no peer samples")?;
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
            let Some(st) = of(list, dir) else {
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
        if d.herd_free() {
            "= 1"
        } else {
            "(single key: every waiter)"
        },
        if d.herd_free() {
            Verdict::check((per - 1.0).abs() < 1e-9)
        } else {
            Verdict::Info
        },
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

/// Item 14 on etcd (the concurrency dialect next to `etcdctl lock`) and Consul (the `api.Lock`
/// dialect next to `consul lock`); nothing elsewhere.
pub async fn dialects(cx: &Cx) -> Vec<Row> {
    let (dialect, scheme) = match cx.name {
        "etcd" => (Dialect::EtcdConcurrency, "etcd://"),
        "consul" => (Dialect::ConsulLock, "consul://"),
        _ => return Vec::new(),
    };
    let endpoint = cx
        .url
        .trim_start_matches(scheme)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned();
    let s = Setup {
        cx,
        dialect,
        endpoint,
        ns: cx.backend.namespace().trim_matches('/').to_owned(),
    };
    match one(&s).await {
        Ok(r) => r,
        Err(e) => vec![Row::failed(ITEM, &format!("{dialect}: handovers"), &e)],
    }
}
