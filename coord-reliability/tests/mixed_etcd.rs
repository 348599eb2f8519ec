//! Mixed fleets on etcd: coord candidates in the dialect [`Dialect::EtcdConcurrency`] and
//! `etcdctl elect` / `etcdctl lock` processes (etcd's own Go `concurrency` package) in one
//! election or lock. The role changes hands 20+ times (clean resigns, crashes of coord and of
//! etcdctl leaders, new members joining); every holder writes its token to the fenced
//! resource and the history checker must find no overlap of live holders and no stale write.
//! Both sides see the same leader: `etcdctl elect -l` names coord's leader, coord's
//! `participants()` / `observe()` name etcdctl's.

mod fleet;

use std::sync::Arc;
use std::time::Duration;

use coord::etcd::{EtcdBackend, EtcdSession};
use coord::recipes::dialect::{Dialect, DialectDriver};
use coord::{Backend, Path};
use coord_testkit::harness::unique_suffix;
use coord_testkit::{tools_dir, Kind};
use fleet::{
    assert_clean, command, finish, holder_index, lock, observe_tokens, wait_observed, wait_until,
    CoordMember, History, Member, PeerProc,
};

/// How the etcdctl peers take part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// `etcdctl elect NAME VALUE` (lease TTL 60 s: its crash is followed by a revoke of its
    /// lease, what etcd does at the TTL, so that the test takes seconds).
    Elect,
    /// `etcdctl lock --ttl=2 NAME`.
    Lock,
}

struct Fleet {
    endpoint: String,
    url: String,
    name: Path,
    raw: String,
    peer: Peer,
    admin: EtcdBackend,
    driver: Arc<dyn DialectDriver>,
    history: Arc<History>,
    members: Vec<Member>,
    joined: usize,
}

impl Fleet {
    fn etcdctl(&self, args: &[&str]) -> std::process::Command {
        let mut c = command(&tools_dir().join("bin/etcdctl"));
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args);
        c
    }

    async fn join_coord(&mut self) {
        self.joined += 1;
        let id = format!("coord-{}", self.joined);
        let (url, name) = (&self.url, &self.name);
        let m = CoordMember::join(url, Dialect::EtcdConcurrency, &id, name, &self.history).await;
        self.members.push(Member::Coord(m));
    }

    fn join_peer(&mut self) {
        self.joined += 1;
        let id = format!("etcdctl-{}", self.joined);
        let cmd = match self.peer {
            Peer::Elect => self.etcdctl(&["elect", &self.raw, &id]),
            Peer::Lock => self.etcdctl(&["lock", "--ttl=2", &self.raw]),
        };
        let prefix = format!("{}/", self.raw);
        let p = PeerProc::spawn(&id, cmd, move |line| line.starts_with(&prefix));
        self.members.push(Member::Peer(p));
    }

    /// The member holding the role now (waits for one), with its token and key.
    async fn holder(&mut self) -> (usize, u64) {
        let idx = holder_index(&self.members).await;
        let token = match &mut self.members[idx] {
            Member::Coord(c) => c.token().expect("holding"),
            Member::Peer(p) => match p.token {
                Some(t) => t,
                None => {
                    let (t_us, key) = p.seen().expect("seen");
                    let mut kv = self.admin.etcd_client().kv_client();
                    let resp = kv
                        .get(key.as_str(), None)
                        .await
                        .expect("read the peer's key");
                    let token = resp
                        .kvs()
                        .first()
                        .map(|kv| kv.create_revision())
                        .unwrap_or(0);
                    assert!(token > 0, "the peer's key {key} is gone");
                    let token = token as u64;
                    self.history.granted(&p.id, t_us, token);
                    p.token = Some(token);
                    token
                }
            },
        };
        (idx, token)
    }

    /// Hands the role over: `crash` or a clean resign of the holder `idx`; a member of the
    /// same kind joins in its place.
    async fn hand_over(&mut self, idx: usize, token: u64, crash: bool) {
        let m = self.members.remove(idx);
        match m {
            Member::Coord(c) => {
                if crash {
                    c.crash(&self.history, token, |s| {
                        let s = s.as_any().downcast_ref::<EtcdSession>();
                        s.expect("an etcd session").crash();
                    });
                } else {
                    c.resign().await;
                }
                self.join_coord().await;
            }
            Member::Peer(mut p) => {
                if crash {
                    self.history.fault(&p.id, "sigkill");
                    p.kill();
                    self.history.lost(&p.id, token);
                    if self.peer == Peer::Elect {
                        let (_, key) = p.seen().expect("seen");
                        let hex = key.rsplit('/').next().unwrap_or_default();
                        let lease = i64::from_str_radix(hex, 16).expect("lease id in the key");
                        let mut lc = self.admin.etcd_client().lease_client();
                        lc.revoke(lease)
                            .await
                            .expect("revoke the killed peer's lease");
                    }
                } else {
                    self.history.releasing(&p.id, token);
                    p.terminate(Duration::from_secs(10));
                }
                self.join_peer();
            }
        }
    }
}

async fn mixed_fleet(peer: Peer, changes: usize) {
    let Some(eps) = coord_testkit::harness::endpoints(Kind::Etcd).await else {
        return;
    };
    let endpoint = eps.split(',').next().unwrap_or_default().to_owned();
    let tag = if peer == Peer::Elect { "elect" } else { "lock" };
    let raw = format!("mixed-{tag}-{}", unique_suffix());
    let url = format!("etcd://{eps}");
    let admin = EtcdBackend::connect(&url).await.expect("connect");
    let driver = admin
        .dialect_driver(Dialect::EtcdConcurrency)
        .expect("etcd serves the concurrency dialect");
    let role = if peer == Peer::Elect {
        "election"
    } else {
        "lock"
    };
    let mut fleet = Fleet {
        endpoint,
        url,
        name: Path::new(format!("/{raw}")).expect("path"),
        raw: raw.clone(),
        peer,
        admin,
        driver: driver.clone(),
        history: History::new(role),
        members: Vec::new(),
        joined: 0,
    };
    // etcd's own observer, and coord's.
    let observer = (peer == Peer::Elect).then(|| {
        let prefix = format!("{raw}/");
        PeerProc::spawn(
            "observer",
            fleet.etcdctl(&["elect", "-l", &raw]),
            move |l| l.starts_with(&prefix),
        )
    });
    let (observed, observing) = observe_tokens(&driver, &fleet.name).await;
    fleet.join_coord().await;
    fleet.join_peer();
    fleet.join_coord().await;
    fleet.join_peer();
    let (mut coord_led, mut peer_led) = (0, 0);
    for change in 0..changes {
        let (idx, token) = fleet.holder().await;
        let is_peer = matches!(fleet.members[idx], Member::Peer(_));
        if is_peer {
            peer_led += 1;
        } else {
            coord_led += 1;
        }
        // coord's view names the holder, whoever it is.
        let first = fleet
            .driver
            .participants(&fleet.name)
            .await
            .expect("participants");
        assert_eq!(first.first().map(|l| l.token), Some(token), "participants");
        wait_observed(&observed, token).await;
        // etcd's view names the holder, whoever it is.
        if let Some(obs) = &observer {
            let node = first[0].node.name().to_owned();
            let key = format!("{raw}/{node}");
            wait_until(
                "etcdctl elect -l to name the holder",
                Duration::from_secs(10),
                || {
                    let lines = lock(&obs.lines);
                    let last = lines
                        .iter()
                        .rev()
                        .find(|l| l.starts_with(&format!("{raw}/")));
                    (last == Some(&key)).then_some(())
                },
            )
            .await;
        }
        let crash = change % 4 == 2;
        fleet.hand_over(idx, token, crash).await;
    }
    observing.abort();
    // The waiting members leave first, then the holder resigns: nobody is granted the role
    // after the history's end without its holder saying so.
    let (idx, token) = fleet.holder().await;
    let limit = Duration::from_secs(10);
    finish(&mut fleet.members, idx, token, &fleet.history, limit).await;
    eprintln!("etcd {role}: {changes} handovers, {coord_led} led by coord, {peer_led} by etcdctl");
    assert!(coord_led > 0 && peer_led > 0);
    assert_clean(&fleet.history, changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_concurrency_election_with_etcdctl_elect() {
    mixed_fleet(Peer::Elect, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_concurrency_mutex_with_etcdctl_lock() {
    mixed_fleet(Peer::Lock, 20).await;
}
