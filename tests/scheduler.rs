//! The `scheduler` example as a service: three processes on every real backend compiled in
//! (servers from the test kit), killed and stopped in turn; and a one-process smoke run on
//! `mem://` (a mem store lives inside one process, so several processes cannot share it).
//!
//! The scenario (see [`scenario`]) checks one leader at a time, handovers after `kill -9` and
//! SIGTERM with growing fencing tokens, deregistration (after a TTL for a killed process, at
//! once for a stopped one), durable tokens across a deletion of the election's directory, a
//! restarted id registering at once, and a ledger written only by the leader of the moment.
//! Timings are printed (run with `--nocapture` to see them); only generous hang bounds are
//! asserted. Every process started is killed when the test ends, on a panic too; their
//! output is printed then, and also on success with `SCHEDULER_TEST_LOG=1`.
#![cfg(unix)]
// The multi-process scenario is compiled in only with a real backend.
#![cfg_attr(
    not(any(feature = "zk", feature = "etcd", feature = "consul")),
    allow(dead_code)
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The election's directory (`Client::election("scheduler")`).
const ELECTION: &str = "/elections/scheduler";
const LEDGER: &str = "/ledger";
/// The bound on any single wait (a hang bound, not a timing assertion).
const HANG: Duration = Duration::from_secs(40);

/// The cargo features this test was compiled with (the example is built with the same).
fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "mem") {
        f.push("mem");
    }
    if cfg!(feature = "zk") {
        f.push("zk");
    }
    if cfg!(feature = "etcd") {
        f.push("etcd");
    }
    if cfg!(feature = "consul") {
        f.push("consul");
    }
    if cfg!(feature = "full") {
        f.push("full");
    }
    f
}

/// Builds the example once, with this test's features, and returns the executable.
fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "coord", "--example", "scheduler"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Without the variables cargo set for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*…):
        // build scripts that watch them (ring's) would rerun, and the next `cargo test` again.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let per_crate = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ];
            if per_crate.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(&*k);
            }
        }
        let f = features();
        if f.len() == 5 {
            cmd.arg("--all-features"); // as the test was built: no second build of the deps
        } else if !f.is_empty() {
            cmd.args(["--features", &f.join(",")]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example scheduler failed");
        // This test runs from <target>/<profile>/deps; examples are in <target>/<profile>/examples.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let bin = profile_dir
            .join("examples")
            .join(format!("scheduler{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no example binary at {}", bin.display());
        bin
    })
    .clone()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One line of a process: `[secs.micros] id: message`.
fn parse_line(line: &str) -> Option<(f64, &str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (ts, rest) = rest.split_once("] ")?;
    let (id, msg) = rest.split_once(": ")?;
    Some((ts.parse().ok()?, id, msg))
}

/// One started process.
struct Proc {
    id: String,
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
    /// When it was killed with SIGKILL (Unix time, after it was reaped).
    killed_at: Option<f64>,
}

impl Proc {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn has_line(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
    fn alive(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status.is_none()
    }
}

/// The processes of one scenario; kills every one still running when dropped (on a panic
/// too, then printing what they printed).
struct Fleet {
    url: String,
    backend: &'static str,
    procs: Vec<Proc>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        if std::thread::panicking() || std::env::var_os("SCHEDULER_TEST_LOG").is_some() {
            eprintln!("---- [{}] output of every process ----", self.backend);
            for l in self.all_lines() {
                eprintln!("{l}");
            }
            for p in &self.procs {
                let e = p.stderr.lock().unwrap_or_else(|p| p.into_inner());
                if !e.trim().is_empty() {
                    eprintln!("---- stderr of {} ----\n{e}", p.id);
                }
            }
        }
    }
}

impl Fleet {
    fn new(url: &str, backend: &'static str) -> Fleet {
        Fleet {
            url: url.to_owned(),
            backend,
            procs: Vec::new(),
        }
    }

    fn say(&self, msg: impl std::fmt::Display) {
        println!("[{}] {msg}", self.backend);
    }

    /// Starts `scheduler --id id` and waits until it listens; returns its index.
    fn start(&mut self, id: &str) -> usize {
        let mut child = Command::new(binary())
            .args(["--url", &self.url, "--id", id, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the scheduler example");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(l);
                }
            });
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                let mut err = err;
                let _ = err.read_to_string(&mut s);
                *stderr.lock().unwrap_or_else(|p| p.into_inner()) = s;
            });
        }
        self.procs.push(Proc {
            id: id.to_owned(),
            child,
            port: 0,
            lines,
            stderr,
            status: None,
            killed_at: None,
        });
        let i = self.procs.len() - 1;
        let (port, _) = wait_for(&format!("{id} to listen"), HANG, || {
            let p = &mut self.procs[i];
            if let Some(port) = p.lines().iter().find_map(|l| {
                l.split_once("listening on 127.0.0.1:")
                    .and_then(|(_, port)| port.trim().parse().ok())
            }) {
                return Some(port);
            }
            assert!(p.alive(), "{id} exited: {:?}", p.status);
            None
        });
        self.procs[i].port = port;
        i
    }

    /// The indexes of the processes still running.
    fn alive(&mut self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| self.procs[i].alive())
            .collect()
    }

    /// The running process with this id.
    fn find(&mut self, id: &str) -> usize {
        self.alive()
            .into_iter()
            .find(|&i| self.procs[i].id == id)
            .unwrap_or_else(|| panic!("no running process {id}"))
    }

    fn kill9(&mut self, i: usize) {
        let p = &mut self.procs[i];
        p.child.kill().expect("kill -9");
        p.status = Some(p.child.wait().expect("wait"));
        p.killed_at = Some(unix_now());
    }

    fn sigterm(&mut self, i: usize) {
        let pid = self.procs[i].child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
    }

    /// Waits until process `i` exits; asserts exit 0 and `shut down`.
    fn wait_clean_exit(&mut self, i: usize) -> Duration {
        let id = self.procs[i].id.clone();
        let (_, took) = wait_for(&format!("{id} to exit"), HANG, || {
            (!self.procs[i].alive()).then_some(())
        });
        let p = &self.procs[i];
        assert!(
            p.status.is_some_and(|s| s.success()),
            "{id} exited with {:?}",
            p.status
        );
        // The reader may be a moment behind the exit.
        wait_for(&format!("{id} to print `shut down`"), HANG, || {
            p.has_line(": shut down").then_some(())
        });
        took
    }

    /// The leader every running process reports (not stale), once they all agree and `ok`
    /// accepts it: (id, token) and how long that took.
    fn agreed_leader(
        &mut self,
        what: &str,
        ok: impl Fn(&str, u64) -> bool,
    ) -> ((String, u64), Duration) {
        wait_for(what, HANG, || {
            let alive = self.alive();
            let mut seen = BTreeSet::new();
            for &i in &alive {
                let v = leader_view(self.procs[i].port)?;
                if v.stale {
                    return None;
                }
                seen.insert((v.id?, v.token?));
            }
            let ids: BTreeSet<String> = alive.iter().map(|&i| self.procs[i].id.clone()).collect();
            let [(id, token)] = seen.into_iter().collect::<Vec<_>>().try_into().ok()?;
            // The leader itself knows: its work started.
            let knows = alive.iter().any(|&i| {
                self.procs[i].id == id
                    && self.procs[i].has_line(&format!("LEADING with token {token}"))
            });
            (ids.contains(&id) && knows && ok(&id, token)).then_some((id, token))
        })
    }

    /// Waits until every running process's `/instances` satisfies `ok`.
    fn instances_until(&mut self, what: &str, ok: impl Fn(&[String]) -> bool) -> Duration {
        wait_for(what, HANG, || {
            for i in self.alive() {
                if !ok(&instances_view(self.procs[i].port)?) {
                    return None;
                }
            }
            Some(())
        })
        .1
    }

    /// Waits until `id`'s term of `token` has appended `n` entries to the ledger.
    fn wait_writes(&mut self, id: &str, token: u64, n: usize) {
        let i = self.find(id);
        let needle = format!("ledger write accepted: {id} {token} ");
        wait_for(&format!("{n} ledger writes of {id}"), HANG, || {
            let p = &self.procs[i];
            (p.lines().iter().filter(|l| l.contains(&needle)).count() >= n).then_some(())
        });
    }

    fn all_lines(&self) -> Vec<String> {
        let mut all: Vec<String> = self.procs.iter().flat_map(|p| p.lines()).collect();
        all.sort_by(|a, b| {
            let ta = parse_line(a).map(|x| x.0).unwrap_or(0.0);
            let tb = parse_line(b).map(|x| x.0).unwrap_or(0.0);
            ta.total_cmp(&tb)
        });
        all
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `bound` (then panics).
fn wait_for<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < bound, "waited over {bound:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on 127.0.0.1:port; the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The raw text of a top-level field of a flat JSON object.
fn json_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &body[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

struct LeaderView {
    id: Option<String>,
    token: Option<u64>,
    stale: bool,
}

fn leader_view(port: u16) -> Option<LeaderView> {
    let body = http_get(port, "/leader")?;
    let id = json_field(&body, "id")?;
    Some(LeaderView {
        id: (id != "null").then(|| id.trim_matches('"').to_owned()),
        token: json_field(&body, "token")?.parse().ok(),
        stale: json_field(&body, "stale")? == "true",
    })
}

fn instances_view(port: u16) -> Option<Vec<String>> {
    let body = http_get(port, "/instances")?;
    let inner = body.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The test's own client on the store, for checks that must not go through a process's
/// caches.
struct Store {
    rt: tokio::runtime::Runtime,
    client: coord::Client,
}

impl Store {
    fn connect(url: &str) -> Store {
        // Multi-threaded: the client's connection tasks run between the test's calls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt
            .block_on(coord::connect(url))
            .expect("connect the test's client");
        Store { rt, client }
    }

    /// The registered instances: id -> port.
    fn registered(&self) -> BTreeMap<String, u16> {
        self.rt
            .block_on(self.client.registry().discover("scheduler"))
            .expect("discover")
            .into_iter()
            .map(|i| (i.id, i.port))
            .collect()
    }

    fn path(p: &str) -> coord::Path {
        coord::Path::new(p).expect("path")
    }
}

/// The scenario on a real backend at `url` (its `session_ttl` is `ttl`).
fn scenario(url: &str, backend: &'static str, ttl: Duration) {
    let store = Store::connect(url);
    let mut fleet = Fleet::new(url, backend);
    fleet.say(format!("url {url}"));
    let mut tokens = Vec::new();

    // 1. Three instances: one leader, agreed on by all; all three registered.
    for id in ["s-1", "s-2", "s-3"] {
        fleet.start(id);
    }
    let ((l1, t1), took) = fleet.agreed_leader("a first leader", |_, _| true);
    fleet.say(format!(
        "{l1} leads with token {t1}; all three agree after {}",
        secs(took)
    ));
    tokens.push(t1);
    fleet.instances_until("three instances", |v| v == ["s-1", "s-2", "s-3"]);
    fleet.wait_writes(&l1, t1, 3);
    let i1 = fleet.find(&l1);

    // 2. kill -9 the leader: a successor with a larger token after about one TTL; the killed
    //    instance leaves /instances within about one TTL.
    fleet.kill9(i1);
    let killed = Instant::now();
    let ((l2, t2), took) =
        fleet.agreed_leader("a leader after kill -9", |id, t| id != l1 && t > t1);
    fleet.say(format!(
        "kill -9 {l1}: {l2} leads with token {t2} after {} (session_ttl {})",
        secs(took),
        secs(ttl)
    ));
    tokens.push(t2);
    fleet.wait_writes(&l2, t2, 3);
    fleet.instances_until("the killed instance to leave /instances", |v| {
        !v.contains(&l1)
    });
    fleet.say(format!(
        "kill -9 {l1}: gone from /instances {} after the kill",
        secs(killed.elapsed())
    ));

    // 3. A restarted id registers at once: kill -9 a follower and start it again right away,
    //    while its dead session still holds its entry (replaced, not AlreadyExists). Restart
    //    the first victim too.
    let follower = ["s-1", "s-2", "s-3"]
        .into_iter()
        .find(|id| *id != l1 && *id != l2)
        .expect("a follower")
        .to_owned();
    let fi = fleet.find(&follower);
    let old_port = fleet.procs[fi].port;
    fleet.kill9(fi);
    let killed = Instant::now();
    let stale_entry = store.registered().get(&follower) == Some(&old_port);
    let ri = fleet.start(&follower);
    let (_, _) = wait_for("the restarted instance to register", HANG, || {
        let p = &mut fleet.procs[ri];
        if p.has_line(&format!("registered scheduler/{follower} ")) {
            return Some(());
        }
        assert!(p.alive(), "the restarted {follower} exited: {:?}", p.status);
        None
    });
    let registered_after = killed.elapsed();
    let new_port = fleet.procs[ri].port;
    assert_eq!(
        store.registered().get(&follower),
        Some(&new_port),
        "the restarted {follower} is registered with its new port"
    );
    fleet.say(format!(
        "kill -9 {follower} and restart: registered {} after the kill (the dead session's entry \
         was {}there when it started)",
        secs(registered_after),
        if stale_entry { "still " } else { "no longer " }
    ));
    fleet.start(&l1);
    fleet.instances_until("three instances again", |v| v == ["s-1", "s-2", "s-3"]);
    let ((l, t), _) = fleet.agreed_leader("the leader after the restarts", |_, _| true);
    assert_eq!(
        (l.as_str(), t),
        (l2.as_str(), t2),
        "restarts do not change the leader"
    );
    // The killed follower's candidate node goes with its session (one TTL): then the next in
    // line is a live process, and a resignation hands over at once.
    let election = Store::path(ELECTION);
    // Candidates campaign with `id@127.0.0.1:port`: the dead one has the old port.
    let live: BTreeSet<String> = fleet
        .alive()
        .into_iter()
        .map(|i| format!("{}@127.0.0.1:{}", fleet.procs[i].id, fleet.procs[i].port))
        .collect();
    let (_, took) = wait_for("the candidates to be the live processes", HANG, || {
        let names = store.rt.block_on(store.client.children(&election)).ok()?;
        let mut values = BTreeSet::new();
        for n in names {
            let node = store
                .rt
                .block_on(store.client.get(&election.join(&n).ok()?))
                .ok()?;
            values.insert(String::from_utf8(node.value).ok()?);
        }
        (values == live).then_some(())
    });
    fleet.say(format!(
        "the killed follower's candidate node expired; every candidate is live {} later",
        secs(took)
    ));

    // 4. SIGTERM the leader: it exits 0 with `shut down`, a successor at once, and it is
    //    deregistered at once (not after a TTL).
    let i2 = fleet.find(&l2);
    let termed = Instant::now();
    fleet.sigterm(i2);
    let exited = fleet.wait_clean_exit(i2);
    let after_exit = store.registered();
    assert!(
        !after_exit.contains_key(&l2),
        "{l2} is still registered right after its orderly exit: {after_exit:?}"
    );
    fleet.instances_until("the stopped instance to leave /instances", |v| {
        !v.contains(&l2)
    });
    let deregistered = termed.elapsed();
    let ((l3, t3), _) = fleet.agreed_leader("a leader after SIGTERM", |id, t| id != l2 && t > t2);
    let handover = termed.elapsed();
    tokens.push(t3);
    fleet.wait_writes(&l3, t3, 3);
    fleet.say(format!(
        "SIGTERM {l2}: exited 0 after {}, deregistered in the store by then, gone from every \
         /instances {} after the signal; {l3} leads with token {t3}, agreed {} after the signal",
        secs(exited),
        secs(deregistered),
        secs(handover)
    ));

    // 5. Durable tokens: stop everyone, delete the emptied election directory, and elect
    //    twice more: the tokens still grow.
    for i in fleet.alive() {
        fleet.sigterm(i);
        fleet.wait_clean_exit(i);
    }
    let (left, _) = wait_for("the election directory to empty", HANG, || {
        let c = store
            .rt
            .block_on(store.client.children(&election))
            .unwrap_or_default();
        c.is_empty().then_some(c)
    });
    assert!(left.is_empty());
    match store.rt.block_on(store.client.delete(&election, None)) {
        Ok(()) => {}
        // A backend without directory keys: nothing to delete.
        Err(coord::Error::NotFound { .. }) => fleet.say(format!("{ELECTION} was no key")),
        Err(e) => panic!("delete the emptied election directory: {e}"),
    }
    assert!(store
        .rt
        .block_on(store.client.exists(&election))
        .expect("exists")
        .is_none());
    fleet.say(format!("everyone stopped; deleted {ELECTION}"));
    fleet.start("s-4");
    let ((l4, t4), _) = fleet.agreed_leader("a leader after the deletion", |_, _| true);
    fleet.wait_writes(&l4, t4, 3);
    fleet.start("s-5");
    fleet.agreed_leader("both agree", |id, t| id == l4 && t == t4);
    let i4 = fleet.find(&l4);
    let termed = Instant::now();
    fleet.sigterm(i4);
    fleet.wait_clean_exit(i4);
    let ((l5, t5), _) = fleet.agreed_leader("a leader after the last SIGTERM", |id, t| {
        id != l4 && t > t4
    });
    fleet.say(format!(
        "after the deletion: {l4} leads with token {t4}; SIGTERM {l4}: {l5} leads with token \
         {t5} after {}",
        secs(termed.elapsed())
    ));
    tokens.extend([t4, t5]);
    fleet.wait_writes(&l5, t5, 3);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow: {tokens:?}"
    );
    fleet.say(format!("tokens in order: {tokens:?}"));
    for i in fleet.alive() {
        fleet.sigterm(i);
        fleet.wait_clean_exit(i);
    }

    // 6. One leader at a time: the terms printed by the processes (a killed process's term
    //    ends when it was killed) never overlap.
    check_terms(&fleet);

    // 7. The ledger: only the leader of the moment appended (tokens never go backwards), and
    //    every write a process saw accepted is in it.
    let ledger = store
        .rt
        .block_on(store.client.get(&Store::path(LEDGER)))
        .expect("read the ledger");
    let text = String::from_utf8(ledger.value).expect("utf-8 ledger");
    let entries: Vec<(String, u64, u64)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "ledger line {l:?}");
            (
                f[0].to_owned(),
                f[1].parse().expect("token"),
                f[2].parse().expect("counter"),
            )
        })
        .collect();
    for w in entries.windows(2) {
        let ((_, ta, ca), (_, tb, cb)) = (&w[0], &w[1]);
        assert!(
            ta < tb || (ta == tb && ca < cb),
            "the ledger goes backwards: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let in_ledger: BTreeSet<String> = text.lines().map(str::to_owned).collect();
    let lines = fleet.all_lines();
    let mut accepted = 0;
    let mut refused = 0;
    for l in &lines {
        if let Some((_, e)) = l.split_once("ledger write accepted: ") {
            accepted += 1;
            assert!(
                in_ledger.contains(e),
                "accepted write {e:?} not in the ledger"
            );
        }
        if l.contains("ledger write refused: ") {
            refused += 1;
        }
    }
    let per_token: BTreeSet<u64> = entries.iter().map(|e| e.1).collect();
    fleet.say(format!(
        "ledger: {} entries from {} terms, tokens never go backwards; {accepted} accepted and \
         {refused} refused writes printed",
        entries.len(),
        per_token.len()
    ));
}

/// Checks that the leading terms printed (`LEADING with token`, `stopped leading`) never
/// overlap in time.
fn check_terms(fleet: &Fleet) {
    let mut terms: Vec<(f64, f64, String, u64)> = Vec::new();
    for p in &fleet.procs {
        let mut open: Option<(f64, u64)> = None;
        for l in p.lines() {
            let Some((ts, id, msg)) = parse_line(&l) else {
                continue;
            };
            if let Some(t) = msg.strip_prefix("LEADING with token ") {
                assert!(open.is_none(), "{id} leads twice: {l}");
                open = Some((ts, t.parse().expect("token")));
            } else if msg.starts_with("stopped leading") {
                let (start, token) = open.take().expect("stopped leading without leading");
                terms.push((start, ts, id.to_owned(), token));
            }
        }
        if let Some((start, token)) = open {
            let end = p
                .killed_at
                .unwrap_or_else(|| panic!("{} exited while leading without saying so", p.id));
            terms.push((start, end, p.id.clone(), token));
        }
    }
    terms.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in terms.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two leaders at once: {} (token {}) until {:.6}, {} (token {}) from {:.6}",
            w[0].2,
            w[0].3,
            w[0].1,
            w[1].2,
            w[1].3,
            w[1].0
        );
    }
    let gaps: Vec<String> = terms
        .windows(2)
        .map(|w| format!("{:.0}ms", (w[1].0 - w[0].1) * 1000.0))
        .collect();
    fleet.say(format!(
        "{} terms, never two at once; gaps between terms: {}",
        terms.len(),
        gaps.join(", ")
    ));
}

/// A fresh namespace URL with a 2 s session TTL on the kit's shared server for `kind`, or
/// `None` (a loud skip, or a panic under `COORD_REQUIRE_BACKENDS=1`, from the kit).
#[allow(dead_code)]
fn real_url(kind: coord_testkit::Kind, scheme: &str) -> Option<String> {
    let ep = coord_testkit::shared_endpoints(kind)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Some(format!("{scheme}://{ep}/scheduler-{nanos}?session_ttl=2s"))
}

macro_rules! scenario_on {
    ($name:ident, $feature:literal, $kind:ident, $scheme:literal) => {
        #[cfg(feature = $feature)]
        #[test]
        fn $name() {
            let Some(url) = real_url(coord_testkit::Kind::$kind, $scheme) else {
                return;
            };
            scenario(&url, $scheme, Duration::from_secs(2));
        }
    };
}

scenario_on!(scheduler_processes_on_zk, "zk", ZooKeeper, "zk");
scenario_on!(scheduler_processes_on_etcd, "etcd", Etcd, "etcd");
scenario_on!(scheduler_processes_on_consul, "consul", Consul, "consul");

/// One process on `mem://`: it registers, leads, writes, answers, and stops cleanly.
#[cfg(feature = "mem")]
#[test]
fn scheduler_smoke_on_mem() {
    let mut fleet = Fleet::new("mem://scheduler-smoke/demo?session_ttl=2s", "mem");
    let i = fleet.start("solo");
    wait_for("solo to write the ledger", HANG, || {
        fleet.procs[i]
            .has_line("ledger write accepted: solo ")
            .then_some(())
    });
    let ((id, token), _) = fleet.agreed_leader("solo to lead", |_, _| true);
    assert_eq!(id, "solo");
    assert!(token > 0);
    fleet.instances_until("solo registered", |v| v == ["solo"]);
    assert_eq!(http_get(fleet.procs[i].port, "/nope"), None);
    fleet.sigterm(i);
    fleet.wait_clean_exit(i);
    check_terms(&fleet);
}
