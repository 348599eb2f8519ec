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
#![warn(missing_docs, unreachable_pub)]

use std::sync::Arc;

pub use coord_core::*;

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
