//! A mixed fleet: coord candidates (in this process, each on its own client and session) and
//! peer processes (etcdctl, consul lock) in one election or lock, with the history of who
//! held the role, the fenced resource, and a driver that hands the role over many times.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::recipes::dialect::{Candidacy, Dialect, DialectDriver};
use coord::recipes::{HoldState, SuspendPolicy};
use coord::{Path, Session, SessionOptions};
use coord_reliability::fence::FencedResource;
use coord_reliability::history::{check, Event, FaultWindow, Record, Report};
use coord_reliability::now_us;
use tokio::sync::mpsc;

/// Locks a mutex, ignoring poisoning (a panicking reader thread must not hide the records).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The history of one role.
pub struct History {
    pub role: &'static str,
    pub records: Mutex<Vec<Record>>,
    pub faults: Mutex<Vec<FaultWindow>>,
    pub fence: FencedResource,
}

impl History {
    pub fn new(role: &'static str) -> Arc<History> {
        Arc::new(History {
            role,
            records: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            fence: FencedResource::start().expect("fenced resource"),
        })
    }

    pub fn record_at(&self, id: &str, t_us: u64, event: Event) {
        lock(&self.records).push(Record {
            t_us,
            id: id.to_owned(),
            event,
        });
    }

    pub fn record(&self, id: &str, event: Event) {
        self.record_at(id, now_us(), event);
    }

    pub fn granted(&self, id: &str, t_us: u64, token: u64) {
        let role = self.role.to_owned();
        self.record_at(id, t_us, Event::Granted { role, token });
        let ok = self.fence.write(id, token);
        let role = self.role.to_owned();
        self.record(
            id,
            Event::Write {
                role,
                token,
                ok,
                zombie: false,
            },
        );
    }

    pub fn releasing(&self, id: &str, token: u64) {
        let role = self.role.to_owned();
        self.record(id, Event::Releasing { role, token });
    }

    pub fn lost(&self, id: &str, token: u64) {
        let role = self.role.to_owned();
        self.record(id, Event::Lost { role, token });
    }

    pub fn fault(&self, id: &str, kind: &str) {
        lock(&self.faults).push(FaultWindow {
            id: Some(id.to_owned()),
            kind: kind.to_owned(),
            from_us: now_us(),
            to_us: u64::MAX,
        });
    }

    pub fn report(&self) -> Report {
        let mut logs = BTreeMap::new();
        logs.insert(self.role.to_owned(), self.fence.log());
        check(&lock(&self.records), &lock(&self.faults), &logs, now_us())
    }
}

/// What the test tells a coord member holding the role to do.
pub enum Cmd {
    Resign,
    /// Stop renewing the session without closing it (a crashed process); the hold is kept
    /// (not released) so nothing is cleaned up on its behalf.
    Crash,
}

/// A coord candidate: a task campaigning through the dialect driver on its own session.
pub struct CoordMember {
    pub id: String,
    pub session: Arc<dyn Session>,
    /// The token while it holds the role.
    pub held: Arc<Mutex<Option<u64>>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl CoordMember {
    pub fn start(
        id: &str,
        driver: Arc<dyn DialectDriver>,
        session: Arc<dyn Session>,
        name: Path,
        history: Arc<History>,
    ) -> CoordMember {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let held = Arc::new(Mutex::new(None));
        let (hid, hs, hheld) = (id.to_owned(), session.clone(), held.clone());
        let task = tokio::spawn(async move {
            let role = history.role.to_owned();
            history.record(&hid, Event::Campaigning { role });
            let value = hid.as_bytes().to_vec();
            let wakeups = Default::default();
            let acquired = driver
                .acquire(Candidacy {
                    session: hs,
                    name: &name,
                    value: &value,
                    try_only: false,
                    policy: SuspendPolicy::LoseOnSuspend,
                    wakeups: &wakeups,
                })
                .await;
            let mut hold = match acquired {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => {
                    let (what, msg) = ("acquire".to_owned(), e.to_string());
                    history.record(&hid, Event::Error { what, msg });
                    return;
                }
            };
            let token = hold.token();
            history.granted(&hid, now_us(), token);
            *lock(&hheld) = Some(token);
            let mut states = hold.states();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Resign) | None => {
                        history.releasing(&hid, token);
                        *lock(&hheld) = None;
                        let _ = hold.release().await;
                    }
                    Some(Cmd::Crash) => {
                        *lock(&hheld) = None;
                        // Keep the hold (a crashed process cleans nothing up) until aborted.
                        futures::future::pending::<()>().await;
                    }
                },
                _ = async {
                    while *states.borrow_and_update() != HoldState::Lost {
                        if states.changed().await.is_err() {
                            break;
                        }
                    }
                } => {
                    history.lost(&hid, token);
                    *lock(&hheld) = None;
                }
            }
        });
        CoordMember {
            id: id.to_owned(),
            session,
            held,
            cmd: tx,
            task,
        }
    }

    /// Joins through a client of its own on `url`, with a 2 s session.
    pub async fn join(
        url: &str,
        dialect: Dialect,
        id: &str,
        name: &Path,
        history: &Arc<History>,
    ) -> CoordMember {
        let backend = coord::connect_backend(url).await.expect("connect");
        let session = backend
            .open_session(SessionOptions::new().ttl(Duration::from_secs(2)))
            .await
            .expect("session");
        let driver = backend
            .dialect_driver(dialect)
            .expect("the backend serves the dialect");
        let m = CoordMember::start(id, driver, session, name.clone(), history.clone());
        // The client lives as long as the member's task needs it.
        std::mem::forget(backend);
        m
    }

    /// Resigns the role it holds and waits until it has let go.
    pub async fn resign(self) {
        self.send(Cmd::Resign);
        wait_until("the release", Duration::from_secs(10), || {
            self.token().is_none().then_some(())
        })
        .await;
    }

    /// Crashes while holding `token`: `stop_session` stops its session's keep-alive without
    /// closing it; the hold stays until the session expires (a dead process cleans nothing up).
    pub fn crash(self, history: &History, token: u64, stop_session: impl FnOnce(&dyn Session)) {
        history.fault(&self.id, "crash");
        stop_session(&*self.session);
        self.send(Cmd::Crash);
        history.lost(&self.id, token);
        std::mem::forget(self);
    }

    pub fn token(&self) -> Option<u64> {
        *lock(&self.held)
    }

    pub fn send(&self, cmd: Cmd) {
        let _ = self.cmd.send(cmd);
    }
}

impl Drop for CoordMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A peer process (in its own process group, killed with it when dropped), whose stdout
/// lines are collected; `seen` is set (with the time) when a line matching the "I hold it"
/// marker arrives.
pub struct PeerProc {
    pub id: String,
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// When the peer first said it holds the role, and the line.
    pub seen: Arc<Mutex<Option<(u64, String)>>>,
    /// Set once the test accounted for the grant (token and history).
    pub token: Option<u64>,
}

/// A command that dies with this process where util-linux's `setpriv` is there.
pub fn command(program: &std::path::Path) -> Command {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if setpriv.exists() {
        let mut c = Command::new(setpriv);
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PeerProc {
    pub fn spawn(
        id: &str,
        mut cmd: Command,
        held_marker: impl Fn(&str) -> bool + Send + 'static,
    ) -> PeerProc {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn the peer process");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(None));
        let (l, s) = (lines.clone(), seen.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if held_marker(&line) {
                    let mut s = lock(&s);
                    if s.is_none() {
                        *s = Some((now_us(), line.clone()));
                    }
                }
                lock(&l).push(line);
            }
        });
        let who = id.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{who} stderr] {line}");
            }
        });
        PeerProc {
            id: id.to_owned(),
            child,
            lines,
            seen,
            token: None,
        }
    }

    pub fn seen(&self) -> Option<(u64, String)> {
        lock(&self.seen).clone()
    }

    fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM (a clean exit: the peers resign or release on it), then waits for the exit.
    pub fn terminate(&mut self, limit: Duration) {
        self.signal_group("TERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("peer {} did not exit within {limit:?} of SIGTERM", self.id);
    }

    /// SIGKILL of the whole group (the peer and its child).
    pub fn kill(&mut self) {
        self.signal_group("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A member of a mixed fleet.
pub enum Member {
    Coord(CoordMember),
    Peer(PeerProc),
}

impl Member {
    /// Whether it says it holds the role.
    pub fn holds(&self) -> bool {
        match self {
            Member::Coord(c) => c.token().is_some(),
            Member::Peer(p) => p.seen().is_some(),
        }
    }
}

/// The index of the member holding the role (waits for one, up to a minute).
pub async fn holder_index(members: &[Member]) -> usize {
    wait_until("a holder", Duration::from_secs(60), || {
        members.iter().position(Member::holds)
    })
    .await
}

/// The holders' tokens as `driver.observe` reports them, in order, until the task is aborted.
pub async fn observe_tokens(
    driver: &Arc<dyn DialectDriver>,
    name: &Path,
) -> (Arc<Mutex<Vec<Option<u64>>>>, tokio::task::JoinHandle<()>) {
    let observed = Arc::new(Mutex::new(Vec::new()));
    let mut holders = driver.observe(name).await.expect("observe");
    let obs = observed.clone();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(Ok(l)) = holders.next().await {
            lock(&obs).push(l.map(|l| l.token));
        }
    });
    (observed, task)
}

/// Waits until coord's `observe()` names `token` as the holder's.
pub async fn wait_observed(observed: &Mutex<Vec<Option<u64>>>, token: u64) {
    wait_until(
        "coord's observe() to name the holder",
        Duration::from_secs(10),
        || (lock(observed).last().copied().flatten() == Some(token)).then_some(()),
    )
    .await;
}

/// Ends a run: the waiting members leave first, then the holder (`idx`, holding `token`) lets
/// go, so that nobody is granted the role after the history's end without its holder saying so.
pub async fn finish(
    members: &mut Vec<Member>,
    idx: usize,
    token: u64,
    history: &History,
    limit: Duration,
) {
    let holder = members.remove(idx);
    for m in members.drain(..) {
        if let Member::Peer(mut p) = m {
            p.terminate(limit);
        }
    }
    match holder {
        Member::Coord(c) => c.resign().await,
        Member::Peer(mut p) => {
            history.releasing(&p.id, token);
            p.terminate(limit);
        }
    }
}

/// Polls `f` every 20 ms until it gives a value, for at most `limit`.
pub async fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints the report and asserts that the history is clean.
pub fn assert_clean(history: &History, min_grants: usize) {
    let rep = history.report();
    let grants = rep.grants.get(history.role).copied().unwrap_or(0);
    eprintln!(
        "{}: {grants} grants, {} accepted writes, {} fenced overlaps, stale accepted {}, \
         duplicates {:?}, inversions {:?}, overlaps {:?}",
        history.role,
        rep.writes_accepted,
        rep.fenced_overlaps,
        rep.stale_writes_accepted,
        rep.duplicate_tokens,
        rep.inversions,
        rep.overlaps
    );
    assert!(rep.ok(), "the history checker found violations: {rep:?}");
    assert_eq!(rep.stale_writes_accepted, 0);
    assert!(grants >= min_grants, "only {grants} grants");
}
