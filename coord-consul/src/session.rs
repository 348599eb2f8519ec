//! Consul sessions bound to an agent TTL check ("Consul fast failover"), kept alive by
//! coord-core's [`LeaseSession`]; here are Consul's steps ([`ConsulLease`]).
//!
//! Opening a session registers, on the agent, a per-session service `coord-session` whose TTL
//! check (TTL = the session TTL) starts passing, then creates a Consul session with
//! `Checks = ["serfHealth", <check>]`, `Behavior = "delete"`, `LockDelay = "0s"` and no TTL of
//! its own. The keep-alive passes the check every TTL/3. If the passes stop (crash, hang,
//! partition), the check turns critical after the TTL and Consul invalidates the session at
//! once, deleting its ephemerals: failover ≈ the TTL (Consul's own session TTL would take up
//! to 2 × TTL, at least 20 s). The agent reaps the service of a client that never came back
//! after a minute critical.
//!
//! The lifecycle is [`LeaseSession`]'s; Consul-specific: a pass counts only if the servers
//! answer, within the same bound, that the session still exists — the pass alone is the local
//! agent's word, and a client agent cut off from the servers passes while the servers have
//! invalidated the session (its node's `serfHealth` failed) and granted its locks to others.
//! `Expired` also when the backend's [`SessionObserver`] (one blocking query on the agent
//! node's critical checks, shared by all the backend's sessions on it) sees the session
//! invalidated, an acquire is refused by a
//! session Consul no longer knows, or the agent no longer knows the check. The end destroys
//! the session and deregisters the check.
//!
//! After an agent paused for longer than the TTL, a session can report `Connected` and then
//! `Expired` a moment later: on the resume the first pass can win the race with the agent's
//! overdue TTL timer, and the servers confirm the session before the critical status reaches
//! them. `Connected` is reported only after the servers answered that the session exists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{random_u64, Backoff, Lease, LeaseSession, Renewal, Timing};
use coord_core::{CreateMode, Created, Error, Path, Result, SessionId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::api::{Api, Pass, SessionCreate};
use crate::context::Context;
use crate::error::backend_err;

coord_core::lease_session_type! {
    /// A Consul session (see the module docs). Dropping the last handle closes it in the
    /// background.
    pub struct ConsulSession(ConsulLease);
}

impl ConsulSession {
    pub(crate) async fn open(ctx: Arc<Context>, ttl: Duration) -> Result<ConsulSession> {
        let check = format!("coord-{:016x}{:016x}", random_u64(), random_u64());
        let mut granted_at = Instant::now();
        let api = ctx.api();
        api.register_check(&check, ttl).await?;
        let passed_at = std::sync::Mutex::new(None);
        let created = async {
            let id = SessionId(create_session(&ctx, &check).await?);
            let (info, index) = api.session_info(&id.0, None).await?;
            Ok::<_, Error>((index, info.map(|i| i.node).unwrap_or_default(), id))
        };
        // The check is passed every TTL/3 until the keep-alive takes over: the servers may
        // take longer than the TTL to create the session (a leader election after a heal),
        // and a check gone critical meanwhile invalidates the session just created
        // (partitions.rs, minority-cut after heal-after-ttl on Consul: a session Expired 18 ms
        // after its grant, and the registration on it was lost).
        let passing = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let at = Instant::now();
                if let Ok(Pass::Passed) = api.pass_check(&check, ttl / 3).await {
                    *passed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
                }
            }
        };
        let created = tokio::select! {
            r = created => r,
            never = passing => never,
        };
        // The check, and so the session, lives a TTL from its last pass.
        if let Some(at) = *passed_at.lock().unwrap_or_else(|e| e.into_inner()) {
            granted_at = at;
        }
        if created.is_err() {
            let _ = api.deregister_check(&check).await;
        }
        let (index, node, id) = created?;
        let caps = ctx.tree.caps.clone();
        let lease = ConsulLease {
            ctx,
            id: id.clone(),
            check,
            ttl,
            index,
            node,
        };
        Ok(ConsulSession(LeaseSession::start(
            lease, id, ttl, caps, granted_at,
        )))
    }

    /// For tests: stops passing the check without closing, like a client that hung or was
    /// cut off. The session is invalidated by Consul after its TTL and then reports Expired
    /// (the observer that watches it server-side keeps running, as the owner would see it
    /// once it is back).
    pub fn crash(&self) {
        self.0.crash();
    }

    /// The id of the agent check (and service) that keeps this session alive.
    pub fn check_id(&self) -> &str {
        &self.0.lease().check
    }
}

/// Creates the session; returns its ID. The caller keeps the check passing meanwhile.
///
/// Two refusals are retried for up to the request timeout:
/// - on a client agent the check reaches the servers' catalog by anti-entropy shortly after
///   its registration: until then Consul refuses the check
///   ([`SessionCreate::CheckNotKnownYet`]);
/// - the servers refuse sessions on a node whose `serfHealth` is critical
///   ([`SessionCreate::NodeUnhealthy`]): after a partition heals, Consul's gossip takes the
///   agent back only when one side's periodic reconnect (every 30 s) runs, so the agent is
///   asked to join the servers ([`Rejoin`]).
async fn create_session(ctx: &Context, check: &str) -> Result<String> {
    let api = ctx.api();
    let deadline = Instant::now() + api.timeout;
    let mut backoff =
        Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).jittered();
    loop {
        let refused = match api.create_session(check).await? {
            SessionCreate::Created(id) => {
                ctx.rejoin.settled();
                return Ok(id);
            }
            SessionCreate::CheckNotKnownYet => backend_err(
                format!("Consul did not learn the check {check} within the timeout"),
                true,
            ),
            SessionCreate::NodeUnhealthy(e) => {
                ctx.rejoin.nudge(api).await;
                e
            }
        };
        let pause = backoff.next_delay();
        if Instant::now() + pause >= deadline {
            return Err(refused);
        }
        tokio::time::sleep(pause).await;
    }
}

/// The shortest pause between two rejoins of one backend; it doubles while the refusals go on
/// (a network where the agent reaches the servers but they cannot reach it back would have
/// the node declared failed again and again), up to [`REJOIN_LONGEST`].
const REJOIN_FIRST: Duration = Duration::from_secs(2);
/// serf's own reconnect interval: rejoining less often than that adds nothing.
const REJOIN_LONGEST: Duration = Duration::from_secs(30);

/// Asks the agent to join the servers again when they refuse sessions on its node
/// (`serfHealth` critical).
///
/// Why: when a partition heals, neither side's gossip sends the other anything unless it has
/// news to spread, so the servers learn that the agent they declared failed is back only when
/// serf's reconnect (every 30 s, not configurable in Consul) or a full state exchange runs; until
/// then every session on that node is refused (seen for up to 19.7 s in the partition tests).
/// A join is such an exchange with each server: the agent learns it was declared failed and
/// refutes it, and the servers mark its node healthy within a gossip round. Joining members
/// that are already in the pool changes nothing else. It needs `agent:write` on the agent:
/// without it, one warning and the wait for the gossip as before. `rejoin=false` turns it off.
#[derive(Debug)]
pub(crate) struct Rejoin {
    enabled: bool,
    /// When the next rejoin may run, and the pause after it.
    pace: Mutex<(Option<Instant>, Duration)>,
    denied: std::sync::atomic::AtomicBool,
}

impl Rejoin {
    pub(crate) fn new(enabled: bool) -> Rejoin {
        Rejoin {
            enabled,
            pace: Mutex::new((None, REJOIN_FIRST)),
            denied: Default::default(),
        }
    }

    fn pace(&self) -> MutexGuard<'_, (Option<Instant>, Duration)> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session was created: the next refusal rejoins at once again.
    pub(crate) fn settled(&self) {
        if self.enabled {
            *self.pace() = (None, REJOIN_FIRST);
        }
    }

    /// Asks the agent to join every server it knows, unless it did so less than a pause ago.
    /// Failures are logged, not returned: the caller retries its request either way.
    pub(crate) async fn nudge(&self, api: &Api) {
        use std::sync::atomic::Ordering;
        if !self.enabled || self.denied.load(Ordering::Relaxed) {
            return;
        }
        let first = {
            let mut pace = self.pace();
            let now = Instant::now();
            if pace.0.is_some_and(|next| now < next) {
                return;
            }
            let every = pace.1;
            *pace = (Some(now + every), (every * 2).min(REJOIN_LONGEST));
            every == REJOIN_FIRST
        };
        let members = match api.agent_members().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "consul: cannot list the agent's members to rejoin");
                return;
            }
        };
        let me = api.agent_name().await.ok();
        let servers: Vec<String> = members
            .iter()
            .filter(|m| m.is_server() && Some(&m.name) != me.as_ref())
            .map(|m| coord_core::url::endpoint(&m.addr, m.port))
            .collect();
        if servers.is_empty() {
            tracing::debug!("consul: the agent lists no other server to rejoin");
            return;
        }
        let joins = servers.iter().map(|s| api.agent_join(s));
        let results = futures::future::join_all(joins).await;
        let mut joined = 0;
        for (server, r) in servers.iter().zip(results) {
            match r {
                Ok(()) => joined += 1,
                Err(e @ Error::Unauthorized { .. }) => {
                    if !self.denied.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "consul: the servers refuse sessions on this agent's node (serfHealth critical) and the token may not ask the agent to rejoin (agent:write): waiting for Consul's gossip to take it back");
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(server = %server, error = %e, "consul: the agent could not join a server")
                }
            }
        }
        let what = "consul: the servers refuse sessions on this agent's node (serfHealth critical): asked the agent to join them again";
        if first {
            tracing::info!(joined, servers = servers.len(), "{what}");
        } else {
            tracing::debug!(joined, servers = servers.len(), "{what}");
        }
    }
}

/// Consul's side of a [`ConsulSession`]: the session, its agent check, the index of the
/// session's first read and the agent node it is bound to (where it is observed).
pub struct ConsulLease {
    ctx: Arc<Context>,
    id: SessionId,
    check: String,
    ttl: Duration,
    index: u64,
    node: String,
}

impl ConsulLease {
    /// A pass is bounded by TTL/3 and the request timeout.
    fn pass_timeout(&self) -> Duration {
        (self.ttl / 3).min(self.ctx.api().timeout)
    }

    /// A session that Consul named no node for: follows it alone, until Consul no longer
    /// knows it.
    async fn follow_alone(&self) {
        let api = self.ctx.api();
        let mut errors = Backoff::new(Duration::from_millis(100), self.ttl / 3).jittered();
        let mut index = self.index;
        loop {
            match api
                .session_exists(&self.id.0, Some((index, api.wait)))
                .await
            {
                Ok((true, i)) => {
                    errors.reset();
                    index = i;
                }
                Ok((false, _)) => return,
                Err(_) => errors.wait().await,
            }
        }
    }
}

#[async_trait]
impl Lease for ConsulLease {
    /// A pass every TTL/3, after a failure too. No deadline of its own: Consul decides, and
    /// the observer ([`Lease::ended`]) sees it.
    fn timing(&self) -> Timing {
        Timing {
            interval: self.ttl / 3,
            retry: self.ttl / 3,
            // The pass, and the check that the session still exists after a failed one.
            step_timeout: self.pass_timeout() + self.ctx.api().timeout,
            deadline: None,
        }
    }

    async fn renew(&self, recovering: bool) -> Result<Renewal> {
        let api = self.ctx.api();
        match api.pass_check(&self.check, self.pass_timeout()).await? {
            // Without its check the session is invalid (Consul invalidates it when the check
            // goes; a restarted dev agent forgot both).
            Pass::UnknownCheck => Ok(Renewal::Gone),
            // The servers' word, bounded like the pass: a cut-off agent makes it a failure
            // (Suspended), an invalidated session Gone (partitions.rs, leader-side-cut on Consul
            // with a client agent per side: the old leader stayed Connected for the whole cut).
            Pass::Passed => {
                let bound = self.pass_timeout();
                match tokio::time::timeout(bound, api.session_exists(&self.id.0, None)).await {
                    Ok(Ok((true, _))) => Ok(Renewal::Renewed),
                    Ok(Ok((false, _))) => Ok(Renewal::Gone),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::timeout(format!(
                        "the servers did not confirm the session within {bound:?}{}",
                        if recovering { " (recovering)" } else { "" }
                    ))),
                }
            }
        }
    }

    /// Destroys the session (its ephemerals go with it) and deregisters its check.
    async fn revoke(&self) -> Result<()> {
        let r = self.ctx.api().destroy_session(&self.id.0).await;
        if let Err(e) = self.ctx.api().deregister_check(&self.check).await {
            tracing::debug!(session = %self.id, error = %e, "could not deregister the session's check (the agent reaps it after 1 min critical)");
        }
        r
    }

    /// Follows the session server-side through the backend's `SessionObserver`: resolves
    /// the moment Consul invalidates it (a destroy is the keep-alive's to see).
    async fn ended(&self) {
        if !self.node.is_empty() {
            return self
                .ctx
                .observer
                .ended(&self.node, &self.id.0, &self.check)
                .await;
        }
        // Boxed: this rare path's query would otherwise size the future that every session
        // keeps for its whole life (1.4 KiB of its ~6, bench item 7).
        Box::pin(self.follow_alone()).await
    }

    /// A lock refused by Consul means the session is gone only if Consul no longer knows it.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        let owner = Some((&self.id, &self.id));
        match self.ctx.tree.create(path, value, mode, owner).await {
            Err(Error::SessionExpired { .. })
                if self.ctx.api().session_exists(&self.id.0, None).await?.0 =>
            {
                Err(backend_err(
                    format!("Consul refused a lock by the live session {}", self.id),
                    true,
                ))
            }
            r => r,
        }
    }
}

/// A followed session: who waits for its end, the first request whose answer may tell it
/// (one sent after the session was known to exist), and its check.
struct Followed {
    tx: oneshot::Sender<()>,
    from: u64,
    check: String,
}

/// The sessions of one agent node that are followed, and its query's progress.
#[derive(Default)]
struct NodeSessions {
    /// Session ID → its follower.
    waiting: HashMap<String, Followed>,
    /// Requests sent so far.
    sent: u64,
    /// Whether the node's query loop runs.
    running: bool,
}

/// Follows the sessions of one backend server-side with one blocking query per agent node,
/// instead of one query per session. Consul invalidates a session when one of its checks
/// (its own TTL check, the node's `serfHealth`) turns critical, so the query is the node's
/// critical checks (`/v1/health/node/<node>`, filtered by the agent: an answer is a few
/// bytes). Only when a followed session's check or `serfHealth` is critical does the loop
/// list the node's sessions (`/v1/session/node/<node>`, ~350 bytes a session) and end the
/// waits of those gone. Following the session list itself would read that whole list each
/// time any session in the datacenter changes: opening 1,000 sessions read ~175 MB, and
/// the process kept megabytes of it (bench item 7). A session destroyed outright (no check
/// involved), or ended by a `serfHealth` that was critical only between two answers, is seen
/// by the keep-alive instead, which confirms the session with the servers at every pass
/// (TTL/3).
///
/// A query loop runs only while some session of its node is followed. An answer only judges
/// the sessions that were followed before its request was sent; a loop that had to skip one
/// asks again at once.
///
/// One observer serves every client of the process that talks to the same agent with the
/// same token ([`Api::peer`]) on the same tokio runtime (its query runs there): a process
/// with many clients (one per candidate) still holds one observer query per node.
#[derive(Clone)]
pub(crate) struct SessionObserver(Arc<Observer>);

struct Observer {
    api: Api,
    nodes: Mutex<HashMap<String, NodeSessions>>,
}

/// What an observer can be shared by: the peer and the runtime.
type ShareKey = (Arc<str>, Option<tokio::runtime::Id>);

/// The observers of this process.
static OBSERVERS: Mutex<Vec<(ShareKey, std::sync::Weak<Observer>)>> = Mutex::new(Vec::new());

impl std::fmt::Debug for SessionObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionObserver")
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

impl SessionObserver {
    /// The process's observer for `api`'s peer (made if there is none).
    pub(crate) fn new(api: Api) -> SessionObserver {
        let key = (
            api.peer.clone(),
            tokio::runtime::Handle::try_current().ok().map(|h| h.id()),
        );
        let mut all = OBSERVERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, o)| o.strong_count() > 0);
        if let Some(o) = all
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, o)| o.upgrade())
        {
            return SessionObserver(o);
        }
        let o = Arc::new(Observer {
            api: api.clone(),
            nodes: Default::default(),
        });
        all.push((key, Arc::downgrade(&o)));
        SessionObserver(o)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeSessions>> {
        self.0.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many node queries run.
    pub(crate) fn queries(&self) -> usize {
        self.lock().values().filter(|n| n.running).count()
    }

    /// Resolves when Consul invalidates session `id` of agent node `node`, bound to
    /// `check` (see the type's docs for what is seen).
    async fn ended(&self, node: &str, id: &str, check: &str) {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut nodes = self.lock();
            let n = nodes.entry(node.to_owned()).or_default();
            let f = Followed {
                tx,
                from: n.sent + 1,
                check: check.to_owned(),
            };
            n.waiting.insert(id.to_owned(), f);
            !std::mem::replace(&mut n.running, true)
        };
        if start {
            tokio::spawn(self.clone().follow(node.to_owned()));
        }
        if rx.await.is_err() {
            // The observer stopped following it (cannot happen while the session lives):
            // that says nothing about the session.
            std::future::pending::<()>().await;
        }
    }

    /// The next request's number, or `None` (and the loop stops) when nothing is followed.
    fn begin(&self, node: &str) -> Option<u64> {
        let mut nodes = self.lock();
        let n = nodes.get_mut(node)?;
        n.waiting.retain(|_, f| !f.tx.is_closed());
        if n.waiting.is_empty() {
            nodes.remove(node);
            return None;
        }
        n.sent += 1;
        Some(n.sent)
    }

    /// Whether a critical check in `critical` can have ended a followed session of `node`.
    fn implicated(&self, node: &str, critical: &[String]) -> bool {
        if critical.is_empty() {
            return false;
        }
        if critical.iter().any(|c| c == "serfHealth") {
            return true;
        }
        let critical: HashSet<&str> = critical.iter().map(String::as_str).collect();
        let nodes = self.lock();
        nodes.get(node).is_some_and(|n| {
            n.waiting
                .values()
                .any(|f| critical.contains(f.check.as_str()))
        })
    }

    /// Ends the waits of the sessions missing from `live` (if the sessions were listed);
    /// whether one had to be skipped.
    fn answered(&self, node: &str, seq: u64, live: Option<&[String]>) -> bool {
        let live: Option<HashSet<&str>> = live.map(|l| l.iter().map(String::as_str).collect());
        let mut nodes = self.lock();
        let Some(n) = nodes.get_mut(node) else {
            return false;
        };
        let mut skipped = false;
        let gone: Vec<String> = n
            .waiting
            .iter()
            .filter(|(id, f)| {
                skipped |= f.from > seq;
                f.from <= seq && live.as_ref().is_some_and(|l| !l.contains(id.as_str()))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(f) = n.waiting.remove(&id) {
                let _ = f.tx.send(());
            }
        }
        skipped
    }

    /// The query loop of `node`, while any of its sessions is followed.
    async fn follow(self, node: String) {
        let mut errors =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).jittered();
        let mut index = 0u64;
        let mut immediate = true;
        while let Some(seq) = self.begin(&node) {
            let api = &self.0.api;
            let block = (!immediate).then_some((index, api.wait));
            let answer = async {
                let (critical, i) = api.node_critical_checks(&node, block).await?;
                // Listed after the checks were read: a session ended by one of them is gone.
                let live = if self.implicated(&node, &critical) {
                    Some(api.node_sessions(&node, None).await?.0)
                } else {
                    None
                };
                Ok::<_, Error>((live, i))
            };
            match answer.await {
                Ok((live, i)) => {
                    errors.reset();
                    // An index that went backwards starts over from 0.
                    index = if i < index { 0 } else { i };
                    immediate = self.answered(&node, seq, live.as_deref());
                }
                Err(e) => {
                    tracing::debug!(error = %e, %node, "session observer query failed; retrying");
                    errors.wait().await;
                    immediate = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The observer lists a node's sessions only when a critical check can have ended a
    /// followed session (its own check, or `serfHealth`), and an answer ends only the waits
    /// of sessions followed before its request that the list no longer has.
    #[tokio::test]
    async fn only_a_followed_sessions_critical_check_lists_the_sessions() {
        let api =
            Api::new(&Config::from_url("consul://127.0.0.1:1?timeout=200ms").unwrap()).unwrap();
        let o = SessionObserver::new(api);
        let follow = |id: &str, check: &str, from: u64| {
            let (tx, rx) = oneshot::channel();
            let mut nodes = o.lock();
            let n = nodes.entry("n1".to_owned()).or_default();
            n.running = true;
            let f = Followed {
                tx,
                from,
                check: check.to_owned(),
            };
            n.waiting.insert(id.to_owned(), f);
            rx
        };
        let mut a = follow("a", "coord-a", 1);
        let mut b = follow("b", "coord-b", 2);
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert!(!o.implicated("n1", &[]));
        assert!(!o.implicated("n1", &s(&["coord-someone-else"])));
        assert!(!o.implicated("n2", &s(&["coord-a"])), "another node");
        assert!(o.implicated("n1", &s(&["coord-x", "coord-b"])));
        assert!(o.implicated("n1", &s(&["serfHealth"])));
        // No list: nothing ends; `b` was followed after request 1 was sent: skipped.
        assert!(o.answered("n1", 1, None));
        // A list without either: only `a` is judged by request 1.
        assert!(o.answered("n1", 1, Some(&s(&["c"]))));
        assert!(a.try_recv().is_ok(), "a ended");
        assert!(b.try_recv().is_err(), "b not judged yet");
        assert!(!o.answered("n1", 2, Some(&s(&["b"]))), "b still listed");
        assert!(b.try_recv().is_err());
        assert!(!o.answered("n1", 3, Some(&s(&[]))));
        assert!(b.try_recv().is_ok(), "b ended");
    }

    /// Rejoins are paced per backend: one per pause, the pause doubling up to serf's own
    /// reconnect interval while the refusals go on, and back to the first once a session is
    /// created. (Nothing listens on port 1: each rejoin fails at listing the members.)
    #[tokio::test]
    async fn rejoins_are_paced_and_back_off() {
        let api =
            Api::new(&Config::from_url("consul://127.0.0.1:1?timeout=200ms").unwrap()).unwrap();
        let r = Rejoin::new(true);
        r.nudge(&api).await;
        let (next, every) = *r.pace();
        assert!(next.is_some());
        assert_eq!(every, REJOIN_FIRST * 2);
        r.nudge(&api).await;
        assert_eq!(
            *r.pace(),
            (next, every),
            "a second refusal within the pause rejoins not"
        );
        for _ in 0..6 {
            r.pace().0 = Some(Instant::now());
            r.nudge(&api).await;
        }
        assert_eq!(r.pace().1, REJOIN_LONGEST);
        r.settled();
        assert_eq!(*r.pace(), (None, REJOIN_FIRST));
        let off = Rejoin::new(false);
        off.nudge(&api).await;
        assert_eq!(
            *off.pace(),
            (None, REJOIN_FIRST),
            "rejoin=false never rejoins"
        );
    }
}
