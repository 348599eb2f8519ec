//! 3-node ZooKeeper ensemble and 3-member etcd cluster: they come up, survive losing one
//! member, and the member rejoins after a restart.

mod common;

use std::time::{Duration, Instant};

use common::{alive, start, zk_srvr};
use coord_testkit::{probe, Cluster, Kind};

const READY: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(500);

/// Waits (bounded) until `endpoints` of `kind` answer as ready.
fn wait_probe(kind: Kind, endpoint: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match probe(kind, endpoint, SHORT) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{endpoint} not ready: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A ZooKeeper member's `Mode:` from `srvr` ("leader", "follower"), or "?".
fn mode(endpoint: &str) -> String {
    zk_srvr(endpoint, Duration::from_secs(2))
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .unwrap_or("?")
        .to_string()
}

#[test]
fn zookeeper_ensemble_survives_losing_its_leader() {
    let Some(mut cluster) = start("ZooKeeper ensemble", || Cluster::zookeeper(3)) else {
        return;
    };
    assert_eq!(cluster.members.len(), 3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");

    let modes: Vec<String> = cluster
        .members
        .iter()
        .map(|m| mode(&m.endpoint()))
        .collect();
    eprintln!("modes: {modes:?}");
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );
    let leader = modes.iter().position(|m| m == "leader").expect("a leader");

    // Kill the leader: the two others elect a new leader among themselves and serve.
    let pid = cluster.members[leader].pid().expect("pid");
    cluster.members[leader].kill();
    assert!(!alive(pid));
    let t0 = Instant::now();
    loop {
        let survivors: Vec<String> = (0..3)
            .filter(|i| *i != leader)
            .map(|i| mode(&cluster.members[i].endpoint()))
            .collect();
        if survivors.iter().any(|m| m == "leader") && survivors.iter().all(|m| m != "?") {
            eprintln!(
                "new modes {survivors:?} {:?} after the leader was killed",
                t0.elapsed()
            );
            break;
        }
        assert!(t0.elapsed() < READY, "no new leader: {survivors:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, m) in cluster.members.iter().enumerate() {
        if i != leader {
            wait_probe(Kind::ZooKeeper, &m.endpoint(), READY);
        }
    }
    assert!(probe(Kind::ZooKeeper, &cluster.members[leader].endpoint(), SHORT).is_err());
    probe(Kind::ZooKeeper, &endpoints, SHORT).expect("the ensemble's endpoints answer");

    // The old leader rejoins (as a follower) on its old port.
    let t0 = Instant::now();
    cluster.members[leader].restart().expect("restart member");
    eprintln!("killed member rejoined in {:?}", t0.elapsed());
    cluster.wait_ready(READY).expect("all members serve");
}

#[test]
fn etcd_cluster_survives_losing_a_member() {
    let Some(mut cluster) = start("etcd cluster", || Cluster::etcd(3)) else {
        return;
    };
    assert_eq!(cluster.members.len(), 3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    for m in &cluster.members {
        m.probe(SHORT).expect("member healthy");
    }

    // Kill a member; the two others keep (or elect) a leader and stay healthy.
    let pid = cluster.members[0].pid().expect("pid");
    cluster.members[0].kill();
    assert!(!alive(pid));
    // Let two election timeouts (2 x 500 ms) pass, so that the survivors have noticed if the
    // killed member was their leader, then they must be (or become again) healthy.
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    for m in &cluster.members[1..] {
        wait_probe(Kind::Etcd, &m.endpoint(), READY);
    }
    eprintln!(
        "etcd healthy 1 s + {:?} after a member was killed",
        t0.elapsed()
    );
    assert!(probe(Kind::Etcd, &cluster.members[0].endpoint(), SHORT).is_err());

    // Pause a second member: no quorum, the third is not healthy; resume restores it.
    cluster.members[1].pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(Kind::Etcd, &cluster.members[2].endpoint(), SHORT).is_ok() {
        assert!(
            Instant::now() < deadline,
            "member 3 stays healthy without quorum"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.members[1].resume();
    wait_probe(Kind::Etcd, &cluster.members[2].endpoint(), READY);

    // The killed member rejoins on its old port with its old data.
    let t0 = Instant::now();
    cluster.members[0].restart().expect("restart member");
    eprintln!("killed member rejoined in {:?}", t0.elapsed());
    cluster.wait_ready(READY).expect("all members healthy");
}

#[test]
fn cluster_drop_stops_every_member() {
    let Some(cluster) = start("etcd cluster", || Cluster::etcd(3)) else {
        return;
    };
    let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
    let dirs: Vec<_> = cluster
        .members
        .iter()
        .map(|m| m.data_dir().to_path_buf())
        .collect();
    assert_eq!(pids.len(), 3);
    let t0 = Instant::now();
    drop(cluster);
    eprintln!("3-member cluster dropped in {:?}", t0.elapsed());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} alive after drop");
    }
    for d in dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
}
