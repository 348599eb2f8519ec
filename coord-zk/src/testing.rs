//! The conformance harness for ZooKeeper (feature `testing`): a [`UrlHarness`] on
//! [`coord_testkit::shared_endpoints`], one namespace per test.
#![allow(clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use coord_core::conformance::Harness;
pub use coord_testkit::harness::unique_suffix;
use coord_testkit::harness::{HarnessBackend, Spec, UrlHarness};
use coord_testkit::Kind;

use crate::{ZkBackend, ZkSession};

/// The ZooKeeper specifics of the harness.
#[derive(Debug, Default)]
pub struct Zk;

#[async_trait]
impl HarnessBackend for Zk {
    const SPEC: Spec = Spec::new(Kind::ZooKeeper, "zk").options("timeout=5s");
    type Client = ZkBackend;
    type Session = ZkSession;

    async fn connect(&self, url: &str) -> ZkBackend {
        ZkBackend::connect(url).await.expect("connect to ZooKeeper")
    }

    /// Ends the session on the server as an expiry ([`ZkSession::expire_on_server`]).
    async fn expire(&self, _: &UrlHarness<Zk>, session: &ZkSession) {
        session.expire_on_server().await;
    }

    /// Aborts the session client's background task: no more pings, no close, as if the
    /// process died. The server expires the session after its TTL.
    async fn crash(&self, session: &ZkSession) -> bool {
        session.crash()
    }
}

/// The harness of ZooKeeper's native registry layout (`?registry=native`, Curator's
/// x-discovery) for test `test`: the same server and namespaces, for the registry tests run a
/// second time ([`coord_core::conformance_registry_tests!`]).
pub async fn native_harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness_with::<Zk>(test, "registry=native").await
}

/// The shared ZooKeeper endpoints (`host:port,…`), or `None` after a loud skip line.
pub async fn endpoints() -> Option<String> {
    coord_testkit::harness::endpoints(Kind::ZooKeeper).await
}

/// The conformance factory: `None` if ZooKeeper is unavailable and not required.
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness::<Zk>(test).await
}
