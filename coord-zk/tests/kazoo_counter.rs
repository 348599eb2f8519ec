//! The shared counter stores what kazoo's `Counter` stores (decimal text; an empty node is 0):
//! a kazoo client (Debian's python3-kazoo, run by /usr/bin/python3) and coord add to the same
//! counter at the same time, each with its own compare-and-set loop, and no add is lost.

use std::process::Command;
use std::time::Duration;

use coord_core::Client;
use coord_zk::testing::{endpoints, unique_suffix};

/// Debian's Python, the one python3-kazoo is installed for.
const PYTHON: &str = "/usr/bin/python3";

/// Adds 1 `argv[3]` times with kazoo's Counter at `argv[2]` (a full ZooKeeper path), then
/// prints the value it read first.
const KAZOO: &str = r#"
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1])
zk.start(timeout=20)
c = zk.Counter(sys.argv[2])
first = c.value
for _ in range(int(sys.argv[3])):
    c += 1
print(first)
zk.stop()
"#;

const ADDS: i64 = 200;

fn kazoo_available() -> Result<(), String> {
    let out = Command::new(PYTHON)
        .args(["-c", "import kazoo"])
        .output()
        .map_err(|e| format!("{PYTHON}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_and_coord_add_to_one_counter() {
    let Some(ep) = endpoints().await else { return };
    if let Err(why) = kazoo_available() {
        assert!(
            !coord_testkit::require_backends(),
            "kazoo is required (python3-kazoo, see scripts/install-backends.sh): {why}"
        );
        eprintln!("SKIPPED: kazoo not available: {why} (scripts/install-backends.sh installs it)");
        return;
    }
    let ns = format!("/kazoo-counter-{}", unique_suffix());
    let backend = coord_zk::connect(&format!("zk://{ep}{ns}"))
        .await
        .expect("connect");
    let client = Client::new(backend);
    let counter = client.counter("hits").expect("name");
    assert_eq!(counter.add(-5).await.expect("add"), -5);
    let path = format!("{ns}/counters/hits");
    let kazoo = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON)
            .args(["-c", KAZOO, &ep, &path, &ADDS.to_string()])
            .output()
    });
    for _ in 0..ADDS {
        counter.add(1).await.expect("coord add");
    }
    let out = tokio::time::timeout(Duration::from_secs(120), kazoo)
        .await
        .expect("kazoo finishes")
        .expect("join")
        .expect("run python");
    assert!(
        out.status.success(),
        "kazoo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kazoo read coord's value (somewhere between the first add and all of coord's adds).
    let first: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("kazoo printed a number");
    assert!((-5..=ADDS - 5).contains(&first), "kazoo read {first}");
    assert_eq!(
        counter.get().await.expect("get"),
        -5 + 2 * ADDS,
        "adds lost"
    );
}
