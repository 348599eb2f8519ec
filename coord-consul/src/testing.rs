//! The conformance harness of the Consul backend (cargo feature `testing`).
//!
//! Endpoints come from [`coord_testkit::shared_endpoints`] (`COORD_CONSUL_ENDPOINTS`, else a
//! `consul agent -dev` shared by the test process). Every test works in its own namespace
//! `/coordtest/<test>-<random>`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::conformance::Harness;
use coord_core::{Backend, Session};

use crate::core::random_u64;
use crate::{ConsulBackend, ConsulSession};

/// The harness: one agent, one namespace per test.
#[derive(Debug)]
pub struct ConsulHarness {
    endpoint: String,
    namespace: String,
    http: reqwest::Client,
}

fn fresh_namespace(test: &str) -> String {
    let name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("/coordtest/{name}-{:012x}", random_u64() & 0xffff_ffff_ffff)
}

impl ConsulHarness {
    /// A harness on the agent at `endpoint` (`host:port`) for the test `test`.
    pub fn new(endpoint: &str, test: &str) -> ConsulHarness {
        ConsulHarness {
            endpoint: endpoint.to_owned(),
            namespace: fresh_namespace(test),
            http: reqwest::Client::new(),
        }
    }

    /// The agent's `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL of a client in namespace `ns` with extra query options (`""` for none).
    pub fn url(&self, ns: &str, options: &str) -> String {
        let sep = if options.is_empty() { "" } else { "?" };
        format!("consul://{}{ns}{sep}{options}", self.endpoint)
    }

    /// A client of this test's namespace as its concrete type.
    pub async fn consul_client(&self) -> ConsulBackend {
        ConsulBackend::connect(&self.url(&self.namespace, ""))
            .await
            .expect("connect to the Consul agent")
    }

    /// Destroys a session server-side, from outside its client (an expiry for its owner).
    pub async fn destroy_session(&self, id: &str) {
        let url = format!("http://{}/v1/session/destroy/{id}", self.endpoint);
        let r = self
            .http
            .put(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("session destroy request");
        assert!(r.status().is_success(), "session destroy: {}", r.status());
    }
}

fn consul_session(s: &Arc<dyn Session>) -> &ConsulSession {
    s.as_any()
        .downcast_ref::<ConsulSession>()
        .expect("a Consul session")
}

#[async_trait]
impl Harness for ConsulHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.consul_client().await)
    }

    async fn other_namespace(&self) -> Arc<dyn Backend> {
        let url = self.url(&fresh_namespace("other"), "");
        Arc::new(ConsulBackend::connect(&url).await.expect("connect"))
    }

    /// Destroys the session with `PUT /v1/session/destroy/<id>` from a separate HTTP client:
    /// Consul deletes its ephemerals and the owner's observer reports Expired.
    async fn expire(&self, session: &Arc<dyn Session>) {
        self.destroy_session(&session.id().0).await;
    }

    /// Stops passing the session's check ([`ConsulSession::crash`]): Consul invalidates the
    /// session about one TTL later.
    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        consul_session(session).crash();
        true
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// 2 s: 1 s is valid too, but on a loaded 2-core machine a pass every 333 ms can slip
    /// past the TTL and expire a session that the test did not mean to lose.
    fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// The harness for test `test`, or `None` (after a loud skip line) when no Consul agent is
/// available and backends are not required (`COORD_REQUIRE_BACKENDS=1` panics instead).
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    let endpoints = tokio::task::spawn_blocking(|| {
        coord_testkit::shared_endpoints(coord_testkit::Kind::Consul)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let endpoint = endpoints.split(',').next().unwrap_or_default().trim();
    let endpoint = endpoint.trim_start_matches("http://").to_owned();
    Some(Arc::new(ConsulHarness::new(&endpoint, test)))
}
