//! Curator's x-discovery layout ([`coord_zk::CuratorDiscovery`]) against the real consumer: a
//! Java process running Curator 5.4's `ServiceDiscovery` (the fixture
//! `tests/fixtures/CuratorDiscoveryPeer.java`, compiled here with `javac` against Debian's
//! jars in /usr/share/java). Each side registers instances and lists the other's, and a
//! SIGKILLed side's instances go within its session timeout (the coord side then runs in a
//! child process of this test binary). Every wait is bounded; child processes are killed when
//! their handles drop (also on panic).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use coord_core::registry::{Entry, IfPresent, Instance, NativeRegistry};
use coord_core::{Backend, Path, Session, SessionOptions};
use coord_testkit::require_backends;
use coord_zk::ZkBackend;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const PATIENCE: Duration = Duration::from_secs(30);

/// The jars of Curator's discovery and what it needs at run time, from Debian's packages.
const JARS: &[&str] = &[
    "curator-client",
    "curator-framework",
    "curator-recipes",
    "curator-x-discovery",
    "zookeeper",
    "zookeeper-jute",
    "jackson-core",
    "jackson-databind",
    "jackson-annotations",
    "guava",
    "slf4j-api",
    "slf4j-nop",
    "netty-handler",
    "netty-transport",
    "netty-common",
    "netty-buffer",
    "netty-resolver",
    "netty-codec",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
];

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

fn skip_or_panic(what: &str) {
    if require_backends() {
        panic!("the Curator peer is required (COORD_REQUIRE_BACKENDS=1) but {what}");
    }
    eprintln!(
        "SKIPPED: Curator peer not available: {what} (scripts/install-backends.sh installs it)"
    );
}

/// The class path, or `None` (after a skip line) when a jar is missing.
fn class_path() -> Option<String> {
    let mut parts = Vec::new();
    for jar in JARS {
        let path = PathBuf::from(format!("/usr/share/java/{jar}.jar"));
        if !path.exists() {
            skip_or_panic(&format!("{} is missing", path.display()));
            return None;
        }
        parts.push(path.display().to_string());
    }
    Some(parts.join(":"))
}

/// Compiles the fixture into a fresh temporary directory.
async fn compile(cp: &str) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/CuratorDiscoveryPeer.java");
    let out = Command::new("javac")
        .arg("-cp")
        .arg(cp)
        .arg("-d")
        .arg(dir.path())
        .arg(&src)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => Some(dir),
        Ok(o) => panic!("javac failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            skip_or_panic(&format!("javac cannot run ({e})"));
            None
        }
    }
}

/// A running Curator peer, driven by its line protocol.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn start(cp: &str, classes: &std::path::Path, connect: &str, base: &str) -> Peer {
        let mut child = Command::new("java")
            .arg("-cp")
            .arg(format!("{cp}:{}", classes.display()))
            .arg("CuratorDiscoveryPeer")
            .arg(connect)
            .arg(base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start java");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut peer = Peer {
            child,
            stdin,
            lines,
        };
        assert_eq!(peer.line().await, "ready");
        peer
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("the Curator peer answers in time")
            .expect("read from the Curator peer")
            .expect("the Curator peer ended")
    }

    /// Sends one command; its answer line.
    async fn ask(&mut self, cmd: &str) -> String {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write to the Curator peer");
        self.stdin.flush().await.expect("flush");
        let answer = self.line().await;
        assert!(!answer.starts_with("error"), "{cmd}: {answer}");
        answer
    }

    /// Asks `cmd` until the answer is `want` (Curator reads ZooKeeper directly: no cache).
    async fn ask_until(&mut self, cmd: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.ask(cmd).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cmd}: still {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the watch yields a list satisfying `ok`.
async fn until<S>(what: &str, watch: &mut S, ok: impl Fn(&[Instance]) -> bool) -> Vec<Instance>
where
    S: Stream<Item = coord_core::Result<Vec<Instance>>> + Unpin,
{
    tokio::time::timeout(PATIENCE, async {
        loop {
            let list = watch
                .next()
                .await
                .unwrap_or_else(|| panic!("watch ended before {what}"))
                .expect("watch");
            if ok(&list) {
                return list;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

struct Setup {
    backend: ZkBackend,
    native: Arc<dyn NativeRegistry>,
    peer: Peer,
    _classes: tempfile::TempDir,
}

async fn setup(test: &str) -> Option<Setup> {
    let endpoints = coord_zk::testing::endpoints().await?;
    let cp = class_path()?;
    let classes = compile(&cp).await?;
    let ns = format!("/coordtest/{test}-{}", coord_zk::testing::unique_suffix());
    // coord creates the namespace (the chroot Curator connects to).
    let backend = ZkBackend::connect(&format!("zk://{endpoints}{ns}"))
        .await
        .expect("connect");
    let native = Backend::native_registry(&backend).expect("ZooKeeper has a native registry");
    assert_eq!(native.layout().name, "curator-x-discovery");
    assert!(!native.layout().is_default);
    let peer = Peer::start(
        &cp,
        classes.path(),
        &format!("{endpoints}{ns}"),
        "/services",
    )
    .await;
    Some(Setup {
        backend,
        native,
        peer,
        _classes: classes,
    })
}

async fn session(backend: &ZkBackend, ttl: Duration) -> Arc<dyn Session> {
    backend
        .open_session(SessionOptions::new().ttl(ttl))
        .await
        .expect("session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_coord_list_each_others_instances() {
    let Some(Setup {
        backend,
        native,
        mut peer,
        _classes,
    }) = setup("curator_both").await
    else {
        return;
    };
    let root = p("/services");
    let s = session(&backend, Duration::from_secs(4)).await;
    let mine = Instance::new("api", "coord-1", "127.0.0.1", 8080)
        .with_meta("zone", "a")
        .with_tag("v2");
    native
        .register(Entry::new(&root, &s, &mine), IfPresent::Replace)
        .await
        .unwrap();
    let mut watch = native.watch(&root, "api").await.unwrap();
    until("coord's instance", &mut watch, |l| l == [mine.clone()]).await;

    // Curator lists coord's instance, with the fields it reads.
    peer.ask_until("query api", "instances coord-1@127.0.0.1:8080")
        .await;
    assert_eq!(peer.ask("names").await, "names api");
    let json = peer.ask("json api coord-1").await;
    let v: serde_json::Value = serde_json::from_str(json.trim_start_matches("json ")).unwrap();
    assert_eq!(v["name"], "api");
    assert_eq!(v["id"], "coord-1");
    assert_eq!(v["address"], "127.0.0.1");
    assert_eq!(v["port"], 8080);
    assert_eq!(v["serviceType"], "DYNAMIC");
    assert!(v["payload"].is_null() && v["sslPort"].is_null() && v["uriSpec"].is_null());
    assert!(v["registrationTimeUTC"].as_i64().unwrap() > 0);
    assert_eq!(v["metadata"]["zone"], "a");
    assert_eq!(v["tags"][0], "v2");

    // coord lists Curator's instance (its Map payload becomes metadata), in discover and watch.
    assert_eq!(peer.ask("register api cur-1 127.0.0.2 9090").await, "ok");
    let theirs = Instance::new("api", "cur-1", "127.0.0.2", 9090).with_meta("owner", "curator");
    let both = until("both instances", &mut watch, |l| l.len() == 2).await;
    assert_eq!(both, vec![mine.clone(), theirs.clone()]);
    assert_eq!(native.discover(&root, "api").await.unwrap(), both);
    peer.ask_until(
        "query api",
        "instances coord-1@127.0.0.1:8080 cur-1@127.0.0.2:9090",
    )
    .await;

    // Curator unregisters; coord deregisters; each side sees it.
    assert_eq!(peer.ask("unregister api cur-1").await, "ok");
    until("coord's instance alone", &mut watch, |l| {
        l == [mine.clone()]
    })
    .await;
    native
        .deregister(Entry::new(&root, &s, &mine))
        .await
        .unwrap();
    until("no instance", &mut watch, |l| l.is_empty()).await;
    peer.ask_until("query api", "instances").await;
    assert_eq!(peer.ask("quit").await, "bye");
}

/// The environment variable that makes [`child_registers_and_waits`] a registering process.
const CHILD_URL: &str = "COORD_CURATOR_CHILD_URL";

/// Not a test of its own: the coord process of
/// [`a_sigkilled_side_s_instances_go_within_the_session_timeout`], which runs this test binary
/// again with only this (ignored) test and [`CHILD_URL`] set. It registers through the
/// Registry API on a client whose URL selects the native layout, says so, and waits (bounded)
/// to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_sigkilled_side_s_instances_go_within_the_session_timeout"]
async fn child_registers_and_waits() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        eprintln!("child_registers_and_waits: {CHILD_URL} is not set, so this is no child process: nothing to do");
        return;
    };
    let backend = ZkBackend::connect(&url).await.expect("connect");
    let client = coord_core::Client::new(Arc::new(backend));
    assert_eq!(
        client.registry().layout_name().unwrap(),
        "curator-x-discovery"
    );
    let i = Instance::new("web", "coord-child", "127.0.0.1", 7070);
    let _reg = client.registry().register(&i).await.expect("register");
    println!("registered");
    tokio::time::sleep(PATIENCE * 2).await;
}

/// Runs [`child_registers_and_waits`] in a new process of this test binary, registering on
/// `url`; returns once it has registered. Killed when dropped.
async fn coord_child(url: &str) -> Child {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "child_registers_and_waits",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_URL, url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the coord child process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read the child") {
            if line == "registered" {
                return;
            }
        }
        panic!("the coord child ended before registering");
    })
    .await
    .expect("the coord child registers in time");
    // Keep draining its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_side_s_instances_go_within_the_session_timeout() {
    let Some(Setup {
        backend,
        native,
        mut peer,
        _classes,
    }) = setup("curator_kill").await
    else {
        return;
    };
    let root = p("/services");
    let endpoints = coord_zk::testing::endpoints().await.expect("endpoints");
    let ns = coord_core::Backend::namespace(&backend).to_owned();
    // A coord process (2 s sessions) and the Curator process (4 s asked) each register one.
    let url = format!("zk://{endpoints}{ns}?registry=native&session_ttl=2s");
    let mut child = coord_child(&url).await;
    assert_eq!(peer.ask("register web cur-1 127.0.0.2 9090").await, "ok");
    let mut watch = native.watch(&root, "web").await.unwrap();
    until("both", &mut watch, |l| l.len() == 2).await;
    peer.ask_until(
        "query web",
        "instances coord-child@127.0.0.1:7070 cur-1@127.0.0.2:9090",
    )
    .await;

    // SIGKILL the Java process: its session expires (the server's clamp of 4 s) and Curator's
    // ephemeral node goes. The bound is generous (a loaded machine); the time is printed, not
    // asserted.
    let killed = tokio::time::Instant::now();
    peer.child.start_kill().expect("SIGKILL the Curator peer");
    let _ = peer.child.wait().await;
    let coord_child = Instance::new("web", "coord-child", "127.0.0.1", 7070);
    until("Curator's instance gone", &mut watch, |l| {
        l == [coord_child.clone()]
    })
    .await;
    eprintln!(
        "Curator's instance gone {:?} after SIGKILL",
        killed.elapsed()
    );

    // SIGKILL the coord process: a new Curator peer sees its instance go.
    let cp = class_path().expect("class path");
    let mut second = Peer::start(
        &cp,
        _classes.path(),
        &format!("{endpoints}{ns}"),
        "/services",
    )
    .await;
    second
        .ask_until("query web", "instances coord-child@127.0.0.1:7070")
        .await;
    let killed = tokio::time::Instant::now();
    child.start_kill().expect("SIGKILL the coord process");
    let _ = child.wait().await;
    second.ask_until("query web", "instances").await;
    eprintln!("coord's instance gone {:?} after SIGKILL", killed.elapsed());
    until("none", &mut watch, |l| l.is_empty()).await;
    assert_eq!(second.ask("quit").await, "bye");
}
