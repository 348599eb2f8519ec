//! `shared_endpoints`, the environment variables, skip-vs-fail, and "no process survives the
//! test process". These tests run this same test binary again as a child process (the
//! `child_entry` test, which does nothing unless `COORD_TESTKIT_CHILD` is set), with its own
//! `TMPDIR`, so every server it starts has that unique path in its command line.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{processes_matching, start, wait_no_processes};
use coord_testkit::{require_backends, shared_endpoints, Kind, Server};

const CHILD: &str = "COORD_TESTKIT_CHILD";

// ------------------------------------------------------------------------------------------
// The child side.
// ------------------------------------------------------------------------------------------

#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD) else {
        return;
    };
    // libtest has printed "test child_entry ... " without a newline.
    println!();
    match scenario.as_str() {
        // Start the shared server of every kind, plus two servers that are never dropped;
        // then exit normally, or hang until killed.
        "start-all" => {
            for kind in Kind::ALL {
                match shared_endpoints(kind) {
                    Some(ep) => {
                        assert_eq!(shared_endpoints(kind).as_deref(), Some(&*ep), "same again");
                        println!("ENDPOINT {kind} {ep}");
                    }
                    None => println!("NONE {kind}"),
                }
            }
            if let Ok(s) = Server::etcd() {
                println!("FORGOTTEN {}", s.data_dir().display());
                std::mem::forget(s);
            }
            if let Ok(s) = Server::zookeeper() {
                s.pid().expect("pid");
                println!("FORGOTTEN {}", s.data_dir().display());
                std::mem::forget(s);
            }
            println!("READY");
            if std::env::var("COORD_TESTKIT_CHILD_HANG").is_ok() {
                std::thread::sleep(Duration::from_secs(120));
            }
        }
        // Print what shared_endpoints(etcd) gives.
        "shared-etcd" => {
            let got = shared_endpoints(Kind::Etcd);
            println!("RESULT {got:?}");
        }
        // The tests' own start helper with a missing binary.
        "start-etcd" => {
            let got = start("etcd", Server::etcd).map(|s| s.endpoint());
            println!("RESULT {got:?}");
        }
        other => panic!("unknown child scenario {other}"),
    }
}

// ------------------------------------------------------------------------------------------
// The parent side.
// ------------------------------------------------------------------------------------------

static ROOTS: AtomicU32 = AtomicU32::new(0);

/// A unique TMPDIR for one child; removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(label: &str) -> Root {
        let dir = std::env::temp_dir().join(format!(
            "coord-testkit-leakcheck-{label}-{}-{}",
            std::process::id(),
            ROOTS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create TMPDIR root");
        Root(dir)
    }

    fn needle(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this run's servers are containers (`COORD_TESTKIT=containers`).
fn containers() -> bool {
    std::env::var("COORD_TESTKIT").is_ok_and(|v| v.trim() == "containers")
}

/// A command running this test binary's `child_entry` with `scenario`, a clean `COORD_*`
/// environment (only the binary overrides and the provider with its images are kept, so a
/// container run checks that no container survives either) and `TMPDIR=root`.
fn child(scenario: &str, root: &Root) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"]);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("COORD_")
            && !matches!(
                &*k,
                "COORD_TOOLS_DIR"
                    | "COORD_ETCD_BIN"
                    | "COORD_CONSUL_BIN"
                    | "COORD_JAVA"
                    | "COORD_ZK_CLASSPATH"
                    | "COORD_TESTKIT"
                    | "COORD_ZK_IMAGE"
                    | "COORD_ETCD_IMAGE"
                    | "COORD_CONSUL_IMAGE"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env(CHILD, scenario)
        .env("TMPDIR", &root.0)
        .env("RUST_BACKTRACE", "0");
    cmd
}

fn run(mut cmd: Command) -> (Output, String, String) {
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn result_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no RESULT line in child output:\n{stdout}"))
}

/// Reads the child's stdout up to the READY line (bounded); returns the lines.
fn read_until_ready(child: &mut Child, timeout: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the receiver is gone, so the child never writes into a
        // closed pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line == "READY";
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => panic!("child not READY in {timeout:?}; output so far: {lines:#?}"),
        }
    }
}

/// Checks the child started everything (or skips, or fails when backends are required).
fn started_all(lines: &[String]) -> bool {
    let missing: Vec<&String> = lines.iter().filter(|l| l.starts_with("NONE ")).collect();
    if missing.is_empty() {
        let forgotten = lines.iter().filter(|l| l.starts_with("FORGOTTEN ")).count();
        assert_eq!(forgotten, 2, "{lines:#?}");
        return true;
    }
    assert!(
        !require_backends(),
        "backends required but the child could not start: {missing:?}"
    );
    eprintln!("SKIPPED: some backends are not available: {missing:?}");
    false
}

fn assert_nothing_left(root: &Root, what: &str) {
    let t0 = Instant::now();
    let left = wait_no_processes(&root.needle(), Duration::from_secs(20));
    assert!(left.is_empty(), "{what}: processes left behind: {left:#?}");
    eprintln!("{what}: all server processes gone {:?} after", t0.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.entries().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        root.entries().is_empty(),
        "{what}: temp dirs left behind: {:?}",
        root.entries()
    );
}

#[test]
fn shared_and_forgotten_servers_die_when_the_test_process_exits() {
    let root = Root::new("exit");
    let mut cmd = child("start-all", &root);
    if require_backends() {
        cmd.env("COORD_REQUIRE_BACKENDS", "1");
    }
    let mut proc = cmd.stdout(Stdio::piped()).spawn().expect("spawn child");
    let lines = read_until_ready(&mut proc, Duration::from_secs(120));
    let status = proc.wait().expect("wait child");
    assert!(status.success(), "child failed: {status}; {lines:#?}");
    if started_all(&lines) {
        assert_nothing_left(&root, "after a normal exit");
    }
}

#[test]
fn shared_and_forgotten_servers_die_when_the_test_process_is_killed() {
    let root = Root::new("kill");
    let mut cmd = child("start-all", &root);
    if require_backends() {
        cmd.env("COORD_REQUIRE_BACKENDS", "1");
    }
    cmd.env("COORD_TESTKIT_CHILD_HANG", "1");
    let mut proc = cmd.stdout(Stdio::piped()).spawn().expect("spawn child");
    let lines = read_until_ready(&mut proc, Duration::from_secs(120));
    let all = started_all(&lines);
    if all {
        // The check sees them while the child lives: 3 shared + 2 forgotten servers (plus
        // their supervisors, whose command lines name the dir too).
        let running = processes_matching(&root.needle());
        for needle in ["java", "etcd", "consul"] {
            assert!(
                running.iter().any(|l| l.contains(needle)),
                "no {needle} process found before the kill: {running:#?}"
            );
        }
    }
    proc.kill().expect("SIGKILL the child");
    proc.wait().expect("reap child");
    if all {
        assert_nothing_left(&root, "after SIGKILL of the test process");
    } else {
        let _ = wait_no_processes(&root.needle(), Duration::from_secs(20));
    }
}

#[test]
fn shared_endpoints_uses_the_env_var() {
    // A real etcd started here; the child must use it instead of starting its own.
    let Some(server) = start("etcd", Server::etcd) else {
        return;
    };
    let root = Root::new("env");
    let mut cmd = child("shared-etcd", &root);
    cmd.env("COORD_ETCD_ENDPOINTS", server.endpoint());
    let (out, stdout, stderr) = run(cmd);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        result_line(&stdout),
        format!("Some({:?})", server.endpoint()),
        "{stderr}"
    );
    assert!(
        root.entries().is_empty(),
        "the child started a server: {:?}",
        root.entries()
    );
}

#[test]
fn shared_endpoints_starts_a_server_without_the_env_var() {
    let root = Root::new("noenv");
    let mut cmd = child("shared-etcd", &root);
    if require_backends() {
        cmd.env("COORD_REQUIRE_BACKENDS", "1");
    }
    let (out, stdout, stderr) = run(cmd);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let result = result_line(&stdout);
    if result == "None" {
        assert!(stderr.contains("SKIPPED: etcd not available"), "{stderr}");
        assert!(!require_backends(), "etcd required but skipped: {stderr}");
        eprintln!("SKIPPED: etcd not available (see child output)");
        return;
    }
    assert!(result.starts_with("Some(\"127.0.0.1:"), "{result}");
    assert_nothing_left(&root, "shared etcd after exit");
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn unreachable_env_endpoints_skip_loudly_or_fail_when_required() {
    let endpoints = format!("127.0.0.1:{}", closed_port());
    // Not required: None and a SKIPPED line on stderr.
    let root = Root::new("unreach");
    let mut cmd = child("shared-etcd", &root);
    cmd.env("COORD_ETCD_ENDPOINTS", &endpoints);
    let (out, stdout, stderr) = run(cmd);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(result_line(&stdout), "None");
    assert!(
        stderr.contains("SKIPPED: etcd not available") && stderr.contains("COORD_ETCD_ENDPOINTS"),
        "{stderr}"
    );
    // Required: the test fails with a clear message.
    let mut cmd = child("shared-etcd", &root);
    cmd.env("COORD_ETCD_ENDPOINTS", &endpoints)
        .env("COORD_REQUIRE_BACKENDS", "1");
    let (out, stdout, stderr) = run(cmd);
    assert!(!out.status.success(), "must fail:\n{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    assert!(
        all.contains("etcd is required (COORD_REQUIRE_BACKENDS=1) but not available"),
        "{all}"
    );
}

#[test]
fn missing_binaries_skip_loudly_or_fail_when_required() {
    let root = Root::new("missing");
    // With containers the server's "binary" is its image: one on a registry at a closed
    // loopback port, so docker fails at once and never contacts anything beyond 127.0.0.1.
    let (var, missing) = if containers() {
        (
            "COORD_ETCD_IMAGE",
            format!("127.0.0.1:{}/coord-testkit/etcd:missing", closed_port()),
        )
    } else {
        (
            "COORD_ETCD_BIN",
            "/nonexistent/coord-testkit/etcd".to_string(),
        )
    };
    for scenario in ["shared-etcd", "start-etcd"] {
        // Not required: skipped, loudly.
        let mut cmd = child(scenario, &root);
        cmd.env(var, &missing);
        let (out, stdout, stderr) = run(cmd);
        assert!(out.status.success(), "{scenario}: {stdout}\n{stderr}");
        assert_eq!(result_line(&stdout), "None", "{scenario}");
        assert!(
            stderr.contains("SKIPPED: etcd not available"),
            "{scenario}: {stderr}"
        );
        // Required: a failure, never a skip.
        let mut cmd = child(scenario, &root);
        cmd.env(var, &missing).env("COORD_REQUIRE_BACKENDS", "1");
        let (out, stdout, stderr) = run(cmd);
        assert!(
            !out.status.success(),
            "{scenario} must fail:\n{stdout}\n{stderr}"
        );
        let all = format!("{stdout}\n{stderr}");
        assert!(all.contains(&missing), "{all}");
        assert!(!all.contains("SKIPPED"), "{all}");
    }
}
