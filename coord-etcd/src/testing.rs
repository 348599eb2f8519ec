//! The conformance harness for real etcd servers (cargo feature `testing`): a [`UrlHarness`]
//! on [`coord_testkit::shared_endpoints`], one namespace per test.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::{conformance::Harness, SessionState};
pub use coord_testkit::harness::fresh_namespace;
use coord_testkit::harness::{wait_final, HarnessBackend, Spec, UrlHarness};
use coord_testkit::Kind;

use crate::{EtcdBackend, EtcdSession};

/// The etcd specifics of the harness.
#[derive(Debug, Default)]
pub struct Etcd;

#[async_trait]
impl HarnessBackend for Etcd {
    const SPEC: Spec = Spec::new(Kind::Etcd, "etcd").short_ttl(Duration::from_secs(1));
    type Client = EtcdBackend;
    type Session = EtcdSession;

    async fn connect(&self, url: &str) -> EtcdBackend {
        EtcdBackend::connect(url).await.expect("connect to etcd")
    }

    /// Revokes the session's lease from a separate client: the server ends it, the session's
    /// keep-alive loop then sees the lease gone (within a renewal interval, at most 1 s) and
    /// reports Expired; this waits for that, like a server-side expiry the owner has learnt.
    async fn expire(&self, h: &UrlHarness<Etcd>, session: &EtcdSession) {
        revoke(&h.connect().await, session).await;
    }

    /// Stops the keep-alive loop without revoking ([`EtcdSession::crash`]).
    async fn crash(&self, session: &EtcdSession) -> bool {
        session.crash();
        true
    }
}

/// Revokes the session's lease through `admin` and waits until the session saw it.
async fn revoke(admin: &EtcdBackend, session: &EtcdSession) {
    let mut leases = admin.etcd_client().lease_client();
    let revoke = leases.revoke(session.lease_id());
    let revoked = tokio::time::timeout(Duration::from_secs(10), revoke).await;
    revoked.expect("revoke in time").expect("revoke");
    let last = wait_final(session, Etcd::SPEC.patience).await;
    assert_eq!(last, SessionState::Expired);
}

/// The harness of etcd's native registry layout (`?registry=native`, grpc-go's naming) for
/// test `test`: the same server and namespaces, for the registry tests run a second time
/// ([`coord_core::conformance_registry_tests!`]).
pub async fn native_harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness_with::<Etcd>(test, "registry=native").await
}

/// The conformance factory: `None` (with a loud skip line) when no etcd is available and
/// `COORD_REQUIRE_BACKENDS` is not set; panics when it is.
pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
    coord_testkit::harness::harness::<Etcd>(test).await
}
