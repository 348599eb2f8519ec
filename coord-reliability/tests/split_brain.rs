//! Split brain and fencing, on real servers with real processes (issue 9).
//!
//! Five contender processes campaign in one election and, while leading, write to a fenced
//! resource with their fencing token. The leader's process is frozen with SIGSTOP (a long GC
//! pause) beyond its session TTL; a successor is elected and writes; the old leader is resumed.
//! It must report Lost, and every write it attempts after the successor's first write must be
//! rejected by the resource (it sends 3 deliberate "zombie" writes after noticing the loss, on
//! top of whatever its write loop sent before noticing). Stale writes accepted: must be 0.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{holders, namespace, url, Swarm};
use coord_reliability::fence::FencedResource;
use coord_reliability::history::{self, Event};
use coord_reliability::now_us;
use coord_testkit::{shared_endpoints, Kind};

fn split_brain(kind: Kind) {
    let Some(endpoints) = shared_endpoints(kind) else {
        return;
    };
    let t0 = Instant::now();
    let fence = FencedResource::start().expect("fence");
    let fence_addr = fence.addr().to_string();
    let url = url(kind, &endpoints, &namespace("sb"), "2s");
    let mut swarm = Swarm::default();
    for i in 0..5 {
        swarm.spawn(
            &format!("c{i}"),
            &[
                "--url",
                &url,
                "--election",
                "sb",
                "--fence",
                &fence_addr,
                "--write-interval-ms",
                "100",
                "--zombie-writes",
                "3",
            ],
        );
    }
    // A leader that has written at least once.
    let (old, old_token) = swarm.wait_for("a first leader", Duration::from_secs(60), |rs| {
        let h = holders(rs, "election");
        let (id, tok) = h.into_iter().next()?;
        rs.iter()
            .any(|r| r.id == id && matches!(r.event, Event::Write { ok: true, .. }))
            .then_some((id, tok))
    });
    let elected_after = t0.elapsed();
    // Freeze it beyond its TTL.
    let stop_at = now_us();
    swarm.stop(&old);
    let (new, new_token) = swarm.wait_for("a successor", Duration::from_secs(60), |rs| {
        let h = holders(rs, "election");
        let (id, tok) = h.into_iter().find(|(id, _)| *id != old)?;
        let wrote = fence
            .log()
            .iter()
            .any(|w| w.writer == id && w.token == tok && w.accepted);
        wrote.then_some((id, tok))
    });
    let failover = Duration::from_micros(now_us() - stop_at);
    std::thread::sleep(Duration::from_millis(300));
    swarm.cont(&old);
    let resumed_at = now_us();
    // The old leader must report Lost and finish its zombie writes.
    swarm.wait_for(
        "the old leader to report Lost",
        Duration::from_secs(60),
        |rs| {
            let lost = rs.iter().any(|r| {
                r.id == old
                    && r.event
                        == Event::Lost {
                            role: "election".into(),
                            token: old_token,
                        }
            });
            let zombies = rs
                .iter()
                .filter(|r| r.id == old && matches!(r.event, Event::Write { zombie: true, .. }))
                .count();
            (lost && zombies >= 3).then_some(())
        },
    );
    let lost_after_resume = Duration::from_micros(now_us() - resumed_at);
    let log = fence.log();
    let first_new = log
        .iter()
        .find(|w| w.writer == new && w.accepted)
        .map(|w| w.seq)
        .expect("successor wrote");
    let old_after: Vec<_> = log
        .iter()
        .filter(|w| w.writer == old && w.seq > first_new)
        .collect();
    let stale_accepted = old_after.iter().filter(|w| w.accepted).count();
    let quit_killed = swarm.quit_all(Duration::from_secs(20));
    let end = now_us();
    let mut logs = BTreeMap::new();
    logs.insert("election".to_owned(), log.clone());
    let report = history::check(&swarm.records(), &swarm.faults, &logs, end);
    println!(
        "split brain on {kind}: first leader {old} (token {old_token}) after {elected_after:?}; \
         successor {new} (token {new_token}) writing {failover:?} after SIGSTOP; old leader \
         reported Lost {lost_after_resume:?} after SIGCONT; old leader's writes after the \
         successor's first write: {} attempted, {stale_accepted} accepted; fence: {} accepted, \
         {} rejected; checker: {} grants, {} fenced overlaps; total {:?}",
        old_after.len(),
        report.writes_accepted,
        report.stale_writes_rejected,
        report.grants.values().sum::<usize>(),
        report.fenced_overlaps,
        t0.elapsed()
    );
    assert!(
        new_token > old_token,
        "tokens must grow: {old_token} then {new_token}"
    );
    assert!(
        !old_after.is_empty(),
        "the old leader attempted no write after the successor's"
    );
    assert_eq!(stale_accepted, 0, "stale writes accepted: {old_after:?}");
    assert!(report.ok(), "checker: {report:#?}");
    assert!(
        quit_killed.is_empty(),
        "did not quit in time: {quit_killed:?}"
    );
    assert!(swarm.panics().is_empty(), "panics: {:?}", swarm.panics());
    for (id, code) in &swarm.exits {
        assert_eq!(*code, Some(0), "{id} exit code");
    }
}

#[test]
fn split_brain_fenced_zookeeper() {
    split_brain(Kind::ZooKeeper);
}

#[test]
fn split_brain_fenced_etcd() {
    split_brain(Kind::Etcd);
}

#[test]
fn split_brain_fenced_consul() {
    split_brain(Kind::Consul);
}
