//! # coord — distributed coordination with one API on ZooKeeper, etcd, Consul or in memory
//!
//! Leader election, service registry and discovery, locks and group membership, written once
//! over a small kernel (sessions, ephemeral and sequential keys, versioned reads and
//! compare-and-set writes, children, watches) that every backend implements with the same
//! semantics and the same errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> coord::Result<()> {
//! let coord = coord::connect("mem://demo/myapp").await?;
//! let leadership = coord.election("scheduler")?.campaign(b"node-1").await?;
//! println!("leading with fencing token {}", leadership.fencing_token());
//! leadership.resign().await?;
//! # Ok(()) }
//! ```
//!
//! The backend is picked by the URL's scheme, and compiled in by a cargo feature:
//!
//! | scheme      | feature          | backend                                  |
//! |-------------|------------------|------------------------------------------|
//! | `mem://`    | `mem` (default)  | in-process memory, shared per `mem://name` |
//! | `zk://`     | `zk`             | ZooKeeper                                 |
//! | `etcd://`   | `etcd`           | etcd v3                                   |
//! | `consul://` | `consul`         | Consul                                    |
//!
//! A known scheme whose feature is off gives [`Error::FeatureNotEnabled`] naming the feature;
//! an unknown scheme gives [`Error::UnknownScheme`].
//!
//! # What this crate exports
//!
//! - [`connect`] and [`connect_backend`]; [`Client`], the handle the recipes hang off.
//! - The recipes: [`election`], [`registry`], [`lock`], [`group`], and [`recipes`] for the
//!   types they share ([`recipes::HoldState`], [`recipes::SuspendPolicy`]).
//! - The kernel, for key operations and custom sessions: the traits [`Backend`] and
//!   [`Session`], their value types ([`CreateMode`], [`Created`], [`Node`], [`Stat`],
//!   [`Version`], [`KeyEvent`], [`ChildrenEvent`], the watch streams, [`SessionId`],
//!   [`SessionOptions`], [`SessionState`]), [`Capabilities`] and [`create_parents`].
//! - [`Path`] (and the [`path`] module's limits and sequence helpers), [`ConnectUrl`],
//!   [`Error`], [`Result`] and [`Source`] (an error's underlying cause).
//! - [`mem`]: the in-process backend, always compiled in (its fault injection,
//!   [`mem::MemSession::expire_now`] and friends, is for tests).
//! - Each enabled backend's adapter crate as a module, for what only that backend has (a
//!   session's lease id, a simulated crash) without depending on the adapter crate:
//!   `coord::zk` (feature `zk`, the `coord-zk` crate: `ZkBackend`, `ZkSession`),
//!   `coord::etcd` (feature `etcd`, `coord-etcd`: `EtcdBackend`, `EtcdSession::lease_id`, …),
//!   `coord::consul` (feature `consul`, `coord-consul`: `ConsulBackend`, `ConsulSession`, …).
//!   From a `dyn Session`:
//!   `session.as_any().downcast_ref::<coord::etcd::EtcdSession>()`.
//!
//! The helpers backends are built with (value and TTL validation, state-stream glue) are not
//! part of this API; the conformance suite lives in `coord-core` behind its `conformance`
//! feature.
#![warn(missing_docs, unreachable_pub)]

use std::sync::Arc;

pub use coord_core::client::Client;
pub use coord_core::error::{Error, Result, Source};
pub use coord_core::kernel::{
    create_parents, Backend, Capabilities, ChildrenEvent, ChildrenWatch, CreateMode, Created,
    Guard, GuardFailure, KeyEvent, KeyWatch, Node, Session, SessionId, SessionOptions,
    SessionState, SessionStates, Stat, Version, WriteOp, WriteResult,
};
pub use coord_core::mem;
pub use coord_core::path::{self, Path};
pub use coord_core::recipes::{self, dialect, election, group, lock, registry};
pub use coord_core::url::ConnectUrl;

/// The ZooKeeper adapter (the `coord-zk` crate), for what only ZooKeeper sessions have.
#[cfg(feature = "zk")]
pub use coord_zk as zk;

/// The etcd adapter (the `coord-etcd` crate), for what only etcd sessions have.
#[cfg(feature = "etcd")]
pub use coord_etcd as etcd;

/// The Consul adapter (the `coord-consul` crate), for what only Consul sessions have.
#[cfg(feature = "consul")]
pub use coord_consul as consul;

/// Connects to the backend named by `url` and returns a [`Client`] in the URL's namespace.
///
/// `scheme://[user[:password]@]host:port[,host:port…][/namespace][?option=value&…]`;
/// unknown options are an error. See each backend for its options.
pub async fn connect(url: &str) -> Result<Client> {
    connect_backend(url).await.map(Client::new)
}

/// Like [`connect`], but returns the bare [`Backend`] (for key operations and custom sessions).
pub async fn connect_backend(url: &str) -> Result<Arc<dyn Backend>> {
    let parsed = ConnectUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "mem" => mem_backend(url),
        "zk" | "zookeeper" => zk_backend(url).await,
        "etcd" => etcd_backend(url).await,
        "consul" => consul_backend(url).await,
        other => Err(Error::UnknownScheme {
            scheme: other.to_owned(),
        }),
    }
}

#[cfg_attr(
    all(feature = "mem", feature = "zk", feature = "etcd", feature = "consul"),
    allow(dead_code)
)]
fn not_enabled(scheme: &str, feature: &str) -> Error {
    Error::FeatureNotEnabled {
        scheme: scheme.to_owned(),
        feature: feature.to_owned(),
    }
}

#[cfg(feature = "mem")]
fn mem_backend(url: &str) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(mem::MemBackend::from_url(url)?))
}

#[cfg(not(feature = "mem"))]
fn mem_backend(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_enabled("mem", "mem"))
}

#[cfg(feature = "zk")]
async fn zk_backend(url: &str) -> Result<Arc<dyn Backend>> {
    coord_zk::connect(url).await
}

#[cfg(not(feature = "zk"))]
async fn zk_backend(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_enabled("zk", "zk"))
}

#[cfg(feature = "etcd")]
async fn etcd_backend(url: &str) -> Result<Arc<dyn Backend>> {
    coord_etcd::connect(url).await
}

#[cfg(not(feature = "etcd"))]
async fn etcd_backend(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_enabled("etcd", "etcd"))
}

#[cfg(feature = "consul")]
async fn consul_backend(url: &str) -> Result<Arc<dyn Backend>> {
    coord_consul::connect(url).await
}

#[cfg(not(feature = "consul"))]
async fn consul_backend(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_enabled("consul", "consul"))
}
