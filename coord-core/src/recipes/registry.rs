//! Service registry and discovery, on top of [group membership](crate::group).
//!
//! An instance is an ephemeral node `/services/<service>/<id>` holding JSON:
//!
//! ```json
//! {"service":"api","id":"api-1","address":"10.0.0.7","port":8080,"metadata":{"zone":"a"}}
//! ```
//!
//! `metadata` is optional (an empty map when absent); unknown fields are ignored so that
//! newer writers stay readable. A [`Registration`] re-registers on the client's next session
//! after an expiry; if that fails for good, [`Registration::state`] says so (see
//! [`MembershipState::Failed`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::path::Path;
use crate::recipes::group::{Group, Member, Membership, MembershipState};

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name (one path segment).
    pub service: String,
    /// The instance's id, unique within the service (one path segment).
    pub id: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance without metadata.
    pub fn new(service: &str, id: &str, address: &str, port: u16) -> Instance {
        Instance {
            service: service.to_owned(),
            id: id.to_owned(),
            address: address.to_owned(),
            port,
            metadata: BTreeMap::new(),
        }
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: &str, value: &str) -> Instance {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// The registry, rooted at a path (`/services` by default). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    client: Client,
    root: Path,
}

fn decode(path: &Path, m: &Member) -> Result<Instance> {
    serde_json::from_slice(&m.data).map_err(|e| Error::MalformedData {
        path: path.join(&m.id).map(|p| p.to_string()).unwrap_or_default(),
        reason: e.to_string(),
    })
}

impl Registry {
    /// The registry rooted at `root`.
    pub fn new(client: &Client, root: Path) -> Registry {
        Registry {
            client: client.clone(),
            root,
        }
    }

    fn group(&self, service: &str) -> Result<Group> {
        Ok(Group::new(&self.client, self.root.join(service)?))
    }

    /// Registers `instance` (ephemeral; re-registered after a session expiry).
    pub async fn register(&self, instance: &Instance) -> Result<Registration> {
        let data =
            serde_json::to_vec(instance).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let membership = self
            .group(&instance.service)?
            .join(&instance.id, &data)
            .await?;
        Ok(Registration { membership })
    }

    /// The instances of `service` now. A stored entry that is not the documented JSON gives
    /// [`Error::MalformedData`].
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>> {
        let g = self.group(service)?;
        g.members()
            .await?
            .iter()
            .map(|m| decode(g.path(), m))
            .collect()
    }

    /// The names of the registered services (those with a node, possibly without instances).
    pub async fn services(&self) -> Result<Vec<String>> {
        match self.client.children(&self.root).await {
            Ok(v) => Ok(v),
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The full instance list of `service` after each change, starting with the current one.
    /// Malformed entries are skipped (and logged); use [`Registry::discover`] to see them as
    /// errors.
    pub async fn watch(
        &self,
        service: &str,
    ) -> Result<impl Stream<Item = Result<Vec<Instance>>> + Send> {
        let g = self.group(service)?;
        let path = g.path().clone();
        Ok(g.watch().await?.map(move |r| {
            r.map(|members| {
                members
                    .iter()
                    .filter_map(|m| match decode(&path, m) {
                        Ok(i) => Some(i),
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping a malformed registry entry");
                            None
                        }
                    })
                    .collect()
            })
        }))
    }

    /// A cache of `service`'s instances that follows changes in the background: lookups do
    /// no I/O.
    pub async fn cache(&self, service: &str) -> Result<ServiceCache> {
        let mut stream = Box::pin(self.watch(service).await?);
        let first = match stream.next().await {
            Some(r) => r?,
            None => Vec::new(),
        };
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(async move {
            while let Some(r) = stream.next().await {
                match r {
                    Ok(list) => {
                        if tx.send(Arc::new(list)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "service cache watch ended");
                        return;
                    }
                }
            }
        });
        Ok(ServiceCache { rx, task })
    }
}

/// A live registration. Dropping it deregisters (in the background).
#[derive(Debug)]
pub struct Registration {
    membership: Membership,
}

impl Registration {
    /// Deregisters now.
    pub async fn deregister(self) -> Result<()> {
        self.membership.leave().await
    }

    /// How many times it registered again on a new session.
    pub fn reregistrations(&self) -> u64 {
        self.membership.rejoins()
    }

    /// The instance's node.
    pub fn node(&self) -> &Path {
        self.membership.node()
    }

    /// The registration's state now: registered, registering again after a session expiry,
    /// or failed for good (see [`MembershipState`]).
    pub fn state(&self) -> MembershipState {
        self.membership.state()
    }

    /// The state after each change, starting with the current one; ends after
    /// [`MembershipState::Failed`].
    pub fn states(&self) -> impl Stream<Item = MembershipState> + Send {
        self.membership.states()
    }

    /// Resolves with the error when registering again after a session expiry failed for
    /// good: the instance is no longer discoverable (see [`Membership::failed`]).
    pub async fn failed(&self) -> Error {
        self.membership.failed().await
    }
}

/// Instances of one service kept up to date by a background watch.
pub struct ServiceCache {
    rx: watch::Receiver<Arc<Vec<Instance>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCache")
            .field("instances", &self.rx.borrow().len())
            .finish()
    }
}

impl ServiceCache {
    /// The instances as last seen (no I/O).
    pub fn instances(&self) -> Arc<Vec<Instance>> {
        self.rx.borrow().clone()
    }

    /// Waits for the next change; `false` if the cache stopped following.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Drop for ServiceCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}
