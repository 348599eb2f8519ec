//! coord's Consul adapter: the [`coord_core::Backend`] and [`coord_core::Session`] kernel over
//! Consul's HTTP API v1.
//!
//! ```no_run
//! # async fn demo() -> coord_core::Result<()> {
//! let backend = coord_consul::connect("consul://127.0.0.1:8500/myapp?session_ttl=2s").await?;
//! # let _ = backend; Ok(()) }
//! ```
//!
//! - URL: `consul://[token@]host:port[/namespace][?session_ttl=…&timeout=…&wait=…&token=…]`
//!   (see [`Config`]).
//! - Keys: coord-core's flat layout ([`coord_core::adapter::flat::Layout`]): a node's key
//!   holds its depth (`<ns>/__coord/n002/a/b`) so that a children listing costs O(children);
//!   the counters live beside the nodes under `<ns>/__coord/`.
//! - Sessions: bound to an agent TTL check, kept alive by passing it every TTL/3, invalidated
//!   by Consul ≈ TTL after the passes stop ([`ConsulSession`]); when the servers refuse
//!   sessions on a healed agent's node (`serfHealth` critical), the agent is asked to rejoin
//!   them (`rejoin=`, see [`Config`]).
//! - Atomic rules (create under an existing, non-ephemeral parent; sequential numbers; delete
//!   refusing children; compare-and-set) are single `/v1/txn` transactions.
//! - Watches are blocking queries compared with the last delivered state (they coalesce),
//!   shared: one recursive query per watched parent prefix, coarsened to fit the connection
//!   budget (`max_connections`, default 32: 16 requests in flight, 12 of them blocking
//!   queries at most, and 16 idle connections); the
//!   sessions are observed with one query per agent node ([`ConsulSession`]).
//! - The registry's default layout is Consul's service catalog ([`catalog`]); `?registry=generic`
//!   keeps instances in coord's key layout instead.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod backend;
pub mod catalog;
mod config;
mod context;
pub mod dialect;
mod error;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use std::sync::Arc;

pub use backend::ConsulBackend;
pub use config::{
    Config, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_VALUE_SIZE, DEFAULT_SESSION_TTL, DEFAULT_TIMEOUT,
    DEFAULT_WAIT, MAX_SESSION_TTL, MIN_MAX_CONNECTIONS, MIN_SESSION_TTL,
};
pub use context::ConsulStore;
pub use session::{ConsulLease, ConsulSession};

/// Connects to the Consul agent named by a `consul://` URL (the facade's `coord::connect`
/// calls this). Fails with [`coord_core::Error::InvalidUrl`] on a malformed URL or an unknown
/// option, and with a connection error if the agent does not answer within the timeout.
pub async fn connect(url: &str) -> coord_core::Result<Arc<dyn coord_core::Backend>> {
    Ok(Arc::new(ConsulBackend::connect(url).await?))
}
