//! The registry in Consul's catalog, as Consul's own consumers see it: the `consul` CLI
//! (`catalog services`, `catalog nodes`, `services register`), Consul DNS queried with `dig`,
//! and the health API. The agent is the kit's shared dev agent (DNS on a free loopback port).
//!
//! The SIGKILL test registers from a separate process: this test binary run again as
//! `helper_registering_process` (an ignored test that does nothing unless the parent set
//! `COORD_CATALOG_HELPER_URL`); it exits when its stdin (held by the parent) closes, so it
//! never outlives the test.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::registry::{Instance, RegistryLayout};
use coord_core::{Client, Error};
use coord_testkit::harness::unique_suffix;
use coord_testkit::Kind;

/// The session TTL of the registering clients (the check TTL that bounds a crash's detection).
const TTL: Duration = Duration::from_secs(2);
/// Bound of every wait for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(30);

/// The agent's `host:port`, or `None` after the loud skip line.
fn agent() -> Option<String> {
    let eps = coord_testkit::shared_endpoints(Kind::Consul)?;
    let first = eps.split(',').next().unwrap_or_default();
    Some(first.trim().trim_start_matches("http://").to_owned())
}

/// A tool the test needs (`dig`, `consul`): its path, or `None` after the loud skip line
/// (a failure with `COORD_REQUIRE_BACKENDS=1`).
fn tool(name: &str, candidates: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let msg =
        format!("{name} not found (tried {candidates:?}): scripts/install-backends.sh installs it");
    assert!(!coord_testkit::require_backends(), "{msg}");
    println!("SKIPPED: {msg}");
    None
}

fn consul_cli() -> Option<std::path::PathBuf> {
    let mut c = Vec::new();
    if let Ok(p) = std::env::var("COORD_CONSUL_BIN") {
        c.push(p.into());
    }
    c.push(coord_testkit::tools_dir().join("consul/usr/bin/consul"));
    c.push("/usr/bin/consul".into());
    tool("consul", &c)
}

fn dig() -> Option<std::path::PathBuf> {
    tool("dig", &["/usr/bin/dig".into()])
}

/// Runs `consul <args>` against the agent; its stdout (panics on failure).
fn consul(cli: &std::path::Path, agent: &str, args: &[&str]) -> String {
    let out = Command::new(cli)
        .args(args)
        .env("CONSUL_HTTP_ADDR", format!("http://{agent}"))
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("run consul");
    assert!(
        out.status.success(),
        "consul {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn get_json(agent: &str, path: &str) -> serde_json::Value {
    let url = format!("http://{agent}{path}");
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("HTTP GET");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.expect("JSON")
}

/// The agent's DNS port (the kit starts it on a free port).
async fn dns_port(agent: &str) -> u16 {
    let me = get_json(agent, "/v1/agent/self").await;
    let port = me["DebugConfig"]["DNSPort"].as_i64().unwrap_or(-1);
    assert!(port > 0, "the agent serves no DNS (DNSPort {port})");
    u16::try_from(port).expect("a port")
}

/// `(target, port)` of each SRV answer for `<name>.service.consul`, and the A records of the
/// additional section (`name address`).
fn dig_srv(dig: &std::path::Path, port: u16, name: &str) -> (Vec<(String, u16)>, Vec<String>) {
    let out = Command::new(dig)
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(["+noall", "+answer", "+additional"])
        .arg(format!("{name}.service.consul"))
        .arg("SRV")
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut srv = Vec::new();
    let mut a = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, _, "IN", "SRV", _prio, _weight, port, target] => {
                srv.push((target.to_string(), port.parse().unwrap_or(0)));
            }
            [owner, _, "IN", "A", addr] => a.push(format!("{owner} {addr}")),
            _ => {}
        }
    }
    (srv, a)
}

/// The service IDs `/v1/health/service/<name>?passing` lists.
async fn passing_ids(agent: &str, name: &str) -> Vec<String> {
    let v = get_json(agent, &format!("/v1/health/service/{name}?passing")).await;
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn client(agent: &str) -> Client {
    let url = format!("consul://{agent}?session_ttl={}s", TTL.as_secs());
    Client::new(coord_consul::connect(&url).await.expect("connect"))
}

/// A coord registration is what `consul catalog services`, `consul catalog nodes -service`,
/// the health API and Consul DNS (SRV with the address and port) show; deregistering removes
/// it from all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_in_the_catalog_dns_and_health_api() {
    let (Some(agent), Some(cli), Some(dig)) = (agent(), consul_cli(), dig()) else {
        return;
    };
    let c = client(&agent).await;
    let reg = c.registry();
    assert_eq!(reg.layout_name().unwrap(), "consul-catalog");
    let name = format!("cat-{}", unique_suffix());
    let i = Instance::new(&name, "i1", "127.0.0.42", 4242)
        .with_meta("zone", "a")
        .with_tag("v2");
    let r = reg.register(&i).await.unwrap();

    let services = consul(&cli, &agent, &["catalog", "services", "-tags"]);
    assert!(
        services
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&*name) && l.contains("v2")),
        "{services}"
    );
    let nodes = consul(
        &cli,
        &agent,
        &["catalog", "nodes", &format!("-service={name}")],
    );
    assert!(nodes.contains("127.0.0.1"), "{nodes}");

    let health = get_json(&agent, &format!("/v1/health/service/{name}?passing")).await;
    let svc = &health[0]["Service"];
    assert_eq!(svc["Service"], name.as_str());
    assert_eq!(svc["Address"], "127.0.0.42");
    assert_eq!(svc["Port"], 4242);
    assert_eq!(svc["Tags"], serde_json::json!(["v2"]));
    assert_eq!(svc["Meta"]["zone"], "a");
    assert_eq!(svc["Meta"]["coord_id"], "i1");
    assert_eq!(svc["Meta"]["coord_session"], r.owner().0.as_str());

    let port = dns_port(&agent).await;
    let (srv, a) = dig_srv(&dig, port, &name);
    assert_eq!(srv.len(), 1, "SRV answers {srv:?}");
    assert_eq!(srv[0].1, 4242, "{srv:?}");
    assert!(
        a.iter()
            .any(|l| l.starts_with(&srv[0].0) && l.ends_with(" 127.0.0.42")),
        "the SRV target {} resolves to the address: {a:?}",
        srv[0].0
    );

    // coord reads back what it wrote.
    assert_eq!(reg.discover(&name).await.unwrap(), vec![i.clone()]);
    assert!(reg.services().await.unwrap().contains(&name));

    r.deregister().await.unwrap();
    assert!(passing_ids(&agent, &name).await.is_empty());
    let services = consul(&cli, &agent, &["catalog", "services"]);
    assert!(!services.lines().any(|l| l == name), "{services}");
    assert!(dig_srv(&dig, port, &name).0.is_empty());
    c.close().await.unwrap();
}

/// A service registered with the Consul CLI (no coord session, no coord meta) is found by
/// coord's discovery and cache; its deregistration empties the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_registered_service_is_discovered_and_cached() {
    let (Some(agent), Some(cli)) = (agent(), consul_cli()) else {
        return;
    };
    let c = client(&agent).await;
    let reg = c.registry();
    let name = format!("cli-{}", unique_suffix());
    let id = format!("{name}-web1");
    let cache = reg.cache(&name).await.unwrap();
    assert!(cache.instances().is_empty());
    consul(
        &cli,
        &agent,
        &[
            "services",
            "register",
            &format!("-name={name}"),
            &format!("-id={id}"),
            "-address=127.0.0.9",
            "-port=7777",
            "-tag=blue",
            "-meta=team=core",
        ],
    );
    let want = Instance::new(&name, &id, "127.0.0.9", 7777)
        .with_meta("team", "core")
        .with_tag("blue");
    tokio::time::timeout(PATIENCE, async {
        while cache.instances().is_empty() {
            assert!(cache.changed().await);
        }
    })
    .await
    .expect("the cache sees the CLI's service");
    assert_eq!(*cache.instances(), vec![want.clone()]);
    assert_eq!(reg.discover(&name).await.unwrap(), vec![want.clone()]);
    assert!(reg.services().await.unwrap().contains(&name));
    // Another registry (a namespace) sees only what coord registered through it.
    let ns = Client::new(
        coord_consul::connect(&format!("consul://{agent}/other-{}", unique_suffix()))
            .await
            .unwrap(),
    );
    assert!(ns.registry().discover(&name).await.unwrap().is_empty());

    consul(
        &cli,
        &agent,
        &["services", "deregister", &format!("-id={id}")],
    );
    tokio::time::timeout(PATIENCE, async {
        while !cache.instances().is_empty() {
            assert!(cache.changed().await);
        }
    })
    .await
    .expect("the cache sees the deregistration");
    c.close().await.unwrap();
}

/// Consul's rules are checked before any I/O: `InvalidArgument`, nothing registered, no
/// session opened. The generic layout stays available on Consul.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_rules_are_checked_before_any_io() {
    let Some(agent) = agent() else {
        return;
    };
    let c = client(&agent).await;
    let reg = c.registry();
    let name = format!("rules-{}", unique_suffix());
    let bad = [
        Instance::new(&name, "x", "h", 1).with_meta("bad.key", "v"),
        Instance::new(&name, "x", "h", 1).with_meta("consul-x", "v"),
        Instance::new(&name, "x", "h", 1).with_meta("k", &"v".repeat(513)),
        Instance::new(&name, "x", "h", 1).with_meta("coord_session", "forged"),
        Instance::new("under_score", "x", "h", 1),
    ];
    for i in &bad {
        let e = reg.register(i).await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{i:?}: {e:?}");
    }
    assert!(c.current_session().await.is_none(), "no session was opened");
    assert!(passing_ids(&agent, &name).await.is_empty());
    let generic = c.registry_with(RegistryLayout::Generic).unwrap();
    assert_eq!(generic.layout_name().unwrap(), "generic");
    // The generic layout has no such rules (its own path rules only).
    let r = generic.register(&bad[0]).await.unwrap();
    assert_eq!(generic.discover(&name).await.unwrap(), vec![bad[0].clone()]);
    assert!(passing_ids(&agent, &name).await.is_empty());
    r.deregister().await.unwrap();
    c.close().await.unwrap();
}

/// Kills the helper when dropped (also on panic).
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL of the registering process: its instance leaves `?passing` and Consul DNS within
/// the check TTL + 1 s (nobody passes the session's check any more; the alias check follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_process_leaves_passing_and_dns_within_ttl() {
    let (Some(agent), Some(dig)) = (agent(), dig()) else {
        return;
    };
    let port = dns_port(&agent).await;
    let name = format!("kill-{}", unique_suffix());
    let exe = std::env::current_exe().expect("the test binary");
    let child = Command::new(exe)
        .args([
            "helper_registering_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "COORD_CATALOG_HELPER_URL",
            format!("consul://{agent}?session_ttl={}s", TTL.as_secs()),
        )
        .env("COORD_CATALOG_HELPER_SERVICE", &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the helper");
    let mut helper = Helper(child);
    let stdout = helper.0.stdout.take().expect("helper stdout");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("REGISTERED"))
    });
    let ready = tokio::time::timeout(PATIENCE, ready).await;
    assert!(matches!(ready, Ok(Ok(true))), "the helper did not register");
    assert_eq!(passing_ids(&agent, &name).await.len(), 1);
    assert_eq!(dig_srv(&dig, port, &name).0.len(), 1);

    helper.0.kill().expect("SIGKILL the helper");
    let killed = Instant::now();
    let _ = helper.0.wait();
    let (mut health_gone, mut dns_gone) = (None, None);
    while (health_gone.is_none() || dns_gone.is_none()) && killed.elapsed() < PATIENCE {
        if health_gone.is_none() && passing_ids(&agent, &name).await.is_empty() {
            health_gone = Some(killed.elapsed());
        }
        if dns_gone.is_none() && dig_srv(&dig, port, &name).0.is_empty() {
            dns_gone = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bound = TTL + Duration::from_secs(1);
    println!("after SIGKILL: gone from ?passing in {health_gone:?}, from DNS in {dns_gone:?}");
    assert!(health_gone.is_some_and(|t| t <= bound), "{health_gone:?}");
    assert!(dns_gone.is_some_and(|t| t <= bound), "{dns_gone:?}");
    // Still in the catalog, critical, until the agent reaps it (1 min): a critical instance.
    let all = get_json(&agent, &format!("/v1/health/service/{name}")).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
}

/// Not a test of its own: the registering process of
/// `sigkilled_process_leaves_passing_and_dns_within_ttl`, which runs this binary again with
/// `COORD_CATALOG_HELPER_URL` set. Registers, prints `REGISTERED`, and lives until its stdin
/// closes (the parent's end of the pipe, closed when the parent exits) or it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of sigkilled_process_leaves_passing_and_dns_within_ttl"]
async fn helper_registering_process() {
    let Ok(url) = std::env::var("COORD_CATALOG_HELPER_URL") else {
        println!("SKIPPED: helper_registering_process runs only as a child of the SIGKILL test");
        return;
    };
    let name = std::env::var("COORD_CATALOG_HELPER_SERVICE").expect("service name");
    let c = Client::new(coord_consul::connect(&url).await.expect("connect"));
    let i = Instance::new(&name, "victim", "127.0.0.43", 4343);
    let r = Arc::new(c.registry().register(&i).await.expect("register"));
    println!("REGISTERED {}", r.owner());
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    drop(r);
}

/// Waits until `reg` discovers exactly `want` in `service` (bounded by [`PATIENCE`]).
async fn wait_discovered(reg: &coord_core::registry::Registry, service: &str, want: &[Instance]) {
    let started = Instant::now();
    loop {
        match reg.discover(service).await {
            Ok(list) if list == want => return,
            _ if started.elapsed() > PATIENCE => {
                panic!("{service}: not {want:?} within {PATIENCE:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An entry that vanished while its session lives (an operator's deregistration, an agent
/// that forgot its services) is registered again on the same session within a session TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_entry_is_registered_again() {
    let Some(agent) = agent() else {
        return;
    };
    let c = client(&agent).await;
    let reg = c.registry();
    let name = format!("gone-{}", unique_suffix());
    let i = Instance::new(&name, "g1", "127.0.0.44", 4444);
    let r = reg.register(&i).await.unwrap();
    let owner = r.owner();
    let url = format!("http://{agent}/v1/agent/service/deregister/{name}-g1");
    let put = reqwest::Client::new()
        .put(url)
        .timeout(Duration::from_secs(5));
    assert!(put.send().await.unwrap().status().is_success());
    wait_discovered(&reg, &name, &[]).await;
    wait_discovered(&reg, &name, std::slice::from_ref(&i)).await;
    let started = Instant::now();
    while r.reregistrations() == 0 && started.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.reregistrations(), 1);
    assert_eq!(r.owner(), owner, "the same session");
    assert_eq!(r.state(), coord_core::group::MembershipState::Joined);
    r.deregister().await.unwrap();
    c.close().await.unwrap();
}

/// A restarted agent (a dev agent forgets everything: the session, its check, the service)
/// gets the instance back: the session ends, the registration registers again on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_comes_back_after_an_agent_restart() {
    let mut server = match coord_testkit::Server::consul() {
        Ok(s) => s,
        Err(e) => {
            assert!(!coord_testkit::require_backends(), "start Consul: {e}");
            println!("SKIPPED: cannot start a Consul agent: {e}");
            return;
        }
    };
    let agent = server.endpoint();
    let c = client(&agent).await;
    let reg = c.registry();
    let i = Instance::new("phoenix", "p1", "127.0.0.45", 4545);
    let r = reg.register(&i).await.unwrap();
    let first = r.owner();
    let restart = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart the agent");
        server
    });
    let _server = tokio::time::timeout(PATIENCE, restart)
        .await
        .expect("the agent restarts in time")
        .unwrap();
    wait_discovered(&reg, "phoenix", std::slice::from_ref(&i)).await;
    let started = Instant::now();
    while r.reregistrations() == 0 && started.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.reregistrations() >= 1);
    assert_ne!(r.owner(), first, "a new session");
    assert_eq!(passing_ids(&agent, "phoenix").await, ["phoenix-p1"]);
    c.close().await.unwrap();
    assert!(passing_ids(&agent, "phoenix").await.is_empty());
}
