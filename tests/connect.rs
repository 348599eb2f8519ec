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
    // Each backend's own rules, checked before any I/O (nothing listens on port 1).
    let per_backend: [(&str, bool, &[&str]); 3] = [
        (
            "zk",
            cfg!(feature = "zk"),
            &[
                "zk:///ns",
                "zk://h:1/ns?bogus=1",
                "zk://h:1?timeout=0s",
                "zk://bob@h:1",
                "zk://h:1?session_timeout=0s",
                "zk://h:1?session_ttl=0s",
                "zk://h:1?session_timeout=4s&session_ttl=4s",
            ],
        ),
        (
            "etcd",
            cfg!(feature = "etcd"),
            &[
                "etcd://",
                "etcd:///ns",
                "etcd://h?bogus=1",
                "etcd://h?timeout=0s",
                "etcd://user@h",
                "etcd://h?cert=/a",
                "etcd://h?tls=maybe",
                "etcd://h?tls=false&ca=/x",
                "etcd://h?tls=true&ca=",
            ],
        ),
        (
            "consul",
            cfg!(feature = "consul"),
            &[
                "consul://",
                "consul:///ns",
                "consul://a:1,b:2",
                "consul://u:p@h:1",
                "consul://t@h:1?token=x",
                "consul://h:1?bogus=1",
                "consul://h:1?session_ttl=100ms",
                "consul://h:1?session_ttl=2h",
                "consul://h:1?tls=maybe",
                "consul://h:1?tls=false&ca=/x",
                "consul://h:1?tls=true&cert=/x",
                "consul://h:1?tls=true&ca=",
                "consul://h:1?wait=1h",
            ],
        ),
    ];
    for (scheme, enabled, urls) in per_backend {
        for bad in urls.iter().filter(|_| enabled) {
            let r = coord::connect(bad).await;
            assert!(
                matches!(r, Err(Error::InvalidUrl { .. })),
                "{scheme}: {bad}: {r:?}"
            );
        }
    }
    for secret in [
        "zk://u:hunter2@h:1?x=1",
        "etcd://u:hunter2@h?x=1",
        "consul://hunter2@h:1?x=1",
    ] {
        if let Err(e) = coord::connect(secret).await {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
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

/// The `InvalidUrl` reason of `url`.
async fn reason(url: &str) -> String {
    match coord::connect(url).await {
        Err(Error::InvalidUrl { reason }) => reason,
        other => panic!("{url}: {other:?}"),
    }
}

#[tokio::test]
async fn unknown_options_name_the_close_match() {
    assert_eq!(
        reason("mem://x?sesion_ttl=5s").await,
        "unknown option `sesion_ttl` (did you mean `session_ttl`?)"
    );
    assert_eq!(
        reason("mem://x?max_valu_size=5").await,
        "unknown option `max_valu_size` (did you mean `max_value_size`?)"
    );
    let far = reason("mem://x?zzz=1").await;
    assert!(
        far.contains("`zzz`") && far.contains("max_value_size, registry, session_ttl"),
        "{far}"
    );
    assert_eq!(
        reason("mem://x?registy=native").await,
        "unknown option `registy` (did you mean `registry`?)"
    );
    // Every backend: the same typo, the same suggestion, before any I/O (port 1 is closed).
    for (scheme, enabled) in [
        ("zk", cfg!(feature = "zk")),
        ("etcd", cfg!(feature = "etcd")),
        ("consul", cfg!(feature = "consul")),
    ] {
        if !enabled {
            continue;
        }
        assert_eq!(
            reason(&format!("{scheme}://127.0.0.1:1/x?sesion_ttl=5s")).await,
            "unknown option `sesion_ttl` (did you mean `session_ttl`?)",
            "{scheme}"
        );
        assert_eq!(
            reason(&format!("{scheme}://127.0.0.1:1/x?registry=natve")).await,
            "option `registry`: \"natve\" is not a layout (default, generic, native)",
            "{scheme}"
        );
        // Far from every option: the list of the backend's own, and never a credential.
        let creds = if scheme == "consul" {
            "hunter2"
        } else {
            "u:hunter2"
        };
        let far = reason(&format!("{scheme}://{creds}@127.0.0.1:1/x?zzz=1")).await;
        assert!(
            far.contains("known:") && far.contains("session_ttl"),
            "{far}"
        );
        assert!(!far.contains("hunter2"), "{far}");
    }
    // Each backend's own options are suggested too.
    for (url, typo, meant) in [
        ("zk://127.0.0.1:1/x?timeot=5s", "timeot", "timeout"),
        (
            "etcd://127.0.0.1:1/x?conect_timeout=5s",
            "conect_timeout",
            "connect_timeout",
        ),
        (
            "etcd://127.0.0.1:1/x?max_value_sise=5",
            "max_value_sise",
            "max_value_size",
        ),
        ("consul://127.0.0.1:1/x?tokn=s3cr3t", "tokn", "token"),
    ] {
        let enabled = url.starts_with("zk") && cfg!(feature = "zk")
            || url.starts_with("etcd") && cfg!(feature = "etcd")
            || url.starts_with("consul") && cfg!(feature = "consul");
        if enabled {
            let want = format!("unknown option `{typo}` (did you mean `{meant}`?)");
            assert_eq!(reason(url).await, want);
        }
    }
}

#[tokio::test]
async fn one_option_name_per_meaning() {
    // `session_ttl`, `timeout` and `max_value_size` mean the same everywhere; a TTL out of a
    // backend's bounds is refused under the same name.
    let c = coord::connect("mem://names?session_ttl=300ms&max_value_size=7")
        .await
        .unwrap();
    assert_eq!(c.capabilities().max_value_size, 7);
    assert!(reason("mem://x?session_ttl=2h").await.contains("session"));
    if cfg!(feature = "zk") {
        // ZooKeeper's old name is an alias; both at once are refused.
        let both = reason("zk://127.0.0.1:1/x?session_ttl=4s&session_timeout=4s").await;
        assert!(both.contains("session_timeout"), "{both}");
        let bad = reason("zk://127.0.0.1:1/x?session_timeout=soon").await;
        assert!(bad.contains("session_ttl"), "{bad}");
    }
    if cfg!(feature = "consul") {
        let r = reason("consul://127.0.0.1:1/x?session_ttl=100ms").await;
        assert!(r.contains("session_ttl"), "{r}");
    }
    // The TLS options are parsed by one function for etcd and Consul: the same misuse gives
    // the same reason on both.
    for scheme in ["etcd", "consul"] {
        if (scheme == "etcd" && !cfg!(feature = "etcd"))
            || (scheme == "consul" && !cfg!(feature = "consul"))
        {
            continue;
        }
        assert_eq!(
            reason(&format!("{scheme}://127.0.0.1:1?cert=/c.pem")).await,
            "options `cert` and `key` go together",
            "{scheme}"
        );
        assert_eq!(
            reason(&format!("{scheme}://127.0.0.1:1?tls=false&ca=/ca.pem")).await,
            "`tls=false` contradicts the `ca`/`cert`/`key` options",
            "{scheme}"
        );
    }
}

/// Connecting to a closed port: a connection error that names the endpoint and never the
/// credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_the_endpoint_not_the_credentials() {
    let secret = "hunter2-S3CRET";
    for (url, endpoint, enabled) in [
        (
            format!("zk://alice:{secret}@127.0.0.1:1/x?timeout=1s"),
            "127.0.0.1:1",
            cfg!(feature = "zk"),
        ),
        (
            format!("etcd://alice:{secret}@127.0.0.1:1/x?timeout=1s"),
            "127.0.0.1:1",
            cfg!(feature = "etcd"),
        ),
        (
            format!("etcd://alice:{secret}@127.0.0.1:1,127.0.0.1:2/x?timeout=1s"),
            "127.0.0.1:1,127.0.0.1:2",
            cfg!(feature = "etcd"),
        ),
        (
            format!("consul://{secret}@127.0.0.1:1/x?timeout=1s"),
            "127.0.0.1:1",
            cfg!(feature = "consul"),
        ),
        (
            format!("consul://127.0.0.1:1/x?timeout=1s&token={secret}"),
            "127.0.0.1:1",
            cfg!(feature = "consul"),
        ),
    ] {
        if !enabled {
            continue;
        }
        let shown = url.replace(secret, "***");
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), coord::connect(&url))
            .await
            .unwrap_or_else(|_| panic!("{shown}: connect hung"));
        let e = match r {
            Err(e) => e,
            Ok(_) => panic!("{shown}: connected to a closed port"),
        };
        assert!(
            matches!(e, Error::ConnectionLost { .. } | Error::Timeout { .. }),
            "{shown}: {e:?}"
        );
        let (display, debug) = (e.to_string(), format!("{e:?}"));
        assert!(display.contains(endpoint), "{shown}: {display}");
        for text in [&display, &debug] {
            assert!(
                !text.contains(secret) && !text.contains("alice"),
                "{shown}: {text}"
            );
        }
    }
}
