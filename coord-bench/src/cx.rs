//! The context of one backend's run: its coord backend, its raw client, the sizes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::{Backend, Path, Session};

use crate::raw::Raw;
use crate::stats::Res;

/// How much of everything to do.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Rounds of the sequential kernel latency loop (each round: every op once, coord and raw).
    pub kernel_rounds: usize,
    /// Operations per throughput phase.
    pub tput_ops: usize,
    /// Operations in flight in the throughput phases.
    pub tput_concurrency: usize,
    /// Rounds of the watch latency loop.
    pub watch_rounds: usize,
    /// Clean handovers.
    pub clean_rounds: usize,
    /// Crash handovers.
    pub crash_rounds: usize,
    /// Candidates per herd size.
    pub herd: Vec<usize>,
    /// Leadership changes measured per herd size.
    pub herd_changes: usize,
    /// Registration → visible rounds.
    pub reg_rounds: usize,
    /// Instances of the discovered service.
    pub discover_instances: usize,
    /// Discover rounds.
    pub discover_rounds: usize,
    /// Cached lookups timed.
    pub cache_lookups: usize,
    /// Grandchildren under the 10 children.
    pub grandchildren: usize,
    /// Rounds of each children listing.
    pub list_rounds: usize,
    /// Sessions / watches / registrations in the memory phases.
    pub mem_n: usize,
    /// Adds per client of the counter phases (item 11).
    pub counter_adds: usize,
}

impl Sizes {
    /// The full run (the figures in docs/BENCHMARKS.md).
    pub fn full() -> Sizes {
        Sizes {
            kernel_rounds: 400,
            tput_ops: 2000,
            tput_concurrency: 32,
            watch_rounds: 200,
            clean_rounds: 30,
            crash_rounds: 10,
            herd: vec![10, 100, 1000],
            herd_changes: 9,
            reg_rounds: 50,
            discover_instances: 1000,
            discover_rounds: 20,
            cache_lookups: 2_000_000,
            grandchildren: 100_000,
            list_rounds: 200,
            mem_n: 1000,
            counter_adds: 500,
        }
    }

    /// `--quick`: smaller sizes, under two minutes for the four backends.
    pub fn quick() -> Sizes {
        Sizes {
            kernel_rounds: 100,
            tput_ops: 400,
            tput_concurrency: 32,
            watch_rounds: 40,
            clean_rounds: 5,
            crash_rounds: 2,
            herd: vec![10, 100],
            herd_changes: 4,
            reg_rounds: 10,
            discover_instances: 200,
            discover_rounds: 5,
            cache_lookups: 200_000,
            grandchildren: 2_000,
            list_rounds: 50,
            mem_n: 200,
            counter_adds: 100,
        }
    }
}

/// One backend's context.
pub struct Cx {
    /// `mem`, `zk`, `etcd` or `consul`.
    pub name: &'static str,
    /// The coord URL (with this run's namespace and options).
    pub url: String,
    /// The coord backend.
    pub backend: Arc<dyn Backend>,
    /// The raw client (none for mem).
    pub raw: Option<Raw>,
    /// A unique suffix of this run.
    pub uniq: String,
    /// The sizes.
    pub sizes: Sizes,
}

/// The default bound of a single awaited step.
pub const STEP: Duration = Duration::from_secs(60);

/// Awaits `f` within `d`, naming `what` on timeout.
pub async fn within<T, F: Future<Output = T>>(d: Duration, what: &str, f: F) -> Res<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| format!("{what}: no result within {d:?}").into())
}

/// Parses a path (the paths here are constants and always valid).
pub fn path(s: &str) -> Res<Path> {
    Ok(Path::new(s)?)
}

impl Cx {
    /// The key under which the server stores coord's node `p` (for raw watches and bulk
    /// writes): the chrooted ZooKeeper path, the etcd layout key, the Consul layout key.
    pub fn server_key(&self, p: &Path) -> Res<Vec<u8>> {
        let ns = self.backend.namespace();
        Ok(match self.name {
            "zk" => format!("{}{}", ns.trim_end_matches('/'), p.as_str()).into_bytes(),
            // etcd and Consul share coord's flat-store layout.
            "etcd" | "consul" => coord_etcd::Layout::new(ns).node(p).into_bytes(),
            other => return Err(format!("{other} has no server keys").into()),
        })
    }

    /// Waits until `dir` has at least `n` children (candidates queued).
    pub async fn wait_children(&self, dir: &Path, n: usize, bound: Duration) -> Res<()> {
        let deadline = Instant::now() + bound;
        loop {
            let have = match self.backend.children(dir).await {
                Ok(v) => v.len(),
                Err(coord::Error::NotFound { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            if have >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{dir}: {have} of {n} candidates after {bound:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Simulates a client that dies without closing: the adapter's crash hook on `s`.
pub fn crash(s: &Arc<dyn Session>) -> Res<()> {
    let any = s.as_any();
    if let Some(m) = any.downcast_ref::<coord::mem::MemSession>() {
        m.crash();
    } else if let Some(z) = any.downcast_ref::<coord_zk::ZkSession>() {
        if !z.crash() {
            return Err("the ZooKeeper session's task could not be aborted".into());
        }
    } else if let Some(e) = any.downcast_ref::<coord_etcd::EtcdSession>() {
        e.crash();
    } else if let Some(c) = any.downcast_ref::<coord_consul::ConsulSession>() {
        c.crash();
    } else {
        return Err("unknown session type: no crash hook".into());
    }
    Ok(())
}
