//! coord's ZooKeeper backend (`zk://`), over the [`zookeeper_client`] crate.
//!
//! ```text
//! zk://[user:password@]host:port[,host:port…][/namespace][?session_ttl=10s&timeout=5s]
//! ```
//!
//! - **Namespace**: a ZooKeeper chroot, created with its parents if missing. Its root `/`
//!   always exists and cannot be deleted.
//! - **Options**: `session_ttl` (the TTL of sessions opened without one and of the main
//!   client's session; default 10 s, clamped into the server's bounds; `session_timeout`, its
//!   old name, is still accepted as an alias — giving both is an error) and `timeout` (the
//!   bound of every call to the server; default 5 s). Unknown options are an error that names
//!   the closest known option.
//! - **Credentials**: `user:password` is added as a `digest` identity. Nodes coord creates then
//!   carry the ACL *creator all + world read*: other identities can read them but cannot
//!   change, delete or add children to them (a namespace belongs to one identity). Without
//!   credentials nodes are open (`world:anyone` all).
//! - **Sessions**: the [`ZkBackend`] keeps one main ZooKeeper session for persistent keys,
//!   reads and watches. The first [`coord_core::Session`] it opens with the default TTL (the
//!   session a `coord::Client` uses) *is* that main session: one ZooKeeper session and one
//!   connection per process in the common case, as with Curator or kazoo. Every further
//!   session, or one with another TTL, is a ZooKeeper session of its own (one more
//!   connection), with the requested timeout (the server clamps it into
//!   `[minSessionTimeout, maxSessionTimeout]`, by default `[2, 20] × tickTime`; the
//!   capabilities report the bounds the server really grants, learned once per host list).
//!   States: `Connected`; `Suspended` when the connection is lost (after about 2/5 of the TTL
//!   without an answer); `Expired` when the server says so or when the client has been cut
//!   off for 1.4 × the TTL; `Closed` on close. After the main session expires, the backend
//!   opens a new one and re-arms every watch, which yields `Resync`. Closing (or dropping) the
//!   session that rides on the main connection first moves the backend to a new main
//!   session, then closes the old one (its ephemerals go at once); watches re-read and yield
//!   `Resync` only if the state changed meanwhile.
//! - **Ensemble settings**: give the ensemble `(syncLimit + 1) × tickTime` under the
//!   shortest session timeout its clients use (ZooKeeper's default `syncLimit` of 5 with a
//!   2 s tick suits sessions above 12 s). Otherwise a leader cut off from the other members for
//!   longer than a session timeout, but shorter than `syncLimit` × `tickTime`, keeps its
//!   leadership, expires the sessions of the clients of the other members (their touches no
//!   longer reach it) and commits those expiries when the cut heals: a client that stayed
//!   connected to a healthy member sees nothing until its session is already gone, and a
//!   holder then learns of its loss a moment after its successor may be granted
//!   (docs/RELIABILITY.md, finding (f), with a reproduction). No client-side setting can
//!   detect it. For faster recovery (not safety): a member that lost its quorum polls for a
//!   leader at intervals that double up to `zookeeper.fastleader.maxNotificationInterval`
//!   (a system property, default 60 s), so after a long cut it may rejoin, and serve its
//!   clients, only that long after the heal; the test ensembles cap it at 1 s (finding (n)).
//!   The members' election connections live through a cut, and TCP resends on them on its
//!   back-off (up to 120 s by default): on Linux 6.15 and later, `net.ipv4.tcp_rto_max_ms=1000`
//!   on the members' hosts brought a member cut off for 10 s back 0.3–0.4 s after the heal
//!   instead of 3–4.5 s (finding (o)).
//! - **Watches**: ZooKeeper one-shot watches, one per watched path whatever the number of
//!   coord watches on it, served by two tasks per backend (keys, children) and re-armed after each event with
//!   the read they come from; quick changes may be coalesced (`watch_coalesces`). Each watch
//!   buffers at most `WATCH_BUFFER` events; a consumer that falls that far behind gets one
//!   `Resync` of the newest state instead.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// Modules import only downwards: `backend` (thin) → `context` (the clients and the key
// operations) ← `session`, `watch`; `context` → `client`, `probe`; all → `error`, `config`.
mod backend;
mod client;
mod config;
mod context;
pub mod discovery;
mod error;
mod probe;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use std::sync::Arc;

pub use backend::ZkBackend;
pub use discovery::CuratorDiscovery;
pub use session::ZkSession;

/// Connects to ZooKeeper from a `zk://` URL (see the crate docs); what `coord::connect`
/// calls for the `zk` scheme.
pub async fn connect(url: &str) -> coord_core::Result<Arc<dyn coord_core::Backend>> {
    Ok(Arc::new(ZkBackend::connect(url).await?))
}
