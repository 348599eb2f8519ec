//! etcd's gRPC naming layout ([`coord_etcd::GrpcNaming`]) against the real consumer tools:
//! `etcdctl` (a separate process) reads exactly the endpoints package's JSON under the
//! session's lease, an entry written with `etcdctl put` as a Go service's endpoints manager
//! writes it is discovered and watched by coord, and revoking the lease with `etcdctl lease
//! revoke` removes the instance. Every wait is bounded.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use coord_core::registry::{Entry, Holder, IfPresent, Instance, NativeRegistry};
use coord_core::{Backend, Error, Path, Session, SessionOptions};
use coord_etcd::testing::fresh_namespace;
use coord_etcd::{EtcdBackend, EtcdSession};
use coord_testkit::{tools_dir, Kind};
use futures::{Stream, StreamExt};

const PATIENCE: Duration = Duration::from_secs(20);

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

/// The shared etcd, a client in a fresh namespace, and its naming registry.
async fn setup(test: &str) -> Option<(String, EtcdBackend, Arc<dyn NativeRegistry>, String)> {
    let endpoints = coord_testkit::harness::endpoints(Kind::Etcd).await?;
    let ns = fresh_namespace(test);
    let backend = EtcdBackend::connect(&format!("etcd://{endpoints}{ns}"))
        .await
        .expect("connect");
    let native = Backend::native_registry(&backend).expect("etcd has a native registry");
    assert_eq!(native.layout().name, "etcd-naming");
    assert!(
        !native.layout().is_default,
        "the naming layout is not etcd's default"
    );
    Some((endpoints, backend, native, ns))
}

/// Runs etcdctl (v3 API) against `endpoints`; its stdout (panics if it fails).
fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let bin = tools_dir().join("bin").join("etcdctl");
    let out = Command::new(&bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output();
    // The etcd under test comes from the same tools dir: no etcdctl is a broken install.
    let out = out.unwrap_or_else(|e| panic!("etcdctl ({}) cannot run: {e}", bin.display()));
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn session(backend: &EtcdBackend) -> Arc<dyn Session> {
    backend
        .open_session(SessionOptions::new().ttl(Duration::from_secs(2)))
        .await
        .expect("session")
}

fn lease_hex(s: &Arc<dyn Session>) -> String {
    let e = s
        .as_any()
        .downcast_ref::<EtcdSession>()
        .expect("etcd session");
    format!("{:x}", e.lease_id())
}

/// Waits until the watch yields a list satisfying `ok`.
async fn until<S>(what: &str, watch: &mut S, ok: impl Fn(&[Instance]) -> bool) -> Vec<Instance>
where
    S: Stream<Item = coord_core::Result<Vec<Instance>>> + Unpin,
{
    tokio::time::timeout(PATIENCE, async {
        loop {
            let list = watch
                .next()
                .await
                .unwrap_or_else(|| panic!("watch ended before {what}"))
                .expect("watch");
            if ok(&list) {
                return list;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_shows_exactly_the_endpoints_json_under_the_lease() {
    let Some((endpoints, backend, native, ns)) = setup("naming_etcdctl").await else {
        return;
    };
    let root = p("/services");
    let s = session(&backend).await;
    let api1 = Instance::new("api", "api-1", "127.0.0.1", 8080)
        .with_meta("zone", "a")
        .with_tag("v2");
    native
        .register(Entry::new(&root, &s, &api1), IfPresent::Replace)
        .await
        .unwrap();
    let target = backend.naming().target(&root, "api").unwrap();
    assert_eq!(
        target,
        format!("{}/services/api", ns.trim_start_matches('/'))
    );

    let out = etcdctl(&endpoints, &["get", "--prefix", &format!("{target}/")]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{target}/127.0.0.1:8080").as_str(),
            r#"{"Op":0,"Addr":"127.0.0.1:8080","Metadata":{"id":"api-1","metadata":{"zone":"a"},"tags":["v2"]}}"#,
        ],
        "etcdctl get --prefix {target}/"
    );
    // The key is attached to the session's lease.
    let ttl = etcdctl(
        &endpoints,
        &["lease", "timetolive", &lease_hex(&s), "--keys"],
    );
    assert!(
        ttl.contains(&format!("{target}/127.0.0.1:8080")),
        "the lease holds the key: {ttl}"
    );
    assert_eq!(
        native.discover(&root, "api").await.unwrap(),
        vec![api1.clone()]
    );
    assert_eq!(
        native.services(&root).await.unwrap(),
        vec!["api".to_owned()]
    );
    assert_eq!(
        native.holder(&root, &api1).await.unwrap(),
        Holder::Session(s.id().clone())
    );

    // Deregistering removes the key; closing the session afterwards leaves nothing.
    native
        .deregister(Entry::new(&root, &s, &api1))
        .await
        .unwrap();
    assert_eq!(
        etcdctl(&endpoints, &["get", "--prefix", &format!("{target}/")]),
        ""
    );
    assert_eq!(native.holder(&root, &api1).await.unwrap(), Holder::Nobody);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_put_by_etcdctl_like_a_go_service_is_discovered_and_watched() {
    let Some((endpoints, _backend, native, ns)) = setup("naming_put").await else {
        return;
    };
    let root = p("/services");
    let target = format!("{}/services/grpc", ns.trim_start_matches('/'));
    let mut watch = native.watch(&root, "grpc").await.unwrap();
    let first = until("the empty list", &mut watch, |_| true).await;
    assert!(first.is_empty(), "{first:?}");

    // What endpoints.Manager.AddEndpoint(ctx, target+"/"+addr, Endpoint{Addr: addr}) writes.
    let plain = r#"{"Op":0,"Addr":"10.0.0.9:50051","Metadata":null}"#;
    etcdctl(
        &endpoints,
        &["put", &format!("{target}/10.0.0.9:50051"), plain],
    );
    let seen = until("the Go entry", &mut watch, |l| l.len() == 1).await;
    assert_eq!(
        seen,
        vec![Instance::new("grpc", "10.0.0.9:50051", "10.0.0.9", 50051)]
    );

    // Go metadata of its own: scalar members become metadata.
    let meta =
        r#"{"Op":0,"Addr":"[::1]:50052","Metadata":{"weight":3,"zone":"b","nested":{"x":1}}}"#;
    etcdctl(&endpoints, &["put", &format!("{target}/[::1]:50052"), meta]);
    until("two entries", &mut watch, |l| l.len() == 2).await;
    let found = native.discover(&root, "grpc").await.unwrap();
    let v6 = Instance::new("grpc", "[::1]:50052", "::1", 50052)
        .with_meta("weight", "3")
        .with_meta("zone", "b");
    assert_eq!(
        found,
        vec![
            Instance::new("grpc", "10.0.0.9:50051", "10.0.0.9", 50051),
            v6
        ]
    );

    // A Go service deleting its endpoint (DeleteEndpoint deletes the key).
    etcdctl(&endpoints, &["del", &format!("{target}/10.0.0.9:50051")]);
    until("one entry", &mut watch, |l| l.len() == 1).await;

    // Not the endpoints JSON: discover says so, the watch skips it.
    etcdctl(&endpoints, &["put", &format!("{target}/junk"), "not json"]);
    let err = native.discover(&root, "grpc").await.unwrap_err();
    assert!(matches!(err, Error::MalformedData { .. }), "{err:?}");
    etcdctl(
        &endpoints,
        &["put", &format!("{target}/[::1]:50052"), plain],
    );
    let l = until("the rewritten entry", &mut watch, |l| {
        l.len() == 1 && l[0].address == "10.0.0.9"
    })
    .await;
    assert_eq!(l[0].id, "[::1]:50052");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_goes_when_etcdctl_revokes_its_lease() {
    let Some((endpoints, backend, native, ns)) = setup("naming_revoke").await else {
        return;
    };
    let root = p("/services");
    let target = format!("{}/services/api", ns.trim_start_matches('/'));
    let s = session(&backend).await;
    let i = Instance::new("api", "api-1", "127.0.0.1", 9000);
    native
        .register(Entry::new(&root, &s, &i), IfPresent::Replace)
        .await
        .unwrap();
    let mut watch = native.watch(&root, "api").await.unwrap();
    until("the instance", &mut watch, |l| l == [i.clone()]).await;

    etcdctl(&endpoints, &["lease", "revoke", &lease_hex(&s)]);
    until("no instance", &mut watch, |l| l.is_empty()).await;
    assert_eq!(
        etcdctl(&endpoints, &["get", "--prefix", &format!("{target}/")]),
        ""
    );
    assert!(native.discover(&root, "api").await.unwrap().is_empty());

    // A closed session takes its instance with it too.
    let s2 = session(&backend).await;
    native
        .register(Entry::new(&root, &s2, &i), IfPresent::Replace)
        .await
        .unwrap();
    until("the instance again", &mut watch, |l| l.len() == 1).await;
    s2.close().await.unwrap();
    until("no instance after close", &mut watch, |l| l.is_empty()).await;

    // Through the Registry API on a client whose URL selects the layout; its process
    // "crashes" (no more keep-alives, no revoke): the lease expires and the key goes.
    let url = format!("etcd://{endpoints}{ns}?registry=native&session_ttl=2s");
    let client = coord_core::Client::new(Arc::new(EtcdBackend::connect(&url).await.unwrap()));
    assert_eq!(client.registry().layout_name().unwrap(), "etcd-naming");
    let _reg = client.registry().register(&i).await.unwrap();
    until("the registered instance", &mut watch, |l| l == [i.clone()]).await;
    assert!(
        etcdctl(&endpoints, &["get", "--prefix", &format!("{target}/")]).contains("127.0.0.1:9000")
    );
    let s3 = client.current_session().await.expect("a session");
    s3.as_any()
        .downcast_ref::<EtcdSession>()
        .expect("etcd session")
        .crash();
    until("no instance after the lease expired", &mut watch, |l| {
        l.is_empty()
    })
    .await;
    assert_eq!(
        etcdctl(&endpoints, &["get", "--prefix", &format!("{target}/")]),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_two_sessions_replace_or_fail() {
    let Some((_endpoints, backend, native, _ns)) = setup("naming_ids").await else {
        return;
    };
    let root = p("/services");
    let (a, b) = (session(&backend).await, session(&backend).await);
    let first = Instance::new("api", "api-1", "127.0.0.1", 9000);
    // The same id at a new address (a restarted instance on another port).
    let moved = Instance::new("api", "api-1", "127.0.0.1", 9001);
    native
        .register(Entry::new(&root, &a, &first), IfPresent::Replace)
        .await
        .unwrap();
    let err = native
        .register(Entry::new(&root, &a, &moved), IfPresent::Replace)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "own id: {err:?}"
    );
    let err = native
        .register(Entry::new(&root, &b, &moved), IfPresent::Fail)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "Fail: {err:?}");
    native
        .register(Entry::new(&root, &b, &moved), IfPresent::Replace)
        .await
        .unwrap();
    assert_eq!(
        native.discover(&root, "api").await.unwrap(),
        vec![moved.clone()]
    );
    // The replaced registrant's deregister leaves the new entry alone.
    native
        .deregister(Entry::new(&root, &a, &first))
        .await
        .unwrap();
    assert_eq!(
        native.holder(&root, &first).await.unwrap(),
        Holder::Session(b.id().clone()),
        "the id is b's now"
    );
    // Bad input: a typed error, nothing written.
    let bad = Instance::new("api", "x/y", "127.0.0.1", 1);
    assert!(native
        .register(Entry::new(&root, &a, &bad), IfPresent::Replace)
        .await
        .is_err());
    let bad = Instance::new("api", "api-2", "a/b", 1);
    let err = native
        .register(Entry::new(&root, &a, &bad), IfPresent::Replace)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(native.discover(&root, "api").await.unwrap().len(), 1);
}
