//! A distributed read-write lock: many readers or one writer, fair and herd-free.
//!
//! Readers and writers queue in one directory (`r-…` and `w-…` sequential ephemeral nodes,
//! see the candidate queue of the election and the lock). FIFO by sequence: a reader holds
//! when no writer is ahead of it, a writer when nobody is; so a waiting writer blocks the
//! readers that come after it. A writer watches only its immediate predecessor, a reader only
//! the last writer ahead of it: a release wakes only those it lets in (one writer, or the
//! readers up to the next writer).
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let lock = client.rwlock("catalog")?;
//! let r = lock.read().await?; // shared with other readers
//! r.unlock().await?;
//! let w = lock.write().await?; // alone
//! // ... write with w.fencing_token(), or w.guarded_set(..) ...
//! w.unlock().await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::path::Path;
use crate::recipes::queue::{self, Acquire, Held, Instruments, Kind, Rule, SuspendPolicy};

/// The tag of a writer's node.
const WRITER_TAG: &str = "w";

/// Read (shared) or write (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Shared with other readers.
    Read,
    /// Alone.
    Write,
}

impl Mode {
    fn kind(self) -> Kind<'static> {
        match self {
            Mode::Read => Kind {
                tag: queue::READER_TAG,
                rule: Rule::Shared,
            },
            Mode::Write => Kind {
                tag: WRITER_TAG,
                rule: Rule::Exclusive,
            },
        }
    }
}

/// One queued candidate of a read-write lock, as [`RwLock::candidates`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RwCandidate {
    /// The candidate's node name.
    pub node: String,
    /// Reader or writer (a node of any other tag counts as a writer).
    pub mode: Mode,
    /// Whether it holds (or is taking) the lock; false: waiting.
    pub holding: bool,
}

/// A read-write lock, identified by its path. Cheap to clone; clones share the instruments.
#[derive(Clone)]
pub struct RwLock {
    client: Client,
    path: Path,
    policy: SuspendPolicy,
    instruments: Arc<Instruments>,
}

impl RwLock {
    /// The read-write lock stored at `path`.
    pub fn new(client: &Client, path: Path) -> RwLock {
        RwLock {
            client: client.clone(),
            path,
            policy: SuspendPolicy::default(),
            instruments: Arc::default(),
        }
    }

    /// Sets what a suspended session means for a held lock.
    pub fn with_suspend_policy(mut self, policy: SuspendPolicy) -> RwLock {
        self.policy = policy;
        self
    }

    /// The lock's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times waiters of this handle (and its clones) were woken by a watch.
    pub fn wakeups(&self) -> u64 {
        self.instruments.wakeups.load(Ordering::Relaxed)
    }

    async fn acquire(&self, mode: Mode, try_only: bool) -> Result<Option<Held>> {
        let acquired = queue::acquire_as(
            &self.client,
            &self.path,
            b"",
            self.policy,
            try_only,
            &self.instruments,
            mode.kind(),
        )
        .await?;
        Ok(match acquired {
            Acquire::Held(held) => Some(held),
            Acquire::Busy => None,
        })
    }

    async fn wait(&self, mode: Mode) -> Result<Held> {
        self.acquire(mode, false).await?.ok_or_else(|| {
            Error::backend(
                self.client.capabilities().backend,
                "read-write lock wait ended without the lock",
                true,
            )
        })
    }

    async fn wait_timeout(&self, mode: Mode, timeout: Duration) -> Result<Held> {
        match tokio::time::timeout(timeout, self.wait(mode)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "{mode:?} lock {} not acquired within {timeout:?}",
                self.path
            ))),
        }
    }

    /// Waits until the lock is held for reading (no writer ahead). Cancel-safe: dropping the
    /// future leaves nothing behind.
    pub async fn read(&self) -> Result<ReadGuard> {
        Ok(ReadGuard {
            held: self.wait(Mode::Read).await?,
        })
    }

    /// Waits until the lock is held for writing (nobody ahead). Cancel-safe.
    pub async fn write(&self) -> Result<WriteGuard> {
        Ok(WriteGuard {
            held: self.wait(Mode::Write).await?,
        })
    }

    /// Takes the lock for reading if no writer holds it or waits for it now; `None` otherwise.
    pub async fn try_read(&self) -> Result<Option<ReadGuard>> {
        Ok(self
            .acquire(Mode::Read, true)
            .await?
            .map(|held| ReadGuard { held }))
    }

    /// Takes the lock for writing if nobody holds it or waits for it now; `None` otherwise.
    pub async fn try_write(&self) -> Result<Option<WriteGuard>> {
        Ok(self
            .acquire(Mode::Write, true)
            .await?
            .map(|held| WriteGuard { held }))
    }

    /// Waits at most `timeout` to read; [`Error::Timeout`] after that, with our waiting node
    /// removed.
    pub async fn read_timeout(&self, timeout: Duration) -> Result<ReadGuard> {
        Ok(ReadGuard {
            held: self.wait_timeout(Mode::Read, timeout).await?,
        })
    }

    /// Waits at most `timeout` to write; [`Error::Timeout`] after that, with our waiting node
    /// removed.
    pub async fn write_timeout(&self, timeout: Duration) -> Result<WriteGuard> {
        Ok(WriteGuard {
            held: self.wait_timeout(Mode::Write, timeout).await?,
        })
    }

    /// Every queued candidate in order, with whether it holds (for operators: `coordctl
    /// rwlock`). Empty if the lock was never used.
    pub async fn candidates(&self) -> Result<Vec<RwCandidate>> {
        let entries =
            queue::entries(&**self.client.backend(), &self.path, queue::Layout::Coord).await?;
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mode = if e.tag() == queue::READER_TAG {
                    Mode::Read
                } else {
                    Mode::Write
                };
                RwCandidate {
                    node: e.name.clone(),
                    mode,
                    holding: mode.kind().rule.decide(&entries[..i]) == queue::Decision::Hold,
                }
            })
            .collect())
    }
}

/// The lock held for reading. Dropping it unlocks (in the background).
pub struct ReadGuard {
    pub(crate) held: Held,
}

/// The lock held for writing. Dropping it unlocks (in the background).
pub struct WriteGuard {
    pub(crate) held: Held,
}

impl std::fmt::Debug for ReadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard")
            .field("node", &self.held.node)
            .field("token", &self.held.token)
            .finish()
    }
}

impl std::fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGuard")
            .field("node", &self.held.node)
            .field("token", &self.held.token)
            .finish()
    }
}

impl ReadGuard {
    held_role_methods!("read lock");

    /// Releases the read lock.
    pub async fn unlock(mut self) -> Result<()> {
        self.held.release().await
    }
}

impl WriteGuard {
    held_role_methods!("write lock");

    /// Releases the write lock.
    pub async fn unlock(mut self) -> Result<()> {
        self.held.release().await
    }
}
