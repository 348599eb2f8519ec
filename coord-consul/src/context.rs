//! The [`Context`] shared by the backend, its sessions and its watches: the Consul client,
//! coord's tree over Consul's KV ([`flat::Tree`] on a [`ConsulStore`]), the limits and the
//! namespace.
//!
//! The tree rules (naming of sequential nodes, counters, retries, errors) are coord-core's;
//! [`ConsulStore`] supplies each step as one `/v1/txn`:
//! - create: `check-index` parent (exists, unchanged — so still not ephemeral) +
//!   [`cas` parent's sequence counter] + `cas`-at-0 key (persistent) or `check-not-exists` +
//!   `lock` key (ephemeral) + `set` parent's child-version counter;
//! - delete: `check-index`/`get` key + `check-not-exists` of its child-version counter (the key
//!   never had a child: one round trip), else `check-index` of the counter read before listing
//!   the children (so a concurrent child create fails the delete) + `delete` key and counters;
//! - set: one `cas` op, or `get` key (must exist) + `set` key (keeps its lock).
//! - a guarded write: the same transaction with a check of the guard key first (so that it
//!   sees the state before the writes): `check-index` at the guard's version, or at the modify
//!   index read just before when the guard names a creation stamp (Consul's txn cannot check a
//!   `CreateIndex`; a key deleted and created again gets a new, larger modify index, so the
//!   check still fails), or `get` (the key exists).
//!
//! Creation stamps are Consul's `CreateIndex` (the raft index of the creating transaction).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use coord_core::adapter::flat::{
    CreateAttempt, CreateOutcome, DeleteAttempt, DeleteOutcome, Entry, FlatStore, GuardCheck,
    Layout, SetAttempt, SetOutcome, Tree,
};
use coord_core::adapter::random_u64;
use coord_core::{Capabilities, Node, Path, Result, SessionId, Version};

use crate::api::{Api, KvEntry, TxnOp, TxnOutcome};
use crate::error::{backend_err, too_large};
use crate::session::{Rejoin, SessionObserver};

/// What the backend, its sessions and its watches share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) tree: Tree<ConsulStore>,
    /// Follows the sessions of this backend server-side (shared blocking queries).
    pub(crate) observer: SessionObserver,
    /// Asks the agent to rejoin when the servers refuse sessions on its node.
    pub(crate) rejoin: Rejoin,
}

impl Context {
    pub(crate) fn new(api: Api, caps: Capabilities, ns: &str, rejoin: bool) -> Context {
        let store = ConsulStore {
            api: api.clone(),
            layout: Layout::new(ns),
            seen: Seen::default(),
            max_value: caps.max_value_size,
        };
        Context {
            observer: SessionObserver::new(api.clone()),
            rejoin: Rejoin::new(rejoin),
            tree: Tree::new(store, ns, caps),
        }
    }

    pub(crate) fn api(&self) -> &Api {
        &self.tree.store.api
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.tree.layout
    }
}

/// The entry as the tree and the watches see it.
fn entry_of(e: &KvEntry) -> Result<Entry> {
    Ok(Entry {
        value: e.bytes()?,
        modified: e.modify_index,
        created: e.create_index,
        owner: e.owner().map(|s| SessionId(s.to_owned())),
    })
}

pub(crate) fn node_of(path: &Path, e: &KvEntry) -> Result<Node> {
    let e = entry_of(e)?;
    Ok(Node {
        path: path.clone(),
        stat: e.stat(),
        value: e.value,
    })
}

/// The check of a guard, from the guard key as read (`e`): `None` if it already fails.
fn guard_check_op(g: &GuardCheck<'_>, e: Option<&KvEntry>) -> Option<TxnOp> {
    let e = e?;
    if g.created.is_some_and(|c| c != e.create_index)
        || g.version.is_some_and(|v| v.0 != e.modify_index)
    {
        return None;
    }
    Some(TxnOp::check_index(g.key, e.modify_index))
}

/// Bound on [`Seen`]'s entries (it is emptied when full: only a round trip is lost).
const SEEN_MAX: usize = 4096;

/// The modify index of persistent parents as this client last saw them. Only ever a guess,
/// checked inside a transaction.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<HashMap<String, u64>>);

impl Seen {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.lock().ok()?.get(key).copied()
    }

    fn put(&self, key: &str, v: u64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= SEEN_MAX && !m.contains_key(key) {
                m.clear();
            }
            m.insert(key.to_owned(), v);
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

/// Consul's KV as coord-core's [`FlatStore`].
#[derive(Debug)]
pub struct ConsulStore {
    pub(crate) api: Api,
    layout: Layout,
    /// Parent indexes last seen by this client.
    seen: Seen,
    max_value: usize,
}

/// Where the checks of one create transaction are, to read its per-op errors.
struct CreateOps {
    ops: Vec<TxnOp>,
    parent: Option<usize>,
    counter: Option<usize>,
    exists: usize,
    /// The `lock` op of an ephemeral (it fails when the session is gone).
    lock: Option<usize>,
    /// Whether the parent's index came from [`Seen`] (a guess).
    guessed: bool,
}

fn failed(errors: &[(usize, String)], op: Option<usize>) -> bool {
    op.is_some_and(|i| errors.iter().any(|e| e.0 == i))
}

impl ConsulStore {
    /// A transaction writing `value`: an agent's 413 is `ValueTooLarge` with the sizes.
    async fn write(&self, ops: &[TxnOp], value: &[u8]) -> Result<TxnOutcome> {
        let r = self.api.txn(ops).await;
        r.map_err(|e| too_large(e, value.len(), self.max_value))
    }

    /// The op checking `guard` (see the module docs); `Ok(None)`: the guard already fails.
    async fn guard_op(&self, guard: &GuardCheck<'_>) -> Result<Option<TxnOp>> {
        Ok(match (guard.version, guard.created) {
            (Some(v), None) => Some(TxnOp::check_index(guard.key, v.0)),
            (_, Some(_)) => guard_check_op(guard, self.get(guard.key).await?.as_ref()),
            (None, None) => Some(TxnOp::get(guard.key)),
        })
    }

    /// [`ConsulStore::write`] of `ops` behind the guard check `gop` (first): `None` if the
    /// guard failed; the errors of a rolled-back transaction are indexed as in `ops`.
    async fn write_behind(
        &self,
        gop: Option<&TxnOp>,
        ops: &[TxnOp],
        value: &[u8],
    ) -> Result<Option<TxnOutcome>> {
        let Some(g) = gop else {
            return self.write(ops, value).await.map(Some);
        };
        let all: Vec<TxnOp> = std::iter::once(g.clone())
            .chain(ops.iter().cloned())
            .collect();
        Ok(match self.write(&all, value).await? {
            TxnOutcome::Failed(errors) if errors.iter().any(|e| e.0 == 0) => None,
            TxnOutcome::Failed(errors) => Some(TxnOutcome::Failed(
                errors.into_iter().map(|(i, w)| (i - 1, w)).collect(),
            )),
            applied => Some(applied),
        })
    }

    /// The guard check op of an attempt: `Ok(Err(()))` if the guard already fails.
    async fn attempt_guard(
        &self,
        guard: Option<&GuardCheck<'_>>,
    ) -> Result<std::result::Result<Option<TxnOp>, ()>> {
        match guard {
            None => Ok(Ok(None)),
            Some(g) => Ok(self.guard_op(g).await?.map(Some).ok_or(())),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        Ok(self.api.kv_get(key, None).await?.0)
    }

    /// The parent's modify index to check in the create txn: the guess from [`Seen`] if any
    /// (per store: Consul's txn checks an index, so a guess saves the read; a stale one only
    /// fails that check), else read (and remembered). `Err(outcome)`: the create cannot be.
    async fn parent_index(
        &self,
        pkey: &str,
    ) -> Result<std::result::Result<(u64, bool), CreateOutcome>> {
        if let Some(i) = self.seen.get(pkey) {
            return Ok(Ok((i, true)));
        }
        Ok(match self.get(pkey).await? {
            None => Err(CreateOutcome::NoParent),
            Some(e) if e.owner().is_some() => Err(CreateOutcome::EphemeralParent),
            Some(e) => {
                self.seen.put(pkey, e.modify_index);
                Ok((e.modify_index, false))
            }
        })
    }

    /// The ops of one create attempt (see the module docs).
    fn create_ops(
        &self,
        a: &CreateAttempt<'_, SessionId>,
        parent: Option<(&str, u64, bool)>,
    ) -> CreateOps {
        fn push(ops: &mut Vec<TxnOp>, op: TxnOp) -> usize {
            ops.push(op);
            ops.len() - 1
        }
        let mut ops = Vec::with_capacity(5);
        let parent_op = parent.map(|(k, i, _)| push(&mut ops, TxnOp::check_index(k, i)));
        let counter = a.counter.map(|(k, c)| {
            push(
                &mut ops,
                TxnOp::cas(k, (c.next + 1).to_string().as_bytes(), c.stamp),
            )
        });
        let (exists, lock) = match a.owner {
            Some(s) => (
                push(&mut ops, TxnOp::check_not_exists(a.key)),
                Some(push(&mut ops, TxnOp::lock(a.key, a.value, &s.0))),
            ),
            // `cas` at index 0 writes only an absent key: one op for both.
            None => (push(&mut ops, TxnOp::cas(a.key, a.value, 0)), None),
        };
        if let (Some(_), Some(p)) = (a.parent, a.path.parent()) {
            // A new value every time: Consul leaves the index of a key written with the value
            // it already has unchanged, and the delete of the parent relies on this index
            // changing with every child create (Consul's txn cannot check that a key range
            // is empty, etcd's can: per store).
            let cv = format!("{:016x}", random_u64());
            push(
                &mut ops,
                TxnOp::set(&self.layout.child_version(&p), cv.as_bytes()),
            );
        }
        CreateOps {
            ops,
            parent: parent_op,
            counter,
            exists,
            lock,
            guessed: parent.is_some_and(|(_, _, g)| g),
        }
    }

    /// What a rolled-back create found, from its per-op errors.
    fn create_failed(
        &self,
        c: &CreateOps,
        pkey: Option<&str>,
        errors: &[(usize, String)],
    ) -> Result<CreateOutcome> {
        let parent_failed = failed(errors, c.parent);
        if parent_failed {
            if let Some(k) = pkey {
                self.seen.forget(k);
            }
        }
        Ok(if failed(errors, c.counter) {
            // Another creator took the number.
            CreateOutcome::CounterMoved(None)
        } else if parent_failed {
            // The parent changed (deleted?): a stale guess alone is not contention.
            CreateOutcome::Retry {
                contended: !c.guessed,
            }
        } else if failed(errors, Some(c.exists)) {
            CreateOutcome::Taken
        } else if failed(errors, c.lock) {
            CreateOutcome::OwnerGone
        } else {
            return Err(backend_err(
                format!("a create transaction rolled back: {errors:?}"),
                false,
            ));
        })
    }

    /// The slow path of a delete: the key had children once. One attempt: the counter is
    /// read before the list, so a child created after the read fails the transaction.
    async fn delete_checked(
        &self,
        path: &Path,
        expected: Option<Version>,
        gop: Option<&TxnOp>,
    ) -> Result<DeleteOutcome> {
        let l = &self.layout;
        let (key, cv_key) = (l.node(path), l.child_version(path));
        let Some(e) = self.get(&key).await? else {
            return Ok(DeleteOutcome::Missing);
        };
        if expected.is_some_and(|v| v.0 != e.modify_index) {
            return Ok(DeleteOutcome::Mismatch);
        }
        let cv = self.get(&cv_key).await?;
        let (kids, _) = self.api.kv_children(&l.children_prefix(path), None).await?;
        if !kids.is_empty() {
            return Ok(DeleteOutcome::NotEmpty);
        }
        let ops = [
            TxnOp::check_index(&key, e.modify_index),
            match &cv {
                Some(c) => TxnOp::check_index(&cv_key, c.modify_index),
                None => TxnOp::check_not_exists(&cv_key),
            },
            TxnOp::delete(&key),
            TxnOp::delete(&cv_key),
            TxnOp::delete(&l.sequence(path)),
        ];
        Ok(match self.write_behind(gop, &ops, b"").await? {
            None => DeleteOutcome::GuardFailed,
            Some(TxnOutcome::Applied(_)) => DeleteOutcome::Deleted,
            Some(TxnOutcome::Failed(_)) => DeleteOutcome::Retry,
        })
    }
}

#[async_trait]
impl FlatStore for ConsulStore {
    type Owner = SessionId;

    async fn read(&self, key: &str) -> Result<Option<Entry>> {
        self.get(key).await?.as_ref().map(entry_of).transpose()
    }

    async fn try_create(&self, a: &CreateAttempt<'_, SessionId>) -> Result<CreateOutcome> {
        let Ok(gop) = self.attempt_guard(a.guard.as_ref()).await? else {
            return Ok(CreateOutcome::GuardFailed);
        };
        let parent = match a.parent {
            None => None,
            Some(k) => match self.parent_index(k).await? {
                Ok((i, guessed)) => Some((k, i, guessed)),
                Err(outcome) => return Ok(outcome),
            },
        };
        let c = self.create_ops(a, parent);
        match self.write_behind(gop.as_ref(), &c.ops, a.value).await? {
            None => Ok(CreateOutcome::GuardFailed),
            Some(TxnOutcome::Applied(results)) => {
                let e = results
                    .iter()
                    .rev()
                    .find(|e| e.key == a.key)
                    .ok_or_else(|| {
                        backend_err(format!("the create of {} returned no entry", a.key), false)
                    })?;
                // A new key: its create index is its modify index.
                Ok(CreateOutcome::Created(e.create_index.max(e.modify_index)))
            }
            Some(TxnOutcome::Failed(errors)) => self.create_failed(&c, a.parent, &errors),
        }
    }

    async fn try_delete(&self, a: &DeleteAttempt<'_>) -> Result<DeleteOutcome> {
        let (path, expected) = (a.path, a.expected);
        let Ok(gop) = self.attempt_guard(a.guard.as_ref()).await? else {
            return Ok(DeleteOutcome::GuardFailed);
        };
        let key = self.layout.node(path);
        self.seen.forget(&key);
        // Per store: a key that never had a child has no child-version counter (nor a
        // sequence counter, written with it): then one transaction decides (the common case:
        // candidates, locks, instances, leaves).
        let ops = [
            match expected {
                Some(v) => TxnOp::check_index(&key, v.0),
                None => TxnOp::get(&key),
            },
            TxnOp::check_not_exists(&self.layout.child_version(path)),
            TxnOp::delete(&key),
        ];
        match self.write_behind(gop.as_ref(), &ops, b"").await? {
            None => Ok(DeleteOutcome::GuardFailed),
            Some(TxnOutcome::Applied(_)) => Ok(DeleteOutcome::Deleted),
            Some(TxnOutcome::Failed(errors)) if failed(&errors, Some(0)) => {
                Ok(match (expected, self.get(&key).await?) {
                    (Some(_), Some(_)) => DeleteOutcome::Mismatch,
                    _ => DeleteOutcome::Missing,
                })
            }
            // It had children once: look at them.
            Some(TxnOutcome::Failed(_)) => self.delete_checked(path, expected, gop.as_ref()).await,
        }
    }

    async fn try_set(&self, w: &SetAttempt<'_>) -> Result<SetOutcome> {
        let (key, value, expected) = (w.key, w.value, w.expected);
        let Ok(gop) = self.attempt_guard(w.guard.as_ref()).await? else {
            return Ok(SetOutcome::GuardFailed);
        };
        let ops = match expected {
            // One `cas` op (index 0 would mean "create", hence the guard for it).
            Some(v) if v.0 != 0 => vec![TxnOp::cas(key, value, v.0)],
            Some(v) => vec![TxnOp::check_index(key, v.0), TxnOp::set(key, value)],
            None => vec![TxnOp::get(key), TxnOp::set(key, value)],
        };
        match self.write_behind(gop.as_ref(), &ops, value).await? {
            None => Ok(SetOutcome::GuardFailed),
            Some(TxnOutcome::Applied(results)) => {
                let e = results.last().filter(|e| e.key == key).ok_or_else(|| {
                    backend_err(format!("the write of {key} returned no entry"), false)
                })?;
                Ok(SetOutcome::Written(node_of(w.path, e)?.stat))
            }
            Some(TxnOutcome::Failed(_)) if expected.is_none() => Ok(SetOutcome::Missing),
            Some(TxnOutcome::Failed(_)) => Ok(match self.get(key).await? {
                None => SetOutcome::Missing,
                Some(_) => SetOutcome::Mismatch,
            }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<String>, u64)> {
        self.api.kv_children(prefix, None).await
    }

    /// Consul has no reads at an index: the current state.
    async fn existed_at(&self, key: &str, _stamp: u64) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }
}
