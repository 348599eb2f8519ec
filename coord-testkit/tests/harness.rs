//! The generic conformance harness ([`coord_testkit::harness`]) over a fake backend: the
//! in-memory backend of coord-core behind `fake://` URLs, so no server is needed.

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::conformance::{self, Harness};
use coord_core::mem::{MemBackend, MemSession};
use coord_core::{Backend, Session, SessionOptions, SessionState};
use coord_testkit::harness::{
    fresh_namespace, harness, unique_suffix, wait_final, HarnessBackend, Spec, UrlHarness,
};
use coord_testkit::Kind;
use futures::FutureExt;

/// One in-memory store per harness; remembers the URLs it was asked to connect.
#[derive(Debug, Default)]
struct Fake {
    store: MemBackend,
    urls: Mutex<Vec<String>>,
}

#[async_trait]
impl HarnessBackend for Fake {
    const SPEC: Spec = Spec::new(Kind::Consul, "fake")
        .options("timeout=5s")
        .patience(Duration::from_secs(10))
        .short_ttl(Duration::from_secs(1));
    type Client = MemBackend;
    type Session = MemSession;

    async fn connect(&self, url: &str) -> MemBackend {
        self.urls.lock().unwrap().push(url.to_owned());
        let rest = url.strip_prefix("fake://").expect("the scheme");
        let path = &rest[rest.find('/').expect("a namespace")..];
        let ns = path.split('?').next().unwrap();
        self.store.with_namespace(ns).expect("a valid namespace")
    }

    async fn expire(&self, harness: &UrlHarness<Fake>, session: &MemSession) {
        assert!(std::ptr::eq(harness.backend(), self));
        session.expire_now();
    }

    async fn crash(&self, session: &MemSession) -> bool {
        session.crash();
        true
    }
}

fn is_suffix(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn fresh_namespaces_are_coordtest_test_random() {
    let a = fresh_namespace("create_and_get");
    let rest = a.strip_prefix("/coordtest/create_and_get-").expect(&a);
    assert!(is_suffix(rest), "{a}");
    assert_ne!(a, fresh_namespace("create_and_get"));
    let odd = fresh_namespace("a b/c.d-e_f");
    assert!(odd.starts_with("/coordtest/a_b_c_d-e_f-"), "{odd}");
    assert!(is_suffix(&unique_suffix()));
    assert_ne!(unique_suffix(), unique_suffix());
}

#[test]
fn urls_carry_scheme_host_namespace_and_options() {
    let h = UrlHarness::<Fake>::new("127.0.0.1:1,127.0.0.1:2", "t");
    assert_eq!(h.host(), "127.0.0.1:1,127.0.0.1:2");
    assert!(h.namespace().starts_with("/coordtest/t-"));
    assert_eq!(
        h.url("/ns", ""),
        "fake://127.0.0.1:1,127.0.0.1:2/ns?timeout=5s"
    );
    assert_eq!(
        h.url("/ns", "a=1"),
        "fake://127.0.0.1:1,127.0.0.1:2/ns?timeout=5s&a=1"
    );
    assert_eq!(h.patience(), Duration::from_secs(10));
    assert_eq!(h.short_ttl(), Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_to_the_test_namespace_and_another() {
    let h = UrlHarness::<Fake>::new("host:1", "isolated");
    conformance::kernel::namespaces_isolated(&h).await;
    let urls = h.backend().urls.lock().unwrap().clone();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert_eq!(urls[0], h.url(h.namespace(), ""));
    let other = urls[1].strip_prefix("fake://host:1/coordtest/isolated-other-");
    let other = other.and_then(|o| o.strip_suffix("?timeout=5s"));
    assert!(other.is_some_and(is_suffix), "{urls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_and_crash_reach_the_backend_session() {
    let h = UrlHarness::<Fake>::new("host:1", "expiry");
    conformance::kernel::ephemeral_removed_on_expiry_seen_by_watch(&h).await;
    conformance::kernel::ephemeral_removed_after_crash(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_final_returns_the_final_state() {
    let h = UrlHarness::<Fake>::new("host:1", "final");
    let c = h.client().await;
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    h.expire(&s).await;
    assert_eq!(wait_final(&*s, h.patience()).await, SessionState::Expired);
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(wait_final(&*s, h.patience()).await, SessionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "no final state")]
async fn wait_final_panics_after_the_patience() {
    let c = MemBackend::new();
    let s: Arc<dyn Session> = c.open_session(SessionOptions::new()).await.unwrap();
    wait_final(&*s, Duration::from_millis(50)).await;
}

/// Unreachable servers: `None` (skip), or a panic with `COORD_REQUIRE_BACKENDS=1`. The only
/// test of this binary that touches the environment (Consul, which [`Fake`] claims to be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_servers_skip_or_fail() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::env::set_var(Kind::Consul.endpoints_env(), format!("127.0.0.1:{port}"));
    let factory = AssertUnwindSafe(harness::<Fake>("skipped")).catch_unwind();
    match factory.await {
        Ok(h) => assert!(h.is_none() && !coord_testkit::require_backends()),
        Err(_) => assert!(coord_testkit::require_backends()),
    }
}
