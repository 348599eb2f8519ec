//! Group membership: members join with data under a group path, as ephemeral nodes, and
//! everybody can list and watch the members.
//!
//! A [`Membership`] follows the client's session: when the session expires, it joins again on
//! the client's next session, so a member that lost contact for a while comes back by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, ChildrenEvent, CreateMode, Session, SessionId};
use crate::path::Path;

/// A group, identified by its path. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Group {
    client: Client,
    path: Path,
}

/// A member as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id (its node name).
    pub id: String,
    /// The data it joined with.
    pub data: Vec<u8>,
}

impl Group {
    /// The group stored at `path`.
    pub fn new(client: &Client, path: Path) -> Group {
        Group {
            client: client.clone(),
            path,
        }
    }

    /// The group's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins as member `id` (one path segment) with `data`. Fails with
    /// [`Error::AlreadyExists`] if a live member already has that id.
    pub async fn join(&self, id: &str, data: &[u8]) -> Result<Membership> {
        let node = self.path.join(id)?;
        crate::adapter::check_value(self.client.capabilities(), data)?;
        create_parents(&**self.client.backend(), &self.path).await?;
        let mut session = self.client.session().await?;
        if let Err(e) = session.create(&node, data, CreateMode::Exact).await {
            // A session that had already ended when we took it created nothing: join once more
            // on a fresh one.
            if !(e.is_session_gone() && session.state().is_final()) {
                return Err(e);
            }
            session = self.client.session().await?;
            session.create(&node, data, CreateMode::Exact).await?;
        }
        let rejoins = Arc::new(AtomicU64::new(0));
        let owner = Arc::new(Mutex::new(session.id().clone()));
        let task = tokio::spawn(follow(
            self.client.clone(),
            session,
            node.clone(),
            data.to_vec(),
            rejoins.clone(),
            owner.clone(),
        ));
        Ok(Membership {
            client: self.client.clone(),
            node,
            task,
            rejoins,
            owner,
            left: false,
        })
    }

    /// The members now, sorted by id.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let ids = match self.client.children(&self.path).await {
            Ok(ids) => ids,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        read_members(&self.client, &self.path, ids).await
    }

    /// The member list after each change, starting with the current one.
    pub async fn watch(&self) -> Result<impl Stream<Item = Result<Vec<Member>>> + Send> {
        create_parents(&**self.client.backend(), &self.path).await?;
        let (ids, events) = self.client.watch_children(&self.path).await?;
        let client = self.client.clone();
        let path = self.path.clone();
        let first = read_members(&client, &path, ids).await;
        let rest = futures::stream::unfold(
            (client, path, events),
            |(client, path, mut events)| async move {
                let ids = match events.next().await? {
                    Ok(ChildrenEvent::Changed(ids)) | Ok(ChildrenEvent::Resync(ids)) => ids,
                    Ok(ChildrenEvent::ParentDeleted) => Vec::new(),
                    Err(e) => return Some((Err(e), (client, path, events))),
                };
                let members = read_members(&client, &path, ids).await;
                Some((members, (client, path, events)))
            },
        );
        Ok(futures::stream::once(async move { first }).chain(rest))
    }
}

/// Reads the data of each listed member, up to 32 reads in flight (one round trip each on the
/// real backends); members that left meanwhile are skipped. The order of `ids` is kept.
async fn read_members(client: &Client, path: &Path, ids: Vec<String>) -> Result<Vec<Member>> {
    let reads = ids.into_iter().map(|id| async move {
        match client.get(&path.join(&id)?).await {
            Ok(n) => Ok(Some(Member { id, data: n.value })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    });
    let found: Vec<Option<Member>> = futures::stream::iter(reads)
        .buffered(32)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Re-joins on each new session after the current one ends, until the membership is dropped.
async fn follow(
    client: Client,
    mut session: Arc<dyn Session>,
    node: Path,
    data: Vec<u8>,
    rejoins: Arc<AtomicU64>,
    owner: Arc<Mutex<SessionId>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Wait for the session to end.
        let mut states = session.states();
        while let Some(s) = states.next().await {
            if s.is_final() {
                break;
            }
        }
        // Join again on a fresh session; retry transient failures with a bounded back-off.
        loop {
            let attempt = async {
                let s = client.session().await?;
                create_parents(&**client.backend(), node.parent().as_ref().unwrap_or(&node))
                    .await?;
                match s.create(&node, &data, CreateMode::Exact).await {
                    Ok(_) => Ok(s),
                    Err(e) => Err(e),
                }
            };
            match attempt.await {
                Ok(s) => {
                    *owner.lock().unwrap_or_else(|p| p.into_inner()) = s.id().clone();
                    session = s;
                    rejoins.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(e) => {
                    // AlreadyExists: the old session's node may not be cleaned up yet.
                    tracing::debug!(%node, error = %e, "re-join failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// A live membership. Dropping it leaves the group (in the background).
pub struct Membership {
    client: Client,
    node: Path,
    task: tokio::task::JoinHandle<()>,
    rejoins: Arc<AtomicU64>,
    /// The session that owns the node now: we only ever delete our own node, never one
    /// another member made under the same id after our session ended.
    owner: Arc<Mutex<SessionId>>,
    left: bool,
}

/// Deletes `node` if it is still the one `owner` created.
async fn delete_own(client: &Client, node: &Path, owner: &SessionId) -> Result<()> {
    let Some(stat) = client.exists(node).await? else {
        return Ok(());
    };
    if stat.ephemeral_owner.as_ref() != Some(owner) {
        return Ok(());
    }
    match client.delete(node, Some(stat.version)).await {
        Ok(()) | Err(Error::NotFound { .. }) | Err(Error::VersionMismatch { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .finish()
    }
}

impl Membership {
    /// The member's node.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// How many times the membership joined again on a new session.
    pub fn rejoins(&self) -> u64 {
        self.rejoins.load(Ordering::Relaxed)
    }

    /// Leaves the group now.
    pub async fn leave(mut self) -> Result<()> {
        self.left = true;
        self.task.abort();
        let owner = self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        delete_own(&self.client, &self.node, &owner).await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
        if self.left {
            return;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let node = self.node.clone();
            let owner = self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone();
            h.spawn(async move {
                if let Err(e) = delete_own(&client, &node, &owner).await {
                    tracing::warn!(%node, error = %e, "could not leave the group");
                }
            });
        }
    }
}
