//! Network partitions with network namespaces (issue 20).
//!
//! Per backend and cluster size (3 and 5 members): every member in its own namespace (hosts
//! `0..M`), `M` contender processes in their own namespaces (hosts `M..2M`), contender `c<i>`
//! talking to member `i` only — on Consul to a client agent in its own namespace that joins
//! the servers (clients talk to a local agent in real deployments), so cutting a contender's
//! host cuts its agent too. A cut puts the hosts of its sides together on a side of their
//! own (`Net::isolate`): a contender keeps talking to its member (or its agent to its server)
//! when that member lost the quorum, as in a real split. They campaign in one election, loop
//! on one lock and register one instance each, and write, while holding, to fenced resources on the never-cut service net
//! (see `coord_testkit::netns`). The scenarios run one after the other on the same cluster,
//! each from a settled state (everyone connected, one leader that writes); the ones that cut
//! the leader's side run under both suspend policies (`LoseOnSuspend`, `TolerateSuspend`,
//! switched with the contenders' `policy` command), so their rows stand side by side:
//!
//! 1. `leader-side-cut`: the leader's client and its member are cut off from the rest (a
//!    minority of 1 with the leader on it).
//! 2. `minority-cut` (3 members): a 2|1 split with the leader on the majority side;
//!    `split-3|2` (5 members): the leader and one more side on the minority, then
//!    `split-3|2-majority`: two other sides cut, the leader on the majority.
//! 3. `client-cut`: the leader's client alone is cut off from every member while its session
//!    lives on (the server sees it go quiet).
//! 4. `heal-after-ttl`: as 1, healed only after 4 session TTLs: the old leader's session is
//!    gone, it reports Lost and campaigns again with a new session.
//! 5. `flapping`: a random side (one member and its client; on 5 members one or two, cut
//!    off together) is cut and healed every 0.5–3 s for `COORD_PARTITION_FLAP_SECS` (default 15; the long run
//!    uses 1800).
//!
//! Checked over the whole history: 0 stale writes accepted, no duplicate or inverted tokens,
//! no overlap of live holders outside a partition of the older one, the old leader reports
//! Suspended or Lost no later than its successor's grant (no live overlap beyond the
//! suspension bound) and Lost by the time everyone is back, and after the last heal every
//! contender is connected again with one leader (0 orphans). Registrations (each contender
//! registers `part-svc`): during a cut the majority side's are all discoverable through a
//! majority member, and after every heal all are back (seen by a fresh client on a never-cut
//! observer host, host `2M`). Figures per scenario are printed as `PARTITION-ROW` lines.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::{holders, Swarm};
use coord_reliability::fence::FencedResource;
use coord_reliability::history::{self, Event, FaultWindow, Record};
use coord_reliability::now_us;
use coord_testkit::netns::{run_in, Net};
use coord_testkit::{require_backends, Cluster, Kind, Server};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The session TTL of every contender.
const TTL: &str = "2s";
const TTL_US: u64 = 2_000_000;

fn skip_or_fail(what: &str, e: impl std::fmt::Display) -> Option<()> {
    if require_backends() {
        panic!("{what} (COORD_REQUIRE_BACKENDS=1): {e}");
    }
    eprintln!("SKIPPED: {what}: {e} (COORD_REQUIRE_BACKENDS=1 makes this a failure)");
    None
}

/// The URL of the agent or member at `addr` (port 8500 on Consul, 2181/2379 elsewhere).
fn url(kind: Kind, addr: &str, ns: &str) -> String {
    match kind {
        Kind::ZooKeeper => format!("zk://{addr}:2181{ns}?session_timeout={TTL}"),
        Kind::Etcd => format!("etcd://{addr}:2379{ns}?session_ttl={TTL}"),
        Kind::Consul => format!("consul://{addr}:8500{ns}?session_ttl={TTL}"),
    }
}

/// Contender id of side `i`.
fn cid(i: usize) -> String {
    format!("c{i}")
}

/// Which of the sides `of` have no registration in `last` (a printed list of contender ids).
fn missing_from(last: &str, of: impl Iterator<Item = usize>) -> Vec<usize> {
    of.filter(|i| !last.contains(&format!("\"{}\"", cid(*i))))
        .collect()
}

/// The lines of the log at `path` from byte `from` on that `keep` selects (a log that cannot
/// be read has none).
fn log_lines(path: &std::path::Path, from: u64, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let log = std::fs::read(path).unwrap_or_default();
    let after = log.get(from as usize..).unwrap_or_default();
    String::from_utf8_lossy(after)
        .lines()
        .filter(|l| keep(l))
        .map(str::to_owned)
        .collect()
}

/// The sizes of a cluster's members' logs now: where a cut's lines start.
fn log_sizes(c: &Cluster) -> Vec<u64> {
    c.members
        .iter()
        .map(|s| std::fs::metadata(s.log_path()).map_or(0, |md| md.len()))
        .collect()
}

/// The time of a Consul log line (`2026-12-04T23:31:32.844Z [INFO] …`), µs since the epoch.
fn log_time_us(line: &str) -> Option<u64> {
    let t = line.trim_start();
    let num = |a: usize, b: usize| t.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1_000_000 + ms * 1000).ok()
}

/// Whether `state` (a Session event's) is the connected one.
fn connected(state: &str) -> bool {
    state == "Connected"
}

/// The contenders' suspend policy, as the `policy` command names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Lose,
    Tolerate,
}

impl Policy {
    fn command(self) -> &'static str {
        match self {
            Policy::Lose => "policy lose",
            Policy::Tolerate => "policy tolerate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Policy::Lose => "LoseOnSuspend",
            Policy::Tolerate => "TolerateSuspend",
        }
    }
}

/// What a cut scenario does: which sides (offsets from the leader's side) it cuts, whether
/// the clients alone, for how long after the expected reaction.
struct Cut<'s> {
    name: &'s str,
    sides: &'s [usize],
    client_only: bool,
    hold: Duration,
}

struct Run<'a> {
    kind: Kind,
    /// The number of members (and of contenders).
    m: usize,
    /// The coord namespace of the contenders' URLs.
    ns: String,
    net: &'a mut Net,
    swarm: &'a mut Swarm,
    fence: &'a FencedResource,
    /// The servers, and Consul's client agents (one per contender): their logs for a failure.
    servers: &'a Cluster,
    agents: Option<&'a Cluster>,
    policy: Policy,
    /// When the contenders were last told their policy (settle waits for them to follow).
    policy_since: u64,
    rows: Vec<String>,
    /// A small xorshift state for the flapping schedule.
    rng: u64,
}

impl Run<'_> {
    /// Switches every contender to `policy` (the leader resigns to campaign again under it).
    fn set_policy(&mut self, policy: Policy) {
        if self.policy == policy {
            return;
        }
        self.policy_since = now_us();
        for i in 0..self.m {
            self.swarm.send(&cid(i), policy.command());
        }
        self.policy = policy;
    }

    /// Waits until every contender's last session is connected, every contender has
    /// campaigned since the last policy switch, and there is exactly one leader, granted since
    /// that switch, that has written; returns its index.
    fn settle(&self, what: &str) -> (usize, u64) {
        let since = now_us();
        let switched = self.policy_since;
        let settled = self.swarm.try_wait_for(Duration::from_secs(120), |rs| {
            let sessions = last_sessions(rs);
            let all =
                (0..self.m).all(|i| sessions.get(&cid(i)).is_some_and(|(_, st)| connected(st)));
            let campaigned = (0..self.m).all(|i| {
                rs.iter().any(|r| {
                    r.t_us >= switched
                        && r.id == cid(i)
                        && matches!(&r.event, Event::Campaigning { role } if role == "election")
                })
            });
            let h = holders(rs, "election");
            if !all || !campaigned || h.len() != 1 {
                return None;
            }
            let (id, tok) = h.into_iter().next()?;
            let granted_since_switch = rs.iter().any(|r| {
                r.t_us >= switched
                    && r.id == id
                    && matches!(&r.event, Event::Granted { role, token } if role == "election" && *token == tok)
            });
            if !granted_since_switch {
                return None;
            }
            let wrote = self
                .fence
                .log()
                .iter()
                .any(|w| w.writer == id && w.token == tok && w.accepted && w.t_us >= since);
            let i: usize = id.strip_prefix('c')?.parse().ok()?;
            wrote.then_some((i, tok))
        });
        settled.unwrap_or_else(|| {
            // What the store holds, next to what the contenders printed: the election's and
            // the sessions' records (and errors) since the previous cut, then the last records.
            let from = self.swarm.faults.last().map_or(0, |f| f.from_us);
            for r in self.swarm.records().iter().filter(|r| {
                r.t_us >= from
                    && match &r.event {
                        Event::Campaigning { role }
                        | Event::Granted { role, .. }
                        | Event::Releasing { role, .. }
                        | Event::Lost { role, .. }
                        | Event::HoldState { role, .. } => role == "election",
                        Event::Error { .. } | Event::Session { .. } => true,
                        _ => false,
                    }
            }) {
                eprintln!("  {r:?}");
            }
            self.swarm.dump();
            self.dump_logs(&(0..self.m).collect::<Vec<_>>());
            eprintln!(
                "{} ({} members): election candidates now: {:?}; sessions: {:?}",
                self.kind,
                self.m,
                self.candidate_nodes(),
                last_sessions(&self.swarm.records())
            );
            panic!("timed out after 120 s waiting for {what}")
        })
    }

    /// Cuts the scenario's sides (each member with its client unless `client_only`), waits
    /// for what the scenario expects, heals after `hold` more, and records the row.
    fn cut(&mut self, c: Cut<'_>, policy: Policy) {
        self.set_policy(policy);
        let name = format!("{} [{}]", c.name, policy.label());
        let name = name.as_str();
        let (leader, token) = self.settle(&format!("a settled cluster before {name}"));
        let m = self.m;
        let sides: Vec<usize> = c.sides.iter().map(|s| (s + leader) % m).collect();
        let mut hosts: Vec<usize> = sides.iter().map(|s| m + s).collect();
        if !c.client_only {
            hosts.extend(sides.iter().copied());
        }
        let leader_cut = sides.contains(&leader);
        let old = cid(leader);
        let agent_logs = self.agent_log_sizes();
        let server_logs = log_sizes(self.servers);
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
        let mut successor_ms = None;
        let mut gossip_ended = None;
        let mut minority_grants = 0;
        let mut majority_leader = None;
        if leader_cut {
            // The old leader must notice, and the majority must elect a successor that writes.
            // Under TolerateSuspend the old leader's Lost may come only after the heal.
            let found = self.swarm.try_wait_for(Duration::from_secs(90), |rs| {
                let noticed = noticed(rs, &old, token, cut_at)?;
                let succ = rs.iter().find(|r| {
                    r.t_us >= cut_at
                        && r.id != old
                        && matches!(&r.event, Event::Granted { role, .. } if role == "election")
                })?;
                let wrote = self
                    .fence
                    .log()
                    .iter()
                    .any(|w| w.writer == succ.id && w.accepted && w.t_us >= succ.t_us);
                wrote.then_some((noticed, succ.t_us))
            });
            let Some((sus, succ)) = found else {
                self.dump_since(cut_at);
                panic!(
                    "{name} on {} ({m} members): the old leader {old} (token {token}) did not \
                     report Suspended/Lost, or no successor wrote, within 90 s",
                    self.kind
                );
            };
            if sus > succ {
                // Consul: the servers may mark the old leader's agent failed on a gossip
                // suspicion raised before the cut (an agent back from the previous scenario
                // confirming what it suspected while it was cut off), which ends its sessions
                // at once, while the cut keeps the old leader from hearing it. Told apart only
                // with the servers' log line, before the successor's grant (RELIABILITY.md (r)).
                gossip_ended = self
                    .marked_failed(leader, &server_logs)
                    .filter(|t| *t <= succ + 1_000);
                if gossip_ended.is_none() {
                    // What each contender saw around the cut, and the servers' and agents' logs.
                    self.dump_since(cut_at);
                    self.dump_logs(&(0..self.m).collect::<Vec<_>>());
                }
            }
            assert!(
                sus <= succ || gossip_ended.is_some(),
                "{name} on {} ({m} members): live overlap beyond the suspension bound: the old \
                 leader {old} reported Suspended/Lost {} ms after its successor's grant",
                self.kind,
                (sus - succ) / 1000
            );
            suspended_ms = Some((sus - cut_at) / 1000);
            successor_ms = Some((succ - cut_at) / 1000);
        }
        std::thread::sleep(c.hold);
        if !leader_cut {
            // Nobody on the minority is granted what it asked for after the cut (a grant
            // answered just before the cut may be printed just after it: counted apart).
            let rs = self.swarm.records();
            let (late, after) = minority_grants_since(&rs, &sides, cut_at);
            minority_grants = after.len();
            if !late.is_empty() || !after.is_empty() {
                eprintln!(
                    "{name}: minority grants printed after the cut: {late:?} (asked before), \
                     {after:?} (asked after)"
                );
            }
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
            if minority_grants > 0 {
                self.dump_since(cut_at);
            }
            assert_eq!(
                minority_grants, 0,
                "{name}: a minority contender was granted a role it asked for after the cut"
            );
        }
        // The majority side's registrations stay, seen through a majority member.
        let majority: Vec<usize> = (0..m).filter(|s| !sides.contains(s)).collect();
        let want: Vec<String> = majority.iter().map(|s| cid(*s)).collect();
        let mut stalled = Vec::new();
        if let Err(last) = self.wait_registered(majority[0], &want, Duration::from_secs(30)) {
            // Consul 1.8: a client agent whose RPC to a cut server is in flight holds its
            // local state until yamux gives that connection up (up to 40 s), and its TTL-check
            // passes wait behind it, so its clients' sessions end although their side has the
            // quorum (RELIABILITY.md (i); hashicorp/consul#8504, bounded since 1.11.9). Counted
            // apart only when the agent's log names a failed RPC to a server of this cut and
            // the registrations come back; any other loss fails.
            let missing = missing_from(&last, majority.iter().copied());
            let cut_servers: Vec<String> = if c.client_only {
                Vec::new()
            } else {
                sides.iter().map(|s| self.net.host(*s).ip.clone()).collect()
            };
            let back = self.kind == Kind::Consul
                && self
                    .wait_registered(majority[0], &want, Duration::from_secs(45))
                    .is_ok();
            stalled = self.agents_stalled_on(&missing, &agent_logs, &cut_servers);
            if !back || missing.is_empty() || stalled.len() != missing.len() {
                self.dump_sessions_since(cut_at);
                self.dump_logs(&majority);
                panic!(
                    "{name} on {} ({m} members): majority-side registrations {want:?} lost \
                     during the cut: {last} (back later: {back}; behind an agent stalled on a \
                     cut server: {stalled:?})",
                    self.kind
                );
            }
            eprintln!(
                "{name} on {} ({m} members): majority-side registrations of {stalled:?} went \
                 while their Consul agents were stalled on an RPC to a cut server ({cut_servers:?}); \
                 back since",
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
        let mut serving: Vec<&Server> = Vec::new();
        for s in &sides {
            if !c.client_only {
                serving.extend(self.servers.members.get(*s));
            }
            serving.extend(self.agents.and_then(|a| a.members.get(*s)));
        }
        let (recovered_ms, back_ms, serving_ms) =
            self.recover(&format!("everyone back after {name}"), name, &serving);
        // Sessions of the majority side that ended, from the cut until everyone was back: a
        // heal must not cost the side that kept the quorum its sessions (see (l)).
        let majority_ended: Vec<String> = self
            .swarm
            .records()
            .iter()
            .filter(|r| r.t_us >= cut_at && majority.iter().any(|i| r.id == cid(*i)))
            .filter_map(|r| match &r.event {
                Event::Session { session, state } if state == "Expired" => {
                    Some(format!("{} {session}", r.id))
                }
                _ => None,
            })
            .collect();
        if std::env::var_os("COORD_PARTITION_VERBOSE").is_some() {
            eprintln!(
                "{name}: cut at {cut_at}, healed at {heal_at}; sessions, registrations and \
                 errors since the cut:"
            );
            self.dump_sessions_since(cut_at);
            if !majority_ended.is_empty() {
                let which: Vec<usize> = majority
                    .iter()
                    .copied()
                    .filter(|i| {
                        majority_ended
                            .iter()
                            .any(|e| e.starts_with(&format!("{} ", cid(*i))))
                    })
                    .collect();
                self.dump_logs(&which);
            }
        }
        // The old leader has reported Lost by now (its session ended when the successor came).
        let lost_ms = if leader_cut {
            let lost = self.swarm.try_wait_for(Duration::from_secs(30), |rs| {
                lost_at(rs, &old, token, cut_at)
            });
            let Some(lost) = lost else {
                self.dump_since(cut_at);
                panic!(
                    "{name} on {} ({m} members): the old leader {old} never reported Lost of \
                     token {token}",
                    self.kind
                );
            };
            let noticed_us = suspended_ms.map_or(lost, |ms| cut_at + ms * 1000);
            if policy == Policy::Lose && lost > noticed_us + TTL_US / 4 {
                // Under LoseOnSuspend the loss should come with the suspension: show the old
                // leader's own records around it.
                eprintln!(
                    "{name} on {} ({m} members): {old}'s Lost came {} ms after its session left \
                     Connected; its records:",
                    self.kind,
                    (lost - noticed_us) / 1000
                );
                for r in self.swarm.records() {
                    if r.id == old && r.t_us + 1_000_000 >= cut_at && r.t_us <= lost + 100_000 {
                        eprintln!("  {r:?}");
                    }
                }
            }
            Some((lost - cut_at) / 1000)
        } else {
            None
        };
        self.row(
            name,
            &format!(
                "cut {hosts:?} for {} ms; old leader Suspended/Lost after {} / {} ms; successor after {} ms{}; minority grants {minority_grants}; majority leader {}; all reconnected with one leader {recovered_ms} ms after heal; majority registrations lost 0{}; majority sessions ended {majority_ended:?}; all registrations back {back_ms} ms after heal; cut servers serving again {} ms after heal",
                (heal_at - cut_at) / 1000,
                opt(suspended_ms),
                opt(lost_ms),
                opt(successor_ms),
                gossip_ended.map_or(String::new(), |t| format!(
                    " (the old leader's agent marked failed by gossip {} ms after the cut)",
                    t.saturating_sub(cut_at) / 1000
                )),
                majority_leader.as_deref().unwrap_or("-"),
                if stalled.is_empty() {
                    String::new()
                } else {
                    let ids: Vec<String> = stalled.iter().map(|i| cid(*i)).collect();
                    format!(" (gone and back behind an agent stalled on a cut server: {ids:?})")
                },
                opt(serving_ms),
            ),
        );
    }

    /// The sizes of the Consul agents' logs now (empty elsewhere): where a cut's lines start.
    fn agent_log_sizes(&self) -> Vec<u64> {
        self.agents.map_or_else(Vec::new, log_sizes)
    }

    /// Consul: when a server first logged, after `from` (its log sizes at the cut), that
    /// agent `i`'s node failed and its `serfHealth` is critical (µs since the epoch).
    fn marked_failed(&self, i: usize, from: &[u64]) -> Option<u64> {
        let agent = self.agents?.members.get(i)?;
        let needle = format!(
            "member failed, marking health critical: member={}",
            agent.name()
        );
        self.servers
            .members
            .iter()
            .zip(from)
            .flat_map(|(s, &start)| log_lines(s.log_path(), start, |l| l.contains(&needle)))
            .filter_map(|l| log_time_us(&l))
            .min()
    }

    /// Which of the agents `which` logged, after `from` (their log sizes at the cut), an RPC
    /// that failed on one of the servers `cut_servers`: agents stalled behind that server.
    fn agents_stalled_on(
        &self,
        which: &[usize],
        from: &[u64],
        cut_servers: &[String],
    ) -> Vec<usize> {
        let Some(agents) = self.agents else {
            return Vec::new();
        };
        which
            .iter()
            .copied()
            .filter(|&i| {
                let (Some(agent), Some(&start)) = (agents.members.get(i), from.get(i)) else {
                    return false;
                };
                !log_lines(agent.log_path(), start, |l| {
                    l.contains("RPC failed to server")
                        && cut_servers
                            .iter()
                            .any(|ip| l.contains(&format!("server={ip}:8300")))
                })
                .is_empty()
            })
            .collect()
    }

    /// Right after a heal, waits until everyone is back: how long until all are connected with
    /// one writing leader ([`Run::settle`]), until every registration is back, and until the
    /// cut servers `serving` (members, and on Consul agents) all answer as ready again
    /// (`None`: none watched, or not within 90 s), measured side by side from now. The last is
    /// the part of the wait that is the servers' own rejoining, not the clients'.
    fn recover(&self, what: &str, name: &str, serving: &[&Server]) -> (u128, u128, Option<u128>) {
        let t = Instant::now();
        std::thread::scope(|scope| {
            let back = scope.spawn(|| self.all_back(name));
            let ready = scope.spawn(|| serving_again(serving));
            self.settle(what);
            let recovered_ms = t.elapsed().as_millis();
            let back_ms = back.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            let ready_ms = ready
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (recovered_ms, back_ms, ready_ms)
        })
    }

    /// Waits (bounded) until every contender's registration is back after a heal; how long.
    fn all_back(&self, name: &str) -> u128 {
        let all: Vec<String> = (0..self.m).map(cid).collect();
        let from = now_us();
        self.wait_registered(0, &all, Duration::from_secs(90))
            .unwrap_or_else(|last| {
                self.dump_sessions_since(from);
                // The missing ones' members and agents: what their side of the store saw.
                let missing = missing_from(&last, 0..self.m);
                self.dump_logs(&missing);
                panic!(
                    "{name} on {} ({} members): registrations not back 90 s after the heal: \
                     {last}",
                    self.kind, self.m
                )
            })
    }

    /// Every contender's session changes, registrations and errors since `cut_at`.
    fn dump_sessions_since(&self, cut_at: u64) {
        for r in self.swarm.records() {
            if r.t_us + 5_000_000 >= cut_at
                && matches!(
                    r.event,
                    Event::Session { .. } | Event::Registered { .. } | Event::Error { .. }
                )
            {
                eprintln!("  {r:?}");
            }
        }
    }

    /// The last lines of the logs of members `which` and of their contenders' agents.
    fn dump_logs(&self, which: &[usize]) {
        let agents = self.agents.map(|a| ("agent", a));
        for (what, c) in [("member", self.servers)].into_iter().chain(agents) {
            for i in which {
                if let Some(s) = c.members.get(*i) {
                    eprintln!(
                        "--- {what} {i} ({}):\n{}",
                        s.log_path().display(),
                        s.log_tail(40)
                    );
                }
            }
        }
    }

    fn dump_since(&self, cut_at: u64) {
        for r in self.swarm.records() {
            if r.t_us + 5_000_000 >= cut_at && !matches!(r.event, Event::Write { .. }) {
                eprintln!("  {r:?}");
            }
        }
    }

    fn next_rand(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    fn flap(&mut self, secs: u64) {
        self.settle("a settled cluster before flapping");
        let m = self.m;
        let start = Instant::now();
        let mut rounds = 0;
        let mut cuts = 0;
        while start.elapsed() < Duration::from_secs(secs) {
            // One side, or on 5 members up to two: always a minority.
            let count = 1 + self.next_rand(m.div_ceil(2) - 1);
            let mut sides: Vec<usize> = Vec::new();
            while sides.len() < count {
                let s = self.next_rand(m);
                if !sides.contains(&s) {
                    sides.push(s);
                }
            }
            let hosts: Vec<usize> = sides.iter().flat_map(|&s| [s, m + s]).collect();
            let cut_at = now_us();
            self.net.isolate(&hosts).expect("isolate");
            let held = 500 + self.next_rand(2500) as u64;
            std::thread::sleep(Duration::from_millis(held));
            self.net.heal_all().expect("heal");
            for s in &sides {
                self.swarm.faults.push(FaultWindow {
                    id: Some(cid(*s)),
                    kind: "partition".into(),
                    from_us: cut_at,
                    // A session the cut ended may be noticed a moment after the heal.
                    to_us: now_us() + TTL_US,
                });
            }
            cuts += sides.len();
            let pause = 500 + self.next_rand(2500) as u64;
            std::thread::sleep(Duration::from_millis(pause));
            rounds += 1;
        }
        let (recovered_ms, back_ms, _) =
            self.recover("everyone back after flapping", "flapping", &[]);
        let since = now_us().saturating_sub(start.elapsed().as_micros() as u64);
        let rs = self.swarm.records();
        let grants = |role: &str| {
            rs.iter()
                .filter(|r| r.t_us >= since)
                .filter(|r| matches!(&r.event, Event::Granted { role: x, .. } if x == role))
                .count()
        };
        let (elections, locks) = (grants("election"), grants("lock"));
        // The lock is in use when contenders ask for it (a short flap may grant none on Consul,
        // whose recovery after a cut takes longer than the pauses between cuts).
        let lock_asks = rs
            .iter()
            .filter(|r| r.t_us >= since)
            .filter(|r| matches!(&r.event, Event::Campaigning { role } if role == "lock"))
            .count();
        // The election is in use when a leader writes (a grant needs a cut of the leader).
        let led = self
            .fence
            .log()
            .iter()
            .filter(|w| w.accepted && w.t_us >= since)
            .count();
        let label = format!("flapping [{}]", self.policy.label());
        self.row(
            &label,
            &format!(
                "{rounds} cut/heal rounds ({cuts} sides cut) in {secs} s; {elections} election and {locks} lock grants, {led} leader writes accepted meanwhile; all reconnected with one leader {recovered_ms} ms after the last heal; all registrations back {back_ms} ms after it"
            ),
        );
        assert!(
            lock_asks > 0 && led > 0,
            "flapping on {}: the lock and the election were not in use ({lock_asks} lock \
             requests, {led} leader writes)",
            self.kind
        );
    }

    /// Asks a fresh client on the never-cut observer host, connected through member
    /// `member`: `what` of it, bounded to 10 s.
    fn look<T: Send + 'static>(
        &self,
        member: usize,
        what: fn(coord::Client) -> BoxFuture<Result<T, String>>,
    ) -> Result<T, String> {
        let u = url(self.kind, &self.net.host(member).ip, &self.ns);
        let observer = self.net.host(2 * self.m).ns.clone();
        run_in(&observer, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let look = async {
                    let client = coord::connect(&u).await.map_err(|e| e.to_string())?;
                    let found = what(client.clone()).await;
                    let _ = client.close().await;
                    found
                };
                tokio::time::timeout(Duration::from_secs(10), look)
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()))
            })
        })
        .map_err(|e| e.to_string())?
    }

    /// The contender ids registered under `part-svc`, seen through member `member`.
    fn registered(&self, member: usize) -> Result<Vec<String>, String> {
        self.look(member, |client| {
            Box::pin(async move {
                let found = client.registry().discover("part-svc").await;
                let mut ids: Vec<String> = found
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                ids.sort();
                Ok(ids)
            })
        })
    }

    /// The values of the election's candidates in queue order, seen through member 0.
    fn candidates(&self) -> Result<Vec<String>, String> {
        let all = self.candidate_nodes()?;
        Ok(all.into_iter().map(|(value, _, _)| value).collect())
    }

    /// Every candidate as `(value, node, token)`, in order (diagnostics).
    fn candidate_nodes(&self) -> Result<Vec<(String, String, u64)>, String> {
        self.look(0, |client| {
            Box::pin(async move {
                let all = client
                    .election("part")
                    .map_err(|e| e.to_string())?
                    .participants()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(all
                    .iter()
                    .map(|p| {
                        let value = String::from_utf8_lossy(&p.value).into_owned();
                        (value, p.node.to_string(), p.token)
                    })
                    .collect())
            })
        })
    }

    /// Orphans after the last heal: candidates beyond one per contender, once the candidates
    /// had time to settle (bounded: 3 TTLs); the last answer is printed.
    fn orphans(&self) -> usize {
        let want: Vec<String> = (0..self.m).map(cid).collect();
        let t = Instant::now();
        loop {
            let got = self.candidates().map(|mut ids| {
                ids.sort();
                ids
            });
            if let Ok(ids) = &got {
                if *ids == want || t.elapsed() > Duration::from_micros(3 * TTL_US) {
                    eprintln!("{} candidates after the last heal: {ids:?}", self.kind);
                    return ids.len().saturating_sub(want.len())
                        + want.iter().filter(|w| !ids.contains(w)).count();
                }
            } else if t.elapsed() > Duration::from_secs(30) {
                panic!("{}: cannot list the candidates: {got:?}", self.kind);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
        let line = format!(
            "PARTITION-ROW {} {}m | {scenario} | {text}",
            self.kind, self.m
        );
        println!("{line}");
        self.rows.push(line);
    }
}

/// How long until every server of `servers` is ready again (a ZooKeeper member serving, an
/// etcd member with a leader, a Consul server or agent that knows the leader and whose node's
/// `serfHealth` passes: sessions can be made there only then), polled every 50 ms; `None` if
/// `servers` is empty or not all within 90 s.
fn serving_again(servers: &[&Server]) -> Option<u128> {
    if servers.is_empty() {
        return None;
    }
    let t = Instant::now();
    let mut waiting: Vec<&Server> = servers.to_vec();
    while t.elapsed() < Duration::from_secs(90) {
        waiting.retain(|s| s.ready(Duration::from_millis(500)).is_err());
        if waiting.is_empty() {
            return Some(t.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// When `old` first reported, after `cut_at`, that it may no longer lead with `token`: its
/// hold `Suspended` or `Lost`, or its session no longer connected.
fn noticed(rs: &[Record], old: &str, token: u64, cut_at: u64) -> Option<u64> {
    rs.iter()
        .filter(|r| r.t_us >= cut_at && r.id == old)
        .find(|r| match &r.event {
            Event::Session { state, .. } => !connected(state),
            Event::HoldState {
                role,
                token: t,
                state,
            } => role == "election" && *t == token && state == "Suspended",
            Event::Lost { role, token: t } => role == "election" && *t == token,
            _ => false,
        })
        .map(|r| r.t_us)
}

/// The grants printed by contenders of `sides` after `cut_at`: those of a request made before
/// the cut (answered just before it), and those of a request made after it (impossible
/// without a server: the violation).
fn minority_grants_since(
    rs: &[Record],
    sides: &[usize],
    cut_at: u64,
) -> (Vec<Record>, Vec<Record>) {
    let (mut late, mut after) = (Vec::new(), Vec::new());
    for s in sides {
        let id = cid(*s);
        // Roles whose current request (Campaigning) was made after the cut.
        let mut asked_after: Vec<String> = Vec::new();
        for r in rs.iter().filter(|r| r.id == id && r.t_us >= cut_at) {
            match &r.event {
                Event::Campaigning { role } => asked_after.push(role.clone()),
                Event::Granted { role, .. } if asked_after.contains(role) => after.push(r.clone()),
                Event::Granted { .. } => late.push(r.clone()),
                _ => {}
            }
        }
    }
    (late, after)
}

/// When `old` reported the loss of its leadership `token` after `cut_at`.
fn lost_at(rs: &[Record], old: &str, token: u64, cut_at: u64) -> Option<u64> {
    rs.iter()
        .find(|r| {
            r.t_us >= cut_at
                && r.id == old
                && matches!(&r.event, Event::Lost { role, token: t } if role == "election" && *t == token)
        })
        .map(|r| r.t_us)
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

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The scenarios of a 3-member cluster (see the module docs).
fn scenarios_3(run: &mut Run<'_>) {
    let hold = Duration::from_micros(TTL_US);
    for policy in [Policy::Lose, Policy::Tolerate] {
        let cuts = [
            Cut {
                name: "leader-side-cut (2|1, leader on minority)",
                sides: &[0],
                client_only: false,
                hold,
            },
            Cut {
                name: "client-cut (leader's client only)",
                sides: &[0],
                client_only: true,
                hold,
            },
            Cut {
                name: "heal-after-ttl (leader side cut for 4 TTLs)",
                sides: &[0],
                client_only: false,
                hold: hold * 4,
            },
        ];
        for c in cuts {
            run.cut(c, policy);
        }
    }
    let minority = Cut {
        name: "minority-cut (2|1, leader on majority)",
        sides: &[1],
        client_only: false,
        hold: hold * 2,
    };
    run.cut(minority, Policy::Tolerate);
}

/// The scenarios of a 5-member cluster: the 3|2 split with the leader on either side.
fn scenarios_5(run: &mut Run<'_>) {
    let hold = Duration::from_micros(TTL_US);
    for policy in [Policy::Lose, Policy::Tolerate] {
        let c = Cut {
            name: "split-3|2 (leader on the minority of 2)",
            sides: &[0, 1],
            client_only: false,
            hold,
        };
        run.cut(c, policy);
    }
    let c = Cut {
        name: "split-3|2-majority (leader on the majority of 3)",
        sides: &[1, 2],
        client_only: false,
        hold: hold * 2,
    };
    run.cut(c, Policy::Tolerate);
    let c = Cut {
        name: "leader-side-cut (4|1, leader on minority)",
        sides: &[0],
        client_only: false,
        hold,
    };
    run.cut(c, Policy::Lose);
}

fn partitions(kind: Kind, m: usize) {
    // Declared first so it is dropped last: the processes inside go before their namespaces.
    let mut net = match Net::new(2 * m + 1) {
        Ok(n) => n,
        Err(e) => return skip_or_fail("network namespaces not available", e).unwrap_or(()),
    };
    let members: Vec<_> = net.hosts()[..m].to_vec();
    let clients: Vec<_> = net.hosts()[m..2 * m].to_vec();
    let started = match kind {
        Kind::ZooKeeper => Cluster::zookeeper_in(&members),
        Kind::Etcd => Cluster::etcd_in(&members),
        Kind::Consul => Cluster::consul_in(&members),
    };
    let cluster = match started {
        Ok(c) => c,
        Err(e) => return skip_or_fail(&format!("{kind} cluster in namespaces"), e).unwrap_or(()),
    };
    // Consul's clients talk to a client agent in their own namespace.
    let agents = match kind {
        Kind::Consul => match Cluster::consul_agents_in(&clients, &members) {
            Ok(a) => Some(a),
            Err(e) => return skip_or_fail("Consul client agents in namespaces", e).unwrap_or(()),
        },
        _ => None,
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
    for i in 0..m {
        let addr = match kind {
            Kind::Consul => &clients[i].ip,
            _ => &members[i].ip,
        };
        let u = url(kind, addr, &ns);
        let wrapper = clients[i].exec_prefix();
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
                "--suspend-policy",
                "lose",
            ],
        );
    }
    let flap_secs = std::env::var("COORD_PARTITION_FLAP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut run = Run {
        kind,
        m,
        net: &mut net,
        swarm: &mut swarm,
        fence: &fence,
        servers: &cluster,
        agents: agents.as_ref(),
        ns: ns.clone(),
        policy: Policy::Lose,
        policy_since: 0,
        rows: Vec::new(),
        rng: now_us() | 1,
    };
    let t0 = Instant::now();
    if m == 3 {
        scenarios_3(&mut run);
    } else {
        scenarios_5(&mut run);
    }
    run.flap(flap_secs);
    let orphans = run.orphans();
    run.row(
        "after the last heal",
        &format!("orphan candidates {orphans} (want 0)"),
    );
    let rows = std::mem::take(&mut run.rows);
    drop(run);
    let killed = swarm.quit_all(Duration::from_secs(20));
    let end = now_us();
    let mut logs = BTreeMap::new();
    logs.insert("election".to_owned(), fence.log());
    logs.insert("lock".to_owned(), lock_fence.log());
    let report = history::check(&swarm.records(), &swarm.faults, &logs, end);
    println!(
        "partitions on {kind} ({m} members): grants {:?}, {} fenced overlaps, {} overlaps of a suspended holder (longest {} us), {} writes accepted, {} stale rejected, {} stale accepted; {:?} in all",
        report.grants,
        report.fenced_overlaps,
        report.suspended_overlaps,
        report.max_suspended_overlap_us,
        report.writes_accepted,
        report.stale_writes_rejected,
        report.stale_writes_accepted,
        t0.elapsed()
    );
    for r in &rows {
        eprintln!("{r}");
    }
    if !report.ok() {
        // Which sessions the servers ended, and when (ZooKeeper's leader logs each expiry):
        // to tell an overlap whose older holder's session the quorum expired behind its back.
        for (i, s) in cluster.members.iter().enumerate() {
            for l in log_lines(s.log_path(), 0, |l| l.contains("Expiring session")) {
                eprintln!("member {i}: {l}");
            }
        }
    }
    assert!(report.ok(), "checker: {report:#?}");
    assert_eq!(orphans, 0, "orphan candidates after the last heal");
    assert_eq!(report.stale_writes_accepted, 0);
    assert!(killed.is_empty(), "did not quit in time: {killed:?}");
    assert!(swarm.panics().is_empty(), "panics: {:?}", swarm.panics());
}

/// Consul's log times, as the overlap check reads them.
#[test]
fn consul_log_times_are_read() {
    let l = "    2026-12-04T23:31:32.844Z [INFO]  agent.server: member failed";
    assert_eq!(log_time_us(l), Some(1_796_427_092_844_000));
    assert_eq!(
        log_time_us("2000-02-29T00:00:00.000Z [WARN] x"),
        Some(951_782_400_000_000)
    );
    assert_eq!(log_time_us("not a time"), None);
}

#[test]
fn partitions_zookeeper() {
    partitions(Kind::ZooKeeper, 3);
}

#[test]
fn partitions_etcd() {
    partitions(Kind::Etcd, 3);
}

#[test]
fn partitions_consul() {
    partitions(Kind::Consul, 3);
}

#[test]
fn partitions5_zookeeper() {
    partitions(Kind::ZooKeeper, 5);
}

#[test]
fn partitions5_etcd() {
    partitions(Kind::Etcd, 5);
}

#[test]
fn partitions5_consul() {
    partitions(Kind::Consul, 5);
}

/// Runs `curl args…` in `host`'s namespace; its stdout and how long it took.
fn curl_in(host: &coord_testkit::netns::Host, args: &[&str]) -> (String, Duration) {
    let p = host.exec_prefix();
    let t = Instant::now();
    let out = std::process::Command::new(&p[0])
        .args(&p[1..])
        .arg("curl")
        .args(["-s", "-m", "90"])
        .args(args)
        .output();
    let text = out.map_or_else(
        |e| format!("cannot run curl: {e}"),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    );
    (text, t.elapsed())
}

/// The reproduction of finding (i), a Consul 1.8 behaviour rather than coord's: a client
/// agent syncs a change to the server it talks to; that server is cut off right then; every
/// TTL-check pass on that agent then waits for the sync, until yamux gives the connection up
/// (up to 40 s), so the check, and the sessions that depend on it, fail although the agent
/// and the two other servers (the quorum) are fine. Ignored in CI (a minute, and it tests
/// Consul); run it with `--include-ignored consul_agent_stalls`.
#[test]
#[ignore = "reproduces a Consul 1.8 agent behaviour (docs/RELIABILITY.md, (i)); run with --include-ignored"]
fn consul_agent_stalls_behind_a_cut_server() {
    let mut net = match Net::new(4) {
        Ok(n) => n,
        Err(e) => return skip_or_fail("network namespaces not available", e).unwrap_or(()),
    };
    let members: Vec<_> = net.hosts()[..3].to_vec();
    let agent = net.host(3).clone();
    let servers = Cluster::consul_in(&members).expect("Consul servers in namespaces");
    let agents = Cluster::consul_agents_in(std::slice::from_ref(&agent), &members)
        .expect("a Consul client agent");
    let base = format!("http://{}:8500", agent.ip);
    let check = r#"{"ID":"stall-ttl","Name":"stall-ttl","TTL":"4s","Status":"passing"}"#;
    curl_in(
        &agent,
        &[
            "-X",
            "PUT",
            "-d",
            check,
            &format!("{base}/v1/agent/check/register"),
        ],
    );
    // An RPC, so that the agent holds a connection to the server it picked.
    curl_in(&agent, &[&format!("{base}/v1/catalog/nodes")]);
    let ss = net.command(3, "ss").arg("-tn").output().expect("ss");
    let conns = String::from_utf8_lossy(&ss.stdout).into_owned();
    let target = members
        .iter()
        .position(|m| conns.contains(&format!("{}:8300", m.ip)))
        .expect("the agent's connection to a server");
    let cut = Instant::now();
    net.isolate(&[target]).expect("cut the agent's server");
    // A change the agent syncs at once: its RPC goes to the server just cut.
    let syncer = {
        let agent = agent.clone();
        let base = base.clone();
        std::thread::spawn(move || {
            let svc = r#"{"ID":"stall-svc","Name":"stall-svc","Port":1}"#;
            let url = format!("{base}/v1/agent/service/register");
            curl_in(&agent, &["-X", "PUT", "-d", svc, &url]).1
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let pass = format!("{base}/v1/agent/check/pass/stall-ttl");
    let mut longest = Duration::ZERO;
    while cut.elapsed() < Duration::from_secs(50) {
        let (_, took) = curl_in(&agent, &["-X", "PUT", &pass]);
        longest = longest.max(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    let register_took = syncer.join().expect("the syncing thread");
    net.heal_all().expect("heal");
    let log = agents.members[0].log_tail(40);
    eprintln!(
        "Consul agent stall: the server it synced to cut; the sync's register answered after \
         {register_took:?}, the longest TTL-check pass took {longest:?}; agent log:\n{log}"
    );
    drop(agents);
    drop(servers);
    assert!(
        longest > Duration::from_secs(4),
        "no check pass waited longer than the check's TTL ({longest:?}): the agent did not stall"
    );
}

/// The mode of the ZooKeeper member at `ip` (`leader`, `follower`), asked with `srvr` from
/// host `host`'s namespace.
fn zk_mode(net: &Net, host: usize, ip: &str) -> String {
    let script = format!("exec 3<>/dev/tcp/{ip}/2181; echo srvr >&3; cat <&3");
    let out = net.command(host, "bash").args(["-c", &script]).output();
    let text = out.map_or_else(
        |e| e.to_string(),
        |o| String::from_utf8_lossy(&o.stdout).into_owned(),
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .unwrap_or("unknown")
        .trim()
        .to_owned()
}

/// What a client connected to a follower saw while the leader was cut off: its session's
/// states (ms since the cut), whether its ephemeral key outlived the cut, and the servers'
/// session expiries and leader shutdowns.
struct LeaderCut {
    states: Vec<(u128, String)>,
    kept: bool,
    servers_said: Vec<String>,
}

/// Cuts the leader of a fresh 3-member ensemble (`syncLimit` `sync_limit`) off for `cut`,
/// with a client (2 s sessions) connected to a follower from its own host.
fn cut_zookeeper_leader(sync_limit: u32, cut: Duration) -> Option<LeaderCut> {
    use coord::CreateMode;
    use futures::StreamExt;
    let mut net = match Net::new(4) {
        Ok(n) => n,
        Err(e) => {
            skip_or_fail("network namespaces not available", e);
            return None;
        }
    };
    let members: Vec<_> = net.hosts()[..3].to_vec();
    let cluster =
        Cluster::zookeeper_in_with(&members, sync_limit).expect("ZooKeeper in namespaces");
    let modes: Vec<String> = members.iter().map(|m| zk_mode(&net, 3, &m.ip)).collect();
    let leader = modes.iter().position(|m| m == "leader").expect("a leader");
    let follower = (leader + 1) % 3;
    let u = format!("zk://{}:2181/lc?session_timeout=2s", members[follower].ip);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Instant>();
    let (cut_tx, cut_rx) = std::sync::mpsc::channel::<Instant>();
    let ns = net.host(3).ns.clone();
    let client_side = std::thread::spawn(move || {
        run_in(&ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = coord::connect(&u).await.expect("connect");
                let session = client.session().await.expect("session");
                let path = coord::Path::new("/mine").expect("path");
                session
                    .create(&path, b"x", CreateMode::Exact)
                    .await
                    .expect("ephemeral");
                let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut states = session.states();
                let log = seen.clone();
                tokio::spawn(async move {
                    while let Some(st) = states.next().await {
                        if let Ok(mut l) = log.lock() {
                            l.push((Instant::now(), format!("{st:?}")));
                        }
                    }
                });
                let _ = ready_tx.send(Instant::now());
                let cut_at = tokio::task::spawn_blocking(move || cut_rx.recv())
                    .await
                    .expect("join")
                    .expect("the cut's start");
                // Past the cut, a leader election and a reconnection.
                tokio::time::sleep(Duration::from_secs(6)).await;
                let kept = client.backend().exists(&path).await;
                let states = seen
                    .lock()
                    .map(|l| {
                        l.iter()
                            .map(|(t, s)| {
                                (t.saturating_duration_since(cut_at).as_millis(), s.clone())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (states, matches!(kept, Ok(Some(_))))
            })
        })
    });
    ready_rx.recv().expect("the client is ready");
    std::thread::sleep(Duration::from_millis(500));
    let cut_at = Instant::now();
    net.isolate(&[leader]).expect("cut the leader");
    std::thread::sleep(cut);
    net.heal_all().expect("heal");
    let _ = cut_tx.send(cut_at);
    let (states, kept) = client_side
        .join()
        .expect("client thread")
        .expect("in the namespace");
    let servers_said = cluster
        .members
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            log_lines(s.log_path(), 0, |l| {
                l.contains("Expiring session") || l.contains("Shutdown called")
            })
            .into_iter()
            .map(move |l| format!("member {i}: {}", l.trim()))
        })
        .collect();
    Some(LeaderCut {
        states,
        kept,
        servers_said,
    })
}

/// The reproduction of finding (f): a ZooKeeper leader cut off for longer than a session's
/// timeout but shorter than `syncLimit` × `tickTime` keeps its leadership, expires the sessions
/// of the clients of the other members (their touches stopped reaching it), and commits those
/// expiries once the cut heals: clients that stayed connected to healthy followers the whole
/// time learn of it only then. With `(syncLimit + 1)` × `tickTime` under the session timeout
/// (the partition tests' ensembles) the leader gives up first and the sessions live. Ignored
/// in CI (a minute and a half); run it with `--include-ignored zookeeper_leader_cut`.
#[test]
#[ignore = "reproduces a ZooKeeper configuration hazard (docs/RELIABILITY.md, (f)); run with --include-ignored"]
fn zookeeper_leader_cut_expires_sessions_of_connected_clients_unless_sync_limit_is_short() {
    // tickTime 500 ms, sessions of 2 s: syncLimit 5 (2.5 s) against 2 (1 s).
    for (limit, cut_ms) in [(5, 1900), (5, 2000), (2, 1300), (2, 1900), (2, 2600)] {
        let Some(r) = cut_zookeeper_leader(limit, Duration::from_millis(cut_ms)) else {
            return;
        };
        eprintln!(
            "syncLimit {limit}, leader cut for {cut_ms} ms: the follower's client saw {:?}; its \
             ephemeral {}; the servers said:\n  {}",
            r.states,
            if r.kept { "kept" } else { "gone" },
            r.servers_said.join("\n  ")
        );
        if limit == 2 {
            assert!(
                r.kept,
                "syncLimit 2: the session of a client of a healthy follower ended"
            );
        }
    }
}
