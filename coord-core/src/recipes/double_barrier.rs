//! A double barrier for N members (Curator's `DistributedDoubleBarrier`, kazoo's
//! `DoubleBarrier`): [`enter`](DoubleBarrier::enter) returns when N members have entered,
//! [`leave`](Entered::leave) when every member of that round has left.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let step = client.double_barrier("step", 3)?;
//! let entered = step.enter().await?;     // all 3 are in
//! // ... compute ...
//! entered.leave().await?;                // all 3 are out
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Each member is an ephemeral sequential node `/double-barriers/<name>/m-<nonce>-<seq>` of
//! its client's session. A member that sees N or more member nodes creates the persistent
//! node `ready`, holding the largest sequence number it counted: the members of that round
//! are the nodes numbered up to it, and every one of them returns from `enter` on seeing
//! `ready` (so a member that leaves quickly cannot strand a slow one). A member leaves by
//! deleting its node, then waits until no node of its round is left; the last ones out delete
//! `ready` (at the version they read, so a later round's is safe).
//!
//! The barrier can be used again: a member that enters while `ready` is still there from an
//! earlier round (its number is above the one in `ready`) waits for that round to end, and
//! deletes the stale `ready` itself if every member of that round is gone, so a round whose
//! members all died does not block the next one.
//!
//! The directory holds the member count, written by the first member to enter: a member that
//! enters with another count gets [`Error::InvalidArgument`] (and leaves no node), so that
//! clients that disagree about N cannot each complete rounds of their own size.
//!
//! # Dead members
//!
//! Because member nodes are ephemeral, a member whose session ends (a crash, an expiry, a
//! closed client) is removed by the store within its session's TTL: the others' `leave` does
//! not wait for it, and before the round is complete it no longer counts towards N (the others
//! wait for another member to enter, or for their [`enter_timeout`](DoubleBarrier::enter_timeout)).
//! A member whose own session ends while it waits in `enter` gets
//! [`Error::SessionExpired`] (or [`Error::SessionClosed`]).
//!
//! # Cancel safety
//!
//! Dropping an `enter` future, or an [`Entered`] without calling `leave`, removes the member's
//! node (in the background, retried while its session lives). A dropped `leave` has already
//! removed it. Timeouts ([`DoubleBarrier::enter_timeout`], [`Entered::leave_timeout`]) are
//! [`Error::Timeout`] with the member's node removed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::adapter::{random_u64, Backoff};
use crate::client::{delete_at, Client};
use crate::error::{Error, Result};
use crate::kernel::{
    create_parents, Backend, ChildrenWatch, CreateMode, KeyWatch, Session, SessionStates,
};
use crate::path::{parse_sequence, Path};
use crate::recipes::queue::{own_node_gone, remove_in_background, Pending};

/// The most members a double barrier accepts: each wake-up lists every member node.
pub const MAX_MEMBERS: usize = 10_000;

/// The name of the node that marks a complete round.
const READY: &str = "ready";

/// A double barrier for a fixed number of members, identified by its path. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DoubleBarrier {
    client: Client,
    dir: Path,
    members: usize,
}

impl DoubleBarrier {
    /// The double barrier stored at `dir` for `members` members:
    /// [`Error::InvalidArgument`] unless `1 <= members <=` [`MAX_MEMBERS`].
    pub fn new(client: &Client, dir: Path, members: usize) -> Result<DoubleBarrier> {
        if members == 0 || members > MAX_MEMBERS {
            return Err(Error::InvalidArgument(format!(
                "a double barrier needs 1 to {MAX_MEMBERS} members, not {members}"
            )));
        }
        Ok(DoubleBarrier {
            client: client.clone(),
            dir,
            members,
        })
    }

    /// The barrier's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The number of members a round needs.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Enters and waits until the round has its members (see the [module docs](self)).
    /// Cancel-safe: dropping the future removes our node.
    pub async fn enter(&self) -> Result<Entered> {
        let backend = self.client.backend().clone();
        let session = self.client.session().await?;
        create_parents(&*backend, &self.dir).await?;
        self.agree_on_members(&*backend).await?;
        let marker = format!("m-{:016x}-", random_u64());
        let mut pending = Pending::new(&self.client, session, self.dir.clone(), marker.clone());
        let created = pending.create(&self.client, b"").await?;
        let session = pending.session().clone();
        let seq = created
            .sequence
            .or_else(|| parse_sequence(created.path.name()).map(|(_, n)| n))
            .ok_or_else(|| Error::MalformedData {
                path: created.path.to_string(),
                reason: "a sequential create returned no sequence number".to_owned(),
            })?;
        let mut states = session.states();
        let round = self
            .await_round(&*backend, &*session, &mut states, &created.path, seq)
            .await?;
        pending.keep();
        Ok(Entered {
            backend,
            session,
            dir: self.dir.clone(),
            node: created.path,
            marker,
            round,
            left: false,
        })
    }

    /// [`DoubleBarrier::enter`] for at most `timeout`; [`Error::Timeout`] after that, with our
    /// node removed.
    pub async fn enter_timeout(&self, timeout: Duration) -> Result<Entered> {
        match tokio::time::timeout(timeout, self.enter()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "double barrier {}: {} members did not enter within {timeout:?}",
                self.dir, self.members
            ))),
        }
    }

    /// The members in the barrier now (of any round), as node names in entering order.
    pub async fn entered(&self) -> Result<Vec<String>> {
        Ok(members(&**self.client.backend(), &self.dir)
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect())
    }

    /// Stores our member count in the barrier's directory if none is stored yet, and refuses
    /// to enter ([`Error::InvalidArgument`]) if another count is stored there.
    async fn agree_on_members(&self, backend: &dyn Backend) -> Result<()> {
        const ATTEMPTS: u32 = 8;
        for _ in 0..ATTEMPTS {
            let node = match backend.get(&self.dir).await {
                Ok(n) => n,
                Err(Error::NotFound { .. }) => {
                    create_parents(backend, &self.dir).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if node.value.is_empty() {
                let count = self.members.to_string();
                match backend
                    .set(&self.dir, count.as_bytes(), Some(node.stat.version))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(Error::VersionMismatch { .. } | Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let stored = decode_number(&self.dir, &node.value)?;
            if stored != self.members as u64 {
                return Err(Error::InvalidArgument(format!(
                    "double barrier {} is for {stored} members, not {} (delete it to change \
                     the count)",
                    self.dir, self.members
                )));
            }
            return Ok(());
        }
        Err(Error::Contended {
            op: "enter",
            path: self.dir.to_string(),
            attempts: ATTEMPTS,
        })
    }

    /// Waits until a round that includes our node (number `seq`) is complete; its bound.
    async fn await_round(
        &self,
        backend: &dyn Backend,
        session: &dyn Session,
        states: &mut SessionStates,
        node: &Path,
        seq: u64,
    ) -> Result<u64> {
        let ready = self.dir.join(READY)?;
        // Transient failures of the ready create, each followed by a fresh look.
        let mut retries = 0;
        loop {
            let (current, ready_events) = backend.watch(&ready).await?;
            if let Some(r) = current {
                let bound = decode_number(&ready, &r.value)?;
                if seq <= bound {
                    return Ok(bound);
                }
                // The ready of an earlier round: remove it if that round is over (also when
                // its members died), else wait for a change of either.
                let (names, children_events) = backend.watch_children(&self.dir).await?;
                if !parse_members(names).iter().any(|m| m.seq <= bound) {
                    delete_at(backend, &ready, r.stat.version).await?;
                    continue;
                }
                wait_change(session, states, ready_events, children_events).await?;
                continue;
            }
            let (names, children_events) = backend.watch_children(&self.dir).await?;
            let list = parse_members(names);
            if !list.iter().any(|m| m.seq == seq) {
                return Err(own_node_gone(session, states, node).await);
            }
            if list.len() >= self.members {
                let bound = list.iter().map(|m| m.seq).max().unwrap_or(seq);
                match backend
                    .create(&ready, bound.to_string().as_bytes(), CreateMode::Exact)
                    .await
                {
                    Ok(_) => return Ok(bound),
                    Err(Error::AlreadyExists { .. }) => continue,
                    // It may have happened: look again (a bounded number of times).
                    Err(e) if e.is_retryable() && retries < 8 => {
                        retries += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            wait_change(session, states, ready_events, children_events).await?;
        }
    }
}

/// A member inside a complete round. Dropping it without [`leave`](Entered::leave) removes
/// its node in the background.
pub struct Entered {
    backend: Arc<dyn Backend>,
    session: Arc<dyn Session>,
    dir: Path,
    node: Path,
    marker: String,
    round: u64,
    left: bool,
}

impl std::fmt::Debug for Entered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered")
            .field("node", &self.node)
            .field("round", &self.round)
            .finish()
    }
}

impl Entered {
    /// Our member node.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// The round: the largest member number in it (members numbered up to it belong to it).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Leaves: removes our node, then waits until every member of the round has left (or
    /// died). Dropping the future after it started is safe: our node is already gone.
    pub async fn leave(mut self) -> Result<()> {
        match self.backend.delete(&self.node, None).await {
            Ok(()) | Err(Error::NotFound { .. }) => self.left = true,
            // Dropping `self` retries the removal in the background.
            Err(e) => return Err(e),
        }
        let ready = self.dir.join(READY)?;
        let mut backoff = Backoff::reconnect();
        loop {
            let (names, mut events) = self.backend.watch_children(&self.dir).await?;
            if !parse_members(names).iter().any(|m| m.seq <= self.round) {
                // Our round is over: its ready goes, unless a later round's replaced it.
                match self.backend.get(&ready).await {
                    Ok(n) if decode_number(&ready, &n.value).ok() == Some(self.round) => {
                        delete_at(&*self.backend, &ready, n.stat.version).await?;
                    }
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                return Ok(());
            }
            match events.next().await {
                Some(Ok(_)) => backoff.reset(),
                Some(Err(e)) if e.is_retryable() => backoff.wait().await,
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Closed),
            }
        }
    }

    /// [`Entered::leave`] for at most `timeout`; [`Error::Timeout`] after that (our node is
    /// removed either way).
    pub async fn leave_timeout(self, timeout: Duration) -> Result<()> {
        let dir = self.dir.clone();
        match tokio::time::timeout(timeout, self.leave()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "double barrier {dir}: the round's members did not all leave within {timeout:?}"
            ))),
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if !self.left {
            remove_in_background(
                self.backend.clone(),
                self.session.clone(),
                self.dir.clone(),
                self.marker.clone(),
            );
        }
    }
}

/// A member node: its name and sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    seq: u64,
}

/// The member nodes of `dir` in sequence order (`ready` and other names are not members).
async fn members(backend: &dyn Backend, dir: &Path) -> Result<Vec<Entry>> {
    match backend.children(dir).await {
        Ok(names) => Ok(parse_members(names)),
        Err(crate::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The member entries among `names`, in sequence order.
fn parse_members(names: Vec<String>) -> Vec<Entry> {
    let mut out: Vec<Entry> = names
        .into_iter()
        .filter(|n| n.starts_with("m-"))
        .filter_map(|name| {
            let seq = parse_sequence(&name)?.1;
            Some(Entry { name, seq })
        })
        .collect();
    out.sort_by_key(|e| e.seq);
    out
}

/// The number stored in `ready` (the round's bound) or in the directory (the member count).
fn decode_number(path: &Path, value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::MalformedData {
            path: path.to_string(),
            reason: format!(
                "a double barrier's node holds a decimal number, not {:?}",
                String::from_utf8_lossy(value)
            ),
        })
}

/// Waits for an event of either watch, or fails when our session ends.
async fn wait_change(
    session: &dyn Session,
    states: &mut SessionStates,
    mut ready: KeyWatch,
    mut children: ChildrenWatch,
) -> Result<()> {
    loop {
        tokio::select! {
            ev = ready.next() => return match ev {
                Some(Err(e)) if !e.is_retryable() => Err(e),
                // A change, or a broken watch: look again (a fresh watch is set up).
                _ => Ok(()),
            },
            ev = children.next() => return match ev {
                Some(Err(e)) if !e.is_retryable() => Err(e),
                _ => Ok(()),
            },
            st = states.next() => match st {
                Some(s) if s.is_final() => return Err(Error::session_gone(session.id(), s)),
                Some(_) => {}
                None => return Err(Error::session_gone(session.id(), session.state())),
            },
        }
    }
}
