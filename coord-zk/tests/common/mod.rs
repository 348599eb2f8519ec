//! Helpers shared by the ZooKeeper-specific tests.

use std::future::Future;
use std::time::Duration;

use coord_core::Path;

/// The bound of every wait.
pub const BOUND: Duration = Duration::from_secs(30);

/// A path from a literal.
pub fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

/// Awaits `f` for at most [`BOUND`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}
