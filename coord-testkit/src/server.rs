//! One server process ([`Server`]) and clusters of them ([`Cluster`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::container::{self, Running};
use crate::error::Error;
use crate::netns::Host;
use crate::probe;
use crate::supervisor::Launch;
use crate::util::{self, free_ports, make_temp_dir};
use crate::Kind;

/// How long a graceful stop waits after `SIGTERM` before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many times a fresh start is retried with new ports when a port was taken meanwhile.
const START_ATTEMPTS: usize = 3;
/// JVM options for ZooKeeper: small heap and quick start-up (tests run several at once on
/// small machines).
const JVM_OPTS: &[&str] = &[
    "-Xmx256m",
    "-Xms16m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false",
    "-Dzookeeper.4lw.commands.whitelist=*",
    // A member that lost its quorum polls for a leader at intervals that double up to this
    // (default 60 s): after a cut of 10 s it would rejoin seconds after the heal, its clients
    // waiting meanwhile (docs/RELIABILITY.md, (n)).
    "-Dzookeeper.fastleader.maxNotificationInterval=1000",
    // Connecting to an election peer across a cut waits this long (default 5 s) per attempt.
    "-Dzookeeper.cnxTimeout=1000",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    // The readiness probe's `srvr` would otherwise fill the log tail of start-up errors.
    "-Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn",
    "-Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.command.FourLetterCommands=warn",
];

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A process-unique name like `coord-testkit-<pid>-<n>`.
fn unique_name() -> String {
    format!(
        "coord-testkit-{}-{}",
        std::process::id(),
        NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One real server process (ZooKeeper, etcd or Consul) on 127.0.0.1, with its data and log in
/// its own temp dir.
///
/// The process runs under a supervisor that stops it when the test process exits, however it
/// exits (see the crate docs). Dropping a `Server` stops the process (gracefully, bounded) and
/// removes its data dir, also while a panic unwinds; set `COORD_TESTKIT_KEEP=1` to keep the
/// dir for debugging.
///
/// [`stop`](Server::stop), [`kill`](Server::kill), [`pause`](Server::pause) and
/// [`resume`](Server::resume) act on the real server process, never on the supervisor, and
/// [`restart`](Server::restart) starts it again on the same port with the same data dir.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    name: String,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    launch: Launch,
    /// Consul's node name (readiness also waits for the node's `serfHealth` check).
    consul_node: Option<String>,
    /// A Consul server of a datacenter: readiness also waits until it is a Raft voter.
    consul_voter: bool,
    proc: Option<Running>,
    /// The address it listens on (`127.0.0.1`, or a host address of a [`crate::netns::Net`]).
    host: String,
    /// The network namespace it runs in (`None`: this process's own).
    netns: Option<String>,
}

impl Server {
    /// Starts a single-node server of `kind` (see [`Server::zookeeper`], [`Server::etcd`],
    /// [`Server::consul`]) and waits until it is ready.
    pub fn start(kind: Kind) -> Result<Server, Error> {
        match kind {
            Kind::ZooKeeper => Server::zookeeper(),
            Kind::Etcd => Server::etcd(),
            Kind::Consul => Server::consul(),
        }
    }

    /// Starts a standalone ZooKeeper (`ZooKeeperServerMain`) and waits until it answers `srvr`.
    ///
    /// `tickTime=500` (`COORD_ZK_TICK_MS` overrides), so sessions of 1 s are allowed (`minSessionTimeout=1000`,
    /// `maxSessionTimeout=60000`); `maxClientCnxns=0` (no per-IP limit); the AdminServer is
    /// off; all four-letter words are whitelisted; JVM heap at most 256 MiB.
    pub fn zookeeper() -> Result<Server, Error> {
        let tools = zookeeper_tools(false)?;
        start_with_retries(|| {
            let port = free_ports(1)?[0];
            let dir = make_temp_dir("zookeeper")?;
            let cfg = zoo_cfg(&dir, "127.0.0.1", port, &[], 5);
            prepare_zookeeper(&tools, dir, unique_name(), port, &cfg, None)
        })
    }

    /// Starts a single-member etcd and waits until `GET /health` says `"health":"true"`.
    ///
    /// `--heartbeat-interval 50 --election-timeout 500`, so leases of 1 s are allowed.
    pub fn etcd() -> Result<Server, Error> {
        let etcd = etcd_binary(false)?;
        start_with_retries(|| {
            let ports = free_ports(2)?;
            let dir = make_temp_dir("etcd")?;
            let name = unique_name();
            let initial = format!("{name}=http://127.0.0.1:{}", ports[1]);
            Ok(prepare_etcd(
                &etcd,
                dir,
                name.clone(),
                ports[0],
                ports[1],
                &initial,
                &name,
                "127.0.0.1",
            ))
        })
    }

    /// Starts a Consul dev agent (`consul agent -dev`, a single server) on 127.0.0.1 and waits
    /// until it has a leader and its node's `serfHealth` check is passing.
    ///
    /// gRPC is off; the HTTP, DNS (found with `/v1/agent/self`), Serf LAN/WAN and server RPC
    /// ports are free ports. A dev agent keeps its state in memory: after
    /// [`restart`](Server::restart) it starts empty.
    pub fn consul() -> Result<Server, Error> {
        let consul = consul_binary(false)?;
        start_with_retries(|| prepare_consul(&consul))
    }

    /// What this server is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's name: its etcd member name or Consul node name, or a unique name for
    /// ZooKeeper.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"127.0.0.1:PORT"` (for a member of a cluster in network namespaces, its host's
    /// address, reachable only from those namespaces): ZooKeeper's client port, etcd's client
    /// URL without the scheme, Consul's HTTP API.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The port of [`endpoint`](Server::endpoint).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own temp dir (configuration, data and the log file). Unique per server;
    /// it appears in the server's command line, so `pgrep -f <dir>` finds the process.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The log file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server's log file.
    pub fn log_tail(&self, lines: usize) -> String {
        util::tail_lines(&self.log, lines)
    }

    /// The pid of the server process (not of its supervisor); `None` after
    /// [`stop`](Server::stop) or [`kill`](Server::kill). A server that died by itself keeps
    /// reporting its last pid; [`is_running`](Server::is_running) tells.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Running::pid)
    }

    /// Whether the server process is alive (possibly paused).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Running::is_running)
    }

    /// One readiness check, bounded by `timeout`: ZooKeeper answers `srvr` with a `Mode:`
    /// (or accepts a session), etcd's `/health` is true, Consul has a leader. A paused server
    /// fails it (the TCP connect succeeds, the answer never comes).
    pub fn probe(&self, timeout: Duration) -> Result<(), Error> {
        let (kind, endpoint) = (self.kind, self.endpoint());
        let check = move || probe::probe(kind, &endpoint, timeout);
        let result = match &self.netns {
            Some(ns) => crate::netns::run_in(ns, check).unwrap_or_else(|e| Err(e.to_string())),
            None => check(),
        };
        result.map_err(|why| {
            Error::with_log(
                format!("{} {} is not ready: {why}", self.kind, self.name),
                &self.log,
            )
        })
    }

    /// One full readiness check, as [`Server::wait_ready`] repeats it (on Consul also the
    /// node's passing `serfHealth`, and a server's Raft vote), bounded by `timeout`.
    pub fn ready(&self, timeout: Duration) -> Result<(), Error> {
        self.check_once(timeout).map_err(|why| {
            Error::with_log(
                format!("{} {} is not ready: {why}", self.kind, self.name),
                &self.log,
            )
        })
    }

    /// Repeats readiness checks until the server is ready, it exits, or `timeout` passes; the
    /// error then carries the last lines of the server's log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.proc.as_mut() {
                None => {
                    return Err(Error::with_log(
                        format!("{} {} is not running", self.kind, self.name),
                        &self.log,
                    ))
                }
                Some(p) => {
                    if let Some(status) = p.try_exit() {
                        return Err(Error::with_log(
                            format!(
                                "{} {} (pid {}) exited before it was ready: {status}",
                                self.kind,
                                self.name,
                                p.pid()
                            ),
                            &self.log,
                        ));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let bound = left.clamp(Duration::from_millis(50), Duration::from_secs(2));
            let last = match self.check_once(bound) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(Error::with_log(
                    format!(
                        "{} {} on {} was not ready within {timeout:?}: {last}",
                        self.kind,
                        self.name,
                        self.endpoint()
                    ),
                    &self.log,
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_once(&self, bound: Duration) -> Result<(), String> {
        let (kind, endpoint, node) = (self.kind, self.endpoint(), self.consul_node.clone());
        let voter = self.consul_voter;
        let check = move || {
            probe::probe(kind, &endpoint, bound)?;
            if let Some(node) = &node {
                probe::consul_node_healthy(&endpoint, node, bound)?;
                if voter {
                    probe::consul_voter(&endpoint, node, bound)?;
                }
            }
            Ok(())
        };
        match &self.netns {
            // The address exists only inside the member's namespace.
            Some(ns) => crate::netns::run_in(ns, check).map_err(|e| e.to_string())?,
            None => check(),
        }
    }

    /// Stops the server gracefully: `SIGTERM` (and `SIGCONT` if it is paused), up to 10 s to
    /// exit, then `SIGKILL`. Returns once the process is gone. No-op if it is not running.
    pub fn stop(&mut self) {
        self.begin_stop();
        self.finish_stop(Instant::now() + STOP_GRACE);
    }

    /// Sends the stop signals without waiting.
    fn begin_stop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGTERM);
            p.signal(libc::SIGCONT);
        }
    }

    /// Waits until `deadline` for the process to exit after [`begin_stop`], then kills it.
    fn finish_stop(&mut self, deadline: Instant) {
        if let Some(mut p) = self.proc.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.wait_exit(left).is_none() {
                p.kill_now();
            }
        }
    }

    /// Kills the server with `SIGKILL` (no clean shutdown: a crash) and returns once it is
    /// gone. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill_now();
        }
    }

    /// Freezes the server with `SIGSTOP`: its sockets stay open but nothing answers, as with
    /// a long GC pause or a network partition. Undo with [`resume`](Server::resume).
    ///
    /// Returns once every thread of the process is stopped (bounded by 5 s), so a request
    /// sent afterwards is not answered.
    pub fn pause(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.pause();
        }
    }

    /// Lets a [`pause`](Server::pause)d server run again (`SIGCONT`).
    pub fn resume(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGCONT);
        }
    }

    /// Starts the server again on the same port(s) with the same data dir (stopping it first
    /// if it runs) and waits until it is ready. ZooKeeper and etcd keep their data; a Consul
    /// dev agent starts empty.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()?;
        self.wait_ready(util::start_timeout())
    }

    /// Starts the process (not waiting for readiness).
    fn spawn(&mut self) -> Result<(), Error> {
        if self.proc.is_some() {
            return Ok(());
        }
        self.proc = Some(Running::spawn(
            self.kind,
            &self.dir,
            &self.log,
            &self.launch,
            self.netns.is_some(),
        )?);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if !util::keep_dirs() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A cluster of servers of one kind on 127.0.0.1: a ZooKeeper ensemble, a static etcd
/// cluster or a Consul datacenter of servers. Each member is a [`Server`] with its own temp
/// dir; stop, kill, pause and restart members individually. Dropping the cluster stops all
/// members ([`Cluster::stop_all`]).
#[derive(Debug)]
pub struct Cluster {
    /// The members, in the order of their ids (ZooKeeper `myid` = index + 1).
    pub members: Vec<Server>,
}

impl Cluster {
    /// Starts an `n`-server ZooKeeper ensemble (`QuorumPeerMain`, quorum and election ports
    /// on 127.0.0.1, same settings as [`Server::zookeeper`]) and waits until every member
    /// serves requests (is leader or follower).
    pub fn zookeeper(n: usize) -> Result<Cluster, Error> {
        if n == 0 {
            return Err(Error::new("a ZooKeeper ensemble needs at least one server"));
        }
        let tools = zookeeper_tools(false)?;
        start_cluster_with_retries(|| {
            let ports = free_ports(3 * n)?;
            let dirs = make_temp_dirs("zookeeper", n)?;
            let servers: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "server.{}=127.0.0.1:{}:{}",
                        i + 1,
                        ports[3 * i + 1],
                        ports[3 * i + 2]
                    )
                })
                .collect();
            let base = unique_name();
            let mut members = Vec::with_capacity(n);
            for (i, dir) in dirs.into_iter().enumerate() {
                let port = ports[3 * i];
                let cfg = zoo_cfg(&dir, "127.0.0.1", port, &servers, 5);
                members.push(prepare_zookeeper(
                    &tools,
                    dir,
                    format!("{base}-m{}", i + 1),
                    port,
                    &cfg,
                    Some(i + 1),
                )?);
            }
            Ok(members)
        })
    }

    /// Starts an `n`-member static etcd cluster (same settings as [`Server::etcd`]) and waits
    /// until every member's `/health` is true.
    pub fn etcd(n: usize) -> Result<Cluster, Error> {
        if n == 0 {
            return Err(Error::new("an etcd cluster needs at least one member"));
        }
        let etcd = etcd_binary(false)?;
        start_cluster_with_retries(|| {
            let ports = free_ports(2 * n)?;
            let dirs = make_temp_dirs("etcd", n)?;
            let base = unique_name();
            let names: Vec<String> = (1..=n).map(|i| format!("{base}-m{i}")).collect();
            let initial = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::with_capacity(n);
            for (i, dir) in dirs.into_iter().enumerate() {
                members.push(prepare_etcd(
                    &etcd,
                    dir,
                    names[i].clone(),
                    ports[2 * i],
                    ports[2 * i + 1],
                    &initial,
                    &base,
                    "127.0.0.1",
                ));
            }
            Ok(members)
        })
    }

    /// Starts an `n`-server Consul datacenter (not `-dev`: `consul agent -server
    /// -bootstrap-expect=n`, each server with a data dir in its own temp dir, `-retry-join`ing
    /// the others over Serf LAN every second) on 127.0.0.1 and waits until every member sees
    /// a leader, its node's `serfHealth` check is passing and it is a Raft voter (after a
    /// [`Server::restart`] too: a server autopilot cleaned up while it was down is ready only
    /// once promoted again, about 10 s later).
    ///
    /// `performance.raft_multiplier = 1` (the shortest Raft timings: a leader lost to a crash
    /// is replaced within a few seconds); DNS and gRPC are off; the HTTP, Serf LAN/WAN and server
    /// RPC ports are free ports; settings otherwise as [`Server::consul`]. Unlike a dev agent,
    /// a member keeps its state (Raft log, node id) across [`Server::restart`]. Each member's
    /// [`endpoint`](Server::endpoint) is its HTTP API; a coord `consul://` client talks to one
    /// of them, and its sessions are bound to that agent's checks.
    pub fn consul(n: usize) -> Result<Cluster, Error> {
        if n == 0 {
            return Err(Error::new("a Consul datacenter needs at least one server"));
        }
        let consul = consul_binary(false)?;
        start_cluster_with_retries(|| {
            // Per member: HTTP, Serf LAN, Serf WAN, server RPC.
            let ports = free_ports(4 * n)?;
            let dirs = make_temp_dirs("consul", n)?;
            let base = unique_name();
            let serf_lan: Vec<u16> = (0..n).map(|i| ports[4 * i + 1]).collect();
            let mut members = Vec::with_capacity(n);
            for (i, dir) in dirs.into_iter().enumerate() {
                let member = ConsulMember {
                    node: format!("{base}-m{}", i + 1),
                    http: ports[4 * i],
                    serf_lan: ports[4 * i + 1],
                    serf_wan: ports[4 * i + 2],
                    server: ports[4 * i + 3],
                    expect: n,
                    host: "127.0.0.1".into(),
                    keep_dead_servers: false,
                };
                let others: Vec<String> = serf_lan
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("127.0.0.1:{p}"))
                    .collect();
                members.push(prepare_consul_member(&consul, dir, &member, &others)?);
            }
            Ok(members)
        })
    }

    /// A ZooKeeper ensemble with one member per host of a [`crate::netns::Net`], each in its
    /// host's namespace on its address (client port 2181, quorum 2888, election 3888).
    ///
    /// `syncLimit` is 2 ticks (1 s at the default tick), not the 5 of the other ensembles: a
    /// leader cut off for longer than a session's timeout but shorter than `syncLimit` ×
    /// `tickTime` keeps its leadership, expires the sessions of the clients of every other
    /// member (their touches stopped reaching it) and commits those expiries when the cut
    /// heals, behind the backs of clients that stayed connected to healthy members
    /// (docs/RELIABILITY.md, (f)). With
    /// `(syncLimit + 1) × tickTime` under the 2 s sessions of the partition tests, it gives up
    /// first. [`Cluster::zookeeper_in_with`] picks another value.
    pub fn zookeeper_in(hosts: &[Host]) -> Result<Cluster, Error> {
        Cluster::zookeeper_in_with(hosts, 2)
    }

    /// [`Cluster::zookeeper_in`] with the members' `syncLimit` (in ticks; `COORD_ZK_SYNC_LIMIT`
    /// still overrides it).
    pub fn zookeeper_in_with(hosts: &[Host], sync_limit: u32) -> Result<Cluster, Error> {
        let tools = zookeeper_tools(true)?;
        start_cluster_with_retries(|| {
            let dirs = make_temp_dirs("zookeeper", hosts.len())?;
            let servers: Vec<String> = (0..hosts.len())
                .map(|i| format!("server.{}={}:2888:3888", i + 1, hosts[i].ip))
                .collect();
            let base = unique_name();
            let mut members = Vec::with_capacity(hosts.len());
            for (i, dir) in dirs.into_iter().enumerate() {
                let cfg = zoo_cfg(&dir, &hosts[i].ip, 2181, &servers, sync_limit);
                let name = format!("{base}-m{}", i + 1);
                let m = prepare_zookeeper(&tools, dir, name, 2181, &cfg, Some(i + 1))?;
                members.push(place(m, &hosts[i]));
            }
            Ok(members)
        })
    }

    /// A static etcd cluster with one member per host of a [`crate::netns::Net`] (client port
    /// 2379, peer port 2380), each in its host's namespace, with Raft's pre-vote on.
    pub fn etcd_in(hosts: &[Host]) -> Result<Cluster, Error> {
        let etcd = etcd_binary(true)?;
        start_cluster_with_retries(|| {
            let dirs = make_temp_dirs("etcd", hosts.len())?;
            let base = unique_name();
            let names: Vec<String> = (1..=hosts.len()).map(|i| format!("{base}-m{i}")).collect();
            let initial = names
                .iter()
                .zip(hosts)
                .map(|(name, h)| format!("{name}=http://{}:2380", h.ip))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::with_capacity(hosts.len());
            for (i, dir) in dirs.into_iter().enumerate() {
                let mut m = prepare_etcd(
                    &etcd,
                    dir,
                    names[i].clone(),
                    2379,
                    2380,
                    &initial,
                    &base,
                    &hosts[i].ip,
                );
                // A member cut off campaigns at ever higher terms; without pre-vote its return
                // deposes the majority's leader, and no lease can be renewed until the next
                // election ends (docs/RELIABILITY.md, (l)). etcd 3.6 turns it on by default.
                m.launch.argv.push("--pre-vote=true".into());
                members.push(place(m, &hosts[i]));
            }
            Ok(members)
        })
    }

    /// A Consul datacenter of servers, one per host of a [`crate::netns::Net`] (HTTP 8500,
    /// Serf LAN 8301, WAN 8302, server RPC 8300), each in its host's namespace.
    pub fn consul_in(hosts: &[Host]) -> Result<Cluster, Error> {
        consul_agents(hosts, hosts, hosts.len())
    }

    /// Consul client agents (not servers), one per host of a [`crate::netns::Net`], each in
    /// its host's namespace on the same ports as [`Cluster::consul_in`]'s servers, joined to
    /// the servers on `servers`: clients talk to a local agent in real deployments, and a
    /// partition that cuts a client's host cuts its agent too. Ready once every agent's node
    /// is healthy in the servers' catalog.
    pub fn consul_agents_in(agents: &[Host], servers: &[Host]) -> Result<Cluster, Error> {
        consul_agents(agents, servers, 0)
    }

    /// All members' endpoints, `"127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"` (including stopped
    /// members: clients are expected to cope).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Server::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running member is ready (see [`Server::wait_ready`]).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        for m in &mut self.members {
            if m.is_running() {
                m.wait_ready(deadline.saturating_duration_since(Instant::now()))?;
            }
        }
        Ok(())
    }

    /// Stops all members gracefully (ZooKeeper in parallel, etcd one after the other, which
    /// is faster for etcd), each bounded like [`Server::stop`].
    pub fn stop_all(&mut self) {
        stop_all(&mut self.members);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Moves a prepared member into `host`'s namespace: its address, its probes, and its argv
/// behind `ip netns exec` (which execs the server, so the supervisor's pid is the server's).
fn place(mut server: Server, host: &Host) -> Server {
    server.host = host.ip.clone();
    server.netns = Some(host.ns.clone());
    let mut argv = host.exec_prefix();
    argv.append(&mut server.launch.argv);
    server.launch.argv = argv;
    server
}

/// Consul agents on `hosts` joining the serf LAN of `servers` (itself excepted): servers of a
/// datacenter of `expect` servers, or client agents with `expect` 0.
fn consul_agents(hosts: &[Host], servers: &[Host], expect: usize) -> Result<Cluster, Error> {
    let consul = consul_binary(true)?;
    let role = if expect == 0 { "a" } else { "m" };
    start_cluster_with_retries(|| {
        let dirs = make_temp_dirs("consul", hosts.len())?;
        let base = unique_name();
        let mut members = Vec::with_capacity(hosts.len());
        for (i, dir) in dirs.into_iter().enumerate() {
            let member = ConsulMember {
                node: format!("{base}-{role}{}", i + 1),
                http: 8500,
                serf_lan: 8301,
                serf_wan: 8302,
                server: 8300,
                expect,
                host: hosts[i].ip.clone(),
                keep_dead_servers: expect > 0,
            };
            let others: Vec<String> = servers
                .iter()
                .filter(|h| h.ip != hosts[i].ip)
                .map(|h| format!("{}:8301", h.ip))
                .collect();
            let m = prepare_consul_member(&consul, dir, &member, &others)?;
            members.push(place(m, &hosts[i]));
        }
        Ok(members)
    })
}

fn stop_all(members: &mut [Server]) {
    if members.iter().any(|m| m.kind == Kind::Etcd) {
        // etcd members stopped all at once each wait ~5 s for a leadership transfer that
        // cannot happen; one after the other they stop in ~10-70 ms each.
        for m in members.iter_mut() {
            m.stop();
        }
        return;
    }
    for m in members.iter_mut() {
        m.begin_stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    for m in members.iter_mut() {
        m.finish_stop(deadline);
    }
}

/// Whether a failed start looks like a port that someone else took between picking and binding.
fn port_clash(e: &Error) -> bool {
    e.log_tail().is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.contains("address already in use") || t.contains("bindexception")
    })
}

fn start_with_retries(prepare: impl Fn() -> Result<Server, Error>) -> Result<Server, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut server = prepare()?;
        let result = server
            .spawn()
            .and_then(|()| server.wait_ready(util::start_timeout()));
        match result {
            Ok(()) => return Ok(server),
            Err(e) if attempt < START_ATTEMPTS && port_clash(&e) => drop(server),
            Err(e) => return Err(e),
        }
    }
}

fn start_cluster_with_retries(
    prepare: impl Fn() -> Result<Vec<Server>, Error>,
) -> Result<Cluster, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut cluster = Cluster {
            members: prepare()?,
        };
        let result = (|| {
            for m in &mut cluster.members {
                m.spawn()?;
            }
            cluster.wait_ready(util::start_timeout())
        })();
        match result {
            Ok(()) => return Ok(cluster),
            Err(e) if attempt < START_ATTEMPTS && port_clash(&e) => drop(cluster),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper
// ---------------------------------------------------------------------------------------------

/// zoo.cfg for a standalone server (no `servers`) or an ensemble member.
fn zoo_cfg(
    dir: &Path,
    host: &str,
    client_port: u16,
    servers: &[String],
    sync_limit: u32,
) -> String {
    let mut cfg = String::new();
    let _ = writeln!(cfg, "# written by coord-testkit");
    // The session-expiry granularity: sessions die between their timeout and one tick later.
    let tick = util::env_nonempty("COORD_ZK_TICK_MS")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|t| (10..=2000).contains(t))
        .unwrap_or(500);
    let _ = writeln!(cfg, "tickTime={tick}");
    let _ = writeln!(cfg, "initLimit=10");
    // How many ticks a follower may go unheard before the leader gives up its quorum (and a
    // follower its leader); `COORD_ZK_SYNC_LIMIT` overrides (1–20).
    let sync_limit = util::env_nonempty("COORD_ZK_SYNC_LIMIT")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|l| (1..=20).contains(l))
        .unwrap_or(sync_limit);
    let _ = writeln!(cfg, "syncLimit={sync_limit}");
    let _ = writeln!(cfg, "dataDir={}", dir.join("data").display());
    let _ = writeln!(cfg, "clientPort={client_port}");
    let _ = writeln!(cfg, "clientPortAddress={host}");
    let _ = writeln!(cfg, "admin.enableServer=false");
    let _ = writeln!(cfg, "4lw.commands.whitelist=*");
    let _ = writeln!(cfg, "minSessionTimeout=1000");
    let _ = writeln!(cfg, "maxSessionTimeout=60000");
    let _ = writeln!(cfg, "maxClientCnxns=0");
    let _ = writeln!(cfg, "autopurge.purgeInterval=0");
    for s in servers {
        let _ = writeln!(cfg, "{s}");
    }
    cfg
}

/// What starting ZooKeeper needs: `java` and the classpath.
#[derive(Debug)]
struct ZkTools {
    java: PathBuf,
    classpath: String,
}

/// The tools of a server in a container or (also for members in a network namespace) a process.
fn zookeeper_tools(in_netns: bool) -> Result<ZkTools, Error> {
    if container::contained(in_netns) {
        // The image has its own JRE and classpath.
        return Ok(ZkTools {
            java: PathBuf::from("java"),
            classpath: String::new(),
        });
    }
    Ok(ZkTools {
        java: find_java()?,
        classpath: zookeeper_classpath()?,
    })
}

/// Creates `n` member dirs `coord-testkit-<label>-m<i>-...`; removes them all on failure.
fn make_temp_dirs(label: &str, n: usize) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::with_capacity(n);
    for i in 1..=n {
        match make_temp_dir(&format!("{label}-m{i}")) {
            Ok(d) => dirs.push(d),
            Err(e) => {
                for d in &dirs {
                    let _ = fs::remove_dir_all(d);
                }
                return Err(e);
            }
        }
    }
    Ok(dirs)
}

/// `java`: `COORD_JAVA`, else `$JAVA_HOME/bin/java`, else `PATH`.
pub(crate) fn find_java() -> Result<PathBuf, Error> {
    if let Some(p) = util::env_nonempty("COORD_JAVA") {
        let p = PathBuf::from(p);
        return if util::is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::not_installed(format!(
                "COORD_JAVA={} is not an executable file",
                p.display()
            )))
        };
    }
    if let Some(home) = util::env_nonempty("JAVA_HOME") {
        let p = Path::new(&home).join("bin/java");
        if util::is_executable(&p) {
            return Ok(p);
        }
    }
    util::which("java").ok_or_else(|| {
        Error::not_installed(
            "java not found (COORD_JAVA, JAVA_HOME, PATH); run scripts/install-backends.sh",
        )
    })
}

/// The ZooKeeper classpath after the conf dir: `COORD_ZK_CLASSPATH`, else Debian's
/// `/usr/share/java/zookeeper.jar` (whose manifest `Class-Path` lists its dependencies) plus
/// `slf4j-simple.jar` so the server's log reaches the log file.
fn zookeeper_classpath() -> Result<String, Error> {
    if let Some(cp) = util::env_nonempty("COORD_ZK_CLASSPATH") {
        return Ok(cp);
    }
    let jar = Path::new("/usr/share/java/zookeeper.jar");
    if !jar.is_file() {
        return Err(Error::not_installed(format!(
            "{} not found (Debian package `zookeeper`; set COORD_ZK_CLASSPATH to override); \
             run scripts/install-backends.sh",
            jar.display()
        )));
    }
    let mut cp = jar.display().to_string();
    let slf4j = Path::new("/usr/share/java/slf4j-simple.jar");
    if slf4j.is_file() {
        cp.push(':');
        cp.push_str(&slf4j.display().to_string());
    }
    Ok(cp)
}

/// Writes the configuration (and `myid` for ensemble members) and builds the launch.
fn prepare_zookeeper(
    tools: &ZkTools,
    dir: PathBuf,
    name: String,
    port: u16,
    cfg: &str,
    myid: Option<usize>,
) -> Result<Server, Error> {
    let result = write_zookeeper_conf(&dir, cfg, myid);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    let conf = dir.join("conf");
    let main = if myid.is_some() {
        "org.apache.zookeeper.server.quorum.QuorumPeerMain"
    } else {
        "org.apache.zookeeper.server.ZooKeeperServerMain"
    };
    let mut argv: Vec<OsString> = vec![tools.java.clone().into()];
    argv.extend(JVM_OPTS.iter().map(OsString::from));
    argv.push(format!("-Djava.io.tmpdir={}", dir.display()).into());
    argv.push("-cp".into());
    argv.push(format!("{}:{}", conf.display(), tools.classpath).into());
    argv.push(main.into());
    argv.push(conf.join("zoo.cfg").into());
    Ok(Server {
        kind: Kind::ZooKeeper,
        name,
        log: dir.join("server.log"),
        dir,
        port,
        launch: Launch {
            argv,
            env: Vec::new(),
            env_remove_prefixes: vec!["JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"],
        },
        consul_node: None,
        consul_voter: false,
        proc: None,
        host: "127.0.0.1".into(),
        netns: None,
    })
}

fn write_zookeeper_conf(dir: &Path, cfg: &str, myid: Option<usize>) -> Result<(), Error> {
    let conf = dir.join("conf");
    let data = dir.join("data");
    let io =
        |what: &str, e: std::io::Error| Error::new(format!("{what} in {}: {e}", dir.display()));
    fs::create_dir_all(&conf).map_err(|e| io("create conf/", e))?;
    fs::create_dir_all(&data).map_err(|e| io("create data/", e))?;
    fs::write(conf.join("zoo.cfg"), cfg).map_err(|e| io("write zoo.cfg", e))?;
    if let Some(id) = myid {
        fs::write(data.join("myid"), format!("{id}\n")).map_err(|e| io("write myid", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

fn etcd_binary(in_netns: bool) -> Result<PathBuf, Error> {
    if container::contained(in_netns) {
        return Ok(PathBuf::from("etcd")); // the image's
    }
    util::find_binary("etcd", "COORD_ETCD_BIN", "etcd/usr/bin/etcd")
}

#[allow(clippy::too_many_arguments)] // all of them are the member's identity
fn prepare_etcd(
    etcd: &Path,
    dir: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
    token: &str,
    host: &str,
) -> Server {
    let client = format!("http://{host}:{client_port}");
    let peer = format!("http://{host}:{peer_port}");
    let args: Vec<OsString> = vec![
        etcd.into(),
        "--name".into(),
        name.clone().into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--listen-client-urls".into(),
        client.clone().into(),
        "--advertise-client-urls".into(),
        client.into(),
        "--listen-peer-urls".into(),
        peer.clone().into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        initial_cluster.into(),
        "--initial-cluster-token".into(),
        token.into(),
        "--initial-cluster-state".into(),
        "new".into(),
        "--heartbeat-interval".into(),
        "50".into(),
        "--election-timeout".into(),
        "500".into(),
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        "stderr".into(),
    ];
    Server {
        kind: Kind::Etcd,
        name,
        log: dir.join("server.log"),
        dir,
        port: client_port,
        launch: Launch {
            argv: args,
            env: Vec::new(),
            env_remove_prefixes: vec!["ETCD_", "ETCDCTL_"],
        },
        consul_node: None,
        consul_voter: false,
        proc: None,
        host: "127.0.0.1".into(),
        netns: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Consul
// ---------------------------------------------------------------------------------------------

fn consul_binary(in_netns: bool) -> Result<PathBuf, Error> {
    if container::contained(in_netns) {
        return Ok(PathBuf::from("consul")); // the image's
    }
    util::find_binary("consul", "COORD_CONSUL_BIN", "consul/usr/bin/consul")
}

fn prepare_consul(consul: &Path) -> Result<Server, Error> {
    let ports = free_ports(5)?;
    let dir = make_temp_dir("consul")?;
    let (http, serf_lan, serf_wan, server) = (ports[0], ports[1], ports[2], ports[3]);
    // DNS on a free port, for the tests of what Consul DNS serves (`/v1/agent/self` names it).
    let dns = ports[4];
    let node = unique_name();
    let config = dir.join("consul.json");
    if let Err(e) = fs::write(
        &config,
        // Consul's default limits (`http_max_conns_per_client` = 200): coord-consul bounds its
        // connections itself (`max_connections`).
        "{\n  \"disable_update_check\": true,\n  \"log_level\": \"info\",\n  \"ports\": { \"https\": -1 }\n}\n",
    ) {
        let _ = fs::remove_dir_all(&dir);
        return Err(Error::new(format!("write {}: {e}", config.display())));
    }
    let s = |v: u16| OsString::from(v.to_string());
    let argv: Vec<OsString> = vec![
        consul.into(),
        "agent".into(),
        "-dev".into(),
        "-node".into(),
        node.clone().into(),
        "-client".into(),
        "127.0.0.1".into(),
        "-bind".into(),
        "127.0.0.1".into(),
        "-advertise".into(),
        "127.0.0.1".into(),
        "-http-port".into(),
        s(http),
        "-dns-port".into(),
        s(dns),
        "-grpc-port".into(),
        "-1".into(),
        "-serf-lan-port".into(),
        s(serf_lan),
        "-serf-wan-port".into(),
        s(serf_wan),
        "-server-port".into(),
        s(server),
        "-config-file".into(),
        config.into(),
    ];
    Ok(Server {
        kind: Kind::Consul,
        name: node.clone(),
        log: dir.join("server.log"),
        dir,
        port: http,
        launch: Launch {
            argv,
            env: Vec::new(),
            env_remove_prefixes: vec!["CONSUL_"],
        },
        consul_node: Some(node),
        consul_voter: false,
        proc: None,
        host: "127.0.0.1".into(),
        netns: None,
    })
}

/// The ports and name of one server of [`Cluster::consul`].
struct ConsulMember {
    node: String,
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
    /// `-bootstrap-expect`: the number of servers; 0 makes a client agent (no `-server`).
    expect: usize,
    /// The address it binds and advertises.
    host: String,
    /// Autopilot keeps servers that serf marks failed as voters: a partitioned server that
    /// comes back is not a non-voter for the stabilization time (10 s), so the next cut of
    /// another server leaves the majority side its quorum.
    keep_dead_servers: bool,
}

/// A server of a Consul datacenter (not `-dev`): configuration file, data dir and launch.
fn prepare_consul_member(
    consul: &Path,
    dir: PathBuf,
    m: &ConsulMember,
    join_serf_lan: &[String],
) -> Result<Server, Error> {
    let (config, data) = match write_consul_member_config(&dir, m) {
        Ok(paths) => paths,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(Error::new(e));
        }
    };
    let mut argv = consul_member_argv(consul, m, data, join_serf_lan);
    argv.push("-config-file".into());
    argv.push(config.into());
    Ok(Server {
        kind: Kind::Consul,
        name: m.node.clone(),
        log: dir.join("server.log"),
        dir,
        port: m.http,
        launch: Launch {
            argv,
            env: Vec::new(),
            env_remove_prefixes: vec!["CONSUL_"],
        },
        consul_node: Some(m.node.clone()),
        consul_voter: m.expect > 0,
        proc: None,
        host: "127.0.0.1".into(),
        netns: None,
    })
}

/// Writes a Consul member's configuration file and makes its data dir; their paths.
fn write_consul_member_config(dir: &Path, m: &ConsulMember) -> Result<(PathBuf, PathBuf), String> {
    let config = dir.join("consul.json");
    let data = dir.join("data");
    fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    fs::write(
        &config,
        // As the dev agent's (see `prepare_consul`), plus the shortest Raft timings.
        format!(
            "{{\n  \"disable_update_check\": true,\n  \"log_level\": \"info\",\n  \"ports\": {{ \"https\": -1 }},\n  \"performance\": {{ \"raft_multiplier\": 1 }}{}\n}}\n",
            if m.keep_dead_servers {
                ",\n  \"autopilot\": { \"cleanup_dead_servers\": false }"
            } else {
                ""
            }
        ),
    )
    .map_err(|e| format!("write {}: {e}", config.display()))?;
    Ok((config, data))
}

/// A Consul member's command line, less its `-config-file`.
fn consul_member_argv(
    consul: &Path,
    m: &ConsulMember,
    data: PathBuf,
    join_serf_lan: &[String],
) -> Vec<OsString> {
    let s = |v: u16| OsString::from(v.to_string());
    let mut argv: Vec<OsString> = vec![consul.into(), "agent".into()];
    if m.expect > 0 {
        argv.extend([
            "-server".into(),
            "-bootstrap-expect".into(),
            m.expect.to_string().into(),
        ]);
    }
    argv.extend([
        "-node".into(),
        m.node.clone().into(),
        "-data-dir".into(),
        data.into(),
        "-client".into(),
        m.host.clone().into(),
        "-bind".into(),
        m.host.clone().into(),
        "-advertise".into(),
        m.host.clone().into(),
        "-http-port".into(),
        s(m.http),
        "-dns-port".into(),
        "-1".into(),
        "-grpc-port".into(),
        "-1".into(),
        "-serf-lan-port".into(),
        s(m.serf_lan),
        "-serf-wan-port".into(),
        s(m.serf_wan),
        "-server-port".into(),
        s(m.server),
        "-retry-interval".into(),
        "1s".into(),
    ]);
    for addr in join_serf_lan {
        argv.push("-retry-join".into());
        argv.push(addr.into());
    }
    argv
}
