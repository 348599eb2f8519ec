//! Deterministic simulation of the election and lock recipes on the in-memory backend:
//! proptest generates schedules of campaigns, resigns, session expiries and crashes,
//! partitions, cancelled campaigns and lock timeouts, runs each under tokio's paused clock, and
//! checks the invariants after every step. A failure prints the minimal (shrunk) schedule.
//!
//! Invariants: never two holders (of the leadership, of the lock) at once, by the holders' own
//! view (`state() == Holding`); fencing tokens strictly increasing across successive holders;
//! after everything is released and every TTL has run out, no candidate or lock node is left.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coord::election::{Election, Leadership};
use coord::lock::{Lock, LockGuard};
use coord::mem::MemSession;
use coord::recipes::{HoldState, SuspendPolicy};
use coord::{Client, Path};
use proptest::prelude::*;
use tokio::task::JoinHandle;

const NODES: usize = 4;
const TTL_MS: u64 = 1000;

#[derive(Clone, Debug)]
enum Op {
    Campaign(usize),
    Resign(usize),
    Expire(usize),
    Crash(usize),
    Partition(usize, u64),
    CancelCampaign(usize),
    LockTimeout(usize, u64),
    Unlock(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NODES;
    prop_oneof![
        3 => n.clone().prop_map(Op::Campaign),
        2 => n.clone().prop_map(Op::Resign),
        1 => n.clone().prop_map(Op::Expire),
        1 => n.clone().prop_map(Op::Crash),
        1 => (n.clone(), 1..3 * TTL_MS).prop_map(|(i, d)| Op::Partition(i, d)),
        1 => n.clone().prop_map(Op::CancelCampaign),
        2 => (n.clone(), 1..2 * TTL_MS).prop_map(|(i, d)| Op::LockTimeout(i, d)),
        2 => n.prop_map(Op::Unlock),
        3 => (1..2 * TTL_MS).prop_map(Op::Advance),
    ]
}

struct Node {
    client: Client,
    election: Election,
    lock: Lock,
    campaign: Option<JoinHandle<()>>,
    locking: Option<JoinHandle<()>>,
}

/// The roles held now, by node. The acquiring task itself puts its role here, after checking
/// that nobody else holds it at that very instant (before any other task has run).
type Table<T> = Arc<Mutex<Vec<Option<T>>>>;

/// Something with a fencing token and a state.
trait Role: Send + 'static {
    fn token(&self) -> u64;
    fn holding(&self) -> bool;
}

impl Role for Leadership {
    fn token(&self) -> u64 {
        self.fencing_token()
    }
    fn holding(&self) -> bool {
        self.state() == HoldState::Holding
    }
}

impl Role for LockGuard {
    fn token(&self) -> u64 {
        self.fencing_token()
    }
    fn holding(&self) -> bool {
        self.state() == HoldState::Holding
    }
}

/// Records an acquired role: no other holder at this instant, token larger than every earlier.
fn acquired<T: Role>(what: &str, i: usize, role: T, table: &Table<T>, log: &Mutex<Vec<u64>>) {
    let mut t = table.lock().unwrap();
    let others = t.iter().flatten().filter(|r| r.holding()).count();
    assert_eq!(
        others, 0,
        "node {i} acquired the {what} while another holds it"
    );
    let mut log = log.lock().unwrap();
    if let Some(last) = log.last() {
        assert!(
            role.token() > *last,
            "{what} token {} after {last}",
            role.token()
        );
    }
    log.push(role.token());
    t[i] = Some(role);
}

struct World {
    nodes: Vec<Node>,
    /// Tokens in the order the roles were obtained, logged by the acquiring task itself the
    /// moment it returns (two acquisitions may complete within one simulation step).
    leader_tokens: Arc<Mutex<Vec<u64>>>,
    lock_tokens: Arc<Mutex<Vec<u64>>>,
    leaders: Table<Leadership>,
    holders: Table<LockGuard>,
}

impl World {
    async fn new(store: &str, policy: SuspendPolicy) -> World {
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let client = coord::connect(&format!("{store}?session_ttl={TTL_MS}ms"))
                .await
                .unwrap();
            nodes.push(Node {
                election: client.election("sim").unwrap().with_suspend_policy(policy),
                lock: client.lock("sim").unwrap().with_suspend_policy(policy),
                client,
                campaign: None,
                locking: None,
            });
        }
        World {
            nodes,
            leader_tokens: Arc::default(),
            lock_tokens: Arc::default(),
            leaders: Arc::new(Mutex::new((0..NODES).map(|_| None).collect())),
            holders: Arc::new(Mutex::new((0..NODES).map(|_| None).collect())),
        }
    }

    async fn session_of(&self, i: usize) -> Option<std::sync::Arc<dyn coord::Session>> {
        self.nodes[i].client.current_session().await
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Campaign(i) => {
                let held = self.leaders.lock().unwrap()[i]
                    .as_ref()
                    .is_some_and(|l| l.is_leading());
                let n = &mut self.nodes[i];
                if n.campaign.is_none() && !held {
                    // An old, lost leadership is dropped (which cleans up) before rejoining.
                    let old = self.leaders.lock().unwrap()[i].take();
                    drop(old);
                    let e = n.election.clone();
                    let (table, log) = (self.leaders.clone(), self.leader_tokens.clone());
                    n.campaign = Some(tokio::spawn(async move {
                        if let Ok(l) = e.campaign(b"x").await {
                            acquired("leadership", i, l, &table, &log);
                        }
                    }));
                }
            }
            Op::Resign(i) => {
                let l = self.leaders.lock().unwrap()[i].take();
                if let Some(l) = l {
                    let _ = l.resign().await;
                }
            }
            Op::Expire(i) => {
                if let Some(s) = self.session_of(i).await {
                    s.as_any()
                        .downcast_ref::<MemSession>()
                        .unwrap()
                        .expire_now();
                }
            }
            Op::Crash(i) => {
                if let Some(s) = self.session_of(i).await {
                    s.as_any().downcast_ref::<MemSession>().unwrap().crash();
                }
            }
            Op::Partition(i, ms) => {
                if let Some(s) = self.session_of(i).await {
                    s.as_any()
                        .downcast_ref::<MemSession>()
                        .unwrap()
                        .partition(Duration::from_millis(ms));
                }
            }
            Op::CancelCampaign(i) => {
                if let Some(c) = self.nodes[i].campaign.take() {
                    c.abort();
                }
            }
            Op::LockTimeout(i, ms) => {
                let held = self.holders.lock().unwrap()[i]
                    .as_ref()
                    .is_some_and(|g| g.is_held());
                let n = &mut self.nodes[i];
                if n.locking.is_none() && !held {
                    let old = self.holders.lock().unwrap()[i].take();
                    drop(old);
                    let l = n.lock.clone();
                    let (table, log) = (self.holders.clone(), self.lock_tokens.clone());
                    n.locking = Some(tokio::spawn(async move {
                        if let Ok(g) = l.lock_timeout(Duration::from_millis(ms)).await {
                            acquired("lock", i, g, &table, &log);
                        }
                    }));
                }
            }
            Op::Unlock(i) => {
                let g = self.holders.lock().unwrap()[i].take();
                if let Some(g) = g {
                    let _ = g.unlock().await;
                }
            }
            Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        settle().await;
        self.collect().await;
        self.check();
    }

    /// Reaps finished acquisitions; a panic inside one (a violated invariant) fails the run.
    async fn collect(&mut self) {
        for n in &mut self.nodes {
            for slot in [&mut n.campaign, &mut n.locking] {
                if slot.as_ref().is_some_and(|c| c.is_finished()) {
                    if let Some(c) = slot.take() {
                        c.await.unwrap();
                    }
                }
            }
        }
    }

    fn check(&self) {
        for (what, log) in [("leader", &self.leader_tokens), ("lock", &self.lock_tokens)] {
            let log = log.lock().unwrap();
            assert!(
                log.windows(2).all(|w| w[0] < w[1]),
                "{what} tokens not strictly increasing: {log:?}"
            );
        }
        let leaders = self
            .leaders
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter(|l| l.holding())
            .count();
        assert!(leaders <= 1, "{leaders} leaders at once");
        let holders = self
            .holders
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter(|g| g.holding())
            .count();
        assert!(holders <= 1, "{holders} lock holders at once");
    }

    /// Releases everything, lets every TTL run out, and checks that nothing is left behind.
    async fn finish(mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.campaign.take() {
                c.abort();
            }
            if let Some(c) = n.locking.take() {
                c.abort();
            }
        }
        let leaders: Vec<_> = self
            .leaders
            .lock()
            .unwrap()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for l in leaders {
            let _ = l.resign().await;
        }
        let holders: Vec<_> = self
            .holders
            .lock()
            .unwrap()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for g in holders {
            let _ = g.unlock().await;
        }
        tokio::time::sleep(Duration::from_millis(4 * TTL_MS)).await;
        settle().await;
        let c = &self.nodes[0].client;
        for dir in ["/elections/sim", "/locks/sim"] {
            let left = c
                .children(&Path::new(dir).unwrap())
                .await
                .unwrap_or_default();
            assert!(left.is_empty(), "orphans under {dir}: {left:?}");
        }
    }
}

/// Lets spawned tasks run to quiescence without advancing the clock much.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn run(schedule: &[Op], policy: SuspendPolicy) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // Every node of one schedule shares a fresh named store.
        let name = format!("mem://sim-{}", unique());
        let mut world = World::new(&name, policy).await;
        for op in schedule {
            world.apply(op).await;
        }
        world.finish().await;
    });
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn election_and_lock_invariants_lose_on_suspend(schedule in proptest::collection::vec(op(), 1..40)) {
        run(&schedule, SuspendPolicy::LoseOnSuspend);
    }

    #[test]
    fn election_and_lock_invariants_tolerate_suspend(schedule in proptest::collection::vec(op(), 1..40)) {
        run(&schedule, SuspendPolicy::TolerateSuspend);
    }
}
