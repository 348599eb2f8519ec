//! [`EtcdBackend`]: the [`FlatBackend`] over one etcd cluster, in one namespace.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::check_ttl;
use coord_core::adapter::flat::{FlatBackend, Layout, Tree};
use coord_core::registry::NativeRegistry;
use coord_core::{Capabilities, ChildrenWatch, Error, KeyWatch, Node, Path, Result, Session};
use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::config::Config;
use coord_core::dialect::{Dialect, DialectDriver};

use crate::context::{Context, EtcdStore};
use crate::dialect::EtcdConcurrency;
use crate::error::{bounded_at, Ctx};
use crate::hub::Hub;
use crate::naming::GrpcNaming;
use crate::session::EtcdSession;
use crate::watch::{watch_children, watch_key};

/// A client of an etcd cluster in one namespace (see the crate docs for the URL and the key
/// layout). Dropping it ends its watches; sessions live on until closed or dropped.
pub struct EtcdBackend {
    ctx: Arc<Context>,
    /// The etcd `concurrency` dialect's driver (shared by every handle of this client).
    concurrency: Arc<EtcdConcurrency>,
    /// The shared watch streams of key and children watches; they end with the backend.
    hub: Arc<Hub>,
    /// The native registry layout (grpc-go's naming), made once so its watches live on.
    naming: Arc<GrpcNaming>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("namespace", &self.ctx.tree.namespace)
            .finish_non_exhaustive()
    }
}

fn connect_options(cfg: &Config) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new()
        .with_keep_alive(cfg.keepalive, Duration::from_secs(1))
        .with_keep_alive_while_idle(false)
        .with_timeout(cfg.timeout)
        .with_connect_timeout(cfg.connect_timeout)
        .with_require_leader(true);
    if let Some((user, pw)) = &cfg.user {
        // Simple tokens expire when idle: re-authenticate instead of failing.
        opts = opts
            .with_user(user.clone(), pw.expose())
            .with_auto_token_refresh(true);
    }
    #[cfg(feature = "tls")]
    if let Some(files) = &cfg.tls {
        opts = opts.with_tls(tls_options(files)?);
    }
    Ok(opts)
}

impl EtcdBackend {
    /// Connects from an `etcd://` URL and checks that the cluster answers (bounded by the
    /// URL's `timeout`).
    pub async fn connect(url: &str) -> Result<EtcdBackend> {
        let cfg = Config::parse(url)?;
        let opts = connect_options(&cfg)?;
        let caps = Capabilities::new("etcd")
            .with_max_value_size(cfg.max_value_size)
            .with_min_session_ttl(Duration::from_secs(1))
            .with_max_session_ttl(Duration::from_secs(24 * 3600))
            .with_default_session_ttl(cfg.session_ttl)
            .with_watch_coalesces(false)
            .with_registry_layout(cfg.registry);
        check_ttl(&caps, None).map_err(|e| Error::InvalidUrl {
            reason: e.to_string(),
        })?;
        let (endpoints, named) = (cfg.endpoints.clone(), cfg.endpoints.join(","));
        let client = bounded_at(&named, cfg.timeout, "connect", Ctx::default(), || {
            Client::connect(endpoints.clone(), Some(opts.clone()))
        })
        .await?;
        let store = EtcdStore {
            client,
            layout: Layout::new(&cfg.namespace),
            timeout: cfg.timeout,
            max_value: cfg.max_value_size,
            endpoints: named,
            urls: cfg.endpoints.clone(),
            connect_timeout: cfg.connect_timeout,
            reconnected: Default::default(),
        };
        let ctx = Arc::new(Context {
            tree: Tree::new(store, &cfg.namespace, caps),
            keep_alives: Default::default(),
        });
        // etcd-client connects lazily: make a bad address or bad credentials fail here.
        let root = ctx.layout().node(&Path::root());
        let keys_only = GetOptions::new().with_keys_only();
        ctx.store().get_one(&root, Some(keys_only)).await?;
        Ok(EtcdBackend {
            naming: Arc::new(GrpcNaming::new(ctx.clone())),
            concurrency: Arc::new(EtcdConcurrency::new(ctx.clone())),
            hub: Hub::new(ctx.clone()),
            ctx,
        })
    }

    /// `e`, naming the endpoints if it is a connection error (lease grant, watch start).
    fn named(&self, e: Error) -> Error {
        coord_core::url::with_endpoint(e, &self.ctx.store().endpoints)
    }

    /// The key layout of this client's namespace (see [`Layout`]).
    pub fn layout(&self) -> &Layout {
        self.ctx.layout()
    }

    /// The registry in grpc-go's naming layout (what [`Backend::native_registry`] hands out),
    /// for its [`GrpcNaming::target`].
    ///
    /// [`Backend::native_registry`]: coord_core::Backend::native_registry
    pub fn naming(&self) -> &Arc<GrpcNaming> {
        &self.naming
    }

    /// The underlying etcd client (for tests and extensions; keys outside the layout are not
    /// coord's business).
    pub fn etcd_client(&self) -> &Client {
        &self.ctx.store().client
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
impl FlatBackend for EtcdBackend {
    type Store = EtcdStore;

    fn tree(&self) -> &Tree<EtcdStore> {
        &self.ctx.tree
    }

    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>> {
        let session = EtcdSession::open(self.ctx.clone(), ttl).await;
        Ok(Arc::new(session.map_err(|e| self.named(e))?))
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        let w = watch_key(&self.hub, &self.ctx, path).await;
        w.map_err(|e| self.named(e))
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        let w = watch_children(&self.hub, &self.ctx, path).await;
        w.map_err(|e| self.named(e))
    }

    /// grpc-go's naming layout ([`GrpcNaming`]); not the default layout on etcd.
    fn native_registry(&self) -> Option<Arc<dyn NativeRegistry>> {
        Some(self.naming.clone())
    }

    /// The etcd `concurrency` protocol ([`crate::dialect`]); no other dialect needs a driver
    /// here.
    fn dialect_driver(&self, dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        match dialect {
            Dialect::EtcdConcurrency => Some(self.concurrency.clone()),
            _ => None,
        }
    }
}
