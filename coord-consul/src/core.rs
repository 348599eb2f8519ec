//! The key operations, shared by the backend and its sessions.
//!
//! Every rule that needs atomicity is one `/v1/txn`:
//! - create: `check-index` parent (exists, unchanged — so still not ephemeral) +
//!   [`cas` parent's sequence counter] + `check-not-exists` key + `set`/`lock` key +
//!   `set` parent's child-version counter;
//! - delete: `check-index`/`get` key + `check-not-exists` of its child-version counter (the key
//!   never had a child: one round trip), else `check-index` of the counter read before listing
//!   the children (so a concurrent child create fails the delete) + `delete` key and counters;
//! - set: `cas` key (CAS) or `get` key (must exist) + `set` key (keeps its lock).
//!
//! Round trips: a create puts the parent's modify index it last saw ([`Seen`]) straight into its
//! transaction; a stale guess fails the check there and the create reads and retries, so the
//! cache costs at most a round trip, never correctness. (Sequence counters are not guessed:
//! under an election they change with every join from another client.)

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coord_core::adapter::check_value;
use coord_core::path::format_sequence;
use coord_core::{
    Capabilities, CreateMode, Created, Error, Node, Path, Result, SessionId, Stat, Version,
};

use crate::api::{backend_err, too_large, Api, KvEntry, TxnOp, TxnOutcome};
use crate::layout::Layout;

/// Bound on optimistic retries of one operation (sequence-counter contention, a parent or a
/// child list changing under us).
const MAX_ATTEMPTS: u32 = 400;

/// A pseudo-random number (no extra dependency; good enough for jitter and test names).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A random duration in [max/2, max].
pub(crate) fn jitter(max: Duration) -> Duration {
    let frac = 0.5 + (random_u64() % 1000) as f64 / 2000.0;
    max.mul_f64(frac)
}

/// Sleeps a little before retry `attempt` of a conflicting transaction.
async fn conflict_backoff(attempt: u32) {
    let ms = 1u64 << attempt.min(5); // 1 .. 32 ms
    tokio::time::sleep(jitter(Duration::from_millis(ms))).await;
}

pub(crate) fn stat_of(e: &KvEntry) -> Stat {
    Stat::new(
        Version(e.modify_index),
        e.owner().map(|s| SessionId(s.to_owned())),
    )
}

pub(crate) fn node_of(path: &Path, e: &KvEntry) -> Result<Node> {
    Ok(Node {
        path: path.clone(),
        value: e.bytes()?,
        stat: stat_of(e),
    })
}

fn root_stat() -> Stat {
    Stat::new(Version(0), None)
}

/// What the key operations need: the client, the key layout and the limits.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) api: Api,
    pub(crate) layout: Layout,
    pub(crate) caps: Capabilities,
    pub(crate) ns: String,
    /// Parent indexes last seen by this client.
    pub(crate) seen: Seen,
}

/// Bound on [`Seen`]'s entries (it is emptied when full: only a round trip is lost).
const SEEN_MAX: usize = 4096;

/// The modify index of persistent parents as this client last saw them. Only ever a guess,
/// checked inside a transaction.
#[derive(Debug, Default)]
pub(crate) struct Seen(std::sync::Mutex<HashMap<String, u64>>);

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

impl Core {
    fn exhausted(&self, what: &str, path: &Path) -> Error {
        Error::timeout(format!(
            "{what} of {path}: still conflicting after {MAX_ATTEMPTS} attempts"
        ))
    }

    /// Creates `path` (persistent, or locked by `session`).
    pub(crate) async fn create(
        &self,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
        session: Option<&str>,
    ) -> Result<Created> {
        check_value(&self.caps, value)?;
        let Some(parent) = path.parent() else {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        };
        let l = &self.layout;
        let pkey = l.node(&parent);
        let seq_key = l.seq(&parent);
        for attempt in 0..MAX_ATTEMPTS {
            // Whether this attempt's parent index came from `seen` (a stale guess is not
            // contention: retry at once).
            let mut guessed = false;
            // The parent: exists, not ephemeral; its index pins both facts in the txn.
            let parent_index = if parent.is_root() {
                None
            } else if let Some(i) = self.seen.get(&pkey) {
                guessed = true;
                Some(i)
            } else {
                match self.api.kv_get(&pkey, None).await?.0 {
                    None => {
                        return Err(Error::NoParent {
                            path: path.to_string(),
                        })
                    }
                    Some(e) if e.owner().is_some() => {
                        return Err(Error::EphemeralParent {
                            path: parent.to_string(),
                        })
                    }
                    Some(e) => {
                        self.seen.put(&pkey, e.modify_index);
                        Some(e.modify_index)
                    }
                }
            };
            let mut ops = Vec::with_capacity(5);
            let mut parent_op = None;
            if let Some(i) = parent_index {
                parent_op = Some(ops.len());
                ops.push(TxnOp::check_index(&pkey, i));
            }
            let (full, sequence, seq_op) = match mode {
                CreateMode::Exact => (path.clone(), None, None),
                CreateMode::Sequential => {
                    let (n, idx) = match self.api.kv_get(&seq_key, None).await?.0 {
                        None => (0, 0),
                        Some(e) => {
                            let raw = e.bytes()?;
                            let n = std::str::from_utf8(&raw)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                                .ok_or_else(|| {
                                    backend_err(
                                        format!("the sequence counter {seq_key} is not a number"),
                                        false,
                                    )
                                })?;
                            (n, e.modify_index)
                        }
                    };
                    let name = format!("{}{}", path.name(), format_sequence(n));
                    let full = parent.join(&name)?;
                    let op = ops.len();
                    ops.push(TxnOp::cas(&seq_key, (n + 1).to_string().as_bytes(), idx));
                    (full, Some(n), Some(op))
                }
            };
            let key = l.node(&full);
            let exists_op = ops.len();
            let write_op = match session {
                Some(s) => {
                    ops.push(TxnOp::check_not_exists(&key));
                    ops.push(TxnOp::lock(&key, value, s));
                    exists_op + 1
                }
                // `cas` at index 0 writes only an absent key: one op for both.
                None => {
                    ops.push(TxnOp::cas(&key, value, 0));
                    exists_op
                }
            };
            if !parent.is_root() {
                // A new value every time: Consul leaves the index of a key written with the
                // value it already has unchanged, and the delete of the parent relies on this
                // index changing with every child create.
                ops.push(TxnOp::set(
                    &l.cv(&parent),
                    format!("{:016x}", random_u64()).as_bytes(),
                ));
            }
            let outcome = self
                .api
                .txn(&ops)
                .await
                .map_err(|e| too_large(e, value.len(), self.caps.max_value_size))?;
            match outcome {
                TxnOutcome::Applied(results) => {
                    let e = results.iter().rev().find(|e| e.key == key).ok_or_else(|| {
                        backend_err(format!("the create of {key} returned no entry"), false)
                    })?;
                    return Ok(Created {
                        path: full,
                        sequence,
                        stat: Stat::new(
                            Version(e.modify_index),
                            session.map(|s| SessionId(s.to_owned())),
                        ),
                    });
                }
                TxnOutcome::Failed(errors) => {
                    let failed =
                        |i: Option<usize>| i.is_some_and(|i| errors.iter().any(|e| e.0 == i));
                    if failed(parent_op) || failed(seq_op) {
                        // The parent changed (deleted?) or another creator took the number.
                        if failed(parent_op) {
                            self.seen.forget(&pkey);
                        }
                        // Only a stale guess alone is not contention: retry at once.
                        if !(guessed && failed(parent_op) && !failed(seq_op)) {
                            conflict_backoff(attempt).await;
                        }
                        continue;
                    }
                    if failed(Some(exists_op)) {
                        return Err(Error::AlreadyExists {
                            path: full.to_string(),
                        });
                    }
                    if write_op != exists_op && failed(Some(write_op)) {
                        return Err(Error::SessionExpired {
                            session: session.unwrap_or_default().to_owned(),
                        });
                    }
                    return Err(backend_err(
                        format!("create of {full} rolled back: {errors:?}"),
                        false,
                    ));
                }
            }
        }
        Err(self.exhausted("create", path))
    }

    pub(crate) async fn get(&self, path: &Path) -> Result<Node> {
        if path.is_root() {
            return Ok(Node {
                path: path.clone(),
                value: Vec::new(),
                stat: root_stat(),
            });
        }
        match self.api.kv_get(&self.layout.node(path), None).await?.0 {
            Some(e) => node_of(path, &e),
            None => Err(Error::NotFound {
                path: path.to_string(),
            }),
        }
    }

    pub(crate) async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        if path.is_root() {
            return Ok(Some(root_stat()));
        }
        Ok(self
            .api
            .kv_get(&self.layout.node(path), None)
            .await?
            .0
            .map(|e| stat_of(&e)))
    }

    pub(crate) async fn set(
        &self,
        path: &Path,
        value: &[u8],
        expected: Option<Version>,
    ) -> Result<Stat> {
        check_value(&self.caps, value)?;
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root holds no value on Consul".into(),
            ));
        }
        let key = self.layout.node(path);
        let ops = match expected {
            // One `cas` op (index 0 would mean "create", hence the guard for it).
            Some(v) if v.0 != 0 => vec![TxnOp::cas(&key, value, v.0)],
            Some(v) => vec![TxnOp::check_index(&key, v.0), TxnOp::set(&key, value)],
            None => vec![TxnOp::get(&key), TxnOp::set(&key, value)],
        };
        let outcome = self
            .api
            .txn(&ops)
            .await
            .map_err(|e| too_large(e, value.len(), self.caps.max_value_size))?;
        match outcome {
            TxnOutcome::Applied(results) => {
                let e = results.last().filter(|e| e.key == key).ok_or_else(|| {
                    backend_err(format!("the write of {key} returned no entry"), false)
                })?;
                Ok(stat_of(e))
            }
            TxnOutcome::Failed(_) => {
                let nf = Error::NotFound {
                    path: path.to_string(),
                };
                match expected {
                    None => Err(nf),
                    Some(v) => match self.api.kv_get(&key, None).await?.0 {
                        None => Err(nf),
                        Some(_) => Err(Error::VersionMismatch {
                            path: path.to_string(),
                            expected: v,
                        }),
                    },
                }
            }
        }
    }

    pub(crate) async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be deleted".into(),
            ));
        }
        let l = &self.layout;
        let key = l.node(path);
        let cv_key = l.cv(path);
        self.seen.forget(&key);
        // A key that never had a child has no child-version counter (nor a sequence counter,
        // written with it): then one transaction decides (the common case: candidates, locks,
        // instances, leaves).
        let ops = [
            match expected {
                Some(v) => TxnOp::check_index(&key, v.0),
                None => TxnOp::get(&key),
            },
            TxnOp::check_not_exists(&cv_key),
            TxnOp::delete(&key),
        ];
        match self.api.txn(&ops).await? {
            TxnOutcome::Applied(_) => return Ok(()),
            TxnOutcome::Failed(errors) if errors.iter().any(|e| e.0 == 0) => {
                return Err(match (expected, self.api.kv_get(&key, None).await?.0) {
                    (Some(v), Some(_)) => Error::VersionMismatch {
                        path: path.to_string(),
                        expected: v,
                    },
                    _ => Error::NotFound {
                        path: path.to_string(),
                    },
                });
            }
            // It had children once: look at them.
            TxnOutcome::Failed(_) => {}
        }
        for attempt in 0..MAX_ATTEMPTS {
            let Some(e) = self.api.kv_get(&key, None).await?.0 else {
                return Err(Error::NotFound {
                    path: path.to_string(),
                });
            };
            if let Some(v) = expected {
                if e.modify_index != v.0 {
                    return Err(Error::VersionMismatch {
                        path: path.to_string(),
                        expected: v,
                    });
                }
            }
            // The counter first, then the list: a child created after the read changes the
            // counter and fails the transaction below.
            let cv = self.api.kv_get(&cv_key, None).await?.0;
            let (kids, _) = self.api.kv_children(&l.children_prefix(path), None).await?;
            if !kids.is_empty() {
                return Err(Error::NotEmpty {
                    path: path.to_string(),
                });
            }
            let ops = [
                TxnOp::check_index(&key, e.modify_index),
                match &cv {
                    Some(c) => TxnOp::check_index(&cv_key, c.modify_index),
                    None => TxnOp::check_not_exists(&cv_key),
                },
                TxnOp::delete(&key),
                TxnOp::delete(&cv_key),
                TxnOp::delete(&l.seq(path)),
            ];
            match self.api.txn(&ops).await? {
                TxnOutcome::Applied(_) => return Ok(()),
                TxnOutcome::Failed(_) => {
                    // The key or its children changed: look again.
                    conflict_backoff(attempt).await;
                }
            }
        }
        Err(self.exhausted("delete", path))
    }

    pub(crate) async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let (names, _) = self
            .api
            .kv_children(&self.layout.children_prefix(path), None)
            .await?;
        // Children exist only under an existing parent (create needs the parent, delete needs
        // no children), so the parent is read only when the list is empty: one round trip in
        // the common case.
        if names.is_empty()
            && !path.is_root()
            && self
                .api
                .kv_get(&self.layout.node(path), None)
                .await?
                .0
                .is_none()
        {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        }
        Ok(names)
    }
}
