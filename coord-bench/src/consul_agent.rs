//! A Consul dev agent started by the bench itself, like coord-testkit's, with Consul's default
//! limits (`limits.http_max_conns_per_client` = 200): coord-consul shares its blocking queries
//! and bounds its connections (`max_connections`, default 32).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::stats::Res;

/// A running agent; killed on drop.
pub struct Agent {
    /// `127.0.0.1:port` of its HTTP API.
    pub endpoint: String,
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    /// An agent that exited before the bench was done with it explains every later failure
    /// ("unreachable"): say so, with the end of its log, before its directory goes.
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "the Consul agent at {} exited before the bench was done ({status}); the end of its log:",
                self.endpoint
            );
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("  {l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("COORD_CONSUL_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(b);
    }
    let p = coord_testkit::tools_dir().join("consul/usr/bin/consul");
    if p.exists() {
        p
    } else {
        PathBuf::from("consul")
    }
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the agent and waits until it has a leader and its node's serfHealth passes.
pub async fn start() -> Res<Agent> {
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let dir = std::env::temp_dir().join(format!("coord-bench-consul-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("consul.json");
    std::fs::write(
        &config,
        "{\"disable_update_check\": true, \"log_level\": \"warn\", \"ports\": {\"https\": -1}}\n",
    )?;
    // Its log (warnings and a crash's trace), read back only if it exits early.
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let node = format!("coord-bench-{}", std::process::id());
    let p = |i: usize| ports[i].to_string();
    let child = Command::new(binary())
        .args([
            "agent",
            "-dev",
            "-node",
            &node,
            "-client",
            "127.0.0.1",
            "-bind",
            "127.0.0.1",
        ])
        .args([
            "-advertise",
            "127.0.0.1",
            "-http-port",
            &p(0),
            "-dns-port",
            "-1",
        ])
        .args([
            "-grpc-port",
            "-1",
            "-serf-lan-port",
            &p(1),
            "-serf-wan-port",
            &p(2),
        ])
        .args(["-server-port", &p(3), "-config-file"])
        .arg(&config)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let agent = Agent {
        endpoint: format!("127.0.0.1:{}", ports[0]),
        child,
        dir,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://{}/v1/health/node/{node}", agent.endpoint);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let passing = v.as_array().is_some_and(|a| {
                    a.iter().any(|c| {
                        c.get("CheckID").and_then(|x| x.as_str()) == Some("serfHealth")
                            && c.get("Status").and_then(|x| x.as_str()) == Some("passing")
                    })
                });
                if passing {
                    return Ok(agent);
                }
            }
        }
        if Instant::now() > deadline {
            return Err("the Consul agent was not ready within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
