//! A partitioner over a [group](crate::group)'s members: a fixed number of partitions spread
//! over the members by a weighted consistent-hash ring, recomputed by every member from the
//! membership alone (no coordination beyond the group).
//!
//! # The assignment (the same on every member that has seen the same membership)
//!
//! - **Hash.** [`stable_hash`]: 64-bit FNV-1a over the bytes, then the 64-bit finaliser of
//!   MurmurHash3 (`fmix64`) to spread FNV's low-entropy high bits. Fixed forever: it is part
//!   of the on-wire contract between members (never Rust's randomised `DefaultHasher`).
//! - **Ring.** A member of weight `w` puts `w ×` [`POINTS_PER_WEIGHT`] points on the ring, at
//!   `stable_hash("<id>#<i>")` for `i` in `0..w × POINTS_PER_WEIGHT`. Points are ordered by
//!   hash, then by member id (a tie is decided the same way everywhere).
//! - **Partitions.** Partition `p` (`0..partitions`) sits at `stable_hash("partition#<p>")`
//!   (decimal `p`) and belongs to the first point at or after it, wrapping around.
//! - **Keys.** A key belongs to partition `stable_hash(key) % partitions`
//!   ([`Assignment::partition_of`]), whatever the membership: only partitions move.
//!
//! When a member joins, only partitions it takes move (to it); when one leaves, only its own
//! move. With `N` members of equal weight, a join or a leave moves about `1/N` of the
//! partitions (the unit tests bound it; coord-bench measures it per backend).
//!
//! # Weights (from the member's data)
//!
//! The data a member joined with is read as JSON:
//!
//! - an object with an integer `"weight"` field: `{"weight": 3}` ([`weight_data`] writes it);
//! - or a [registry](crate::registry) instance with a `weight` metadata entry:
//!   `{"service":…, "metadata": {"weight": "3"}}`, so that a service's instances can be
//!   partitioned over directly;
//! - anything else (no weight, not JSON, empty) has weight 1.
//!
//! Weights go from 0 to [`MAX_WEIGHT`]. Weight 0 takes no partition (a member that drains).
//! A weight that is not an integer in that range counts as 1 (and is logged): every member
//! reads the same data, so every member decides the same way.
//!
//! # The live partitioner
//!
//! [`Group::partitioner`] follows the group in the background like a
//! [`ServiceCache`](crate::registry::ServiceCache): lookups ([`Partitioner::owner`],
//! [`Partitioner::my_partitions`]) do no I/O, [`Partitioner::changes`] yields each new
//! assignment, and [`Partitioner::state`] says whether it follows
//! ([`CacheState`]): it never goes stale silently. [`crate::Client::shutdown`] stops it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::adapter::Backoff;
use crate::client::Owned;
use crate::error::{Error, Result};
use crate::recipes::group::{Group, Member, Membership};
use crate::registry::CacheState;

/// The most partitions a partitioner accepts.
pub const MAX_PARTITIONS: u32 = 1 << 16;
/// The largest weight a member can have.
pub const MAX_WEIGHT: u32 = 100;
/// Ring points per unit of weight: enough that a member's share is within about ±10 % of
/// its weight's share.
pub const POINTS_PER_WEIGHT: u32 = 128;

/// The fixed hash of the ring (see the [module docs](self)): FNV-1a 64 then `fmix64`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The data to join with for weight `weight`: `{"weight":<weight>}`.
pub fn weight_data(weight: u32) -> Vec<u8> {
    format!("{{\"weight\":{weight}}}").into_bytes()
}

/// A member's weight read from its data (see the [module docs](self#weights-from-the-members-data)).
pub fn weight_of(data: &[u8]) -> u32 {
    parse_weight(data).unwrap_or_else(|bad| {
        tracing::warn!(weight = %bad, "a member's weight is not an integer from 0 to {MAX_WEIGHT}: counted as 1");
        1
    })
}

/// The weight in `data`: `Ok(1)` when it names none, `Err(text)` when it names a bad one.
fn parse_weight(data: &[u8]) -> std::result::Result<u32, String> {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return Ok(1);
    };
    let found = match obj.get("weight") {
        Some(w) => w.as_u64().map(Some).ok_or_else(|| w.to_string())?,
        None => match obj.get("metadata").and_then(|m| m.get("weight")) {
            Some(serde_json::Value::String(s)) => {
                Some(s.trim().parse::<u64>().map_err(|_| s.clone())?)
            }
            Some(other) => return Err(other.to_string()),
            None => None,
        },
    };
    match found {
        None => Ok(1),
        Some(w) if w <= u64::from(MAX_WEIGHT) => Ok(w as u32),
        Some(w) => Err(w.to_string()),
    }
}

/// Checks a partition count: 1 to [`MAX_PARTITIONS`].
pub fn check_partitions(partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::InvalidArgument(format!(
            "partition count {partitions}: must be from 1 to {MAX_PARTITIONS}"
        )));
    }
    Ok(())
}

/// Which member owns each partition, for one membership. Computed the same way by every
/// member (see the [module docs](self)); pure, no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    partitions: u32,
    /// The members (sorted by id) and their weights.
    members: Vec<(String, u32)>,
    /// The owner of each partition: an index into `members`; `None` when no member has a
    /// weight above 0.
    owners: Vec<Option<u32>>,
}

impl Assignment {
    /// The assignment of `partitions` partitions over `members` (weights read from their
    /// data). [`Error::InvalidArgument`] for a partition count of 0 or above
    /// [`MAX_PARTITIONS`].
    pub fn new(members: &[Member], partitions: u32) -> Result<Assignment> {
        let weighted: Vec<(String, u32)> = members
            .iter()
            .map(|m| (m.id.clone(), weight_of(&m.data)))
            .collect();
        Assignment::weighted(weighted, partitions)
    }

    /// The assignment over `(id, weight)` pairs (weights above [`MAX_WEIGHT`] are refused
    /// with [`Error::InvalidArgument`]; duplicate ids keep the first).
    pub fn weighted(mut members: Vec<(String, u32)>, partitions: u32) -> Result<Assignment> {
        check_partitions(partitions)?;
        if let Some((id, w)) = members.iter().find(|(_, w)| *w > MAX_WEIGHT) {
            return Err(Error::InvalidArgument(format!(
                "member {id:?} has weight {w}: the maximum is {MAX_WEIGHT}"
            )));
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|b, a| a.0 == b.0);
        let mut points: Vec<(u64, u32)> = Vec::new();
        for (idx, (id, w)) in members.iter().enumerate() {
            for i in 0..w * POINTS_PER_WEIGHT {
                points.push((stable_hash(format!("{id}#{i}").as_bytes()), idx as u32));
            }
        }
        // Members are sorted by id, so the index breaks ties by id.
        points.sort_unstable();
        let owners = (0..partitions)
            .map(|p| {
                if points.is_empty() {
                    return None;
                }
                let at = stable_hash(format!("partition#{p}").as_bytes());
                let i = points.partition_point(|(h, _)| *h < at);
                Some(points[i % points.len()].1)
            })
            .collect();
        Ok(Assignment {
            partitions,
            members,
            owners,
        })
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The members and their weights, sorted by id.
    pub fn members(&self) -> &[(String, u32)] {
        &self.members
    }

    /// The partition of `key`: `stable_hash(key) % partitions`.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        (stable_hash(key) % u64::from(self.partitions)) as u32
    }

    /// The member owning `partition`; `None` if it is out of range or nobody has a weight.
    pub fn owner_of(&self, partition: u32) -> Option<&str> {
        let idx = (*self.owners.get(partition as usize)?)?;
        self.members.get(idx as usize).map(|(id, _)| id.as_str())
    }

    /// The member owning `key`'s partition.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        self.owner_of(self.partition_of(key))
    }

    /// The partitions of member `id`, ascending (empty if it is not a member).
    pub fn partitions_of(&self, id: &str) -> Vec<u32> {
        let Ok(idx) = self.members.binary_search_by(|(m, _)| m.as_str().cmp(id)) else {
            return Vec::new();
        };
        (0..self.partitions)
            .filter(|p| self.owners[*p as usize] == Some(idx as u32))
            .collect()
    }

    /// Every member's partitions (members without one are listed with none).
    pub fn by_member(&self) -> BTreeMap<&str, Vec<u32>> {
        let mut out: BTreeMap<&str, Vec<u32>> = self
            .members
            .iter()
            .map(|(id, _)| (id.as_str(), Vec::new()))
            .collect();
        for p in 0..self.partitions {
            if let Some(owner) = self.owner_of(p) {
                out.entry(owner).or_default().push(p);
            }
        }
        out
    }

    /// The partitions whose owner differs between `self` and `previous` (all of them if the
    /// partition counts differ).
    pub fn moved_from(&self, previous: &Assignment) -> Vec<u32> {
        if previous.partitions != self.partitions {
            return (0..self.partitions).collect();
        }
        (0..self.partitions)
            .filter(|p| self.owner_of(*p) != previous.owner_of(*p))
            .collect()
    }
}

impl Group {
    /// A [`Partitioner`] of `partitions` partitions over this group's members, following the
    /// group in the background. [`Error::InvalidArgument`] (before any I/O) for a partition
    /// count of 0 or above [`MAX_PARTITIONS`]. Use [`Partitioner::for_member`] to say whose
    /// partitions [`Partitioner::my_partitions`] lists.
    pub async fn partitioner(&self, partitions: u32) -> Result<Partitioner> {
        check_partitions(partitions)?;
        let mut stream: MemberStream = Box::pin(self.watch().await?);
        let first = match stream.next().await {
            Some(r) => r?,
            None => Vec::new(),
        };
        let (tx, rx) = watch::channel(Snapshot {
            version: 0,
            assignment: Arc::new(Assignment::new(&first, partitions)?),
            state: CacheState::Following,
        });
        let tx = Arc::new(tx);
        let task = tokio::spawn(follow(self.clone(), partitions, stream, tx.clone()));
        let shared = Arc::new(Shared { tx, task });
        let weak: std::sync::Weak<dyn Owned> = Arc::downgrade(&shared) as _;
        self.client().track_cache(weak);
        Ok(Partitioner {
            shared,
            rx,
            me: None,
            seen: AtomicU64::new(0),
        })
    }

    /// Joins as `id` with `data` (its weight: see the [module docs](self)) and follows the
    /// group's assignment of `partitions` partitions, with `id` as "me". The partition count
    /// is checked before anything is written.
    pub async fn join_partitioned(
        &self,
        id: &str,
        data: &[u8],
        partitions: u32,
    ) -> Result<(Membership, Partitioner)> {
        check_partitions(partitions)?;
        let membership = self.join(id, data).await?;
        let partitioner = self.partitioner(partitions).await?.for_member(id)?;
        Ok((membership, partitioner))
    }
}

/// The boxed stream of [`Group::watch`].
type MemberStream = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<Member>>> + Send>>;

/// What the partitioner publishes.
struct Snapshot {
    /// Counts changes (of the assignment or the state).
    version: u64,
    assignment: Arc<Assignment>,
    state: CacheState,
}

/// Publishes a new assignment (if it differs) and a state, unless already stopped.
fn publish(tx: &watch::Sender<Snapshot>, assignment: Option<Assignment>, state: CacheState) {
    tx.send_if_modified(|s| {
        if s.state.is_stopped() {
            return false;
        }
        let new = assignment.filter(|a| *a != *s.assignment);
        if new.is_none() && s.state == state {
            return false;
        }
        s.version += 1;
        if let Some(a) = new {
            s.assignment = Arc::new(a);
        }
        s.state = state;
        true
    });
}

/// Feeds the partitioner from the group's watch; on a transient error, watches again with a
/// back-off.
async fn follow(
    group: Group,
    partitions: u32,
    mut stream: MemberStream,
    tx: Arc<watch::Sender<Snapshot>>,
) {
    let mut backoff = Backoff::reconnect();
    loop {
        let mut error = match stream.next().await {
            Some(Ok(members)) => {
                backoff.reset();
                let assignment = Assignment::new(&members, partitions).ok();
                publish(&tx, assignment, CacheState::Following);
                continue;
            }
            Some(Err(e)) => e,
            None => Error::Closed, // a watch ends only with its backend
        };
        stream = loop {
            if !error.is_retryable() {
                tracing::warn!(group = %group.path(), error = %error, "partitioner stopped following");
                publish(&tx, None, CacheState::Stopped(error));
                return;
            }
            tracing::debug!(group = %group.path(), error = %error, "partitioner watching again");
            publish(&tx, None, CacheState::Retrying(error));
            backoff.wait().await;
            match group.watch().await {
                Ok(s) => break Box::pin(s),
                Err(e) => error = e,
            }
        };
    }
}

/// The background task, shared by the clones (the client keeps a weak reference).
struct Shared {
    tx: Arc<watch::Sender<Snapshot>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Owned for Shared {
    fn end(&self, _remove: bool) -> BoxFuture<'_, Result<()>> {
        self.task.abort();
        publish(&self.tx, None, CacheState::Stopped(Error::Closed));
        Box::pin(async { Ok(()) })
    }
}

/// A group's partition assignment, kept up to date in the background (see the
/// [module docs](self)). Clones share one watch; it stops when the last clone is dropped.
pub struct Partitioner {
    shared: Arc<Shared>,
    rx: watch::Receiver<Snapshot>,
    me: Option<String>,
    /// The version the last `changed` of this handle returned for.
    seen: AtomicU64,
}

impl Clone for Partitioner {
    fn clone(&self) -> Partitioner {
        Partitioner {
            shared: self.shared.clone(),
            rx: self.rx.clone(),
            me: self.me.clone(),
            seen: AtomicU64::new(self.seen.load(Ordering::Acquire)),
        }
    }
}

impl std::fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.rx.borrow();
        f.debug_struct("Partitioner")
            .field("partitions", &s.assignment.partitions)
            .field("members", &s.assignment.members.len())
            .field("me", &self.me)
            .field("state", &s.state)
            .finish()
    }
}

impl Partitioner {
    /// This partitioner with `id` as "me" for [`Partitioner::my_partitions`] (a valid member
    /// id: one path segment, else [`Error::InvalidPath`]).
    pub fn for_member(mut self, id: &str) -> Result<Partitioner> {
        crate::Path::root().join(id)?;
        self.me = Some(id.to_owned());
        Ok(self)
    }

    /// The assignment as last seen (no I/O). Check [`Partitioner::state`] to know whether it
    /// is current.
    pub fn assignment(&self) -> Arc<Assignment> {
        self.rx.borrow().assignment.clone()
    }

    /// The member owning `key` now (no I/O); `None` while no member has a weight.
    pub fn owner(&self, key: &[u8]) -> Option<String> {
        self.assignment().owner(key).map(str::to_owned)
    }

    /// The partition of `key` (it never changes: only partitions move between members).
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.assignment().partition_of(key)
    }

    /// The partitions of "me" ([`Partitioner::for_member`]) now, ascending; empty without a
    /// "me" or while it is not a member.
    pub fn my_partitions(&self) -> Vec<u32> {
        match &self.me {
            Some(me) => self.assignment().partitions_of(me),
            None => Vec::new(),
        }
    }

    /// Whether it follows the group now.
    pub fn state(&self) -> CacheState {
        self.rx.borrow().state.clone()
    }

    /// Waits for the next change (of the assignment or the state) after the last one this
    /// handle's `changed` returned for; `false` once it stopped following.
    pub async fn changed(&self) -> bool {
        let seen = self.seen.load(Ordering::Acquire);
        let mut rx = self.rx.clone();
        let now = match rx
            .wait_for(|s| s.version != seen || s.state.is_stopped())
            .await
        {
            Ok(s) => (s.version, s.state.is_stopped()),
            Err(_) => return false,
        };
        self.seen.fetch_max(now.0, Ordering::AcqRel);
        !now.1
    }

    /// Each new assignment after the current one (a member joined or left, or a weight
    /// changed, so that some partition moved or a weight differs). Ends when the partitioner
    /// stops following. Assignments may be skipped when several arrive before the stream is
    /// polled: the last one is always yielded.
    pub fn changes(&self) -> impl Stream<Item = Arc<Assignment>> + Send + 'static {
        let mut rx = self.rx.clone();
        let last = rx.borrow_and_update().assignment.clone();
        futures::stream::unfold((rx, last), |(mut rx, last)| async move {
            loop {
                rx.changed().await.ok()?;
                let (a, stopped) = {
                    let s = rx.borrow_and_update();
                    (s.assignment.clone(), s.state.is_stopped())
                };
                if !Arc::ptr_eq(&a, &last) {
                    return Some((a.clone(), (rx, a)));
                }
                if stopped {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("worker-{i}"), 1)).collect()
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned values (computed by an independent implementation of the documented
        // function): a change here breaks the contract between members of two versions.
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"partition#0"), 0x589b_7349_c011_aad2);
        assert_eq!(stable_hash(b"worker-1#0"), 0x563c_8b67_f7cd_6e19);
    }

    #[test]
    fn weights_from_data() {
        assert_eq!(weight_of(b""), 1);
        assert_eq!(weight_of(b"not json"), 1);
        assert_eq!(weight_of(br#"{"weight":3}"#), 3);
        assert_eq!(weight_of(br#"{"weight":0}"#), 0);
        assert_eq!(weight_of(br#"{"weight":101}"#), 1);
        assert_eq!(weight_of(br#"{"weight":-2}"#), 1);
        assert_eq!(weight_of(br#"{"weight":"x"}"#), 1);
        assert_eq!(weight_of(br#"{"metadata":{"weight":"4"}}"#), 4);
        assert_eq!(weight_of(br#"{"metadata":{"zone":"a"}}"#), 1);
        assert_eq!(weight_of(&weight_data(7)), 7);
    }

    #[test]
    fn bad_counts_are_typed_errors() {
        for p in [0, MAX_PARTITIONS + 1, u32::MAX] {
            let r = Assignment::weighted(members(3), p);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{p}: {r:?}");
        }
        let r = Assignment::weighted(vec![("a".into(), MAX_WEIGHT + 1)], 8);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        assert!(Assignment::weighted(members(3), MAX_PARTITIONS).is_ok());
    }

    #[test]
    fn same_membership_same_assignment_in_any_order() {
        let a = Assignment::weighted(members(5), 256).unwrap();
        let mut rev = members(5);
        rev.reverse();
        let b = Assignment::weighted(rev, 256).unwrap();
        assert_eq!(a, b);
        let total: usize = a.by_member().values().map(Vec::len).sum();
        assert_eq!(total, 256);
        for p in 0..256 {
            assert!(a.owner_of(p).is_some());
        }
        assert_eq!(a.owner_of(256), None);
        let key = b"order-42";
        assert_eq!(a.owner(key), a.owner_of(a.partition_of(key)));
    }

    #[test]
    fn nobody_with_weight_owns_nothing() {
        let a = Assignment::weighted(vec![], 8).unwrap();
        assert_eq!(a.owner(b"k"), None);
        let a = Assignment::weighted(vec![("idle".into(), 0)], 8).unwrap();
        assert_eq!(a.owner(b"k"), None);
        assert!(a.partitions_of("idle").is_empty());
    }

    /// The moved fraction on a join and on a leave, for 2 to 16 members and 1024 partitions:
    /// only the joiner gains, only the leaver loses, and at most 1.6 / N move (ideal: 1 / N).
    #[test]
    fn join_and_leave_move_about_one_nth() {
        const P: u32 = 1024;
        for n in 2..=16usize {
            let before = Assignment::weighted(members(n), P).unwrap();
            let joined = Assignment::weighted(members(n + 1), P).unwrap();
            let new = format!("worker-{n}");
            let moved = joined.moved_from(&before);
            assert!(moved.iter().all(|p| joined.owner_of(*p) == Some(&*new)));
            let frac = moved.len() as f64 / f64::from(P);
            assert!(frac <= 1.6 / (n + 1) as f64, "join to {}: {frac}", n + 1);
            assert!(frac >= 0.4 / (n + 1) as f64, "join to {}: {frac}", n + 1);
            // A leave of worker-0.
            let mut rest = members(n);
            rest.remove(0);
            let left = Assignment::weighted(rest, P).unwrap();
            let moved = left.moved_from(&before);
            assert!(moved
                .iter()
                .all(|p| before.owner_of(*p) == Some("worker-0")));
            assert_eq!(moved.len(), before.partitions_of("worker-0").len());
            let frac = moved.len() as f64 / f64::from(P);
            assert!(frac <= 1.6 / n as f64, "leave from {n}: {frac}");
        }
    }

    #[test]
    fn weights_shift_shares() {
        let a = Assignment::weighted(vec![("heavy".into(), 3), ("light".into(), 1)], 4096).unwrap();
        let heavy = a.partitions_of("heavy").len() as f64 / 4096.0;
        assert!((0.65..=0.85).contains(&heavy), "{heavy}");
    }
}
