//! The conformance harness of a backend reached by URL, over the servers of this kit.
//!
//! Every adapter's `testing` module (cargo feature `testing`) needs the same
//! [`Harness`]: the shared endpoints of its kind ([`endpoints`], which skips or fails like
//! [`shared_endpoints`](crate::shared_endpoints)), a fresh namespace
//! `/coordtest/<test>-<random>` per test ([`fresh_namespace`]) and one more for
//! [`Harness::other_namespace`], clients connected by URL `<scheme>://<endpoints><namespace>`.
//! [`UrlHarness`] does all of that; the adapter only implements [`HarnessBackend`]: how to
//! connect, how to make the server expire a session, how to crash a session's client, and its
//! short TTL.
//!
//! ```ignore
//! #[derive(Debug, Default)]
//! pub struct Zk;
//!
//! #[async_trait]
//! impl HarnessBackend for Zk {
//!     const SPEC: Spec = Spec::new(Kind::ZooKeeper, "zk").short_ttl(Duration::from_secs(2));
//!     type Client = ZkBackend;
//!     type Session = ZkSession;
//!     async fn connect(&self, url: &str) -> ZkBackend {
//!         ZkBackend::connect(url).await.expect("connect to ZooKeeper")
//!     }
//!     async fn expire(&self, _: &UrlHarness<Zk>, session: &ZkSession) {
//!         session.expire_on_server().await;
//!     }
//!     async fn crash(&self, session: &ZkSession) -> bool {
//!         session.crash()
//!     }
//! }
//!
//! pub async fn harness(test: &str) -> Option<Arc<dyn Harness>> {
//!     coord_testkit::harness::harness::<Zk>(test).await
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::conformance::Harness;
use coord_core::{Backend, Session, SessionState};
use futures::StreamExt;

use crate::Kind;

/// A random suffix for names that must not collide between tests and test runs: 12 hex
/// digits (48 random bits).
pub fn unique_suffix() -> String {
    format!("{:012x}", fastrand::u64(..1 << 48))
}

/// A fresh namespace for the test `test`: `/coordtest/<test>-<random>`, where every character
/// of `test` other than ASCII letters, digits, `_` and `-` becomes `_`.
pub fn fresh_namespace(test: &str) -> String {
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
    format!("/coordtest/{name}-{}", unique_suffix())
}

/// [`shared_endpoints`](crate::shared_endpoints) from async code: the (possibly slow) server
/// start runs on tokio's blocking pool, and the skip line names the calling thread's test.
/// `None` after the loud skip line; panics with `COORD_REQUIRE_BACKENDS=1` (the panic is
/// carried over to the caller).
pub async fn endpoints(kind: Kind) -> Option<String> {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    match tokio::task::spawn_blocking(move || crate::shared_endpoints_for(kind, &test)).await {
        Ok(endpoints) => endpoints,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{e}"),
    }
}

/// Waits for `session` to reach a final state (Expired or Closed) and returns it; panics if it
/// does not within `patience`.
pub async fn wait_final(session: &dyn Session, patience: Duration) -> SessionState {
    let mut states = session.states();
    let last = tokio::time::timeout(patience, async {
        while let Some(state) = states.next().await {
            if state.is_final() {
                return state;
            }
        }
        session.state()
    })
    .await;
    last.unwrap_or_else(|_| panic!("the session reaches no final state within {patience:?}"))
}

/// What differs between backends in a [`UrlHarness`].
#[async_trait]
pub trait HarnessBackend: Default + std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The server kind, scheme, URL options and timings.
    const SPEC: Spec;
    /// The backend's client.
    type Client: Backend;
    /// The backend's session, which [`UrlHarness`] downcasts the suite's sessions to.
    type Session: Session;

    /// The URL's host part for `endpoints` (as [`shared_endpoints`](crate::shared_endpoints)
    /// or a user gives them: comma-separated `host:port`). Unchanged by default.
    fn host(endpoints: &str) -> String {
        endpoints.to_owned()
    }

    /// A client for `url` (panics if it cannot connect).
    async fn connect(&self, url: &str) -> Self::Client;

    /// Makes the server end `session` now as an expiry ([`Harness::expire`]).
    async fn expire(&self, harness: &UrlHarness<Self>, session: &Self::Session);

    /// Simulates a crash of the session's client ([`Harness::crash`]); false if impossible.
    async fn crash(&self, session: &Self::Session) -> bool;
}

/// What a [`HarnessBackend`] declares: its server kind, URL scheme and options, and timings.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// The kind of server, for [`endpoints`].
    pub kind: Kind,
    /// The URL scheme (`zk`, `etcd`, `consul`).
    pub scheme: &'static str,
    /// Query options of every client URL (`a=1&b=2`; empty for none).
    pub options: &'static str,
    /// [`Harness::patience`] (20 s unless set).
    pub patience: Duration,
    /// [`Harness::short_ttl`] (2 s unless set).
    pub short_ttl: Duration,
}

impl Spec {
    /// The spec of `scheme` on servers of `kind`, with no options and default timings.
    pub const fn new(kind: Kind, scheme: &'static str) -> Spec {
        Spec {
            kind,
            scheme,
            options: "",
            patience: Duration::from_secs(20),
            short_ttl: Duration::from_secs(2),
        }
    }

    /// Sets [`Spec::options`].
    pub const fn options(mut self, options: &'static str) -> Spec {
        self.options = options;
        self
    }

    /// Sets [`Spec::patience`].
    pub const fn patience(mut self, patience: Duration) -> Spec {
        self.patience = patience;
        self
    }

    /// Sets [`Spec::short_ttl`].
    pub const fn short_ttl(mut self, ttl: Duration) -> Spec {
        self.short_ttl = ttl;
        self
    }
}

/// A [`Harness`] of one test: clients by URL in the test's own fresh namespace on the
/// servers at fixed endpoints, the backend-specific parts from `B`.
#[derive(Debug)]
pub struct UrlHarness<B> {
    host: String,
    namespace: String,
    other: String,
    /// URL options of this harness besides the backend's (see [`harness_with`]).
    options: &'static str,
    backend: B,
}

impl<B: HarnessBackend> UrlHarness<B> {
    /// A harness for `test` on the servers at `endpoints` (see [`HarnessBackend::host`]), in
    /// a fresh namespace ([`fresh_namespace`]); the other namespace is that of
    /// `<test>-other`.
    pub fn new(endpoints: &str, test: &str) -> UrlHarness<B> {
        UrlHarness {
            host: B::host(endpoints),
            namespace: fresh_namespace(test),
            other: fresh_namespace(&format!("{test}-other")),
            options: "",
            backend: B::default(),
        }
    }

    /// The same harness with the URL options `options` (`a=1&b=2`) added to every client's.
    pub fn with_options(mut self, options: &'static str) -> UrlHarness<B> {
        self.options = options;
        self
    }

    /// The URL's host part (`host:port,…`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// This test's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The backend-specific part.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The URL of a client in `namespace`, with the backend's [`Spec::options`], the
    /// harness's own ([`UrlHarness::with_options`]) and `options` (`""` for none) as query.
    pub fn url(&self, namespace: &str, options: &str) -> String {
        let query: Vec<&str> = [B::SPEC.options, self.options, options]
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect();
        let sep = if query.is_empty() { "" } else { "?" };
        let query = query.join("&");
        format!("{}://{}{namespace}{sep}{query}", B::SPEC.scheme, self.host)
    }

    /// A new client of this test's namespace, as the backend's own type.
    pub async fn connect(&self) -> B::Client {
        self.backend.connect(&self.url(&self.namespace, "")).await
    }
}

fn downcast<S: Session>(session: &Arc<dyn Session>) -> &S {
    session
        .as_any()
        .downcast_ref::<S>()
        .unwrap_or_else(|| panic!("the session is not a {}", std::any::type_name::<S>()))
}

#[async_trait]
impl<B: HarnessBackend> Harness for UrlHarness<B> {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.connect().await)
    }

    async fn other_namespace(&self) -> Arc<dyn Backend> {
        Arc::new(self.backend.connect(&self.url(&self.other, "")).await)
    }

    async fn expire(&self, session: &Arc<dyn Session>) {
        self.backend.expire(self, downcast(session)).await;
    }

    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        self.backend.crash(downcast(session)).await
    }

    fn patience(&self) -> Duration {
        B::SPEC.patience
    }

    fn short_ttl(&self) -> Duration {
        B::SPEC.short_ttl
    }
}

/// The conformance factory of backend `B`: a [`UrlHarness`] for `test` on the shared servers
/// ([`endpoints`]), or `None` after the loud skip line when they are unavailable and
/// `COORD_REQUIRE_BACKENDS` is not set (with it, this panics).
pub async fn harness<B: HarnessBackend>(test: &str) -> Option<Arc<dyn Harness>> {
    harness_with::<B>(test, "").await
}

/// [`harness`] with the URL options `options` added to every client's: the same servers and
/// backend specifics in another configuration (for a second run of some tests, such as the
/// registry tests in another layout with `registry=native`).
pub async fn harness_with<B: HarnessBackend>(
    test: &str,
    options: &'static str,
) -> Option<Arc<dyn Harness>> {
    let endpoints = endpoints(B::SPEC.kind).await?;
    Some(Arc::new(
        UrlHarness::<B>::new(&endpoints, test).with_options(options),
    ))
}
