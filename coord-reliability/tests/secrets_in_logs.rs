//! Credentials never reach the logs (issue 9). A global `tracing` subscriber at TRACE level
//! (every event and span of every crate, from every thread) and a `log` logger (reqwest and
//! rustls log through `log`, which a `tracing-subscriber` set-up forwards by default) write
//! everything into one buffer. Each test then uses credentials on one backend — good ones for
//! normal operations (create/get/set, election, registry, watches), wrong ones, an unreachable
//! server with the password in the URL, and a fault that makes the adapter log (a paused or
//! restarted server) — and asserts that the adapter did log (the capture works) and that no
//! secret of any test appears anywhere in the buffer. Every wait is bounded.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{namespace, own_server};
use coord::registry::Instance;
use coord::{Client, CreateMode, Error, Path, Session, SessionState};
use coord_testkit::require_backends;
use futures::StreamExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

const ZK_PW: &str = "S3cr3t-pw-zk-91";
const ZK_WRONG: &str = "Wr0ng-pw-zk-92";
const ZK_UNREACHABLE: &str = "S3cr3t-pw-zk-93";
const ETCD_PW: &str = "S3cr3t-pw-etcd-81";
const ETCD_WRONG: &str = "Wr0ng-pw-etcd-82";
const ETCD_UNREACHABLE: &str = "S3cr3t-pw-etcd-83";
const CONSUL_TOKEN: &str = "S3cr3t-tok-consul-71";
const CONSUL_WRONG: &str = "Wr0ng-tok-consul-72";
const CONSUL_UNREACHABLE: &str = "S3cr3t-tok-consul-73";

/// Every secret used by any test of this file: each test checks the whole buffer for all.
const SECRETS: [&str; 9] = [
    ZK_PW,
    ZK_WRONG,
    ZK_UNREACHABLE,
    ETCD_PW,
    ETCD_WRONG,
    ETCD_UNREACHABLE,
    CONSUL_TOKEN,
    CONSUL_WRONG,
    CONSUL_UNREACHABLE,
];

const BOUND: Duration = Duration::from_secs(30);

/// The captured lines of every test of this process.
fn buffer() -> &'static Mutex<String> {
    static BUF: OnceLock<Mutex<String>> = OnceLock::new();
    BUF.get_or_init(|| Mutex::new(String::new()))
}

fn push(line: &str) {
    let mut b = buffer().lock().unwrap_or_else(|p| p.into_inner());
    b.push_str(line);
    b.push('\n');
}

/// Formats every field: strings as they are (no escaping that could hide a secret), the rest
/// with `Debug` (which is what a formatter prints).
struct Fields(String);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value} ({value:?})", field.name());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

/// A subscriber that takes everything and writes it into [`buffer`].
struct Capture {
    next: AtomicU64,
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let m = attrs.metadata();
        let mut f = Fields(format!("SPAN {} {}: {}", m.level(), m.target(), m.name()));
        attrs.record(&mut f);
        push(&f.0);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut f = Fields("SPAN-RECORD".into());
        values.record(&mut f);
        push(&f.0);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        let mut f = Fields(format!("{} {}:", m.level(), m.target()));
        event.record(&mut f);
        push(&f.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The same for the `log` crate.
struct CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        push(&format!("LOG {} {}: {}", r.level(), r.target(), r.args()));
    }

    fn flush(&self) {}
}

static LOGGER: CaptureLog = CaptureLog;

/// Installs the capture once for the whole test process (all threads).
fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing::subscriber::set_global_default(Capture {
            next: AtomicU64::new(0),
        })
        .expect("no other global subscriber in this test binary");
        log::set_logger(&LOGGER).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Checks the whole buffer: lines from `target` (the adapter's crate, or coord-core's adapter
/// toolkit, which runs the lease sessions of etcd and Consul) exist, and no secret of any test
/// is anywhere. Prints the figures.
fn check(label: &str, target: &str, from: usize) {
    let b = buffer().lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mine = &b[from.min(b.len())..];
    let lines = mine.lines().count();
    let adapter: Vec<&str> = mine
        .lines()
        .filter(|l| l.contains(&format!(" {target}")) || l.contains(" coord_core::adapter"))
        .collect();
    let log_lines = mine.lines().filter(|l| l.starts_with("LOG ")).count();
    println!(
        "{label}: {lines} lines captured during the test ({} bytes; {} from {target}, {log_lines} \
         through `log`); whole buffer {} bytes",
        mine.len(),
        adapter.len(),
        b.len()
    );
    for l in adapter.iter().take(12) {
        println!("  {}", l.chars().take(200).collect::<String>());
    }
    assert!(
        lines > 0,
        "{label}: nothing captured: the capture does not work"
    );
    assert!(
        !adapter.is_empty(),
        "{label}: {target} logged nothing: the test did not exercise a logging path"
    );
    for s in SECRETS {
        if let Some(at) = b.find(s) {
            let line_start = b[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_end = b[at..].find('\n').map(|i| at + i).unwrap_or(b.len());
            panic!(
                "{label}: secret {s:?} in the logs: {}",
                &b[line_start..line_end]
            );
        }
    }
}

fn start() -> usize {
    install();
    let from = buffer().lock().unwrap_or_else(|p| p.into_inner()).len();
    // A canary through both paths: the fields of an event and a `log` record are captured.
    tracing::trace!(canary = %"capture-canary-tracing", "capture check");
    log::trace!("capture check {}", "capture-canary-log");
    let b = buffer().lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        b[from..].contains("capture-canary-tracing") && b[from..].contains("capture-canary-log"),
        "the capture misses event fields or log records"
    );
    from
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}

fn p(s: &str) -> Path {
    Path::new(s).expect("path")
}

/// Normal operations through every recipe kind, so that the adapter's paths run.
async fn exercise(c: &Client, label: &str) {
    within("create", c.create(&p("/cfg"), b"v1", CreateMode::Exact))
        .await
        .unwrap_or_else(|e| panic!("{label}: create: {e}"));
    let (_, mut w) = within("watch", c.watch(&p("/cfg")))
        .await
        .unwrap_or_else(|e| panic!("{label}: watch: {e}"));
    within("set", c.set(&p("/cfg"), b"v2", None))
        .await
        .unwrap_or_else(|e| panic!("{label}: set: {e}"));
    within("watch event", w.next()).await;
    assert_eq!(
        within("get", c.get(&p("/cfg"))).await.expect("get").value,
        b"v2"
    );
    let l = within("campaign", c.election("e").expect("name").campaign(b"me"))
        .await
        .unwrap_or_else(|e| panic!("{label}: campaign: {e}"));
    let r = within(
        "register",
        c.registry()
            .register(&Instance::new("api", "i1", "127.0.0.1", 1)),
    )
    .await
    .unwrap_or_else(|e| panic!("{label}: register: {e}"));
    assert_eq!(
        within("discover", c.registry().discover("api"))
            .await
            .expect("discover")
            .len(),
        1
    );
    within("resign", l.resign()).await.expect("resign");
    within("deregister", r.deregister())
        .await
        .expect("deregister");
}

/// Connects and makes one call; returns the error (it must fail).
async fn failing(url: &str, label: &str) -> Error {
    let r = within(label, async {
        let c = coord::connect(url).await?;
        c.set(&p("/cfg"), b"evil", None).await?;
        c.session().await?;
        Ok::<(), Error>(())
    })
    .await;
    let e = r.expect_err(label);
    println!("{label}: {e}");
    e
}

/// ZooKeeper digest credentials: normal use, a wrong password, an unreachable server, and a
/// main-session expiry (a 4 s pause with a 2 s session: the adapter logs the replacement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_password_never_logged() {
    let from = start();
    let Some(mut server) = own_server(coord_testkit::Kind::ZooKeeper).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("secrets-zk");
    let url = format!("zk://alice:{ZK_PW}@{ep}{ns}?timeout=5s&session_timeout=2s");
    let c = within("connect", coord::connect(&url))
        .await
        .expect("connect with credentials");
    exercise(&c, "zk").await;
    // Another password is another identity: coord's nodes are not writable for it.
    let e = failing(
        &format!("zk://alice:{ZK_WRONG}@{ep}{ns}?timeout=5s"),
        "zk wrong password",
    )
    .await;
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    let e = failing(
        &format!("zk://alice:{ZK_UNREACHABLE}@127.0.0.1:1{ns}?timeout=2s"),
        "zk unreachable",
    )
    .await;
    assert!(e.is_retryable(), "{e:?}");
    // A main-session expiry: the adapter logs it and re-arms the watches.
    let (_, mut w) = c.watch(&p("/cfg")).await.expect("watch");
    tokio::task::block_in_place(|| server.pause());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| server.resume());
    let t0 = Instant::now();
    within("a write after the resume", async {
        loop {
            match c.set(&p("/cfg"), b"v3", None).await {
                Ok(_) => return,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("zk write after resume: {e}"),
            }
        }
    })
    .await;
    within("the watch after the resume", w.next()).await;
    println!("zk: working again {:?} after the resume", t0.elapsed());
    exercise_again(&c).await;
    let _ = within("close", c.close()).await;
    check("zk", "coord_zk", from);
}

/// A second round of writes after a fault (sessions and watches renewed with credentials).
/// The client's session may still be `Suspended` when this starts (a paused Consul agent's
/// session can be either renewed or expired after the resume), so it waits for the session to
/// settle: Connected is used; a final state means the client opens a new session, which must
/// then work.
///
/// A Connected session may still expire a moment later, and the create then fails with
/// `SessionExpired` (a typed error, the session Expired). On Consul this happens after a pause
/// longer than the TTL: on the resume the agent's overdue TTL timer races the first pass, and
/// the first pass can win the check and the session check while the critical status is
/// already on its way to the servers (CI, stop 31: `Connected`, then `SessionExpired` on the
/// next create). One new session is then opened, and it must work.
async fn exercise_again(c: &Client) {
    for attempt in 1..=2 {
        let s = settled_session(c).await;
        match within("ephemeral", s.create(&p("/eph"), b"", CreateMode::Exact)).await {
            Ok(_) => {
                within("delete", c.delete(&p("/eph"), None))
                    .await
                    .expect("delete");
                return;
            }
            Err(e @ Error::SessionExpired { .. }) if attempt == 1 => {
                assert!(
                    s.state().is_final(),
                    "{e} but the session is {:?}",
                    s.state()
                );
                println!("the session expired after it settled ({e}): a new one");
            }
            Err(e) => panic!("ephemeral create: {e:?}"),
        }
    }
}

/// The client's session once it is Connected, or a new one if it ended.
async fn settled_session(c: &Client) -> Arc<dyn Session> {
    let s = within("session", c.session()).await.expect("session");
    let settled = within("the session settles", async {
        let mut states = s.states();
        while let Some(st) = states.next().await {
            if st == SessionState::Connected || st.is_final() {
                return st;
            }
        }
        s.state()
    })
    .await;
    if settled.is_final() {
        println!("the session ended during the fault ({settled:?}): a new one");
        within("a new session", c.session())
            .await
            .expect("a new session")
    } else {
        s
    }
}

/// etcd user/password (auth enabled on a private server): normal use, a wrong password, an
/// unreachable server, and a server restart (keep-alive and watch failures are logged; the
/// client authenticates again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_password_never_logged() {
    let from = start();
    let Some(mut server) = own_server(coord_testkit::Kind::Etcd).await else {
        return;
    };
    let ep = server.endpoint();
    let ns = namespace("secrets-etcd");
    {
        let admin = coord_etcd::EtcdBackend::connect(&format!("etcd://{ep}"))
            .await
            .expect("connect");
        let mut auth = admin.etcd_client().auth_client();
        auth.user_add("root", ETCD_PW, None)
            .await
            .expect("user add");
        auth.user_grant_role("root", "root")
            .await
            .expect("grant root");
        auth.auth_enable().await.expect("auth enable");
    }
    let url = format!("etcd://root:{ETCD_PW}@{ep}{ns}?timeout=2s&session_ttl=10s");
    let c = within("connect", coord::connect(&url))
        .await
        .expect("connect with credentials");
    exercise(&c, "etcd").await;
    let e = failing(
        &format!("etcd://root:{ETCD_WRONG}@{ep}{ns}?timeout=2s"),
        "etcd wrong password",
    )
    .await;
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    let e = failing(
        &format!("etcd://root:{ETCD_UNREACHABLE}@127.0.0.1:1{ns}?timeout=1s"),
        "etcd unreachable",
    )
    .await;
    assert!(e.is_retryable(), "{e:?}");
    // A restart: keep-alives and watches fail for a moment and are logged.
    let s = within("session", c.session()).await.expect("session");
    let (_, mut w) = c.watch(&p("/cfg")).await.expect("watch");
    tokio::task::block_in_place(|| server.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    let t0 = Instant::now();
    within("a write after the restart", async {
        loop {
            match c.set(&p("/cfg"), b"v3", None).await {
                Ok(_) => return,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("etcd write after restart: {e}"),
            }
        }
    })
    .await;
    within("the watch after the restart", w.next()).await;
    println!(
        "etcd: working again {:?} after the restart (session {:?})",
        t0.elapsed(),
        s.state()
    );
    exercise_again(&c).await;
    let _ = within("close", c.close()).await;
    check("etcd", "coord_etcd", from);
}

// ---- Consul with ACLs (default deny), on an agent this test starts -------------------------

/// The agent, a `coord_testkit::CustomServer` (a container with `COORD_TESTKIT=containers`).
struct Agent {
    server: Option<coord_testkit::CustomServer>,
    dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn consul_bin() -> Option<std::path::PathBuf> {
    if let Some(b) = std::env::var_os("COORD_CONSUL_BIN").filter(|v| !v.is_empty()) {
        let b = std::path::PathBuf::from(b);
        return b.is_file().then_some(b);
    }
    let b = coord_testkit::tools_dir().join("consul/usr/bin/consul");
    b.exists().then_some(b)
}

/// A dev agent with ACLs on (`default_policy = deny`, master token [`CONSUL_TOKEN`]), as in
/// coord-consul/tests/consul_security.rs; returns it with its HTTP port.
fn start_acl_agent(bin: &std::path::Path) -> (Agent, u16) {
    let dir = std::env::temp_dir().join(format!(
        "coord-secrets-acl-{}-{}",
        std::process::id(),
        coord_reliability::now_us()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let ports = free_ports(4);
    let cfg = serde_json::json!({
        "disable_update_check": true,
        "primary_datacenter": "dc1",
        "ports": { "http": ports[0], "https": -1, "dns": -1, "grpc": -1,
                   "serf_lan": ports[1], "serf_wan": ports[2], "server": ports[3] },
        "acl": { "enabled": true, "default_policy": "deny",
                 "tokens": { "master": CONSUL_TOKEN, "agent": CONSUL_TOKEN } },
    });
    std::fs::write(dir.join("agent.json"), cfg.to_string()).expect("config");
    let server = coord_testkit::CustomServer::consul_dev(bin, &dir, &dir.join("agent.json"))
        .expect("start consul");
    (
        Agent {
            server: Some(server),
            dir,
        },
        ports[0],
    )
}

/// A Consul ACL token (user part and `?token=`): normal use, wrong tokens, an unreachable
/// agent, and a paused agent (the session is suspended, then expires: logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_token_never_logged() {
    let from = start();
    let Some(bin) = consul_bin() else {
        assert!(!require_backends(), "Consul is required but not installed");
        eprintln!("SKIPPED: Consul not installed (consul_token_never_logged)");
        return;
    };
    let (mut agent, port) = tokio::task::block_in_place(|| start_acl_agent(&bin));
    let ns = namespace("secrets-consul");
    let url = format!("consul://{CONSUL_TOKEN}@127.0.0.1:{port}{ns}?timeout=2s&session_ttl=1s");
    // Ready when a write with the token goes through (ACL bootstrap takes a moment).
    let deadline = Instant::now() + BOUND;
    let c = loop {
        let r = async {
            let c = coord::connect(&url).await?;
            match c.create(&p("/ready"), b"", CreateMode::Exact).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(c),
                Err(e) => Err(e),
            }
        }
        .await;
        match r {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "ACL agent not ready: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    exercise(&c, "consul").await;
    let by_option = format!("consul://127.0.0.1:{port}{ns}?timeout=2s&token={CONSUL_TOKEN}");
    let c2 = within("connect", coord::connect(&by_option))
        .await
        .expect("connect with ?token=");
    assert_eq!(
        within("get", c2.get(&p("/cfg"))).await.expect("get").value,
        b"v2"
    );
    for (label, bad) in [
        (
            "consul wrong token",
            format!("consul://{CONSUL_WRONG}@127.0.0.1:{port}{ns}?timeout=2s"),
        ),
        (
            "consul wrong ?token=",
            format!("consul://127.0.0.1:{port}{ns}?timeout=2s&token={CONSUL_WRONG}"),
        ),
    ] {
        let e = failing(&bad, label).await;
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    }
    let e = failing(
        &format!("consul://{CONSUL_UNREACHABLE}@127.0.0.1:1{ns}?timeout=1s"),
        "consul unreachable",
    )
    .await;
    assert!(e.is_retryable(), "{e:?}");
    // A paused agent (3 s, TTL 1 s): the session's check passes fail (Suspended, logged);
    // after the resume it reconnects or expires (both logged); watches retry (logged).
    let s = within("session", c.session()).await.expect("session");
    let (_, mut w) = c.watch(&p("/cfg")).await.expect("watch");
    let server = agent.server.as_mut().expect("the agent runs");
    tokio::task::block_in_place(|| server.pause());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| server.resume());
    let t0 = Instant::now();
    within("a write after the resume", async {
        loop {
            match c.set(&p("/cfg"), b"v3", None).await {
                Ok(_) => return,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("consul write after resume: {e}"),
            }
        }
    })
    .await;
    within("the watch after the resume", w.next()).await;
    println!(
        "consul: session {:?} and writes working {:?} after the resume",
        s.state(),
        t0.elapsed()
    );
    exercise_again(&c).await;
    let _ = within("close", c.close()).await;
    drop(c2);
    check("consul", "coord_consul", from);
    tokio::task::block_in_place(move || drop(agent));
}
