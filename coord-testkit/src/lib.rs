//! Real ZooKeeper, etcd and Consul servers for coord's tests.
//!
//! The test kit starts real server processes (from the Debian packages that
//! `scripts/install-backends.sh` installs) on free `127.0.0.1` ports, each with its data and
//! log file in its own temp dir, and waits until they are ready:
//!
//! - [`Server`]: one process — [`Server::zookeeper`], [`Server::etcd`], [`Server::consul`] —
//!   with [`stop`](Server::stop), [`kill`](Server::kill), [`pause`](Server::pause),
//!   [`resume`](Server::resume) and [`restart`](Server::restart) (same port, same data).
//! - [`Cluster`]: a ZooKeeper ensemble, a static etcd cluster or a Consul datacenter of `n`
//!   members ([`Cluster::zookeeper`], [`Cluster::etcd`], [`Cluster::consul`]).
//! - [`shared_endpoints`]: the endpoints a test suite should use — from an environment
//!   variable when set, else one server per kind shared by the whole test process.
//! - [`CustomServer`]: an etcd or Consul server with the test's own arguments (TLS, ACLs), run
//!   by the same provider.
//! - [`netns`]: real network partitions — clusters ([`Cluster::zookeeper_in`],
//!   [`Cluster::etcd_in`], [`Cluster::consul_in`], Consul client agents with
//!   [`Cluster::consul_agents_in`]) and clients each in its own network namespace on a private
//!   bridge, with [`netns::Net::isolate`] / [`netns::Net::heal`].
//! - [`harness`]: the conformance [`Harness`](coord_core::conformance::Harness) of a backend
//!   reached by URL ([`harness::UrlHarness`]), which the adapters' `testing` modules
//!   instantiate with their backend's expire/crash mechanics.
//!
//! The servers' API is synchronous (no async runtime needed), so it works from any test;
//! only [`harness`] is async (tokio).
//!
//! # No leaked processes
//!
//! Every server runs under a tiny `/bin/sh` supervisor whose stdin is a pipe that only the test
//! process holds open. When the test process exits — normally, by a panic, or by `SIGKILL` —
//! the kernel closes the pipe; the supervisor sees EOF, stops the server (`SIGTERM`, then
//! `SIGKILL` after 5 s) and removes its temp dir. `Drop` of a [`Server`] or [`Cluster`] stops
//! its processes right away (also during unwinding). Should the supervisor itself be killed,
//! the kernel kills its server (`setpriv --pdeathsig KILL`, util-linux, when present). The
//! signals of [`Server::pause`] etc. go to the real server pid, never to the supervisor.
//! Servers run in their own process group, so a Ctrl-C in the terminal reaches the test
//! process only and the servers are stopped through the lifeline.
//!
//! # Containers
//!
//! With `COORD_TESTKIT=containers` the same API runs each server in a container (`docker run`
//! of the kind's image) instead of a process: host networking on the same free 127.0.0.1
//! ports, the server's temp dir bind-mounted at the same path, the container's output followed
//! into the log file. [`Server::pause`]/[`Server::resume`] are `docker pause`/`unpause`,
//! [`Server::kill`] is `docker kill`, [`Server::stop`] a `SIGTERM` then `docker kill`,
//! [`Server::restart`] a fresh container on the same ports and data; [`Server::pid`] is the host
//! pid of the server, the container's first process. Containers are removed on drop, and by a per-process lifeline
//! (owner label) when the test process exits however it exits. A daemon that does not answer
//! counts as a backend that is not installed (skip, or fail with `COORD_REQUIRE_BACKENDS=1`).
//!
//! # Environment
//!
//! | variable | meaning |
//! | --- | --- |
//! | `COORD_REQUIRE_BACKENDS=1` | a backend that cannot be started or reached is a failure (panic), never a skip |
//! | `COORD_ZK_ENDPOINTS`, `COORD_ETCD_ENDPOINTS`, `COORD_CONSUL_ENDPOINTS` | use these running servers in [`shared_endpoints`] instead of starting one |
//! | `COORD_TOOLS_DIR` | where `etcd` and `consul` were unpacked (default `<workspace>/.tools`) |
//! | `COORD_ETCD_BIN`, `COORD_CONSUL_BIN`, `COORD_JAVA`, `COORD_ZK_CLASSPATH` | exact binaries / classpath to use |
//! | `COORD_TESTKIT_START_TIMEOUT_SECS` | bound for a server to become ready (default 30) |
//! | `COORD_ZK_TICK_MS` | ZooKeeper's `tickTime` (default 500; 10–2000): its session-expiry granularity |
//! | `COORD_ZK_SYNC_LIMIT` | ZooKeeper's `syncLimit` in ticks (default 5, 2 in network namespaces; 1–20): how long a leader keeps its quorum without hearing from it |
//! | `COORD_TESTKIT=containers` | run every server in a container instead of a process (see below); `processes` (the default) or unset: processes |
//! | `COORD_ZK_IMAGE`, `COORD_ETCD_IMAGE`, `COORD_CONSUL_IMAGE` | the containers' images (defaults: `zookeeper:3.9.3`, `quay.io/coreos/etcd:v3.5.16`, `hashicorp/consul:1.8.7`; `scripts/build-test-images.sh` builds local `coord-test/...` ones) |
//! | `DOCKER_HOST` | the docker daemon of the containers |
//! | `COORD_CURATOR_CLASSPATH`, `COORD_PYTHON` | the Curator classpath and the Python with kazoo of the mixed-fleet [`peers`] (default: Debian's `/usr/share/java` jars, `/usr/bin/python3`) |
//! | `COORD_TESTKIT_KEEP=1` | keep the temp dirs of dropped servers (for debugging) |
//! | `TMPDIR` | where the temp dirs go |
//!
//! # Example
//!
//! ```no_run
//! use coord_testkit::{Kind, Server};
//!
//! let mut etcd = Server::etcd()?;
//! let endpoint = etcd.endpoint(); // "127.0.0.1:PORT"
//! etcd.pause();                   // the server stops answering
//! etcd.resume();
//! etcd.restart()?;                // same port, same data
//! # let _ = (endpoint, Kind::Etcd);
//! # Ok::<(), coord_testkit::Error>(())
//! ```
#![warn(missing_docs, unreachable_pub)]

mod container;
mod custom;
mod error;
pub mod harness;
pub mod hostile;
pub mod netns;
pub mod peers;
mod probe;
mod proxy;
mod server;
mod supervisor;
mod util;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use custom::CustomServer;
pub use error::Error;
pub use proxy::Proxy;
pub use server::{Cluster, Server};

/// Which coordination server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Apache ZooKeeper (Debian package `zookeeper`, run with the machine's `java`).
    ZooKeeper,
    /// etcd (Debian `etcd-server`, unpacked into the tools dir).
    Etcd,
    /// HashiCorp Consul (Debian bullseye `consul`, unpacked into the tools dir).
    Consul,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 3] = [Kind::ZooKeeper, Kind::Etcd, Kind::Consul];

    /// The environment variable that names running servers of this kind for
    /// [`shared_endpoints`]: `COORD_ZK_ENDPOINTS`, `COORD_ETCD_ENDPOINTS` or
    /// `COORD_CONSUL_ENDPOINTS`.
    pub fn endpoints_env(self) -> &'static str {
        match self {
            Kind::ZooKeeper => "COORD_ZK_ENDPOINTS",
            Kind::Etcd => "COORD_ETCD_ENDPOINTS",
            Kind::Consul => "COORD_CONSUL_ENDPOINTS",
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::ZooKeeper => 0,
            Kind::Etcd => 1,
            Kind::Consul => 2,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::ZooKeeper => "ZooKeeper",
            Kind::Etcd => "etcd",
            Kind::Consul => "Consul",
        })
    }
}

/// The tools dir where `scripts/install-backends.sh` unpacks etcd and Consul:
/// `COORD_TOOLS_DIR` if set, else `<workspace root>/.tools` (found from this crate's
/// `CARGO_MANIFEST_DIR` at compile time).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COORD_TOOLS_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join(".tools")
}

/// Whether backends are required: `COORD_REQUIRE_BACKENDS` is set to `1` (or `true`/`yes`).
/// Then a backend that cannot be started or reached makes the test fail instead of skip.
pub fn require_backends() -> bool {
    util::env_flag("COORD_REQUIRE_BACKENDS")
}

/// Checks that a `kind` deployment at `endpoints` (comma-separated `host:port`, an optional
/// `http://` is ignored) answers as ready — at least one endpoint, each check bounded by
/// `timeout`: ZooKeeper answers `srvr` with a `Mode:` (or accepts a session), etcd's
/// `/health` is true, Consul has a leader.
pub fn probe(kind: Kind, endpoints: &str, timeout: Duration) -> Result<(), Error> {
    probe::probe_any(kind, endpoints, timeout)
}

/// Per kind: the shared endpoints, or why there are none.
static SHARED: [OnceLock<Result<String, String>>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// The shared servers. A static is never dropped: the supervisors stop these servers when the
/// test process exits.
static SHARED_SERVERS: Mutex<Vec<Server>> = Mutex::new(Vec::new());

/// The endpoints a test suite should use for `kind`.
///
/// From `COORD_ZK_ENDPOINTS` / `COORD_ETCD_ENDPOINTS` / `COORD_CONSUL_ENDPOINTS` when set (after
/// checking that they answer), else from a server that this test process starts once, on the
/// first call (later calls, from any thread, get the same endpoint), and that is stopped when
/// the test process exits. Tests sharing it must each work in their own namespace.
///
/// If the server cannot be started or reached: with [`require_backends`] this panics with a
/// clear message; otherwise it prints a loud `SKIPPED: <kind> not available: <why>` line to
/// stderr (not captured by the test harness) and returns `None`, and the test should return.
pub fn shared_endpoints(kind: Kind) -> Option<String> {
    let thread = std::thread::current();
    shared_endpoints_for(kind, thread.name().unwrap_or("?"))
}

/// [`shared_endpoints`] for the test named `test` in the skip line (when called from another
/// thread than the test's own, as [`harness::endpoints`] does).
fn shared_endpoints_for(kind: Kind, test: &str) -> Option<String> {
    let result = SHARED[kind.index()].get_or_init(|| init_shared(kind));
    match result {
        Ok(endpoints) => Some(endpoints.clone()),
        Err(why) => {
            if require_backends() {
                panic!("{kind} is required (COORD_REQUIRE_BACKENDS=1) but not available: {why}");
            }
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: {kind} not available: {why}\n  \
                 (test {test}; run scripts/install-backends.sh, or set {} to running servers; \
                 COORD_REQUIRE_BACKENDS=1 makes this a failure)",
                kind.endpoints_env()
            );
            None
        }
    }
}

fn init_shared(kind: Kind) -> Result<String, String> {
    let var = kind.endpoints_env();
    if let Some(endpoints) = util::env_nonempty(var) {
        let endpoints = endpoints.trim().to_string();
        return match probe::probe_any(kind, &endpoints, Duration::from_secs(5)) {
            Ok(()) => Ok(endpoints),
            Err(e) => Err(format!("{var}={endpoints} does not answer: {e}")),
        };
    }
    let server = Server::start(kind).map_err(|e| e.to_string())?;
    let endpoint = server.endpoint();
    SHARED_SERVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(server);
    Ok(endpoint)
}
