//! Hostile input through the public API (issue 9): bad paths and names, unicode edge cases,
//! values over each backend's limit, malformed URLs and unknown options, and servers that
//! answer garbage or close the connection. Each gets a typed error, writes nothing, and never
//! panics or hangs (every call is bounded). Credentials never show in errors or Debug output.
//! coordctl's handling of bad URLs/arguments is in coord-ctl/tests/cli.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{namespace, rt};
use coord::registry::Instance;
use coord::{Client, CreateMode, Error, Path};
use coord_testkit::{hostile, shared_endpoints, Kind};

const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {LIMIT:?} (a hang)"),
    }
}

/// Valid but unusual names: every backend must store and list them unchanged.
fn unicode_names() -> Vec<&'static str> {
    vec![
        "ünïcödé",
        "e\u{301}", // combining acute accent
        "日本語",
        "space name",
        "percent%2Fslash",
        "q?x=1&y#z",
        "quote\"'`",
        "\u{FB01}", // a compatibility ligature (fi), high in the BMP
    ]
}

fn too_large<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::ValueTooLarge { .. }))
}

fn is_invalid_name(e: &Error) -> bool {
    matches!(e, Error::InvalidPath { .. } | Error::InvalidArgument(_))
}

async fn hostile_input(client: &Client, label: &str) {
    for bad in hostile::bad_paths() {
        match Path::new(&bad) {
            Err(Error::InvalidPath { .. }) => {}
            other => panic!("{label}: path {bad:?} gave {other:?}"),
        }
    }
    for bad in hostile::bad_names() {
        let e = client.election(&bad).err();
        assert!(
            e.as_ref().is_some_and(is_invalid_name),
            "{label}: election {bad:?}: {e:?}"
        );
        let e = client.lock(&bad).err();
        assert!(
            e.as_ref().is_some_and(is_invalid_name),
            "{label}: lock {bad:?}: {e:?}"
        );
        let e = client.group(&bad).err();
        assert!(
            e.as_ref().is_some_and(is_invalid_name),
            "{label}: group {bad:?}: {e:?}"
        );
        let reg = client.registry();
        let r = bounded("register", reg.register(&Instance::new(&bad, "i", "h", 1))).await;
        assert!(
            r.as_ref().is_err_and(is_invalid_name),
            "{label}: service {bad:?}: {r:?}"
        );
        let r = bounded(
            "register",
            reg.register(&Instance::new("svc", &bad, "h", 1)),
        )
        .await;
        assert!(
            r.as_ref().is_err_and(is_invalid_name),
            "{label}: instance {bad:?}: {r:?}"
        );
        let r = bounded("discover", reg.discover(&bad)).await;
        assert!(
            r.as_ref().is_err_and(is_invalid_name),
            "{label}: discover {bad:?}: {r:?}"
        );
        if let Ok(g) = client.group("g") {
            let r = bounded("join", g.join(&bad, b"")).await;
            assert!(
                r.as_ref().is_err_and(is_invalid_name),
                "{label}: member {bad:?}: {r:?}"
            );
        }
    }
    // Values over the limit: typed error, nothing written, through every write path.
    let max = client.capabilities().max_value_size;
    let big = vec![b'x'; max + 1];
    let p = Path::new("/big").expect("path");
    let r = bounded("create", client.create(&p, &big, CreateMode::Exact)).await;
    assert!(too_large(&r), "{label}: create: {r:?}");
    let r = bounded(
        "create seq",
        client.create(&p, &big, CreateMode::Sequential),
    )
    .await;
    assert!(too_large(&r), "{label}: sequential create: {r:?}");
    let session = bounded("session", client.session()).await.expect("session");
    let r = bounded("ephemeral", session.create(&p, &big, CreateMode::Exact)).await;
    assert!(too_large(&r), "{label}: ephemeral create: {r:?}");
    let r = bounded(
        "campaign",
        client.election("e").expect("name").campaign(&big),
    )
    .await;
    assert!(too_large(&r), "{label}: campaign: {r:?}");
    let r = bounded("join", client.group("g").expect("name").join("m", &big)).await;
    assert!(too_large(&r), "{label}: join: {r:?}");
    let inst = Instance::new("svc", "i", "h", 1).with_meta("blob", &"y".repeat(max + 1));
    let generic = client
        .registry_with(coord::registry::RegistryLayout::Generic)
        .expect("the generic layout");
    let r = bounded("register", generic.register(&inst)).await;
    assert!(too_large(&r), "{label}: register: {r:?}");
    // A native layout (the default on Consul) refuses it by its own rules, before any I/O too
    // (Consul: metadata values are at most 512 bytes).
    if client.registry().layout_name() != Ok("generic") {
        let r = bounded("register", client.registry().register(&inst)).await;
        assert!(
            too_large(&r) || matches!(r, Err(Error::InvalidArgument(_))),
            "{label}: native register: {r:?}"
        );
    }
    // Nothing was written by any of the above.
    let root = Path::root();
    let left = bounded("children", client.children(&root)).await;
    assert_eq!(left, Ok(vec![]), "{label}: something was written");
    // A value exactly at the limit is accepted; a set over it is refused and changes nothing.
    let at = vec![b'z'; max];
    bounded("create", client.create(&p, &at, CreateMode::Exact))
        .await
        .unwrap_or_else(|e| panic!("{label}: value of {max} bytes refused: {e}"));
    let r = bounded("set", client.set(&p, &big, None)).await;
    assert!(too_large(&r), "{label}: set: {r:?}");
    let n = bounded("get", client.get(&p)).await.expect("get");
    assert_eq!(
        n.value.len(),
        max,
        "{label}: set over the limit changed the value"
    );
    bounded("delete", client.delete(&p, None))
        .await
        .expect("delete");
    // Unicode edge cases round-trip (create, get, list, delete) on every backend. Failures
    // are collected and printed; any failure fails the test.
    let dir = Path::new("/uni").expect("path");
    bounded("create", client.create(&dir, b"", CreateMode::Exact))
        .await
        .expect("dir");
    let mut failed = Vec::new();
    let mut stored = Vec::new();
    for name in unicode_names() {
        let p = dir
            .join(name)
            .unwrap_or_else(|e| panic!("{label}: {name:?} rejected: {e}"));
        let r = bounded(
            "create",
            client.create(&p, name.as_bytes(), CreateMode::Exact),
        )
        .await;
        if let Err(e) = r {
            failed.push((name, format!("create: {e}")));
            continue;
        }
        stored.push(name.to_owned());
        match bounded("get", client.get(&p)).await {
            Ok(n) if n.value == name.as_bytes() => {}
            other => failed.push((name, format!("get: {other:?}"))),
        }
    }
    stored.sort();
    let listed = bounded("children", client.children(&dir)).await;
    assert_eq!(listed, Ok(stored.clone()), "{label}: listing");
    for name in stored {
        let p = dir.join(&name).expect("path");
        if let Err(e) = bounded("delete", client.delete(&p, None)).await {
            failed.push((
                unicode_names()
                    .into_iter()
                    .find(|n| *n == name)
                    .unwrap_or("?"),
                format!("delete: {e}"),
            ));
        }
    }
    for (name, why) in &failed {
        println!("{label}: unicode name {name:?} fails: {why}");
    }
    assert!(failed.is_empty(), "{label}: unicode names fail: {failed:?}");
    if failed.is_empty() {
        bounded("delete", client.delete(&dir, None))
            .await
            .expect("delete dir");
    }
    let _ = bounded("close", client.close()).await;
}

fn backend_url(kind: Kind) -> Option<String> {
    let ep = shared_endpoints(kind)?;
    let ns = namespace("hostile");
    Some(match kind {
        Kind::ZooKeeper => format!("zk://{ep}{ns}"),
        Kind::Etcd => format!("etcd://{ep}{ns}"),
        Kind::Consul => format!("consul://{ep}{ns}"),
    })
}

fn run_hostile(url: Option<String>, label: &str) {
    let Some(url) = url else { return };
    let rt = rt();
    rt.block_on(async {
        let client = bounded("connect", coord::connect(&url))
            .await
            .expect("connect");
        hostile_input(&client, label).await;
    });
}

#[test]
fn hostile_input_mem() {
    run_hostile(Some(format!("mem://hostile{}", namespace("m"))), "mem");
}

#[test]
fn hostile_input_zookeeper() {
    run_hostile(backend_url(Kind::ZooKeeper), "zk");
}

#[test]
fn hostile_input_etcd() {
    run_hostile(backend_url(Kind::Etcd), "etcd");
}

#[test]
fn hostile_input_consul() {
    run_hostile(backend_url(Kind::Consul), "consul");
}

/// A predicate on the expected error.
type Check = fn(&Error) -> bool;

#[test]
fn malformed_urls_and_unknown_options_are_typed_errors() {
    let rt = rt();
    let cases: Vec<(&str, Check)> = vec![
        ("nothing", |e| matches!(e, Error::InvalidUrl { .. })),
        ("://x", |e| matches!(e, Error::InvalidUrl { .. })),
        ("ftp://h:1", |e| matches!(e, Error::UnknownScheme { .. })),
        ("zk://", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:99999", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:0", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1,,h:2", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1/a/../b", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1/a%00b", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1/%zz", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1/ns#frag", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("zk://h:1?bogus=1", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("zk://h:1?timeout=0s", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("zk://h:1?session_timeout=soon", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("zk://bob@h:1", |e| matches!(e, Error::InvalidUrl { .. })),
        ("zk://h:1?a=1&a=2", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("etcd://h:1?bogus=1", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("etcd://h:1?session_ttl=abc", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("etcd://h:1?tls=maybe", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("etcd://[::1:2379", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("consul://a:1,b:2", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("consul://tok@h:1?token=x", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("consul://u:p@h:1", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("consul://h:1?session_ttl=1ms", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        // `ca` alone turns TLS on (as on etcd) and then fails on the missing file, at connect:
        // the URL error is the contradiction with `tls=false`.
        ("consul://h:1?tls=false&ca=/x", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("consul://tok%0A@h:1", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
        ("mem://x?nope=1", |e| matches!(e, Error::InvalidUrl { .. })),
        ("mem://x?session_ttl=-1s", |e| {
            matches!(e, Error::InvalidUrl { .. })
        }),
    ];
    for (url, ok) in cases {
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), coord::connect(url)).await
        });
        match r {
            Ok(Err(e)) if ok(&e) => {}
            Ok(Err(e)) => panic!("{url:?}: wrong error {e:?}"),
            Ok(Ok(_)) => panic!("{url:?} was accepted"),
            Err(_) => panic!("{url:?}: connect hung"),
        }
    }
}

/// A TCP server on 127.0.0.1:0 that misbehaves the same way on every connection.
fn garbage_server(mode: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = [0u8; 4096];
                match mode {
                    "close" => {}
                    "garbage" => {
                        let _ = c.read(&mut buf);
                        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                        let _ = c.write_all(&junk);
                    }
                    "http_garbage" => {
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                              Content-Length: 20\r\nX-Consul-Index: banana\r\n\r\n{not json at all!!!}",
                        );
                    }
                    _ => {
                        // "silent": accept, read, never answer, keep the connection open.
                        let start = Instant::now();
                        while start.elapsed() < Duration::from_secs(60) {
                            if matches!(c.read(&mut buf), Ok(0)) {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, stop)
}

fn typed_connection_error(e: &Error) -> bool {
    matches!(
        e,
        Error::ConnectionLost { .. }
            | Error::Timeout { .. }
            | Error::Backend { .. }
            | Error::MalformedData { .. }
            | Error::Unauthorized { .. }
    )
}

#[test]
fn garbage_servers_give_typed_errors_without_panic_or_hang() {
    let rt = rt();
    let secret = "s3cr3t-PASSWORD-xyzzy";
    for mode in ["close", "garbage", "http_garbage", "silent"] {
        let (port, stop) = garbage_server(mode);
        for url in [
            format!("zk://u:{secret}@127.0.0.1:{port}/ns?timeout=2s&session_timeout=2s"),
            format!("etcd://u:{secret}@127.0.0.1:{port}/ns?timeout=2s&connect_timeout=2s"),
            format!("consul://{secret}@127.0.0.1:{port}/ns?timeout=2s"),
        ] {
            let started = Instant::now();
            let u = url.clone();
            let r = rt.block_on(async move {
                let task = tokio::spawn(async move {
                    let client = coord::connect(&u).await?;
                    client.exists(&Path::new("/x")?).await?;
                    let s = client.session().await?;
                    s.create(&Path::new("/e")?, b"v", CreateMode::Exact).await?;
                    Ok::<(), Error>(())
                });
                tokio::time::timeout(Duration::from_secs(45), task).await
            });
            let shown = url.replace(secret, "***");
            let e = match r {
                Err(_) => panic!("{mode} {shown}: hung for 45 s"),
                Ok(Err(join)) => panic!("{mode} {shown}: panicked: {join}"),
                Ok(Ok(Ok(()))) => panic!("{mode} {shown}: succeeded against garbage"),
                Ok(Ok(Err(e))) => e,
            };
            println!("{mode:>12} {shown}: {e:?} after {:?}", started.elapsed());
            assert!(
                typed_connection_error(&e),
                "{mode} {shown}: untyped error {e:?}"
            );
            let (display, debug) = (e.to_string(), format!("{e:?}"));
            assert!(
                !display.contains(secret) && !debug.contains(secret),
                "{mode}: secret in {e:?}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn credentials_never_in_debug_or_errors() {
    let secret = "pa55-SECRET-word";
    for url in [
        format!("zk://alice:{secret}@127.0.0.1:1/ns"),
        format!("etcd://alice:{secret}@127.0.0.1:1/ns?bogus=1"),
        format!("consul://{secret}@127.0.0.1:1/ns?bogus=1"),
        format!("consul://127.0.0.1:1/ns?token={secret}&bogus=1"),
        format!("zk://alice:{secret}@127.0.0.1:1/ns?bogus=1"),
        format!("zk://alice:{secret}@h:99999/ns"),
    ] {
        if let Ok(u) = coord::ConnectUrl::parse(&url) {
            let (d, s) = (format!("{u:?}"), u.to_string());
            assert!(!d.contains(secret) && !s.contains(secret), "{d} / {s}");
        }
        let rt = rt();
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                match coord::connect(&url).await {
                    Ok(c) => {
                        let dbg = format!("{c:?} {:?}", c.registry());
                        assert!(!dbg.contains(secret), "{dbg}");
                        c.exists(&Path::new("/x")?).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                }
            })
            .await
        });
        match r {
            Ok(Err(e)) => {
                let all = format!("{e} {e:?}");
                assert!(!all.contains(secret), "{url}: secret in {all}");
            }
            Ok(Ok(())) => panic!("{url}: nothing listens on port 1"),
            Err(_) => panic!("{url}: hung"),
        }
    }
}
