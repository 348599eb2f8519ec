//! A distributed mutex with the same herd-free algorithm as the election.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let lock = client.lock("reports")?;
//! let guard = lock.lock().await?;
//! // ... write with guard.fencing_token() ...
//! guard.unlock().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::client::Client;
use crate::dialect::{Candidacy, Dialect};
use crate::election::LeaderInfo;
use crate::error::{Error, Result};
use crate::path::Path;
use crate::recipes::election::{hold_states, participants_of, protocol, Protocol};
use crate::recipes::hold::Hold;
use crate::recipes::queue::{self, Acquire, HoldState, Instruments, SuspendPolicy};

/// A lock, identified by its path. Cheap to clone.
#[derive(Clone)]
pub struct Lock {
    client: Client,
    path: Path,
    policy: SuspendPolicy,
    dialect: Dialect,
    instruments: Arc<Instruments>,
}

impl Lock {
    /// The lock stored at `path`, in the client's default dialect
    /// ([`Client::with_default_dialect`]; coord's own unless set).
    pub fn new(client: &Client, path: Path) -> Lock {
        Lock {
            client: client.clone(),
            path,
            policy: SuspendPolicy::default(),
            dialect: client.default_dialect(),
            instruments: Arc::default(),
        }
    }

    /// Speaks `dialect`'s protocol, to share the lock with that peer's clients (see
    /// [`crate::dialect`]). A dialect the backend cannot serve fails every call with
    /// [`Error::Unsupported`] before any I/O.
    pub fn with_dialect(mut self, dialect: Dialect) -> Lock {
        self.dialect = dialect;
        self
    }

    /// The dialect spoken.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The lock's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every holder and waiter, in the order they get the lock (the first holds it).
    pub async fn participants(&self) -> Result<Vec<LeaderInfo>> {
        match protocol(&self.client, self.dialect)? {
            Protocol::Queue(layout) => participants_of(&self.client, &self.path, layout).await,
            Protocol::Driver(d) => d.participants(&self.path).await,
        }
    }

    /// Sets what a suspended session means for a held lock.
    pub fn with_suspend_policy(mut self, policy: SuspendPolicy) -> Lock {
        self.policy = policy;
        self
    }

    async fn acquire(&self, try_only: bool) -> Result<Acquire<Hold>> {
        match protocol(&self.client, self.dialect)? {
            Protocol::Queue(layout) => Ok(
                match queue::acquire(
                    &self.client,
                    &self.path,
                    layout,
                    b"",
                    self.policy,
                    try_only,
                    &self.instruments,
                )
                .await?
                {
                    Acquire::Held(h) => Acquire::Held(Hold::Queue(h)),
                    Acquire::Busy => Acquire::Busy,
                },
            ),
            Protocol::Driver(driver) => {
                let session = self.client.session().await?;
                Ok(
                    match driver
                        .acquire(Candidacy {
                            session,
                            name: &self.path,
                            value: b"",
                            try_only,
                            policy: self.policy,
                            wakeups: &self.instruments.wakeups,
                        })
                        .await?
                    {
                        Some(h) => Acquire::Held(Hold::Driver(h)),
                        None => Acquire::Busy,
                    },
                )
            }
        }
    }

    /// Waits until the lock is held. Cancel-safe: dropping the future leaves nothing behind.
    pub async fn lock(&self) -> Result<LockGuard> {
        match self.acquire(false).await? {
            Acquire::Held(held) => Ok(LockGuard { held }),
            Acquire::Busy => Err(Error::backend(
                self.client.capabilities().backend,
                "lock wait ended without the lock",
                true,
            )),
        }
    }

    /// Takes the lock if it is free now; `None` if somebody holds it or waits ahead.
    pub async fn try_lock(&self) -> Result<Option<LockGuard>> {
        match self.acquire(true).await? {
            Acquire::Held(held) => Ok(Some(LockGuard { held })),
            Acquire::Busy => Ok(None),
        }
    }

    /// Waits at most `timeout` for the lock; [`Error::Timeout`] after that, with our waiting
    /// node removed.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "lock {} not acquired within {timeout:?}",
                self.path
            ))),
        }
    }
}

/// A held lock. Dropping it unlocks (in the background).
pub struct LockGuard {
    pub(crate) held: Hold,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("node", self.held.node())
            .field("token", &self.held.token())
            .finish()
    }
}

impl LockGuard {
    /// The fencing token: the store's creation stamp of the holder's node (never 0), strictly
    /// increasing across successive holders of this lock, as for
    /// [`Leadership::fencing_token`](crate::election::Leadership::fencing_token).
    pub fn fencing_token(&self) -> u64 {
        self.held.token()
    }

    /// The node that holds the lock.
    pub fn node(&self) -> &Path {
        self.held.node()
    }

    /// The state now.
    pub fn state(&self) -> HoldState {
        self.held.state()
    }

    /// Whether the lock is still held.
    pub fn is_held(&self) -> bool {
        self.state() == HoldState::Holding
    }

    /// The state after each change; ends after Lost.
    pub fn states(&self) -> impl Stream<Item = HoldState> + Send {
        hold_states(self.held.states())
    }

    /// Resolves when the lock is lost (session expired, suspended under the default policy,
    /// or the node deleted).
    pub async fn lost(&self) {
        self.held.lost().await
    }

    /// Releases the lock.
    pub async fn unlock(mut self) -> Result<()> {
        self.held.release().await
    }
}
