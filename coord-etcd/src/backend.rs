//! [`EtcdBackend`]: keys, transactions, watches and the session factory.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{check_ttl, check_value};
use coord_core::path::format_sequence;
use coord_core::{
    Backend, Capabilities, ChildrenWatch, CreateMode, Created, Error, KeyWatch, Node, Path, Result,
    Session, SessionId, SessionOptions, Stat, Version,
};
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, PutOptions,
    Txn, TxnOp, TxnResponse,
};
use tokio::sync::watch;

use crate::config::Config;
use crate::errors::{bounded, Ctx};
use crate::layout::KeyLayout;
use crate::session::EtcdSession;
use crate::watch::{self as w, WatchSpec};

/// How often a create or delete transaction that lost a race is tried again before giving up
/// with a retryable error.
const MAX_ATTEMPTS: u32 = 200;
/// Responses may carry many keys (large children lists) and values up to the request limit.
const MAX_DECODE: usize = 256 * 1024 * 1024;

/// The session id of an etcd lease: the lease id in hex, as `etcdctl` prints it.
pub(crate) fn lease_sid(lease: i64) -> SessionId {
    SessionId(format!("{lease:x}"))
}

fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// The metadata of a stored node.
pub(crate) fn stat_of(kv: &PbKeyValue) -> Stat {
    Stat::new(
        Version(rev_u64(kv.mod_revision)),
        (kv.lease != 0).then(|| lease_sid(kv.lease)),
    )
}

/// The kvs of the `i`-th (range) answer of a transaction; empty if there is none.
pub(crate) fn range_kvs(resp: &TxnResponse, i: usize) -> &[PbKeyValue] {
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
pub(crate) fn txn_revision(resp: &TxnResponse) -> i64 {
    resp.0.header.as_ref().map(|h| h.revision).unwrap_or(0)
}

fn keys_only() -> Option<GetOptions> {
    Some(GetOptions::new().with_keys_only())
}

/// What a backend, its sessions and its watch tasks share. Holds no watch-stopping handle, so
/// tasks holding it do not keep the backend alive.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) layout: KeyLayout,
    pub(crate) ns: String,
    pub(crate) caps: Capabilities,
    /// The bound of every call to the server.
    pub(crate) timeout: Duration,
}

impl Shared {
    pub(crate) fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE)
    }

    pub(crate) async fn txn(&self, what: &str, ctx: Ctx<'_>, txn: Txn) -> Result<TxnResponse> {
        bounded(self.timeout, what, ctx, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// One range read: its kvs and the revision it was answered at.
    async fn range(&self, key: Vec<u8>, opts: GetOptions) -> Result<(Vec<PbKeyValue>, i64)> {
        let mut resp = bounded(self.timeout, "get", Ctx::default(), || {
            let (mut kv, key, opts) = (self.kv(), key.clone(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await?;
        let rev = resp.0.header.as_ref().map(|h| h.revision).unwrap_or(0);
        Ok((std::mem::take(&mut resp.0.kvs), rev))
    }

    async fn get_one(&self, key: Vec<u8>, opts: Option<GetOptions>) -> Result<Option<PbKeyValue>> {
        let mut resp = bounded(self.timeout, "get", Ctx::default(), || {
            let (mut kv, key, opts) = (self.kv(), key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
        .await?;
        let kvs = std::mem::take(&mut resp.0.kvs);
        Ok(kvs.into_iter().next())
    }

    /// Creates a node (ephemeral with `lease != 0`), enforcing the parent rules in one
    /// transaction; sequential creates take the parent's counter in the same transaction.
    pub(crate) async fn create_node(
        &self,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
        lease: i64,
        sid: Option<&SessionId>,
    ) -> Result<Created> {
        check_value(&self.caps, value)?;
        let parent = path.parent().ok_or_else(|| Error::AlreadyExists {
            path: path.to_string(),
        })?;
        let ctx = Ctx {
            session: sid,
            value: Some((value.len(), self.caps.max_value_size)),
        };
        let pkey = self.layout.node_key(&parent);
        let skey = self.layout.sequence_key(&parent);
        let sequential = mode == CreateMode::Sequential;
        // The counter: the next number and the counter key's mod revision (0: absent).
        let (mut next, mut counter_rev) = if sequential {
            match self.get_one(skey.clone(), None).await? {
                Some(kv) => (parse_counter(&kv.value), kv.mod_revision),
                None => (0, 0),
            }
        } else {
            (0, 0)
        };
        for attempt in 0..MAX_ATTEMPTS {
            let full = if sequential {
                parent.join(&format!("{}{}", path.name(), format_sequence(next)))?
            } else {
                path.clone()
            };
            let fkey = self.layout.node_key(&full);
            let mut when = Vec::new();
            let mut otherwise = Vec::new();
            if !parent.is_root() {
                when.push(Compare::create_revision(
                    pkey.clone(),
                    CompareOp::Greater,
                    0,
                ));
                when.push(Compare::lease(pkey.clone(), CompareOp::Equal, 0));
                otherwise.push(TxnOp::get(pkey.clone(), keys_only()));
            }
            when.push(Compare::create_revision(fkey.clone(), CompareOp::Equal, 0));
            let fkey_at = otherwise.len();
            otherwise.push(TxnOp::get(fkey.clone(), keys_only()));
            let mut then = vec![TxnOp::put(
                fkey.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )];
            if sequential {
                when.push(Compare::mod_revision(
                    skey.clone(),
                    CompareOp::Equal,
                    counter_rev,
                ));
                then.push(TxnOp::put(skey.clone(), (next + 1).to_string(), None));
                otherwise.push(TxnOp::get(skey.clone(), None));
            }
            let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
            let resp = self.txn("create", ctx, txn).await?;
            if resp.succeeded() {
                return Ok(Created {
                    path: full,
                    sequence: sequential.then_some(next),
                    stat: Stat::new(Version(rev_u64(txn_revision(&resp))), sid.cloned()),
                });
            }
            if !parent.is_root() {
                match range_kvs(&resp, 0).first() {
                    None => {
                        return Err(Error::NoParent {
                            path: path.to_string(),
                        })
                    }
                    Some(p) if p.lease != 0 => {
                        return Err(Error::EphemeralParent {
                            path: parent.to_string(),
                        })
                    }
                    Some(_) => {}
                }
            }
            let taken = !range_kvs(&resp, fkey_at).is_empty();
            if sequential {
                let seen = range_kvs(&resp, fkey_at + 1).first();
                let (n, rev) = seen
                    .map(|kv| (parse_counter(&kv.value), kv.mod_revision))
                    .unwrap_or((0, 0));
                if rev != counter_rev {
                    // Another creator took a number: go on from the counter's new value.
                    next = n;
                    counter_rev = rev;
                } else if taken {
                    // A node with this exact name exists (made by an exact create): skip it.
                    next += 1;
                }
            } else if taken {
                return Err(Error::AlreadyExists {
                    path: full.to_string(),
                });
            }
            if attempt >= 3 {
                // Heavy contention: spread the retries a little.
                let ms = 1 + u64::from(attempt % 8) + (nanos() % 5);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        Err(Error::backend(
            "etcd",
            format!("create of {path}: still contended after {MAX_ATTEMPTS} attempts"),
            true,
        ))
    }

    /// Reads the ranges of `specs` atomically: their kvs and the revision of the read.
    pub(crate) async fn snapshot(
        &self,
        specs: &[WatchSpec],
    ) -> Result<(Vec<Vec<PbKeyValue>>, i64)> {
        let ops: Vec<TxnOp> = specs
            .iter()
            .map(|s| {
                let mut o = GetOptions::new();
                if s.prefix {
                    o = o.with_prefix();
                }
                if s.keys_only {
                    o = o.with_keys_only();
                }
                TxnOp::get(s.key.clone(), Some(o))
            })
            .collect();
        let resp = self
            .txn("read", Ctx::default(), Txn::new().and_then(ops))
            .await?;
        let out = (0..specs.len())
            .map(|i| range_kvs(&resp, i).to_vec())
            .collect();
        Ok((out, txn_revision(&resp)))
    }
}

fn parse_counter(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
}

/// A client of an etcd cluster in one namespace (see the crate docs for the URL and the key
/// layout). Dropping it ends its watches; sessions live on until closed or dropped.
pub struct EtcdBackend {
    shared: Arc<Shared>,
    /// Dropped with the backend: every watch task sees it and ends its stream.
    _watches_alive: watch::Sender<()>,
    alive_rx: watch::Receiver<()>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("namespace", &self.shared.ns)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Connects from an `etcd://` URL and checks that the cluster answers (bounded by the
    /// URL's `timeout`).
    pub async fn connect(url: &str) -> Result<EtcdBackend> {
        let cfg = Config::parse(url)?;
        let mut opts = ConnectOptions::new()
            .with_keep_alive(cfg.keepalive, Duration::from_secs(1))
            .with_keep_alive_while_idle(false)
            .with_timeout(cfg.timeout)
            .with_connect_timeout(cfg.connect_timeout)
            .with_require_leader(true);
        if let Some((user, pw)) = &cfg.user {
            // Simple tokens expire when idle: re-authenticate instead of failing.
            opts = opts
                .with_user(user.clone(), pw.clone())
                .with_auto_token_refresh(true);
        }
        #[cfg(feature = "tls")]
        if let Some(files) = &cfg.tls {
            opts = opts.with_tls(tls_options(files)?);
        }
        let caps = Capabilities::new("etcd")
            .with_max_value_size(cfg.max_value_size)
            .with_min_session_ttl(Duration::from_secs(1))
            .with_max_session_ttl(Duration::from_secs(24 * 3600))
            .with_default_session_ttl(cfg.session_ttl)
            .with_watch_coalesces(false);
        check_ttl(&caps, None).map_err(|e| Error::InvalidUrl {
            reason: e.to_string(),
        })?;
        let endpoints = cfg.endpoints.clone();
        let client = bounded(cfg.timeout, "connect", Ctx::default(), || {
            Client::connect(endpoints.clone(), Some(opts.clone()))
        })
        .await?;
        let (tx, rx) = watch::channel(());
        let backend = EtcdBackend {
            shared: Arc::new(Shared {
                client,
                layout: KeyLayout::new(&cfg.namespace),
                ns: cfg.namespace.clone(),
                caps,
                timeout: cfg.timeout,
            }),
            _watches_alive: tx,
            alive_rx: rx,
        };
        // etcd-client connects lazily: make a bad address or bad credentials fail here.
        backend
            .shared
            .get_one(backend.shared.layout.node_key(&Path::root()), keys_only())
            .await?;
        Ok(backend)
    }

    /// The key layout of this client's namespace (see [`KeyLayout`]).
    pub fn layout(&self) -> &KeyLayout {
        &self.shared.layout
    }

    /// The underlying etcd client (for tests and extensions; keys outside the layout are not
    /// coord's business).
    pub fn etcd_client(&self) -> &Client {
        &self.shared.client
    }

    fn node_of(&self, path: &Path, kv: PbKeyValue) -> Node {
        let stat = stat_of(&kv);
        Node {
            path: path.clone(),
            value: kv.value,
            stat,
        }
    }
}

#[cfg(feature = "tls")]
fn tls_options(files: &crate::config::TlsFiles) -> Result<etcd_client::TlsOptions> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{what} {}: {e}", p.display())))
    };
    let mut tls = TlsOptions::new();
    match &files.ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca, "ca")?)),
        None => tls = tls.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        tls = tls.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
    }
    Ok(tls)
}

#[async_trait]
impl Backend for EtcdBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn namespace(&self) -> &str {
        &self.shared.ns
    }

    async fn open_session(&self, options: SessionOptions) -> Result<Arc<dyn Session>> {
        let ttl = check_ttl(&self.shared.caps, options.ttl)?;
        Ok(Arc::new(EtcdSession::open(self.shared.clone(), ttl).await?))
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        self.shared.create_node(path, value, mode, 0, None).await
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        match self
            .shared
            .get_one(self.shared.layout.node_key(path), None)
            .await?
        {
            Some(kv) => Ok(self.node_of(path, kv)),
            None if path.is_root() => Ok(Node {
                path: path.clone(),
                value: Vec::new(),
                stat: Stat::new(Version(0), None),
            }),
            None => Err(Error::NotFound {
                path: path.to_string(),
            }),
        }
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        let kv = self
            .shared
            .get_one(self.shared.layout.node_key(path), keys_only())
            .await?;
        Ok(match kv {
            Some(kv) => Some(stat_of(&kv)),
            None if path.is_root() => Some(Stat::new(Version(0), None)),
            None => None,
        })
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be written".into(),
            ));
        }
        check_value(&self.shared.caps, value)?;
        let key = self.shared.layout.node_key(path);
        let mut when = Vec::new();
        let mut put = PutOptions::new().with_prev_key();
        if !path.is_root() {
            when.push(Compare::create_revision(key.clone(), CompareOp::Greater, 0));
            // Keep an ephemeral's lease: a value write does not change the owner.
            put = put.with_ignore_lease();
        }
        if let Some(v) = expected {
            let rev = i64::try_from(v.0).unwrap_or(i64::MAX);
            when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key.clone(), value, Some(put))])
            .or_else(vec![TxnOp::get(key, keys_only())]);
        let ctx = Ctx {
            session: None,
            value: Some((value.len(), self.shared.caps.max_value_size)),
        };
        let resp = self.shared.txn("set", ctx, txn).await?;
        if resp.succeeded() {
            let owner = put_prev_kv(&resp, 0)
                .filter(|kv| kv.lease != 0)
                .map(|kv| lease_sid(kv.lease));
            return Ok(Stat::new(Version(rev_u64(txn_revision(&resp))), owner));
        }
        if range_kvs(&resp, 0).is_empty() && !path.is_root() {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        }
        Err(Error::VersionMismatch {
            path: path.to_string(),
            expected: expected.unwrap_or(Version(0)),
        })
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be deleted".into(),
            ));
        }
        let layout = &self.shared.layout;
        let key = layout.node_key(path);
        let kids = layout.children_prefix(path);
        for _ in 0..MAX_ATTEMPTS {
            let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Greater, 0)];
            if let Some(v) = expected {
                let rev = i64::try_from(v.0).unwrap_or(i64::MAX);
                when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
            }
            // No children, atomically: every key of the children range has create_revision 0,
            // which holds exactly when the range is empty.
            when.push(Compare::create_revision(kids.clone(), CompareOp::Equal, 0).with_prefix());
            let txn = Txn::new()
                .when(when)
                .and_then(vec![
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(layout.sequence_key(path), None::<DeleteOptions>),
                ])
                .or_else(vec![
                    TxnOp::get(key.clone(), keys_only()),
                    TxnOp::get(
                        kids.clone(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_limit(1),
                        ),
                    ),
                ]);
            let resp = self.shared.txn("delete", Ctx::default(), txn).await?;
            if resp.succeeded() {
                return Ok(());
            }
            let Some(node) = range_kvs(&resp, 0).first() else {
                return Err(Error::NotFound {
                    path: path.to_string(),
                });
            };
            if let Some(v) = expected {
                if rev_u64(node.mod_revision) != v.0 {
                    return Err(Error::VersionMismatch {
                        path: path.to_string(),
                        expected: v,
                    });
                }
            }
            if !range_kvs(&resp, 1).is_empty() {
                return Err(Error::NotEmpty {
                    path: path.to_string(),
                });
            }
            // The state changed between the compare and the read: decide again.
        }
        Err(Error::backend(
            "etcd",
            format!("delete of {path}: still contended after {MAX_ATTEMPTS} attempts"),
            true,
        ))
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let layout = &self.shared.layout;
        // Children exist only under an existing parent (create needs it, delete needs no
        // children), so one range read answers unless the list is empty; then the parent is
        // read at the list's revision, so that both reads describe one state.
        let (kids, rev) = self
            .shared
            .range(
                layout.children_prefix(path),
                GetOptions::new().with_prefix().with_keys_only(),
            )
            .await?;
        if kids.is_empty() && !path.is_root() {
            let parent = match self
                .shared
                .range(
                    layout.node_key(path),
                    GetOptions::new().with_keys_only().with_revision(rev),
                )
                .await
            {
                Ok((p, _)) => p,
                // Compacted past `rev` in between: read both again, atomically.
                Err(e) if e.to_string().contains("compacted") => {
                    let specs = w::children_specs(layout, path);
                    let (snap, _) = self.shared.snapshot(&specs).await?;
                    snap.into_iter().nth(1).unwrap_or_default()
                }
                Err(e) => return Err(e),
            };
            if parent.is_empty() {
                return Err(Error::NotFound {
                    path: path.to_string(),
                });
            }
        }
        Ok(w::names(&w::children_specs(layout, path), &[kids]))
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        w::watch_key(self.shared.clone(), self.alive_rx.clone(), path).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        w::watch_children(self.shared.clone(), self.alive_rx.clone(), path).await
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
