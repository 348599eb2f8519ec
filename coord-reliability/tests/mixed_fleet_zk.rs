//! Mixed fleets on ZooKeeper (issue 15): coord contenders in a peer's dialect share one
//! election or lock with that peer's own code — Curator's LeaderLatch, LeaderSelector and
//! InterProcessMutex (Java), kazoo's Lock as an election and as a lock (Python) — started as
//! separate processes (coord-testkit's `peers`). Lock holders unlock by themselves after
//! three writes (the election's leaders are told to resign). Per dialect: 2 coord
//! and 2 peer processes, 20+ leadership changes by clean resigns, SIGKILLs of the leader (coord
//! or peer) and new members joining in their place. Every leader writes its fencing token to a
//! fenced resource; the history checker must find no overlap of live holders, no duplicate or
//! inverted token and no stale write accepted. After each change, the other side's view names
//! the new leader: the peer's `getLeader()` / `contenders()` when coord leads, coord's
//! `leader()` when the peer leads.
//!
//! A missing peer runtime (javac, Curator jars, kazoo) is a loud SKIPPED line, a failure with
//! `COORD_REQUIRE_BACKENDS=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::{holders, namespace, url, Swarm};
use coord_reliability::fence::FencedResource;
use coord_reliability::history::{self, Event, Record};
use coord_reliability::now_us;
use coord_testkit::peers::{curator_peer, kazoo_peer, peer_or_skip};
use coord_testkit::{shared_endpoints, Kind};

/// Leadership changes per dialect.
const CHANGES: usize = 22;
/// The changes made by a SIGKILL of the leader (the others are clean resigns); the killed
/// member is replaced by a new one of its kind.
const KILL_EVERY: usize = 5;
const SESSION: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_millis(100);
/// Bound for one handover (a kill waits for the session's expiry).
const HANDOVER: Duration = Duration::from_secs(30);
const NAME: &str = "mixed";

/// Which peer a scenario runs.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Curator's LeaderLatch (an election).
    CuratorLatch,
    /// Curator's LeaderSelector (an election).
    CuratorSelector,
    /// Curator's InterProcessMutex (a lock).
    CuratorMutex,
    /// kazoo's Lock held as an election (what kazoo's Election does).
    KazooElection,
    /// kazoo's Lock.
    KazooLock,
}

impl Peer {
    fn dialect(self) -> &'static str {
        match self {
            Peer::CuratorLatch => "curator-latch",
            Peer::CuratorSelector | Peer::CuratorMutex => "curator-lock",
            Peer::KazooElection | Peer::KazooLock => "kazoo",
        }
    }

    /// `election` or `lock`.
    fn role(self) -> &'static str {
        match self {
            Peer::CuratorMutex | Peer::KazooLock => "lock",
            _ => "election",
        }
    }

    fn command(self, zk: &str, id: &str, fence: &str) -> Result<Command, coord_testkit::Error> {
        let path = match self.role() {
            "lock" => format!("/locks/{NAME}"),
            _ => format!("/elections/{NAME}"),
        };
        let (i, s) = (INTERVAL, SESSION);
        match self {
            Peer::CuratorLatch => curator_peer("latch", zk, &path, id, fence, i, s),
            Peer::CuratorSelector => curator_peer("selector", zk, &path, id, fence, i, s),
            Peer::CuratorMutex => curator_peer("mutex", zk, &path, id, fence, i, s),
            Peer::KazooElection => kazoo_peer("election", zk, &path, id, fence, i, s),
            Peer::KazooLock => kazoo_peer("lock", zk, &path, id, fence, i, s),
        }
    }
}

struct Fleet {
    swarm: Swarm,
    peer: Peer,
    url: String,
    /// The peers' connect string (with the namespace as chroot).
    zk: String,
    fence_addr: String,
    killed: BTreeSet<String>,
    next_id: usize,
}

impl Fleet {
    fn spawn_coord(&mut self) -> String {
        self.next_id += 1;
        let id = format!("coord{}", self.next_id);
        let (recipe, fence) = match self.peer.role() {
            "lock" => ("--lock", "--lock-fence"),
            _ => ("--election", "--fence"),
        };
        let args = [
            "--url",
            &self.url,
            recipe,
            NAME,
            fence,
            &self.fence_addr,
            "--write-interval-ms",
            "100",
            "--dialect",
            self.peer.dialect(),
        ];
        self.swarm.spawn(&id, &args);
        id
    }

    fn spawn_peer(&mut self) -> String {
        self.next_id += 1;
        let id = format!("peer{}", self.next_id);
        let cmd = self
            .peer
            .command(&self.zk, &id, &self.fence_addr)
            .unwrap_or_else(|e| panic!("peer command: {e}"));
        self.swarm.spawn_command(&id, cmd);
        id
    }

    fn is_coord(id: &str) -> bool {
        id.starts_with("coord")
    }

    /// Waits until `id` reports `ev` after record index `from`.
    fn wait_event(&self, id: &str, from: usize, what: &str, ev: impl Fn(&Event) -> bool) {
        let id = id.to_owned();
        self.swarm.wait_for(what, HANDOVER, |recs| {
            recs.iter()
                .skip(from)
                .any(|r| r.id == id && ev(&r.event))
                .then_some(())
        });
    }

    /// The live holder with the newest grant, once there is exactly one live holder.
    fn holder(&self, after_token: u64) -> (String, u64) {
        self.swarm.wait_for("one live leader", HANDOVER, |recs| {
            let live: Vec<(String, u64)> = holders(recs, self.peer.role())
                .into_iter()
                .filter(|(id, _)| !self.killed.contains(id))
                .collect();
            match live.as_slice() {
                [(id, t)] if *t > after_token => Some((id.clone(), *t)),
                _ => None,
            }
        })
    }

    /// Asks `observer` whom it sees leading; asserts it is `leader` (retrying a few times:
    /// a view may lag the change by a notification).
    fn assert_observed(&mut self, observer: &str, leader: &str) {
        for attempt in 0..20 {
            let from = self.swarm.records().len();
            self.swarm.send(observer, "observe");
            let seen = self.swarm.wait_for("an observation", HANDOVER, |recs| {
                recs.iter().skip(from).find_map(|r| match &r.event {
                    Event::Observed {
                        leader,
                        participants,
                    } if r.id == observer => Some((leader.clone(), participants.clone())),
                    _ => None,
                })
            });
            if seen.0 == leader {
                assert!(
                    seen.1.first().map(String::as_str) == Some(leader),
                    "{observer} lists {:?} with {leader} not first",
                    seen.1
                );
                return;
            }
            if attempt == 19 {
                self.swarm.dump();
                panic!("{observer} sees {:?} leading, not {leader}", seen.0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn mixed_fleet(peer: Peer, test: &str) {
    let Some(endpoints) = shared_endpoints(Kind::ZooKeeper) else {
        return;
    };
    // Check the peer's runtime first (a loud skip, or a failure in CI).
    if peer_or_skip(test, peer.command(&endpoints, "probe", "127.0.0.1:1")).is_none() {
        return;
    }
    let fence = FencedResource::start().expect("fence");
    let ns = namespace(&format!("mixed-{}", peer.dialect()));
    let mut fleet = Fleet {
        swarm: Swarm::default(),
        peer,
        url: url(Kind::ZooKeeper, &endpoints, &ns, "2s"),
        zk: format!("{endpoints}{ns}"),
        fence_addr: fence.addr().to_string(),
        killed: BTreeSet::new(),
        next_id: 0,
    };
    // The first coord member creates the namespace; then the others join, alternating kinds
    // (the election is first come, first served: leadership alternates as they resign).
    let first = fleet.spawn_coord();
    let (mut leader, mut token) = fleet.holder(0);
    assert_eq!(leader, first);
    let p = fleet.spawn_peer();
    fleet.wait_event(&p, 0, "the peer campaigning", |e| {
        matches!(e, Event::Campaigning { .. })
    });
    fleet.spawn_coord();
    fleet.spawn_peer();
    let role = peer.role();
    let (mut coord_led, mut peer_led) = (0, 0);
    for change in 0..CHANGES {
        // Observation both ways: the other kind's view names the leader.
        let observer = fleet
            .swarm
            .procs
            .keys()
            .find(|id| Fleet::is_coord(id) != Fleet::is_coord(&leader))
            .cloned();
        if let (Some(observer), "election") = (observer, role) {
            fleet.assert_observed(&observer, &leader);
        }
        if Fleet::is_coord(&leader) {
            coord_led += 1;
        } else {
            peer_led += 1;
        }
        if change % KILL_EVERY == KILL_EVERY - 1 {
            fleet.swarm.kill(&leader);
            fleet.killed.insert(leader.clone());
            if Fleet::is_coord(&leader) {
                fleet.spawn_coord();
            } else {
                fleet.spawn_peer();
            }
        } else if role == "election" {
            fleet.swarm.send(&leader, "resign");
        }
        // (A lock holder unlocks by itself after three writes.)
        (leader, token) = fleet.holder(token);
    }
    let killed = fleet.swarm.quit_all(Duration::from_secs(15));
    let records: Vec<Record> = fleet.swarm.records();
    let logs = BTreeMap::from([(role.to_owned(), fence.log())]);
    let report = history::check(&records, &fleet.swarm.faults, &logs, now_us());
    let grants = report.grants.get(role).copied().unwrap_or(0);
    println!(
        "{test}: {grants} grants ({coord_led} while coord led, {peer_led} while a peer led), \
         {} writes accepted, {} stale rejected, {} stale accepted, overlaps {:?}, fenced \
         overlaps {}",
        report.writes_accepted,
        report.stale_writes_rejected,
        report.stale_writes_accepted,
        report.overlaps,
        report.fenced_overlaps
    );
    if !report.ok() {
        fleet.swarm.dump();
        panic!("{test}: the checker failed: {report:?}");
    }
    assert!(grants > CHANGES, "{grants} grants");
    assert!(coord_led >= 5 && peer_led >= 5, "{coord_led} / {peer_led}");
    assert_eq!(report.stale_writes_accepted, 0);
    assert!(report.writes_accepted > 0);
    let panics = fleet.swarm.panics();
    assert!(panics.is_empty(), "{panics:?}");
    // Killed at the end: a peer that did not quit in time (allowed, but say so).
    if !killed.is_empty() {
        eprintln!("{test}: had to kill {killed:?} at the end");
    }
}

#[test]
fn mixed_fleet_curator_latch() {
    mixed_fleet(Peer::CuratorLatch, "mixed_fleet_curator_latch");
}

#[test]
fn mixed_fleet_curator_selector() {
    mixed_fleet(Peer::CuratorSelector, "mixed_fleet_curator_selector");
}

#[test]
fn mixed_fleet_curator_mutex() {
    mixed_fleet(Peer::CuratorMutex, "mixed_fleet_curator_mutex");
}

#[test]
fn mixed_fleet_kazoo_election() {
    mixed_fleet(Peer::KazooElection, "mixed_fleet_kazoo_election");
}

#[test]
fn mixed_fleet_kazoo_lock() {
    mixed_fleet(Peer::KazooLock, "mixed_fleet_kazoo_lock");
}
