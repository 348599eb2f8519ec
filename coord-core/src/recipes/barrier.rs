//! A barrier: holders [`set`](Barrier::set) and [`remove`](Barrier::remove) it, waiters
//! [`wait`](Barrier::wait) until it is removed (Curator's `DistributedBarrier`, kazoo's
//! `Barrier`).
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let gate = client.barrier("deploy")?;
//! gate.set().await?;                      // on the coordinator
//! // ... elsewhere: gate.wait().await? returns once the coordinator calls remove()
//! gate.remove().await?;
//! # Ok(()) }
//! ```
//!
//! # Who keeps a barrier set
//!
//! The barrier is one node, `/barriers/<name>`; it is set while the node exists. By default
//! ([`BarrierMode::Session`]) the node is ephemeral, bound to the setter's session: a setter
//! that dies (or whose session expires, or whose client is closed or shut down) releases
//! every waiter within its session's TTL, so no barrier is stuck forever by a dead setter.
//! Waiters cannot tell that release from a [`remove`](Barrier::remove); a setter whose
//! session expired does not set the barrier again by itself. With
//! [`BarrierMode::Persistent`] (the behaviour of Curator and kazoo) the barrier outlives its
//! setter until somebody removes it: choose it when waiters must not go on before an
//! explicit removal, and watch for barriers left behind.
//!
//! Waiting uses no session and writes nothing: a dropped [`wait`](Barrier::wait) leaves nothing
//! behind, and waiters do not care about their own session's expiry.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::adapter::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, CreateMode, KeyEvent, Session};
use crate::path::Path;

/// What keeps a set barrier alive (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BarrierMode {
    /// The barrier is an ephemeral node of the setter's session: it goes when the setter's
    /// session ends.
    #[default]
    Session,
    /// The barrier is a persistent node: it stays until removed.
    Persistent,
}

/// A barrier, identified by its path. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Barrier {
    client: Client,
    path: Path,
    mode: BarrierMode,
}

impl Barrier {
    /// The barrier stored at `path` (in [`BarrierMode::Session`]).
    pub fn new(client: &Client, path: Path) -> Barrier {
        Barrier {
            client: client.clone(),
            path,
            mode: BarrierMode::default(),
        }
    }

    /// Sets what keeps a barrier set by this handle alive.
    pub fn with_mode(mut self, mode: BarrierMode) -> Barrier {
        self.mode = mode;
        self
    }

    /// The barrier's node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the barrier: `true` if this call set it, `false` if it was set already (by anyone,
    /// in any mode; it is left as it is).
    pub async fn set(&self) -> Result<bool> {
        let backend = self.client.backend();
        if let Some(parent) = self.path.parent() {
            create_parents(&**backend, &parent).await?;
        }
        let created = match self.mode {
            BarrierMode::Persistent => backend
                .create(&self.path, b"", CreateMode::Exact)
                .await
                .map(drop),
            BarrierMode::Session => self.create_ephemeral().await,
        };
        match created {
            Ok(()) => Ok(true),
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the barrier node on the client's session. A session that had already ended
    /// when we took it created nothing: once more on a fresh one. After a retryable failure the
    /// create may have happened: a node of our session there means it did.
    async fn create_ephemeral(&self) -> Result<()> {
        let mut session: Arc<dyn Session> = self.client.session().await?;
        let mut fresh_tried = false;
        loop {
            match session.create(&self.path, b"", CreateMode::Exact).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_session_gone() && session.state().is_final() && !fresh_tried => {
                    fresh_tried = true;
                    session = self.client.session().await?;
                }
                Err(e) if e.is_retryable() => {
                    return match self.client.exists(&self.path).await? {
                        Some(stat) if stat.ephemeral_owner.as_ref() == Some(session.id()) => Ok(()),
                        _ => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the barrier, releasing every waiter: `true` if this call removed it, `false`
    /// if it was not set.
    pub async fn remove(&self) -> Result<bool> {
        match self.client.delete(&self.path, None).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the barrier is set now.
    pub async fn is_set(&self) -> Result<bool> {
        Ok(self.client.exists(&self.path).await?.is_some())
    }

    /// Waits until the barrier is not set (returns at once if it is not set now). A watch
    /// that breaks on a transient error (a server restart) is set up again with a back-off;
    /// other errors end the wait. Cancel-safe: it writes nothing.
    pub async fn wait(&self) -> Result<()> {
        let mut backoff = Backoff::reconnect();
        loop {
            let (node, mut events) = self.client.watch(&self.path).await?;
            if node.is_none() {
                return Ok(());
            }
            loop {
                match events.next().await {
                    Some(Ok(KeyEvent::Deleted | KeyEvent::Resync(None))) => return Ok(()),
                    Some(Ok(_)) => backoff.reset(),
                    Some(Err(e)) if e.is_retryable() => {
                        tracing::debug!(path = %self.path, error = %e, "re-watching a barrier");
                        backoff.wait().await;
                        break;
                    }
                    Some(Err(e)) => return Err(e),
                    // Watches end only with their backend, which we hold: treat as closed.
                    None => return Err(Error::Closed),
                }
            }
        }
    }

    /// Waits at most `timeout` for the barrier to be removed; [`Error::Timeout`] after that.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "barrier {} still set after {timeout:?}",
                self.path
            ))),
        }
    }
}
