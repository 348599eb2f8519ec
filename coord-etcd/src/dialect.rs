//! The etcd `concurrency` dialect ([`Dialect::EtcdConcurrency`]): coord candidates in the
//! elections and mutexes of etcd's Go `concurrency` package (`Election`, `Mutex`), of
//! `etcdctl elect` / `etcdctl elect -l` / `etcdctl lock`, and of the server's `v3election` /
//! `v3lock` services, which all run the same protocol (`client/v3/concurrency/election.go`,
//! `mutex.go`, `key.go`):
//!
//! - **Keys.** An election or lock named by the path `/a/b` lives under the raw prefix
//!   `a/b/` — `<namespace>/a/b/` when the URL has a namespace — which is what
//!   `etcdctl elect a/b` and `etcdctl lock a/b` use (the Go package appends the `/`). These
//!   keys lie outside coord's own key layout (`…/__coord/…`): coord's tree never sees them.
//! - **Candidates.** Each candidate writes `<prefix><lease id in hex>` under its session's
//!   lease with `txn(If CreateRevision(key) == 0, Then Put(key, value, lease), Else Get(key))`;
//!   a candidate whose key already exists (the same lease campaigning again) keeps it.
//! - **Order.** The holder is the key with the lowest CreateRevision. A waiter takes the last
//!   key created before its own (`WithLastCreate`, `WithMaxCreateRev(own − 1)`), waits for its
//!   deletion, and repeats until none is left: one watch per waiter, herd-free.
//! - **Token.** The holder's CreateRevision: store-global, so it keeps increasing when coord
//!   and Go clients take turns (and across restarts of etcd, not across the loss of its data).
//! - **Guarded writes** and `Proclaim` are transactions comparing the holder key's
//!   CreateRevision to the token: they fail once the key is gone (resigned, lease expired).
//! - **Values.** An election key holds the leader's proclamation; `etcdctl lock` and the Go
//!   `Mutex` write an empty value, so a coord lock holder shows its value where a Go
//!   holder shows none (the protocol ignores values).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use coord_core::adapter::hold::{
    holder_stream, raw_name, unless_session_ends, HeldKey, HolderStream, KeyHold, ReleaseOnDrop,
};
use coord_core::adapter::WatchScope;
use coord_core::dialect::{Candidacy, Dialect, DialectDriver, DialectHold};
use coord_core::election::LeaderInfo;
use coord_core::{
    Capabilities, Error, Guard, GuardFailure, KeyEvent, KeyWatch, Node, Path, Result, Session,
    SessionId, WriteOp, WriteResult,
};
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnResponse,
};
use futures::StreamExt;

use crate::context::Context;
use crate::error::Ctx;
use crate::watch::{watch_raw_key, watch_raw_prefix};

/// The etcd `concurrency` driver of one backend (see the module docs).
pub(crate) struct EtcdConcurrency {
    ctx: Arc<Context>,
}

impl EtcdConcurrency {
    pub(crate) fn new(ctx: Arc<Context>) -> EtcdConcurrency {
        EtcdConcurrency { ctx }
    }
}

/// The raw prefix of the election or lock `name` (see the module docs).
pub(crate) fn raw_prefix(namespace: &str, name: &Path) -> Result<String> {
    if name.is_root() {
        return Err(Error::InvalidArgument(
            "an etcd concurrency election or lock needs a name, not the namespace root".into(),
        ));
    }
    Ok(format!("{}/", raw_name(namespace, name)))
}

/// The lease of an etcd session: its id is the lease id in hex.
fn lease_of(session: &dyn Session) -> Result<i64> {
    let id = &session.id().0;
    i64::from_str_radix(id, 16)
        .ok()
        .filter(|l| *l != 0)
        .ok_or_else(|| Error::InvalidArgument(format!("{id} is not an etcd session (lease id)")))
}

fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

fn rev_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

fn range_kvs(resp: &TxnResponse, i: usize) -> &[PbKeyValue] {
    match resp.0.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(PbTxnOpResponse::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

fn header_rev(resp: &TxnResponse) -> i64 {
    resp.0.header.as_ref().map(|h| h.revision).unwrap_or(0)
}

/// The candidate `kv` as the recipes show it (its key as a path under `name`).
fn info_of(name: &Path, prefix: &str, kv: &PbKeyValue) -> Option<LeaderInfo> {
    let key = std::str::from_utf8(&kv.key).ok()?;
    let node = name.join(key.strip_prefix(prefix)?).ok()?;
    Some(LeaderInfo {
        value: kv.value.clone(),
        token: rev_u64(kv.create_revision),
        node,
    })
}

impl EtcdConcurrency {
    fn prefix(&self, name: &Path) -> Result<String> {
        raw_prefix(&self.ctx.tree.namespace, name)
    }

    /// One read of `prefix` in a transaction (keys sorted by CreateRevision, ascending unless
    /// `last`, at most `limit`, created at most at `max_create` if set): its kvs and revision.
    async fn read_prefix(
        &self,
        prefix: &str,
        last: bool,
        limit: i64,
        max_create: Option<i64>,
    ) -> Result<(Vec<PbKeyValue>, i64)> {
        let order = if last {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        };
        let mut o = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, order)
            .with_limit(limit);
        if let Some(m) = max_create {
            o = o.with_max_create_revision(m);
        }
        let txn = Txn::new().and_then(vec![TxnOp::get(prefix, Some(o))]);
        let resp = self.ctx.store().txn("read", Ctx::default(), txn).await?;
        Ok((range_kvs(&resp, 0).to_vec(), header_rev(&resp)))
    }

    /// The holder of `name` (under `prefix`) now.
    async fn leader(&self, name: &Path, prefix: &str) -> Result<Option<LeaderInfo>> {
        let (kvs, _) = self.read_prefix(prefix, false, 1, None).await?;
        Ok(kvs.first().and_then(|kv| info_of(name, prefix, kv)))
    }

    /// Creates our key (or finds it, with the same lease) and returns its CreateRevision and
    /// whether our value had to be written over an older one.
    async fn campaign(&self, key: &str, value: &[u8], lease: i64, sid: &SessionId) -> Result<u64> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let at = Ctx {
            session: Some(sid),
            value: Some((value.len(), self.ctx.store().max_value)),
        };
        let resp = self.ctx.store().txn("campaign", at, txn).await?;
        if resp.succeeded() {
            return Ok(rev_u64(header_rev(&resp)));
        }
        // Our lease already has a key here (a campaign again): keep it, with our value (as
        // `Election.Campaign` does with `Proclaim`).
        let Some(kv) = range_kvs(&resp, 0).first() else {
            return Err(Error::backend(
                "etcd",
                format!("campaign on {key}: the key exists but was not returned"),
                true,
            ));
        };
        let created = rev_u64(kv.create_revision);
        if kv.value != value {
            proclaim(&self.ctx, key, created, value).await?;
        }
        Ok(created)
    }

    /// `waitDeletes`: waits until no key under `prefix` was created before ours (`created`),
    /// or our session ends (an error).
    async fn wait_deletes(
        &self,
        session: &dyn Session,
        prefix: &str,
        created: u64,
        wakeups: &AtomicU64,
    ) -> Result<()> {
        let scope = WatchScope::new();
        let mut states = session.states();
        let max = rev_i64(created) - 1;
        loop {
            let (kvs, _) = self.read_prefix(prefix, true, 1, Some(max)).await?;
            let Some(last) = kvs.first() else {
                return Ok(());
            };
            let key = String::from_utf8_lossy(&last.key).into_owned();
            let theirs = rev_u64(last.create_revision);
            // The watch reads the key again: a key named after a lease comes back with the same
            // name when its holder resigns and campaigns again, and that later incarnation is
            // queued behind ours. Waiting on it deadlocks (it waits on us; seen as a timeout of
            // election_hundred_handovers), so only the incarnation read above is waited on.
            let (current, mut events) =
                watch_raw_key(&scope, self.ctx.clone(), key, &Path::root()).await?;
            if current.map(|n| n.stat.created) != Some(theirs) {
                continue;
            }
            loop {
                let ev = unless_session_ends(session, &mut states, events.next()).await?;
                wakeups.fetch_add(1, Ordering::Relaxed);
                match ev {
                    Some(Ok(KeyEvent::Deleted | KeyEvent::Created(_))) | None => break,
                    Some(Ok(KeyEvent::Resync(n)))
                        if n.as_ref().map(|n| n.stat.created) != Some(theirs) =>
                    {
                        break
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                }
            }
        }
    }
}

/// Rewrites the holder's value, guarded by its CreateRevision (`Election.Proclaim`).
async fn proclaim(ctx: &Context, key: &str, created: u64, value: &[u8]) -> Result<()> {
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key,
            CompareOp::Equal,
            rev_i64(created),
        )])
        .and_then(vec![TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_ignore_lease()),
        )]);
    let at = Ctx {
        session: None,
        value: Some((value.len(), ctx.store().max_value)),
    };
    let resp = ctx.store().txn("proclaim", at, txn).await?;
    if !resp.succeeded() {
        return Err(Error::GuardFailed {
            path: key.to_owned(),
            reason: GuardFailure::Absent,
        });
    }
    Ok(())
}

/// Deletes our key if it is still the one created at `created` (`Election.Resign`).
async fn resign(ctx: &Context, key: &str, created: u64) -> Result<()> {
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key,
            CompareOp::Equal,
            rev_i64(created),
        )])
        .and_then(vec![TxnOp::delete(key, None)]);
    ctx.store().txn("resign", Ctx::default(), txn).await?;
    Ok(())
}

#[async_trait]
impl DialectDriver for EtcdConcurrency {
    fn dialect(&self) -> Dialect {
        Dialect::EtcdConcurrency
    }

    async fn acquire(&self, c: Candidacy<'_>) -> Result<Option<Box<dyn DialectHold>>> {
        c.check(&self.ctx.tree.caps)?;
        let (session, name, value) = (c.session, c.name, c.value);
        let prefix = self.prefix(name)?;
        let lease = lease_of(&*session)?;
        let key = format!("{prefix}{lease:x}");
        let node = name.join(&format!("{lease:x}"))?;
        let held = |created| {
            let (ctx, key, node) = (self.ctx.clone(), key.clone(), node.clone());
            Arc::new(EtcdKey {
                ctx,
                key,
                node,
                created,
            })
        };
        let mut pending = ReleaseOnDrop::new(session.clone());
        // Armed before the call: a campaign whose answer is lost may still have created it.
        pending.arm(held(0));
        let created = match self.campaign(&key, value, lease, session.id()).await {
            Ok(c) => c,
            Err(e) => {
                // Nothing of ours is known to exist; a key made by a lost answer goes with the
                // lease at the latest.
                pending.disarm();
                return Err(e);
            }
        };
        let own = held(created);
        pending.arm(own.clone());
        if c.try_only {
            let (first, _) = self.read_prefix(&prefix, false, 1, None).await?;
            if first.first().map(|kv| rev_u64(kv.create_revision)) != Some(created) {
                pending.disarm();
                if let Err(e) = own.release().await {
                    pending.arm(own);
                    tracing::debug!(error = %e, "try-acquire cleanup deferred");
                }
                return Ok(None);
            }
        } else {
            self.wait_deletes(&*session, &prefix, created, c.wakeups)
                .await?;
        }
        // As `Mutex.Lock` does: our key must still be there (the lease may have ended while
        // we waited).
        let now = self.ctx.store().get_one(&key, None).await?;
        pending.disarm();
        if now.map(|kv| rev_u64(kv.create_revision)) != Some(created) {
            let st = session.state();
            return Err(if st.is_final() {
                Error::session_gone(session.id(), st)
            } else {
                Error::NotFound {
                    path: node.to_string(),
                }
            });
        }
        Ok(Some(Box::new(KeyHold::start(own, session, c.policy))))
    }

    async fn participants(&self, name: &Path) -> Result<Vec<LeaderInfo>> {
        let prefix = self.prefix(name)?;
        let (kvs, _) = self.read_prefix(&prefix, false, 0, None).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| info_of(name, &prefix, kv))
            .collect())
    }

    async fn resign(&self, _session: &dyn Session, node: &Path, token: u64) -> Result<()> {
        let Some(name) = node.parent() else {
            return Ok(());
        };
        let key = format!("{}{}", self.prefix(&name)?, node.name());
        resign(&self.ctx, &key, token).await
    }

    async fn observe(&self, name: &Path) -> Result<HolderStream> {
        let prefix = self.prefix(name)?;
        let (first, rev) = self.read_prefix(&prefix, false, 1, None).await?;
        let leader = first.first().and_then(|kv| info_of(name, &prefix, kv));
        let scope = WatchScope::new();
        let pokes = watch_raw_prefix(&scope, self.ctx.clone(), prefix.clone(), rev + 1);
        let me = Arc::new(EtcdConcurrency::new(self.ctx.clone()));
        let name = name.clone();
        let updates = pokes.then(move |poke| {
            // The scope travels with the stream: its watch ends when the stream is dropped.
            let _ = &scope;
            let (me, name, prefix) = (me.clone(), name.clone(), prefix.clone());
            async move {
                poke?;
                me.leader(&name, &prefix).await
            }
        });
        Ok(holder_stream(leader, updates))
    }
}

/// Our candidate key, created at `created` (its CreateRevision: our fencing token).
struct EtcdKey {
    ctx: Arc<Context>,
    key: String,
    node: Path,
    created: u64,
}

#[async_trait]
impl HeldKey for EtcdKey {
    fn token(&self) -> u64 {
        self.created
    }

    /// Holds while our key exists, whatever is written to it.
    fn guard(&self) -> Guard {
        Guard::created(self.node.clone(), self.created)
    }

    fn node(&self) -> &Path {
        &self.node
    }

    fn caps(&self) -> &Capabilities {
        &self.ctx.tree.caps
    }

    async fn watch(&self, scope: &WatchScope) -> Result<(Option<Node>, KeyWatch)> {
        watch_raw_key(scope, self.ctx.clone(), self.key.clone(), &self.node).await
    }

    fn ours(&self, node: &Node) -> bool {
        node.stat.created == self.created
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        proclaim(&self.ctx, &self.key, self.created, value).await
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        self.ctx.tree.write_if_key(guard, &self.key, op).await
    }

    async fn release(&self) -> Result<()> {
        resign(&self.ctx, &self.key, self.created).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p = |s: &str| Path::new(s).unwrap();
        assert_eq!(raw_prefix("", &p("/my-election")).unwrap(), "my-election/");
        assert_eq!(raw_prefix("/ns/x", &p("/a/b")).unwrap(), "ns/x/a/b/");
        assert!(matches!(
            raw_prefix("", &Path::root()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
