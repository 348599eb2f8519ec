//! Shared helpers: contender processes with recorded output, fault windows, bounded waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord_reliability::history::{Event, FaultWindow, Record};
use coord_reliability::now_us;
use coord_testkit::{require_backends, Kind, Server};

/// A unique namespace for one test run.
pub fn namespace(tag: &str) -> String {
    format!(
        "/rel-{tag}-{}-{}",
        std::process::id(),
        now_us() % 1_000_000_000
    )
}

/// The URL of `kind` at `endpoints` in `ns`, with a short session TTL (`ttl`).
pub fn url(kind: Kind, endpoints: &str, ns: &str, ttl: &str) -> String {
    match kind {
        Kind::ZooKeeper => format!("zk://{endpoints}{ns}?session_timeout={ttl}"),
        Kind::Etcd => format!("etcd://{endpoints}{ns}?session_ttl={ttl}"),
        Kind::Consul => format!("consul://{endpoints}{ns}?session_ttl={ttl}"),
    }
}

pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stopped: bool,
}

/// Contender processes and everything they printed.
#[derive(Default)]
pub struct Swarm {
    pub procs: BTreeMap<String, Proc>,
    pub records: Arc<Mutex<Vec<Record>>>,
    pub stderr: Arc<Mutex<Vec<(String, String)>>>,
    pub faults: Vec<FaultWindow>,
    pub exits: Vec<(String, Option<i32>)>,
}

impl Swarm {
    pub fn spawn(&mut self, id: &str, args: &[&str]) {
        self.spawn_wrapped(id, &[], args)
    }

    /// [`Swarm::spawn`] behind `wrapper` (e.g. `ip netns exec NS`, which execs the contender
    /// so that its pid and stdio are the contender's).
    pub fn spawn_wrapped(&mut self, id: &str, wrapper: &[std::ffi::OsString], args: &[&str]) {
        let contender = std::ffi::OsString::from(env!("CARGO_BIN_EXE_contender"));
        let (program, pre) = match wrapper.split_first() {
            Some((p, rest)) => (p.clone(), rest.iter().cloned().chain([contender]).collect()),
            None => (contender, Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(pre).arg("--id").arg(id).args(args);
        self.spawn_command(id, cmd);
    }

    /// Starts any process that speaks the contender's protocol (a mixed-fleet peer) as `id`.
    pub fn spawn_command(&mut self, id: &str, mut cmd: Command) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {id}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let records = self.records.clone();
        let who = id.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => records.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                    Err(e) => eprintln!("{who}: unparsable line {line:?}: {e}"),
                }
            }
        });
        let errs = self.stderr.clone();
        let who = id.to_owned();
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            if !s.is_empty() {
                errs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((who, s));
            }
        });
        let stdin = child.stdin.take();
        self.procs.insert(
            id.to_owned(),
            Proc {
                child,
                stdin,
                stopped: false,
            },
        );
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn pid(&self, id: &str) -> u32 {
        self.procs[id].child.id()
    }

    pub fn send(&mut self, id: &str, cmd: &str) {
        if let Some(p) = self.procs.get_mut(id) {
            if let Some(s) = p.stdin.as_mut() {
                let _ = writeln!(s, "{cmd}");
                let _ = s.flush();
            }
        }
    }

    fn signal(pid: u32, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }

    /// SIGSTOP (a long GC pause); the fault window stays open until [`Swarm::cont`].
    pub fn stop(&mut self, id: &str) {
        Self::signal(self.pid(id), "STOP");
        if let Some(p) = self.procs.get_mut(id) {
            p.stopped = true;
        }
        self.faults.push(FaultWindow {
            id: Some(id.into()),
            kind: "sigstop".into(),
            from_us: now_us(),
            to_us: u64::MAX,
        });
    }

    pub fn cont(&mut self, id: &str) {
        Self::signal(self.pid(id), "CONT");
        if let Some(p) = self.procs.get_mut(id) {
            p.stopped = false;
        }
        let now = now_us();
        if let Some(f) = self
            .faults
            .iter_mut()
            .rev()
            .find(|f| f.id.as_deref() == Some(id) && f.kind == "sigstop" && f.to_us == u64::MAX)
        {
            f.to_us = now;
        }
    }

    /// SIGKILL; the process is reaped and forgotten (its records stay).
    pub fn kill(&mut self, id: &str) {
        if let Some(mut p) = self.procs.remove(id) {
            self.faults.push(FaultWindow {
                id: Some(id.into()),
                kind: "sigkill".into(),
                from_us: now_us(),
                to_us: u64::MAX,
            });
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// A server-wide fault window (everyone affected) from `from_us` to now + `grace`: after
    /// a resume the server still ends the sessions whose TTL ran out during the fault, and
    /// their holders learn it a moment later.
    pub fn server_fault(&mut self, kind: &str, from_us: u64, grace: Duration) {
        self.faults.push(FaultWindow {
            id: None,
            kind: kind.into(),
            from_us,
            to_us: now_us() + grace.as_micros() as u64,
        });
    }

    /// Waits (bounded) until `pred` holds over the records; panics with `what` otherwise.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        pred: impl FnMut(&[Record]) -> Option<T>,
    ) -> T {
        match self.try_wait_for(limit, pred) {
            Some(v) => v,
            None => {
                self.dump();
                panic!("timed out after {limit:?} waiting for {what}");
            }
        }
    }

    /// Waits (bounded) until `pred` holds over the records; `None` if it did not in time.
    pub fn try_wait_for<T>(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&[Record]) -> Option<T>,
    ) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = pred(&self.records()) {
                return Some(v);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last session (id and state) each process reported.
    pub fn sessions(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for r in self.records() {
            if let Event::Session { session, state } = &r.event {
                out.insert(r.id.clone(), (session.clone(), state.clone()));
            }
        }
        out
    }

    pub fn dump(&self) {
        for r in self.records().iter().rev().take(40).rev() {
            eprintln!("  {r:?}");
        }
        // The windows that excuse an overlap (or not): what a failed check is judged against.
        for f in &self.faults {
            eprintln!("  fault {f:?}");
        }
        for (id, s) in self.stderr.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            eprintln!("  stderr of {id}: {s}");
        }
    }

    /// Asks every process to quit (end of stdin), waits at most `limit`, kills the rest.
    /// Returns the ids that had to be killed.
    pub fn quit_all(&mut self, limit: Duration) -> Vec<String> {
        for p in self.procs.values_mut() {
            if p.stopped {
                Self::signal(p.child.id(), "CONT");
                p.stopped = false;
            }
            p.stdin = None;
        }
        let start = Instant::now();
        let mut killed = Vec::new();
        for (id, mut p) in std::mem::take(&mut self.procs) {
            loop {
                match p.child.try_wait() {
                    Ok(Some(st)) => {
                        self.exits.push((id.clone(), st.code()));
                        break;
                    }
                    Ok(None) if start.elapsed() < limit => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        killed.push(id.clone());
                        self.exits.push((id.clone(), None));
                        break;
                    }
                }
            }
        }
        killed
    }

    /// Any process that wrote "panicked" to stderr.
    pub fn panics(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| s.contains("panicked"))
            .map(|(id, s)| format!("{id}: {s}"))
            .collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            if p.stopped {
                Self::signal(p.child.id(), "CONT");
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The current holder of `role` per the records: the last Granted not followed by its
/// Releasing/Lost, by id.
pub fn holders(records: &[Record], role: &str) -> BTreeMap<String, u64> {
    let mut h = BTreeMap::new();
    for r in records {
        match &r.event {
            Event::Granted { role: x, token } if x == role => {
                h.insert(r.id.clone(), *token);
            }
            Event::Releasing { role: x, token } | Event::Lost { role: x, token }
                if x == role && h.get(&r.id) == Some(token) =>
            {
                h.remove(&r.id);
            }
            _ => {}
        }
    }
    h
}

/// A current-thread runtime for the few async calls a test makes.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `f` with a bound; panics with `what` if it does not finish.
pub fn bounded<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> T {
    rt.block_on(async {
        match tokio::time::timeout(limit, f).await {
            Ok(v) => v,
            Err(_) => panic!("{what} did not finish within {limit:?}"),
        }
    })
}

/// A private server of `kind` (restarted, paused or compacted by the test), or `None` (loud
/// skip) when it cannot be started and backends are not required.
pub async fn own_server(kind: Kind) -> Option<Server> {
    match tokio::task::spawn_blocking(move || Server::start(kind))
        .await
        .expect("start task")
    {
        Ok(s) => Some(s),
        Err(e) if require_backends() => {
            panic!("{kind} is required (COORD_REQUIRE_BACKENDS=1) but did not start: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: {kind} not available: {e}");
            None
        }
    }
}
