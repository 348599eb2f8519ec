//! [`Context`]: what the backend, its sessions and its watch tasks share — the etcd client, the
//! namespace's tree over [`EtcdStore`], the limits — and the transactions etcd runs for coord's
//! tree rules ([`FlatStore`]).

use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::flat::{
    Counter, CreateAttempt, CreateOutcome, DeleteAttempt, DeleteOutcome, Entry, FlatStore,
    GuardCheck, Layout, SetAttempt, SetOutcome, Tree,
};
use coord_core::{Path, Result, SessionId, Stat, Version};
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp,
    TxnResponse,
};

use crate::error::{bounded_at, is_compacted, Ctx};

/// Responses may carry many keys (large children lists) and values up to the request limit.
pub(crate) const MAX_DECODE: usize = 256 * 1024 * 1024;

/// The session id of an etcd lease: the lease id in hex, as `etcdctl` prints it.
pub(crate) fn lease_sid(lease: i64) -> SessionId {
    SessionId(format!("{lease:x}"))
}

fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

fn rev_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

/// The metadata of a stored node: the version is its mod revision, the creation stamp its
/// create revision.
pub(crate) fn stat_of(kv: &PbKeyValue) -> Stat {
    Stat::new(
        Version(rev_u64(kv.mod_revision)),
        (kv.lease != 0).then(|| lease_sid(kv.lease)),
    )
    .with_created(rev_u64(kv.create_revision))
}

/// The compares of a guard: its key exists (create revision > 0), at the create revision and
/// mod revision it names.
fn guard_compares(g: &GuardCheck<'_>) -> Vec<Compare> {
    let mut when = vec![match g.created {
        Some(c) => Compare::create_revision(g.key, CompareOp::Equal, rev_i64(c)),
        None => Compare::create_revision(g.key, CompareOp::Greater, 0),
    }];
    if let Some(v) = g.version {
        when.push(Compare::mod_revision(g.key, CompareOp::Equal, rev_i64(v.0)));
    }
    when
}

/// Whether the guard key as read in a failed transaction's `or_else` (`kvs`) fails the guard.
fn guard_broken(g: &GuardCheck<'_>, kvs: &[PbKeyValue]) -> bool {
    match kvs.first() {
        None => true,
        Some(kv) => {
            g.created.is_some_and(|c| rev_u64(kv.create_revision) != c)
                || g.version.is_some_and(|v| rev_u64(kv.mod_revision) != v.0)
        }
    }
}

/// Adds `guard`'s compares to `when` and its read to `otherwise`; the read's index.
fn add_guard(
    guard: Option<&GuardCheck<'_>>,
    when: &mut Vec<Compare>,
    otherwise: &mut Vec<TxnOp>,
) -> Option<usize> {
    let g = guard?;
    when.extend(guard_compares(g));
    otherwise.push(TxnOp::get(g.key, keys_only()));
    Some(otherwise.len() - 1)
}

/// Whether a failed transaction failed on its guard (read at `at` in `or_else`).
fn failed_guard(resp: &TxnResponse, guard: Option<&GuardCheck<'_>>, at: Option<usize>) -> bool {
    match (guard, at) {
        (Some(g), Some(i)) => guard_broken(g, range_kvs(resp, i)),
        _ => false,
    }
}

/// The kvs of the `i`-th (range) answer of a transaction; empty if there is none.
fn range_kvs(resp: &TxnResponse, i: usize) -> &[PbKeyValue] {
    match resp.0.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(PbTxnOpResponse::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

fn put_prev_kv(resp: &TxnResponse, i: usize) -> Option<&PbKeyValue> {
    match resp.0.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(PbTxnOpResponse::ResponsePut(p)) => p.prev_kv.as_ref(),
        _ => None,
    }
}

/// The store revision a response was answered at.
fn txn_revision(resp: &TxnResponse) -> i64 {
    resp.0.header.as_ref().map(|h| h.revision).unwrap_or(0)
}

fn keys_only() -> Option<GetOptions> {
    Some(GetOptions::new().with_keys_only())
}

/// One range of a watch or a snapshot: a key, or every key under a prefix.
#[derive(Clone, Debug)]
pub(crate) struct Range {
    pub(crate) key: String,
    pub(crate) prefix: bool,
    /// Whether a snapshot of this range needs only keys.
    pub(crate) keys_only: bool,
}

/// The ranges of a children watch: 0 = the children prefix, 1 = the parent's own key.
pub(crate) fn children_ranges(layout: &Layout, parent: &Path) -> Vec<Range> {
    vec![
        Range {
            key: layout.children_prefix(parent),
            prefix: true,
            keys_only: true,
        },
        Range {
            key: layout.node(parent),
            prefix: false,
            keys_only: true,
        },
    ]
}

/// The sorted child names among `kvs`, keys found under `prefix`.
pub(crate) fn names(prefix: &str, kvs: &[PbKeyValue]) -> Vec<String> {
    let mut v: Vec<String> = kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok())
        .filter_map(|k| Layout::child_name(prefix, k).map(str::to_owned))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The etcd side of coord's tree: one client, one namespace's layout, one call bound.
pub struct EtcdStore {
    pub(crate) client: Client,
    pub(crate) layout: Layout,
    /// The bound of every call to the server.
    pub(crate) timeout: Duration,
    /// The value limit, for the error of a request etcd refuses as too large.
    pub(crate) max_value: usize,
    /// The URL's endpoints (`host:port,…`, no credentials), named by connection errors.
    pub(crate) endpoints: String,
    /// The same, one per entry, as the client was given them.
    pub(crate) urls: Vec<String>,
    /// The bound of one connection attempt (the URL's `connect_timeout`).
    pub(crate) connect_timeout: Duration,
    /// When [`EtcdStore::reconnect`] last replaced the connections.
    pub(crate) reconnected: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// What a backend, its sessions and its watch tasks share. Holds no watch-stopping handle, so
/// tasks holding it do not keep the backend alive.
pub(crate) struct Context {
    pub(crate) tree: Tree<EtcdStore>,
    /// The keep-alive stream every session of the backend shares.
    pub(crate) keep_alives: crate::session::KeepAlives,
}

impl Context {
    pub(crate) fn store(&self) -> &EtcdStore {
        &self.tree.store
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.tree.layout
    }
}

impl EtcdStore {
    /// Replaces the client's connections with new ones, at most once per two connection
    /// attempts (a replacement that has not connected or failed yet is not cancelled).
    ///
    /// A connection whose peer went silent (a network cut) is still "ready" to the channel
    /// until its HTTP/2 ping times out (`keepalive` + 1 s; etcd refuses pings more often than
    /// every 5 s), and after a heal its TCP resends only on its back-off: every call in
    /// between waits on it. A new connection starts from a fresh connect instead (etcd-client
    /// re-inserting an endpoint makes tonic's balancer drop the old one once the new one is
    /// ready, or failed to connect).
    pub(crate) async fn reconnect(&self) {
        {
            let mut last = self.reconnected.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if last.is_some_and(|t| now < t + self.connect_timeout * 2) {
                return;
            }
            *last = Some(now);
        }
        tracing::debug!("etcd: replacing the connections to {}", self.endpoints);
        for url in &self.urls {
            if let Err(e) = self.client.add_endpoint(url).await {
                tracing::debug!("etcd: reconnecting {url} failed: {e}");
            }
        }
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE)
    }

    pub(crate) async fn txn(&self, what: &str, ctx: Ctx<'_>, txn: Txn) -> Result<TxnResponse> {
        bounded_at(&self.endpoints, self.timeout, what, ctx, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// One range read: its kvs and the revision it was answered at.
    async fn range(&self, key: &str, opts: GetOptions) -> Result<(Vec<PbKeyValue>, i64)> {
        let mut resp = bounded_at(&self.endpoints, self.timeout, "get", Ctx::default(), || {
            let (mut kv, opts) = (self.kv(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await?;
        let rev = resp.0.header.as_ref().map(|h| h.revision).unwrap_or(0);
        Ok((std::mem::take(&mut resp.0.kvs), rev))
    }

    pub(crate) async fn get_one(
        &self,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<Option<PbKeyValue>> {
        let (kvs, _) = self.range(key, opts.unwrap_or_default()).await?;
        Ok(kvs.into_iter().next())
    }

    /// Reads `ranges` atomically: their kvs and the revision of the read.
    pub(crate) async fn snapshot(&self, ranges: &[Range]) -> Result<(Vec<Vec<PbKeyValue>>, i64)> {
        let ops: Vec<TxnOp> = ranges
            .iter()
            .map(|s| {
                let mut o = GetOptions::new();
                if s.prefix {
                    o = o.with_prefix();
                }
                if s.keys_only {
                    o = o.with_keys_only();
                }
                TxnOp::get(s.key.as_str(), Some(o))
            })
            .collect();
        let resp = self
            .txn("read", Ctx::default(), Txn::new().and_then(ops))
            .await?;
        let out = (0..ranges.len())
            .map(|i| range_kvs(&resp, i).to_vec())
            .collect();
        Ok((out, txn_revision(&resp)))
    }
}

/// Per store: etcd checks the parent (exists, has no lease) inside the create's own
/// transaction, and its `or_else` branch reads the parent, the key and the counter in the same
/// round trip, so a lost race needs no extra read.
#[async_trait]
impl FlatStore for EtcdStore {
    type Owner = i64;

    async fn read(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.get_one(key, None).await?.map(|kv| Entry {
            owner: (kv.lease != 0).then(|| lease_sid(kv.lease)),
            modified: rev_u64(kv.mod_revision),
            created: rev_u64(kv.create_revision),
            value: kv.value,
        }))
    }

    async fn try_create(&self, a: &CreateAttempt<'_, i64>) -> Result<CreateOutcome> {
        let (mut when, mut otherwise) = (Vec::new(), Vec::new());
        if let Some(pkey) = a.parent {
            when.push(Compare::create_revision(pkey, CompareOp::Greater, 0));
            when.push(Compare::lease(pkey, CompareOp::Equal, 0));
            otherwise.push(TxnOp::get(pkey, keys_only()));
        }
        when.push(Compare::create_revision(a.key, CompareOp::Equal, 0));
        let key_at = otherwise.len();
        otherwise.push(TxnOp::get(a.key, keys_only()));
        let lease = a.owner.copied().unwrap_or(0);
        let mut then = vec![TxnOp::put(
            a.key,
            a.value,
            Some(PutOptions::new().with_lease(lease)),
        )];
        if let Some((ckey, c)) = a.counter {
            when.push(Compare::mod_revision(
                ckey,
                CompareOp::Equal,
                rev_i64(c.stamp),
            ));
            then.push(TxnOp::put(ckey, (c.next + 1).to_string(), None));
            otherwise.push(TxnOp::get(ckey, None));
        }
        let guard_at = add_guard(a.guard.as_ref(), &mut when, &mut otherwise);
        let sid = a.owner.map(|l| lease_sid(*l));
        let ctx = Ctx {
            session: sid.as_ref(),
            value: Some((a.value.len(), self.max_value)),
        };
        let resp = self
            .txn(
                "create",
                ctx,
                Txn::new().when(when).and_then(then).or_else(otherwise),
            )
            .await?;
        if resp.succeeded() {
            return Ok(CreateOutcome::Created(rev_u64(txn_revision(&resp))));
        }
        if failed_guard(&resp, a.guard.as_ref(), guard_at) {
            return Ok(CreateOutcome::GuardFailed);
        }
        if a.parent.is_some() {
            match range_kvs(&resp, 0).first() {
                None => return Ok(CreateOutcome::NoParent),
                Some(p) if p.lease != 0 => return Ok(CreateOutcome::EphemeralParent),
                Some(_) => {}
            }
        }
        if let Some((ckey, c)) = a.counter {
            let seen = range_kvs(&resp, key_at + 1).first().map(|kv| Entry {
                value: kv.value.clone(),
                modified: rev_u64(kv.mod_revision),
                created: rev_u64(kv.create_revision),
                owner: None,
            });
            let now = Counter::parse(ckey, seen.as_ref())?;
            if now.stamp != c.stamp {
                return Ok(CreateOutcome::CounterMoved(Some(now)));
            }
        }
        if !range_kvs(&resp, key_at).is_empty() {
            return Ok(CreateOutcome::Taken);
        }
        // The state changed between the compare and the read: decide again.
        Ok(CreateOutcome::Retry { contended: true })
    }

    /// Per store: etcd compares a whole key range inside a transaction (every key of the
    /// children range has create revision 0 exactly when the range is empty), so no
    /// child-version counter is needed.
    async fn try_delete(&self, a: &DeleteAttempt<'_>) -> Result<DeleteOutcome> {
        let (path, expected) = (a.path, a.expected);
        let key = self.layout.node(path);
        let kids = self.layout.children_prefix(path);
        let mut when = vec![Compare::create_revision(
            key.as_str(),
            CompareOp::Greater,
            0,
        )];
        if let Some(v) = expected {
            when.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                rev_i64(v.0),
            ));
        }
        when.push(Compare::create_revision(kids.as_str(), CompareOp::Equal, 0).with_prefix());
        let first_child = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1);
        let mut otherwise = vec![
            TxnOp::get(key.as_str(), keys_only()),
            TxnOp::get(kids.as_str(), Some(first_child)),
        ];
        let guard_at = add_guard(a.guard.as_ref(), &mut when, &mut otherwise);
        let txn = Txn::new()
            .when(when)
            .and_then(vec![
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(self.layout.sequence(path), None::<DeleteOptions>),
            ])
            .or_else(otherwise);
        let resp = self.txn("delete", Ctx::default(), txn).await?;
        if resp.succeeded() {
            return Ok(DeleteOutcome::Deleted);
        }
        if failed_guard(&resp, a.guard.as_ref(), guard_at) {
            return Ok(DeleteOutcome::GuardFailed);
        }
        let Some(node) = range_kvs(&resp, 0).first() else {
            return Ok(DeleteOutcome::Missing);
        };
        if expected.is_some_and(|v| rev_u64(node.mod_revision) != v.0) {
            return Ok(DeleteOutcome::Mismatch);
        }
        if !range_kvs(&resp, 1).is_empty() {
            return Ok(DeleteOutcome::NotEmpty);
        }
        Ok(DeleteOutcome::Retry)
    }

    async fn try_set(&self, w: &SetAttempt<'_>) -> Result<SetOutcome> {
        let (key, value, expected) = (w.key, w.value, w.expected);
        let mut when = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(v) = expected {
            when.push(Compare::mod_revision(key, CompareOp::Equal, rev_i64(v.0)));
        }
        let mut otherwise = vec![TxnOp::get(key, keys_only())];
        let guard_at = add_guard(w.guard.as_ref(), &mut when, &mut otherwise);
        // Keep an ephemeral's lease: a value write does not change the owner.
        let put = PutOptions::new().with_prev_key().with_ignore_lease();
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, value, Some(put))])
            .or_else(otherwise);
        let ctx = Ctx {
            session: None,
            value: Some((value.len(), self.max_value)),
        };
        let resp = self.txn("set", ctx, txn).await?;
        if resp.succeeded() {
            let prev = put_prev_kv(&resp, 0);
            let owner = prev
                .filter(|kv| kv.lease != 0)
                .map(|kv| lease_sid(kv.lease));
            let created = prev.map(|kv| rev_u64(kv.create_revision)).unwrap_or(0);
            let version = Version(rev_u64(txn_revision(&resp)));
            return Ok(SetOutcome::Written(
                Stat::new(version, owner).with_created(created),
            ));
        }
        if failed_guard(&resp, w.guard.as_ref(), guard_at) {
            return Ok(SetOutcome::GuardFailed);
        }
        Ok(if range_kvs(&resp, 0).is_empty() {
            SetOutcome::Missing
        } else {
            SetOutcome::Mismatch
        })
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<String>, u64)> {
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let (kvs, rev) = self.range(prefix, opts).await?;
        Ok((names(prefix, &kvs), rev_u64(rev)))
    }

    /// Read at the listing's revision, so that both reads describe one state.
    async fn existed_at(&self, key: &str, stamp: u64) -> Result<bool> {
        let opts = GetOptions::new()
            .with_keys_only()
            .with_revision(rev_i64(stamp));
        match self.range(key, opts).await {
            Ok((kvs, _)) => Ok(!kvs.is_empty()),
            // Compacted past the listing's revision in between: the parent's current state
            // will do (a parent exists before its children, so "present, no children" held
            // at some moment between the listing and now).
            Err(e) if is_compacted(&e) => Ok(self.get_one(key, keys_only()).await?.is_some()),
            Err(e) => Err(e),
        }
    }
}
