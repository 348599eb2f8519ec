//! Single servers: start, readiness, stop, restart on the same port, kill, pause/resume.

mod common;

use std::time::{Duration, Instant};

use common::{alive, cmdline, http, processes_matching, start};
use coord_testkit::{probe, Kind, Server};

const SHORT: Duration = Duration::from_millis(500);
const READY: Duration = Duration::from_secs(30);

/// Start, the pid is the real server, stop, restart on the same port, kill, restart again,
/// drop removes everything.
fn lifecycle(kind: Kind, binary: &str) {
    let Some(mut server) = start(&kind.to_string(), || Server::start(kind)) else {
        return;
    };
    let endpoint = server.endpoint();
    let dir = server.data_dir().to_path_buf();
    assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    server.probe(SHORT).expect("ready after start");
    probe(kind, &endpoint, SHORT).expect("free probe agrees");

    // The pid is the server itself (not the supervisor shell), and its command line names
    // the unique data dir.
    let pid = server.pid().expect("pid while running");
    let cmd = cmdline(pid);
    assert!(cmd.contains(binary), "pid {pid} is not {binary}: {cmd}");
    assert!(cmd.contains(&*dir.to_string_lossy()), "{cmd}");
    assert!(server.is_running());

    // Graceful stop: the process is gone and the port answers no more.
    let t0 = Instant::now();
    server.stop();
    eprintln!("{kind} stopped in {:?}", t0.elapsed());
    assert_eq!(server.pid(), None);
    assert!(!alive(pid), "{kind} pid {pid} still alive after stop");
    assert!(!server.is_running());
    assert!(probe(kind, &endpoint, SHORT).is_err(), "answers after stop");
    assert!(dir.exists(), "stop keeps the data dir");

    // Restart: same port, same data dir, ready again.
    let t0 = Instant::now();
    server.restart().expect("restart after stop");
    eprintln!("{kind} restarted in {:?}", t0.elapsed());
    assert_eq!(server.endpoint(), endpoint, "restart keeps the port");
    assert_eq!(server.data_dir(), dir);
    let pid2 = server.pid().expect("pid after restart");
    assert_ne!(pid, pid2);
    server.probe(SHORT).expect("ready after restart");

    // Kill (crash) and restart.
    server.kill();
    assert!(!alive(pid2), "{kind} pid {pid2} alive after kill");
    assert!(probe(kind, &endpoint, SHORT).is_err(), "answers after kill");
    server.restart().expect("restart after kill");
    assert_eq!(server.endpoint(), endpoint);
    server.probe(SHORT).expect("ready after restart from kill");
    let pid3 = server.pid().expect("pid");

    // Restart while running stops first.
    server.restart().expect("restart while running");
    assert!(!alive(pid3));
    let pid4 = server.pid().expect("pid");

    // Drop: process gone, dir gone.
    drop(server);
    assert!(!alive(pid4), "{kind} pid {pid4} alive after drop");
    assert!(!dir.exists(), "drop removes {}", dir.display());
    assert!(
        processes_matching(&dir.to_string_lossy()).is_empty(),
        "processes left for {}",
        dir.display()
    );
}

/// While paused, a request times out (the TCP connect still succeeds: the kernel accepts);
/// after resume it answers again.
fn pause_resume(kind: Kind) {
    let Some(mut server) = start(&kind.to_string(), || Server::start(kind)) else {
        return;
    };
    let pid = server.pid().expect("pid");
    server.pause();
    let t0 = Instant::now();
    let err = server
        .probe(SHORT)
        .expect_err("a paused server must not answer");
    let waited = t0.elapsed();
    eprintln!(
        "{kind} paused: probe failed after {waited:?}: {}",
        err.message()
    );
    assert!(waited >= Duration::from_millis(400), "failed fast: {err}");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A container is paused by the cgroup freezer (`docker pause`): its tasks show D, not T.
    let containers = std::env::var("COORD_TESTKIT").is_ok_and(|v| v.trim() == "containers");
    assert!(
        state.contains(") T ") || (containers && state.contains(") D ")),
        "process should be stopped (T, or frozen D in a container): {state}"
    );
    assert!(server.is_running(), "paused is still running");

    server.resume();
    server.wait_ready(READY).expect("ready after resume");

    // stop() of a paused server works (it sends SIGCONT after SIGTERM).
    server.pause();
    let t0 = Instant::now();
    server.stop();
    assert!(!alive(pid));
    eprintln!("{kind} stopped while paused in {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "took the SIGKILL path"
    );
}

#[test]
fn zookeeper_lifecycle() {
    lifecycle(Kind::ZooKeeper, "java");
}

#[test]
fn etcd_lifecycle() {
    lifecycle(Kind::Etcd, "etcd");
}

#[test]
fn consul_lifecycle() {
    lifecycle(Kind::Consul, "consul");
}

#[test]
fn zookeeper_pause_resume() {
    pause_resume(Kind::ZooKeeper);
}

#[test]
fn etcd_pause_resume() {
    pause_resume(Kind::Etcd);
}

#[test]
fn consul_pause_resume() {
    pause_resume(Kind::Consul);
}

/// etcd keeps its data across a restart (same data dir), written through the v3 JSON gateway.
#[test]
fn etcd_restart_keeps_data() {
    let Some(mut server) = start("etcd", Server::etcd) else {
        return;
    };
    let ep = server.endpoint();
    // key "k1" = "azE=", value "v1" = "djE=" (base64).
    let (status, body) = http(
        &ep,
        "POST",
        "/v3/kv/put",
        r#"{"key":"azE=","value":"djE="}"#,
        Duration::from_secs(5),
    )
    .expect("put");
    assert_eq!(status, 200, "{body}");
    server.restart().expect("restart");
    let (status, body) = http(
        &ep,
        "POST",
        "/v3/kv/range",
        r#"{"key":"azE="}"#,
        Duration::from_secs(5),
    )
    .expect("range");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("djE="), "value lost across restart: {body}");
}

/// The Consul agent is usable right after start: its node has a passing serfHealth check,
/// so a session bound to it can be created.
#[test]
fn consul_session_right_after_start() {
    let Some(server) = start("Consul", Server::consul) else {
        return;
    };
    let (status, body) = http(
        &server.endpoint(),
        "PUT",
        "/v1/session/create",
        r#"{"Name":"t","TTL":"10s","Behavior":"delete","LockDelay":"0s"}"#,
        Duration::from_secs(5),
    )
    .expect("session create");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ID\""), "{body}");
}

/// Servers started at the same time get distinct ports and dirs.
#[test]
fn concurrent_starts_get_distinct_ports() {
    let handles: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| start("etcd", Server::etcd)))
        .collect();
    let servers: Vec<Server> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("thread"))
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(Server::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        s.probe(SHORT).expect("ready");
    }
}

/// A test that panics still stops its server (Drop runs while unwinding).
#[test]
fn panic_unwinding_stops_the_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let Some(server) = start("etcd", Server::etcd) else {
            return;
        };
        tx.send((server.pid().expect("pid"), server.data_dir().to_path_buf()))
            .expect("send");
        panic!("test body panics while the server runs");
    })
    .join();
    let Ok((pid, dir)) = rx.recv() else {
        return; // skipped: etcd not installed
    };
    assert!(joined.is_err(), "the thread panicked");
    assert!(!alive(pid), "pid {pid} alive after unwinding");
    assert!(!dir.exists(), "{} left after unwinding", dir.display());
}
