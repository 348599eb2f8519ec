//! Mixed fleets on Consul: coord candidates in the dialect [`Dialect::ConsulLock`] and
//! `consul lock` processes (Consul's own Go `api.Lock`) on one lock key. The lock changes hands
//! 20+ times (clean releases, crashes of coord and of `consul lock` holders, new members
//! joining); every holder writes its token to the fenced resource and the history checker must
//! find no overlap of live holders and no stale write. Both sides see the same holder: the
//! key's `Session` (read with `consul kv get -detailed`) is coord's session when coord holds
//! it, and coord's `participants()` / `observe()` name the `consul lock` holder's index.
//!
//! The one crash of a `consul lock` holder is followed by the destruction of its session (what
//! Consul does after its 15 s TTL, sooner): Consul then refuses every acquire for the session's
//! 15 s lock-delay, which coord's candidates must wait out (retry), not fail on.
//!
//! The same for [`Dialect::ConsulElection`] against candidates of Consul's leader-election
//! guide (`tests/fleet/consul_election_peer.py`: the guide's HTTP steps, Python's standard
//! library only; there is no Consul CLI for it), on the key itself with flags 0.

mod fleet;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use coord::consul::{ConsulBackend, ConsulSession};
use coord::recipes::dialect::{Dialect, DialectDriver};
use coord::{Backend, Path};
use coord_testkit::harness::unique_suffix;
use coord_testkit::{tools_dir, Kind};
use fleet::{
    assert_clean, command, finish, holder_index, observe_tokens, wait_observed, CoordMember,
    History, Member, PeerProc,
};

struct Fleet {
    dialect: Dialect,
    endpoint: String,
    url: String,
    name: Path,
    prefix: String,
    driver: Arc<dyn DialectDriver>,
    history: Arc<History>,
    members: Vec<Member>,
    joined: usize,
    peer_crashed: bool,
}

/// The key's metadata as `consul kv get -detailed` prints it (`Field   value` lines).
fn detailed(endpoint: &str, key: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let out = std::process::Command::new(tools_dir().join("bin/consul"))
        .args([
            "kv",
            "get",
            "-detailed",
            &format!("-http-addr={endpoint}"),
            key,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_owned(), it.next().unwrap_or("").to_owned()))
            })
            .collect(),
    )
}

/// `PUT /v1/session/destroy/<id>` on the agent (plain HTTP on loopback).
fn destroy_session(endpoint: &str, id: &str) {
    let mut s = TcpStream::connect(endpoint).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "PUT /v1/session/destroy/{id} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains(" 200 "), "session destroy: {answer}");
}

impl Fleet {
    fn key(&self) -> String {
        match self.dialect {
            Dialect::ConsulLock => format!("{}/.lock", self.prefix),
            _ => self.prefix.clone(),
        }
    }

    async fn join_coord(&mut self) {
        self.joined += 1;
        let id = format!("coord-{}", self.joined);
        let m = CoordMember::join(&self.url, self.dialect, &id, &self.name, &self.history).await;
        self.members.push(Member::Coord(m));
    }

    fn join_peer(&mut self) {
        self.joined += 1;
        let p = if self.dialect == Dialect::ConsulLock {
            let id = format!("consul-lock-{}", self.joined);
            let mut cmd = command(&tools_dir().join("bin/consul"));
            cmd.arg("lock")
                .arg(format!("-http-addr={}", self.endpoint))
                .arg(&self.prefix)
                .arg("echo HELD; exec sleep 600");
            PeerProc::spawn(&id, cmd, |line| line == "HELD")
        } else {
            let id = format!("guide-{}", self.joined);
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fleet/consul_election_peer.py"
            );
            let mut cmd = command(std::path::Path::new("/usr/bin/python3"));
            cmd.arg(script)
                .arg(&self.endpoint)
                .arg(self.key())
                .arg(&id)
                .arg("10s")
                .arg("1s");
            PeerProc::spawn(&id, cmd, |line| line.starts_with("HELD "))
        };
        self.members.push(Member::Peer(p));
    }

    /// The member holding the lock now (waits for one), with its token.
    async fn holder(&mut self) -> (usize, u64) {
        let idx = holder_index(&self.members).await;
        let key = self.key();
        let token = match &mut self.members[idx] {
            Member::Coord(c) => c.token().expect("holding"),
            Member::Peer(p) => match p.token {
                Some(t) => t,
                None => {
                    let (t_us, _) = p.seen().expect("seen");
                    let d = detailed(&self.endpoint, &key).expect("the lock key");
                    let token: u64 = d["ModifyIndex"].parse().expect("ModifyIndex");
                    self.history.granted(&p.id, t_us, token);
                    p.token = Some(token);
                    token
                }
            },
        };
        (idx, token)
    }

    async fn hand_over(&mut self, idx: usize, token: u64, crash: bool) {
        match self.members.remove(idx) {
            Member::Coord(c) => {
                if crash {
                    c.crash(&self.history, token, |s| {
                        let s = s.as_any().downcast_ref::<ConsulSession>();
                        s.expect("a Consul session").crash();
                    });
                } else {
                    c.resign().await;
                }
                self.join_coord().await;
            }
            Member::Peer(mut p) => {
                if crash {
                    let d = detailed(&self.endpoint, &self.key()).expect("the lock key");
                    self.history.fault(&p.id, "sigkill");
                    p.kill();
                    self.history.lost(&p.id, token);
                    destroy_session(&self.endpoint, &d["Session"]);
                    self.peer_crashed = true;
                } else {
                    self.history.releasing(&p.id, token);
                    p.terminate(Duration::from_secs(20));
                }
                self.join_peer();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_dialect_with_consul_lock() {
    mixed_fleet(Dialect::ConsulLock).await;
}

/// The leader-election guide's peer is a Python script following the guide over the HTTP
/// API (`tests/fleet/consul_election_peer.py`, standard library only), with a 1 s lock-delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_election_dialect_with_guide_peers() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        assert!(
            !coord_testkit::require_backends(),
            "/usr/bin/python3 is required (COORD_REQUIRE_BACKENDS=1)"
        );
        eprintln!("SKIPPED: /usr/bin/python3 not available (the leader-election guide's peer)");
        return;
    }
    mixed_fleet(Dialect::ConsulElection).await;
}

async fn mixed_fleet(dialect: Dialect) {
    let Some(eps) = coord_testkit::harness::endpoints(Kind::Consul).await else {
        return;
    };
    let endpoint = eps
        .split(',')
        .next()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .to_owned();
    let prefix = match dialect {
        Dialect::ConsulLock => format!("mixed-lock-{}", unique_suffix()),
        _ => format!("mixed-elect-{}/leader", unique_suffix()),
    };
    let url = format!("consul://{endpoint}");
    let admin = ConsulBackend::connect(&url).await.expect("connect");
    let driver = admin
        .dialect_driver(dialect)
        .expect("Consul serves the dialect");
    let mut fleet = Fleet {
        dialect,
        endpoint,
        url,
        name: Path::new(format!("/{prefix}")).expect("path"),
        prefix,
        driver: driver.clone(),
        history: History::new(if dialect == Dialect::ConsulLock {
            "lock"
        } else {
            "election"
        }),
        members: Vec::new(),
        joined: 0,
        peer_crashed: false,
    };
    let (observed, observing) = observe_tokens(&driver, &fleet.name).await;
    fleet.join_coord().await;
    fleet.join_peer();
    fleet.join_coord().await;
    fleet.join_peer();
    let changes = 20;
    let (mut coord_led, mut peer_led) = (0, 0);
    for change in 0..changes {
        let (idx, token) = fleet.holder().await;
        let peer_holds = matches!(fleet.members[idx], Member::Peer(_));
        // Consul's view: the key's Session is the holder's.
        let d = detailed(&fleet.endpoint, &fleet.key()).expect("the lock key");
        let flags = if dialect == Dialect::ConsulLock {
            "3304740253564472344"
        } else {
            "0"
        };
        assert_eq!(d["Flags"], flags, "the dialect's flags");
        match &fleet.members[idx] {
            Member::Coord(c) => {
                coord_led += 1;
                assert_eq!(
                    d["Session"],
                    c.session.id().0,
                    "the key's Session is coord's"
                );
            }
            Member::Peer(_) => {
                peer_led += 1;
                let coord_sessions: Vec<String> = fleet
                    .members
                    .iter()
                    .filter_map(|m| match m {
                        Member::Coord(c) => Some(c.session.id().0.clone()),
                        Member::Peer(_) => None,
                    })
                    .collect();
                assert!(!coord_sessions.contains(&d["Session"]), "a coord session");
            }
        }
        // coord's view names the holder's token, whoever it is.
        let now = fleet
            .driver
            .participants(&fleet.name)
            .await
            .expect("participants");
        assert_eq!(now.first().map(|l| l.token), Some(token), "participants");
        wait_observed(&observed, token).await;
        // Coord holders crash every fourth change; one `consul lock` holder crashes once.
        let crash = change % 4 == 2 && (!peer_holds || !fleet.peer_crashed);
        fleet.hand_over(idx, token, crash).await;
    }
    observing.abort();
    let (idx, token) = fleet.holder().await;
    let limit = Duration::from_secs(20);
    finish(&mut fleet.members, idx, token, &fleet.history, limit).await;
    eprintln!(
        "{dialect}: {changes} handovers, {coord_led} held by coord, {peer_led} by the peers \
         (one peer holder crashed: {})",
        fleet.peer_crashed
    );
    assert!(coord_led > 0 && peer_led > 0);
    assert_clean(&fleet.history, changes);
}
