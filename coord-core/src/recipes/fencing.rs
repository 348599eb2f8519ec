//! Guarded writes of a held role: a [`Leadership`] or a [`LockGuard`] writes to the store only
//! while its candidate node lives, checked by the store in the write's own transaction
//! ([`Backend::write_if`](crate::Backend::write_if) with the guard
//! [`Guard::created`]`(node, fencing_token)`). This is etcd's
//! `Txn(If(CreateRevision(leaderKey) == rev))`: a deposed holder that has not noticed its loss
//! yet (a long pause, a partition) is refused by the store, so no stale write lands after the
//! node is gone, and with it after a successor can be elected.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let leadership = client.election("scheduler")?.campaign(b"me").await?;
//! let path = coord_core::Path::new("/config/plan")?;
//! match leadership.guarded_set(&path, b"v2", None).await {
//!     Ok(_) => {}
//!     Err(coord_core::Error::GuardFailed { .. }) => { /* no longer leading: stop */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

use crate::election::Leadership;
use crate::error::{Error, Result};
use crate::kernel::{Created, Guard, Stat, Version, WriteOp, WriteResult};
use crate::lock::LockGuard;
use crate::path::Path;

/// The result of a guarded write that is not the expected kind (a backend bug).
fn unexpected(what: &str, got: WriteResult) -> Error {
    Error::backend("coord", format!("a guarded {what} answered {got:?}"), false)
}

macro_rules! guarded_writes {
    ($ty:ty, $role:literal) => {
        impl $ty {
            #[doc = concat!("The guard on this ", $role, "'s candidate node as it was created: ")]
            #[doc = "holds exactly while the node lives. For [`Backend::write_if`](crate::Backend::write_if)."]
            pub fn guard(&self) -> Guard {
                self.held.guard()
            }

            #[doc = concat!("Runs `op` only while this ", $role, " is held, atomically in the store.")]
            ///
            /// [`Error::GuardFailed`] and nothing written once it is lost: the candidate node is
            /// gone (released, session expired or closed, deleted), checked by the store even if
            /// this process has not noticed yet; or, without a call, this handle already reports
            /// the loss ([`crate::GuardFailure::Released`]). The operation's own failures are
            /// those of its unguarded form.
            pub async fn guarded(&self, op: WriteOp) -> Result<WriteResult> {
                self.held.write_if_held(&op).await
            }

            #[doc = concat!("[`Backend::set`](crate::Backend::set) while this ", $role, " is held ")]
            #[doc = concat!("(see [`", stringify!($ty), "::guarded`]).")]
            pub async fn guarded_set(
                &self,
                path: &Path,
                value: &[u8],
                expected: Option<Version>,
            ) -> Result<Stat> {
                let op = WriteOp::Set {
                    path: path.clone(),
                    value: value.to_vec(),
                    expected,
                };
                match self.guarded(op).await? {
                    WriteResult::Set(stat) => Ok(stat),
                    other => Err(unexpected("set", other)),
                }
            }

            #[doc = concat!("A persistent exact [`Backend::create`](crate::Backend::create) while this ", $role, " is held ")]
            #[doc = concat!("(see [`", stringify!($ty), "::guarded`]).")]
            pub async fn guarded_create(&self, path: &Path, value: &[u8]) -> Result<Created> {
                match self.guarded(WriteOp::create(path.clone(), value)).await? {
                    WriteResult::Created(c) => Ok(c),
                    other => Err(unexpected("create", other)),
                }
            }

            #[doc = concat!("[`Backend::delete`](crate::Backend::delete) while this ", $role, " is held ")]
            #[doc = concat!("(see [`", stringify!($ty), "::guarded`]).")]
            pub async fn guarded_delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
                let op = WriteOp::Delete {
                    path: path.clone(),
                    expected,
                };
                match self.guarded(op).await? {
                    WriteResult::Deleted => Ok(()),
                    other => Err(unexpected("delete", other)),
                }
            }
        }
    };
}

guarded_writes!(Leadership, "leadership");
guarded_writes!(LockGuard, "lock");
guarded_writes!(crate::recipes::rwlock::ReadGuard, "read lock");
guarded_writes!(crate::recipes::rwlock::WriteGuard, "write lock");
guarded_writes!(crate::recipes::semaphore::Lease, "lease");
