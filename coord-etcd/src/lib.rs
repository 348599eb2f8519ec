//! coord's etcd backend: `etcd://[user:password@]host:port[,host:port…][/namespace][?options]`.
//!
//! - **Sessions** are leases kept alive by the adapter ([`EtcdSession`]); ephemerals are keys
//!   attached to the lease.
//! - **The key tree** is mapped onto etcd's flat key space with the depth in every key, so that
//!   the children of a parent are one exact key prefix ([`Layout`]): listing and watching
//!   children costs O(children), not O(subtree).
//! - **Every rule is one transaction**: a create compares the parent (exists, has no lease)
//!   and the key (absent); a sequential create also compares the parent's counter; a delete
//!   compares that the children range is empty; versioned writes compare the key's
//!   `mod_revision`, which is the [`coord_core::Version`].
//! - **Watches** start at the read's revision + 1, resume from the last seen revision + 1 after
//!   a broken stream, and re-read and yield `Resync` when etcd compacted the revision they need.
//! - **Cluster settings**: run etcd before 3.6 with `--pre-vote=true` (3.6 makes it the
//!   default). Without it a member cut off from the others campaigns at ever higher terms,
//!   and when the cut heals it deposes the majority's leader: no lease can be renewed until
//!   the next election ends, so sessions with short TTLs expire on the side that kept the
//!   quorum (docs/RELIABILITY.md, finding (l)). No client-side setting avoids it.
//! - **Connections**: a keep-alive that gets no answer within its bound makes the backend
//!   replace its connections (at most once per two `connect_timeout`s). A connection cut off
//!   by the network stays in use until its HTTP/2 ping times out (`keepalive` + 1 s; etcd
//!   refuses pings more often than its `--grpc-keepalive-min-time`, 5 s), and after the heal
//!   its TCP resends only on its back-off. A client cut off alone for 4 s had its
//!   registration back 2.1–2.3 s after the heal (TTL 2 s); now 0.2–0.7 s
//!   (docs/RELIABILITY.md, finding (o)).
//!
//! Options: `session_ttl` (default 10s), `timeout` (every call, default 5s),
//! `connect_timeout` (default 1s), `keepalive` (HTTP/2 ping interval, default 5s),
//! `max_value_size` (bytes; default 1.5 MiB − 16 KiB, fitting etcd's default request limit),
//! `tls=true`, `ca=`, `cert=`, `key=` (PEM file paths, any of them turns TLS on; cargo feature
//! `tls`, on by default) — the same names and meanings as on the other backends. An unknown
//! option is `InvalidUrl` naming the closest known one.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod backend;
mod config;
mod context;
pub mod dialect;
mod error;
mod hub;
pub mod naming;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use std::sync::Arc;

pub use backend::EtcdBackend;
pub use context::EtcdStore;
pub use coord_core::adapter::flat::Layout;
pub use naming::GrpcNaming;
pub use session::{EtcdLease, EtcdSession};

/// Connects to etcd from an `etcd://` URL (see the crate docs). This is what
/// `coord::connect` calls for the `etcd` scheme.
pub async fn connect(url: &str) -> coord_core::Result<Arc<dyn coord_core::Backend>> {
    Ok(Arc::new(EtcdBackend::connect(url).await?))
}
