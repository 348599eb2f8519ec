//! The conformance harness for ZooKeeper (feature `testing`): servers from coord-testkit,
//! one fresh namespace per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use coord_core::conformance::Harness;
use coord_core::{Backend, Session};

use crate::{ZkBackend, ZkSession};

/// A per-process unique suffix for namespaces.
pub fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The shared ZooKeeper endpoints (`host:port,…`) for this test process, or `None` (after a
/// loud skip line) when ZooKeeper is unavailable and not required.
pub async fn endpoints() -> Option<String> {
    match tokio::task::spawn_blocking(|| {
        coord_testkit::shared_endpoints(coord_testkit::Kind::ZooKeeper)
    })
    .await
    {
        Ok(e) => e,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{e}"),
    }
}

/// The harness for the conformance suite, or `None` if ZooKeeper is unavailable (see
/// [`coord_testkit::shared_endpoints`]).
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    let endpoints = endpoints().await?;
    Some(Arc::new(ZkHarness::new(&endpoints, test)))
}

/// A [`Harness`] over ZooKeeper servers at fixed endpoints.
#[derive(Debug, Clone)]
pub struct ZkHarness {
    endpoints: String,
    namespace: String,
    test: String,
}

impl ZkHarness {
    /// A harness for `test` on the servers at `endpoints`, in a fresh namespace.
    pub fn new(endpoints: &str, test: &str) -> ZkHarness {
        ZkHarness {
            endpoints: endpoints.to_owned(),
            namespace: format!("/coordtest/{test}-{}", unique_suffix()),
            test: test.to_owned(),
        }
    }

    /// The URL of a client in `namespace`.
    pub fn url(&self, namespace: &str) -> String {
        format!("zk://{}{namespace}?timeout=5s", self.endpoints)
    }
}

fn zk_session(s: &Arc<dyn Session>) -> &ZkSession {
    s.as_any()
        .downcast_ref::<ZkSession>()
        .expect("a ZooKeeper session")
}

/// Ends `session` on the server as an expiry (see [`ZkSession`]'s notes in the crate docs):
/// its owner sees `Expired` and its ephemerals are deleted.
pub async fn expire_session(session: &ZkSession) {
    session.expire_on_server().await;
}

#[async_trait]
impl Harness for ZkHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(
            ZkBackend::connect(&self.url(&self.namespace))
                .await
                .expect("connect to ZooKeeper"),
        )
    }

    async fn other_namespace(&self) -> Arc<dyn Backend> {
        let ns = format!("/coordtest/{}-other-{}", self.test, unique_suffix());
        Arc::new(
            ZkBackend::connect(&self.url(&ns))
                .await
                .expect("connect to ZooKeeper"),
        )
    }

    async fn expire(&self, session: &Arc<dyn Session>) {
        expire_session(zk_session(session)).await;
    }

    /// Aborts the session client's background task: no more pings, no close, as if the
    /// process died. The server expires the session after its TTL.
    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        zk_session(session).crash()
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(20)
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}
