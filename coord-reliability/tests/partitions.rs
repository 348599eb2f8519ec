//! Network partitions with network namespaces (issue 20).
//!
//! Per backend: a 3-member cluster, each member in its own namespace (hosts 0–2), and three
//! contender processes in their own namespaces (hosts 3–5), contender `c<i>` talking to member
//! `i` only. They campaign in one election and, while leading, write to a fenced resource on
//! the never-cut service net (see `coord_testkit::netns`). The scenarios run one after the
//! other on the same cluster, each from a settled state (everyone connected, one leader):
//!
//! 1. `leader-side-cut`: the leader's client and its member are cut off from the rest (the
//!    2|1 split with the leader on the minority side).
//! 2. `minority-cut`: a 2|1 split with the leader on the majority side: the leader keeps
//!    leading, the minority's contender gets nothing.
//! 3. `client-cut`: the leader's client alone is cut off from every member while its session
//!    lives on (the server sees it go quiet).
//! 4. `heal-after-ttl`: as 1, healed only after several session TTLs: the old leader's
//!    session is gone, it reports Lost and campaigns again with a new session.
//! 5. `flapping`: a random side (one member and its client) is cut and healed every
//!    0.5–3 s for `COORD_PARTITION_FLAP_SECS` (default 15; the long run uses ≥ 60).
//!
//! Checked over the whole history: 0 stale writes accepted, no duplicate or inverted tokens,
//! no overlap of live holders outside a partition of the older one, the old leader reports
//! Suspended or Lost no later than its successor's grant (no live overlap beyond the
//! suspension bound), and after the last heal every contender is connected again with one
//! leader (0 orphans). Registrations (each contender registers `part-svc`): during a cut the
//! majority side's are all discoverable through a majority member, and after every heal all
//! three are back (seen by a fresh client on a seventh, never-cut observer host). Figures per
//! scenario are printed as `PARTITION-ROW` lines.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{holders, Swarm};
use coord_reliability::fence::FencedResource;
use coord_reliability::history::{self, Event, FaultWindow, Record};
use coord_reliability::now_us;
use coord_testkit::netns::{run_in, Net};
use coord_testkit::{require_backends, Cluster, Kind};

/// The session TTL of every contender.
const TTL: &str = "2s";
const TTL_US: u64 = 2_000_000;
const MEMBERS: usize = 3;

fn skip_or_fail(what: &str, e: impl std::fmt::Display) -> Option<()> {
    if require_backends() {
        panic!("{what} (COORD_REQUIRE_BACKENDS=1): {e}");
    }
    eprintln!("SKIPPED: {what}: {e} (COORD_REQUIRE_BACKENDS=1 makes this a failure)");
    None
}

fn url(kind: Kind, member: &str, ns: &str) -> String {
    match kind {
        Kind::ZooKeeper => format!("zk://{member}:2181{ns}?session_timeout={TTL}"),
        Kind::Etcd => format!("etcd://{member}:2379{ns}?session_ttl={TTL}"),
        Kind::Consul => format!("consul://{member}:8500{ns}?session_ttl={TTL}"),
    }
}

/// Contender id of host index `i` (0..3).
fn cid(i: usize) -> String {
    format!("c{i}")
}

/// Whether `state` (a Session event's) is the connected one.
fn connected(state: &str) -> bool {
    state == "Connected"
}

struct Run<'a> {
    kind: Kind,
    /// The coord namespace of the contenders' URLs.
    ns: String,
    net: &'a mut Net,
    swarm: &'a mut Swarm,
    fence: &'a FencedResource,
    rows: Vec<String>,
}

impl Run<'_> {
    /// Waits until every contender's last session is connected and there is exactly one
    /// leader that has written; returns its index.
    fn settle(&self, what: &str) -> (usize, u64) {
        let since = now_us();
        self.swarm.wait_for(what, Duration::from_secs(120), |rs| {
            let sessions = last_sessions(rs);
            let all =
                (0..MEMBERS).all(|i| sessions.get(&cid(i)).is_some_and(|(_, st)| connected(st)));
            let h = holders(rs, "election");
            if !all || h.len() != 1 {
                return None;
            }
            let (id, tok) = h.into_iter().next()?;
            let wrote = self
                .fence
                .log()
                .iter()
                .any(|w| w.writer == id && w.token == tok && w.accepted && w.t_us >= since);
            let i: usize = id.strip_prefix('c')?.parse().ok()?;
            wrote.then_some((i, tok))
        })
    }

    /// Cuts `sides` (member indexes; each with its client unless `client_only`), waits for
    /// what the scenario expects, heals after `hold` more, and records the row.
    fn cut(&mut self, name: &str, sides: &[usize], client_only: bool, hold: Duration) {
        let (leader, token) = self.settle(&format!("a settled cluster before {name}"));
        let sides: Vec<usize> = sides.iter().map(|s| (s + leader) % MEMBERS).collect();
        let mut hosts: Vec<usize> = sides.iter().map(|s| MEMBERS + s).collect();
        if !client_only {
            hosts.extend(sides.iter().copied());
        }
        let leader_cut = sides.contains(&leader);
        let old = cid(leader);
        let cut_at = now_us();
        self.net.isolate(&hosts).expect("isolate");
        for s in &sides {
            self.swarm.faults.push(FaultWindow {
                id: Some(cid(*s)),
                kind: "partition".into(),
                from_us: cut_at,
                to_us: u64::MAX,
            });
        }
        let mut suspended_ms = None;
        let mut lost_ms = None;
        let mut successor_ms = None;
        let mut minority_grants = 0;
        let mut majority_leader = None;
        if leader_cut {
            // The old leader must notice, and the majority must elect a successor that writes.
            let found = self.swarm.try_wait_for(
                Duration::from_secs(90),
                |rs| {
                    let after = |r: &&Record| r.t_us >= cut_at;
                    let sus = rs.iter().filter(after).find(|r| {
                        r.id == old
                            && matches!(&r.event, Event::Session { state, .. } if !connected(state))
                    });
                    let lost = rs.iter().filter(after).find(|r| {
                        r.id == old
                            && matches!(&r.event, Event::Lost { role, token: t } if role == "election" && *t == token)
                    });
                    let succ = rs
                        .iter()
                        .filter(after)
                        .find(|r| {
                            r.id != old
                                && matches!(&r.event, Event::Granted { role, .. } if role == "election")
                        });
                    let succ_wrote = succ.is_some_and(|g| {
                        self.fence
                            .log()
                            .iter()
                            .any(|w| w.writer == g.id && w.accepted && w.t_us >= g.t_us)
                    });
                    match (lost, succ) {
                        (Some(l), Some(g)) if succ_wrote => {
                            Some((sus.map(|s| s.t_us).unwrap_or(l.t_us), l.t_us, g.t_us))
                        }
                        _ => None,
                    }
                },
            );
            let Some((sus, lost, succ)) = found else {
                for r in self.swarm.records() {
                    if r.t_us + 5_000_000 >= cut_at && !matches!(r.event, Event::Write { .. }) {
                        eprintln!("  {r:?}");
                    }
                }
                panic!(
                    "{name} on {}: no Lost of {old} (token {token}) and writing successor within 90 s",
                    self.kind
                );
            };
            assert!(
                sus.min(lost) <= succ,
                "{name} on {}: live overlap beyond the suspension bound: the old leader {old} \
                 reported Suspended/Lost {} ms after its successor's grant",
                self.kind,
                (sus.min(lost) - succ) / 1000
            );
            suspended_ms = Some((sus.min(lost) - cut_at) / 1000);
            lost_ms = Some((lost - cut_at) / 1000);
            successor_ms = Some((succ - cut_at) / 1000);
        }
        std::thread::sleep(hold);
        if !leader_cut {
            // Nobody on the minority is granted.
            let rs = self.swarm.records();
            minority_grants = rs
                .iter()
                .filter(|r| {
                    r.t_us >= cut_at
                        && sides.iter().any(|s| r.id == cid(*s))
                        && matches!(r.event, Event::Granted { .. })
                })
                .count();
            // The majority has a leader that writes (the old one, unless the cut took the
            // quorum's own leader and the re-election outlasted the client's TTL).
            let (holder, kept) = self.swarm.wait_for(
                &format!("{name}: a leader on the majority side"),
                Duration::from_secs(60),
                |rs| {
                    let h = holders(rs, "election");
                    let (id, tok) = h
                        .into_iter()
                        .find(|(id, _)| !sides.iter().any(|s| *id == cid(*s)))?;
                    let wrote = self.fence.log().iter().any(|w| {
                        w.writer == id && w.token == tok && w.accepted && w.t_us >= cut_at
                    });
                    wrote.then(|| (id.clone(), id == old && tok == token))
                },
            );
            majority_leader = Some(format!("{holder} (kept: {kept})"));
            assert_eq!(
                minority_grants, 0,
                "{name}: a minority contender was granted"
            );
        }
        // The majority side's registrations stay, seen through a majority member.
        let majority: Vec<usize> = (0..MEMBERS).filter(|m| !sides.contains(m)).collect();
        let want: Vec<String> = if client_only {
            (0..MEMBERS)
                .filter(|m| !sides.contains(m))
                .map(cid)
                .collect()
        } else {
            majority.iter().map(|m| cid(*m)).collect()
        };
        if let Err(last) = self.wait_registered(majority[0], &want, Duration::from_secs(30)) {
            panic!(
                "{name} on {}: majority-side registrations {want:?} lost during the cut: {last}",
                self.kind
            );
        }
        let heal_at = now_us();
        self.net.heal_all().expect("heal");
        for f in self.swarm.faults.iter_mut() {
            if f.to_us == u64::MAX && f.kind == "partition" {
                f.to_us = heal_at;
            }
        }
        let t = Instant::now();
        self.settle(&format!("everyone back after {name}"));
        let recovered_ms = t.elapsed().as_millis();
        let all: Vec<String> = (0..MEMBERS).map(cid).collect();
        let back_ms = self
            .wait_registered(0, &all, Duration::from_secs(30))
            .unwrap_or_else(|last| {
                panic!(
                    "{name} on {}: registrations not back 30 s after the heal: {last}",
                    self.kind
                )
            });
        self.row(
            name,
            &format!(
                "cut {hosts:?} for {} ms; old leader Suspended/Lost after {} / {} ms; successor after {} ms; minority grants {minority_grants}; majority leader {}; all reconnected with one leader {recovered_ms} ms after heal; majority registrations lost 0; all registrations back {back_ms} ms after that",
                (heal_at - cut_at) / 1000,
                opt(suspended_ms),
                opt(lost_ms),
                opt(successor_ms),
                majority_leader.as_deref().unwrap_or("-"),
            ),
        );
    }

    fn flap(&mut self, secs: u64) {
        self.settle("a settled cluster before flapping");
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed() < Duration::from_secs(secs) {
            let side = fastrand_usize(MEMBERS);
            let cut_at = now_us();
            self.net.isolate(&[side, MEMBERS + side]).expect("isolate");
            std::thread::sleep(Duration::from_millis(500 + fastrand_usize(2500) as u64));
            self.net.heal_all().expect("heal");
            self.swarm.faults.push(FaultWindow {
                id: Some(cid(side)),
                kind: "partition".into(),
                from_us: cut_at,
                // A session the cut ended may be noticed a moment after the heal.
                to_us: now_us() + TTL_US,
            });
            std::thread::sleep(Duration::from_millis(500 + fastrand_usize(2500) as u64));
            rounds += 1;
        }
        let t = Instant::now();
        self.settle("everyone back after flapping");
        let recovered_ms = t.elapsed().as_millis();
        let all: Vec<String> = (0..MEMBERS).map(cid).collect();
        let back_ms = self
            .wait_registered(0, &all, Duration::from_secs(30))
            .unwrap_or_else(|last| {
                panic!(
                    "flapping on {}: registrations not back 30 s after the heal: {last}",
                    self.kind
                )
            });
        self.row(
            "flapping",
            &format!(
                "{rounds} cut/heal rounds in {secs} s; all reconnected with one leader {recovered_ms} ms after the last heal; all registrations back {back_ms} ms after that"
            ),
        );
    }

    /// The contender ids registered under `part-svc`, as a fresh client on the never-cut
    /// observer host (host 6) sees them through member `member`.
    fn registered(&self, member: usize) -> Result<Vec<String>, String> {
        let u = url(self.kind, &self.net.host(member).ip, &self.ns);
        let observer = self.net.host(2 * MEMBERS).ns.clone();
        run_in(&observer, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let look = async {
                    let client = coord::connect(&u).await.map_err(|e| e.to_string())?;
                    let found = client.registry().discover("part-svc").await;
                    let _ = client.close().await;
                    let mut ids: Vec<String> = found
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|i| i.id)
                        .collect();
                    ids.sort();
                    Ok(ids)
                };
                tokio::time::timeout(Duration::from_secs(10), look)
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()))
            })
        })
        .map_err(|e| e.to_string())?
    }

    /// Waits (bounded) until `want` are all registered, seen through `member`; the time it
    /// took, or the last answer.
    fn wait_registered(
        &self,
        member: usize,
        want: &[String],
        limit: Duration,
    ) -> Result<u128, String> {
        let t = Instant::now();
        let mut last;
        loop {
            last = self.registered(member);
            if let Ok(ids) = &last {
                if want.iter().all(|w| ids.contains(w)) {
                    return Ok(t.elapsed().as_millis());
                }
            }
            if t.elapsed() > limit {
                return Err(format!("{last:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn row(&mut self, scenario: &str, text: &str) {
        let line = format!("PARTITION-ROW {} | {scenario} | {text}", self.kind);
        println!("{line}");
        self.rows.push(line);
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// A small pseudo-random number below `n` (the flapping schedule; no need for quality).
fn fastrand_usize(n: usize) -> usize {
    (now_us() / 7 % n as u64) as usize
}

fn last_sessions(rs: &[Record]) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for r in rs {
        if let Event::Session { session, state } = &r.event {
            out.insert(r.id.clone(), (session.clone(), state.clone()));
        }
    }
    out
}

fn partitions(kind: Kind) {
    // Declared first so it is dropped last: the processes inside go before their namespaces.
    let mut net = match Net::new(2 * MEMBERS + 1) {
        Ok(n) => n,
        Err(e) => return skip_or_fail("network namespaces not available", e).unwrap_or(()),
    };
    let members: Vec<_> = net.hosts()[..MEMBERS].to_vec();
    let started = match kind {
        Kind::ZooKeeper => Cluster::zookeeper_in(&members),
        Kind::Etcd => Cluster::etcd_in(&members),
        Kind::Consul => Cluster::consul_in(&members),
    };
    let _cluster = match started {
        Ok(c) => c,
        Err(e) => return skip_or_fail(&format!("{kind} cluster in namespaces"), e).unwrap_or(()),
    };
    let listener = net
        .bind_service(0)
        .expect("bind the fence on the service net");
    let fence = FencedResource::start_on(listener).expect("fence");
    let fence_addr = fence.addr().to_string();
    let ns = format!("/part-{}-{}", std::process::id(), now_us() % 1_000_000_000);
    let mut swarm = Swarm::default();
    // The lock's holders cycle (three writes each) through every cut, on their own fence.
    let lock_listener = net.bind_service(0).expect("bind the lock's fence");
    let lock_fence = FencedResource::start_on(lock_listener).expect("lock fence");
    let lock_fence_addr = lock_fence.addr().to_string();
    for (i, m) in members.iter().enumerate() {
        let u = url(kind, &m.ip, &ns);
        let wrapper = net.host(MEMBERS + i).exec_prefix();
        swarm.spawn_wrapped(
            &cid(i),
            &wrapper,
            &[
                "--url",
                &u,
                "--election",
                "part",
                "--fence",
                &fence_addr,
                "--lock",
                "part-lock",
                "--lock-fence",
                &lock_fence_addr,
                "--register",
                "part-svc",
                "--write-interval-ms",
                "100",
                "--zombie-writes",
                "3",
            ],
        );
    }
    let flap_secs = std::env::var("COORD_PARTITION_FLAP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut run = Run {
        kind,
        net: &mut net,
        swarm: &mut swarm,
        fence: &fence,
        ns: ns.clone(),
        rows: Vec::new(),
    };
    let t0 = Instant::now();
    // Hold each cut a little beyond the TTL so the minority's sessions can end.
    let hold = Duration::from_micros(TTL_US);
    run.cut(
        "leader-side-cut (2|1, leader on minority)",
        &[0],
        false,
        hold,
    );
    run.cut(
        "minority-cut (2|1, leader on majority)",
        &[1],
        false,
        hold * 2,
    );
    run.cut("client-cut (leader's client only)", &[0], true, hold);
    run.cut(
        "heal-after-ttl (leader side cut for 4 TTLs)",
        &[0],
        false,
        hold * 4,
    );
    run.flap(flap_secs);
    let rows = std::mem::take(&mut run.rows);
    drop(run);
    let killed = swarm.quit_all(Duration::from_secs(20));
    let end = now_us();
    let mut logs = BTreeMap::new();
    logs.insert("election".to_owned(), fence.log());
    logs.insert("lock".to_owned(), lock_fence.log());
    let report = history::check(&swarm.records(), &swarm.faults, &logs, end);
    println!(
        "partitions on {kind}: grants {:?}, {} fenced overlaps, {} writes accepted, {} stale rejected, {} stale accepted; {:?} in all",
        report.grants,
        report.fenced_overlaps,
        report.writes_accepted,
        report.stale_writes_rejected,
        report.stale_writes_accepted,
        t0.elapsed()
    );
    for r in &rows {
        eprintln!("{r}");
    }
    assert!(report.ok(), "checker: {report:#?}");
    assert_eq!(report.stale_writes_accepted, 0);
    assert!(killed.is_empty(), "did not quit in time: {killed:?}");
    assert!(swarm.panics().is_empty(), "panics: {:?}", swarm.panics());
}

#[test]
fn partitions_zookeeper() {
    partitions(Kind::ZooKeeper);
}

#[test]
fn partitions_etcd() {
    partitions(Kind::Etcd);
}

#[test]
fn partitions_consul() {
    partitions(Kind::Consul);
}
