//! Security against dev agents this file starts itself (the test kit has no TLS/ACL agents):
//! TLS to the HTTPS port with a private CA (made by `consul tls`) and `verify_incoming_https`,
//! and ACLs with `default_policy = deny` (the token must work, and never show). Bounded
//! waits; each agent is a `coord_testkit::CustomServer` (a container with
//! `COORD_TESTKIT=containers`), stopped when its test ends (also on panic).

use std::net::TcpListener;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coord_consul::ConsulBackend;
use coord_core::{Backend, CreateMode, Error, Path, SessionOptions};
use coord_testkit::{require_backends, CustomServer};

struct Agent {
    server: Option<CustomServer>,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `consul agent -dev` on 127.0.0.1 with the config file `dir/agent.json`.
fn start_agent(bin: &FsPath, dir: PathBuf) -> Agent {
    let server =
        CustomServer::consul_dev(bin, &dir, &dir.join("agent.json")).expect("start consul");
    Agent {
        server: Some(server),
        dir,
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn consul_bin() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("COORD_CONSUL_BIN").filter(|v| !v.is_empty()) {
        let b = PathBuf::from(b);
        return b.is_file().then_some(b);
    }
    let b = coord_testkit::tools_dir().join("consul/usr/bin/consul");
    b.exists().then_some(b)
}

#[cfg(feature = "tls")]
fn run(bin: &FsPath, dir: &FsPath, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run consul tls");
    assert!(out.status.success(), "consul {args:?}: {out:?}");
}

/// Starts a TLS-only dev agent; returns it with its HTTPS port.
#[cfg(feature = "tls")]
fn start_tls_agent(bin: &FsPath) -> (Agent, u16) {
    let dir = std::env::temp_dir().join(format!(
        "coord-consul-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    run(bin, &dir, &["tls", "ca", "create"]);
    run(bin, &dir, &["tls", "cert", "create", "-server"]);
    run(bin, &dir, &["tls", "cert", "create", "-client"]);
    let ports = free_ports(4);
    let cfg = serde_json::json!({
        "disable_update_check": true,
        "ports": { "http": -1, "https": ports[0], "dns": -1, "grpc": -1,
                   "serf_lan": ports[1], "serf_wan": ports[2], "server": ports[3] },
        "cert_file": dir.join("dc1-server-consul-0.pem"),
        "key_file": dir.join("dc1-server-consul-0-key.pem"),
        "ca_file": dir.join("consul-agent-ca.pem"),
        "verify_incoming_https": true,
    });
    std::fs::write(dir.join("agent.json"), cfg.to_string()).unwrap();
    (start_agent(bin, dir), ports[0])
}

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate() {
    let Some(bin) = consul_bin() else {
        assert!(!require_backends(), "Consul is required but not installed");
        eprintln!("SKIPPED: Consul not installed (tls_with_client_certificate)");
        return;
    };
    let (agent, port) = tokio::task::block_in_place(|| start_tls_agent(&bin));
    let d = agent.dir.display();
    let url = format!(
        "consul://127.0.0.1:{port}/tls?tls=true&timeout=2s&ca={d}/consul-agent-ca.pem\
         &cert={d}/dc1-client-consul-0.pem&key={d}/dc1-client-consul-0-key.pem"
    );
    // Ready when a client connects (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = loop {
        match ConsulBackend::connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("TLS agent not reachable: {e}"),
        }
    };
    // A leader may still be coming: retry the first write briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.create(&p("/k"), b"over tls", CreateMode::Exact).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(c.get(&p("/k")).await.unwrap().value, b"over tls");
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/e"), b"", CreateMode::Exact).await.unwrap();
    s.close().await.unwrap();
    assert!(c.exists(&p("/e")).await.unwrap().is_none());

    // Without the client certificate the agent refuses the handshake.
    let no_cert =
        format!("consul://127.0.0.1:{port}/tls?tls=true&timeout=2s&ca={d}/consul-agent-ca.pem");
    let r = ConsulBackend::connect(&no_cert).await;
    assert!(
        matches!(r, Err(Error::ConnectionLost { .. })),
        "{:?}",
        r.map(|_| ())
    );
    // Without the CA the server's certificate is not trusted.
    let no_ca = format!(
        "consul://127.0.0.1:{port}/tls?tls=true&timeout=2s\
         &cert={d}/dc1-client-consul-0.pem&key={d}/dc1-client-consul-0-key.pem"
    );
    assert!(ConsulBackend::connect(&no_ca).await.is_err());
    // Plain HTTP to the HTTPS port fails too, quickly.
    let plain = format!("consul://127.0.0.1:{port}/tls?timeout=2s");
    assert!(ConsulBackend::connect(&plain).await.is_err());
    // A missing CA file is a typed error.
    let missing = format!("consul://127.0.0.1:{port}/tls?tls=true&ca=/nonexistent/ca.pem");
    assert!(matches!(
        ConsulBackend::connect(&missing).await,
        Err(Error::InvalidArgument(_))
    ));
    drop(c);
    tokio::task::block_in_place(move || drop(agent));
}

const MASTER: &str = "s3cr3t-master-token";

/// Starts a dev agent with ACLs on (`default_policy = deny`); returns it with its HTTP port.
fn start_acl_agent(bin: &FsPath) -> (Agent, u16) {
    let dir = std::env::temp_dir().join(format!(
        "coord-consul-acl-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = free_ports(4);
    let cfg = serde_json::json!({
        "disable_update_check": true,
        "primary_datacenter": "dc1",
        "ports": { "http": ports[0], "https": -1, "dns": -1, "grpc": -1,
                   "serf_lan": ports[1], "serf_wan": ports[2], "server": ports[3] },
        "acl": { "enabled": true, "default_policy": "deny",
                 "tokens": { "master": MASTER, "agent": MASTER } },
    });
    std::fs::write(dir.join("agent.json"), cfg.to_string()).unwrap();
    (start_agent(bin, dir), ports[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_token_works_and_never_shows() {
    let Some(bin) = consul_bin() else {
        assert!(!require_backends(), "Consul is required but not installed");
        eprintln!("SKIPPED: Consul not installed (acl_token_works_and_never_shows)");
        return;
    };
    let (agent, port) = tokio::task::block_in_place(|| start_acl_agent(&bin));
    let url = format!("consul://{MASTER}@127.0.0.1:{port}/acl?timeout=2s");
    // Ready when a write with the token goes through (ACL bootstrap takes a moment).
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = loop {
        let r = async {
            let c = ConsulBackend::connect(&url).await?;
            match c.create(&p("/k"), b"v", CreateMode::Exact).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(c),
                Err(e) => Err(e),
            }
        }
        .await;
        match r {
            Ok(c) => break c,
            Err(e) => {
                assert!(!e.to_string().contains(MASTER), "token leaked: {e}");
                assert!(Instant::now() < deadline, "ACL agent not ready: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(c.get(&p("/k")).await.unwrap().value, b"v");
    let s = c.open_session(SessionOptions::new()).await.unwrap();
    s.create(&p("/e"), b"", CreateMode::Exact).await.unwrap();
    s.close().await.unwrap();
    assert!(c.exists(&p("/e")).await.unwrap().is_none());
    assert!(!format!("{c:?}").contains(MASTER), "{c:?}");
    // The same token as an option.
    let by_option = format!("consul://127.0.0.1:{port}/acl?timeout=2s&token={MASTER}");
    let c2 = ConsulBackend::connect(&by_option).await.unwrap();
    assert_eq!(c2.get(&p("/k")).await.unwrap().value, b"v");
    // A wrong token and no token are refused, typed, without showing any token.
    for bad in [
        format!("consul://wrong-{MASTER}@127.0.0.1:{port}/acl?timeout=2s"),
        format!("consul://127.0.0.1:{port}/acl?timeout=2s"),
    ] {
        let r = ConsulBackend::connect(&bad).await;
        match r {
            Err(Error::Unauthorized { message: msg, .. }) => {
                assert!(!msg.contains(MASTER), "{msg}")
            }
            other => panic!("expected Unauthorized, got {:?}", other.map(|_| ())),
        }
    }
    // The URL's own Display hides it as well.
    let u = coord_core::ConnectUrl::parse(&by_option).unwrap();
    assert!(!u.to_string().contains(MASTER));
    drop((c, c2));
    tokio::task::block_in_place(move || drop(agent));
}
