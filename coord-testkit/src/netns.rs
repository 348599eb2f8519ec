//! Real network partitions with Linux network namespaces (issue 20).
//!
//! A [`Net`] is a private little network that exists only inside namespaces this process made:
//!
//! ```text
//!  switch namespace  <prefix>-sw
//!    br0 (cluster net 10.213.0.0/24)   br1 (service net 10.213.1.1/24, the test's own address)
//!     │ c<i> (veth)                      │ s<i> (veth)
//!  host namespace <prefix>-h<i>: eth0 10.213.0.<10+i>, eth1 10.213.1.<10+i>, lo up
//! ```
//!
//! Cluster members and clients talk over the *cluster net*. [`Net::isolate`] splits it: the
//! given hosts' switch-side cluster links move from `br0` to a bridge of their own (a *side*),
//! so they still reach each other (a client stays connected to its member that lost the
//! quorum, as in a real split) and nothing on `br0` or on another side. [`Net::heal`] moves them
//! back. The *service net* is never cut: a test resource bound with
//! [`Net::bind_service`] (e.g. the fenced resource) stays reachable from every host, so a
//! partitioned old leader can still try its stale writes. No address outside loopback and
//! these namespaces is used.
//!
//! Every host caps TCP's retransmission back-off at 1 s (`net.ipv4.tcp_rto_max_ms`, where the
//! kernel has it), as a coordination cluster's hosts should (docs/RELIABILITY.md, (o));
//! `COORD_NETNS_TCP_RTO_MAX_MS=default` keeps the kernel's.
//!
//! Clean-up: every namespace name starts with `ctk<pid>-`; [`Drop`] deletes them (links go with
//! them), also while a panic unwinds, and [`Net::new`] first sweeps namespaces left by
//! processes that no longer exist (a test killed with `SIGKILL`). Processes started in a host
//! namespace belong to their owners (servers to [`crate::Server`]'s supervisor, which stops
//! them when the test process goes away); drop them before the `Net`.

use std::ffi::OsString;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// The `ip` binary (iproute2).
fn ip_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else if std::path::Path::new("/sbin/ip").exists() {
        "/sbin/ip"
    } else {
        "ip"
    }
}

const PREFIX: &str = "ctk";
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `ip args…`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new(ip_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::not_installed(format!("cannot run {}: {e}", ip_bin())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The cap on TCP's retransmission back-off on every host, in ms (`net.ipv4.tcp_rto_max_ms`,
/// Linux 6.15 and later, per namespace; the kernel's default is 120 s). A connection that
/// lived through a cut resends only on its back-off after the heal: with the default, a
/// ZooKeeper member's election connections got through up to 4.5 s after the heal of a 10 s
/// cut (docs/RELIABILITY.md, (o)). `COORD_NETNS_TCP_RTO_MAX_MS` sets another value;
/// `default` keeps the kernel's.
const TCP_RTO_MAX_MS: &str = "1000";

/// Applies [`TCP_RTO_MAX_MS`] in `ns`. Where the kernel has no such setting the hosts keep
/// the default back-off, said once on stderr.
fn cap_tcp_backoff(ns: &str) {
    static MISSING: std::sync::Once = std::sync::Once::new();
    let ms = std::env::var("COORD_NETNS_TCP_RTO_MAX_MS").unwrap_or_else(|_| TCP_RTO_MAX_MS.into());
    if ms == "default" {
        return;
    }
    let write = format!("echo {ms} > /proc/sys/net/ipv4/tcp_rto_max_ms");
    if ip(&["netns", "exec", ns, "sh", "-c", &write]).is_err() {
        MISSING.call_once(|| {
            eprintln!(
                "coord-testkit netns: cannot set net.ipv4.tcp_rto_max_ms={ms} (kernel before \
                 6.15?): TCP keeps its default back-off, servers rejoin later after long cuts"
            )
        });
    }
}

/// Deletes namespaces named `ctk<pid>-…` whose process is gone (left by a killed test run).
fn sweep_stale() {
    let Ok(out) = Command::new(ip_bin()).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns` (by name, as
/// `ip netns` mounts it under `/var/run/netns`). Sockets that `f` creates belong to that
/// namespace for their whole life, whichever thread uses them later.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| Error::new(format!("open {path}: {e}")))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd changes only this (fresh, short-lived) thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(Error::new(format!(
                "setns({path}): {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| Error::new("the thread in the namespace panicked"))?
}

/// One host of a [`Net`]: a namespace with an address on each net.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// Its address on the cluster net (split by [`Net::isolate`]).
    pub ip: String,
    /// Its address on the service net (never cut).
    pub service_ip: String,
    /// The switch-side name of its cluster link.
    link: String,
}

impl Host {
    /// The argv prefix that runs a program in this host's namespace:
    /// `ip netns exec <ns>` (the program then replaces `ip`, keeping its pid).
    pub fn exec_prefix(&self) -> Vec<OsString> {
        vec![
            ip_bin().into(),
            "netns".into(),
            "exec".into(),
            self.ns.clone().into(),
        ]
    }
}

/// A private network of `n` host namespaces on a switch namespace; see the module docs.
#[derive(Debug)]
pub struct Net {
    switch: String,
    hosts: Vec<Host>,
    /// Per host, the side bridge it is on (`None`: on `br0`).
    side: Vec<Option<String>>,
    /// Side bridges made so far (names are never reused).
    sides_made: u64,
}

/// The test's own address on the service net (in the switch namespace).
pub const SERVICE_IP: &str = "10.213.1.1";

impl Net {
    /// Creates the switch and `n` hosts (at most 200). Fails if namespaces cannot be made
    /// (not root, no `ip`, a kernel without netns).
    pub fn new(n: usize) -> Result<Net, Error> {
        if n > 200 {
            return Err(Error::new("at most 200 hosts"));
        }
        sweep_stale();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{base}-sw");
        // From here on, Drop removes whatever was made.
        let mut net = Net {
            switch: switch.clone(),
            hosts: Vec::new(),
            side: vec![None; n],
            sides_made: 0,
        };
        ip(&["netns", "add", &switch])?;
        net.sw(&["link", "set", "lo", "up"])?;
        for br in ["br0", "br1"] {
            net.sw(&["link", "add", br, "type", "bridge", "stp_state", "0"])?;
            net.sw(&["link", "set", br, "up"])?;
        }
        net.sw(&["addr", "add", &format!("{SERVICE_IP}/24"), "dev", "br1"])?;
        for i in 0..n {
            let ns = format!("{base}-h{i}");
            ip(&["netns", "add", &ns])?;
            let host = Host {
                ns: ns.clone(),
                ip: format!("10.213.0.{}", 10 + i),
                service_ip: format!("10.213.1.{}", 10 + i),
                link: format!("c{i}"),
            };
            net.hosts.push(host.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            cap_tcp_backoff(&ns);
            for (sw_name, br, dev, addr) in [
                (host.link.clone(), "br0", "eth0", &host.ip),
                (format!("s{i}"), "br1", "eth1", &host.service_ip),
            ] {
                net.sw(&[
                    "link", "add", &sw_name, "type", "veth", "peer", "name", dev, "netns", &ns,
                ])?;
                net.sw(&["link", "set", &sw_name, "master", br])?;
                net.sw(&["link", "set", &sw_name, "up"])?;
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", &ns, "link", "set", dev, "up"])?;
            }
        }
        Ok(net)
    }

    /// Whether this machine can make namespaces: `Ok` or why not (creates and deletes one).
    pub fn available() -> Result<(), Error> {
        Net::new(0).map(drop)
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The switch namespace's name.
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Cuts hosts `which` off the rest of the cluster net as one side: they keep reaching each
    /// other, and nothing else (hosts already on another side leave it). Frames to the rest
    /// are not delivered; connections across the cut see silence, new ones fail once the
    /// neighbour lookup does. The service net stays up.
    pub fn isolate(&mut self, which: &[usize]) -> Result<(), Error> {
        if which.is_empty() {
            return Ok(());
        }
        let br = format!("side{}", self.sides_made);
        self.sides_made += 1;
        self.sw(&["link", "add", &br, "type", "bridge", "stp_state", "0"])?;
        self.sw(&["link", "set", &br, "up"])?;
        for &i in which {
            let link = self.hosts[i].link.clone();
            self.sw(&["link", "set", &link, "master", &br])?;
            let old = self.side[i].replace(br.clone());
            self.drop_if_empty(old)?;
        }
        Ok(())
    }

    /// Joins hosts `which` to the cluster net (`br0`) again.
    pub fn heal(&mut self, which: &[usize]) -> Result<(), Error> {
        for &i in which {
            let link = self.hosts[i].link.clone();
            self.sw(&["link", "set", &link, "master", "br0"])?;
            let old = self.side[i].take();
            self.drop_if_empty(old)?;
        }
        Ok(())
    }

    /// Heals every isolated host.
    pub fn heal_all(&mut self) -> Result<(), Error> {
        self.heal(&self.isolated())
    }

    /// Which hosts are cut off now.
    pub fn isolated(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.side[i].is_some())
            .collect()
    }

    /// Deletes a side bridge that no host is on any more.
    fn drop_if_empty(&self, br: Option<String>) -> Result<(), Error> {
        match br {
            Some(br) if !self.side.iter().any(|s| s.as_ref() == Some(&br)) => {
                self.sw(&["link", "del", &br])
            }
            _ => Ok(()),
        }
    }

    /// Runs `ip -n <switch> args…`.
    fn sw(&self, args: &[&str]) -> Result<(), Error> {
        let mut v = vec!["-n", self.switch.as_str()];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// A TCP listener on the service net (`10.213.1.1:port`, 0 for any), in the switch
    /// namespace: every host reaches it, partitioned or not.
    pub fn bind_service(&self, port: u16) -> Result<TcpListener, Error> {
        run_in(&self.switch, move || TcpListener::bind((SERVICE_IP, port)))?
            .map_err(|e| Error::new(format!("bind {SERVICE_IP}:{port}: {e}")))
    }

    /// A command that runs `program` in host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl Into<OsString>) -> Command {
        let p = self.hosts[i].exec_prefix();
        let mut c = Command::new(&p[0]);
        c.args(&p[1..]).arg(program.into());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links; a bridge's peers go with their veths.
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
