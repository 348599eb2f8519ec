//! `coord::connect`: URL parsing, scheme dispatch, features, `mem://name` sharing.

use coord::{CreateMode, Error, Path};

#[tokio::test]
async fn unknown_scheme_is_its_own_error() {
    let r = coord::connect("redis://127.0.0.1:6379").await;
    assert!(
        matches!(r, Err(Error::UnknownScheme { ref scheme }) if scheme == "redis"),
        "{r:?}"
    );
}

#[tokio::test]
async fn disabled_features_are_named() {
    for (url, feature, enabled) in [
        ("zk://127.0.0.1:1/x", "zk", cfg!(feature = "zk")),
        ("etcd://127.0.0.1:1/x", "etcd", cfg!(feature = "etcd")),
        ("consul://127.0.0.1:1/x", "consul", cfg!(feature = "consul")),
    ] {
        if enabled {
            continue;
        }
        match coord::connect(url).await {
            Err(Error::FeatureNotEnabled { feature: f, .. }) => assert_eq!(f, feature),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_urls_and_unknown_options_are_rejected() {
    for bad in [
        "mem",
        "mem://a,b",
        "mem://x?session_ttl=5",
        "mem://x?nope=1",
        "mem://x/bad//ns",
        "mem://user:pw@x",
        "mem://x?session_ttl=1ms",
    ] {
        let r = coord::connect(bad).await;
        assert!(matches!(r, Err(Error::InvalidUrl { .. })), "{bad}: {r:?}");
    }
    // The password never shows up in an error.
    let err = coord::connect("mem://bob:hunter2@x").await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
}

#[tokio::test]
async fn named_mem_stores_are_shared_and_namespaced() {
    let a = coord::connect("mem://shared-test/app").await.unwrap();
    let b = coord::connect("mem://shared-test/app").await.unwrap();
    let other_ns = coord::connect("mem://shared-test/other").await.unwrap();
    let private = coord::connect("mem:///app").await.unwrap();
    let k = Path::new("/k").unwrap();
    a.create(&k, b"v", CreateMode::Exact).await.unwrap();
    assert_eq!(b.get(&k).await.unwrap().value, b"v");
    assert!(other_ns.exists(&k).await.unwrap().is_none());
    assert!(private.exists(&k).await.unwrap().is_none());
    assert_eq!(a.namespace(), "/app");
}

#[tokio::test]
async fn mem_options_apply() {
    let c = coord::connect("mem://opts?session_ttl=250ms&max_value_size=10")
        .await
        .unwrap();
    assert_eq!(c.capabilities().max_value_size, 10);
    let s = c.session().await.unwrap();
    assert_eq!(s.ttl(), std::time::Duration::from_millis(250));
    let r = c
        .create(&Path::new("/big").unwrap(), &[0; 11], CreateMode::Exact)
        .await;
    assert!(
        matches!(r, Err(Error::ValueTooLarge { size: 11, max: 10 })),
        "{r:?}"
    );
}
