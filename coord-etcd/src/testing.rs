//! The conformance harness for real etcd servers (cargo feature `testing`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::conformance::Harness;
use coord_core::{Backend, Session};
use coord_testkit::Kind;

use crate::{EtcdBackend, EtcdSession};

/// A fresh, unique namespace for `test`.
pub fn fresh_namespace(test: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/coordtest/{name}-{:08x}", h.finish() as u32)
}

/// The harness of one test: its own namespace on the shared (or given) etcd.
pub struct EtcdHarness {
    endpoints: String,
    namespace: String,
    other: String,
}

impl EtcdHarness {
    /// A harness over `endpoints` (`host:port,…`) in a fresh namespace derived from `test`.
    pub fn new(endpoints: &str, test: &str) -> EtcdHarness {
        EtcdHarness {
            endpoints: endpoints.to_owned(),
            namespace: fresh_namespace(test),
            other: fresh_namespace(&format!("{test}-other")),
        }
    }

    /// The URL of this harness's namespace.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoints, self.namespace)
    }

    async fn connect(&self, ns: &str) -> EtcdBackend {
        EtcdBackend::connect(&format!("etcd://{}{ns}", self.endpoints))
            .await
            .expect("connect to etcd")
    }
}

fn etcd_session(s: &Arc<dyn Session>) -> &EtcdSession {
    s.as_any()
        .downcast_ref::<EtcdSession>()
        .expect("an etcd session")
}

#[async_trait]
impl Harness for EtcdHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.connect(&self.namespace).await)
    }

    async fn other_namespace(&self) -> Arc<dyn Backend> {
        Arc::new(self.connect(&self.other).await)
    }

    /// Revokes the session's lease from a separate client: the server ends it, the session's
    /// keep-alive loop then sees the lease gone (within a renewal interval, at most 1 s) and
    /// reports Expired; this waits for that, like a server-side expiry the owner has learnt.
    async fn expire(&self, session: &Arc<dyn Session>) {
        let lease = etcd_session(session).lease_id();
        let admin = self.connect(&self.namespace).await;
        let mut lc = admin.etcd_client().lease_client();
        tokio::time::timeout(Duration::from_secs(10), lc.revoke(lease))
            .await
            .expect("revoke in time")
            .expect("revoke");
        let mut states = session.states();
        let seen = tokio::time::timeout(self.patience(), async {
            while let Some(st) = futures::StreamExt::next(&mut states).await {
                if st.is_final() {
                    return st;
                }
            }
            session.state()
        })
        .await
        .expect("the session reports its expiry in time");
        assert_eq!(seen, coord_core::SessionState::Expired);
    }

    /// Stops the keep-alive loop without revoking ([`EtcdSession::crash`]).
    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        etcd_session(session).crash();
        true
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(20)
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The conformance factory: `None` (with a loud skip line) when no etcd is available and
/// `COORD_REQUIRE_BACKENDS` is not set; panics when it is.
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    let endpoints = coord_testkit::shared_endpoints(Kind::Etcd)?;
    Some(Arc::new(EtcdHarness::new(&endpoints, test)))
}
