//! A distributed counting semaphore: at most `limit` leases held at once, FIFO, herd-free.
//!
//! Waiters queue as sequential ephemeral nodes `s<k>-…` (taking `k` leases) in the
//! semaphore's directory, next to the `limit` key that the first user writes. Holders are the
//! longest prefix of the queue whose leases fit in the limit, so nobody overtakes. The first
//! waiter watches the holders ahead of it; every later waiter watches only its predecessor,
//! which writes a mark to its node when it gets its leases. A release thus wakes the first
//! waiter, and each waiter let in wakes one more: the wake-ups per release are the leases
//! freed plus one, whatever the number of waiters (Curator's semaphore wakes every waiter on
//! every change). A lease is lost when its session ends (its node goes with it).
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let slots = client.semaphore("encoders", 4)?;
//! let lease = slots.acquire().await?;
//! // ... at most 4 holders run this at once ...
//! lease.release().await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, CreateMode};
use crate::path::Path;
use crate::recipes::queue::{self, Acquire, Held, Instruments, Kind, Rule, SuspendPolicy};

/// The largest limit of a semaphore. The first waiter watches every holder ahead of it (one
/// watch each), so the limit bounds the watches one client holds.
pub const MAX_LIMIT: u64 = 1024;

/// The name of the key holding the limit, in the semaphore's directory.
const LIMIT_KEY: &str = "limit";

/// One queued candidate of a semaphore, as [`Semaphore::candidates`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreCandidate {
    /// The candidate's node name.
    pub node: String,
    /// The leases it takes.
    pub leases: u64,
    /// Whether it holds (or is taking) its leases; false: waiting.
    pub holding: bool,
}

/// A semaphore, identified by its path and limit. Cheap to clone; clones share the
/// instruments.
#[derive(Clone)]
pub struct Semaphore {
    client: Client,
    path: Path,
    limit: u64,
    policy: SuspendPolicy,
    instruments: Arc<Instruments>,
}

impl Semaphore {
    /// The semaphore stored at `path` with `limit` leases: [`Error::InvalidArgument`] if the
    /// limit is 0 or above [`MAX_LIMIT`] (nothing is written).
    pub fn new(client: &Client, path: Path, limit: u64) -> Result<Semaphore> {
        check_limit(limit)?;
        Ok(Semaphore {
            client: client.clone(),
            path,
            limit,
            policy: SuspendPolicy::default(),
            instruments: Arc::default(),
        })
    }

    /// Sets what a suspended session means for a held lease.
    pub fn with_suspend_policy(mut self, policy: SuspendPolicy) -> Semaphore {
        self.policy = policy;
        self
    }

    /// The semaphore's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limit this handle was made with.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// How many times waiters of this handle (and its clones) were woken by a watch.
    pub fn wakeups(&self) -> u64 {
        self.instruments.wakeups.load(Ordering::Relaxed)
    }

    /// The limit stored with the semaphore, `None` if it was never used.
    pub async fn stored_limit(&self) -> Result<Option<u64>> {
        let key = self.path.join(LIMIT_KEY)?;
        match self.client.get(&key).await {
            Ok(node) => parse_limit(&key, &node.value).map(Some),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes our limit if none is stored yet; [`Error::LimitMismatch`] if another one is.
    async fn agree_on_limit(&self) -> Result<()> {
        let stored = match self.stored_limit().await? {
            Some(stored) => stored,
            None => {
                create_parents(&**self.client.backend(), &self.path).await?;
                let key = self.path.join(LIMIT_KEY)?;
                let ours = self.limit.to_string();
                match self
                    .client
                    .create(&key, ours.as_bytes(), CreateMode::Exact)
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Somebody else wrote it first: theirs is the limit.
                    Err(Error::AlreadyExists { .. }) => {
                        self.stored_limit().await?.unwrap_or(self.limit)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if stored != self.limit {
            return Err(Error::LimitMismatch {
                path: self.path.to_string(),
                stored,
                requested: self.limit,
            });
        }
        Ok(())
    }

    async fn take(&self, leases: u64, try_only: bool) -> Result<Option<Lease>> {
        if leases == 0 || leases > self.limit {
            return Err(Error::InvalidArgument(format!(
                "cannot take {leases} leases of semaphore {} (limit {})",
                self.path, self.limit
            )));
        }
        self.agree_on_limit().await?;
        let tag = format!("s{leases}");
        let kind = Kind {
            tag: &tag,
            rule: Rule::Leases {
                limit: self.limit,
                weight: leases,
            },
        };
        let acquired = queue::acquire_as(
            &self.client,
            &self.path,
            b"",
            self.policy,
            try_only,
            &self.instruments,
            kind,
        )
        .await?;
        Ok(match acquired {
            Acquire::Held(held) => Some(Lease { held, leases }),
            Acquire::Busy => None,
        })
    }

    /// Waits for one lease. Cancel-safe: dropping the future leaves nothing behind.
    pub async fn acquire(&self) -> Result<Lease> {
        self.acquire_many(1).await
    }

    /// Waits for `leases` leases at once (1..=limit, else [`Error::InvalidArgument`]).
    /// FIFO: later waiters do not overtake it, even those that would fit now. Cancel-safe.
    pub async fn acquire_many(&self, leases: u64) -> Result<Lease> {
        self.take(leases, false).await?.ok_or_else(|| {
            Error::backend(
                self.client.capabilities().backend,
                "semaphore wait ended without a lease",
                true,
            )
        })
    }

    /// Takes one lease if one is free and nobody waits ahead; `None` otherwise.
    pub async fn try_acquire(&self) -> Result<Option<Lease>> {
        self.take(1, true).await
    }

    /// Takes `leases` leases if they are free and nobody waits ahead; `None` otherwise.
    pub async fn try_acquire_many(&self, leases: u64) -> Result<Option<Lease>> {
        self.take(leases, true).await
    }

    /// Waits at most `timeout` for one lease; [`Error::Timeout`] after that, with our waiting
    /// node removed.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Lease> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "no lease of semaphore {} within {timeout:?}",
                self.path
            ))),
        }
    }

    /// Every queued candidate in order, with whether it holds (for operators: `coordctl
    /// semaphore`), computed with the stored limit (this handle's if none is stored).
    pub async fn candidates(&self) -> Result<Vec<SemaphoreCandidate>> {
        let limit = self.stored_limit().await?.unwrap_or(self.limit);
        let entries =
            queue::entries(&**self.client.backend(), &self.path, queue::Layout::Coord).await?;
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let leases = e.leases(limit);
                let rule = Rule::Leases {
                    limit,
                    weight: leases,
                };
                SemaphoreCandidate {
                    node: e.name.clone(),
                    leases,
                    holding: rule.decide(&entries[..i]) == queue::Decision::Hold,
                }
            })
            .collect())
    }
}

fn check_limit(limit: u64) -> Result<()> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "a semaphore's limit must be 1..={MAX_LIMIT}, not {limit}"
        )))
    }
}

fn parse_limit(key: &Path, value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|l| check_limit(*l).is_ok())
        .ok_or_else(|| Error::MalformedData {
            path: key.to_string(),
            reason: format!("a semaphore's limit must be a number 1..={MAX_LIMIT}"),
        })
}

/// Leases held. Dropping it releases them (in the background).
pub struct Lease {
    pub(crate) held: Held,
    leases: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("node", &self.held.node)
            .field("token", &self.held.token)
            .field("leases", &self.leases)
            .finish()
    }
}

impl Lease {
    held_role_methods!("lease");

    /// How many leases this holds.
    pub fn leases(&self) -> u64 {
        self.leases
    }

    /// Releases the leases: the waiters they let in go on.
    pub async fn release(mut self) -> Result<()> {
        self.held.release().await
    }
}
