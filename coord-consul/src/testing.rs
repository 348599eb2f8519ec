//! The conformance harness of the Consul backend (cargo feature `testing`): a [`UrlHarness`]
//! on the agent of [`coord_testkit::shared_endpoints`], one namespace per test.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::{conformance::Harness, Session};
use coord_testkit::harness::{HarnessBackend, Spec, UrlHarness};
use coord_testkit::Kind;

use crate::{ConsulBackend, ConsulSession};

/// The Consul specifics of the harness: an HTTP client for the agent's API.
#[derive(Debug, Default)]
pub struct Consul(reqwest::Client);

/// The harness: one agent, one namespace per test.
pub type ConsulHarness = UrlHarness<Consul>;

#[async_trait]
impl HarnessBackend for Consul {
    /// Short TTL 2 s: 1 s is valid too, but on a loaded 2-core machine a pass every 333 ms can
    /// slip past the TTL and expire a session that the test did not mean to lose.
    const SPEC: Spec = Spec::new(Kind::Consul, "consul");
    type Client = ConsulBackend;
    type Session = ConsulSession;

    /// One agent: the first endpoint, without `http://`.
    fn host(endpoints: &str) -> String {
        let first = endpoints.split(',').next().unwrap_or_default();
        first.trim().trim_start_matches("http://").to_owned()
    }

    async fn connect(&self, url: &str) -> ConsulBackend {
        ConsulBackend::connect(url)
            .await
            .expect("connect to the Consul agent")
    }

    /// Destroys the session with `PUT /v1/session/destroy/<id>` from a separate HTTP client:
    /// Consul deletes its ephemerals and the owner's observer reports Expired.
    async fn expire(&self, h: &ConsulHarness, session: &ConsulSession) {
        destroy(&self.0, h.host(), session).await;
    }

    /// Stops passing the session's check ([`ConsulSession::crash`]): Consul invalidates the
    /// session about one TTL later.
    async fn crash(&self, session: &ConsulSession) -> bool {
        session.crash();
        true
    }
}

/// Destroys `session` with `PUT /v1/session/destroy/<id>` on the agent at `host`.
async fn destroy(http: &reqwest::Client, host: &str, session: &ConsulSession) {
    let url = format!("http://{host}/v1/session/destroy/{}", session.id().0);
    let put = http.put(url).timeout(Duration::from_secs(5)).send();
    let status = put.await.expect("session destroy request").status();
    assert!(status.is_success(), "session destroy: {status}");
}

/// The harness of Consul's generic registry layout (`?registry=generic`) for test `test`:
/// the same agent and namespaces, for the registry tests run a second time
/// ([`coord_core::conformance_registry_tests!`]).
pub async fn generic_harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness_with::<Consul>(test, "registry=generic").await
}

/// The harness for test `test`, or `None` (after a loud skip line) when no Consul agent is
/// available and backends are not required (`COORD_REQUIRE_BACKENDS=1` panics instead).
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness::<Consul>(test).await
}
