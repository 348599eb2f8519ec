//! Runs the examples with small parameters and checks their summaries: on mem://, and on every
//! real backend compiled in (servers from the test kit).
//!
//! Each run is `cargo run --example NAME` (bounded by a timeout; the child is killed on
//! timeout), so the examples are built as a user would run them.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs an example and returns its stdout; panics on timeout or a non-zero exit.
fn run_example(name: &str, args: &[&str], limit: Duration) -> String {
    run_example_with(name, "", args, limit)
}

/// Like [`run_example`], with the cargo features `features` (comma-separated) enabled.
fn run_example_with(name: &str, features: &str, args: &[&str], limit: Duration) -> String {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--quiet"]);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let mut child = cmd
        .args(["--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cargo run");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Building the example is not part of the run's budget: cargo builds it before it runs,
    // and the first build may take a while on a cold cache.
    let deadline = Instant::now() + limit + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = ro.join().expect("stdout reader");
    let stderr = re.join().expect("stderr reader");
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("example {name} exited with {s}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        None => {
            panic!("example {name} did not finish in time\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
}

fn assert_has(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(out.contains(n), "missing {n:?} in:\n{out}");
    }
}

#[test]
fn election_example() {
    let out = run_example(
        "election",
        &["--nodes", "3", "--rounds", "2", "--interval", "1.2"],
        Duration::from_secs(20),
    );
    assert_has(
        &out,
        &[
            "== summary ==",
            "tokens strictly increasing: yes",
            "most leaders at once:    1",
        ],
    );
}

#[test]
fn tour_example() {
    let out = run_example("tour", &[], Duration::from_secs(20));
    assert_has(
        &out,
        &[
            "stale compare-and-set refused as expected",
            "members at the end: []",
        ],
    );
}

#[test]
fn autohealer_example() {
    let out = run_example(
        "autohealer",
        &["--workers", "3", "--kill-every", "1", "--rounds", "2"],
        Duration::from_secs(20),
    );
    assert_has(
        &out,
        &[
            "== summary ==",
            "kills:                   2",
            "every kill was healed:   yes",
        ],
    );
}

#[test]
fn leader_workers_example() {
    let out = run_example(
        "leader_workers",
        &["--work-ms", "50"],
        Duration::from_secs(20),
    );
    assert_has(
        &out,
        &[
            "== summary ==",
            "top 10 words:",
            "who did what:",
            "reassignments:",
            "merged counts equal a single-process count: yes",
        ],
    );
    // The partitioner rebalanced: the dead worker's unfinished parts moved to the others,
    // and only those (every reassignment comes from node-5).
    let reassigned: Vec<&str> = out.lines().filter(|l| l.contains("REASSIGN ")).collect();
    assert!(
        !reassigned.is_empty(),
        "no rebalance after node-5 died:\n{out}"
    );
    assert!(
        reassigned
            .iter()
            .all(|l| l.contains(": node-5 -> node-") && l.ends_with("(rebalanced: node-5 left)")),
        "{reassigned:?}"
    );
    assert_has(&out, &["gets parts ["]);
    // Both crashes happened and the job was taken over by a second leader.
    assert_has(
        &out,
        &[
            "worker node-5 died mid-request",
            "leader node-1 crashed mid-job",
            "-> node-2",
        ],
    );
}

/// A fresh namespace URL on the kit's shared server for `kind`, or `None` (loud skip, or a
/// panic under `COORD_REQUIRE_BACKENDS=1`, from the kit).
#[allow(dead_code)]
fn real_url(
    kind: coord_testkit::Kind,
    scheme: &str,
    ttl_option: &str,
    test: &str,
) -> Option<String> {
    let ep = coord_testkit::shared_endpoints(kind)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Some(format!(
        "{scheme}://{ep}/examples-{test}-{nanos}?{ttl_option}=2s"
    ))
}

/// The election demo on each real backend compiled in.
macro_rules! election_on {
    ($name:ident, $feature:literal, $kind:ident, $scheme:literal, $ttl:literal) => {
        #[cfg(feature = $feature)]
        #[test]
        fn $name() {
            let Some(url) = real_url(coord_testkit::Kind::$kind, $scheme, $ttl, "election") else {
                return;
            };
            let out = run_example_with(
                "election",
                $feature,
                &[
                    "--url",
                    &url,
                    "--nodes",
                    "3",
                    "--rounds",
                    "2",
                    "--interval",
                    "1.5",
                ],
                Duration::from_secs(60),
            );
            assert_has(
                &out,
                &[
                    "== summary ==",
                    "tokens strictly increasing: yes",
                    "most leaders at once:    1",
                ],
            );
        }
    };
}

election_on!(
    election_example_on_zk,
    "zk",
    ZooKeeper,
    "zk",
    "session_timeout"
);
election_on!(
    election_example_on_etcd,
    "etcd",
    Etcd,
    "etcd",
    "session_ttl"
);
election_on!(
    election_example_on_consul,
    "consul",
    Consul,
    "consul",
    "session_ttl"
);

/// The autohealer with real worker processes (kill -9) on ZooKeeper.
#[cfg(feature = "zk")]
#[test]
fn autohealer_real_processes_on_zk() {
    let Some(url) = real_url(
        coord_testkit::Kind::ZooKeeper,
        "zk",
        "session_timeout",
        "heal",
    ) else {
        return;
    };
    let out = run_example_with(
        "autohealer",
        "zk",
        &[
            "--url",
            &url,
            "--workers",
            "3",
            "--kill-every",
            "3",
            "--rounds",
            "2",
        ],
        Duration::from_secs(60),
    );
    assert_has(
        &out,
        &[
            "chaos: kill -9",
            "kills:                   2",
            "every kill was healed:   yes",
        ],
    );
}
